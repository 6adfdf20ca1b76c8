//! `vma serve` against real NBD clients: nbdinfo, qemu-img, qemu-io and
//! nbdcopy, on Proxmox-written vectors (plain and zstd), plus damaged
//! extents, signals, the pidfile and detaching.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vma_tests::{data_ranges, kill, parse_sha256_file, sha256_hex, vector, wait_timeout, TestRng};

/// A `vma serve --foreground` child on a Unix socket in a temporary directory.
struct Served {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    err: PathBuf,
}

fn wait_socket(sock: &Path, child: &mut Child) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "vma serve exited early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Served {
    fn start(archive: &Path, extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let err = dir.path().join("stderr");
        let mut child = Command::new(vma_tests::vma_bin!())
            .args(["serve", "--foreground", "--socket"])
            .arg(&sock)
            .args(extra)
            .arg(archive)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        wait_socket(&sock, &mut child);
        Served {
            child,
            dir,
            sock,
            err,
        }
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
    }

    /// SIGTERM; returns whether it exited 0, and its stderr.
    fn stop(mut self, sig: libc::c_int) -> (bool, String) {
        kill(&self.child, sig);
        let st = wait_timeout(&mut self.child, "vma serve");
        (st.success(), std::fs::read_to_string(&self.err).unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn input(name: &str) -> PathBuf {
    vector("inputs").join(name)
}

/// A vector copied into `dir` (a compressed one gets its sidecar there, not in the tree).
fn copy_vector(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(vector(name), &p).unwrap();
    p
}

/// `nbdinfo --map` rows (start, length, type), adjacent rows of one type merged.
fn map(uri: &str) -> Vec<(u64, u64, u32)> {
    let text = run(Command::new("nbdinfo").args(["--map", uri]));
    let mut rows: Vec<(u64, u64, u32)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (s, n, t) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        match rows.last_mut() {
            Some(r) if r.2 == t && r.0 + r.1 == s => r.1 += n,
            _ => rows.push((s, n, t)),
        }
    }
    rows
}

/// The map a disk's content should give: data (0) runs of non-zero 4 KiB
/// blocks, hole+zero (3) in between.
fn expected_map(content: &[u8]) -> Vec<(u64, u64, u32)> {
    let mut rows = Vec::new();
    let mut pos = 0u64;
    for (s, e) in data_ranges(content) {
        if s > pos {
            rows.push((pos, s - pos, 3));
        }
        rows.push((s, e - s, 0));
        pos = e;
    }
    if pos < content.len() as u64 {
        rows.push((pos, content.len() as u64 - pos, 3));
    }
    rows
}

#[test]
fn serve_lists_exports_and_maps_holes_exactly() {
    let s = Served::start(&vector("ref-two-disks.vma"), &[]);
    let list = run(Command::new("nbdinfo").args(["--list", &s.uri("")]));
    assert!(list.contains("export=\"drive-scsi0\""), "{list}");
    assert!(list.contains("export=\"drive-scsi1\""), "{list}");
    assert!(list.contains("is_read_only: true"), "{list}");
    assert!(list.contains("base:allocation"), "{list}");
    for (dev, file) in [("drive-scsi0", "diskA.raw"), ("drive-scsi1", "diskB.raw")] {
        let content = std::fs::read(input(file)).unwrap();
        let want = expected_map(&content);
        assert!(want.iter().any(|r| r.2 == 3) && want.iter().any(|r| r.2 == 0));
        assert_eq!(map(&s.uri(dev)), want, "{dev}");
    }
    let (ok, err) = s.stop(libc::SIGTERM);
    assert!(ok, "{err}");
}

#[test]
fn serve_matches_the_original_images_plain_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let zst = copy_vector(dir.path(), "ref-two-disks.vma.zst");
    let cases = [
        (vector("ref-two-disks.vma"), "drive-scsi0", "diskA.raw"),
        (zst.clone(), "drive-scsi0", "diskA.raw"),
        (zst, "drive-scsi1", "diskB.raw"),
        (vector("ref-one-disk.vma"), "drive-scsi0", "diskA.raw"),
        (
            vector("ref-many-clusters.vma"),
            "drive-virtio0",
            "diskC.raw",
        ),
    ];
    for (archive, dev, file) in cases {
        let s = Served::start(&archive, &[]);
        let out = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(s.uri(dev))
            .arg(input(file)));
        assert!(
            out.contains("Images are identical"),
            "{archive:?} {dev}: {out}"
        );
    }
    // compare can fail: a different image is reported as such.
    let s = Served::start(&vector("ref-two-disks.vma"), &[]);
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(s.uri("drive-scsi1"))
        .arg(input("diskC.raw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn serve_converts_to_qcow2_and_vmdk() {
    let s = Served::start(&vector("ref-many-clusters.vma"), &[]);
    for fmt in ["qcow2", "vmdk"] {
        let out = s.dir.path().join(format!("disk.{fmt}"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt])
            .arg(s.uri("drive-virtio0"))
            .arg(&out));
        let cmp = run(Command::new("qemu-img")
            .args(["compare", "-f", fmt, "-F", "raw"])
            .arg(&out)
            .arg(input("diskC.raw")));
        assert!(cmp.contains("Images are identical"), "{fmt}: {cmp}");
    }
}

