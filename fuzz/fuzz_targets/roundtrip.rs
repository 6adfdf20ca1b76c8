//! `roundtrip`: structured input → `WriterBuilder`/`Writer` into a `Vec` →
//! both readers return exactly the input disks and configs; every extent holds
//! at most 58 clusters; the data/zero map matches the non-zero 4 KiB blocks.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use vma_format::names::check_name;
use vma_format::raw::{BLOCK_SIZE, CLUSTER_SIZE, WRITER_CLUSTERS_PER_EXTENT};
use vma_format::{IndexedReader, MappingKind, Uuid, WriterBuilder};

const MAX_DISK: u32 = 300 * 1024;

#[derive(Debug)]
struct Disk {
    size: u64,
    data: Vec<u8>,
}

impl<'a> Arbitrary<'a> for Disk {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Sizes near cluster and block boundaries matter most.
        let size = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(1..=MAX_DISK)?,
            1 => u.int_in_range(1..=4u32)? * CLUSTER_SIZE as u32,
            2 => {
                (u.int_in_range(1..=MAX_DISK / 4096)? * 4096).saturating_add(u.int_in_range(0..=2)?)
                    - 1
            }
            _ => u.int_in_range(1..=MAX_DISK / 512)? * 512,
        }
        .max(1) as u64;
        let mut data = vec![0u8; size as usize];
        let seed: u64 = u.arbitrary()?;
        let mut x = seed | 1;
        for (i, block) in data.chunks_mut(BLOCK_SIZE).enumerate() {
            // One kind byte per block; blocks past the input's end are zero.
            match u.arbitrary::<u8>().unwrap_or(0) % 5 {
                0 | 1 => {}
                2 => {
                    for w in block.chunks_mut(8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
                    }
                }
                3 => *block.last_mut().unwrap() = (i as u8) | 1,
                _ => block[0] = 0x80 | i as u8,
            }
        }
        Ok(Disk { size, data })
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    uuid: [u8; 16],
    ctime: i64,
    configs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Clamped to 0..=4 disks.
    disks: Vec<Disk>,
    /// Drives the permutation of (disk, cluster) write order.
    order: Vec<u32>,
    /// Extra names to try as device names (checked with check_name).
    names: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| run(input));

