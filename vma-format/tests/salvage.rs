//! Salvage mode of the streaming reader: damaged extents are skipped by
//! resynchronizing on the next valid extent header (spec §12).

use vma_format::raw::{CLUSTER_SIZE, EXTENT_HEADER_SIZE};
use vma_format::{Error, StreamReader, WriterBuilder};

/// Two disks of 100 clusters each, every cluster holding its own number.
fn archive() -> Vec<u8> {
    let mut b = WriterBuilder::new();
    b.add_device("drive-scsi0", 100 * CLUSTER_SIZE as u64)
        .unwrap();
    b.add_device("drive-scsi1", 100 * CLUSTER_SIZE as u64)
        .unwrap();
    let w = b.build(Vec::new()).unwrap();
    for c in 0..100u32 {
        for dev in [1u8, 2] {
            let mut data = vec![0u8; CLUSTER_SIZE];
            data[..4].copy_from_slice(&c.to_be_bytes());
            data[4] = dev;
            w.write_cluster(dev, c, &data).unwrap();
        }
    }
    w.finish().unwrap().0
}

/// Offsets of every extent header.
fn extent_offsets(a: &[u8]) -> Vec<u64> {
    let mut r = StreamReader::new(a).unwrap();
    let mut v = vec![];
    while let Some(e) = r.next_extent().unwrap() {
        v.push(e.offset);
    }
    v
}

fn drain(r: &mut StreamReader<&[u8]>) -> Vec<(u8, u32)> {
    let mut seen = vec![];
    while let Some(e) = r.next_extent().unwrap() {
        for c in e.clusters() {
            assert_eq!(&c.data[..4], &c.cluster.to_be_bytes());
            assert_eq!(c.data[4], c.dev_id);
            seen.push((c.dev_id, c.cluster));
        }
    }
    seen
}

#[test]
fn skips_a_damaged_extent_and_reports_what_is_missing() {
    let mut a = archive();
    let offs = extent_offsets(&a);
    assert!(offs.len() >= 4, "{offs:?}");
    // Flip a byte in the blockinfo of the second extent: its checksum fails.
    a[offs[1] as usize + 100] ^= 0xff;

    let mut strict = StreamReader::new(&a[..]).unwrap();
    strict.next_extent().unwrap();
    match strict.next_extent() {
        Err(Error::ExtentChecksum { offset, index: 1 }) => assert_eq!(offset, offs[1]),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("damage not detected"),
    }

    let mut r = StreamReader::new(&a[..]).unwrap();
    r.set_salvage(true);
    let seen = drain(&mut r);
    assert_eq!(r.damage().len(), 1);
    assert!(matches!(r.damage()[0], Error::ExtentChecksum { offset, .. } if offset == offs[1]));
    // Exactly the 58 clusters of the damaged extent are missing.
    assert_eq!(seen.len(), 200 - 58);
    let c = r.completeness();
    assert_eq!(c.devices.iter().map(|d| d.missing).sum::<u64>(), 58);
    assert!(c.check(|_| true).is_err());
    assert_eq!(r.offset(), a.len() as u64);
}

#[test]
fn skips_garbage_between_extents_and_truncation_ends_cleanly() {
    let a = archive();
    let offs = extent_offsets(&a);
    // Insert 1000 bytes of garbage (with a fake "VMAE") before the third extent,
    // and cut the archive in the middle of the last extent.
    let mut b = a[..offs[2] as usize].to_vec();
    b.extend_from_slice(b"VMAE\0\0");
    b.extend(std::iter::repeat_n(0x5a, 994));
    let last = *offs.last().unwrap() as usize;
    b.extend_from_slice(&a[offs[2] as usize..last + EXTENT_HEADER_SIZE + 10]);

    let mut r = StreamReader::new(&b[..]).unwrap();
    r.set_salvage(true);
    let seen = drain(&mut r);
    let kinds: Vec<String> = r.damage().iter().map(|e| e.to_string()).collect();
    assert_eq!(r.damage().len(), 2, "{kinds:?}");
    assert!(
        matches!(r.damage()[1], Error::ShortExtent { .. }),
        "{kinds:?}"
    );
    // Everything but the truncated last extent survives.
    let last_clusters = 200 - 58 * (offs.len() - 1);
    assert_eq!(seen.len(), 200 - last_clusters);
}

