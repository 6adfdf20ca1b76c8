//! Every reading command of `vma` on archives whose header declares an
//! extreme device size (0, 1, 2^48, 2^64-512, 2^64-1; valid MD5, one tiny
//! extent): each ends with a status and a `vma: ` message, never a panic
//! (exit 101) or an abort, plain and zstd-compressed, from a file and from
//! stdin. A disk that no file can hold fails with a message naming the
//! device, its declared size and the limit (exit 133).

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vma_format::raw::{hdr, header_md5, CLUSTER_SIZE};
use vma_format::WriterBuilder;
use vma_tests::vma_bin;

const SIZES: [u64; 5] = [0, 1, 1 << 48, u64::MAX - 511, u64::MAX];

/// An archive with one config and one device `name` (dev_id 1) whose header
/// declares `size` bytes; one extent stores block 0 of cluster 0 (first
/// byte 0xAB). Written for a 64 KiB device, then the size is patched and the
/// header MD5 recomputed.
fn archive(name: &str, size: u64) -> Vec<u8> {
    let mut b = WriterBuilder::new();
    b.add_config("qemu-server.conf", b"memory: 512\n".to_vec())
        .unwrap();
    b.add_device(name, CLUSTER_SIZE as u64).unwrap();
    b.ctime(1_700_000_000);
    let w = b.build(Vec::new()).unwrap();
    let mut c = vec![0u8; CLUSTER_SIZE];
    c[0] = 0xAB;
    w.write_cluster(1, 0, &c).unwrap();
    let (mut bytes, _) = w.finish().unwrap();
    let at = hdr::DEV_INFO + hdr::DEV_INFO_SIZE + hdr::DEV_SIZE;
    bytes[at..at + 8].copy_from_slice(&size.to_be_bytes());
    let hs = u32::from_be_bytes(
        bytes[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    let md5 = header_md5(&bytes[..hs]);
    bytes[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    bytes
}

fn vma(args: &[&OsStr], stdin: Option<Vec<u8>>) -> Output {
    let mut c = Command::new(vma_bin!());
    c.env("TZ", "UTC").args(args);
    let Some(input) = stdin else {
        return c.stdin(Stdio::null()).output().expect("run vma");
    };
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vma");
    let mut pipe = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&input); // list/config stop reading early
    });
    let out = child.wait_with_output().expect("wait");
    feeder.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// No panic, no signal, one of the documented statuses; a failure says why.
#[track_caller]
fn clean(o: &Output, what: &str) -> i32 {
    let err = text(&o.stderr);
    assert!(
        o.status.signal().is_none(),
        "{what}: killed by {:?}: {err}",
        o.status
    );
    let code = o.status.code().unwrap();
    assert!([0, 3, 133].contains(&code), "{what}: exit {code}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    if code != 0 {
        assert!(err.starts_with("vma: "), "{what}: {err}");
    }
    code
}

/// Whether this file system takes a sparse file of `len` bytes.
fn fs_takes(dir: &Path, len: u64) -> bool {
    let f = fs::File::create(dir.join("probe")).unwrap();
    let ok = f.set_len(len).is_ok();
    drop(f);
    fs::remove_file(dir.join("probe")).unwrap();
    ok
}

/// `vma extract -r DIR/map FILE DIR/OUT`, with `map` written to `DIR/map`.
fn extract_mapped(dir: &Path, map: &str, file: &Path, out: &str) -> Output {
    let map_file = dir.join("map");
    fs::write(&map_file, map).unwrap();
    let out = dir.join(out);
    vma(
        &[
            os("extract"),
            os("-r"),
            map_file.as_os_str(),
            file.as_os_str(),
            out.as_os_str(),
        ],
        None,
    )
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn every_reading_command_survives_extreme_declared_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    for size in SIZES {
        let plain = archive("drive-scsi0", size);
        let zst = zstd::stream::encode_all(&plain[..], 1).unwrap();
        for (kind, bytes) in [("plain", &plain), ("zst", &zst)] {
            let file = tmp.path().join(format!("s{size}.vma.{kind}"));
            fs::write(&file, bytes).unwrap();
            let mut n = 0;
            for args in [
                &["list"][..],
                &["list", "--json"],
                &["config"],
                &["verify"],
                &["verify", "-v"],
                &["verify", "--json"],
                &["extract"],
                &["extract", "-v"],
                &["extract", "--salvage"],
            ] {
                for from_stdin in [false, true] {
                    n += 1;
                    let what = format!("{args:?} size {size} {kind} stdin={from_stdin}");
                    let mut argv: Vec<&OsStr> = args.iter().map(|a| os(a)).collect();
                    argv.push(if from_stdin {
                        os("-")
                    } else {
                        file.as_os_str()
                    });
                    let out = tmp.path().join(format!("out-{size}-{kind}-{n}"));
                    if args[0] == "extract" {
                        argv.push(out.as_os_str());
                    }
                    let o = vma(&argv, from_stdin.then(|| bytes.clone()));
                    clean(&o, &what);
                }
            }
            // -r into a 64 KiB target (too small for most sizes: refused cleanly).
            let target = tmp.path().join(format!("target-{size}-{kind}"));
            fs::write(&target, vec![0u8; 65536]).unwrap();
            let map = tmp.path().join(format!("map-{size}-{kind}"));
            fs::write(&map, format!("1:drive-scsi0={}\n", target.display())).unwrap();
            for from_stdin in [false, true] {
                let out = tmp.path().join(format!("out-r-{size}-{kind}-{from_stdin}"));
                let input = if from_stdin {
                    os("-")
                } else {
                    file.as_os_str()
                };
                let o = vma(
                    &[
                        os("extract"),
                        os("-r"),
                        map.as_os_str(),
                        input,
                        out.as_os_str(),
                    ],
                    from_stdin.then(|| bytes.clone()),
                );
                clean(
                    &o,
                    &format!("extract -r size {size} {kind} stdin={from_stdin}"),
                );
                // Writes stop at the device end.
                assert_eq!(fs::metadata(&target).unwrap().len(), 65536);
            }
            if kind == "zst" {
                let o = vma(&[os("index"), file.as_os_str()], None);
                clean(&o, &format!("index size {size}"));
            }
        }
    }
}

#[test]
fn one_byte_disk_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.vma");
    fs::write(&file, archive("drive-scsi0", 1)).unwrap();
    let out = tmp.path().join("o");
    let o = vma(&[os("extract"), file.as_os_str(), out.as_os_str()], None);
    assert_eq!(clean(&o, "extract"), 0);
    // QEMU's length (rounded up to 512), with the one byte the device holds.
    let disk = fs::read(out.join("disk-drive-scsi0.raw")).unwrap();
    assert_eq!(disk.len(), 512);
    assert_eq!(disk[0], 0xAB);
    assert!(disk[1..].iter().all(|&b| b == 0));
    // With -r into a larger target (write zeros): one byte written, no more.
    let target = tmp.path().join("t");
    fs::write(&target, vec![0xFFu8; 4096]).unwrap();
    let map = format!("1:drive-scsi0={}\n", target.display());
    let o = extract_mapped(tmp.path(), &map, &file, "o2");
    assert_eq!(clean(&o, "extract -r"), 0);
    let t = fs::read(&target).unwrap();
    assert_eq!(t.len(), 4096);
    assert_eq!(t[0], 0xAB);
    assert!(t[1..].iter().all(|&b| b == 0xFF));
}

