//! Shared helpers for the integration, golden and compatibility tests.
//!
//! The Proxmox-written vectors live in `tests/data/vectors` (a copy of the
//! project's shared vectors, so a clean clone is self-contained).

use std::path::PathBuf;

/// `tests/data/vectors` inside the repository.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("vectors")
}

/// A file in `tests/data/vectors`.
pub fn vector(name: &str) -> PathBuf {
    vectors_dir().join(name)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a `sha256sum` file into (hash, file name) pairs.
pub fn parse_sha256_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            l.split_once("  ")
                .map(|(h, n)| (h.to_string(), n.to_string()))
        })
        .collect()
}

/// One line of a Proxmox `vma list` output (`*.list` vectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListLine {
    /// `CFG: size: N name: NAME`
    Cfg { size: u64, name: String },
    /// `DEV: dev_id=N size: N devname: NAME`
    Dev { dev_id: u8, size: u64, name: String },
    /// `CTIME: <ctime(3) text>`
    Ctime(String),
}

/// Parses `vma list` output; panics on a line it does not know (the vectors are fixed).
pub fn parse_list_file(text: &str) -> Vec<ListLine> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            if let Some(rest) = l.strip_prefix("CFG: size: ") {
                let (size, name) = rest.split_once(" name: ").expect("CFG line");
                ListLine::Cfg {
                    size: size.parse().expect("CFG size"),
                    name: name.to_string(),
                }
            } else if let Some(rest) = l.strip_prefix("DEV: dev_id=") {
                let (id, rest) = rest.split_once(" size: ").expect("DEV line");
                let (size, name) = rest.split_once(" devname: ").expect("DEV line");
                ListLine::Dev {
                    dev_id: id.parse().expect("dev_id"),
                    size: size.parse().expect("DEV size"),
                    name: name.to_string(),
                }
            } else if let Some(rest) = l.strip_prefix("CTIME: ") {
                ListLine::Ctime(rest.to_string())
            } else {
                panic!("unknown vma list line {l:?}")
            }
        })
        .collect()
}

/// Unix seconds as C `ctime(3)` prints them in UTC, without the newline
/// (`Thu Nov 26 06:49:14 2026`; day of month padded with a space).
pub fn ctime_utc(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WDAY: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        WDAY[days.rem_euclid(7) as usize],
        MON[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// A small deterministic PRNG (xorshift64*) for reproducible test content.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        TestRng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `vma` program under test: `VMA_BIN` if set (e.g. a static or release
/// build), otherwise this package's `vma-test-bin`, which cargo builds before
/// the integration tests run. A macro, because only the integration test
/// itself sees `CARGO_BIN_EXE_*`.
#[macro_export]
macro_rules! vma_bin {
    () => {
        std::env::var_os("VMA_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_vma-test-bin")))
    };
}

/// A temporary mountpoint, unmounted (lazily if need be) on drop, so a
/// failing test never leaves a mount behind.
pub struct MountDir(tempfile::TempDir);

impl MountDir {
    /// A fresh empty directory.
    #[allow(clippy::new_without_default)]
    pub fn new() -> MountDir {
        MountDir(tempfile::tempdir().unwrap())
    }
    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        use std::process::Command;
        if is_mounted(self.path()) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(self.path())
                .status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(self.path()).status();
            }
        }
    }
}

/// Whether `path` is a mountpoint of this process's mount namespace.
pub fn is_mounted(path: &std::path::Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*want))
}

/// Starts `vma create` of `mib` MiB of random data into a gzip -9 archive (slow
/// enough on one thread to be caught mid-way), sends it `sig` once its
/// temporary file exists, and checks that it exits 130 with one `vma:
/// interrupted` line and leaves nothing in the output directory.
pub fn create_interrupted_leaves_no_files(
    vma: &std::path::Path,
    sig: libc::c_int,
    mib: usize,
    seed: u64,
) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.raw");
    let mut content = vec![0u8; mib << 20];
    TestRng::new(seed).fill(&mut content);
    std::fs::write(&img, &content).unwrap();
    drop(content);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let mut child = Command::new(vma)
        .arg("create")
        .arg(outdir.join("x.vma.gz"))
        .args(["--compress", "gzip", "--level", "9", "--threads", "1"])
        .arg("-d")
        .arg(format!("format=raw:big={}", img.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_dir(&outdir).unwrap().count() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "create finished before it could be interrupted"
    );
    kill(&child, sig);
    let status = wait_timeout(&mut child, "create");
    let err = stderr_text(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(
        err.lines().filter(|l| *l == "vma: interrupted").count(),
        1,
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}; {err}");
}

/// Data ranges of a device from its raw content: maximal runs of non-zero
/// 4 KiB blocks, the last clipped to the content's length — what
/// `IndexedReader::map` must report as data.
pub fn data_ranges(content: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, b) in content.chunks(4096).enumerate() {
        if b.iter().any(|&x| x != 0) {
            let s = i as u64 * 4096;
            let e = s + b.len() as u64;
            match out.last_mut() {
                Some(l) if l.1 == s => l.1 = e,
                _ => out.push((s, e)),
            }
        }
    }
    out
}

/// Waits for `child` to exit, failing the test after 60 s ("`what` did not stop").
pub fn wait_timeout(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends signal `sig` to `child`.
pub fn kill(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// All of `child`'s piped stderr (taken from it), read to its end.
pub fn stderr_text(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr was not piped")
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// mkfifo(3) at `p` (mode 0600).
pub fn mkfifo(p: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        p.display()
    );
}

/// Runs `vma extract -r FIFO archive out` (`vma`: the prepared command) the
/// way qmrestore does: `map` is written into a FIFO in `tmp` once vma opened it.
pub fn extract_with_map(
    mut vma: std::process::Command,
    tmp: &std::path::Path,
    archive: &std::path::Path,
    out: &std::path::Path,
    map: String,
) -> std::process::Output {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = tmp.join(format!(
        "map-{}.fifo",
        out.file_name().unwrap().to_string_lossy()
    ));
    mkfifo(&fifo);
    let f2 = fifo.clone();
    let feeder = std::thread::spawn(move || {
        // Opening blocks until vma opens the FIFO for reading.
        let mut w = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
        // vma may stop reading early (empty line, error): ignore EPIPE.
        let _ = w.write_all(map.as_bytes());
    });
    let o = vma
        .arg("extract")
        .arg("-r")
        .arg(&fifo)
        .arg(archive)
        .arg(out)
        .output()
        .expect("run vma");
    if o.status.success() {
        feeder.join().unwrap();
    } else {
        // vma may fail before opening the FIFO: unblock the feeder with a
        // non-blocking reader (a blocking open would hang if vma did read it).
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        let _ = feeder.join();
    }
    o
}

/// Live (non-zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &std::path::Path) -> Vec<libc::pid_t> {
    use std::fs;
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let (Ok(cmd), Ok(stat)) = (
            fs::read(e.path().join("cmdline")),
            fs::read_to_string(e.path().join("stat")),
        ) else {
            continue;
        };
        let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
        if state != Some(Some('Z')) && cmd.windows(needle.len()).any(|w| w == needle) {
            out.push(pid);
        }
    }
    out
}

/// Runs `cmd`, failing the test unless it exits 0; returns its stdout then
/// its stderr, as text.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Polls `f` every 20 ms until it is true; fails the test after 10 s,
/// naming `what`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
