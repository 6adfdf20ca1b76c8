//! One hand-made malformed archive per rejection rule of the reference
//! reader (vma-format.md §4 header table, §7 extent/restore table; spec §11,
//! §12): each must give the specific `Error` variant, with the offset spec
//! §12 (f) prescribes, through both readers, without panicking.
//!
//! Archives are built by writing a valid one with the library and patching
//! bytes; checksums are recomputed with `raw::{header_md5, extent_md5}` where
//! the rule needs a valid one.

// Missing-cluster ranges are `Vec<Range<u64>>`; one-range vectors are meant.
#![allow(clippy::single_range_in_vec_init)]

use std::time::{Duration, Instant};

use vma_format::raw::{
    extent_md5, header_md5, BlockInfo, RawExtentHeader, RawHeader, CLUSTER_SIZE,
    EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE, MAX_DEVICE_SIZE,
};
use vma_format::{
    build_header, Completeness, Error, IndexedReader, MappingKind, StreamReader, Uuid,
    WriterBuilder,
};
use vma_tests::TestRng;

const UUID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
const DEV1_SIZE: u64 = 200_000; // 4 clusters; cluster 3 holds 3392 bytes (block 0 straddles)
const DEV2_CLUSTERS: u32 = 60;

/// The valid archive every malformed one is derived from.
struct Base {
    bytes: Vec<u8>,
    /// header_size.
    hs: usize,
    /// Extent offsets: extent 0 = dev1 0..3 + dev2 0..53 (58 slots), extent 1 = dev2 54..59.
    ext: Vec<usize>,
}

