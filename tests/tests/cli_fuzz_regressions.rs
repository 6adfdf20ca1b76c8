//! Every input in `fuzz/regressions/` (crashes the fuzzers found, and the
//! extreme-size archive of issue 11 that made `extract` panic) replayed
//! through the commands the `extract_sandbox` fuzz target runs: `extract`,
//! `extract --salvage`, `verify --json`, `verify -v` from stdin and
//! `list --json`. Each must end with a documented status (0, 3, 133), a
//! `vma: ` message on failure, and no panic; extraction creates nothing
//! outside its directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vma_tests::vma_bin;

fn regressions() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    v.sort();
    v
}

fn vma(args: &[&OsStr], stdin: Option<&Path>) -> Output {
    let mut c = Command::new(vma_bin!());
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let Some(p) = stdin else {
        return c.stdin(Stdio::null()).output().unwrap();
    };
    let mut child = c.stdin(Stdio::piped()).spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let data = fs::read(p).unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    o
}

#[track_caller]
fn clean(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.signal().is_none(), "{what}: {:?}: {err}", o.status);
    let code = o.status.code().unwrap();
    assert!([0, 3, 133].contains(&code), "{what}: exit {code}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    if code != 0 {
        assert!(err.starts_with("vma: "), "{what}: {err}");
    }
}

#[test]
fn fuzz_regressions_through_the_cli() {
    let all = regressions();
    assert!(
        all.iter()
            .any(|p| p.ends_with("extract_sandbox-size-2p64-1.bin")),
        "the issue-11 input is missing: {all:?}"
    );
    for input in all {
        let tmp = tempfile::tempdir().unwrap();
        let jail = tmp.path().join("jail");
        fs::create_dir(&jail).unwrap();
        let out = jail.join("out");
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        for salvage in [false, true] {
            let mut args = vec![OsStr::new("extract")];
            if salvage {
                args.push(OsStr::new("--salvage"));
            }
            args.extend([input.as_os_str(), out.as_os_str()]);
            clean(&vma(&args, None), &format!("{name}: {args:?}"));
            // Nothing but the extraction directory appeared.
            let left: Vec<_> = fs::read_dir(&jail)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty() || left == ["out"], "{name}: {left:?}");
            let _ = fs::remove_dir_all(&out);
        }
        for args in [&["verify", "--json"][..], &["list", "--json"], &["config"]] {
            let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            a.push(input.as_os_str());
            clean(&vma(&a, None), &format!("{name}: {args:?}"));
        }
        let a = [OsStr::new("verify"), OsStr::new("-v"), OsStr::new("-")];
        clean(&vma(&a, Some(&input)), &format!("{name}: verify -v -"));
    }
}
