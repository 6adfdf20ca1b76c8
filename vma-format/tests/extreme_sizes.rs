//! Device sizes at the edges of u64 (0, 1, 2^48, 2^64 − 512, 2^64 − 1) in
//! hand-made archives, through both readers: every size arithmetic is
//! checked, so nothing panics or wraps; reads stop at the device end and
//! return exactly the stored bytes; completeness counts up to 2^48 clusters.

use proptest::prelude::*;
use vma_format::raw::{extent_md5, BlockInfo, RawExtentHeader, CLUSTER_SIZE};
use vma_format::{build_header, Error, IndexedReader, MappingKind, StreamReader, Uuid};

const UUID: Uuid = Uuid::from_u128(0x5151_0000_0000_0000_0000_0000_0000_0042);
const SIZES: [u64; 5] = [0, 1, 1 << 48, u64::MAX - 511, u64::MAX];
/// Block 0 of cluster 0 and, where the device reaches it, block 15 of the
/// last addressable cluster (2^32 − 1, ending at 2^48).
const LAST: u32 = u32::MAX;

fn block(tag: u8) -> Vec<u8> {
    (0..4096).map(|i| (i % 253) as u8 ^ tag | 1).collect()
}

fn bi(cluster: u32, mask: u16) -> BlockInfo {
    BlockInfo {
        mask,
        reserved: 0,
        dev_id: 1,
        cluster,
    }
}

/// Header with one device of `size`, then one extent holding the blocks above.
fn archive(size: u64) -> Vec<u8> {
    let mut a = build_header(UUID, 0, &[], &[(b"drive-scsi0".to_vec(), size)]).unwrap();
    let mut e = RawExtentHeader {
        uuid: *UUID.as_bytes(),
        block_count: 1,
        ..RawExtentHeader::default()
    };
    e.blockinfo[0] = bi(0, 0x0001);
    let far = size >= 1 << 48;
    if far {
        e.blockinfo[1] = bi(LAST, 0x8000);
        e.block_count = 2;
    }
    let mut h = e.serialize();
    let md5 = extent_md5(&h);
    h[24..40].copy_from_slice(&md5);
    a.extend_from_slice(&h);
    a.extend_from_slice(&block(1));
    if far {
        a.extend_from_slice(&block(2));
    }
    a
}

/// The device byte at `pos` as the archive describes it.
fn model(pos: u64) -> u8 {
    let last = u64::from(LAST) * CLUSTER_SIZE as u64 + 15 * 4096;
    if pos < 4096 {
        block(1)[pos as usize]
    } else if (last..last + 4096).contains(&pos) {
        block(2)[(pos - last) as usize]
    } else {
        0
    }
}

#[test]
fn size_zero_is_no_device_and_its_clusters_are_refused() {
    let a = archive(0);
    let mut r = StreamReader::new(&a[..]).unwrap();
    assert!(r.header().devices.is_empty());
    assert!(matches!(
        r.next_extent(),
        Err(Error::WrongDevId { dev_id: 1, .. })
    ));
    assert!(matches!(
        IndexedReader::open(a),
        Err(Error::WrongDevId { dev_id: 1, .. })
    ));
}

#[test]
fn both_readers_handle_extreme_sizes() {
    for size in SIZES.into_iter().filter(|&s| s > 0) {
        let a = archive(size);
        let clusters = size.div_ceil(CLUSTER_SIZE as u64);
        let seen = if size >= 1 << 48 { 2 } else { 1 };
        let mut r = StreamReader::new(&a[..]).unwrap();
        let mut got = Vec::new();
        while let Some(e) = r.next_extent().unwrap() {
            got.extend(e.clusters().map(|c| (c.cluster, c.mask, c.device_offset())));
        }
        assert_eq!(got[0], (0, 1, 0), "{size}");
        if seen == 2 {
            assert_eq!(got[1], (LAST, 0x8000, u64::from(LAST) << 16), "{size}");
        }
        let c = r.completeness();
        let d = &c.devices[0];
        assert_eq!(
            (d.total, d.seen, d.missing),
            (clusters, seen, clusters - seen),
            "{size}"
        );
        let complete = clusters == seen;
        match c.check(|_| true) {
            Ok(()) => assert!(complete, "{size}"),
            Err(e) => {
                assert!(!complete);
                assert!(e.to_string().contains("missing cluster 1"), "{size}: {e}");
            }
        }
        assert!(r.warnings().is_empty(), "{size}");

        let ir = IndexedReader::open(a.clone()).unwrap();
        assert_eq!(ir.completeness(), &c, "{size}");
        assert_eq!(ir.stored_bytes(1), seen * 4096);
        // Reads at and across the end stop at the device size.
        for off in [
            0,
            size - 1,
            size.saturating_sub(100),
            size.saturating_sub(70_000),
            size,
        ] {
            let mut buf = vec![0xAAu8; 200_000];
            let n = ir.read(1, off, &mut buf).unwrap();
            assert_eq!(n as u64, (size - off).min(200_000), "{size} @ {off}");
            for (i, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, model(off + i as u64), "{size} @ {off}+{i}");
            }
            assert!(
                buf[n..].iter().all(|&b| b == 0xAA),
                "{size} @ {off}: wrote past the end"
            );
        }
        assert_eq!(ir.read(1, u64::MAX, &mut [0u8; 10]).unwrap(), 0);
        // The data/zero map ends at the device size, never past it.
        let m = ir.map(1, 0).unwrap().unwrap();
        assert_eq!(
            (m.kind, m.start, m.end),
            (MappingKind::Data, 0, 4096.min(size))
        );
        if size > 4096 {
            let m = ir.map(1, 4096).unwrap().unwrap();
            assert_eq!(m.kind, MappingKind::Zero);
            let want_end = if seen == 2 {
                (u64::from(LAST) << 16) + 15 * 4096
            } else {
                size
            };
            assert_eq!(m.end, want_end, "{size}");
            assert_eq!(
                ir.seek_data(1, 4096).unwrap(),
                (seen == 2).then_some(want_end)
            );
            assert_eq!(ir.map(1, size - 1).unwrap().unwrap().end, size);
            // The end counts as a hole (2^48 ends in data).
            let hole = if model(size - 1) != 0 { size } else { size - 1 };
            assert_eq!(ir.seek_hole(1, size - 1).unwrap(), Some(hole), "{size}");
        }
        assert_eq!(ir.map(1, size).unwrap(), None);
        assert_eq!(ir.seek_data(1, size).unwrap(), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any read of any device near the u64 edge returns the modelled bytes.
    #[test]
    fn indexed_reads_match_the_model(which in 1usize..5, back in 0u64..(1 << 20), at_last in any::<bool>(), len in 0usize..150_000) {
        let size = SIZES[which];
        let a = archive(size);
        let ir = IndexedReader::open(a).unwrap();
        let off = if at_last && size >= 1 << 48 {
            ((u64::from(LAST) << 16) + 15 * 4096).saturating_sub(back % 70_000)
        } else {
            size.saturating_sub(back)
        };
        let mut buf = vec![0xAAu8; len];
        let n = ir.read(1, off, &mut buf).unwrap();
        prop_assert_eq!(n as u64, size.saturating_sub(off).min(len as u64));
        for (i, &b) in buf[..n].iter().enumerate() {
            prop_assert_eq!(b, model(off + i as u64));
        }
    }
}
