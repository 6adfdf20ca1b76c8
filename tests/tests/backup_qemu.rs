//! `vma backup` against a real QEMU: qemu-storage-daemon with two raw disks
//! plays the VM, its QMP socket is what `vma backup` drives, and an NBD
//! export of each disk on a second socket is the guest's write path
//! (`qemu-io` writes into it while the backup runs). A second QMP monitor
//! lets the test look at jobs and nodes on its own.
//!
//! Needs qemu-storage-daemon and qemu-io (Debian `qemu-utils`; run-all.sh
//! installs them); the ENOSPC test needs root (a small tmpfs) and is skipped
//! without it. The dissect.archive check needs python3 with the module.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vma_tests::{vma_bin, TestRng};

const KIB: usize = 1024;

/// Random data with holes (never written) and allocated zero runs.
fn make_disk(path: &Path, size: usize, rng: &mut TestRng) -> Vec<u8> {
    let mut data = vec![0u8; size];
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size as u64).unwrap();
    use std::os::unix::fs::FileExt;
    let mut off = 0;
    let mut i = 0;
    while off < size {
        let len = (64 * KIB * (1 + i % 3)).min(size - off);
        match i % 5 {
            // A hole: unallocated in the file.
            1 => {}
            // Allocated zeros (a plain write of zeros).
            3 => f.write_all_at(&vec![0u8; len], off as u64).unwrap(),
            _ => {
                rng.fill(&mut data[off..off + len]);
                // Some zero 4 KiB blocks inside data clusters.
                data[off..off + 4096].fill(0);
                f.write_all_at(&data[off..off + len], off as u64).unwrap();
            }
        }
        off += len;
        i += 1;
    }
    data
}

