//! Failures around the archive rather than in it: a full output file system
//! (extract and create on a 1 MiB tmpfs), signals during extract and create,
//! corrupt compressed input, and the error chain printing each cause once.
//! The tmpfs tests need root.

#[path = "robust_common.rs"]
mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;
use vma_tests::{kill, stderr_text, wait_timeout, TestRng};

fn no_final_disks(dir: &Path) {
    if dir.exists() {
        let n = names(dir);
        assert!(!n.iter().any(|n| n.starts_with("disk-")), "{n:?}");
    }
}

#[test]
fn extract_onto_a_full_file_system_names_the_file() {
    let a = make_archive(&[("drive-scsi0", 4 << 20), ("drive-scsi1", 1 << 20)]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.vma");
    fs::write(&file, &a.bytes).unwrap();
    let fs_ = Tmpfs::new("1m");
    let out = fs_.path().join("out");
    let o = run(vma().arg("extract").arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("tmp-disk-drive-scsi"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    no_final_disks(&out);
    // --salvage cannot make a full disk succeed either.
    let out = fs_.path().join("out2");
    let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    no_final_disks(&out);
}

#[test]
fn create_onto_a_full_file_system_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    let img = src.path().join("disk.raw");
    let mut data = vec![0u8; 4 << 20];
    TestRng::new(3).fill(&mut data);
    fs::write(&img, &data).unwrap();
    let fs_ = Tmpfs::new("1m");
    let out = fs_.path().join("x.vma");
    let o = run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", img.display())));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!("can't write {}", out.display())),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(names(fs_.path()), Vec::<String>::new(), "{err}");
}

/// `vma extract - OUT` fed the first extents through a pipe that stays open,
/// then `sig`: it dies or fails, and no disk has its final name.
fn extract_interrupted(sig: libc::c_int) {
    let a = make_archive(&[("drive-scsi0", 8 << 20), ("drive-scsi1", 2 << 20)]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (mut child, stdin, _lines) =
        stalled_extract(&a.bytes[..a.extents[2].offset as usize], &out);
    // Mid-way: the first extents are being written, the rest never comes.
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "extract ended early");
    kill(&child, sig);
    let st = wait_timeout(&mut child, "extract");
    drop(stdin);
    let err = stderr_text(&mut child);
    assert!(!st.success(), "{err}");
    no_final_disks(&out);
    // The incomplete restore is removed (vma extract --help).
    assert!(!out.exists(), "{err}");
}

#[test]
fn extract_interrupted_by_sigint_leaves_no_final_disk() {
    extract_interrupted(libc::SIGINT);
}

#[test]
fn extract_interrupted_by_sigterm_leaves_no_final_disk() {
    extract_interrupted(libc::SIGTERM);
}

#[test]
fn create_interrupted_by_sigint_leaves_no_files() {
    vma_tests::create_interrupted_leaves_no_files(&vma_bin!(), libc::SIGINT, 96, 9);
}

/// A zstd archive cut or damaged mid-stream: verify and extract name the
/// failure once (no doubled cause); salvage keeps what came before.
#[test]
fn corrupt_compressed_stream_fails_cleanly_and_salvages_the_prefix() {
    let a = make_archive(&[("drive-scsi0", 6 << 20), ("drive-scsi1", 3 << 20)]);
    // With content checksums, as the zstd tool (vzdump's compressor) writes:
    // VMA itself has no checksum over cluster data.
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(&a.bytes).unwrap();
    let z = enc.finish().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut damaged = z.clone();
    let mid = z.len() / 2;
    damaged[mid..mid + 64].fill(0xff);
    for (name, bytes) in [("cut", &z[..mid]), ("damaged", &damaged[..])] {
        let file = tmp.path().join(format!("{name}.vma.zst"));
        fs::write(&file, bytes).unwrap();
        let o = run(vma().arg("verify").arg(&file));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(err.contains("byte offset"), "{name}: {err}");

        let out = tmp.path().join(format!("out-{name}"));
        let o = run(vma().arg("extract").arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(err.contains("byte offset"), "{name}: {err}");
        // Each cause printed once: no ": X: X" repetition.
        let parts: Vec<&str> = err.trim().split(": ").collect();
        for w in parts.windows(2) {
            assert_ne!(w[0], w[1], "{name}: doubled cause: {err}");
        }
        no_final_disks(&out);

        let out = tmp.path().join(format!("salvage-{name}"));
        let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains("byte offset"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        // The stream failed, so no disk has its final name: missing
        // clusters make it incomplete-*, a failure after the last cluster
        // (the frame checksum) unverified-*.
        let n = names(&out);
        no_final_disks(&out);
        assert_eq!(
            n.iter()
                .filter(|n| n.starts_with("incomplete-disk-") || n.starts_with("unverified-disk-"))
                .count(),
            2,
            "{n:?}"
        );
        // The first extent's clusters were recovered exactly.
        let (dev, c) = a.extents[0].clusters[0];
        let d = &a.disks[dev as usize - 1];
        let path = [
            out.join(format!("unverified-disk-{}.raw", d.name)),
            out.join(format!("incomplete-disk-{}.raw", d.name)),
        ]
        .into_iter()
        .find(|p| p.exists())
        .unwrap();
        let got = fs::read(path).unwrap();
        let at = c as usize * CLUSTER;
        assert_eq!(&got[at..at + CLUSTER], &d.data[at..at + CLUSTER]);
    }
}

/// An I/O error inside the reader (EISDIR: a directory given as the
/// archive) is reported once, not once per error that wraps it.
#[test]
fn error_chain_prints_an_io_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in ["verify", "list"] {
        let o = run(vma().arg(cmd).arg(tmp.path()));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{err}");
        assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
    }
}