#[test]
fn drops_only_the_bad_cluster_of_a_valid_extent() {
    // A cluster beyond its device's end inside an extent whose header is valid.
    let mut b = WriterBuilder::new();
    b.add_device("a", 2 * CLUSTER_SIZE as u64).unwrap();
    let w = b.build(Vec::new()).unwrap();
    w.write_cluster(1, 0, &vec![1u8; CLUSTER_SIZE]).unwrap();
    w.write_cluster(1, 1, &vec![2u8; CLUSTER_SIZE]).unwrap();
    let mut a = w.finish().unwrap().0;
    let h = vma_format::parse_header(&a).unwrap().header_size() as usize;
    // Slot 1 → cluster 7 (past the end); fix the extent checksum.
    a[h + 40 + 8 + 7] = 7;
    let md5 = vma_format::raw::extent_md5(a[h..h + 512].try_into().unwrap());
    a[h + 24..h + 40].copy_from_slice(&md5);
    let mut r = StreamReader::new(&a[..]).unwrap();
    r.set_salvage(true);
    let mut seen = vec![];
    while let Some(e) = r.next_extent().unwrap() {
        seen.extend(e.clusters().map(|c| c.cluster));
    }
    assert_eq!(seen, vec![0]);
    assert!(matches!(r.damage(), [Error::BeyondEnd { cluster: 7, .. }]));
}

#[test]
fn writer_refuses_vmstate_out_of_order_so_readers_accept_its_output() {
    let mut b = WriterBuilder::new();
    b.add_device("vmstate", 2 * CLUSTER_SIZE as u64).unwrap();
    let w = b.build(Vec::new()).unwrap();
    let e = w.write_cluster(1, 1, &vec![1u8; CLUSTER_SIZE]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VmstateWriteOrder {
                cluster: 1,
                expected: 0
            }
        ),
        "{e}"
    );
    w.write_cluster(1, 0, &vec![1u8; CLUSTER_SIZE]).unwrap();
    w.write_cluster(1, 1, &vec![2u8; CLUSTER_SIZE]).unwrap();
    let a = w.finish().unwrap().0;
    let mut r = StreamReader::new(&a[..]).unwrap();
    assert_eq!(drain_plain(&mut r), vec![0, 1]);
}

fn drain_plain(r: &mut StreamReader<&[u8]>) -> Vec<u32> {
    let mut v = vec![];
    while let Some(e) = r.next_extent().unwrap() {
        v.extend(e.clusters().map(|c| c.cluster));
    }
    v
}

/// Everything a reader reports: per extent (offset, slots), then the final
/// error or completeness.
type Observed = (Vec<(u64, Vec<(u8, u32, u16)>)>, String);

fn observe(a: &[u8], discard: bool, salvage: bool) -> Observed {
    let mut r = StreamReader::new(a).unwrap();
    r.set_discard_data(discard);
    r.set_salvage(salvage);
    let mut seen = vec![];
    let end = loop {
        match r.next_extent() {
            Ok(Some(e)) => {
                let slots: Vec<_> = e.slots().map(|s| (s.dev_id, s.cluster, s.mask)).collect();
                let from_clusters: Vec<_> = e
                    .clusters()
                    .map(|c| (c.dev_id, c.cluster, c.mask))
                    .collect();
                if discard {
                    assert!(from_clusters.is_empty(), "headers-only mode yields no data");
                } else {
                    assert_eq!(slots, from_clusters);
                }
                seen.push((e.offset, slots));
            }
            Ok(None) => {
                break format!(
                    "{:?} damage {:?}",
                    r.completeness()
                        .check(|_| true)
                        .err()
                        .map(|e| e.to_string()),
                    r.damage().iter().map(|e| e.to_string()).collect::<Vec<_>>()
                )
            }
            Err(e) => break format!("error {e}"),
        }
    };
    (seen, end)
}

/// Headers-only mode (what `verify` uses) sees the same extents, clusters,
/// truncation and damage as the full reader, at every cut and flipped byte tried.
#[test]
fn discard_mode_reports_what_the_full_reader_reports() {
    let a = archive();
    let offs = extent_offsets(&a);
    assert!(offs.len() > 2);
    let full = observe(&a, false, false);
    assert_eq!(observe(&a, true, false), full);
    assert!(
        full.1.contains("None"),
        "the intact archive is complete: {}",
        full.1
    );
    // Cuts inside a header, inside data, on a boundary; a flipped data-header byte.
    for cut in [
        offs[1] + 100,
        offs[1] + EXTENT_HEADER_SIZE as u64 + 300_000,
        offs[2],
        a.len() as u64 - 1,
    ] {
        let t = &a[..cut as usize];
        for salvage in [false, true] {
            let full = observe(t, false, salvage);
            assert_eq!(
                observe(t, true, salvage),
                full,
                "cut at {cut}, salvage {salvage}"
            );
            assert!(
                !full.1.contains("(None"),
                "a cut archive must not look complete: {}",
                full.1
            );
        }
    }
    let mut d = a.clone();
    d[offs[1] as usize + 40] ^= 0xff;
    for salvage in [false, true] {
        assert_eq!(observe(&d, true, salvage), observe(&d, false, salvage));
    }
}

/// Disk content with a mix of data blocks, zero blocks and all-zero clusters.
fn mixed(seed: u64, clusters: usize) -> Vec<u8> {
    let mut v = vec![0u8; clusters * CLUSTER_SIZE];
    let mut x = seed;
    for (i, block) in v.chunks_mut(4096).enumerate() {
        // Every 3rd block and every 7th cluster stay zero.
        if i % 3 == 1 || (i / 16) % 7 == 3 {
            continue;
        }
        for b in block.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
    }
    v
}

