//! `stream`: the streaming reader over arbitrary bytes never panics, never
//! hangs and keeps memory bounded; whatever it accepts satisfies the
//! invariants checked in `vma_fuzz::stream_image` (contiguous extents, stored
//! bytes matching masks and block counts, sane completeness reports).
//!
//! Salvage mode runs on the same bytes: on an in-memory source it never fails,
//! on an intact archive it yields exactly what the strict reader yields, and
//! whatever it yields sits on a genuine extent header of this archive, in
//! order, with no cluster twice.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use vma_format::raw::{ext, extent_md5, BLOCK_SIZE, EXTENT_HEADER_SIZE, EXTENT_MAGIC};
use vma_format::StreamReader;

fuzz_target!(|data: &[u8]| {
    for data in vma_fuzz::variants(data) {
        let strict = vma_fuzz::stream_image(&data).ok();
        if let Some(img) = &strict {
            let clusters: usize = img.extent_clusters.iter().sum();
            assert!(clusters <= img.extent_clusters.len() * vma_format::raw::BLOCKINFO_SLOTS);
        }
        salvage(&data, strict.as_ref());
    }
});

/// (extent offset, [(dev_id, cluster, mask)]) per extent.
type Seen = Vec<(u64, Vec<(u8, u32, u16)>)>;

fn salvage(data: &[u8], strict: Option<&vma_fuzz::StreamImage>) {
    let Ok(mut r) = StreamReader::new(data) else {
        return;
    };
    r.set_salvage(true);
    let uuid = *r.header().uuid.as_bytes();
    let header = r.header().clone();
    let mut seen: Seen = Vec::new();
    let mut clusters = HashSet::new();
    let mut next_min = header.header_size();
    loop {
        let x = match r.next_extent() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => panic!("salvage mode failed on an in-memory source: {e}"),
        };
        assert!(
            x.offset >= next_min,
            "extent at {} overlaps the previous one (ends {next_min})",
            x.offset
        );
        let end =
            x.offset + (EXTENT_HEADER_SIZE + usize::from(x.block_count()) * BLOCK_SIZE) as u64;
        if x.is_cut() {
            // Salvage of an extent cut inside its data (issue 11): it yields
            // the blocks before the cut, and nothing can follow it.
            assert!(
                end > data.len() as u64,
                "extent at {} is whole but reported cut",
                x.offset
            );
            next_min = data.len() as u64;
        } else {
            assert!(
                end <= data.len() as u64,
                "extent at {} runs past the input",
                x.offset
            );
            next_min = end;
        }
        let h: &[u8; EXTENT_HEADER_SIZE] = data[x.offset as usize..][..EXTENT_HEADER_SIZE]
            .try_into()
            .unwrap();
        assert!(
            h[..4] == EXTENT_MAGIC
                && h[ext::UUID..ext::UUID + 16] == uuid
                && extent_md5(h)[..] == h[ext::MD5..ext::MD5 + 16],
            "salvage yielded an extent at {} that is no valid extent header",
            x.offset
        );
        let mut list = Vec::new();
        for c in x.clusters() {
            let dev = header
                .device(c.dev_id)
                .expect("yielded cluster of a declared device");
            // Past the end only as a mask-0 cluster in Proxmox's bitmap
            // slack (spec §12 c, tolerated with a warning).
            assert!(dev.is_vmstate() || c.device_offset() < dev.size || c.mask == 0);
            assert_eq!(c.data.len(), c.mask.count_ones() as usize * BLOCK_SIZE);
            assert!(
                clusters.insert((c.dev_id, c.cluster)),
                "salvage yielded dev {} cluster {} twice",
                c.dev_id,
                c.cluster
            );
            list.push((c.dev_id, c.cluster, c.mask));
        }
        seen.push((x.offset, list));
    }
    vma_fuzz::check_completeness(&header, &r.completeness(), None);
    if let Some(img) = strict {
        assert!(
            r.damage().is_empty(),
            "damage reported on an archive the strict reader accepts: {:?}",
            r.damage()
        );
        assert_eq!(seen.len(), img.extent_clusters.len());
        for ((_, list), &n) in seen.iter().zip(&img.extent_clusters) {
            assert_eq!(list.len(), n);
        }
        assert_eq!(r.completeness(), img.completeness);
    }
}
