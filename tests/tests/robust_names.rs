//! Hostile config and device names (spec §13): `vma extract` refuses each
//! class before creating anything (not even the target directory) and names
//! the problem; `vma mount` refuses them too, before mounting. The archives
//! are built with `vma_format::build_header`, which does not validate names.

#[path = "robust_common.rs"]
mod common;

use std::fs;

use common::*;
use vma_format::{build_header, Uuid};

/// (class, name, words the refusal must contain)
fn hostile() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("slash", b"../escaped".to_vec(), "'/'"),
        ("deep slash", b"a/b".to_vec(), "'/'"),
        ("dot-dot", b"..".to_vec(), "'..'"),
        ("dot", b".".to_vec(), "'.'"),
        ("newline", b"a\nb".to_vec(), "control character"),
        ("escape", b"\x1b[31mred".to_vec(), "control character"),
        ("delete", b"a\x7f".to_vec(), "control character"),
        ("leading dash", b"-rf".to_vec(), "starts with '-'"),
        ("empty", Vec::new(), "empty"),
        ("over-long", vec![b'a'; 201], "longer than 200"),
        ("non-UTF-8", b"disk\xff\xfe".to_vec(), "UTF-8"),
    ]
}

fn header_only(configs: &[(Vec<u8>, Vec<u8>)], devices: &[(Vec<u8>, u64)]) -> Vec<u8> {
    build_header(Uuid::from_u128(7), 1_700_000_000, configs, devices).unwrap()
}

/// Runs `vma extract archive <empty parent>/out` and checks nothing was created.
fn extract_refused(archive: &[u8], class: &str, why: &str) {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.vma");
    fs::write(&file, archive).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let o = run(vma().arg("extract").arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{class}: {err}");
    // Either the header parser or the name check refuses; the name check
    // must be the one for every class the parser lets through.
    assert!(
        err.contains(why) || err.contains("vma header") || err.contains("data pointers"),
        "{class}: {err}"
    );
    assert_eq!(names(parent.path()), Vec::<String>::new(), "{class}");
    assert_eq!(names(src.path()), vec!["a.vma".to_string()], "{class}");
}

#[test]
fn extract_refuses_every_hostile_config_name_before_creating_anything() {
    for (class, name, why) in hostile() {
        let a = header_only(
            &[
                (b"qemu-server.conf".to_vec(), b"ok\n".to_vec()),
                (name, b"evil\n".to_vec()),
            ],
            &[(b"drive-scsi0".to_vec(), 65536)],
        );
        extract_refused(&a, class, why);
    }
}

#[test]
fn extract_refuses_every_hostile_device_name_before_creating_anything() {
    for (class, name, why) in hostile() {
        let a = header_only(
            &[(b"qemu-server.conf".to_vec(), b"ok\n".to_vec())],
            &[(b"drive-scsi0".to_vec(), 65536), (name, 65536)],
        );
        extract_refused(&a, class, why);
    }
}

#[test]
fn refusal_names_the_class_for_names_the_header_parser_accepts() {
    // Names the parser keeps verbatim: the refusal must be check_name's.
    for (class, name, why) in hostile().into_iter().filter(|(c, _, _)| *c != "empty") {
        let a = header_only(&[(name.clone(), b"x".to_vec())], &[]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.vma");
        fs::write(&file, &a).unwrap();
        let o = run(vma().arg("extract").arg(&file).arg(dir.path().join("out")));
        let err = text(&o.stderr);
        assert!(err.contains("refusing to extract config"), "{class}: {err}");
        assert!(err.contains(why), "{class}: {err}");
        assert!(!dir.path().join("out").exists(), "{class}");
    }
}

#[test]
fn nul_ends_a_name_like_a_c_string() {
    // Names are C strings (spec §4, as in Proxmox's reader): the parser keeps
    // the bytes before the first NUL, so what follows can't reach a path.
    let a = header_only(
        &[
            (b"evil\0/../../escaped".to_vec(), b"x".to_vec()),
            (b"b\0\n".to_vec(), b"y".to_vec()),
        ],
        &[],
    );
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.vma");
    fs::write(&file, &a).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let o = run(vma().arg("extract").arg(&file).arg(&out));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(names(parent.path()), vec!["out".to_string()]);
    assert_eq!(names(&out), vec!["b".to_string(), "evil".to_string()]);
}

#[test]
fn mount_refuses_hostile_names_before_mounting() {
    for (class, name, _) in hostile() {
        for as_device in [false, true] {
            let a = if as_device {
                header_only(&[], &[(name.clone(), 65536)])
            } else {
                header_only(&[(name.clone(), b"x".to_vec())], &[])
            };
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("a.vma");
            fs::write(&file, &a).unwrap();
            let mnt = dir.path().join("mnt");
            fs::create_dir(&mnt).unwrap();
            let o = run(vma()
                .args(["mount", "--allow-incomplete"])
                .arg(&file)
                .arg(&mnt));
            let err = text(&o.stderr);
            if vma_tests::is_mounted(&mnt) {
                let _ = std::process::Command::new("fusermount3")
                    .arg("-u")
                    .arg(&mnt)
                    .status();
                panic!("{class} (device: {as_device}) was mounted: {err}");
            }
            assert!(!o.status.success(), "{class} (device: {as_device})");
            assert!(!err.is_empty(), "{class}");
            assert_eq!(names(&mnt), Vec::<String>::new());
            assert_eq!(
                names(dir.path()),
                vec!["a.vma".to_string(), "mnt".to_string()]
            );
        }
    }
}
