//! `vma serve` against real NBD clients: nbdinfo, qemu-img, qemu-io and
//! nbdcopy, on Proxmox-written vectors (plain and zstd), plus damaged
//! extents, signals, the pidfile and detaching.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vma_tests::{
    data_ranges, kill, parse_sha256_file, run_ok as run, sha256_hex, vector, wait_timeout, TestRng,
};

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

    /// A qcow2 overlay at `vm` whose backing file is export `name` (a VM
    /// started on the backup: live restore).
    fn overlay(&self, name: &str, vm: &Path) {
        run(Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "raw", "-b", &self.uri(name)])
            .arg(vm));
    }

    /// SIGTERM; returns whether it exited 0, and its stderr.
    fn stop(&mut self, sig: libc::c_int) -> (bool, String) {
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
    let mut s = Served::start(&vector("ref-two-disks.vma"), &[]);
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
    let mut s = Served::start(&zst, &[]);
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
    let mut s = Served::start(&archive, &[]);
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
        let mut s = Served::start(
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

/// `vma serve --socket SOCK --pidfile PID` of the two-disk vector (it
/// detaches: the output is the parent's).
fn serve_detached(sock: &Path, pid: &Path) -> std::process::Output {
    Command::new(vma_tests::vma_bin!())
        .arg("serve")
        .arg("--socket")
        .arg(sock)
        .arg("--pidfile")
        .arg(pid)
        .arg(vector("ref-two-disks.vma"))
        .output()
        .unwrap()
}

#[test]
fn serve_detaches_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let pid = dir.path().join("pid");
    let out = serve_detached(&sock, &pid);
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

/// A daemon that fails before it is ready (here: its pidfile cannot be
/// written) reports that through the ready pipe: the command fails with it.
#[test]
fn serve_daemon_failure_before_ready_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let pid = dir.path().join("missing").join("pid");
    let out = serve_detached(&sock, &pid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(133), "{stderr}");
    assert!(
        stderr.contains(&format!("vma: server daemon: pidfile {}", pid.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
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

// ---- Live restore: a qcow2 overlay backed by the export ----

/// diskC with the test's writes applied: what the restored disk must hold.
fn expected_after_writes(writes: &[(usize, usize, u8)]) -> Vec<u8> {
    let mut c = std::fs::read(input("diskC.raw")).unwrap();
    for &(off, len, pat) in writes {
        c[off..off + len].fill(pat);
    }
    c
}

fn qemu_io_write(target: &[&str], writes: &[(usize, usize, u8)]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(target);
    for (off, len, pat) in writes {
        cmd.arg("-c").arg(format!("write -P {pat} {off} {len}"));
    }
    let out = run(&mut cmd);
    assert_eq!(out.matches("wrote ").count(), writes.len(), "{out}");
}

/// The overlay holds everything itself: no backing file, and this content.
fn check_standalone(vm: &Path, want: &[u8]) {
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(vm));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    let raw = vm.with_extension("raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(vm)
        .arg(&raw));
    let got = std::fs::read(&raw).unwrap();
    assert_eq!(got.len(), want.len());
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "restored content differs");
}

#[test]
fn live_restore_overlay_then_rebase() {
    let mut s = Served::start(&vector("ref-many-clusters.vma"), &[]);
    let vm = s.dir.path().join("vm.qcow2");
    s.overlay("drive-virtio0", &vm);
    // Writable at once: writes land in the overlay, reads fall through to the backup.
    let writes = [
        (1 << 20, 65536, 0x77),
        (8 << 20, 4096, 0x55),
        (3 * 65536 + 512, 1024, 0x11),
    ];
    let vm_s = vm.to_str().unwrap();
    qemu_io_write(&["-f", "qcow2", vm_s], &writes);
    let want = expected_after_writes(&writes);
    let text =
        run(Command::new("qemu-io").args(["-f", "qcow2", "-r", vm_s, "-c", "read -v 196608 8192"]));
    let got = dumped_bytes(&text);
    assert_eq!(got.len(), 8192);
    assert!(
        got.iter().all(|(o, b)| want[*o as usize] == *b),
        "overlay reads"
    );
    // Pull the rest from the backup, then the server is no longer needed.
    run(Command::new("qemu-img").args(["rebase", "-f", "qcow2", "-b", "", vm_s]));
    let sock = s.sock.clone();
    let dir = s.dir.path().to_path_buf();
    let (ok, err) = s.stop(libc::SIGTERM);
    assert!(ok, "{err}");
    assert!(!sock.exists());
    assert!(dir.exists());
    check_standalone(&vm, &want);
}

/// A QMP connection (one command at a time; events are collected).
struct Qmp {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
    events: Vec<serde_json::Value>,
}

impl Qmp {
    fn connect(path: &Path, child: &mut Child) -> Qmp {
        wait_socket(path, child);
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut q = Qmp {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
            events: Vec::new(),
        };
        let greeting = q.next();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.cmd(serde_json::json!({"execute": "qmp_capabilities"}));
        q
    }

    fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        assert!(self.rd.read_line(&mut line).unwrap() > 0, "QMP closed");
        serde_json::from_str(&line).unwrap()
    }

    fn cmd(&mut self, c: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.wr, "{c}").unwrap();
        loop {
            let v = self.next();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            assert!(v.get("error").is_none(), "{c}: {v}");
            return v;
        }
    }

    fn wait_event(&mut self, name: &str) -> serde_json::Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.next();
            if v["event"] == name {
                return v;
            }
        }
    }
}

