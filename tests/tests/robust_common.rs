//! Helpers shared by the `robust_*` tests (included with `#[path]`; as a
//! test target of its own it holds no tests): the `vma` binary, archives
//! written by our writer with known content, and directory snapshots.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

use vma_format::{StreamReader, Uuid, WriterBuilder};
use vma_tests::TestRng;

pub const CLUSTER: usize = 65536;

pub use vma_tests::vma_bin;

pub fn vma() -> Command {
    Command::new(vma_bin!())
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run vma")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `vma <args>` with stdout and stderr piped, reading a pipe fed `feed`
/// bytes. The write end is returned open: no EOF arrives until it drops.
pub fn spawn_fed(args: &[&OsStr], feed: &[u8]) -> (Child, ChildStdin) {
    let mut child = vma()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(feed).unwrap();
    stdin.flush().unwrap();
    (child, stdin)
}

/// `vma extract - OUT` fed `feed` bytes through a pipe that stays open,
/// once both outputs exist (its two DEVINFO lines). Also returns the rest of
/// its stdout: dropping it closes that pipe.
pub fn stalled_extract(
    feed: &[u8],
    out: &Path,
) -> (Child, ChildStdin, Lines<BufReader<ChildStdout>>) {
    let (mut child, stdin) = spawn_fed(&["extract".as_ref(), "-".as_ref(), out.as_os_str()], feed);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let l = lines.next().unwrap().unwrap();
        assert!(l.starts_with("DEVINFO "), "{l}");
    }
    (child, stdin, lines)
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One disk of a test archive and its content.
pub struct Disk {
    pub name: String,
    pub data: Vec<u8>,
}

/// Where each extent of an archive starts and which (dev_id, cluster) it holds.
pub struct ExtentInfo {
    pub offset: u64,
    pub clusters: Vec<(u8, u32)>,
}

/// An archive written by our writer, with its disks' content and extent map.
pub struct Archive {
    pub bytes: Vec<u8>,
    pub disks: Vec<Disk>,
    pub extents: Vec<ExtentInfo>,
}

/// Disk content: random data with some all-zero clusters and zero blocks, so
/// every cluster differs from every other and holes exist.
fn content(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = TestRng::new(seed);
    let mut v = vec![0u8; size];
    rng.fill(&mut v);
    for (i, c) in v.chunks_mut(CLUSTER).enumerate() {
        match i % 5 {
            3 => c.fill(0),
            1 => {
                let n = c.len().min(8192);
                c[..n].fill(0);
            }
            _ => {}
        }
    }
    v
}

/// Writes an archive with the given (name, size) disks and one config,
/// clusters interleaved round-robin across disks so extents mix devices.
pub fn make_archive(disks: &[(&str, usize)]) -> Archive {
    let mut b = WriterBuilder::new();
    b.uuid(Uuid::from_u128(0x1234_5678_9abc_def0_0fed_cba9_8765_4321));
    b.ctime(1_700_000_000);
    b.add_config("qemu-server.conf", b"memory: 512\n".to_vec())
        .unwrap();
    let mut list = Vec::new();
    for (i, (name, size)) in disks.iter().enumerate() {
        let id = b.add_device(*name, *size as u64).unwrap();
        list.push((
            id,
            Disk {
                name: name.to_string(),
                data: content(i as u64 + 7, *size),
            },
        ));
    }
    let w = b.build(Vec::new()).unwrap();
    let max = list
        .iter()
        .map(|(_, d)| d.data.len().div_ceil(CLUSTER))
        .max()
        .unwrap_or(0);
    for c in 0..max {
        for (id, d) in &list {
            if let Some(chunk) = d.data.chunks(CLUSTER).nth(c) {
                w.write_cluster(*id, c as u32, chunk).unwrap();
            }
        }
    }
    let (bytes, _) = w.finish().unwrap();
    let extents = extent_map(&bytes);
    Archive {
        bytes,
        disks: list.into_iter().map(|(_, d)| d).collect(),
        extents,
    }
}

/// The extents of an intact archive.
pub fn extent_map(bytes: &[u8]) -> Vec<ExtentInfo> {
    let mut r = StreamReader::new(bytes).unwrap();
    let mut out = Vec::new();
    loop {
        let offset = r.offset();
        let Some(ext) = r.next_extent().unwrap() else {
            break;
        };
        out.push(ExtentInfo {
            offset,
            clusters: ext.clusters().map(|c| (c.dev_id, c.cluster)).collect(),
        });
    }
    out
}

/// Runs `cmd`, returns its output and the child's peak RSS in KiB (wait4's
/// ru_maxrss, which covers only this child).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> (Output, i64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vma");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let mut stderr = Vec::new();
    err.read_to_end(&mut stderr).unwrap();
    let stdout = t.join().unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child's pid, which
    // `Child` has not reaped (we never called wait on it).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    use std::os::unix::process::ExitStatusExt;
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
    };
    (output, ru.ru_maxrss)
}

/// A tmpfs of `size` mounted on a fresh temporary directory (needs root),
/// unmounted on drop (lazily if still busy) so a failing test leaves nothing.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts a tmpfs and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
