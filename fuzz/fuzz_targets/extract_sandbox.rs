//! `extract_sandbox`: the real `vma` commands (`vma_cli::run`, the code the
//! binary runs) on arbitrary bytes, inside a sandbox directory:
//!
//! - `extract ARCHIVE DIR`, `extract --salvage ARCHIVE DIR` and
//!   `extract -v -r MAP - DIR` (archive on stdin; the map sends each device to
//!   a pre-made target file, skips some, and adds a line for a device the
//!   archive lacks and a repeated line, which must only warn);
//! - `verify --json ARCHIVE`, `verify -v -` (stdin) and `list --json ARCHIVE`.
//!
//! What must hold: no panic (any panic, including arithmetic overflow, is a
//! crash), an exit status `vma` documents (0, 3 or 133), and no file outside
//! the extraction directory. After each command the sandbox is walked: it
//! holds only `jail`; `jail` holds only the archive, the map, the `targets`
//! directory and the extraction directory `inner`; `inner` holds only
//! regular files named after a checked config name or `[tmp-|incomplete-|
//! unverified-]disk-<checked name>.raw` / `[incomplete-|unverified-]vmstate.bin`;
//! `targets` holds exactly the target files made here, still regular files of
//! their original length (`-r` writes are clipped to the device size).
//!
//! Run with `-close_fd_mask=3` (run-ci.sh does): `vma` prints to stdout and
//! stderr on every input. Reproduce without it to see the panic message.
#![no_main]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vma_format::names::check_name;
use vma_format::StreamReader;

/// Targets for `-r` are made (sparse) only up to this device size; larger
/// devices get a too-small target, which `vma` must refuse cleanly.
const MAX_TARGET: u64 = 1 << 30;

fn sandbox() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| vma_fuzz::scratch_dir("vma-fuzz-cli-"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let outer = sandbox();
    let jail = outer.join("jail");
    for data in vma_fuzz::variants(data) {
        fs::create_dir(&jail).expect("create jail");
        run_all(outer, &jail, &data);
        fs::remove_dir_all(&jail).expect("clean up");
    }
});

fn run_all(outer: &Path, jail: &Path, data: &[u8]) {
    let archive = jail.join("archive.vma");
    fs::write(&archive, data).expect("write archive");
    let inner = jail.join("inner");
    let targets = jail.join("targets");
    fs::create_dir(&targets).expect("targets dir");
    let map = jail.join("map");
    let made = write_map(data, &map, &targets);
    let sandbox = Sandbox {
        outer,
        jail,
        inner: &inner,
        targets: &targets,
        made: &made,
    };

    for salvage in [false, true] {
        let mut args = vec![os("extract")];
        if salvage {
            args.push(os("--salvage"));
        }
        args.extend([archive.as_os_str(), inner.as_os_str()]);
        vma(&args, None);
        sandbox.check(false);
        let _ = fs::remove_dir_all(&inner);
    }
    vma(
        &[
            os("extract"),
            os("-v"),
            os("-r"),
            map.as_os_str(),
            os("-"),
            inner.as_os_str(),
        ],
        Some(&archive),
    );
    sandbox.check(true);
    let _ = fs::remove_dir_all(&inner);

    vma(&[os("verify"), os("--json"), archive.as_os_str()], None);
    vma(&[os("verify"), os("-v"), os("-")], Some(&archive));
    vma(&[os("list"), os("--json"), archive.as_os_str()], None);
    sandbox.check(false);
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Runs `vma ARGS` in-process (stdin = `stdin` if given) and checks the status.
fn vma(args: &[&OsStr], stdin: Option<&Path>) {
    if let Some(p) = stdin {
        let f = fs::File::open(p).expect("open stdin file");
        // SAFETY: dup2 of a valid fd onto fd 0; `f` is closed afterwards.
        let r = unsafe { libc::dup2(f.as_raw_fd(), 0) };
        assert_eq!(r, 0, "dup2");
    }
    let argv = std::iter::once(os("vma")).chain(args.iter().copied());
    let code = vma_cli::run(argv);
    assert!(
        [0u8, vma_cli::EXIT_SALVAGED, vma_cli::EXIT_FATAL]
            .iter()
            .any(|&c| code == ExitCode::from(c)),
        "vma {args:?}: undocumented exit status {code:?}"
    );
}

/// The `-r` map for this archive's devices and the target files it names
/// (name → length); `targets` gets those files.
fn write_map(data: &[u8], map: &Path, targets: &Path) -> Vec<(OsString, u64)> {
    let mut made = Vec::new();
    let mut text: Vec<u8> = b"0:drive-not-in-this-archive=/nonexistent\n".to_vec();
    let header = StreamReader::new(data).ok().map(|r| r.header().clone());
    for (i, d) in header.iter().flat_map(|h| &h.devices).enumerate() {
        if i % 4 == 3 {
            text.extend_from_slice(b"skip=");
            text.extend_from_slice(&d.name);
            text.push(b'\n');
            continue;
        }
        // A size the target may exceed (at most 4 MiB), or a too-small one.
        let len = if d.size <= MAX_TARGET {
            d.size + (i as u64 % 3) * 4096
        } else {
            4096
        };
        let name = OsString::from(format!("t{i}"));
        let path = targets.join(&name);
        fs::File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("target file");
        made.push((name, len));
        // First a line for the device that a later one replaces.
        for p in [Path::new("/nonexistent"), &path] {
            text.extend_from_slice(if i % 2 == 0 { b"0:" } else { b"format=raw:1:" });
            text.extend_from_slice(&d.name);
            text.push(b'=');
            text.extend_from_slice(p.as_os_str().as_bytes());
            text.push(b'\n');
        }
    }
    text.extend_from_slice(b"done\n");
    fs::write(map, text).expect("write map");
    made.sort();
    made
}

struct Sandbox<'a> {
    outer: &'a Path,
    jail: &'a Path,
    inner: &'a Path,
    targets: &'a Path,
    made: &'a [(OsString, u64)],
}