fn base() -> Base {
    let mut rng = TestRng::new(42);
    let mut b = WriterBuilder::new();
    b.add_config(
        "qemu-server.conf",
        b"boot: order=scsi0\nmemory: 512\n".to_vec(),
    )
    .unwrap();
    b.add_config("qemu-server.fw", b"[OPTIONS]\n".to_vec())
        .unwrap();
    b.add_device("drive-scsi0", DEV1_SIZE).unwrap();
    b.add_device(
        "drive-scsi1",
        u64::from(DEV2_CLUSTERS) * CLUSTER_SIZE as u64,
    )
    .unwrap();
    b.uuid(UUID).ctime(1_700_000_000);
    let w = b.build(Vec::new()).unwrap();
    let mut c = vec![0u8; CLUSTER_SIZE];
    rng.fill(&mut c);
    w.write_cluster(1, 0, &c).unwrap(); // mask 0xFFFF
    w.write_cluster(1, 1, &[0u8; CLUSTER_SIZE]).unwrap(); // mask 0
    let mut c2 = vec![0u8; CLUSTER_SIZE];
    c2[3 * 4096 + 17] = 1;
    w.write_cluster(1, 2, &c2).unwrap(); // mask 0x0008
    let mut c3 = vec![0u8; (DEV1_SIZE - 3 * CLUSTER_SIZE as u64) as usize];
    c3[100] = 3;
    w.write_cluster(1, 3, &c3).unwrap(); // mask 0x0001
    for cl in 0..DEV2_CLUSTERS {
        let mut d = vec![0u8; CLUSTER_SIZE];
        match cl {
            0 => rng.fill(&mut d),
            5 => d[5 * 4096] = 5,
            55 => d[2 * 4096 + 1] = 55,
            _ => {}
        }
        w.write_cluster(2, cl, &d).unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    let hs = u32::from_be_bytes(bytes[56..60].try_into().unwrap()) as usize;
    // Find the extents with the library and check the layout this file relies on.
    let mut sr = StreamReader::new(&bytes[..]).unwrap();
    let mut ext = Vec::new();
    let mut slots = Vec::new();
    while let Some(e) = sr.next_extent().unwrap() {
        ext.push(e.offset as usize);
        slots.push(
            e.clusters()
                .map(|c| (c.dev_id, c.cluster, c.mask))
                .collect::<Vec<_>>(),
        );
    }
    assert!(sr.completeness().is_complete());
    assert_eq!(ext.len(), 2);
    assert_eq!(slots[0].len(), 58);
    assert_eq!(
        &slots[0][..5],
        &[
            (1, 0, 0xFFFF),
            (1, 1, 0),
            (1, 2, 0x0008),
            (1, 3, 0x0001),
            (2, 0, 0xFFFF)
        ]
    );
    assert_eq!(
        slots[1].iter().map(|s| s.1).collect::<Vec<_>>(),
        (54..60).collect::<Vec<_>>()
    );
    assert_eq!(slots[1][1], (2, 55, 0x0004));
    Base { bytes, hs, ext }
}

/// A change to the fixed header (MD5 recomputed after).
type HeaderPatch = Box<dyn Fn(&mut RawHeader)>;
/// A change to an extent header.
type ExtentPatch = fn(&mut RawExtentHeader);

/// Recomputes the header MD5 over `[0, header_size)` as stored.
fn fix_header_md5(b: &mut [u8]) {
    let hs = u32::from_be_bytes(b[56..60].try_into().unwrap()) as usize;
    let md5 = header_md5(&b[..hs]);
    b[32..48].copy_from_slice(&md5);
}

/// Applies `f` to the fixed header and recomputes the MD5.
fn patch_header(b: &mut [u8], f: impl FnOnce(&mut RawHeader)) {
    let mut raw = RawHeader::parse(b[..HEADER_FIXED_SIZE].try_into().unwrap());
    f(&mut raw);
    b[..HEADER_FIXED_SIZE].copy_from_slice(&raw.serialize());
    fix_header_md5(b);
}

/// Applies `f` to the extent header at `off`; recomputes its MD5 if `fix_md5`.
fn patch_extent(b: &mut [u8], off: usize, fix_md5: bool, f: impl FnOnce(&mut RawExtentHeader)) {
    let head: &mut [u8; EXTENT_HEADER_SIZE] =
        (&mut b[off..off + EXTENT_HEADER_SIZE]).try_into().unwrap();
    let mut raw = RawExtentHeader::parse(head);
    f(&mut raw);
    *head = raw.serialize();
    if fix_md5 {
        let md5 = extent_md5(head);
        head[24..40].copy_from_slice(&md5);
    }
}

fn stream_result(bytes: &[u8]) -> Result<Completeness, Error> {
    let mut sr = StreamReader::new(bytes)?;
    while sr.next_extent()?.is_some() {}
    Ok(sr.completeness())
}

fn indexed_result(bytes: &[u8]) -> Result<Completeness, Error> {
    IndexedReader::open(bytes.to_vec()).map(|r| r.completeness().clone())
}

/// The error of each reader (streaming, indexed); both must fail.
fn both_err(bytes: &[u8]) -> [Error; 2] {
    [
        stream_result(bytes).expect_err("streaming reader must refuse"),
        indexed_result(bytes).expect_err("indexed reader must refuse"),
    ]
}

/// Absolute offset of blockinfo slot `k` of the extent at `ext` (spec §12 f).
fn slot_off(ext: usize, k: usize) -> Option<u64> {
    Some((ext + 40 + 8 * k) as u64)
}

/// Collects `.offset()` mismatches so that a wrong offset does not hide the
/// test's other assertions; [`Offsets::assert`] fails listing all of them.
#[derive(Default)]
struct Offsets(Vec<String>);

impl Offsets {
    fn check(&mut self, got: Option<u64>, want: Option<u64>, what: &str) {
        if got != want {
            self.0.push(format!(
                "{what}: .offset() is {got:?}, spec §12 (f) wants {want:?}"
            ));
        }
    }
    fn assert(self) {
        assert!(
            self.0.is_empty(),
            "wrong error offsets:\n{}",
            self.0.join("\n")
        );
    }
}

// ---------------------------------------------------------------- header (spec §11.1)

#[test]
fn short_header_is_header_eof() {
    let b = base();
    for n in [0usize, 1, 4, 100, HEADER_FIXED_SIZE - 1] {
        for e in both_err(&b.bytes[..n]) {
            assert!(
                matches!(e, Error::HeaderEof { got } if got == n as u64),
                "{n}: {e:?}"
            );
            assert_eq!(e.offset(), Some(0));
        }
    }
}

#[test]
fn bad_magic() {
    let mut b = base().bytes;
    b[2] = b'B';
    for e in both_err(&b) {
        assert!(
            matches!(e, Error::BadMagic { found } if found == *b"VMB\0"),
            "{e:?}"
        );
        assert_eq!(e.offset(), Some(0));
    }
    // A plain text file is not a vma either (and is long enough).
    let text = vec![b'x'; 20_000];
    for e in both_err(&text) {
        assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    }
}

#[test]
fn header_size_not_above_12288() {
    for size in [0u32, 1, 512, 12287, 12288] {
        let mut b = base().bytes;
        b[56..60].copy_from_slice(&size.to_be_bytes());
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::HeaderSize { size: s } if s == size),
                "{size}: {e:?}"
            );
            assert_eq!(e.offset(), Some(56));
        }
    }
}

#[test]
fn absurd_header_size_is_refused_without_allocating() {
    for size in [0xFFFF_FFF0u32, 0x8000_3000, u32::MAX] {
        let mut b = base().bytes;
        b[56..60].copy_from_slice(&size.to_be_bytes());
        let t = Instant::now();
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::HeaderSize { size: s } if s == size),
                "{size:#x}: {e:?}"
            );
            assert_eq!(e.offset(), Some(56));
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    // A large but plausible header_size past EOF is a data EOF.
    let mut b = base().bytes;
    let len = b.len() as u64;
    b[56..60].copy_from_slice(&(16u32 << 20).to_be_bytes());
    for e in both_err(&b) {
        assert!(
            matches!(e, Error::HeaderDataEof { header_size, got } if header_size == 16 << 20 && got == len),
            "{e:?}"
        );
    }
}

#[test]
fn truncated_header_data() {
    let b = base();
    for n in [HEADER_FIXED_SIZE, 12_500, b.hs - 1] {
        for e in both_err(&b.bytes[..n]) {
            assert!(
                matches!(e, Error::HeaderDataEof { header_size, got } if header_size as usize == b.hs && got == n as u64),
                "{n}: {e:?}"
            );
            assert_eq!(e.offset(), Some(n as u64), "where the data ended");
        }
    }
}

