//! SIGINT and SIGTERM are handled the same way by every command, promptly,
//! even while it is blocked reading a pipe or a FIFO that never delivers
//! more bytes: exit status 130, exactly one `vma: interrupted` line, the one
//! JSON document with `--json`, and no incomplete restore left behind.

#[path = "robust_common.rs"]
mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vma_tests::{kill, mkfifo, stderr_text, wait_timeout};

/// What a signalled process left: exit status, stderr, stdout, and how long
/// it took to exit after the signal.
struct Ended {
    code: Option<i32>,
    err: String,
    out: String,
    took: Duration,
}

/// Sends `sig` to `child` and collects how it ended. `keep` (the write end
/// of its input) stays open until after the exit: no EOF ever arrives.
fn signal(mut child: Child, sig: libc::c_int, keep: impl Sized) -> Ended {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command ended before the signal"
    );
    let t = Instant::now();
    kill(&child, sig);
    let st = wait_timeout(&mut child, "the signalled command");
    let took = t.elapsed();
    drop(keep);
    let err = stderr_text(&mut child);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    Ended {
        code: st.code(),
        err,
        out,
        took,
    }
}

/// The common rules: 130, one line, prompt.
fn check(e: &Ended, what: &str) {
    assert_eq!(e.code, Some(130), "{what}: {}", e.err);
    assert_eq!(
        e.err.lines().filter(|l| *l == "vma: interrupted").count(),
        1,
        "{what}: {}",
        e.err
    );
    assert!(!e.err.contains("panicked"), "{what}: {}", e.err);
    assert!(
        e.took < Duration::from_secs(2),
        "{what}: took {:?} to exit",
        e.took
    );
}

fn archive() -> Archive {
    make_archive(&[("drive-scsi0", 8 << 20), ("drive-scsi1", 2 << 20)])
}

/// Extract from a pipe, blocked after writing part of the disks: the
/// incomplete restore is removed and the user told so.
fn extract_blocked_mid_restore(sig: libc::c_int) {
    let a = archive();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (child, stdin, _lines) = stalled_extract(&a.bytes[..a.extents[2].offset as usize], &out);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        names(&out).iter().any(|n| n.starts_with("tmp-disk-")),
        "{:?}",
        names(&out)
    );
    let e = signal(child, sig, stdin);
    check(&e, "extract");
    assert!(!out.exists(), "left {:?}: {}", names(&out), e.err);
    assert!(
        e.err.contains(&format!(
            "removed the incomplete restore in {}",
            out.display()
        )),
        "{}",
        e.err
    );
    // Salvage does not help against an interrupt.
    assert!(!e.err.contains("--salvage"), "{}", e.err);
}

#[test]
fn extract_from_a_stalled_pipe_sigint() {
    extract_blocked_mid_restore(libc::SIGINT);
}

#[test]
fn extract_from_a_stalled_pipe_sigterm() {
    extract_blocked_mid_restore(libc::SIGTERM);
}

/// Blocked in the very first read (the header never completes).
#[test]
fn extract_and_verify_blocked_reading_the_header() {
    let a = archive();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let (child, stdin) = spawn_fed(
            &["extract".as_ref(), "-".as_ref(), out.as_os_str()],
            &a.bytes[..100],
        );
        std::thread::sleep(Duration::from_millis(300));
        let e = signal(child, sig, stdin);
        check(&e, "extract");
        assert!(!out.exists());

        let (child, stdin) = spawn_fed(&["verify".as_ref(), "-".as_ref()], &a.bytes[..100]);
        std::thread::sleep(Duration::from_millis(300));
        check(&signal(child, sig, stdin), "verify");

        let (child, stdin) = spawn_fed(&["list".as_ref(), "-".as_ref()], &a.bytes[..100]);
        std::thread::sleep(Duration::from_millis(300));
        check(&signal(child, sig, stdin), "list");
    }
}

/// `verify` and `extract` reading a FIFO (a path, not stdin) whose writer
/// stops after a few extents.
#[test]
fn verify_and_extract_from_a_stalled_fifo() {
    let a = archive();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        for json in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let fifo = tmp.path().join("fifo");
            mkfifo(&fifo);
            let mut cmd = vma();
            cmd.arg("verify");
            if json {
                cmd.arg("--json");
            }
            let child = cmd
                .arg(&fifo)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            w.write_all(&a.bytes[..a.extents[2].offset as usize])
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let e = signal(child, sig, w);
            check(&e, "verify");
            if json {
                let v: serde_json::Value = serde_json::from_str(&e.out)
                    .unwrap_or_else(|x| panic!("{x}: stdout {:?}", e.out));
                assert_eq!(v["ok"], false, "{v}");
                assert_eq!(v["error"], "interrupted", "{v}");
            } else {
                assert_eq!(e.out, "");
            }
        }

        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        mkfifo(&fifo);
        let out = tmp.path().join("out");
        let mut child = vma()
            .arg("extract")
            .arg(&fifo)
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(&a.bytes[..a.extents[2].offset as usize])
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(lines.next().unwrap().unwrap().starts_with("DEVINFO "));
        std::thread::sleep(Duration::from_millis(300));
        let e = signal(child, sig, w);
        check(&e, "extract");
        assert!(!out.exists(), "left {:?}", names(&out));
    }
}