/// qemu-storage-daemon as the VM.
struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Vm {
    fn start(dir: &Path) -> Vm {
        Self::start_with(dir, &[])
    }

    /// [`Vm::start`] with more qemu-storage-daemon arguments.
    fn start_with(dir: &Path, extra: &[&str]) -> Vm {
        let p = |n: &str| dir.join(n).display().to_string();
        let child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!("driver=file,filename={},node-name=file0", p("d0.raw")),
                "--blockdev",
                "driver=raw,file=file0,node-name=disk0",
                "--blockdev",
                &format!("driver=file,filename={},node-name=file1", p("d1.raw")),
                "--blockdev",
                "driver=raw,file=file1,node-name=disk1",
                "--chardev",
                &format!("socket,path={},server=on,wait=off,id=qmp0", p("qmp.sock")),
                "--monitor",
                "chardev=qmp0",
                "--chardev",
                &format!("socket,path={},server=on,wait=off,id=qmp1", p("watch.sock")),
                "--monitor",
                "chardev=qmp1",
                "--nbd-server",
                &format!("addr.type=unix,addr.path={}", p("guest.sock")),
                "--export",
                "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on",
                "--export",
                "type=nbd,id=e1,node-name=disk1,name=disk1,writable=on",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon must be installed (qemu-utils)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["qmp.sock", "watch.sock", "guest.sock"]
            .iter()
            .all(|s| dir.join(s).exists())
        {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Vm {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Runs one command on the test's own monitor.
    fn qmp(&self, cmd: &str, args: Value) -> Value {
        let mut s = UnixStream::connect(self.dir.join("watch.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        let mut send = |v: Value| -> Value {
            writeln!(s, "{v}").unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                if v.get("event").is_none() {
                    return v;
                }
            }
        };
        send(json!({"execute": "qmp_capabilities"}));
        let v = send(json!({"execute": cmd, "arguments": args}));
        assert!(v.get("return").is_some(), "{cmd}: {v}");
        v["return"].clone()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// No jobs, and none of vma's nodes, are left in QEMU.
    fn assert_clean(&self) {
        let jobs = self.qmp("query-jobs", json!({}));
        assert_eq!(jobs, json!([]), "leftover jobs");
        let nodes = self.qmp("query-named-block-nodes", json!({"flat": true}));
        let names: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node-name"].as_str().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with("vma-backup")),
            "leftover nodes: {names:?}"
        );
        assert!(names.contains(&"disk0") && names.contains(&"disk1"));
    }

    /// A guest write of `len` bytes of `pattern` at `offset` through NBD.
    fn guest_write(&self, disk: &str, offset: usize, len: usize, pattern: u8) {
        let uri = format!(
            "nbd+unix:///{disk}?socket={}",
            self.dir.join("guest.sock").display()
        );
        let out = Command::new("qemu-io")
            .args(["-f", "raw", &uri, "-c"])
            .arg(format!("write -P {pattern} {offset} {len}"))
            .output()
            .expect("qemu-io must be installed (qemu-utils)");
        assert!(
            out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("error"),
            "qemu-io: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `vma backup`; its stderr is collected, and `started` fires
/// when the jobs run.
struct Backup {
    child: Child,
    started: mpsc::Receiver<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl Backup {
    fn start(vm: &Vm, out: &Path, extra: &[&str]) -> Backup {
        let mut child = Command::new(vma_bin!())
            .arg("backup")
            .arg("--qmp")
            .arg(vm.dir.join("qmp.sock"))
            .args(["-d", "drive-scsi0=disk0", "-d", "drive-scsi1=disk1"])
            .args(extra)
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, started) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let mut r = BufReader::new(&mut err);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("backup: started") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                line.clear();
            }
            let _ = err.read_to_string(&mut all);
            all
        });
        Backup {
            child,
            started,
            stderr,
        }
    }

    fn wait_started(&self) {
        self.started
            .recv_timeout(Duration::from_secs(30))
            .expect("vma backup did not start its jobs");
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vma backup hung");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.stderr.join().unwrap();
        eprintln!("vma backup ({st}) said:\n{stderr}");
        (st, stderr)
    }
}

fn vma(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(vma_bin!()).args(args).output().unwrap()
}

/// Sets up the two disks and the VM; returns their content.
fn setup(dir: &Path, seed: u64) -> (Vm, Vec<u8>, Vec<u8>) {
    setup_sized(dir, seed, 4 << 20)
}

/// [`setup`] with a `size0`-byte disk0.
fn setup_sized(dir: &Path, seed: u64, size0: usize) -> (Vm, Vec<u8>, Vec<u8>) {
    let mut rng = TestRng::new(seed);
    // disk1 ends in a partial cluster (3 MiB + 8 KiB).
    let d0 = make_disk(&dir.join("d0.raw"), size0, &mut rng);
    let d1 = make_disk(&dir.join("d1.raw"), (3 << 20) + 8192, &mut rng);
    (Vm::start(dir), d0, d1)
}

fn no_archive_left(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("vma"))
        .collect();
    assert!(left.is_empty(), "partial archive left: {left:?}");
}

#[test]
fn backup_is_the_point_in_time_content_while_the_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, d0, d1) = setup(dir.path(), 1);
    let out = dir.path().join("backup.vma");
    // 1 MiB/s in total: the 7 MiB take a few seconds.
    let b = Backup::start(&vm, &out, &["--bwlimit", "1024", "--buffer", "1"]);
    b.wait_started();
    // Guest writes during the backup: 4 KiB in untouched clusters, a run
    // across clusters, into holes and zero runs, and the partial last cluster.
    let writes = [
        ("disk0", 4096, 4096, 0x11),
        ("disk0", 1 << 20, 200 * KIB, 0x22),
        ("disk0", (4 << 20) - 64 * KIB, 64 * KIB, 0x33),
        ("disk1", 64 * KIB, 4096, 0x44),
        ("disk1", 2 << 20, 128 * KIB, 0x55),
        ("disk1", 3 << 20, 8192, 0x66),
    ];
    for (disk, off, len, pat) in writes {
        vm.guest_write(disk, off, len, pat);
    }
    let mut b = b;
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "the guest writes must land while the backup runs (slow it down more)"
    );
    let (st, stderr) = b.wait();
    assert!(st.success(), "vma backup failed: {stderr}");
    assert!(
        stderr.contains("backup: 100%"),
        "progress on stderr: {stderr}"
    );
    vm.assert_clean();

    let o = vma(&["verify".as_ref(), "-v".as_ref(), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got0 = std::fs::read(ex.join("disk-drive-scsi0.raw")).unwrap();
    let got1 = std::fs::read(ex.join("disk-drive-scsi1.raw")).unwrap();
    assert!(
        got0 == d0,
        "drive-scsi0 is not the content at the transaction"
    );
    assert!(
        got1 == d1,
        "drive-scsi1 is not the content at the transaction"
    );
    // The guest's writes did land on the disks, just not in the archive.
    let now0 = std::fs::read(dir.path().join("d0.raw")).unwrap();
    let now1 = std::fs::read(dir.path().join("d1.raw")).unwrap();
    assert_ne!(now0, d0);
    assert_ne!(now1, d1);
    assert!(now0[4096..8192].iter().all(|&b| b == 0x11));
    assert!(now1[(3 << 20)..].iter().all(|&b| b == 0x66));

    dissect_reads(&out, &[&d0, &d1]);
}

/// dissect.archive (an independent reader) gives the same device bytes.
fn dissect_reads(path: &Path, disks: &[&[u8]]) {
    const SCRIPT: &str = r#"
import hashlib, json, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], "rb") as fh:
    vma = VMA(fh)
    print(json.dumps([hashlib.sha256(vma.device(d.id).open().read()).hexdigest()
                      for d in vma.devices()]))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "dissect.archive failed (install it with `python3 -m pip install dissect.archive`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<String> = disks.iter().map(|d| vma_tests::sha256_hex(d)).collect();
    assert_eq!(got, want);
}