#[test]
fn header_checksum() {
    let b = base();
    // A reserved byte, the blob padding, a pointer, and the md5 field itself.
    for pos in [100usize, b.hs - 1, 2044 + 3, 32, 47] {
        let mut x = b.bytes.clone();
        x[pos] ^= 0x40;
        for e in both_err(&x) {
            assert!(matches!(e, Error::HeaderChecksum), "{pos}: {e:?}");
            assert_eq!(e.offset(), Some(32));
        }
    }
    // A changed version with the old MD5 is a checksum error: MD5 comes first.
    let mut x = b.bytes.clone();
    x[7] = 2;
    for e in both_err(&x) {
        assert!(matches!(e, Error::HeaderChecksum), "{e:?}");
    }
}

#[test]
fn version_with_valid_checksum() {
    for v in [0u32, 2, 0xFFFF_FFFF] {
        let mut b = base().bytes;
        patch_header(&mut b, |h| h.version = v);
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::Version { version } if version == v),
                "{v}: {e:?}"
            );
            assert_eq!(e.offset(), Some(4));
        }
    }
}

#[test]
fn blob_buffer_offset_below_12288() {
    for off in [0u32, 1, 12287] {
        let mut b = base().bytes;
        patch_header(&mut b, |h| h.blob_buffer_offset = off);
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::BlobBufferOffset { blob_offset } if blob_offset == off),
                "{e:?}"
            );
            assert_eq!(e.offset(), Some(48));
        }
    }
}

#[test]
fn blob_buffer_past_header_size() {
    let hs = base().hs as u32;
    for (off, size) in [
        (12288u32, hs - 12288 + 1),
        (hs, 1),
        (u32::MAX, u32::MAX),
        (12288, u32::MAX),
    ] {
        let mut b = base().bytes;
        patch_header(&mut b, |h| {
            h.blob_buffer_offset = off;
            h.blob_buffer_size = size;
        });
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::BlobBufferSize { blob_offset, blob_size, header_size }
                    if (blob_offset, blob_size, header_size) == (off, size, hs)),
                "{off}/{size}: {e:?}"
            );
            assert_eq!(e.offset(), Some(52));
        }
    }
    // Exactly up to header_size is fine.
    let mut b = base().bytes;
    patch_header(&mut b, |h| h.blob_buffer_size = hs - 12288);
    stream_result(&b).unwrap();
    indexed_result(&b).unwrap();
}

#[test]
fn invalid_config_pointers() {
    let mut offs = Offsets::default();
    let base = base();
    let h = StreamReader::new(&base.bytes[..])
        .unwrap()
        .header()
        .raw
        .clone();
    let (n0, d0, n1, d1) = (
        h.config_names[0],
        h.config_data[0],
        h.config_names[1],
        h.config_data[1],
    );
    let cases: Vec<(&str, HeaderPatch, usize, u64)> = vec![
        (
            "name into a blob middle",
            Box::new(move |h| h.config_names[0] = n0 + 1),
            0,
            2044,
        ),
        (
            "name without NUL (points at data)",
            Box::new(move |h| h.config_names[1] = d1),
            1,
            2048,
        ),
        (
            "name past the blob buffer",
            Box::new(move |h| h.config_names[1] = h.blob_buffer_size),
            1,
            2048,
        ),
        (
            "data into a blob middle",
            Box::new(move |h| h.config_data[1] = n1 + 2),
            1,
            3072,
        ),
        (
            "data past the blob buffer",
            Box::new(move |h| h.config_data[0] = 5000),
            0,
            3068,
        ),
        (
            "slot 7 name into a data blob middle",
            Box::new(move |h| h.config_names[7] = d0 + 3),
            7,
            2044 + 28,
        ),
    ];
    for (what, f, slot, field) in cases {
        let mut b = base.bytes.clone();
        patch_header(&mut b, |h| {
            f(h);
            // Slot 7 needs a non-zero data pointer to be in use.
            if h.config_names[7] != 0 {
                h.config_data[7] = d0;
            }
        });
        for e in both_err(&b) {
            assert!(
                matches!(e, Error::InvalidDataPointers { slot: s, .. } if s == slot),
                "{what}: {e:?}"
            );
            offs.check(
                e.offset(),
                Some(field),
                &format!("{what}: offset of the bad pointer field (spec §12 f)"),
            );
        }
    }
    offs.assert();
}

#[test]
fn config_slot_with_one_zero_pointer_is_skipped() {
    for which in [0, 1] {
        let mut b = base().bytes;
        patch_header(&mut b, |h| {
            if which == 0 {
                h.config_names[1] = 0
            } else {
                h.config_data[1] = 0
            }
        });
        for c in [stream_result(&b).unwrap(), indexed_result(&b).unwrap()] {
            assert!(c.is_complete());
        }
        let h = StreamReader::new(&b[..]).unwrap().header().clone();
        assert_eq!(h.configs.len(), 1);
        assert_eq!(h.configs[0].name, b"qemu-server.conf");
    }
}