/// With `--salvage`, an interrupted extract keeps what it wrote and lists it.
#[test]
fn interrupted_salvage_keeps_and_lists() {
    let a = archive();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (mut child, stdin) = spawn_fed(
        &[
            "extract".as_ref(),
            "--salvage".as_ref(),
            "-".as_ref(),
            out.as_os_str(),
        ],
        &a.bytes[..a.extents[2].offset as usize],
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        assert!(lines.next().unwrap().unwrap().starts_with("DEVINFO "));
    }
    std::thread::sleep(Duration::from_millis(300));
    let e = signal(child, libc::SIGINT, stdin);
    check(&e, "extract --salvage");
    let left = names(&out);
    assert_eq!(
        left,
        [
            "qemu-server.conf",
            "tmp-disk-drive-scsi0.raw",
            "tmp-disk-drive-scsi1.raw"
        ],
        "{}",
        e.err
    );
    assert!(
        e.err.contains(&format!(
            "kept the incomplete restore in {}: qemu-server.conf, tmp-disk-drive-scsi0.raw, tmp-disk-drive-scsi1.raw",
            out.display()
        )),
        "{}",
        e.err
    );
    // What was read before the signal is there.
    let got = fs::read(out.join("tmp-disk-drive-scsi0.raw")).unwrap();
    assert_eq!(&got[..CLUSTER], &a.disks[0].data[..CLUSTER]);
}

/// `create` blocked writing to a FIFO nobody reads: the same status and
/// line as every other command.
#[test]
fn create_blocked_on_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.raw");
    let mut data = vec![0u8; 4 << 20];
    vma_tests::TestRng::new(11).fill(&mut data);
    fs::write(&img, &data).unwrap();
    let fifo = tmp.path().join("out.fifo");
    mkfifo(&fifo);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let child = vma()
            .arg("create")
            .arg(&fifo)
            .arg("-d")
            .arg(format!("format=raw:drive-scsi0={}", img.display()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A reader that never reads: create fills the pipe and blocks.
        let r = fs::File::open(&fifo).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        check(&signal(child, sig, r), "create");
    }
    assert_eq!(names(tmp.path()), ["disk.raw", "out.fifo"]);
}

/// A one-frame `.vma.zst` (as plain `zstd` and vzdump write it) of a 2 GiB
/// stream: its first open decodes all of it into a cache file, which takes
/// seconds. Compressible clusters, so the archive itself is small; made
/// once for the tests of this file.
fn one_frame_zst() -> std::path::PathBuf {
    static MADE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = fs::File::create(dir.path().join("big.vma.zst")).unwrap();
        let z = zstd::stream::Encoder::new(file, 1).unwrap();
        let mut b = vma_format::WriterBuilder::new();
        let size = 2u64 << 30;
        let dev = b.add_device("drive-scsi0", size).unwrap();
        let w = b.build(std::io::BufWriter::new(z)).unwrap();
        let mut data = vec![0u8; 65536];
        for c in 0..(size / 65536) as u32 {
            let s = format!("cluster {c} of a big disk; ");
            for (i, x) in data.iter_mut().enumerate() {
                *x = s.as_bytes()[i % s.len()];
            }
            w.write_cluster(dev, c, &data).unwrap();
        }
        let (out, _) = w.finish().unwrap();
        out.into_inner().ok().unwrap().finish().unwrap();
        dir
    })
    .path()
    .join("big.vma.zst")
}

/// Starts `vma ARGS` (an index build of [`one_frame_zst`] with `--cache-dir
/// CACHE`), waits until the cache pass is under way (its temporary cache
/// file in CACHE has data), sends `sig`, and checks the common rules and
/// that CACHE is left empty: no sidecar, no cache file, no temporary file.
fn interrupt_index_build(
    args: &[&OsStr],
    cache: &std::path::Path,
    sig: libc::c_int,
    what: &str,
) -> Ended {
    let child = vma()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let building = || {
        fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".tmp") && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
            })
    };
    while !building() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: the cache pass did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = signal(child, sig, ());
    check(&e, what);
    let left: Vec<_> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{what}: left in the cache dir: {left:?}; {}",
        e.err
    );
    e
}

#[test]
fn mount_interrupted_while_it_builds_the_index() {
    let archive = one_frame_zst();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mnt = vma_tests::MountDir::new();
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let args: [&OsStr; 5] = [
            "mount".as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            archive.as_os_str(),
            mnt.path().as_os_str(),
        ];
        let _ = interrupt_index_build(&args, &cache, sig, &format!("mount, {name}"));
        assert!(!vma_tests::is_mounted(mnt.path()), "mounted after {name}");
        assert_eq!(fs::read_dir(mnt.path()).unwrap().count(), 0);
    }
    // Nothing beside the archive either.
    let beside: Vec<_> = fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["big.vma.zst"]);
}

#[test]
fn index_interrupted_while_it_builds() {
    let archive = one_frame_zst();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    for (json, sig) in [(false, libc::SIGINT), (true, libc::SIGTERM)] {
        let mut args: Vec<&OsStr> = vec![
            "index".as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            archive.as_os_str(),
        ];
        if json {
            args.push("--json".as_ref());
        }
        let e = interrupt_index_build(&args, &cache, sig, &format!("index, json {json}"));
        if json {
            let v: serde_json::Value = serde_json::from_str(&e.out).unwrap();
            assert_eq!(v["ok"], false, "{}", e.out);
            assert_eq!(v["error"], "interrupted", "{}", e.out);
        } else {
            assert_eq!(e.out, "");
        }
    }
}
