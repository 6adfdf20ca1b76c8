//! What `vma` tells its user: `--help`, the man pages and completions (all
//! generated from the one clap tree), and the messages of common mistakes
//! (a tar file, `mount -`, `umount` of a plain directory, `list -` on a
//! terminal, OS errors in Proxmox's ` - <strerror>` form).
//!
//! The program is this package's `vma-test-bin` (the `vma` binary's code).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vma_tests::{vector, vma_bin, wait_timeout};

fn vma() -> Command {
    Command::new(vma_bin!())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Runs a command that must fail with exit 133; returns its stderr.
#[track_caller]
fn fatal(cmd: &mut Command) -> String {
    let o = run(cmd);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.starts_with("vma: "), "{err}");
    assert!(!err.contains("os error"), "Rust's OS error suffix: {err}");
    err
}

fn strerror(code: i32) -> String {
    std::io::Error::from_raw_os_error(code)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn man_page_has_a_proper_name_line_and_every_page_it_refers_to() {
    let page = stdout(&run(vma().arg("manpage")));
    let name = page
        .lines()
        .skip_while(|l| *l != ".SH NAME")
        .nth(1)
        .unwrap();
    assert_eq!(
        name,
        "vma \\- List, verify, extract, create and mount Proxmox VE VMA backup archives"
    );

    let dir = tempfile::tempdir().unwrap();
    stdout(&run(vma().arg("manpage").arg("--dir").arg(dir.path())));
    let main = fs::read_to_string(dir.path().join("vma.1")).unwrap();
    assert_eq!(main, page, "--dir's vma.1 differs from `vma manpage`");
    // Every `vma-CMD(1)` that vma.1 names was written, with its own NAME line.
    let refs: Vec<&str> = main
        .split("vma\\-")
        .skip(1)
        .filter_map(|s| s.split_once("(1)").map(|(cmd, _)| cmd))
        .filter(|cmd| cmd.bytes().all(|b| b.is_ascii_lowercase()))
        .collect();
    for cmd in [
        "list", "config", "create", "extract", "verify", "mount", "umount",
    ] {
        assert!(refs.contains(&cmd), "vma.1 does not refer to vma-{cmd}(1)");
    }
    assert!(
        !refs.contains(&"help"),
        "a page for the help pseudo-command"
    );
    for cmd in &refs {
        let sub = fs::read_to_string(dir.path().join(format!("vma-{cmd}.1")))
            .unwrap_or_else(|e| panic!("vma-{cmd}.1 referenced but not written: {e}"));
        assert!(
            sub.contains(&format!(".SH NAME\nvma\\-{cmd} \\- ")),
            "vma-{cmd}.1 NAME: {}",
            &sub[..300.min(sub.len())]
        );
        assert!(sub.contains("\"vma 0.1.0\""), "vma-{cmd}.1 source line");
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        refs.len() + 1,
        "pages nobody refers to"
    );
}

#[test]
fn create_help_describes_zstd_once_with_512_kib_frames_and_the_suffix_rule() {
    let help = stdout(&run(vma().args(["create", "--help"])));
    assert_eq!(help.matches("512 KiB").count(), 1, "{help}");
    assert!(!help.contains("1 MiB"), "{help}");
    assert!(help.contains("checksum"), "{help}");
    assert!(
        help.contains("OUT's suffix (.zst zstd, .gz gzip, .lzo lzo)"),
        "{help}"
    );
    // The man page is rendered from the same tree.
    let dir = tempfile::tempdir().unwrap();
    stdout(&run(vma().arg("manpage").arg("--dir").arg(dir.path())));
    let man = fs::read_to_string(dir.path().join("vma-create.1")).unwrap();
    assert_eq!(man.matches("512 KiB").count(), 1);
    assert!(!man.contains("1 MiB"));
}

#[test]
fn completions_come_from_the_same_tree() {
    let bash = stdout(&run(vma().args(["completions", "bash"])));
    for word in ["manpage", "umount", "--compress", "--dir", "zstd gzip lzo"] {
        assert!(bash.contains(word), "bash completion lacks {word:?}");
    }
}

#[test]
fn help_says_which_commands_take_dash_and_why_the_disk_names_differ() {
    let help = stdout(&run(vma().arg("--help")));
    assert!(
        help.contains("list, config, verify and extract read"),
        "{help}"
    );
    assert!(help.contains("mount\nand index need a file"), "{help}");
    assert!(help.contains("'-' is refused"), "{help}");
    let extract = stdout(&run(vma().args(["extract", "--help"])));
    assert!(extract.contains("disk-<DEVNAME>.raw"), "{extract}");
    assert!(extract.contains("qmrestore"), "{extract}");
    let mount = stdout(&run(vma().args(["mount", "--help"])));
    assert!(mount.contains("<DEVNAME>.raw"), "{mount}");
    assert!(mount.contains("qmrestore"), "{mount}");
}

#[test]
fn mount_of_stdin_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let err = fatal(
        vma()
            .args(["mount", "-"])
            .arg(dir.path())
            .stdin(fs::File::open(vector("ref-one-disk.vma")).unwrap()),
    );
    assert!(err.contains("can't mount '-' (standard input)"), "{err}");
    assert!(err.contains("seekable file"), "{err}");
    assert!(!vma_tests::is_mounted(dir.path()));
}