#[test]
fn device_with_size_zero_or_bad_name_is_absent() {
    let mut offs = Offsets::default();
    let base = base();
    let cases: Vec<(&str, HeaderPatch)> = vec![
        ("size 0", Box::new(|h| h.dev_info[2].size = 0)),
        (
            "name pointer 0",
            Box::new(|h| h.dev_info[2].devname_ptr = 0),
        ),
        (
            "name into a blob middle",
            Box::new(|h| h.dev_info[2].devname_ptr += 1),
        ),
        (
            "name without NUL",
            Box::new(move |h| h.dev_info[2].devname_ptr = h.config_data[0]),
        ),
        (
            "name past the buffer",
            Box::new(|h| h.dev_info[2].devname_ptr = 100_000),
        ),
    ];
    for (what, f) in cases {
        let mut b = base.bytes.clone();
        patch_header(&mut b, |h| f(h));
        let hdr = StreamReader::new(&b[..]).unwrap().header().clone();
        assert_eq!(
            hdr.devices.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![1],
            "{what}"
        );
        // Its clusters now name an unknown device: the first is slot 4 of extent 0.
        for e in both_err(&b) {
            assert!(
                matches!(
                    e,
                    Error::WrongDevId {
                        dev_id: 2,
                        slot: 4,
                        ..
                    }
                ),
                "{what}: {e:?}"
            );
            offs.check(e.offset(), slot_off(base.ext[0], 4), what);
        }
    }
    // Without clusters referring to it, an absent device is simply not there;
    // entry 255 is never a device (spec §5.2).
    for (name, size, slot) in [(&b"x"[..], 0u64, 1usize), (b"x", 512, 255)] {
        let mut hdr = build_header(UUID, 0, &[], &[(name.to_vec(), size)]).unwrap();
        if slot == 255 {
            patch_header(&mut hdr, |h| h.dev_info.swap(1, 255));
        }
        hdr.extend_from_slice(&empty_extent());
        let sr = StreamReader::new(&hdr[..]).unwrap();
        assert!(sr.header().devices.is_empty(), "slot {slot}");
        assert!(indexed_result(&hdr).unwrap().devices.is_empty());
        assert!(stream_result(&hdr).unwrap().is_complete());
    }
    offs.assert();
}

fn empty_extent() -> [u8; EXTENT_HEADER_SIZE] {
    let mut e = RawExtentHeader {
        uuid: *UUID.as_bytes(),
        ..RawExtentHeader::default()
    }
    .serialize();
    let md5 = extent_md5(&e);
    e[24..40].copy_from_slice(&md5);
    e
}

// ---------------------------------------------------------------- extents (spec §11.2)

#[test]
fn extent_checksum() {
    let b = base();
    // Every byte of the extent header is covered by its MD5.
    for pos in 0..EXTENT_HEADER_SIZE {
        let mut x = b.bytes.clone();
        x[b.ext[1] + pos] ^= 0x01;
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::ExtentChecksum { offset, index: 1 } if offset == b.ext[1] as u64),
                "byte {pos}: {e:?}"
            );
            assert_eq!(e.offset(), Some(b.ext[1] as u64));
        }
    }
}

#[test]
fn extent_uuid() {
    let b = base();
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[1], true, |e| e.uuid[15] ^= 0x80);
    for e in both_err(&x) {
        assert!(
            matches!(e, Error::ExtentUuid { offset, index: 1 } if offset == b.ext[1] as u64),
            "{e:?}"
        );
        assert_eq!(e.offset(), Some(b.ext[1] as u64));
    }
}

#[test]
fn extent_magic_and_reserved() {
    let b = base();
    let cases: [(&str, ExtentPatch); 3] = [
        ("magic", |e| e.magic = *b"VMAF"),
        ("magic of the header", |e| e.magic = *b"VMA\0"),
        ("reserved", |e| e.reserved = 1),
    ];
    for (what, f) in cases {
        let mut x = b.bytes.clone();
        patch_extent(&mut x, b.ext[0], true, f);
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::ExtentMagic { offset, index: 0 } if offset == b.ext[0] as u64),
                "{what}: {e:?}"
            );
            assert_eq!(e.offset(), Some(b.ext[0] as u64));
        }
        // Without a valid MD5 the checksum is reported first.
        let mut x = b.bytes.clone();
        patch_extent(&mut x, b.ext[0], false, f);
        for e in both_err(&x) {
            assert!(matches!(e, Error::ExtentChecksum { .. }), "{what}: {e:?}");
        }
    }
}

#[test]
fn truncated_inside_extent_data() {
    let b = base();
    let need = (b.bytes.len() - b.ext[1]) as u64;
    for cut in [
        b.ext[1] + EXTENT_HEADER_SIZE,
        b.ext[1] + EXTENT_HEADER_SIZE + 100,
        b.bytes.len() - 1,
    ] {
        for e in both_err(&b.bytes[..cut]) {
            let have = (cut - b.ext[1]) as u64;
            assert!(
                matches!(e, Error::ShortExtent { offset, have: h, need: n }
                    if offset == b.ext[1] as u64 && h == have && n == need),
                "cut {cut}: {e:?}"
            );
            assert_eq!(e.offset(), Some(b.ext[1] as u64));
        }
    }
    // Inside the first extent's data too.
    let cut = b.ext[0] + 70_000;
    for e in both_err(&b.bytes[..cut]) {
        assert!(
            matches!(e, Error::ShortExtent { offset, .. } if offset == b.ext[0] as u64),
            "{e:?}"
        );
    }
}