#[test]
fn sigint_and_sigterm_cancel_clean_up_and_leave_the_vm_running() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let (mut vm, _, _) = setup(dir.path(), 2);
        let out = dir.path().join("backup.vma");
        let b = Backup::start(&vm, &out, &["--bwlimit", "256"]);
        b.wait_started();
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(b.child.id() as i32, sig) };
        let (st, stderr) = b.wait();
        // Exited through our cleanup with the status every command gives a
        // signal (130) and one 'vma: interrupted' line, not killed by it.
        assert_eq!(st.code(), Some(130), "signal {sig}: {stderr}");
        assert_eq!(stderr.matches("vma: interrupted").count(), 1, "{stderr}");
        assert!(vm.alive());
        vm.assert_clean();
        no_archive_left(dir.path());
    }
}

#[test]
fn qemu_killed_mid_backup_fails_and_leaves_no_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, _, _) = setup(dir.path(), 3);
    let out = dir.path().join("backup.vma");
    let b = Backup::start(&vm, &out, &["--bwlimit", "256"]);
    b.wait_started();
    std::thread::sleep(Duration::from_millis(300));
    vm.child.kill().unwrap();
    vm.child.wait().unwrap();
    let (st, stderr) = b.wait();
    assert!(!st.success());
    assert!(stderr.contains("QMP"), "names the lost QEMU: {stderr}");
    no_archive_left(dir.path());
}

#[test]
fn a_full_archive_filesystem_cancels_and_cleans_up() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Far more data than the 1 MiB filesystem holds, so the failure comes
    // while the jobs still run (a 1 MiB buffer keeps them from racing ahead).
    let (mut vm, _, _) = setup_sized(dir.path(), 4, 32 << 20);
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Umount(small.clone());
    let out = small.join("backup.vma");
    let b = Backup::start(&vm, &out, &["--buffer", "1"]);
    let (st, stderr) = b.wait();
    assert!(!st.success());
    assert!(
        stderr.contains("No space left on device") && stderr.contains("backup.vma"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("backup: 100%"),
        "failed mid-backup: {stderr}"
    );
    assert!(vm.alive());
    vm.assert_clean();
    no_archive_left(&small);
}

