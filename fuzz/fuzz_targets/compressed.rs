//! `compressed`: the decompression front-end (`decompressor`, zstd / gzip /
//! lzop by magic) and the random-access view of compressed archives
//! (`vma_seekable::open_seekable`) never panic, hang or run away with memory.
//!
//! - The LZO1X decoder (`vma_format::lzo1x`) gets every input as a block: it
//!   never panics or exceeds its cap, and decodes lzokay-native's encoding of
//!   the input exactly.
//! - The decompressed stream is read through `StreamReader` to the end.
//! - For inputs with a compression magic, `open_seekable` on a scratch file:
//!   when it and streaming decompression both succeed, the random-access
//!   source holds the same bytes, and the indexed reader sees the same archive
//!   through both.
#![no_main]

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vma_format::lzo1x;
use vma_format::raw::CLUSTER_SIZE;
use vma_seekable::SeekOptions;
use vma_format::{Compression, Error, IndexedReader, ReadAt, StreamReader};

fuzz_target!(|data: &[u8]| {
    lzo(data);
    if let Ok((_, rd)) = vma_format::decompressor(data) {
        if let Ok(mut r) = StreamReader::new(rd) {
            while let Ok(Some(x)) = r.next_extent() {
                for c in x.clusters() {
                    let mut buf = [0u8; CLUSTER_SIZE];
                    c.expand(&mut buf);
                }
            }
            let _ = r.completeness();
        }
    }
    if vma_format::detect(data) != Compression::None {
        seekable(data);
    }
});

/// Largest decompressed stream compared against the seekable source.
const MAX_DECOMPRESSED: u64 = 4 << 20;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| vma_fuzz::scratch_dir("vma-fuzz-seekable-"))
        .path()
}

/// The seekable (random-access) view of a compressed archive holds the same
/// bytes as streaming decompression, and the indexed reader sees the same
/// archive through either.
fn seekable(data: &[u8]) {
    let mut plain = Vec::new();
    let streamed = vma_format::decompressor(data).and_then(|(_, rd)| {
        rd.take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut plain)
            .map_err(|source| Error::Read { offset: 0, source })
    });
    let dir = scratch();
    let path = dir.join("archive");
    std::fs::write(&path, data).expect("write scratch archive");
    let opts = {
        let mut o = SeekOptions::default();
        // The default store keeps nothing on disk; a cache file is an
        // unlinked temporary file in `temp_dir`.
        o.temp_dir = Some(dir.join("cache"));
        o.memory = 1 << 20;
        o.cache_frame_size = 64 << 10;
        o.threads = 1;
        o
    };
    let opened = vma_seekable::open_seekable(&path, &opts);
    if let (Ok(_), Ok(s)) = (&streamed, &opened) {
        if plain.len() as u64 <= MAX_DECOMPRESSED {
            assert_eq!(
                s.source.size().unwrap(),
                plain.len() as u64,
                "seekable size"
            );
            let mut buf = vec![0u8; plain.len()];
            assert_eq!(s.source.read_full_at(0, &mut buf).unwrap(), plain.len());
            assert!(
                buf == plain,
                "seekable bytes differ from the decompressed stream"
            );
            // Unaligned reads from the middle too.
            let mid = plain.len() / 3;
            let mut part = vec![0u8; plain.len() - mid];
            assert_eq!(
                s.source.read_full_at(mid as u64, &mut part).unwrap(),
                part.len()
            );
            assert!(part == plain[mid..]);
            let a = IndexedReader::open(&*s.source);
            let b = IndexedReader::open(plain.as_slice());
            assert_eq!(
                a.is_ok(),
                b.is_ok(),
                "indexed reader over seekable vs plain bytes"
            );
            if let (Ok(a), Ok(b)) = (a, b) {
                assert_eq!(a.header(), b.header());
                assert_eq!(a.completeness(), b.completeness());
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("cache"));
}

/// The LZO1X block decoder behind `.vma.lzo`: never panics, never writes past
/// its cap, and decodes what a reference encoder (lzokay-native) produced.
fn lzo(data: &[u8]) {
    let mut out = Vec::new();
    let cap = usize::from(data.first().copied().unwrap_or(0)) << 10;
    let _ = lzo1x::decompress(data, &mut out, cap);
    assert!(
        out.len() <= cap,
        "lzo1x wrote {} bytes, cap {cap}",
        out.len()
    );
    // lzop never writes an empty block (ulen 0 ends the stream), and
    // lzokay-native encodes nothing as nothing, not even an end marker.
    let plain = &data[..data.len().min(256)];
    if plain.is_empty() {
        return;
    }
    if let Ok(c) = lzokay_native::compress(plain) {
        lzo1x::decompress(&c, &mut out, plain.len()).expect("lzo1x decodes lzokay-native's output");
        assert!(out == plain, "lzo1x round trip differs");
        assert!(
            lzo1x::decompress(&c, &mut out, plain.len() - 1).is_err(),
            "output cap not enforced"
        );
    }
}
