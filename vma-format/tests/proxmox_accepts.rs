//! The per-cluster verdict of both readers against a model of Proxmox's
//! reader (vma-format.md §7 "Reader extent/restore validation", spec §11.3):
//! for device sizes that are multiples of 512 we accept exactly what
//! Proxmox accepts (spec §12: never refuse what Proxmox restores, keep
//! refusing what it refuses or aborts on), warning where no correct writer
//! would produce the shape; for other sizes only the documented leniency
//! of the final partial sector (spec §12 d) differs.

use proptest::prelude::*;
use vma_format::raw::{extent_md5, BlockInfo, RawExtentHeader, CLUSTER_SIZE};
use vma_format::{build_header, Error, IndexedReader, StreamReader, Uuid, WarningKind};

const UUID: Uuid = Uuid::from_u128(0x7777_0000_0000_0000_0000_0000_0000_0001);

/// Header with one device of `size`; one extent with one slot (cluster, mask).
fn archive(size: u64, cluster: u32, mask: u16) -> Vec<u8> {
    let mut a = build_header(UUID, 0, &[], &[(b"drive-scsi0".to_vec(), size)]).unwrap();
    let mut e = RawExtentHeader {
        uuid: *UUID.as_bytes(),
        block_count: mask.count_ones() as u16,
        ..RawExtentHeader::default()
    };
    e.blockinfo[0] = BlockInfo {
        mask,
        reserved: 0,
        dev_id: 1,
        cluster,
    };
    let mut h = e.serialize();
    let md5 = extent_md5(&h);
    h[24..40].copy_from_slice(&md5);
    a.extend_from_slice(&h);
    a.resize(a.len() + mask.count_ones() as usize * 4096, 0x5a);
    a
}

/// Proxmox's `restore_extent` on one slot: true if it accepts (neither an
/// error nor an assertion abort).
fn proxmox_accepts(size: u64, cluster: u32, mask: u16) -> bool {
    let sectors = size / 512;
    let words = sectors.div_ceil(8192);
    let c = u64::from(cluster);
    if c / 64 >= words {
        return false; // assert(bitmap_size > idx)
    }
    match mask {
        0 => true,
        0xFFFF => c * 128 < sectors,
        _ => (0..16u64)
            .filter(|j| mask & (1 << j) != 0)
            .all(|j| c * 128 + j * 8 < sectors),
    }
}

/// Our verdict: `Some(warnings)` if accepted, `None` if refused with BeyondEnd.
fn ours(size: u64, cluster: u32, mask: u16) -> Option<Vec<WarningKind>> {
    let a = archive(size, cluster, mask);
    let mut sr = StreamReader::new(&a[..]).unwrap();
    let stream = loop {
        match sr.next_extent() {
            Ok(Some(_)) => {}
            Ok(None) => break Ok(sr.warnings().iter().map(|w| w.kind).collect::<Vec<_>>()),
            Err(e) => break Err(e),
        }
    };
    let indexed =
        IndexedReader::open(a).map(|r| r.warnings().iter().map(|w| w.kind).collect::<Vec<_>>());
    match (stream, indexed) {
        (Ok(s), Ok(i)) => {
            assert_eq!(s, i, "readers disagree on warnings");
            Some(s)
        }
        (Err(Error::BeyondEnd { .. }), Err(Error::BeyondEnd { .. })) => None,
        (s, i) => {
            panic!("size {size} cluster {cluster} mask {mask:#x}: stream {s:?}, indexed {i:?}")
        }
    }
}

fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        Just(512),
        Just(1 << 48),
        Just(u64::MAX - 511),
        Just(u64::MAX),
        (1u64..1 << 24).prop_map(|s| s * 512),
        1u64..1 << 32,
        any::<u64>().prop_filter("not 0", |&s| s > 0),
    ]
}

fn masks() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(0xFFFF),
        Just(1),
        Just(0x8000),
        any::<u16>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn both_readers_accept_what_proxmox_accepts(size in sizes(), delta in -3i64..80, far in any::<u32>(), use_far in 0u8..8, mask in masks()) {
        let clusters = size.div_ceil(CLUSTER_SIZE as u64);
        let cluster = if use_far == 0 {
            far
        } else {
            (clusters as i64 + delta).clamp(0, u32::MAX as i64) as u32
        };
        let got = ours(size, cluster, mask);
        let c = u64::from(cluster);
        let last_block = if mask == 0 { 0 } else { 15 - u64::from(mask.leading_zeros()) };
        // The spec §12 model, in bytes.
        let want = if c >= clusters {
            let bitmap_end = (size / 512).div_ceil(8192) * 64;
            (mask == 0 && c < bitmap_end).then(|| vec![WarningKind::ClusterPastEnd { cluster }])
        } else if mask == 0 || c * 65536 + last_block * 4096 < size {
            Some(vec![])
        } else if mask == 0xFFFF {
            let inside = (size - c * 65536).div_ceil(4096) as u32;
            Some(vec![WarningKind::BlocksPastEnd { cluster, blocks: 16 - inside }])
        } else {
            None
        };
        prop_assert_eq!(&got, &want, "size {} cluster {} mask {:#x}", size, cluster, mask);
        let pve = proxmox_accepts(size, cluster, mask);
        if size % 512 == 0 {
            // Exactly Proxmox's verdict.
            prop_assert_eq!(got.is_some(), pve, "size {} cluster {} mask {:#x}", size, cluster, mask);
        } else if pve {
            // Never refuse what Proxmox accepts; more lenient only in the final partial sector.
            prop_assert!(got.is_some());
        }
    }
}

#[test]
fn the_two_tolerated_shapes_at_fixed_points() {
    // 1 MiB + 512: 17 clusters, Proxmox's bitmap covers 64.
    let size = (1 << 20) + 512;
    assert_eq!(
        ours(size, 17, 0),
        Some(vec![WarningKind::ClusterPastEnd { cluster: 17 }])
    );
    assert_eq!(
        ours(size, 63, 0),
        Some(vec![WarningKind::ClusterPastEnd { cluster: 63 }])
    );
    assert_eq!(ours(size, 64, 0), None);
    assert_eq!(ours(size, 17, 1), None);
    assert_eq!(
        ours(size, 16, 0xFFFF),
        Some(vec![WarningKind::BlocksPastEnd {
            cluster: 16,
            blocks: 15
        }])
    );
    assert_eq!(ours(size, 16, 0x0003), None);
    assert_eq!(ours(size, 16, 0x0001), Some(vec![]));
}
