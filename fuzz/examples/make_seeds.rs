//! Writes the small seed archives in `fuzz/seeds/` with our own writer
//! (multi-extent, vmstate, odd device sizes, diskless), so the fuzzers start
//! from inputs far smaller than the Proxmox vectors. The compressed copies were
//! made with `zstd -19`, `gzip -9` and `lzop -9`.
//!
//! Five more declare extreme device sizes (`size-*.vma`: 0, 1, 2^48,
//! 2^64-512, 2^64-1) with one tiny extent: the writer refuses such sizes, so
//! a 64 KiB device is written and its size patched, with the header MD5
//! recomputed.
//!
//! `cargo run --release --example make_seeds -- seeds` (from `fuzz/`, no RUSTFLAGS).
use vma_format::raw::{hdr, header_md5};
use vma_format::{Uuid, WriterBuilder};
const C: usize = 65536;

/// A disk: name, size, and a function filling cluster N.
type Disk<'a> = (&'a str, u64, &'a dyn Fn(u32, &mut [u8]));

fn write(path: &str, configs: &[(&str, &[u8])], disks: &[Disk]) {
    let mut b = WriterBuilder::new();
    b.uuid(Uuid::from_bytes([0x5e; 16])).ctime(1_700_000_000);
    for (n, d) in configs {
        b.add_config(n, d.to_vec()).unwrap();
    }
    for (n, s, _) in disks {
        b.add_device(n, *s).unwrap();
    }
    let w = b.build(Vec::new()).unwrap();
    for (i, (_, s, f)) in disks.iter().enumerate() {
        let n = s.div_ceil(C as u64) as u32;
        for c in 0..n {
            let len = ((*s - c as u64 * C as u64) as usize).min(C);
            let mut buf = vec![0u8; len];
            f(c, &mut buf);
            w.write_cluster(i as u8 + 1, c, &buf).unwrap();
        }
    }
    let (out, _) = w.finish().unwrap();
    std::fs::write(path, &out).unwrap();
    println!("{path}: {} bytes", out.len());
}

/// One device `drive-scsi0` declared `size` bytes long; cluster 0 stores
/// block 0 (first byte 0xAB).
fn write_declared_size(path: &str, size: u64) {
    let mut b = WriterBuilder::new();
    b.uuid(Uuid::from_bytes([0x5e; 16])).ctime(1_700_000_000);
    b.add_config("qemu-server.conf", b"memory: 512\n".to_vec())
        .unwrap();
    b.add_device("drive-scsi0", C as u64).unwrap();
    let w = b.build(Vec::new()).unwrap();
    let mut c = vec![0u8; C];
    c[0] = 0xAB;
    w.write_cluster(1, 0, &c).unwrap();
    let (mut out, _) = w.finish().unwrap();
    let at = hdr::DEV_INFO + hdr::DEV_INFO_SIZE + hdr::DEV_SIZE;
    out[at..at + 8].copy_from_slice(&size.to_be_bytes());
    let hs = u32::from_be_bytes(
        out[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .unwrap(),
    );
    let md5 = header_md5(&out[..hs as usize]);
    out[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    std::fs::write(path, &out).unwrap();
    println!("{path}: {} bytes, declared size {size}", out.len());
}

fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let p = |n: &str| format!("{dir}/{n}");
    // Small: one disk, 3 clusters, a partial last block, two configs.
    write(
        &p("small-one-disk.vma"),
        &[
            ("qemu-server.conf", b"memory: 512\n"),
            ("qemu-server.fw", b"[OPTIONS]\n"),
        ],
        &[("drive-scsi0", 2 * 65536 + 5000, &|c, b| {
            if c == 0 {
                b[4096] = 1;
            }
            if c == 2 {
                b[4999] = 0x42;
            }
        })],
    );
    // Two extents: 60 clusters, mostly zero.
    write(
        &p("two-extents.vma"),
        &[("qemu-server.conf", b"cores: 2\n")],
        &[("drive-virtio0", 60 * 65536, &|c, b| {
            if c % 29 == 0 {
                b[0] = c as u8 | 1;
            }
        })],
    );
    // A disk and a vmstate stream (written in order).
    write(
        &p("vmstate.vma"),
        &[("qemu-server.conf", b"vmstate: 1\n")],
        &[
            ("drive-scsi0", 65536, &|_, b| {
                b[70000 % 65536] = 7;
            }),
            ("vmstate", 3 * 65536, &|c, b| {
                b[c as usize * 4096] = 9;
            }),
        ],
    );
    // Three tiny disks, sizes not multiples of 4096.
    write(
        &p("three-disks.vma"),
        &[],
        &[
            ("drive-sata0", 513, &|_, b| {
                b[512] = 1;
            }),
            ("drive-sata1", 4097, &|_, b| {
                b[0] = 2;
                b[4096] = 3;
            }),
            ("drive-efidisk0", 131072, &|c, b| {
                if c == 1 {
                    b[..8192].fill(0xee);
                }
            }),
        ],
    );
    // Diskless, no configs.
    write(&p("empty.vma"), &[], &[]);
    // Extreme declared sizes.
    for (name, size) in [
        ("0", 0),
        ("1", 1),
        ("2p48", 1 << 48),
        ("2p64-512", u64::MAX - 511),
        ("2p64-1", u64::MAX),
    ] {
        write_declared_size(&p(&format!("size-{name}.vma")), size);
    }
}
