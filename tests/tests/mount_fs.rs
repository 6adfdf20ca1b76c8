//! The FUSE filesystem mounted in-process (`vma_fuse::spawn_mount`) over the
//! Proxmox-written vectors: names, attributes, bytes, SEEK_DATA/SEEK_HOLE,
//! qemu-img and cp as clients, damaged archives, reads after the archive
//! changed underneath. Needs root and /dev/fuse.
//!
//! Every mount is owned by a `Mounted`, whose `MountHandle` unmounts on drop,
//! so a failing test leaves nothing mounted.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use vma_fuse::{MountHandle, MountOptions, VmaFs};
use vma_tests::{parse_sha256_file, sha256_hex, vector, TestRng};

/// A live mount; fields drop in order, so the mount goes before its directory.
struct Mounted {
    handle: MountHandle,
    _dir: TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.handle.mountpoint().join(name)
    }
}

fn mount_with(archive: &Path, opts: &MountOptions) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let fs = VmaFs::open_with(archive, opts.allow_incomplete)
        .unwrap_or_else(|e| panic!("open {}: {e}", archive.display()));
    let handle = vma_fuse::spawn_mount(fs, dir.path(), opts).unwrap();
    Mounted { handle, _dir: dir }
}

fn mount(archive: &Path) -> Mounted {
    mount_with(archive, &MountOptions::default())
}

fn input(name: &str) -> Vec<u8> {
    fs::read(vector("inputs").join(name)).unwrap()
}

/// A copy of a vector in a temp dir, for damaging.
fn copy_vector(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::copy(vector(name), &path).unwrap();
    (dir, path)
}

fn patch(path: &Path, offset: u64, f: impl FnOnce(u8) -> u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).unwrap();
    file.write_all_at(&[f(b[0])], offset).unwrap();
}

/// Names the mount must show, from the Proxmox `vma list` output (not our parser).
fn expected_names(list: &str) -> BTreeSet<String> {
    let text = fs::read_to_string(vector(list)).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("CFG:") {
            names.insert(line.rsplit_once("name: ").unwrap().1.to_string());
        } else if line.starts_with("DEV:") {
            names.insert(format!("{}.raw", line.rsplit_once("devname: ").unwrap().1));
        }
    }
    names
}