fn run(mut input: Input) {
    input.disks.truncate(4);
    input.configs.truncate(8);
    let mut b = WriterBuilder::new();
    b.uuid(Uuid::from_bytes(input.uuid)).ctime(input.ctime);
    let mut configs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, data) in input.configs {
        let base = name.rsplit(|&c| c == b'/').next().unwrap_or(&name).to_vec();
        let ok = check_name(&base).is_ok()
            && !configs.iter().any(|(n, _)| *n == base)
            && data.len() <= 65535;
        let res = b.add_config(&name, data.clone());
        assert_eq!(
            res.is_ok(),
            ok,
            "add_config({:?}) = {res:?}",
            String::from_utf8_lossy(&name)
        );
        if ok {
            configs.push((base, data));
        }
    }
    let mut devnames: Vec<Vec<u8>> = Vec::new();
    for (i, d) in input.disks.iter().enumerate() {
        let mut name = input
            .names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("drive-scsi{i}").into_bytes());
        if check_name(&name).is_err() || devnames.contains(&name) {
            assert!(
                b.add_device(&name, d.size).is_err(),
                "bad or duplicate device name accepted"
            );
            name = b"vmstate".to_vec();
        }
        // "vmstate" has its own (ordered, unbounded) rules; keep disks plain here.
        let mut k = 0;
        while name == b"vmstate" || devnames.contains(&name) {
            name = format!("drive-sata{i}-{k}").into_bytes();
            k += 1;
        }
        assert_eq!(b.add_device(&name, d.size).ok(), Some(i as u8 + 1));
        devnames.push(name);
    }
    let w = b.build(Vec::new()).expect("a small header fits");
    // All (disk, cluster) pairs, permuted by the input.
    let mut order: Vec<(usize, u32)> = input
        .disks
        .iter()
        .enumerate()
        .flat_map(|(i, d)| (0..d.size.div_ceil(CLUSTER_SIZE as u64) as u32).map(move |c| (i, c)))
        .collect();
    for (i, &r) in input.order.iter().enumerate().take(order.len()) {
        let j = i + r as usize % (order.len() - i);
        order.swap(i, j);
    }
    for &(i, c) in &order {
        let start = c as usize * CLUSTER_SIZE;
        let end = (start + CLUSTER_SIZE).min(input.disks[i].data.len());
        w.write_cluster(i as u8 + 1, c, &input.disks[i].data[start..end])
            .expect("write_cluster");
    }
    // Writing a cluster twice is refused.
    if let Some(&(i, c)) = order.first() {
        let start = c as usize * CLUSTER_SIZE;
        let end = (start + CLUSTER_SIZE).min(input.disks[i].data.len());
        assert!(w
            .write_cluster(i as u8 + 1, c, &input.disks[i].data[start..end])
            .is_err());
    }
    let (archive, summary) = w.finish().expect("finish");
    assert_eq!(summary.bytes, archive.len() as u64);

    // Streaming reader.
    let img = vma_fuzz::stream_image(&archive).expect("stream reader accepts our archive");
    assert!(!img.extent_clusters.is_empty());
    for &n in &img.extent_clusters {
        assert!(n <= WRITER_CLUSTERS_PER_EXTENT, "extent with {n} clusters");
    }
    assert!(img.completeness.is_complete());
    assert_eq!(img.header.uuid.as_bytes(), &input.uuid);
    assert_eq!(img.header.ctime, input.ctime);
    let got: Vec<_> = img
        .header
        .configs
        .iter()
        .map(|c| (c.name.clone(), c.data.clone()))
        .collect();
    assert_eq!(got, configs);
    let got: Vec<_> = img
        .header
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.size))
        .collect();
    let want: Vec<_> = devnames
        .iter()
        .cloned()
        .zip(input.disks.iter().map(|d| d.size))
        .collect();
    assert_eq!(got, want);

    // Indexed reader.
    let ix = IndexedReader::open(archive.as_slice()).expect("indexed reader accepts our archive");
    assert!(ix.completeness().is_complete());
    for (i, d) in input.disks.iter().enumerate() {
        let id = i as u8 + 1;
        let from_stream = img.expected(id, 0, d.data.len()).unwrap();
        assert!(from_stream == d.data, "stream bytes of disk {id} differ");
        let mut buf = vec![0u8; d.data.len() + 7];
        assert_eq!(ix.read(id, 0, &mut buf).unwrap(), d.data.len());
        assert!(
            buf[..d.data.len()] == d.data[..],
            "indexed bytes of disk {id} differ"
        );
        // Unaligned reads too.
        let off = (input.ctime as u64) % d.size;
        let k = buf.len().min(5000);
        let n = ix.read(id, off, &mut buf[..k]).unwrap();
        assert_eq!(
            &buf[..n],
            &d.data[off as usize..(off as usize + k).min(d.data.len())]
        );
        // Data ⇔ the 4 KiB block (clipped to the device) is non-zero.
        let nonzero = |b: usize| {
            d.data[b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(d.data.len())]
                .iter()
                .any(|&x| x != 0)
        };
        let mut pos = 0u64;
        let mut stored = 0u64;
        while let Some(m) = ix.map(id, pos).unwrap() {
            assert_eq!(m.start, pos);
            assert!(m.end > pos && m.end <= d.size);
            let first = (pos / BLOCK_SIZE as u64) as usize;
            let last = ((m.end - 1) / BLOCK_SIZE as u64) as usize;
            for blk in first..=last {
                assert_eq!(
                    nonzero(blk),
                    m.kind == MappingKind::Data,
                    "disk {id} block {blk} in {m:?}"
                );
            }
            if m.kind == MappingKind::Data {
                stored += (last - first + 1) as u64;
            }
            pos = m.end;
        }
        assert_eq!(pos, d.size);
        assert_eq!(ix.stored_bytes(id), stored * BLOCK_SIZE as u64);
        assert_eq!(summary.devices[i].stored_bytes, stored * BLOCK_SIZE as u64);
    }
}