fn names(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    v.sort();
    v
}

fn is_regular(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// Whether `n` is a name `vma extract` may give a file in its target directory.
fn allowed_output(n: &[u8]) -> bool {
    if check_name(n).is_ok() {
        return true; // a config (checked before use)
    }
    for prefix in [&b""[..], b"incomplete-", b"unverified-"] {
        let Some(rest) = n.strip_prefix(prefix) else {
            continue;
        };
        if rest == b"vmstate.bin" {
            return true;
        }
        let dev = rest.strip_suffix(b".raw").and_then(|r| {
            r.strip_prefix(b"disk-")
                .or_else(|| r.strip_prefix(b"tmp-disk-").filter(|_| prefix.is_empty()))
        });
        if dev.is_some_and(|d| check_name(d).is_ok()) {
            return true;
        }
    }
    false
}

impl Sandbox<'_> {
    fn check(&self, mapped: bool) {
        assert_eq!(
            names(self.outer),
            [OsString::from("jail")],
            "something appeared next to the jail"
        );
        let mut want: Vec<OsString> = ["archive.vma", "map", "targets"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let in_jail = names(self.jail);
        if in_jail.iter().any(|n| n == "inner") {
            want.push("inner".into());
            want.sort();
        }
        assert_eq!(in_jail, want, "unexpected file in the jail");
        assert_eq!(
            names(self.targets),
            self.made.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "files appeared or vanished among the -r targets"
        );
        for (n, len) in self.made {
            let m = fs::symlink_metadata(self.targets.join(n)).expect("target");
            assert!(m.file_type().is_file(), "target {n:?} replaced");
            assert_eq!(m.len(), *len, "-r wrote past the device end of {n:?}");
        }
        if !want.iter().any(|n| n == "inner") {
            return;
        }
        let meta = fs::symlink_metadata(self.inner).expect("inner");
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        for name in names(self.inner) {
            let p: PathBuf = self.inner.join(&name);
            assert!(is_regular(&p), "not a regular file: {p:?}");
            let n = name.into_vec();
            assert!(
                allowed_output(&n),
                "unexpected output name {:?}",
                String::from_utf8_lossy(&n)
            );
            // With -r, disks go to the targets: only configs and vmstate here.
            if mapped {
                assert!(
                    !n.ends_with(b".raw") || check_name(&n).is_ok(),
                    "-r wrote a disk file into the directory: {:?}",
                    String::from_utf8_lossy(&n)
                );
            }
        }
    }
}