#[test]
fn mount_readdir_lists_expected_names() {
    for v in ["ref-diskless", "ref-one-disk", "ref-two-disks"] {
        let m = mount(&vector(&format!("{v}.vma")));
        let listed: BTreeSet<String> = fs::read_dir(m.handle.mountpoint())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let expected = expected_names(&format!("{v}.list"));
        assert!(!expected.is_empty());
        assert_eq!(listed, expected, "{v}");
        let err = fs::metadata(m.path("no-such-file")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}

#[test]
fn mount_sha256_of_every_file_matches() {
    for v in ["ref-one-disk", "ref-two-disks"] {
        let m = mount(&vector(&format!("{v}.vma")));
        let list = parse_sha256_file(&fs::read_to_string(vector(&format!("{v}.sha256"))).unwrap());
        assert_eq!(
            list.len(),
            fs::read_dir(m.handle.mountpoint()).unwrap().count(),
            "{v}"
        );
        for (hash, name) in list {
            // Extract writes disk-<devname>.raw; the mount shows <devname>.raw.
            let mounted = name.strip_prefix("disk-").unwrap_or(&name);
            let data = fs::read(m.path(mounted)).unwrap();
            assert_eq!(sha256_hex(&data), hash, "{v}: {mounted}");
        }
    }
}

#[test]
fn mount_attributes_sizes_modes_blocks_inodes() {
    let archive = vector("ref-two-disks.vma");
    let ctime = {
        let r = vma_format::IndexedReader::open(File::open(&archive).unwrap()).unwrap();
        r.header().ctime
    };
    let m = mount(&archive);
    let root = fs::metadata(m.handle.mountpoint()).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.mode() & 0o7777, 0o555);

    let sizes = [
        ("drive-scsi0.raw", input("diskA.raw").len() as u64),
        ("drive-scsi1.raw", input("diskB.raw").len() as u64),
        ("qemu-server.conf", input("qemu-server.conf").len() as u64),
        ("qemu-server.fw", input("qemu-server.fw").len() as u64),
    ];
    let mut inodes = Vec::new();
    for (name, size) in sizes {
        let md = fs::metadata(m.path(name)).unwrap();
        assert!(md.is_file(), "{name}");
        assert_eq!(md.mode() & 0o7777, 0o444, "{name}");
        assert_eq!(md.len(), size, "{name}");
        assert_eq!(md.mtime(), ctime, "{name}: mtime is the archive ctime");
        inodes.push(md.ino());
    }
    // diskB: 128 KiB + 4 KiB of data in 4 MiB; diskA: 16 + 2 + 16 + 1 blocks of 4 KiB.
    let b = fs::metadata(m.path("drive-scsi1.raw")).unwrap();
    assert_eq!(b.blocks() * 512, 132 * 1024);
    assert!(b.blocks() * 512 < b.len());
    let a = fs::metadata(m.path("drive-scsi0.raw")).unwrap();
    assert_eq!(a.blocks() * 512, 35 * 4096);

    // readdir, lookup and a second mount agree on inode numbers.
    for e in fs::read_dir(m.handle.mountpoint()).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            e.ino(),
            fs::metadata(e.path()).unwrap().ino(),
            "{:?}",
            e.file_name()
        );
    }
    let again = mount(&archive);
    for ((name, _), ino) in sizes.iter().zip(&inodes) {
        assert_eq!(
            fs::metadata(again.path(name)).unwrap().ino(),
            *ino,
            "{name}"
        );
    }
    let unique: BTreeSet<_> = inodes.iter().collect();
    assert_eq!(unique.len(), inodes.len());
}

#[test]
fn mount_is_read_only() {
    let m = mount(&vector("ref-one-disk.vma"));
    let err = OpenOptions::new()
        .write(true)
        .open(m.path("drive-scsi0.raw"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = File::create(m.path("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

/// Random odd offsets and lengths (many crossing 4 KiB and 64 KiB
/// boundaries, some past the end) compared against the input file.
fn random_reads(file: &File, want: &[u8], rng: &mut TestRng, count: usize, what: &str) {
    let size = want.len() as u64;
    let mut buf = vec![0u8; 300_000];
    for i in 0..count {
        let offset = match i % 3 {
            // Just before a cluster boundary, so the read crosses it.
            0 => (rng.below(size / 65536 + 1) * 65536).saturating_sub(rng.below(5000) + 1),
            _ => rng.below(size + 100),
        } | 1;
        let len = (rng.below(200_000) | 1) as usize;
        let got = file.read_at(&mut buf[..len], offset).unwrap();
        let end = (offset + len as u64).min(size).max(offset.min(size));
        let expect = &want[offset.min(size) as usize..end as usize];
        assert_eq!(got, expect.len(), "{what}: read {len} at {offset}");
        assert!(
            buf[..got] == *expect,
            "{what}: bytes differ for read {len} at {offset}"
        );
    }
}

#[test]
fn mount_random_reads_match_inputs() {
    let m = mount(&vector("ref-two-disks.vma"));
    let mut rng = TestRng::new(1);
    for (name, input_name) in [
        ("drive-scsi0.raw", "diskA.raw"),
        ("drive-scsi1.raw", "diskB.raw"),
    ] {
        let want = input(input_name);
        // O_DIRECT sends the exact odd offsets and lengths to the daemon;
        // buffered reads go through the page cache (page-sized requests, readahead).
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(m.path(name))
            .unwrap();
        random_reads(&direct, &want, &mut rng, 300, &format!("{name} O_DIRECT"));
        let buffered = File::open(m.path(name)).unwrap();
        random_reads(&buffered, &want, &mut rng, 300, &format!("{name} buffered"));
    }
    let conf = File::open(m.path("qemu-server.conf")).unwrap();
    random_reads(
        &conf,
        &input("qemu-server.conf"),
        &mut rng,
        50,
        "qemu-server.conf",
    );
}

#[test]
fn mount_parallel_reads_from_several_threads() {
    let m = mount(&vector("ref-two-disks.vma"));
    let want = [input("diskA.raw"), input("diskB.raw")];
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let (m, want) = (&m, &want);
            s.spawn(move || {
                let (name, want) = if t % 2 == 0 {
                    ("drive-scsi0.raw", &want[0])
                } else {
                    ("drive-scsi1.raw", &want[1])
                };
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(m.path(name))
                    .unwrap();
                random_reads(&f, want, &mut TestRng::new(t + 2), 200, name);
            });
        }
    });
}

fn lseek(file: &File, offset: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r)
    }
}