#[test]
fn trailing_bytes_below_512_are_a_short_extent_header() {
    let b = base();
    let len = b.bytes.len();
    for n in [1usize, 100, 511] {
        for fill in [0u8, 0xAA] {
            let mut x = b.bytes.clone();
            x.resize(len + n, fill);
            for e in both_err(&x) {
                assert!(
                    matches!(e, Error::ShortExtentHeader { offset, have } if offset == len as u64 && have == n as u64),
                    "{n}: {e:?}"
                );
                assert_eq!(e.offset(), Some(len as u64));
            }
        }
    }
    // A cut inside an extent header is the same error at that extent.
    for e in both_err(&b.bytes[..b.ext[1] + 100]) {
        assert!(
            matches!(e, Error::ShortExtentHeader { offset, have: 100 } if offset == b.ext[1] as u64),
            "{e:?}"
        );
    }
}

#[test]
fn trailing_zeros_of_512_or_more_fail_the_checksum() {
    let b = base();
    let len = b.bytes.len();
    for n in [512usize, 513, 4096, 100_000] {
        let mut x = b.bytes.clone();
        x.resize(len + n, 0);
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::ExtentChecksum { offset, index: 2 } if offset == len as u64),
                "{n}: {e:?}"
            );
            assert_eq!(e.offset(), Some(len as u64));
        }
    }
}

#[test]
fn masks_describing_more_blocks_than_block_count() {
    let b = base();
    for (ext, idx) in [(b.ext[0], 0u64), (b.ext[1], 1)] {
        let mut x = b.bytes.clone();
        let mut bc = 0;
        patch_extent(&mut x, ext, true, |e| {
            e.block_count -= 1;
            bc = e.block_count;
        });
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::TooManyBlocks { offset, index, block_count } if offset == ext as u64 && index == idx && block_count == bc),
                "{e:?}"
            );
            assert_eq!(e.offset(), Some(ext as u64));
        }
    }
    // An extra mask bit does the same.
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[1].mask = 0x8000);
    for e in both_err(&x) {
        assert!(matches!(e, Error::TooManyBlocks { index: 0, .. }), "{e:?}");
    }
}

#[test]
fn masks_describing_fewer_blocks_than_block_count() {
    let b = base();
    for (add, ext) in [(1u16, b.ext[0]), (1, b.ext[1]), (500, b.ext[1])] {
        let mut x = b.bytes.clone();
        let mut bc = 0;
        patch_extent(&mut x, ext, true, |e| {
            e.block_count += add;
            bc = e.block_count;
        });
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::MissingBlocks { offset, stored, block_count, .. }
                    if offset == ext as u64 && u32::from(block_count) == stored + u32::from(add) && block_count == bc),
                "{e:?}"
            );
            assert_eq!(e.offset(), Some(ext as u64));
        }
    }
}

// ---------------------------------------------------------------- clusters (spec §11.3, §12)

#[test]
fn unknown_dev_id() {
    let mut offs = Offsets::default();
    let b = base();
    for dev in [3u8, 200, 255] {
        let mut x = b.bytes.clone();
        patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[1].dev_id = dev);
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::WrongDevId { dev_id, offset, index: 0, slot: 1 } if dev_id == dev && offset == b.ext[0] as u64),
                "{dev}: {e:?}"
            );
            offs.check(
                e.offset(),
                slot_off(b.ext[0], 1),
                "blockinfo entry (spec §12 f)",
            );
        }
    }
    offs.assert();
}

#[test]
fn duplicated_cluster() {
    let mut offs = Offsets::default();
    let b = base();
    // Within one extent: slot 1 (dev 1 cluster 1, mask 0) claims cluster 0 again.
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[1].cluster = 0);
    for e in both_err(&x) {
        assert!(
            matches!(
                e,
                Error::DuplicateCluster {
                    dev_id: 1,
                    cluster: 0,
                    index: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        offs.check(
            e.offset(),
            slot_off(b.ext[0], 1),
            "blockinfo entry (spec §12 f)",
        );
    }
    // Across extents: extent 1 slot 0 claims dev 2 cluster 0 of extent 0.
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[1], true, |e| e.blockinfo[0].cluster = 0);
    for e in both_err(&x) {
        assert!(
            matches!(&e, Error::DuplicateCluster { dev_id: 2, cluster: 0, index: 1, name, .. } if name.0 == b"drive-scsi1"),
            "{e:?}"
        );
        offs.check(
            e.offset(),
            slot_off(b.ext[1], 0),
            "blockinfo entry (spec §12 f)",
        );
    }
    offs.assert();
}

#[test]
fn stored_block_beyond_the_end() {
    let mut offs = Offsets::default();
    let b = base();
    // dev 1 cluster 3 holds 3392 bytes: block 1 starts at 200704 >= 200000.
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[3].mask = 0x0002);
    for e in both_err(&x) {
        assert!(
            matches!(
                e,
                Error::BeyondEnd {
                    dev_id: 1,
                    cluster: 3,
                    size: DEV1_SIZE,
                    index: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        offs.check(
            e.offset(),
            slot_off(b.ext[0], 3),
            "blockinfo entry (spec §12 f)",
        );
    }
    offs.assert();
}

#[test]
fn cluster_past_proxmox_bitmap_or_with_data_past_the_end_is_refused() {
    let mut offs = Offsets::default();
    let b = base();
    // dev 1 (200000 bytes, 4 clusters): Proxmox's bitmap covers clusters
    // 0..64, so a mask-0 cluster from 64 on aborts it; we refuse cleanly.
    for cl in [64u32, 65, 1000, u32::MAX] {
        let mut x = b.bytes.clone();
        patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[1].cluster = cl);
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::BeyondEnd { dev_id: 1, cluster, .. } if cluster == cl),
                "{cl}: {e:?}"
            );
            offs.check(
                e.offset(),
                slot_off(b.ext[0], 1),
                "blockinfo entry (spec §12 f)",
            );
        }
    }
    // Stored data in a cluster past the end is refused whatever the mask:
    // slot 0 (mask 0xFFFF) and slot 3 (mask 0x0001) moved to cluster 4.
    for (slot, cl) in [(0usize, 4u32), (3, 4), (3, 63)] {
        let mut x = b.bytes.clone();
        patch_extent(&mut x, b.ext[0], true, |e| e.blockinfo[slot].cluster = cl);
        for e in both_err(&x) {
            assert!(
                matches!(e, Error::BeyondEnd { dev_id: 1, cluster, .. } if cluster == cl),
                "slot {slot} → {cl}: {e:?}"
            );
            offs.check(
                e.offset(),
                slot_off(b.ext[0], slot),
                "blockinfo entry (spec §12 f)",
            );
        }
    }
    offs.assert();
}

