//! The Proxmox-written vectors (tests/data/vectors) through both vma-format
//! readers: listing, extracted bytes, structural facts, data/zero mapping.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use vma_format::raw::{CLUSTER_SIZE, EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE};
use vma_format::{
    decompressor, ArchiveHeader, Completeness, Compression, IndexedReader, MappingKind, ReadAt,
    StreamReader,
};
use vma_tests::{ctime_utc, parse_list_file, parse_sha256_file, sha256_hex, vector, ListLine};

/// (archive file, stem of its `.list` / `.sha256` files).
const ARCHIVES: [(&str, &str); 4] = [
    ("ref-two-disks.vma", "ref-two-disks"),
    ("ref-two-disks.vma.zst", "ref-two-disks"),
    ("ref-one-disk.vma", "ref-one-disk"),
    ("ref-diskless.vma", "ref-diskless"),
];

/// What one extent looked like to the streaming reader.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtentInfo {
    offset: u64,
    block_count: u16,
    /// (dev_id, cluster, mask) in slot order.
    clusters: Vec<(u8, u32, u16)>,
}

/// Everything a full streaming pass yields.
struct StreamResult {
    header: ArchiveHeader,
    extents: Vec<ExtentInfo>,
    /// dev_id → device bytes reconstructed from the clusters.
    disks: BTreeMap<u8, Vec<u8>>,
    completeness: Completeness,
    end: u64,
}

/// Reads an archive front to back, rebuilding every device into a buffer of its size.
fn stream_all<R: Read>(r: R) -> StreamResult {
    let mut sr = StreamReader::new(r).expect("header");
    let header = sr.header().clone();
    let mut disks: BTreeMap<u8, Vec<u8>> = header
        .devices
        .iter()
        .map(|d| (d.id, vec![0u8; d.size as usize]))
        .collect();
    let mut seen: BTreeMap<(u8, u32), usize> = BTreeMap::new();
    let mut extents = Vec::new();
    while let Some(ext) = sr.next_extent().expect("extent") {
        let mut info = ExtentInfo {
            offset: ext.offset,
            block_count: ext.block_count(),
            clusters: Vec::new(),
        };
        let mut data_bytes = 0usize;
        for c in ext.clusters() {
            info.clusters.push((c.dev_id, c.cluster, c.mask));
            *seen.entry((c.dev_id, c.cluster)).or_default() += 1;
            assert_eq!(
                c.data.len(),
                c.mask.count_ones() as usize * 4096,
                "cluster data length vs mask"
            );
            data_bytes += c.data.len();
            let disk = disks.get_mut(&c.dev_id).expect("cluster of a known device");
            let size = disk.len() as u64;
            let mut run_bytes = 0;
            for (block, bytes) in c.runs() {
                let start = c.device_offset() + block as u64 * 4096;
                assert!(
                    start < size,
                    "stored block starts at or past the device end"
                );
                let end = (start + bytes.len() as u64).min(size);
                let keep = (end - start) as usize;
                disk[start as usize..end as usize].copy_from_slice(&bytes[..keep]);
                // Bytes of a straddling block past the device end are zero (spec §7.5).
                assert!(
                    bytes[keep..].iter().all(|&b| b == 0),
                    "non-zero bytes past the device end"
                );
                run_bytes += bytes.len();
            }
            assert_eq!(run_bytes, c.data.len(), "runs cover the cluster data");
        }
        assert_eq!(
            data_bytes,
            info.block_count as usize * 4096,
            "block_count vs masks"
        );
        extents.push(info);
    }
    assert!(seen.values().all(|&n| n == 1), "a cluster appeared twice");
    let completeness = sr.completeness();
    let end = sr.offset();
    StreamResult {
        header,
        extents,
        disks,
        completeness,
        end,
    }
}