#[test]
fn umount_of_a_directory_that_is_not_mounted_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = fatal(vma().arg("umount").arg(dir.path()));
    assert_eq!(
        err.trim_end(),
        format!("vma: can't unmount {} - not mounted", dir.path().display())
    );
    let missing = dir.path().join("nope");
    let err = fatal(vma().arg("umount").arg(&missing));
    assert!(
        err.contains(&format!("- {}", strerror(libc::ENOENT))),
        "{err}"
    );
    assert!(!err.contains("fusermount"), "{err}");
}

/// A small tar file made by the real `tar` (10240 bytes: shorter than a VMA header).
fn make_tar(dir: &Path) -> std::path::PathBuf {
    fs::write(dir.join("pct.conf"), b"arch: amd64\n").unwrap();
    let tar = dir.join("vzdump-lxc-101.tar");
    let o = run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&tar)
        .arg("pct.conf"));
    assert!(o.status.success(), "tar: {o:?}");
    tar
}

#[test]
fn a_tar_file_is_recognised_as_a_container_backup() {
    let dir = tempfile::tempdir().unwrap();
    let tar = make_tar(dir.path());
    let hint = "not a VMA (looks like a tar archive: vzdump's container backups are tar)";
    for args in [&["list"][..], &["verify"], &["config"]] {
        let err = fatal(vma().args(args).arg(&tar));
        assert!(err.contains(hint), "{args:?}: {err}");
    }
    let err = fatal(vma().arg("extract").arg(&tar).arg(dir.path().join("x")));
    assert!(err.contains(hint), "{err}");
    // Compressed, and longer than a VMA header, it is still recognised.
    let big = dir.path().join("big.tar");
    let mut bytes = fs::read(&tar).unwrap();
    bytes.resize(40960, 0);
    fs::write(&big, &bytes).unwrap();
    let zst = dir.path().join("big.tar.zst");
    fs::write(&zst, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    for f in [&big, &zst] {
        let err = fatal(vma().arg("list").arg(f));
        assert!(err.contains(hint), "{}: {err}", f.display());
    }
}

#[test]
fn os_errors_end_in_proxmox_style_strerror() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.vma");
    let enoent = strerror(libc::ENOENT);
    for cmd in ["list", "verify"] {
        let err = fatal(vma().arg(cmd).arg(&missing));
        assert!(
            err.trim_end().ends_with(&format!(" - {enoent}")),
            "{cmd}: {err}"
        );
    }
    // create names each path once, as typed, and ends in strerror too.
    let out = dir.path().join("o.vma");
    let err = fatal(
        vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("format=raw:drive-scsi0={}", missing.display())),
    );
    assert_eq!(
        err.trim_end(),
        format!(
            "vma: device drive-scsi0: can't open device source {} - {enoent}",
            missing.display()
        )
    );
    let err = fatal(
        vma()
            .arg("create")
            .arg(&out)
            .arg("-c")
            .arg(&missing)
            .arg("-d")
            .arg(format!(
                "format=raw:d={}",
                vector("ref-one-disk.vma").display()
            )),
    );
    assert_eq!(
        err.trim_end(),
        format!(
            "vma: can't open config file {} - {enoent}",
            missing.display()
        )
    );
    assert!(!out.exists());
}

#[test]
fn list_dash_on_a_terminal_says_it_waits_for_stdin() {
    let note = "waiting for an archive on standard input";
    // Not a terminal: nothing extra.
    let o = run(vma()
        .args(["list", "-"])
        .stdin(fs::File::open(vector("ref-one-disk.vma")).unwrap()));
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains(note));
    // On a terminal (script(1) gives it a pty): the note, then Ctrl-D ends the input.
    let cmd = format!("{} list -", vma_bin!().display());
    let mut child = match Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("script(1) (util-linux) is needed for this test: {e}"),
    };
    child.stdin.take().unwrap().write_all(b"\x04").unwrap();
    wait_timeout(&mut child, "vma list - on a pty");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains(note), "{out}");
    assert!(out.contains("got EOF"), "{out}");
}