/// `base()` plus two shapes Proxmox restores (spec §12 c, d): dev 1's final
/// partial cluster 3 stored with mask 0xFFFF (15 garbage blocks past the
/// device end), and mask-0 clusters past the end inside Proxmox's bitmap
/// (dev 1 cluster 4 in extent 1 slot 6, dev 2 cluster 63 in slot 7).
fn tolerated(b: &Base) -> Vec<u8> {
    let mut x = b.bytes.clone();
    // Extent 0 data: slot 0 = 16 blocks, slot 1 = none, slot 2 = 1, slot 3 = 1.
    let at = b.ext[0] + EXTENT_HEADER_SIZE + 18 * 4096;
    let garbage: Vec<u8> = (0..15 * 4096).map(|i| (i % 251) as u8 | 1).collect();
    x.splice(at..at, garbage);
    patch_extent(&mut x, b.ext[0], true, |e| {
        e.block_count += 15;
        e.blockinfo[3].mask = 0xFFFF;
    });
    let e1 = b.ext[1] + 15 * 4096;
    patch_extent(&mut x, e1, true, |e| {
        e.blockinfo[6] = BlockInfo {
            mask: 0,
            reserved: 0,
            dev_id: 1,
            cluster: 4,
        };
        e.blockinfo[7] = BlockInfo {
            mask: 0,
            reserved: 0,
            dev_id: 2,
            cluster: 63,
        };
    });
    x
}

#[test]
fn shapes_proxmox_restores_are_accepted_with_warnings() {
    use vma_format::WarningKind;
    let b = base();
    let x = tolerated(&b);
    let e1 = (b.ext[1] + 15 * 4096) as u64;
    let want = vec![
        (
            1u8,
            WarningKind::BlocksPastEnd {
                cluster: 3,
                blocks: 15,
            },
            slot_off(b.ext[0], 3).unwrap(),
        ),
        (
            1,
            WarningKind::ClusterPastEnd { cluster: 4 },
            e1 + 40 + 8 * 6,
        ),
        (
            2,
            WarningKind::ClusterPastEnd { cluster: 63 },
            e1 + 40 + 8 * 7,
        ),
    ];
    let got = |w: &[vma_format::Warning]| -> Vec<(u8, WarningKind, u64)> {
        w.iter().map(|w| (w.dev_id, w.kind, w.offset)).collect()
    };
    let mut sr = StreamReader::new(&x[..]).unwrap();
    while sr.next_extent().unwrap().is_some() {}
    assert!(sr.completeness().is_complete());
    assert_eq!(got(sr.warnings()), want);
    let ir = IndexedReader::open(x.clone()).unwrap();
    assert!(ir.completeness().is_complete());
    assert_eq!(got(ir.warnings()), want);
    // The untouched archive has no warning.
    let clean = IndexedReader::open(b.bytes.clone()).unwrap();
    assert!(clean.warnings().is_empty());
    // Restored bytes are identical to the untouched archive's, up to the
    // device size and not beyond.
    for dev in [1u8, 2] {
        let size = clean.header().device(dev).unwrap().size;
        let mut want = vec![0u8; size as usize + 70_000];
        let mut have = vec![0xEEu8; size as usize + 70_000];
        assert_eq!(clean.read(dev, 0, &mut want).unwrap(), size as usize);
        assert_eq!(ir.read(dev, 0, &mut have).unwrap(), size as usize);
        assert!(want[..size as usize] == have[..size as usize], "dev {dev}");
        assert!(
            have[size as usize..].iter().all(|&v| v == 0xEE),
            "dev {dev} read past its end"
        );
        assert_eq!(ir.map(dev, size).unwrap(), None);
    }
    // The streaming reader hands the full 64 KiB over; Cluster data past
    // the end is the caller's to clip, as the extract test below shows.
    let mut sr = StreamReader::new(&x[..]).unwrap();
    let e = sr.next_extent().unwrap().unwrap();
    let c3 = e.clusters().nth(3).unwrap();
    assert_eq!(
        (c3.dev_id, c3.cluster, c3.mask, c3.data.len()),
        (1, 3, 0xFFFF, CLUSTER_SIZE)
    );
}