#[test]
fn live_restore_block_stream_while_the_guest_writes() {
    let mut s = Served::start(&vector("ref-many-clusters.vma"), &[]);
    let d = s.dir.path();
    let vm = d.join("vm.qcow2");
    s.overlay("drive-virtio0", &vm);
    let (qmp_path, guest) = (d.join("qmp.sock"), d.join("guest.sock"));
    let blockdev = serde_json::json!({
        "driver": "qcow2", "node-name": "disk0",
        "file": {"driver": "file", "filename": vm}
    });
    let mut qsd = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(blockdev.to_string())
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            qmp_path.display()
        ))
        .args(["--monitor", "chardev=qmp0"])
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", guest.display()))
        .args([
            "--export",
            "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut qmp = Qmp::connect(&qmp_path, &mut qsd);
    wait_socket(&guest, &mut qsd);
    let guest_uri = format!("nbd+unix:///disk0?socket={}", guest.display());
    // The "guest" writes before and during the stream (through qsd's export).
    let before = [(2 << 20, 65536, 0x66), (0, 4096, 0x01)];
    qemu_io_write(&["-f", "raw", &guest_uri], &before);
    qmp.cmd(serde_json::json!({"execute": "block-stream",
        "arguments": {"job-id": "st0", "device": "disk0", "speed": 2 << 20}}));
    let during = [(5 << 20, 65536, 0x44), (127 * 65536 + 100, 300, 0x22)];
    qemu_io_write(&["-f", "raw", &guest_uri], &during);
    // Those writes really happened while the job ran (2 MiB/s for 8 MiB: ~4 s).
    let jobs = qmp.cmd(serde_json::json!({"execute": "query-block-jobs"}));
    assert_eq!(jobs["return"][0]["device"], "st0", "{jobs}");
    let done = qmp.wait_event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_eq!(done["data"]["offset"], done["data"]["len"], "{done}");
    qmp.cmd(serde_json::json!({"execute": "quit"}));
    assert!(wait_timeout(&mut qsd, "qemu-storage-daemon").success());
    let (ok, err) = s.stop(libc::SIGTERM);
    assert!(ok, "{err}");
    let mut all = before.to_vec();
    all.extend_from_slice(&during);
    check_standalone(&vm, &expected_after_writes(&all));
}
