//! The vma-format writer against both readers: random disks (odd sizes, zero
//! blocks and clusters, any cluster order, several feeding threads) round-trip
//! exactly, the archive obeys the format rules (checked independently of the
//! library where possible), and the writer refuses what it must.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vma_format::names::check_name;
use vma_format::raw::{
    RawExtentHeader, CLUSTER_SIZE, EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE, MAX_DEVICE_SIZE,
    WRITER_CLUSTERS_PER_EXTENT,
};
use vma_format::{Error, IndexedReader, MappingKind, StreamReader, Uuid, WriterBuilder};
use vma_tests::TestRng;

const CS: u64 = CLUSTER_SIZE as u64;

/// MD5 of `bytes` with `[field, field + 16)` zeroed, via the `md-5` crate (spec §6).
fn md5_zeroed(bytes: &[u8], field: usize) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut copy = bytes.to_vec();
    copy[field..field + 16].fill(0);
    Md5::digest(&copy).into()
}

/// Disk content: random blocks, zero blocks, blocks with a single non-zero
/// byte (at the start, the end or anywhere) and all-zero clusters.
fn make_content(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = TestRng::new(seed);
    let mut v = vec![0u8; size.div_ceil(CS) as usize * CLUSTER_SIZE];
    for cluster in v.chunks_mut(CLUSTER_SIZE) {
        if rng.below(4) == 0 {
            continue; // all-zero cluster
        }
        for block in cluster.chunks_mut(4096) {
            match rng.below(10) {
                0..=3 => {}
                4..=6 => rng.fill(block),
                7 => block[0] = 1 + rng.below(255) as u8,
                8 => block[4095] = 1 + rng.below(255) as u8,
                _ => block[rng.below(4096) as usize] = 1 + rng.below(255) as u8,
            }
        }
    }
    v.truncate(size as usize);
    // Make the last byte non-zero sometimes, so a straddling final block is stored.
    if rng.below(2) == 0 {
        *v.last_mut().unwrap() = 0x5a;
    }
    v
}

#[derive(Debug, Clone)]
struct Case {
    sizes: Vec<u64>,
    seed: u64,
    threads: usize,
    configs: usize,
}

fn size_strategy(max: u64) -> impl Strategy<Value = u64> {
    let max_clusters = (max / CS).max(1);
    prop_oneof![
        1..=max,
        (1..=max_clusters).prop_map(|n| n * CS),
        (1..=max / 4096).prop_map(|n| n * 4096),
        (1..=max / 512).prop_map(|n| n * 512),
        (0..max_clusters, 1..CS).prop_map(|(c, r)| c * CS + r),
        Just(1u64),
        Just(4097u64),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..=8)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(size_strategy(1_572_864 / n as u64), n),
                any::<u64>(),
                1usize..=3,
                0usize..=3,
            )
        })
        .prop_map(|(sizes, seed, threads, configs)| Case {
            sizes,
            seed,
            threads,
            configs,
        })
}

/// The mask the writer must produce for `cluster` of `disk`: bit j set iff
/// block j (zero-padded at the device end) has a non-zero byte.
fn expected_mask(disk: &[u8], cluster: u32) -> u16 {
    let mut mask = 0;
    for j in 0..16u64 {
        let start = u64::from(cluster) * CS + j * 4096;
        if start >= disk.len() as u64 {
            break;
        }
        let end = (start + 4096).min(disk.len() as u64);
        if disk[start as usize..end as usize].iter().any(|&b| b != 0) {
            mask |= 1 << j;
        }
    }
    mask
}

