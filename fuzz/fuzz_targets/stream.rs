//! `stream`: the streaming reader over arbitrary bytes never panics, never
//! hangs and keeps memory bounded; whatever it accepts satisfies the
//! invariants checked in `vma_fuzz::stream_image` (contiguous extents, stored
//! bytes matching masks and block counts, sane completeness reports).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for data in vma_fuzz::variants(data) {
        if let Ok(img) = vma_fuzz::stream_image(&data) {
            let clusters: usize = img.extent_clusters.iter().sum();
            assert!(clusters <= img.extent_clusters.len() * vma_format::raw::BLOCKINFO_SLOTS);
        }
        // Through the decompression front-end as the CLI uses it.
        if let Ok((_, rd)) = vma_format::decompressor(&data[..]) {
            if let Ok(mut r) = vma_format::StreamReader::new(rd) {
                while let Ok(Some(x)) = r.next_extent() {
                    for c in x.clusters() {
                        let mut buf = [0u8; vma_format::raw::CLUSTER_SIZE];
                        c.expand(&mut buf);
                    }
                }
                let _ = r.completeness();
            }
        }
    }
});