#[test]
fn serve_nbdcopy_two_clients_at_once_from_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let zst = copy_vector(dir.path(), "ref-two-disks.vma.zst");
    let s = Served::start(&zst, &[]);
    let sums: HashMap<String, String> =
        parse_sha256_file(&std::fs::read_to_string(vector("ref-two-disks.sha256")).unwrap())
            .into_iter()
            .map(|(h, f)| (f, h))
            .collect();
    let copies: Vec<_> = ["drive-scsi0", "drive-scsi1"]
        .iter()
        .map(|dev| {
            let out = dir.path().join(format!("disk-{dev}.raw"));
            let child = Command::new("nbdcopy")
                .arg(s.uri(dev))
                .arg(&out)
                .spawn()
                .unwrap();
            (dev, out, child)
        })
        .collect();
    for (dev, out, mut child) in copies {
        assert!(wait_timeout(&mut child, "nbdcopy").success());
        let got = sha256_hex(&std::fs::read(&out).unwrap());
        assert_eq!(got, sums[&format!("disk-{dev}.raw")], "{dev}");
    }
    let (ok, err) = s.stop(libc::SIGINT);
    assert!(ok, "{err}");
}

/// Parses `qemu-io -c 'read -v OFF LEN'` dumps into (offset, byte) pairs.
fn dumped_bytes(text: &str) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    for l in text.lines() {
        let Some((addr, rest)) = l.split_once(":  ") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        for (i, tok) in rest.split_whitespace().take(16).enumerate() {
            match u8::from_str_radix(tok, 16) {
                Ok(b) if tok.len() == 2 => out.push((addr + i as u64, b)),
                _ => break,
            }
        }
    }
    out
}

#[test]
fn serve_qemu_io_random_reads() {
    let content = std::fs::read(input("diskC.raw")).unwrap();
    let s = Served::start(&vector("ref-many-clusters.vma"), &[]);
    let mut rng = TestRng::new(0x5e7e);
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-r", &s.uri("drive-virtio0")]);
    let mut want = 0u64;
    for i in 0..40 {
        // Half of them inside data clusters (0, 3, 64, 127), the rest anywhere.
        let len = 1 + rng.below(6000);
        let off = if i % 2 == 0 {
            [0u64, 3, 64, 127][rng.below(4) as usize] * 65536 + rng.below(60000)
        } else {
            rng.below(content.len() as u64 - len)
        };
        want += len;
        cmd.arg("-c").arg(format!("read -v {off} {len}"));
    }
    let text = run(&mut cmd);
    let bytes = dumped_bytes(&text);
    assert_eq!(bytes.len() as u64, want, "every byte read was dumped");
    let wrong = bytes
        .iter()
        .filter(|(o, b)| content[*o as usize] != *b)
        .count();
    assert_eq!(wrong, 0);
    assert!(bytes.iter().any(|(_, b)| *b != 0), "some data was read");
}

