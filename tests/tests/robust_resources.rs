//! Bounded resources on hostile declared sizes: an archive whose header
//! declares 254 disks of 256 TiB each (the format's maxima) but holds one
//! cluster per disk goes through `vma list`, `verify`, `extract`,
//! `extract --salvage` and `mount` each under 100 MiB peak RSS (the child's
//! `ru_maxrss` from wait4), and each either works on what is present or fails
//! with a clear message — never a panic, never a `disk-*` file.
//!
//! The mount part needs root, /dev/fuse and fusermount3 (as mount_cli.rs).

#[path = "robust_common.rs"]
mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use vma_format::raw::{hdr, header_md5};
use vma_format::{StreamReader, Uuid, WriterBuilder};

const TIB: u64 = 1 << 40;
const DISKS: usize = 254;
const LIMIT_KIB: i64 = 100 * 1024;

/// The hostile archive: 254 disks declared 256 TiB, cluster 0 of each stored
/// (its first byte is the dev_id), everything else missing.
fn huge_archive(dir: &Path) -> PathBuf {
    let mut b = WriterBuilder::new();
    b.uuid(Uuid::from_u128(0xfeed));
    b.ctime(1_700_000_000);
    for i in 0..DISKS {
        b.add_device(format!("drive-{i}"), CLUSTER as u64).unwrap();
    }
    let w = b.build(Vec::new()).unwrap();
    for id in 1..=DISKS as u8 {
        let mut c = vec![0u8; CLUSTER];
        c[0] = id;
        w.write_cluster(id, 0, &c).unwrap();
    }
    let (mut bytes, _) = w.finish().unwrap();
    // Declare every device 256 TiB (spec §4: the largest accepted size).
    let header_size = u32::from_be_bytes(
        bytes[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    for id in 1..=DISKS {
        let at = hdr::DEV_INFO + hdr::DEV_INFO_SIZE * id + hdr::DEV_SIZE;
        bytes[at..at + 8].copy_from_slice(&(256 * TIB).to_be_bytes());
    }
    let md5 = header_md5(&bytes[..header_size]);
    bytes[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    let h = StreamReader::new(&bytes[..]).unwrap().header().clone();
    assert_eq!(h.devices.len(), DISKS);
    assert!(h.devices.iter().all(|d| d.size == 256 * TIB));
    let path = dir.join("huge.vma");
    fs::write(&path, &bytes).unwrap();
    path
}

fn check_rss(what: &str, kib: i64, err: &str) {
    assert!(kib > 0, "{what}: no rusage");
    eprintln!("{what}: peak RSS {kib} KiB");
    assert!(
        kib < LIMIT_KIB,
        "{what}: peak RSS {kib} KiB >= {LIMIT_KIB} KiB\n{err}"
    );
}

#[test]
fn list_and_verify_stay_small_and_report_missing_clusters() {
    let tmp = tempfile::tempdir().unwrap();
    let file = huge_archive(tmp.path());
    let (o, kib) = run_measured(vma().arg("list").arg(&file));
    check_rss("list", kib, &text(&o.stderr));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).matches("DEV: ").count(), DISKS);

    let (o, kib) = run_measured(vma().arg("verify").arg(&file));
    let err = text(&o.stderr);
    check_rss("verify", kib, &err);
    assert_eq!(o.status.code(), Some(133), "{err}");
    // 2^32 clusters per disk, cluster 0 present.
    assert!(
        err.contains("4294967295 of 4294967296 clusters missing"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (o, kib) = run_measured(vma().args(["verify", "--json"]).arg(&file));
    check_rss("verify --json", kib, &text(&o.stderr));
    assert_eq!(o.status.code(), Some(133));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["disks"].as_array().unwrap().len(), DISKS);
    assert_eq!(v["disks"][0]["missing_clusters"], 4294967295u64);
}

/// extract: either the file system refuses a 256 TiB sparse file (ext4's
/// limit is 16 TiB) and the error names it, or every disk is created sparse
/// and the restore fails on the missing clusters (salvage: writes what is
/// there). No `disk-*` either way. Needs root (tmpfs).
#[test]
fn extract_stays_small_and_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = huge_archive(tmp.path());
    // The temp dir's file system (ext4: 16 TiB limit) and a tmpfs, which
    // takes 256 TiB sparse files: both branches below are exercised.
    let tmpfs = Tmpfs::new("16m");
    for (where_, salvage) in [
        (tmp.path(), false),
        (tmp.path(), true),
        (tmpfs.path(), false),
        (tmpfs.path(), true),
    ] {
        let out = where_.join(format!("out-{salvage}"));
        let mut cmd = vma();
        cmd.arg("extract");
        if salvage {
            cmd.arg("--salvage");
        }
        let (o, kib) = run_measured(cmd.arg(&file).arg(&out));
        let err = text(&o.stderr);
        check_rss("extract", kib, &err);
        assert!(!o.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        eprintln!(
            "extract (salvage: {salvage}): {}",
            err.lines().last().unwrap_or("")
        );
        let too_large = err.contains("can't make") && err.contains("tmp-disk-drive-0.raw");
        if salvage && !too_large {
            assert_eq!(o.status.code(), Some(3), "{err}");
            assert!(
                err.contains("4294967295 of 4294967296 clusters missing"),
                "{err}"
            );
            // The present cluster was written into the partial file.
            let mut f = fs::File::open(out.join("incomplete-disk-drive-7.raw")).unwrap();
            let mut b = [0u8; 2];
            f.read_exact(&mut b).unwrap();
            assert_eq!(b, [8, 0]);
        } else {
            assert_eq!(o.status.code(), Some(133), "{err}");
            assert!(too_large || err.contains("missing cluster"), "{err}");
        }
        // A failed restore is removed, unless --salvage keeps it.
        assert_eq!(out.exists(), salvage, "{err}");
        if salvage {
            let n = names(&out);
            assert!(!n.iter().any(|n| n.starts_with("disk-")), "{n:?}");
            fs::remove_dir_all(&out).unwrap();
        }
    }
}

#[test]
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn mount_refuses_or_serves_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let file = huge_archive(tmp.path());
    // Unmounted on drop, so a failing test leaves nothing mounted.
    let mnt_dir = vma_tests::MountDir::new();
    let mnt = mnt_dir.path().to_path_buf();

    // Without --allow-incomplete: refused, before mounting.
    let (o, kib) = run_measured(vma().arg("mount").arg(&file).arg(&mnt));
    let err = text(&o.stderr);
    check_rss("mount", kib, &err);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(!vma_tests::is_mounted(&mnt));

    // With it: served in the foreground; read what is there and far beyond.
    let mut child = vma()
        .args(["mount", "-f", "--allow-incomplete"])
        .arg(&file)
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !vma_tests::is_mounted(&mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "mount exited ({st}): {}",
                vma_tests::stderr_text(&mut child)
            );
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let disks: Vec<_> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("drive-"))
        .collect();
    assert_eq!(disks.len(), DISKS, "{disks:?}");
    let disk = mnt.join("drive-7.raw");
    assert_eq!(fs::metadata(&disk).unwrap().len(), 256 * TIB);
    let mut f = fs::File::open(&disk).unwrap();
    let mut b = vec![0u8; 1 << 20];
    f.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 8);
    assert!(b[1..].iter().all(|&x| x == 0));
    f.seek(SeekFrom::Start(200 * TIB)).unwrap();
    f.read_exact(&mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    drop(f);
    let st = run(vma().arg("umount").arg(&mnt));
    assert!(st.status.success(), "{}", text(&st.stderr));
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own unreaped child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as libc::pid_t);
    let e = vma_tests::stderr_text(&mut child);
    check_rss("mount -f --allow-incomplete", ru.ru_maxrss, &e);
    assert!(!e.contains("panicked"), "{e}");
}