/// Data segments found by alternating SEEK_DATA / SEEK_HOLE from 0.
fn data_segments(file: &File) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let start = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(s) => s,
            Err(e) => {
                assert_eq!(e, libc::ENXIO, "SEEK_DATA at {pos}");
                break;
            }
        };
        let end = lseek(file, start, libc::SEEK_HOLE).unwrap();
        assert!(end > start);
        out.push((start, end));
        pos = end;
    }
    out
}

#[test]
fn mount_seek_data_and_hole_follow_the_layout() {
    let m = mount(&vector("ref-two-disks.vma"));
    let a = File::open(m.path("drive-scsi0.raw")).unwrap();
    assert_eq!(
        data_segments(&a),
        [
            (0, 65536),
            (135168, 139264),
            (151552, 155648),
            (458752, 524288),
            (1060864, 1061376)
        ]
    );
    let b = File::open(m.path("drive-scsi1.raw")).unwrap();
    let mib = 1 << 20;
    assert_eq!(
        data_segments(&b),
        [(mib, mib + 128 * 1024), (4 * mib - 4096, 4 * mib)]
    );

    // Inside a data run / hole, and at and past the end.
    assert_eq!(lseek(&a, 1000, libc::SEEK_DATA), Ok(1000));
    assert_eq!(lseek(&a, 1000, libc::SEEK_HOLE), Ok(65536));
    assert_eq!(lseek(&a, 70000, libc::SEEK_HOLE), Ok(70000));
    assert_eq!(lseek(&a, 70000, libc::SEEK_DATA), Ok(135168));
    assert_eq!(lseek(&a, 1061375, libc::SEEK_HOLE), Ok(1061376));
    assert_eq!(lseek(&a, 1061376, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(lseek(&a, 1061376, libc::SEEK_HOLE), Err(libc::ENXIO));
    assert_eq!(lseek(&b, 5 << 20, libc::SEEK_DATA), Err(libc::ENXIO));

    // A config file is all data.
    let conf = File::open(m.path("qemu-server.conf")).unwrap();
    assert_eq!(lseek(&conf, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(lseek(&conf, 0, libc::SEEK_HOLE), Ok(230));
    assert_eq!(lseek(&conf, 230, libc::SEEK_DATA), Err(libc::ENXIO));
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn mount_qemu_img_compare_and_convert() {
    let m = mount(&vector("ref-two-disks.vma"));
    let out = tempfile::tempdir().unwrap();
    for (name, input_name) in [
        ("drive-scsi0.raw", "diskA.raw"),
        ("drive-scsi1.raw", "diskB.raw"),
    ] {
        let input = vector("inputs").join(input_name);
        let disk = m.path(name);
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&disk)
            .arg(&input));
        let qcow = out.path().join(format!("{name}.qcow2"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&disk)
            .arg(&qcow));
        run(Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&qcow)
            .arg(&input));
        // qemu-img map sees the holes: its data extents are the input's layout.
        let map = run(Command::new("qemu-img")
            .args(["map", "-f", "raw", "--output=json"])
            .arg(&disk));
        let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
        let data: Vec<(u64, u64)> = map
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
            .collect();
        let want: &[(u64, u64)] = if name == "drive-scsi0.raw" {
            &[
                (0, 65536),
                (135168, 4096),
                (151552, 4096),
                (458752, 65536),
                (1060864, 512),
            ]
        } else {
            &[(1 << 20, 128 * 1024), ((4 << 20) - 4096, 4096)]
        };
        assert_eq!(data, want, "{name}: qemu-img map");
    }
}

#[test]
fn mount_cp_sparse_keeps_holes() {
    let m = mount(&vector("ref-two-disks.vma"));
    let out = tempfile::tempdir().unwrap();
    let copy = out.path().join("b.raw");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(m.path("drive-scsi1.raw"))
        .arg(&copy));
    assert!(fs::read(&copy).unwrap() == input("diskB.raw"));
    let md = fs::metadata(&copy).unwrap();
    assert!(
        md.blocks() * 512 < md.len() / 4,
        "copy is not sparse: {} blocks",
        md.blocks()
    );
}

/// Byte offset of the second extent of ref-two-disks.vma (the README: an
/// extent of 67 data blocks after the 12800-byte header).
const TWO_DISKS_EXTENT2: u64 = 12800 + 512 + 67 * 4096;

#[test]
fn mount_refuses_a_broken_archive_with_a_clear_message() {
    let (_dir, path) = copy_vector("ref-two-disks.vma");
    // A byte inside the first extent's blockinfo table: its MD5 no longer matches.
    patch(&path, 12800 + 100, |b| b ^ 0x40);
    let err = VmaFs::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("12800"), "names the extent offset: {err}");

    // And through the public mount(): an error, nothing mounted. (In the
    // foreground: this test process runs several threads, so detaching
    // would be refused before the archive is read.)
    let mp = tempfile::tempdir().unwrap();
    let fg = MountOptions {
        foreground: true,
        ..Default::default()
    };
    let err = vma_fuse::mount(&path, mp.path(), &fg).unwrap_err();
    assert!(err.to_string().contains("12800"), "{err}");
    assert_eq!(fs::read_dir(mp.path()).unwrap().count(), 0);
}