fn run_case(case: &Case) {
    let mut rng = TestRng::new(case.seed);
    let disks: Vec<(String, Vec<u8>)> = case
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| (format!("drive-scsi{i}"), make_content(s, rng.next_u64())))
        .collect();
    let configs: Vec<(String, Vec<u8>)> = (0..case.configs)
        .map(|i| {
            let mut d = vec![0u8; 1 + rng.below(3000) as usize];
            rng.fill(&mut d);
            (format!("cfg{i}.conf"), d)
        })
        .collect();
    let uuid = Uuid::from_u64_pair(rng.next_u64(), rng.next_u64());
    let ctime = rng.below(1 << 40) as i64;

    let mut b = WriterBuilder::new();
    for (n, d) in &configs {
        b.add_config(n, d.clone()).unwrap();
    }
    for (i, (n, d)) in disks.iter().enumerate() {
        assert_eq!(b.add_device(n, d.len() as u64).unwrap() as usize, i + 1);
    }
    b.uuid(uuid).ctime(ctime);
    let w = b.build(Vec::new()).unwrap();

    let mut order: Vec<(u8, u32)> = disks
        .iter()
        .enumerate()
        .flat_map(|(i, (_, d))| {
            (0..d.len().div_ceil(CLUSTER_SIZE) as u32).map(move |c| (i as u8 + 1, c))
        })
        .collect();
    rng.shuffle(&mut order);
    let slice = |dev: u8, c: u32| -> &[u8] {
        let d = &disks[dev as usize - 1].1;
        let s = c as usize * CLUSTER_SIZE;
        &d[s..(s + CLUSTER_SIZE).min(d.len())]
    };
    std::thread::scope(|s| {
        for t in 0..case.threads {
            let (w, order, slice) = (&w, &order, &slice);
            s.spawn(move || {
                for &(dev, c) in order.iter().skip(t).step_by(case.threads) {
                    w.write_cluster(dev, c, slice(dev, c)).unwrap();
                }
            });
        }
    });
    let (bytes, summary) = w.finish().unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(summary.uuid, uuid);

    // ---- header, checked by hand ----
    let hs = u32::from_be_bytes(bytes[56..60].try_into().unwrap()) as usize;
    assert!(
        hs > HEADER_FIXED_SIZE && hs.is_multiple_of(512),
        "header_size {hs}"
    );
    assert_eq!(&bytes[..8], b"VMA\0\0\0\0\x01");
    assert_eq!(md5_zeroed(&bytes[..hs], 32), bytes[32..48], "header MD5");
    assert_eq!(vma_format::raw::header_md5(&bytes[..hs]), bytes[32..48]);

    // ---- streaming reader ----
    let mut sr = StreamReader::new(&bytes[..]).unwrap();
    let h = sr.header().clone();
    assert_eq!((h.uuid, h.ctime, h.header_size()), (uuid, ctime, hs as u64));
    let got_cfgs: Vec<_> = h
        .configs
        .iter()
        .map(|c| (c.name_str().into_owned(), c.data.clone()))
        .collect();
    assert_eq!(got_cfgs, configs);
    let got_devs: Vec<_> = h
        .devices
        .iter()
        .map(|d| (d.id, d.name_str().into_owned(), d.size))
        .collect();
    let want_devs: Vec<_> = disks
        .iter()
        .enumerate()
        .map(|(i, (n, d))| (i as u8 + 1, n.clone(), d.len() as u64))
        .collect();
    assert_eq!(got_devs, want_devs);

    let mut rebuilt: Vec<Vec<u8>> = disks.iter().map(|(_, d)| vec![0u8; d.len()]).collect();
    let mut seen_order = Vec::new();
    let mut extent_sizes = Vec::new();
    let mut stored_blocks: BTreeMap<u8, u64> = BTreeMap::new();
    while let Some(ext) = sr.next_extent().unwrap() {
        let off = ext.offset as usize;
        let head: &[u8; EXTENT_HEADER_SIZE] =
            bytes[off..off + EXTENT_HEADER_SIZE].try_into().unwrap();
        assert_eq!(md5_zeroed(head, 24), head[24..40], "extent MD5 at {off}");
        let raw = RawExtentHeader::parse(head);
        assert_eq!(
            (raw.magic, raw.reserved, raw.uuid),
            (*b"VMAE", 0, *uuid.as_bytes())
        );
        assert_eq!(raw.block_count, ext.block_count());
        let n = ext.clusters().count();
        // Slots are a dense prefix; the rest are all-zero words (spec §7.2).
        assert!(raw.blockinfo[..n]
            .iter()
            .all(|b| b.dev_id != 0 && b.reserved == 0));
        assert!(raw.blockinfo[n..].iter().all(|b| b.to_u64() == 0));
        assert!(
            n <= WRITER_CLUSTERS_PER_EXTENT,
            "{n} clusters in one extent"
        );
        extent_sizes.push(n);
        for c in ext.clusters() {
            let disk = &disks[c.dev_id as usize - 1].1;
            assert_eq!(
                c.mask,
                expected_mask(disk, c.cluster),
                "mask of dev {} cluster {}",
                c.dev_id,
                c.cluster
            );
            *stored_blocks.entry(c.dev_id).or_default() += u64::from(c.mask.count_ones());
            seen_order.push((c.dev_id, c.cluster));
            let out = &mut rebuilt[c.dev_id as usize - 1];
            for (blk, data) in c.runs() {
                let start = c.device_offset() as usize + blk * 4096;
                let end = (start + data.len()).min(out.len());
                out[start..end].copy_from_slice(&data[..end - start]);
                assert!(
                    data[end - start..].iter().all(|&b| b == 0),
                    "padding past the end is zero"
                );
            }
        }
    }
    for (r, (_, d)) in rebuilt.iter().zip(&disks) {
        assert!(r == d, "streamed device differs from the input");
    }
    let total = order.len();
    assert_eq!(
        extent_sizes.len(),
        total.div_ceil(WRITER_CLUSTERS_PER_EXTENT).max(1)
    );
    assert!(extent_sizes[..extent_sizes.len() - 1]
        .iter()
        .all(|&n| n == WRITER_CLUSTERS_PER_EXTENT));
    if case.threads == 1 {
        assert_eq!(
            seen_order, order,
            "one feeding thread: archive order = write order"
        );
    } else {
        let mut a = seen_order.clone();
        let mut b = order.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }
    assert_eq!(
        sr.offset(),
        bytes.len() as u64,
        "archive ends on an extent boundary"
    );
    sr.completeness().check(|_| true).unwrap();
    assert!(sr.completeness().is_complete());
    for (i, st) in summary.devices.iter().enumerate() {
        assert_eq!(
            st.stored_bytes,
            stored_blocks.get(&(i as u8 + 1)).copied().unwrap_or(0) * 4096
        );
    }

    // ---- indexed reader ----
    let ir = IndexedReader::open(bytes.clone()).unwrap();
    assert!(ir.completeness().is_complete());
    for (i, (_, d)) in disks.iter().enumerate() {
        let dev = i as u8 + 1;
        let chunk = 1 + rng.below(200_000) as usize;
        let mut out = Vec::new();
        let mut buf = vec![0xEEu8; chunk];
        loop {
            let n = ir.read(dev, out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(
            out == *d,
            "indexed read of dev {dev} (chunk {chunk}) differs"
        );
        assert_eq!(ir.stored_bytes(dev), summary.devices[i].stored_bytes);
        // The data/zero map equals the non-zero 4 KiB blocks of the input.
        let mut pos = 0;
        let mut data = Vec::new();
        while let Some(m) = ir.map(dev, pos).unwrap() {
            if m.kind == MappingKind::Data {
                data.push((m.start, m.end));
            }
            pos = m.end;
        }
        assert_eq!(pos, d.len() as u64);
        assert_eq!(data, vma_tests::data_ranges(d), "map of dev {dev}");
        assert_eq!(ir.seek_data(dev, 0).unwrap(), data.first().map(|r| r.0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn writer_output_reads_back_exactly(case in case_strategy()) {
        run_case(&case);
    }
}

/// A few fixed shapes that must always be covered, whatever proptest draws.
#[test]
fn fixed_shapes_round_trip() {
    let shapes: [&[u64]; 5] = [
        &[1],
        &[4097, 65536, 65537],
        &[512, 4096, 131_072, 1_061_376],
        &[58 * CS],              // exactly one full extent
        &[29 * CS, 29 * CS + 1], // 58 + 1 clusters
    ];
    for (i, sizes) in shapes.iter().enumerate() {
        for threads in 1..=3 {
            run_case(&Case {
                sizes: sizes.to_vec(),
                seed: i as u64 * 7 + threads as u64,
                threads,
                configs: i % 3,
            });
        }
    }
}

fn two_disk_writer() -> vma_format::Writer<Vec<u8>> {
    let mut b = WriterBuilder::new();
    b.add_config("qemu-server.conf", b"memory: 512\n".to_vec())
        .unwrap();
    assert_eq!(b.add_device("drive-scsi0", 3 * CS + 100).unwrap(), 1);
    assert_eq!(b.add_device("drive-scsi1", CS).unwrap(), 2);
    b.build(Vec::new()).unwrap()
}

#[test]
fn writer_refuses_bad_clusters_and_stays_usable() {
    let w = two_disk_writer();
    let full = vec![7u8; CLUSTER_SIZE];
    let tail = vec![9u8; 100];
    w.write_cluster(1, 0, &full).unwrap();
    assert!(matches!(
        w.write_cluster(1, 0, &full),
        Err(Error::DuplicateWrite { cluster: 0, .. })
    ));
    assert!(matches!(
        w.write_cluster(1, 4, &full),
        Err(Error::ClusterOutOfRange {
            cluster: 4,
            clusters: 4,
            ..
        })
    ));
    assert!(matches!(
        w.write_cluster(2, u32::MAX, &full),
        Err(Error::ClusterOutOfRange { .. })
    ));
    assert!(matches!(
        w.write_cluster(1, 1, &full[..65535]),
        Err(Error::ClusterLength {
            cluster: 1,
            len: 65535,
            expected: 65536,
            ..
        })
    ));
    assert!(matches!(
        w.write_cluster(1, 3, &full),
        Err(Error::ClusterLength {
            cluster: 3,
            len: 65536,
            expected: 100,
            ..
        })
    ));
    assert!(matches!(
        w.write_cluster(1, 3, &[]),
        Err(Error::ClusterLength { len: 0, .. })
    ));
    for dev in [0u8, 3, 255] {
        assert!(
            matches!(w.write_cluster(dev, 0, &full), Err(Error::UnknownDevice { dev_id }) if dev_id == dev)
        );
    }
    // The refusals left no trace: finishing the real clusters gives a valid archive.
    w.write_cluster(1, 1, &full).unwrap();
    w.write_cluster(1, 2, &vec![0u8; CLUSTER_SIZE]).unwrap();
    w.write_cluster(1, 3, &tail).unwrap();
    w.write_cluster(2, 0, &full).unwrap();
    let (bytes, _) = w.finish().unwrap();
    let ir = IndexedReader::open(bytes).unwrap();
    assert!(ir.completeness().is_complete());
    let mut buf = vec![0u8; 3 * CLUSTER_SIZE + 100];
    assert_eq!(ir.read(1, 0, &mut buf).unwrap(), buf.len());
    assert!(buf[..2 * CLUSTER_SIZE].iter().all(|&b| b == 7));
    assert!(buf[2 * CLUSTER_SIZE..3 * CLUSTER_SIZE]
        .iter()
        .all(|&b| b == 0));
    assert!(buf[3 * CLUSTER_SIZE..].iter().all(|&b| b == 9));
}

#[test]
fn writer_finish_refuses_missing_clusters() {
    let w = two_disk_writer();
    w.write_cluster(1, 0, &vec![1u8; CLUSTER_SIZE]).unwrap();
    w.write_cluster(1, 3, &[1u8; 100]).unwrap();
    w.write_cluster(2, 0, &vec![1u8; CLUSTER_SIZE]).unwrap();
    match w.finish() {
        Err(Error::Incomplete {
            missing,
            total,
            ranges,
            ..
        }) => {
            assert_eq!((missing, total), (2, 4));
            assert_eq!(ranges, vec![1..3]);
        }
        other => panic!("expected Incomplete, got {:?}", other.map(|(b, _)| b.len())),
    }
    // Nothing at all written for a device.
    let w = two_disk_writer();
    for c in 0..3 {
        w.write_cluster(1, c, &vec![1u8; CLUSTER_SIZE]).unwrap();
    }
    w.write_cluster(1, 3, &[1u8; 100]).unwrap();
    assert!(matches!(
        w.finish(),
        Err(Error::Incomplete {
            missing: 1,
            total: 1,
            ..
        })
    ));
}

#[test]
fn writer_refuses_bad_descriptions() {
    // More than 256 configs.
    let mut b = WriterBuilder::new();
    for i in 0..256 {
        b.add_config(format!("c{i}"), vec![1u8]).unwrap();
    }
    assert!(matches!(
        b.add_config("c256", vec![1u8]),
        Err(Error::TooManyConfigs)
    ));
    // More than 254 devices.
    let mut b = WriterBuilder::new();
    for i in 0..254 {
        assert_eq!(b.add_device(format!("d{i}"), 512).unwrap() as usize, i + 1);
    }
    assert!(matches!(
        b.add_device("d254", 512),
        Err(Error::TooManyDevices)
    ));
    // 254 devices and 256 configs still fit the 512 KiB header.
    let mut b2 = b.clone();
    for i in 0..256 {
        b2.add_config(format!("c{i}"), vec![1u8; 100]).unwrap();
    }
    assert!(b2.build(Vec::new()).is_ok());
    // Config blobs are at most 65535 bytes.
    let mut b = WriterBuilder::new();
    assert!(matches!(
        b.add_config("big", vec![1u8; 65536]),
        Err(Error::BlobTooLarge { len: 65536, .. })
    ));
    b.add_config("max", vec![1u8; 65535]).unwrap();
    // Device sizes 1..=2^48.
    let mut b = WriterBuilder::new();
    assert!(matches!(
        b.add_device("zero", 0),
        Err(Error::InvalidDeviceSize { size: 0, .. })
    ));
    assert!(matches!(
        b.add_device("huge", MAX_DEVICE_SIZE + 1),
        Err(Error::InvalidDeviceSize { .. })
    ));
    b.add_device("max", MAX_DEVICE_SIZE).unwrap();
    // Duplicate names.
    assert!(matches!(
        b.add_device("max", 1),
        Err(Error::InvalidName { .. })
    ));
    b.add_config("a.conf", vec![1]).unwrap();
    assert!(matches!(
        b.add_config("dir/a.conf", vec![1]),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn writer_refuses_names_failing_check_name() {
    let long = "a".repeat(201);
    let bad: [&[u8]; 10] = [
        b"",
        b".",
        b"..",
        b"a\nb",
        b"a\0b",
        b"-rf",
        b"\xff\xfe",
        long.as_bytes(),
        b"\x7f",
        b"tab\there",
    ];
    for name in bad {
        let why = check_name(name).expect_err("the rule refuses it");
        let mut b = WriterBuilder::new();
        match b.add_device(name, 512) {
            Err(Error::InvalidName {
                what: "device",
                why: w,
                ..
            }) => assert_eq!(w, why),
            other => panic!("device {name:?}: {other:?}"),
        }
        match b.add_config(name, vec![1u8]) {
            Err(Error::InvalidName {
                what: "config",
                why: w,
                ..
            }) => assert_eq!(w, why),
            other => panic!("config {name:?}: {other:?}"),
        }
    }
    // '/' in a device name is refused; a config name is reduced to its basename first.
    let mut b = WriterBuilder::new();
    assert!(matches!(
        b.add_device("a/b", 512),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        b.add_config("dir/", vec![1u8]),
        Err(Error::InvalidName { .. })
    ));
    b.add_config("/etc/pve/qemu-server/100.conf", vec![1u8])
        .unwrap();
    b.add_device("drive-scsi0", 512).unwrap();
    let w = b.build(Vec::new()).unwrap();
    w.write_cluster(1, 0, &[0u8; 512]).unwrap();
    let (bytes, _) = w.finish().unwrap();
    let sr = StreamReader::new(&bytes[..]).unwrap();
    assert_eq!(sr.header().configs[0].name, b"100.conf");
    // Every name the rule accepts is written and read back verbatim.
    for name in ["ü.conf", "x", "vmstate-not", "a b", &"a".repeat(200)] {
        assert_eq!(check_name(name.as_bytes()), Ok(()));
        let mut b = WriterBuilder::new();
        b.add_config(name, vec![2u8]).unwrap();
        b.add_device(name, 512).unwrap();
        let w = b.build(Vec::new()).unwrap();
        w.write_cluster(1, 0, &[0u8; 512]).unwrap();
        let (bytes, _) = w.finish().unwrap();
        let h = StreamReader::new(&bytes[..]).unwrap().header().clone();
        assert_eq!(
            (h.configs[0].name.as_slice(), h.devices[0].name.as_slice()),
            (name.as_bytes(), name.as_bytes())
        );
    }
}

#[test]
fn diskless_archive_is_header_plus_one_empty_extent() {
    for configs in [0usize, 1, 2] {
        let mut b = WriterBuilder::new();
        for i in 0..configs {
            b.add_config(format!("c{i}.conf"), vec![b'x'; 10]).unwrap();
        }
        let w = b.build(Vec::new()).unwrap();
        let (bytes, summary) = w.finish().unwrap();
        let hs = u32::from_be_bytes(bytes[56..60].try_into().unwrap()) as usize;
        assert_ne!(
            hs, HEADER_FIXED_SIZE,
            "never header_size 12288 (spec §12 e)"
        );
        assert_eq!(hs, 12800);
        assert_eq!(bytes.len(), hs + EXTENT_HEADER_SIZE);
        assert_eq!(summary.bytes as usize, bytes.len());
        if configs == 0 {
            assert_eq!(
                u32::from_be_bytes(bytes[52..56].try_into().unwrap()),
                1,
                "blob_buffer_size"
            );
        }
        let head: &[u8; 512] = bytes[hs..].try_into().unwrap();
        let raw = RawExtentHeader::parse(head);
        assert_eq!((raw.magic, raw.reserved, raw.block_count), (*b"VMAE", 0, 0));
        assert!(raw.blockinfo.iter().all(|b| b.to_u64() == 0));
        assert_eq!(md5_zeroed(head, 24), head[24..40]);
        assert_eq!(&raw.uuid, &bytes[8..24]);
        let mut sr = StreamReader::new(&bytes[..]).unwrap();
        assert_eq!(sr.header().configs.len(), configs);
        let e = sr.next_extent().unwrap().expect("one extent");
        assert_eq!((e.block_count(), e.clusters().count()), (0, 0));
        assert!(sr.next_extent().unwrap().is_none());
        assert!(sr.completeness().is_complete());
        let ir = IndexedReader::open(bytes).unwrap();
        assert_eq!(ir.extent_count(), 1);
    }
}