#[test]
fn serve_damaged_extent_gives_eio_and_logs_why() {
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_vector(dir.path(), "ref-many-clusters.vma");
    let bytes = std::fs::read(&archive).unwrap();
    let first_extent = vma_format::parse_header(&bytes).unwrap().header_size();
    let s = Served::start(&archive, &[]);
    // Damage the first extent's header (its UUID) while the server runs.
    let mut damaged = bytes.clone();
    damaged[first_extent as usize + 10] ^= 0xff;
    std::fs::write(&archive, &damaged).unwrap();
    let uri = s.uri("drive-virtio0");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-r", &uri, "-c", "read 0 64k"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    // A data cluster of another extent still reads, and correctly.
    let content = std::fs::read(input("diskC.raw")).unwrap();
    let off = 127 * 65536u64;
    let text = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-r",
        &uri,
        "-c",
        &format!("read -v {off} 4096"),
    ]));
    let got = dumped_bytes(&text);
    assert_eq!(got.len(), 4096);
    assert!(got.iter().all(|(o, b)| content[*o as usize] == *b));
    // A whole copy fails instead of producing wrong bytes.
    let copy = dir.path().join("copy.raw");
    let st = Command::new("nbdcopy")
        .arg(&uri)
        .arg(&copy)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "nbdcopy must fail on the damaged extent");
    let (ok, err) = s.stop(libc::SIGTERM);
    assert!(ok, "{err}");
    assert!(
        err.contains("drive-virtio0") && err.contains(&format!("byte offset {first_extent}")),
        "the reason names the disk and the extent: {err}"
    );
}

#[test]
fn serve_signals_remove_socket_and_pidfile() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let s = Served::start(
            &vector("ref-one-disk.vma"),
            &["--pidfile", pid.to_str().unwrap()],
        );
        let text = std::fs::read_to_string(&pid).unwrap();
        assert_eq!(text.trim(), s.child.id().to_string());
        // An open client connection does not keep it from stopping.
        let _client = UnixStream::connect(&s.sock).unwrap();
        let sock = s.sock.clone();
        let (ok, err) = s.stop(sig);
        assert!(ok, "{err}");
        assert!(!sock.exists(), "socket removed after signal {sig}");
        assert!(!pid.exists(), "pidfile removed after signal {sig}");
    }
}

#[test]
fn serve_detaches_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let pid = dir.path().join("pid");
    let out = Command::new(vma_tests::vma_bin!())
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--pidfile")
        .arg(&pid)
        .arg(vector("ref-two-disks.vma"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "drive-scsi1 nbd+unix:///drive-scsi1?socket={}",
            sock.display()
        )),
        "{stdout}"
    );
    // Ready when the command returns: no waiting needed.
    let n: libc::pid_t = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(format!("nbd+unix:///drive-scsi0?socket={}", sock.display()))
        .arg(input("diskA.raw")));
    assert!(cmp.contains("identical"), "{cmp}");
    // SAFETY: kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(n, libc::SIGTERM) }, 0);
    let start = Instant::now();
    while sock.exists() || pid.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon did not clean up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_tcp_on_localhost_prints_the_uri() {
    let mut child = Command::new(vma_tests::vma_bin!())
        .args(["serve", "--foreground", "--listen", "127.0.0.1:0"])
        .arg(vector("ref-two-disks.vma"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let uri = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && uri.ends_with("/drive-scsi0"),
        "{first}"
    );
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &uri])
        .arg(input("diskA.raw")));
    assert!(cmp.contains("identical"), "{cmp}");
    kill(&child, libc::SIGTERM);
    assert!(wait_timeout(&mut child, "vma serve").success());
}

#[test]
fn serve_refuses_an_archive_without_disks() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(vma_tests::vma_bin!())
        .args(["serve", "--foreground", "--socket"])
        .arg(dir.path().join("s"))
        .arg(vector("ref-diskless.vma"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no disks"), "{err}");
    assert!(!dir.path().join("s").exists());
}