/// A cut inside an extent's data: salvage hands out every complete 4 KiB
/// block before the cut, byte-exact, and reports every cluster not wholly
/// present as missing (spec §12, robustness "truncated inside an extent").
#[test]
fn cut_inside_an_extent_yields_every_complete_block_before_the_cut() {
    let disks = [mixed(1, 70), mixed(2, 50)];
    let mut b = WriterBuilder::new();
    b.add_device("drive-scsi0", disks[0].len() as u64).unwrap();
    b.add_device("drive-scsi1", disks[1].len() as u64).unwrap();
    let w = b.build(Vec::new()).unwrap();
    for c in 0..70u32 {
        for (i, d) in disks.iter().enumerate() {
            if let Some(chunk) = d.chunks(CLUSTER_SIZE).nth(c as usize) {
                w.write_cluster(i as u8 + 1, c, chunk).unwrap();
            }
        }
    }
    let a = w.finish().unwrap().0;
    let offs = extent_offsets(&a);
    let x = offs[1] as usize;
    let data0 = x + EXTENT_HEADER_SIZE;
    let ext_end = offs[2] as usize;
    for cut in [
        data0,
        data0 + 1,
        data0 + 4095,
        data0 + 4096,
        data0 + 70_000,
        data0 + 300_000,
        (data0 + ext_end) / 2,
        ext_end - 4096,
        ext_end - 1,
    ] {
        let present = cut - data0;
        let mut r = StreamReader::new(&a[..cut]).unwrap();
        r.set_salvage(true);
        let mut blocks = 0usize;
        let mut exts = 0;
        while let Some(e) = r.next_extent().unwrap() {
            exts += 1;
            assert_eq!(e.is_cut(), e.offset == x as u64, "cut {cut}");
            for c in e.clusters() {
                let dev = &disks[c.dev_id as usize - 1];
                for (bi, bytes) in c.runs() {
                    let at = c.device_offset() as usize + bi * 4096;
                    assert!(
                        bytes == &dev[at..at + bytes.len()],
                        "cut {cut}: dev {} cluster {} block {bi} differs",
                        c.dev_id,
                        c.cluster
                    );
                    if e.offset == x as u64 {
                        blocks += bytes.len() / 4096;
                    }
                }
            }
        }
        assert_eq!(exts, 2, "cut {cut}");
        // Exactly the stored blocks wholly before the cut were handed out.
        assert_eq!(blocks, present / 4096, "cut {cut}");
        assert!(
            matches!(r.damage(), [Error::ShortExtent { offset, .. }] if *offset == x as u64),
            "cut {cut}: {:?}",
            r.damage()
        );
        assert_eq!(r.offset(), cut as u64);
        // Missing: the clusters of the cut extent not wholly present, and
        // every later one. Mask-0 clusters are present (the header says so).
        let mut intact = StreamReader::new(&a[..]).unwrap();
        intact.next_extent().unwrap();
        let mut missing = 0u64;
        {
            let e = intact.next_extent().unwrap().unwrap();
            let mut pos = 0;
            for s in e.slots() {
                pos += s.mask.count_ones() as usize * 4096;
                if s.mask != 0 && pos > present {
                    missing += 1;
                }
            }
        }
        while let Some(e) = intact.next_extent().unwrap() {
            missing += e.slots().count() as u64;
        }
        let c = r.completeness();
        assert_eq!(
            c.devices.iter().map(|d| d.missing).sum::<u64>(),
            missing,
            "cut {cut}"
        );
        // Without salvage the same cut is an error naming the extent.
        let mut strict = StreamReader::new(&a[..cut]).unwrap();
        strict.next_extent().unwrap();
        assert!(
            matches!(strict.next_extent(), Err(Error::ShortExtent { offset, .. }) if offset == x as u64)
        );
    }
}

/// The input the stream fuzzer found (kept in fuzz/regressions): a damaged
/// archive whose salvage resynchronizes onto an extent cut short that holds
/// copies of clusters read before. A partial copy is a duplicate like a
/// whole one: salvage never yields a cluster twice.
#[test]
fn a_partial_copy_in_a_cut_extent_is_a_duplicate() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/stream-salvage-cut-duplicate.bin");
    let data = std::fs::read(path).unwrap();
    let mut r = vma_format::StreamReader::new(&data[..]).unwrap();
    r.set_salvage(true);
    let mut seen = std::collections::HashSet::new();
    let mut cut = false;
    while let Some(x) = r.next_extent().unwrap() {
        cut |= x.is_cut();
        for c in x.clusters() {
            assert!(
                seen.insert((c.dev_id, c.cluster)),
                "cluster {} of dev {} yielded twice",
                c.cluster,
                c.dev_id
            );
        }
    }
    assert!(cut, "the input ends inside an extent");
    assert!(r
        .damage()
        .iter()
        .any(|e| matches!(e, vma_format::Error::DuplicateCluster { .. })));
}
