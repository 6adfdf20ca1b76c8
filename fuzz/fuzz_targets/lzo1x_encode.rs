//! `lzo1x_encode`: our LZO1X-1 encoder (`vma_format::lzo1x::compress`, what
//! `vma create --compress lzo` writes) round-trips through our decoder and
//! through lzokay-native's decoder (an independent reference), and our
//! decoder's cap is exact: one byte less than the input is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vma_format::lzo1x;

fuzz_target!(|data: &[u8]| {
    let c = lzo1x::compress(data);
    let mut out = Vec::new();
    lzo1x::decompress(&c, &mut out, data.len()).expect("our decoder decodes our encoder");
    assert!(out == data, "lzo1x round trip differs");
    if !data.is_empty() {
        assert!(
            lzo1x::decompress(&c, &mut out, data.len() - 1).is_err(),
            "output cap not enforced"
        );
    }
    let reference = lzokay_native::decompress_all(&c, Some(data.len()))
        .expect("lzokay-native decodes our encoder");
    assert!(
        reference == data,
        "lzokay-native decodes our output differently"
    );
});