#[test]
fn a_slow_archive_delays_the_guest_but_never_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    // 32 MiB: more than the writer's own extent buffers hold, so a stalled
    // output fills the 1 MiB queue and QEMU's writes have to wait.
    let (vm, d0, d1) = setup_sized(dir.path(), 5, 32 << 20);
    let file = dir.path().join("slow.vma");
    // The archive's reader sleeps 3 s before reading anything.
    let out = format!("exec:sleep 3; cat > {}", file.display());
    let b = Backup::start(&vm, out.as_ref(), &["--buffer", "1"]);
    b.wait_started();
    std::thread::sleep(Duration::from_millis(500));
    // A guest write to the last cluster, most likely not copied yet: its
    // copy-before-write waits for room in the queue; it must succeed.
    let t = Instant::now();
    vm.guest_write("disk0", (32 << 20) - 4096, 4096, 0x77);
    eprintln!("guest write during the stall took {:?}", t.elapsed());
    let (st, stderr) = b.wait();
    assert!(st.success(), "vma backup failed: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("writes delayed"))
        .expect("summary line");
    let delayed: u64 = line
        .split("writes delayed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("delay count");
    assert!(delayed > 0, "backpressure never engaged: {line}");
    assert!(
        line.contains("buffer peak 1.0 MiB of 1 MiB") || line.contains("buffer peak 0."),
        "{line}"
    );
    vm.assert_clean();
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), file.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(ex.join("disk-drive-scsi0.raw")).unwrap() == d0);
    assert!(std::fs::read(ex.join("disk-drive-scsi1.raw")).unwrap() == d1);
}

#[test]
fn without_d_a_vm_without_guest_devices_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, _, _) = setup(dir.path(), 7);
    // qemu-storage-daemon has block nodes but no guest devices.
    let o = Command::new(vma_bin!())
        .arg("backup")
        .arg("--qmp")
        .arg(vm.dir.join("qmp.sock"))
        .arg(dir.path().join("backup.vma"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{stderr}");
    assert!(
        stderr.contains("no disk attached to a guest device"),
        "{stderr}"
    );
    no_archive_left(dir.path());
}

/// Starts the VM with a third disk, node "bad", whose reads fail with EIO
/// (blkdebug) when `broken_reads`, or a blkdebug node over disk1 that QEMU
/// will refuse to back up (it unshares writes the guest export needs).
fn vm_with_bad_node(dir: &Path, broken_reads: bool) -> Vm {
    let mut rng = TestRng::new(8);
    make_disk(&dir.join("d0.raw"), 1 << 20, &mut rng);
    make_disk(&dir.join("d1.raw"), 1 << 20, &mut rng);
    make_disk(&dir.join("d2.raw"), 1 << 20, &mut rng);
    let file2 = format!(
        "driver=file,filename={},node-name=file2",
        dir.join("d2.raw").display()
    );
    if broken_reads {
        Vm::start_with(
            dir,
            &[
                "--blockdev",
                &file2,
                // raw's reads raise blkdebug's read_aio event.
                "--blockdev",
                "driver=blkdebug,node-name=dbg,image=file2,inject-error.0.event=read_aio,\
                 inject-error.0.errno=5",
                "--blockdev",
                "driver=raw,file=dbg,node-name=bad",
            ],
        )
    } else {
        Vm::start_with(
            dir,
            &["--blockdev", "driver=blkdebug,node-name=bad,image=disk1"],
        )
    }
}

fn backup_with_bad(vm: &Vm, out: &Path) -> (Option<i32>, String) {
    let o = Command::new(vma_bin!())
        .arg("backup")
        .arg("--qmp")
        .arg(vm.dir.join("qmp.sock"))
        .args(["-d", "drive-scsi0=disk0", "-d", "drive-scsi1=bad"])
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("{stderr}");
    (o.status.code(), stderr)
}

#[test]
fn a_job_error_fails_the_backup_with_qemus_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with_bad_node(dir.path(), true);
    let (code, stderr) = backup_with_bad(&vm, &dir.path().join("backup.vma"));
    assert_eq!(code, Some(133), "{stderr}");
    assert!(
        stderr.contains("backup job") && stderr.contains("Input/output error"),
        "names the job and QEMU's reason: {stderr}"
    );
    assert!(vm.alive());
    vm.assert_clean();
    no_archive_left(dir.path());
}