#[test]
fn mount_serves_a_compressed_archive_through_its_sidecar_index() {
    // A copy: the sidecar index is written next to the archive.
    let (dir, path) = copy_vector("ref-two-disks.vma.zst");
    let m = mount(&path);
    let list = parse_sha256_file(&fs::read_to_string(vector("ref-two-disks.sha256")).unwrap());
    assert_eq!(
        list.len(),
        fs::read_dir(m.handle.mountpoint()).unwrap().count()
    );
    for (hash, name) in list {
        let mounted = name.strip_prefix("disk-").unwrap_or(&name);
        let data = fs::read(m.path(mounted)).unwrap();
        assert_eq!(sha256_hex(&data), hash, "{mounted}");
    }
    assert!(dir.path().join("ref-two-disks.vma.zst.vmaidx").is_file());
}

#[test]
fn mount_refuses_a_bad_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = vma_fuse::mount(
        &vector("ref-one-disk.vma"),
        &missing,
        &MountOptions::default(),
    );
    assert!(
        matches!(err, Err(vma_fuse::Error::Mountpoint { .. })),
        "{err:?}"
    );
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let fs = VmaFs::open(&vector("ref-one-disk.vma")).unwrap();
    let err = vma_fuse::spawn_mount(fs, &file, &MountOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn mount_incomplete_archive_needs_allow_incomplete() {
    let (_dir, path) = copy_vector("ref-two-disks.vma");
    // Drop the second extent: drive-scsi1 loses its last clusters.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(TWO_DISKS_EXTENT2)
        .unwrap();
    let err = VmaFs::open(&path).unwrap_err();
    assert!(matches!(err, vma_fuse::Error::Incomplete { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("drive-scsi1") && msg.contains("missing"),
        "{msg}"
    );
    assert!(msg.contains("allow-incomplete"), "{msg}");

    let m = mount_with(
        &path,
        &MountOptions {
            allow_incomplete: true,
            ..Default::default()
        },
    );
    assert!(fs::read(m.path("drive-scsi0.raw")).unwrap() == input("diskA.raw"));
    let b = fs::read(m.path("drive-scsi1.raw")).unwrap();
    let want = input("diskB.raw");
    assert_eq!(b.len(), want.len());
    assert!(b[..want.len() - 4096] == want[..want.len() - 4096]);
    assert!(
        b[want.len() - 4096..].iter().all(|&x| x == 0),
        "missing clusters read as zeros"
    );
}

#[test]
fn mount_refuses_a_device_name_that_fails_the_name_rule() {
    let (_dir, path) = copy_vector("ref-one-disk.vma");
    let mut bytes = fs::read(&path).unwrap();
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let header_size = be32(56);
    // dev_id 1's name pointer (spec §5), relative to the blob buffer; the blob
    // is a u16le length then the name (spec §4).
    use vma_format::raw::hdr;
    let ptr = be32(hdr::DEV_INFO + hdr::DEV_INFO_SIZE + hdr::DEV_NAME_PTR);
    let at = be32(48) + ptr + 2;
    assert_eq!(&bytes[at..at + 11], b"drive-scsi0");
    bytes[at..at + 11].copy_from_slice(b"drive/scsi0");
    let md5 = vma_format::raw::header_md5(&bytes[..header_size]);
    let f = vma_format::raw::hdr::MD5;
    bytes[f..f + 16].copy_from_slice(&md5);
    fs::write(&path, &bytes).unwrap();
    let err = VmaFs::open(&path).unwrap_err();
    assert!(matches!(err, vma_fuse::Error::BadName { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("drive/scsi0") && msg.contains('/'), "{msg}");
}

#[test]
fn mount_read_of_a_changed_extent_gives_eio_and_the_daemon_survives() {
    let (_dir, path) = copy_vector("ref-two-disks.vma");
    let m = mount(&path);
    // Change the second extent's header underneath the mount (its MD5 field).
    patch(
        &path,
        TWO_DISKS_EXTENT2 + vma_format::raw::ext::MD5 as u64,
        |b| !b,
    );
    let open_direct = |name: &str| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(m.path(name))
            .unwrap()
    };
    let b = open_direct("drive-scsi1.raw");
    let mut buf = vec![0u8; 4096];
    let err = b.read_at(&mut buf, (4 << 20) - 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Data in the intact first extent still reads, from both disks.
    let n = b.read_at(&mut buf, 1 << 20).unwrap();
    assert!(buf[..n] == input("diskB.raw")[1 << 20..(1 << 20) + n]);
    let mut a = Vec::new();
    open_direct("drive-scsi0.raw").read_to_end(&mut a).unwrap();
    assert!(a == input("diskA.raw"));
    // Truncated underneath: the first extent's data is gone, so its reads fail too.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(12800 + 512 + 4096)
        .unwrap();
    let err = open_direct("drive-scsi0.raw")
        .read_at(&mut buf, 458752)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Metadata is served from the index and still answers.
    assert_eq!(
        fs::metadata(m.path("drive-scsi0.raw")).unwrap().len(),
        1061376
    );
    drop(b);
    m.handle.unmount().unwrap();
}

#[test]
fn mount_options_pass_through() {
    let m = mount_with(
        &vector("ref-one-disk.vma"),
        &MountOptions {
            options: vec!["allow_other,default_permissions".into()],
            ..Default::default()
        },
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mp = m.handle.mountpoint().as_os_str().as_bytes().to_vec();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4).map(str::as_bytes) == Some(&mp[..]))
        .expect("mount listed in mountinfo");
    for want in ["allow_other", "default_permissions", "ro"] {
        assert!(
            line.split([' ', ',']).any(|w| w == want),
            "{want} missing: {line}"
        );
    }
    assert!(fs::read(m.path("qemu-server.conf")).unwrap() == input("qemu-server.conf"));

    let fs = VmaFs::open(&vector("ref-one-disk.vma")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = vma_fuse::spawn_mount(
        fs,
        dir.path(),
        &MountOptions {
            options: vec!["rw".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}
