//! Shared helpers of the `seekable_*` tests: a synthetic archive and the
//! four compressed forms, made in-process.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use vma_format::{IndexedReader, ReadAt, Uuid, WriterBuilder};

pub mod deflate_bits;

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Disk sizes of [`archive`]: the second is not a multiple of the cluster size.
pub fn disk_sizes(mib: u64) -> [u64; 2] {
    [
        mib * 3 / 4 * (1 << 20),
        (mib / 4) * (1 << 20) + 12 * 4096 + 512,
    ]
}

/// A VMA with two disks totalling about `mib` MiB: random clusters,
/// compressible clusters, zero clusters and clusters with zero blocks.
pub fn archive(mib: u64, seed: u64) -> Vec<u8> {
    archive_with_uuid(mib, seed, seed)
}

/// [`archive`] with the UUID derived from `uuid_seed` instead.
pub fn archive_with_uuid(mib: u64, seed: u64, uuid_seed: u64) -> Vec<u8> {
    let mut b = WriterBuilder::new();
    b.add_config("qemu-server.conf", format!("seed: {seed}\n"))
        .unwrap();
    let sizes = disk_sizes(mib);
    let a = b.add_device("drive-scsi0", sizes[0]).unwrap();
    let d = b.add_device("drive-virtio1", sizes[1]).unwrap();
    b.uuid(Uuid::from_u64_pair(
        uuid_seed,
        uuid_seed.wrapping_mul(31) ^ 0xABCD,
    ))
    .ctime(1_700_000_000);
    let w = b.build(Vec::new()).unwrap();
    let mut rng = Rng(seed | 1);
    for (dev, size) in [(a, sizes[0]), (d, sizes[1])] {
        let clusters = size.div_ceil(65536);
        for c in 0..clusters {
            let len = (size - c * 65536).min(65536) as usize;
            let mut data = vec![0u8; len];
            match rng.below(8) {
                0 | 1 => {} // zero cluster
                2 | 3 => {
                    // compressible: a repeated phrase with the cluster number
                    let s = format!("cluster {c} of device {dev} says hello; ");
                    for (i, x) in data.iter_mut().enumerate() {
                        *x = s.as_bytes()[i % s.len()];
                    }
                }
                4 => {
                    // random with some zero 4 KiB blocks
                    rng.fill(&mut data);
                    for blk in data.chunks_mut(4096) {
                        if rng.below(3) == 0 {
                            blk.fill(0);
                        }
                    }
                }
                _ => rng.fill(&mut data),
            }
            w.write_cluster(dev, c as u32, &data).unwrap();
        }
    }
    w.finish().unwrap().0
}

pub fn zstd_single(plain: &[u8]) -> Vec<u8> {
    zstd::encode_all(plain, 3).unwrap()
}

/// One zstd frame per `frame` bytes, concatenated (as `vma create` writes).
pub fn zstd_multi(plain: &[u8], frame: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in plain.chunks(frame) {
        out.extend_from_slice(&zstd::encode_all(c, 3).unwrap());
    }
    out
}

/// Like [`zstd_multi`], with a content checksum in every frame.
pub fn zstd_multi_checked(plain: &[u8], frame: usize) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.include_checksum(true).unwrap();
    let mut out = Vec::new();
    for chunk in plain.chunks(frame) {
        out.extend_from_slice(&c.compress(chunk).unwrap());
    }
    out
}

pub fn gzip(plain: &[u8]) -> Vec<u8> {
    gzip_level(plain, flate2::Compression::fast())
}

/// gzip at `level` (`none()`: stored blocks, the size depends only on the input's).
pub fn gzip_level(plain: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
    e.write_all(plain).unwrap();
    e.finish().unwrap()
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// An lzop file as `lzop` 1.04 writes it (256 KiB blocks, adler32 of the
/// data; with `crc` also CRC-32 of the data).
pub fn lzop(plain: &[u8], crc: bool) -> Vec<u8> {
    let flags: u32 = 0x0300_0001 | if crc { 0x100 } else { 0 };
    let mut h = Vec::new();
    h.extend_from_slice(&0x1040u16.to_be_bytes());
    h.extend_from_slice(&0x20a0u16.to_be_bytes());
    h.extend_from_slice(&0x0940u16.to_be_bytes());
    h.push(1);
    h.push(5);
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&0o100644u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.push(0);
    let sum = adler32(&h);
    let mut out = vec![0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
    out.extend_from_slice(&h);
    out.extend_from_slice(&sum.to_be_bytes());
    for block in plain.chunks(256 * 1024) {
        let c = lzokay_native::compress(block).unwrap();
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        let stored: &[u8] = if c.len() < block.len() { &c } else { block };
        out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        out.extend_from_slice(&adler32(block).to_be_bytes());
        if crc {
            out.extend_from_slice(&crc32fast::hash(block).to_be_bytes());
        }
        out.extend_from_slice(stored);
    }
    out.extend_from_slice(&0u32.to_be_bytes());
    out
}

/// The compressed forms under test: (name, bytes).
pub fn forms(plain: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("zstd-single", zstd_single(plain)),
        ("zstd-multi", zstd_multi(plain, 8 << 20)),
        ("gzip", gzip(plain)),
        ("lzo", lzop(plain, false)),
    ]
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Checks that `got` serves the same disks as the plain archive `want`:
/// whole disks, then random unaligned ranges.
pub fn assert_same_disks<S: ReadAt, T: ReadAt>(
    got: &IndexedReader<S>,
    want: &IndexedReader<T>,
    seed: u64,
    what: &str,
) {
    assert_eq!(got.header().devices, want.header().devices, "{what}");
    let mut rng = Rng(seed | 1);
    for dev in &want.header().devices {
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < dev.size {
            let n = got.read(dev.id, off, &mut a).unwrap();
            let m = want.read(dev.id, off, &mut b).unwrap();
            assert_eq!(n, m, "{what}: dev {} at {off}", dev.id);
            assert!(a[..n] == b[..m], "{what}: dev {} differs at {off}", dev.id);
            off += n as u64;
        }
        for _ in 0..200 {
            let off = rng.below(dev.size);
            let len = 1 + rng.below(200_000) as usize;
            let n = got.read(dev.id, off, &mut a[..len.min(1 << 20)]).unwrap();
            let m = want.read(dev.id, off, &mut b[..len.min(1 << 20)]).unwrap();
            assert_eq!(n, m, "{what}: dev {} at {off}+{len}", dev.id);
            assert!(
                a[..n] == b[..m],
                "{what}: dev {} differs at {off}+{len}",
                dev.id
            );
        }
    }
}