#[test]
fn a_refused_transaction_removes_the_nodes_it_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with_bad_node(dir.path(), false);
    // vma attached both targets, then QEMU refuses the transaction.
    let (code, stderr) = backup_with_bad(&vm, &dir.path().join("backup.vma"));
    assert_eq!(code, Some(133), "{stderr}");
    assert!(stderr.contains("can't start the backup jobs"), "{stderr}");
    assert!(vm.alive());
    vm.assert_clean();
    no_archive_left(dir.path());
}

#[test]
fn a_compressed_backup_to_stdout_with_configs() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, d0, d1) = setup(dir.path(), 10);
    let conf = dir.path().join("qemu-server.conf");
    std::fs::write(&conf, "memory: 2048\nscsi0: local:vm-100-disk-0\n").unwrap();
    let out = dir.path().join("b.vma.zst");
    let o = Command::new(vma_bin!())
        .arg("backup")
        .arg("--qmp")
        .arg(vm.dir.join("qmp.sock"))
        .arg("-c")
        .arg(&conf)
        .args(["-d", "drive-scsi0=disk0", "-d", "drive-scsi1=disk1"])
        .args(["--compress", "zstd", "-"])
        .stdout(std::fs::File::create(&out).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // zstd frames on the outside.
    assert_eq!(
        &std::fs::read(&out).unwrap()[..4],
        &[0x28, 0xb5, 0x2f, 0xfd]
    );
    let o = vma(&["config".as_ref(), out.as_os_str()]);
    assert_eq!(o.stdout, std::fs::read(&conf).unwrap());
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(ex.join("disk-drive-scsi0.raw")).unwrap() == d0);
    assert!(std::fs::read(ex.join("disk-drive-scsi1.raw")).unwrap() == d1);
    vm.assert_clean();
}

/// The "largest write N KiB" of `vma backup`'s summary line.
fn largest_write_kib(stderr: &str) -> u64 {
    let (_, rest) = stderr
        .split_once("largest write ")
        .unwrap_or_else(|| panic!("no largest write in:\n{stderr}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn max_workers_sets_the_jobs_request_size_and_both_settings_back_up_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, d0, d1) = setup(dir.path(), 11);
    let mut largest = Vec::new();
    for (name, extra) in [
        ("default.vma", &[][..]),
        ("qemu.vma", &["--max-workers", "0"][..]),
    ] {
        let out = dir.path().join(name);
        let (st, stderr) = Backup::start(&vm, &out, extra).wait();
        assert!(st.success(), "{stderr}");
        largest.push(largest_write_kib(&stderr));
        let ex = dir.path().join(format!("{name}.ex"));
        let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(ex.join("disk-drive-scsi0.raw")).unwrap() == d0);
        assert!(std::fs::read(ex.join("disk-drive-scsi1.raw")).unwrap() == d1);
    }
    // By default each request is one cluster (x-perf max-chunk); QEMU's own
    // defaults merge the disk's runs of data (up to 192 KiB here).
    assert_eq!(largest[0], 64, "default --max-workers 4");
    assert!(largest[1] > 64, "--max-workers 0: {} KiB", largest[1]);
    vm.assert_clean();
}
