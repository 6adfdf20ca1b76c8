//! `vma mount` / `vma umount` through the CLI binary: the mount is live when
//! `vma mount` returns, the detached daemon serves it, `vma umount` ends the
//! daemon, errors come before detaching, `-f` stays attached and unmounts on
//! SIGTERM. Needs root, /dev/fuse and fusermount3.
//!
//! Every mountpoint is owned by a `MountDir` that unmounts in Drop, so a
//! failing test leaves nothing mounted.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vma_tests::{parse_sha256_file, sha256_hex, vector, wait_until};

use vma_tests::vma_bin;

fn vma(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(vma_bin!())
        .args(args)
        .output()
        .expect("run vma")
}

use vma_tests::{is_mounted, processes_mentioning, MountDir};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_mount_detaches_serves_and_umount_ends_the_daemon() {
    let mp = MountDir::new();
    let archive = vector("ref-two-disks.vma");
    let start = Instant::now();
    let out = vma(&["mount".as_ref(), archive.as_os_str(), mp.path().as_os_str()]);
    let took = start.elapsed();
    assert!(out.status.success(), "vma mount: {}", stderr(&out));
    eprintln!("vma mount returned after {took:?}");
    // Live as soon as `vma mount` returns: no waiting.
    assert!(is_mounted(mp.path()));
    let daemons = processes_mentioning(mp.path());
    assert_eq!(daemons.len(), 1, "one daemon serves the mount: {daemons:?}");

    let list = parse_sha256_file(&fs::read_to_string(vector("ref-two-disks.sha256")).unwrap());
    for (hash, name) in list {
        let name = name.strip_prefix("disk-").unwrap_or(&name);
        assert_eq!(
            sha256_hex(&fs::read(mp.path().join(name)).unwrap()),
            hash,
            "{name}"
        );
    }

    let out = vma(&["umount".as_ref(), mp.path().as_os_str()]);
    assert!(out.status.success(), "vma umount: {}", stderr(&out));
    assert!(!is_mounted(mp.path()));
    wait_until("the daemon to exit", || {
        processes_mentioning(mp.path()).is_empty()
    });

    // Unmounting again is an error that says why.
    let out = vma(&["umount".as_ref(), mp.path().as_os_str()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&*mp.path().to_string_lossy()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cli_mount_errors_come_before_detaching() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.vma");
    let mut bytes = fs::read(vector("ref-two-disks.vma")).unwrap();
    bytes[12800 + 100] ^= 0x40; // first extent's blockinfo: MD5 mismatch
    fs::write(&broken, &bytes).unwrap();
    let incomplete = dir.path().join("incomplete.vma");
    fs::write(
        &incomplete,
        &fs::read(vector("ref-two-disks.vma")).unwrap()[..12800 + 512 + 67 * 4096],
    )
    .unwrap();

    let mp = MountDir::new();
    let missing = dir.path().join("no-such-dir");
    let cases: [(&Path, &Path, &[&str]); 4] = [
        (&broken, mp.path(), &["12800", "broken.vma"]),
        (
            &incomplete,
            mp.path(),
            &["drive-scsi1", "41-63", "--allow-incomplete"],
        ),
        (&vector("ref-one-disk.vma"), &missing, &["no-such-dir"]),
        (&dir.path().join("absent.vma"), mp.path(), &["absent.vma"]),
    ];
    for (archive, target, needles) in cases {
        let out = vma(&["mount".as_ref(), archive.as_os_str(), target.as_os_str()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{}: mounted", archive.display());
        for n in needles {
            assert!(
                err.contains(n),
                "{}: {n:?} missing from: {err}",
                archive.display()
            );
        }
        assert!(!is_mounted(mp.path()));
        assert!(
            processes_mentioning(archive).is_empty(),
            "no daemon left for {}",
            archive.display()
        );
    }

    // With --allow-incomplete the truncated archive mounts; missing clusters read as zeros.
    let out = vma(&[
        "mount".as_ref(),
        "--allow-incomplete".as_ref(),
        incomplete.as_os_str(),
        mp.path().as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = fs::read(mp.path().join("drive-scsi1.raw")).unwrap();
    assert_eq!(b.len(), 4 << 20);
    assert!(b[(4 << 20) - 4096..].iter().all(|&x| x == 0));
    let out = vma(&["umount".as_ref(), mp.path().as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cli_mount_foreground_unmounts_on_sigterm() {
    let mp = MountDir::new();
    let mut child = Command::new(vma_bin!())
        .args([
            "mount".as_ref(),
            "-f".as_ref(),
            vector("ref-one-disk.vma").as_os_str(),
            mp.path().as_os_str(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the foreground mount", || is_mounted(mp.path()));
    let conf = fs::read(mp.path().join("qemu-server.conf")).unwrap();
    assert!(conf == fs::read(vector("inputs/qemu-server.conf")).unwrap());
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vma mount -f did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(!is_mounted(mp.path()));
    // The index build time is reported in the foreground.
    assert!(err.contains("indexed") && err.contains("ms"), "{err}");
}
