//! `stream`: the streaming reader over arbitrary bytes never panics, never
//! hangs and keeps memory bounded; whatever it accepts satisfies the
//! invariants checked in `vma_fuzz::stream_image` (contiguous extents, stored
//! bytes matching masks and block counts, sane completeness reports).
//!
//! Salvage mode runs on the same bytes: on an in-memory source it never fails,
//! on an intact archive it yields exactly what the strict reader yields, and
//! whatever it yields sits on a genuine extent header of this archive, in
//! order, with no cluster twice.
//!
//! Compressed inputs (zstd, gzip, lzop by magic) also go through
//! `vma_format::seekable::open_seekable` on a scratch file: when it and
//! streaming decompression both succeed, the random-access source holds the
//! same bytes, and the indexed reader sees the same archive through both.
#![no_main]

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vma_format::raw::{
    ext, extent_md5, BLOCK_SIZE, CLUSTER_SIZE, EXTENT_HEADER_SIZE, EXTENT_MAGIC,
};
use vma_format::seekable::SeekOptions;
use vma_format::{Compression, Error, IndexedReader, ReadAt, StreamReader};

fuzz_target!(|data: &[u8]| {
    for data in vma_fuzz::variants(data) {
        let strict = vma_fuzz::stream_image(&data).ok().map(|img| {
            let clusters: usize = img.extent_clusters.iter().sum();
            assert!(clusters <= img.extent_clusters.len() * vma_format::raw::BLOCKINFO_SLOTS);
            img
        });
        salvage(&data, strict.as_ref());
        // Through the decompression front-end, as the CLI reads files and stdin.
        if let Ok((_, rd)) = vma_format::decompressor(&data[..]) {
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
        if vma_format::detect(&data) != Compression::None {
            seekable(&data);
        }
    }
});

/// Largest decompressed stream compared against the seekable source.
const MAX_DECOMPRESSED: u64 = 16 << 20;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("vma-fuzz-seekable-")
            .tempdir_in(base)
            .expect("tempdir")
    })
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
    let opts = SeekOptions {
        sidecar_dir: Some(dir.join("idx")),
        cache_dir: Some(dir.join("cache")),
        rebuild: true,
        memory: 1 << 20,
        cache_frame_size: 64 << 10,
        threads: 1,
        ..SeekOptions::default()
    };
    let opened = vma_format::seekable::open_seekable(&path, &opts);
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
    let _ = std::fs::remove_dir_all(dir.join("idx"));
    let _ = std::fs::remove_dir_all(dir.join("cache"));
}

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
        assert!(
            end <= data.len() as u64,
            "extent at {} runs past the input",
            x.offset
        );
        next_min = end;
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
            assert!(dev.is_vmstate() || c.device_offset() < dev.size);
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