#[test]
fn tolerated_shapes_still_refuse_duplicates() {
    let b = base();
    let x = tolerated(&b);
    let e1 = b.ext[1] + 15 * 4096;
    // Slot 7 names dev 1 cluster 4 again: Proxmox's bitmap sees a duplicate.
    let mut y = x.clone();
    patch_extent(&mut y, e1, true, |e| e.blockinfo[7] = e.blockinfo[6]);
    for e in both_err(&y) {
        assert!(
            matches!(
                e,
                Error::DuplicateCluster {
                    dev_id: 1,
                    cluster: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.offset(), slot_off(e1, 7));
    }
}

#[test]
fn cli_restores_tolerated_shapes_with_one_warning_per_device() {
    use std::process::Command;
    let b = base();
    let x = tolerated(&b);
    let tmp = tempfile::tempdir().unwrap();
    let (good, odd) = (tmp.path().join("good.vma"), tmp.path().join("odd.vma"));
    std::fs::write(&good, &b.bytes).unwrap();
    std::fs::write(&odd, &x).unwrap();
    let vma = || Command::new(vma_tests::vma_bin!());

    let o = vma().arg("verify").arg(&odd).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("vma: warning: "))
        .collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("vma: warning: drive-scsi0: "), "{err}");
    assert!(
        lines[0].contains("final cluster 3 stores 15 block(s)"),
        "{err}"
    );
    assert!(
        lines[0].contains("1 zero cluster(s) past the device end"),
        "{err}"
    );
    assert!(lines[1].starts_with("vma: warning: drive-scsi1: "), "{err}");
    let o = vma().arg("verify").arg(&good).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));

    let o = vma().args(["verify", "--json"]).arg(&odd).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 3, "{v}");
    assert_eq!(w[0]["kind"], "blocks_past_end");
    assert_eq!(w[0]["name"], "drive-scsi0");
    assert_eq!(w[0]["offset"], slot_off(b.ext[0], 3).unwrap());
    assert_eq!(w[2]["kind"], "cluster_past_end");
    assert_eq!(w[2]["cluster"], 63);
    let o = vma()
        .args(["verify", "--json"])
        .arg(&good)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]));

    let (out_good, out_odd) = (tmp.path().join("g"), tmp.path().join("o"));
    let o = vma()
        .arg("extract")
        .arg(&good)
        .arg(&out_good)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let o = vma()
        .arg("extract")
        .arg(&odd)
        .arg(&out_odd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("vma: warning: "))
            .count(),
        2,
        "{err}"
    );
    for name in ["disk-drive-scsi0.raw", "disk-drive-scsi1.raw"] {
        let (g, d) = (
            std::fs::read(out_good.join(name)).unwrap(),
            std::fs::read(out_odd.join(name)).unwrap(),
        );
        // 200000 rounds up to 200192: nothing written past the device size.
        assert_eq!(d.len(), g.len(), "{name}");
        assert!(d == g, "{name} differs");
    }
}

#[test]
fn vmstate_out_of_order() {
    let mut offs = Offsets::default();
    let build = |order: &[u32]| {
        let mut b = WriterBuilder::new();
        b.add_device("drive-scsi0", CLUSTER_SIZE as u64).unwrap();
        b.add_device("vmstate", 3 * CLUSTER_SIZE as u64).unwrap();
        b.uuid(UUID);
        let w = b.build(Vec::new()).unwrap();
        w.write_cluster(1, 0, &[1u8; CLUSTER_SIZE]).unwrap();
        for &c in order {
            w.write_cluster(2, c, &[0u8; CLUSTER_SIZE]).unwrap();
        }
        w.finish().unwrap().0
    };
    let good = build(&[0, 1, 2]);
    assert!(stream_result(&good).unwrap().is_complete());
    assert!(indexed_result(&good).unwrap().is_complete());
    let hs = u32::from_be_bytes(good[56..60].try_into().unwrap()) as usize;
    // Patched: slots 1 and 2 (vmstate 0 and 1) swapped.
    let mut x = good.clone();
    patch_extent(&mut x, hs, true, |e| e.blockinfo.swap(1, 2));
    // Our writer refuses to produce such an archive.
    {
        let mut b = WriterBuilder::new();
        b.add_device("vmstate", 3 * CLUSTER_SIZE as u64).unwrap();
        let w = b.build(Vec::new()).unwrap();
        let e = w.write_cluster(1, 1, &[0u8; CLUSTER_SIZE]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::VmstateWriteOrder {
                    cluster: 1,
                    expected: 0
                }
            ),
            "{e:?}"
        );
    }
    for bytes in [x] {
        for e in both_err(&bytes) {
            assert!(
                matches!(
                    e,
                    Error::VmstateOrder {
                        dev_id: 2,
                        cluster: 1,
                        expected: 0,
                        index: 0,
                        ..
                    }
                ),
                "{e:?}"
            );
            offs.check(e.offset(), slot_off(hs, 1), "blockinfo entry (spec §12 f)");
        }
    }
    offs.assert();
}

// ---------------------------------------------------------------- completeness (spec §11.4)

