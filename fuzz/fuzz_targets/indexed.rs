//! `indexed`: `IndexedReader::open` over arbitrary bytes plus arbitrary reads,
//! `map`, `seek_data` and `seek_hole` never panic, and the indexed and the
//! streaming reader agree: both accept or both reject the same bytes (the
//! stream counted as accepting only if it opened and drained without error),
//! and when both accept, the same header, the same completeness and the same
//! device bytes for every read range.
//!
//! Input layout: byte 0 = number of reads n (mod 8), then n × 9 bytes
//! `(dev_id: u8, offset: u32 LE, len: u32 LE)` with len capped at 1 MiB, then
//! the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vma_format::{IndexedReader, MappingKind};
use vma_fuzz::{stream_image, variants, MAX_READ_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    if rest.len() < n * 9 {
        return;
    }
    let (spec, archive) = rest.split_at(n * 9);
    let reads: Vec<(u8, u64, usize)> = spec
        .chunks_exact(9)
        .map(|c| {
            let off = u32::from_le_bytes(c[1..5].try_into().unwrap());
            let len = u32::from_le_bytes(c[5..9].try_into().unwrap()) as usize % (MAX_READ_LEN + 1);
            (c[0], u64::from(off), len)
        })
        .collect();
    for archive in variants(archive) {
        check(&archive, &reads);
    }
});

fn check(archive: &[u8], reads: &[(u8, u64, usize)]) {
    let indexed = IndexedReader::open(archive.to_vec());
    let streamed = stream_image(archive);
    let (ix, img) = match (indexed, streamed) {
        (Ok(ix), Ok(img)) => (ix, img),
        (Err(_), Err(_)) => return,
        (a, b) => panic!(
            "readers disagree: indexed {:?}, stream {:?}",
            a.as_ref().map(|_| "ok"),
            b.as_ref().map(|_| "ok")
        ),
    };
    assert_eq!(ix.header(), &img.header);
    assert_eq!(ix.completeness(), &img.completeness);
    assert_eq!(ix.extent_count(), img.extent_clusters.len());
    for d in &img.header.devices {
        let blocks: u64 = img
            .clusters
            .iter()
            .filter(|((id, _), _)| *id == d.id)
            .map(|(_, (m, _))| u64::from(m.count_ones()))
            .sum();
        assert_eq!(ix.stored_bytes(d.id), blocks * 4096);
    }
    let mut buf = Vec::new();
    for &(dev_id, offset, len) in reads {
        // Aim reads at real devices most of the time: dev_id selects among them.
        let dev_id = match img.header.devices.len() {
            0 => dev_id,
            k if dev_id >= 0x80 => img.header.devices[usize::from(dev_id) % k].id,
            _ => dev_id,
        };
        buf.clear();
        buf.resize(len, 0xa5);
        match (
            ix.read(dev_id, offset, &mut buf),
            img.expected(dev_id, offset, len),
        ) {
            (Ok(got), Some(want)) => {
                assert_eq!(got, want.len(), "read length");
                assert!(
                    buf[..got] == want[..],
                    "bytes differ: dev {dev_id} offset {offset} len {len}"
                );
            }
            (Err(_), None) => continue,
            (a, b) => panic!(
                "read of dev {dev_id}: indexed {:?}, stream has device: {}",
                a.map(|_| ()),
                b.is_some()
            ),
        }
        let size = img.header.device(dev_id).map_or(0, |d| d.size);
        match ix.map(dev_id, offset).expect("device exists") {
            None => assert!(offset >= size),
            Some(m) => {
                assert!(
                    m.start == offset && m.end > m.start && m.end <= size,
                    "{m:?} size {size}"
                );
                // The first block of the run has the run's kind (a whole run is too big to check).
                let probe = (m.end - m.start).min(4096) as usize;
                let want = img.expected(dev_id, m.start, probe).unwrap();
                let data = m.kind == MappingKind::Data;
                assert_eq!(
                    data,
                    img.stored(dev_id, m.start),
                    "kind at run start: {m:?}"
                );
                assert_eq!(
                    data,
                    img.stored(dev_id, m.end - 1),
                    "kind at run end: {m:?}"
                );
                if m.kind == MappingKind::Zero {
                    assert!(want.iter().all(|&b| b == 0), "zero run holds data: {m:?}");
                }
                // A run ends where the kind changes (or at the device end).
                if m.end < size {
                    let next = ix.map(dev_id, m.end).unwrap().expect("inside device");
                    assert_ne!(next.kind, m.kind, "runs are maximal: {m:?} then {next:?}");
                }
                let sd = ix.seek_data(dev_id, offset).unwrap();
                let sh = ix.seek_hole(dev_id, offset).unwrap();
                match m.kind {
                    MappingKind::Data => {
                        assert_eq!(sd, Some(offset));
                        assert_eq!(sh, Some(m.end));
                    }
                    MappingKind::Zero => {
                        assert_eq!(sh, Some(offset));
                        assert_eq!(sd, (m.end < size).then_some(m.end));
                    }
                }
            }
        }
    }
}