/// The archive bytes, decompressed if needed.
fn plain_bytes(name: &str) -> Vec<u8> {
    let (_, mut r) = decompressor(File::open(vector(name)).unwrap()).unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

fn expected_sha(stem: &str) -> BTreeMap<String, String> {
    let path = vector(&format!("{stem}.sha256"));
    match std::fs::read_to_string(path) {
        Ok(t) => parse_sha256_file(&t)
            .into_iter()
            .map(|(h, n)| (n, h))
            .collect(),
        Err(_) => BTreeMap::new(), // the diskless vector has no extracted files to hash... except its config
    }
}

/// Header and extracted bytes against the `.list` and `.sha256` files.
fn check_against_list(stem: &str, header: &ArchiveHeader, disks: &BTreeMap<u8, Vec<u8>>) {
    let list = parse_list_file(&std::fs::read_to_string(vector(&format!("{stem}.list"))).unwrap());
    let cfgs: Vec<_> = list
        .iter()
        .filter_map(|l| match l {
            ListLine::Cfg { size, name } => Some((name.clone(), *size)),
            _ => None,
        })
        .collect();
    let devs: Vec<_> = list
        .iter()
        .filter_map(|l| match l {
            ListLine::Dev { dev_id, size, name } => Some((*dev_id, name.clone(), *size)),
            _ => None,
        })
        .collect();
    let ctime: Vec<_> = list
        .iter()
        .filter_map(|l| match l {
            ListLine::Ctime(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let got_cfgs: Vec<_> = header
        .configs
        .iter()
        .map(|c| (c.name_str().into_owned(), c.data.len() as u64))
        .collect();
    assert_eq!(got_cfgs, cfgs, "{stem}: configs");
    let got_devs: Vec<_> = header
        .devices
        .iter()
        .map(|d| (d.id, d.name_str().into_owned(), d.size))
        .collect();
    assert_eq!(got_devs, devs, "{stem}: devices");
    assert_eq!(ctime, vec![ctime_utc(header.ctime)], "{stem}: ctime");
    assert_eq!(
        disks.keys().copied().collect::<Vec<_>>(),
        devs.iter().map(|d| d.0).collect::<Vec<_>>()
    );

    let sha = expected_sha(stem);
    for c in &header.configs {
        let want = sha.get(c.name_str().as_ref());
        if !sha.is_empty() {
            assert_eq!(
                Some(&sha256_hex(&c.data)),
                want,
                "{stem}: config {}",
                c.name_str()
            );
        }
        // Every vector's configs are copies of the inputs.
        let input = std::fs::read(vector("inputs").join(c.name_str().as_ref())).unwrap();
        assert_eq!(c.data, input, "{stem}: config {} vs input", c.name_str());
    }
    for d in &header.devices {
        let file = format!("disk-{}.raw", d.name_str());
        assert_eq!(
            Some(&sha256_hex(&disks[&d.id])),
            sha.get(&file),
            "{stem}: {file}"
        );
    }
    // Every config and disk listed in `.sha256` was produced.
    assert_eq!(
        sha.len(),
        if sha.is_empty() {
            0
        } else {
            header.configs.len() + header.devices.len()
        }
    );
}

fn check_complete(c: &Completeness, header: &ArchiveHeader) {
    assert!(c.is_complete(), "{c:?}");
    c.check(|_| true).expect("complete");
    assert_eq!(c.devices.len(), header.devices.len());
    for (dc, d) in c.devices.iter().zip(&header.devices) {
        assert_eq!((dc.dev_id, &dc.name), (d.id, &d.name));
        assert_eq!(dc.total, d.size.div_ceil(CLUSTER_SIZE as u64));
        assert_eq!(
            (dc.seen, dc.missing, dc.ranges.len(), dc.more),
            (dc.total, 0, 0, false)
        );
    }
}

#[test]
fn stream_reader_reads_every_vector() {
    for (name, stem) in ARCHIVES {
        let plain_len = plain_bytes(name).len() as u64;
        let (comp, r) = decompressor(File::open(vector(name)).unwrap()).unwrap();
        let want_comp = if name.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        };
        assert_eq!(comp, want_comp, "{name}");
        let mut runs = vec![stream_all(r)];
        if comp == Compression::None {
            // Also straight over the file, with no decompressor in between.
            runs.push(stream_all(File::open(vector(name)).unwrap()));
        }
        for res in runs {
            check_against_list(stem, &res.header, &res.disks);
            check_complete(&res.completeness, &res.header);
            assert_eq!(res.end, plain_len, "{name}: stream ends at EOF");
            assert_eq!(res.completeness.end, plain_len);
        }
    }
}

/// Reads a whole device through `IndexedReader::read` in chunks of `chunk` bytes.
fn read_device<S: ReadAt>(r: &IndexedReader<S>, dev_id: u8, chunk: usize) -> Vec<u8> {
    let size = r.header().device(dev_id).unwrap().size as usize;
    let mut out = Vec::with_capacity(size);
    let mut buf = vec![0xAAu8; chunk];
    loop {
        let n = r.read(dev_id, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            n == chunk || out.len() + n == size,
            "short read before the device end"
        );
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len(), size);
    out
}

fn check_indexed<S: ReadAt>(r: &IndexedReader<S>, name: &str, stem: &str, plain_len: u64) {
    let h = r.header();
    for chunk in [1_000_003usize, 7777, 65537, 4095] {
        let disks: BTreeMap<u8, Vec<u8>> = h
            .devices
            .iter()
            .map(|d| (d.id, read_device(r, d.id, chunk)))
            .collect();
        check_against_list(stem, h, &disks);
    }
    // A read at or past the end returns 0; one straddling it is short.
    for d in &h.devices {
        let mut buf = [0u8; 10];
        assert_eq!(r.read(d.id, d.size, &mut buf).unwrap(), 0);
        assert_eq!(r.read(d.id, d.size + 12345, &mut buf).unwrap(), 0);
        assert_eq!(r.read(d.id, d.size - 3, &mut buf).unwrap(), 3);
    }
    check_complete(r.completeness(), h);
    assert_eq!(r.completeness().end, plain_len, "{name}");
    assert!(r.read(0, 0, &mut [0u8; 1]).is_err(), "dev 0 is no device");
    assert!(
        r.read(200, 0, &mut [0u8; 1]).is_err(),
        "dev 200 is no device"
    );
}

#[test]
fn indexed_reader_reads_every_vector_over_file_mmap_and_vec() {
    for (name, stem) in ARCHIVES {
        let bytes = plain_bytes(name);
        let plain_len = bytes.len() as u64;
        check_indexed(&IndexedReader::open(bytes).unwrap(), name, stem, plain_len);
        if name.ends_with(".vma") {
            let f = File::open(vector(name)).unwrap();
            check_indexed(&IndexedReader::open(f).unwrap(), name, stem, plain_len);
            let f = File::open(vector(name)).unwrap();
            // SAFETY: the vector files are read-only test data nobody modifies while mapped.
            let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
            let mut r = IndexedReader::open(map).unwrap();
            check_indexed(&r, name, stem, plain_len);
            r.set_verify_reads(true);
            check_indexed(&r, name, stem, plain_len);
        }
    }
}

#[test]
fn extracted_disks_equal_the_inputs() {
    let res = stream_all(File::open(vector("ref-two-disks.vma")).unwrap());
    let a = std::fs::read(vector("inputs/diskA.raw")).unwrap();
    let b = std::fs::read(vector("inputs/diskB.raw")).unwrap();
    assert_eq!(res.disks[&1], a);
    assert_eq!(res.disks[&2], b);
    let r = IndexedReader::open(File::open(vector("ref-one-disk.vma")).unwrap()).unwrap();
    assert_eq!(read_device(&r, 1, 65536), a);
}

#[test]
fn two_disks_structure() {
    let bytes = std::fs::read(vector("ref-two-disks.vma")).unwrap();
    let res = stream_all(&bytes[..]);
    let raw = &res.header.raw;
    assert_eq!(raw.header_size, 12800);
    assert_eq!(raw.blob_buffer_offset, HEADER_FIXED_SIZE as u32);
    assert_eq!(raw.blob_buffer_size, 319);
    assert_eq!((raw.config_names[0], raw.config_data[0]), (1, 20));
    assert_eq!((raw.config_names[1], raw.config_data[1]), (252, 269));
    assert!(raw.config_names[2..]
        .iter()
        .chain(&raw.config_data[2..])
        .all(|&p| p == 0));
    assert_eq!(
        (raw.dev_info[1].devname_ptr, raw.dev_info[2].devname_ptr),
        (291, 305)
    );
    assert!(raw.dev_info[3..]
        .iter()
        .all(|d| d.devname_ptr == 0 && d.size == 0));
    assert_eq!(raw.ctime, 1_795_675_754);
    assert_eq!(res.header.uuid.as_bytes(), &raw.uuid);
    assert_eq!(&raw.uuid[..], &bytes[8..24]);

    assert_eq!(res.extents.len(), 2);
    let (e0, e1) = (&res.extents[0], &res.extents[1]);
    assert_eq!(
        (e0.offset, e0.clusters.len(), e0.block_count),
        (12800, 58, 67)
    );
    assert_eq!((e1.clusters.len(), e1.block_count), (23, 1));
    assert_eq!(e1.offset, 12800 + EXTENT_HEADER_SIZE as u64 + 67 * 4096);
    // Both disks interleave inside the first extent.
    assert!(e0.clusters.iter().any(|c| c.0 == 1) && e0.clusters.iter().any(|c| c.0 == 2));
    assert_eq!(res.end, bytes.len() as u64);
}

#[test]
fn one_disk_structure() {
    let res = stream_all(File::open(vector("ref-one-disk.vma")).unwrap());
    assert_eq!(res.header.raw.header_size, 12800);
    assert_eq!(res.header.raw.blob_buffer_size, 266);
    assert_eq!(res.extents.len(), 1);
    let e = &res.extents[0];
    assert_eq!((e.offset, e.clusters.len(), e.block_count), (12800, 17, 35));
    // spec §15.5: the slots in order, with their masks.
    let masks: Vec<_> = e.clusters.iter().map(|&(d, c, m)| (d, c, m)).collect();
    let mut want: Vec<(u8, u32, u16)> = (0..17).map(|c| (1, c, 0)).collect();
    want[0].2 = 0xFFFF;
    want[2].2 = 0x0022;
    want[7].2 = 0xFFFF;
    want[16].2 = 0x0008;
    assert_eq!(masks, want);
    assert_eq!(res.end, 156_672);
}

#[test]
fn diskless_structure() {
    let bytes = std::fs::read(vector("ref-diskless.vma")).unwrap();
    let res = stream_all(&bytes[..]);
    assert!(res.header.devices.is_empty());
    assert_eq!(res.header.configs.len(), 1);
    let hs = res.header.header_size();
    assert!(hs > HEADER_FIXED_SIZE as u64 && hs.is_multiple_of(512));
    assert_eq!(
        res.extents,
        vec![ExtentInfo {
            offset: hs,
            block_count: 0,
            clusters: vec![]
        }]
    );
    assert_eq!(bytes.len() as u64, hs + EXTENT_HEADER_SIZE as u64);
    let r = IndexedReader::open(bytes).unwrap();
    assert_eq!(r.extent_count(), 1);
    assert!(r.completeness().is_complete() && r.completeness().devices.is_empty());
}

/// Walks `map` over the device and checks it against `data` (sorted, disjoint, maximal).
fn check_mapping<S: ReadAt>(r: &IndexedReader<S>, dev: u8, size: u64, data: &[(u64, u64)]) {
    // The walk: maximal alternating runs covering [0, size).
    let mut runs = Vec::new();
    let mut pos = 0;
    while let Some(m) = r.map(dev, pos).unwrap() {
        assert_eq!(m.start, pos);
        assert!(m.end > m.start && m.end <= size);
        runs.push((m.kind, m.start, m.end));
        pos = m.end;
    }
    assert_eq!(pos, size, "map covers the device");
    let got: Vec<_> = runs
        .iter()
        .filter(|r| r.0 == MappingKind::Data)
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(got, data, "data ranges of dev {dev}");
    assert!(
        runs.windows(2).all(|w| w[0].0 != w[1].0),
        "runs are maximal"
    );

    // Probe offsets: every boundary, ±1, and the middles.
    let mut probes = vec![0, 1, size - 1, size, size + 1, size + 65536];
    for &(s, e) in data {
        probes.extend([s.saturating_sub(1), s, s + 1, (s + e) / 2, e - 1, e, e + 1]);
    }
    for off in probes {
        let in_data = data.iter().find(|&&(s, e)| s <= off && off < e);
        let m = r.map(dev, off).unwrap();
        if off >= size {
            assert_eq!(m, None);
            assert_eq!(r.seek_data(dev, off).unwrap(), None);
            assert_eq!(r.seek_hole(dev, off).unwrap(), None);
            continue;
        }
        let m = m.unwrap();
        assert_eq!(m.start, off);
        match in_data {
            Some(&(_, e)) => {
                assert_eq!((m.kind, m.end), (MappingKind::Data, e), "map at {off}");
                assert_eq!(r.seek_data(dev, off).unwrap(), Some(off));
                assert_eq!(r.seek_hole(dev, off).unwrap(), Some(e));
            }
            None => {
                let next = data.iter().find(|&&(s, _)| s > off).map(|r| r.0);
                assert_eq!(
                    (m.kind, m.end),
                    (MappingKind::Zero, next.unwrap_or(size)),
                    "map at {off}"
                );
                assert_eq!(r.seek_data(dev, off).unwrap(), next, "seek_data at {off}");
                assert_eq!(r.seek_hole(dev, off).unwrap(), Some(off));
            }
        }
    }
}

const DISK_A_DATA: [(u64, u64); 5] = [
    (0, 65536),
    (135_168, 139_264),
    (151_552, 155_648),
    (458_752, 524_288),
    (1_060_864, 1_061_376),
];
const MIB: u64 = 1 << 20;
const DISK_B_DATA: [(u64, u64); 2] = [(MIB, MIB + 128 * 1024), (4 * MIB - 4096, 4 * MIB)];

#[test]
fn known_layouts_match_the_inputs() {
    // The layouts above are facts of the inputs, not just of the archives.
    assert_eq!(
        vma_tests::data_ranges(&std::fs::read(vector("inputs/diskA.raw")).unwrap()),
        DISK_A_DATA
    );
    assert_eq!(
        vma_tests::data_ranges(&std::fs::read(vector("inputs/diskB.raw")).unwrap()),
        DISK_B_DATA
    );
}

#[test]
fn mapping_of_the_vectors() {
    let two = IndexedReader::open(File::open(vector("ref-two-disks.vma")).unwrap()).unwrap();
    check_mapping(&two, 1, 1_061_376, &DISK_A_DATA);
    check_mapping(&two, 2, 4 * MIB, &DISK_B_DATA);
    assert_eq!(two.stored_bytes(1), 35 * 4096);
    assert_eq!(two.stored_bytes(2), 33 * 4096);
    let one = IndexedReader::open(plain_bytes("ref-one-disk.vma")).unwrap();
    check_mapping(&one, 1, 1_061_376, &DISK_A_DATA);
    assert!(one.map(2, 0).is_err() && one.seek_data(2, 0).is_err() && one.seek_hole(2, 0).is_err());
}

#[test]
fn stream_stored_blocks_match_indexed_stored_bytes() {
    for (name, _) in ARCHIVES {
        let bytes = plain_bytes(name);
        let mut sr = StreamReader::new(&bytes[..]).unwrap();
        while sr.next_extent().unwrap().is_some() {}
        let ir = IndexedReader::open(plain_bytes(name)).unwrap();
        for d in &sr.header().devices {
            assert_eq!(
                sr.stored_blocks(d.id) * 4096,
                ir.stored_bytes(d.id),
                "{name} dev {}",
                d.id
            );
        }
    }
}

/// A reader that hands out at most a few bytes per call and sometimes reports
/// `Interrupted`, as pipes and signals do.
struct Trickle<R> {
    inner: R,
    rng: vma_tests::TestRng,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rng.below(5) == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(1 + self.rng.below(700) as usize);
        self.inner.read(&mut buf[..n])
    }
}

/// A positional source that returns short reads and `Interrupted`.
struct ShortReads(Vec<u8>, std::sync::atomic::AtomicU64);

impl ReadAt for ShortReads {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if k.is_multiple_of(3) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(1 + (k % 997) as usize);
        self.0.read_at_offset(offset, &mut buf[..n])
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

#[test]
fn both_readers_cope_with_short_and_interrupted_reads() {
    for (name, stem) in ARCHIVES {
        let f = File::open(vector(name)).unwrap();
        let trickle = Trickle {
            inner: f,
            rng: vma_tests::TestRng::new(7),
        };
        let (_, r) = decompressor(trickle).unwrap();
        let res = stream_all(r);
        check_against_list(stem, &res.header, &res.disks);
        check_complete(&res.completeness, &res.header);

        let bytes = plain_bytes(name);
        let len = bytes.len() as u64;
        let r = IndexedReader::open(ShortReads(bytes, Default::default())).unwrap();
        check_indexed(&r, name, stem, len);
    }
}