#[test]
fn truncation_at_an_extent_boundary_is_missing_clusters() {
    let mut offs = Offsets::default();
    let b = base();
    // Drop extent 1: dev 2 clusters 54..59 are gone; dev 1 is whole.
    let cut = &b.bytes[..b.ext[1]];
    for c in [stream_result(cut).unwrap(), indexed_result(cut).unwrap()] {
        assert!(!c.is_complete());
        assert_eq!(c.end, b.ext[1] as u64);
        assert_eq!((c.devices[0].missing, c.devices[1].missing), (0, 6));
        assert_eq!(c.devices[1].ranges, vec![54..60]);
        assert_eq!(
            (c.devices[1].seen, c.devices[1].total, c.devices[1].more),
            (54, 60, false)
        );
        c.check(|d| d == 1).expect("dev 1 is complete");
        let e = c.check(|_| true).unwrap_err();
        assert!(
            matches!(&e, Error::MissingClusters { dev_id: 2, missing: 6, total: 60, ranges, more: false, end, .. }
                if *ranges == vec![54..60] && *end == b.ext[1] as u64),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("detected missing cluster 54 for stream drive-scsi1"),
            "{e}"
        );
        offs.check(
            e.offset(),
            Some(4096 + 32 * 2),
            "the device's table entry (spec §12 f)",
        );
    }
    // No extent at all: the first incomplete device is reported.
    let cut = &b.bytes[..b.hs];
    for c in [stream_result(cut).unwrap(), indexed_result(cut).unwrap()] {
        let e = c.check(|_| true).unwrap_err();
        assert!(
            matches!(&e, Error::MissingClusters { dev_id: 1, missing: 4, total: 4, ranges, .. } if *ranges == vec![0..4]),
            "{e:?}"
        );
        assert_eq!(c.devices[1].ranges, vec![0..60]);
    }
    offs.assert();
}

#[test]
fn huge_devices_cost_no_memory() {
    const TIB256: u64 = MAX_DEVICE_SIZE;
    let devices: Vec<(Vec<u8>, u64)> = (0..254)
        .map(|i| (format!("drive-virtio{i}").into_bytes(), TIB256))
        .collect();
    let mut bytes = build_header(UUID, 1, &[], &devices).unwrap();
    bytes.extend_from_slice(&empty_extent());
    let t = Instant::now();
    let clusters = TIB256 / CLUSTER_SIZE as u64;
    for c in [
        stream_result(&bytes).unwrap(),
        indexed_result(&bytes).unwrap(),
    ] {
        assert_eq!(c.devices.len(), 254);
        for d in &c.devices {
            assert_eq!((d.total, d.seen, d.missing), (clusters, 0, clusters));
            assert_eq!(d.ranges, vec![0..clusters]);
        }
        let e = c.check(|_| true).unwrap_err();
        assert!(
            matches!(e, Error::MissingClusters { dev_id: 1, missing, .. } if missing == 1 << 32),
            "{e:?}"
        );
    }
    let r = IndexedReader::open(&bytes[..]).unwrap();
    assert!(
        r.index_bytes() < 64 * 1024,
        "index {} bytes",
        r.index_bytes()
    );
    let mut buf = [0xFFu8; 100];
    assert_eq!(r.read(254, TIB256 - 10, &mut buf).unwrap(), 10);
    assert!(buf[..10].iter().all(|&x| x == 0));
    let m = r.map(254, 12345).unwrap().unwrap();
    assert_eq!((m.kind, m.start, m.end), (MappingKind::Zero, 12345, TIB256));
    assert_eq!(r.seek_data(1, 0).unwrap(), None);
    assert_eq!(r.seek_hole(1, 77).unwrap(), Some(77));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let hwm = vma_tests::peak_rss_kib().expect("VmHWM");
    assert!(hwm < 100 * 1024, "peak RSS {hwm} KiB");
}

/// Both readers give the same verdict on every prefix of an archive.
#[test]
fn every_prefix_gives_the_same_verdict_in_both_readers() {
    let b = base();
    // Every 512-byte-aligned prefix (and a few odd ones) either opens or fails cleanly.
    let mut cuts: Vec<usize> = (0..b.bytes.len()).step_by(4096).collect();
    cuts.extend([b.hs + 1, b.ext[1] - 1, b.ext[1] + 511, b.bytes.len()]);
    for cut in cuts {
        let s = stream_result(&b.bytes[..cut]);
        let i = indexed_result(&b.bytes[..cut]);
        assert_eq!(s.is_ok(), i.is_ok(), "cut {cut}: {s:?} vs {i:?}");
        if let (Err(a), Err(c)) = (&s, &i) {
            assert_eq!(
                a.to_string(),
                c.to_string(),
                "cut {cut}: both readers report the same error"
            );
        }
        if let (Ok(a), Ok(c)) = (&s, &i) {
            assert_eq!(a, c);
        }
    }
    // Blockinfo with a reserved byte set is accepted (not checked, spec §7.2).
    let mut x = b.bytes.clone();
    patch_extent(&mut x, b.ext[0], true, |e| {
        e.blockinfo[1] = BlockInfo {
            reserved: 9,
            ..e.blockinfo[1]
        }
    });
    assert!(stream_result(&x).unwrap().is_complete());
    assert!(indexed_result(&x).unwrap().is_complete());
}
