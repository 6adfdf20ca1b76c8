//! With `--json` (list, verify, index), stdout carries exactly one JSON
//! document whatever fails and however early: `"ok": false`, `"error"`, and
//! `"offset"` when the error has one; and `"ok": true` on success.

#[path = "robust_common.rs"]
mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::Value;
use vma_tests::{vector, TestRng};

/// Runs `vma <cmd> --json <file>` and parses its stdout as one document
/// (`from_slice` rejects anything after it). Returns it and the exit status.
fn json(cmd: &str, file: &Path) -> (Value, Option<i32>, String) {
    let o = run(vma().arg(cmd).arg("--json").arg(file));
    let err = text(&o.stderr);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd} --json {}: stdout is not one JSON document ({e}): {:?}; stderr {err}",
            file.display(),
            text(&o.stdout)
        )
    });
    assert!(!err.contains("panicked"), "{err}");
    (v, o.status.code(), err)
}

fn failed(v: &Value, code: Option<i32>, err: &str) -> String {
    assert_eq!(code, Some(133), "{v} {err}");
    assert_eq!(v["ok"], false, "{v}");
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {v}"));
    assert!(!e.is_empty());
    // The same error on stderr, in the usual form.
    assert!(err.starts_with("vma: "), "{err}");
    e.to_string()
}

const COMMANDS: [&str; 3] = ["list", "verify", "index"];

#[test]
fn garbage_gives_ok_false_with_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("random.bin");
    let mut b = vec![0u8; 100_000];
    TestRng::new(17).fill(&mut b);
    fs::write(&f, &b).unwrap();
    for cmd in COMMANDS {
        let (v, code, err) = json(cmd, &f);
        let e = failed(&v, code, &err);
        assert!(e.contains("wrong magic number"), "{cmd}: {e}");
        assert_eq!(v["offset"], 0, "{cmd}: {v}");
    }
}

#[test]
fn missing_file_gives_ok_false_without_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("nonexistent.vma");
    for cmd in COMMANDS {
        let (v, code, err) = json(cmd, &f);
        let e = failed(&v, code, &err);
        assert!(e.contains("No such file or directory"), "{cmd}: {e}");
        assert!(v.get("offset").is_none(), "{cmd}: {v}");
    }
}

#[test]
fn truncated_archive() {
    let a = fs::read(vector("ref-two-disks.vma")).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // Cut inside the header: every command fails.
    let f = tmp.path().join("header-cut.vma");
    fs::write(&f, &a[..1000]).unwrap();
    for cmd in COMMANDS {
        let (v, code, err) = json(cmd, &f);
        failed(&v, code, &err);
    }

    // Cut inside an extent: the header is fine (list, index succeed with
    // "ok": true), verify names the extent's offset.
    let first_extent = {
        let r = vma_format::StreamReader::new(&a[..]).unwrap();
        r.offset()
    };
    let f = tmp.path().join("mid.vma");
    fs::write(&f, &a[..first_extent as usize + 20000]).unwrap();
    for cmd in ["list", "index"] {
        let (v, code, err) = json(cmd, &f);
        assert_eq!(code, Some(0), "{cmd}: {err}");
        assert_eq!(v["ok"], true, "{cmd}: {v}");
    }
    let (v, code, err) = json("verify", &f);
    let e = failed(&v, code, &err);
    assert!(e.contains("short vma extent"), "{e}");
    assert_eq!(v["offset"], first_extent, "{v}");
    // Verify's document still has the header fields.
    assert_eq!(v["disks"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn success_says_ok_true() {
    let f = vector("ref-one-disk.vma");
    for cmd in COMMANDS {
        let (v, code, err) = json(cmd, &f);
        assert_eq!(code, Some(0), "{cmd}: {err}");
        assert_eq!(v["ok"], true, "{cmd}: {v}");
        assert_eq!(v["error"], Value::Null, "{cmd}: {v}");
    }
}