#[test]
fn size_beyond_off_t_is_refused_with_device_size_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    for size in [u64::MAX, u64::MAX - 511, 1 << 63] {
        let file = tmp.path().join(format!("{size}.vma"));
        fs::write(&file, archive("drive-scsi0", size)).unwrap();
        for salvage in [false, true] {
            let out = tmp.path().join(format!("o-{size}-{salvage}"));
            let mut argv = vec![os("extract")];
            if salvage {
                argv.push(os("--salvage"));
            }
            argv.extend([file.as_os_str(), out.as_os_str()]);
            let o = vma(&argv, None);
            assert_eq!(clean(&o, "extract"), 133);
            assert_eq!(
                text(&o.stderr),
                format!(
                    "vma: can't restore device drive-scsi0: declared size {size} bytes exceeds the largest possible file size (9223372036854775807 bytes)\n"
                ),
                "salvage={salvage}"
            );
            // Refused before anything was made.
            assert!(!out.exists());
        }
        // A vmstate stream of that size is refused the same way.
        let file = tmp.path().join(format!("{size}-vmstate.vma"));
        fs::write(&file, archive("vmstate", size)).unwrap();
        let out = tmp.path().join(format!("v-{size}"));
        let o = vma(&[os("extract"), file.as_os_str(), out.as_os_str()], None);
        assert_eq!(clean(&o, "extract vmstate"), 133);
        assert!(!out.exists());
        assert!(
            text(&o.stderr).contains(&format!(
                "can't restore device vmstate: declared size {size} bytes exceeds"
            )),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn disk_larger_than_the_file_system_allows_names_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 1u64 << 48; // 256 TiB: more than ext4 (16 TiB), less than tmpfs allows
    let file = tmp.path().join("big.vma");
    fs::write(&file, archive("drive-scsi0", size)).unwrap();
    let out = tmp.path().join("o");
    let o = vma(&[os("extract"), file.as_os_str(), out.as_os_str()], None);
    assert_eq!(clean(&o, "extract"), 133);
    let err = text(&o.stderr);
    if fs_takes(tmp.path(), size) {
        // The file system takes it: the archive's 2^32 - 1 missing clusters fail the restore.
        assert!(err.contains("missing"), "{err}");
    } else {
        let want = format!(
            "vma: can't make {} {size} bytes long for device drive-scsi0 (declared size {size} bytes): the file system's largest file size is ",
            out.join("tmp-disk-drive-scsi0.raw").display()
        );
        assert!(err.starts_with(&want), "{err}");
        // The limit found by probing is a length the file system does take.
        let limit: u64 = err[want.len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(limit > 0 && limit < size, "{err}");
        assert!(fs_takes(tmp.path(), limit), "{err}");
        assert!(!fs_takes(tmp.path(), limit + 1), "{err}");
    }
}

#[test]
fn restore_map_target_smaller_than_a_huge_device_is_refused() {
    // `-r` checks size <= target <= size + 4 MiB (the sum saturates at 2^64-1).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.vma");
    fs::write(&file, archive("drive-scsi0", u64::MAX)).unwrap();
    let target = tmp.path().join("target.raw");
    fs::write(&target, vec![0u8; 65536]).unwrap();
    let map = format!("0:drive-scsi0={}\ndone\n", target.display());
    let o = extract_mapped(tmp.path(), &map, &file, "o");
    assert_eq!(clean(&o, "extract -r"), 133);
    assert!(
        text(&o.stderr).contains("is too small (65536 < 18446744073709551615 bytes)"),
        "{}",
        text(&o.stderr)
    );
}

/// `vma mount --allow-incomplete` of an archive (written into `dir`) whose
/// disk `drive-scsi0` declares `size` bytes, on a fresh mountpoint.
fn mount_declaring(dir: &Path, size: u64) -> (vma_tests::MountDir, Output) {
    let a = dir.join(format!("size-{size}.vma"));
    fs::write(&a, archive("drive-scsi0", size)).unwrap();
    let mnt = vma_tests::MountDir::new();
    let o = vma(
        &[
            OsStr::new("mount"),
            OsStr::new("--allow-incomplete"),
            a.as_os_str(),
            mnt.path().as_os_str(),
        ],
        None,
    );
    (mnt, o)
}

/// `vma mount` of the extreme sizes: a device no file can be (over 2^63 - 1
/// bytes, what the kernel's signed file size holds) is refused before
/// mounting, naming the device, its size and the limit (it used to mount and
/// fail every lookup of the disk with EIO); 2^48 mounts with
/// `--allow-incomplete`, the disk shows its declared size and reads its one
/// stored byte and zeros past it. Runs as root (FUSE).
#[test]
fn mount_serves_or_refuses_extreme_sizes_cleanly() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    for size in [u64::MAX - 511, u64::MAX] {
        let (mnt, o) = mount_declaring(dir.path(), size);
        assert_eq!(clean(&o, "mount"), 133, "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains(&format!(
                "device drive-scsi0 declared size {size} bytes exceeds the largest possible file size (9223372036854775807 bytes)"
            )),
            "{err}"
        );
        assert!(!vma_tests::is_mounted(mnt.path()));
    }
    let (mnt, o) = mount_declaring(dir.path(), 1 << 48);
    assert_eq!(clean(&o, "mount"), 0, "{}", text(&o.stderr));
    let disk = fs::File::open(mnt.path().join("drive-scsi0.raw")).unwrap();
    assert_eq!(disk.metadata().unwrap().len(), 1 << 48);
    let mut b = [1u8; 4096];
    disk.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b[0], 0xAB);
    assert!(b[1..].iter().all(|&x| x == 0));
    disk.read_exact_at(&mut b, (1 << 48) - 4096).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    drop(disk);
    let o = vma(&[OsStr::new("umount"), mnt.path().as_os_str()], None);
    assert_eq!(clean(&o, "umount"), 0, "{}", text(&o.stderr));
}
