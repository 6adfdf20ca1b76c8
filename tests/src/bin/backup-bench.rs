//! `backup-bench`: `vma backup` of a running QEMU (qemu-storage-daemon as the
//! VM, one raw disk, its NBD export as the guest's write path), issue 13.
//!
//! 1. Idle disk: `vma backup` against its floor, `qemu-img convert -O raw` of
//!    the same node over NBD into a file on the same filesystem, and against
//!    `vma create` from the image file; run alternately, medians, peak RSS.
//! 2. A guest writing 4 KiB random writes at a fixed rate (an NBD client in
//!    this harness, queue depth 1): p50/p99 write latency with no backup,
//!    with copy-before-write alone (the job held back: the cost every write
//!    into a not-yet-copied cluster pays), during a backup to a local file (default `--max-workers`, and QEMU's
//!    own job defaults), with `--bwlimit`, and during one into a sink throttled
//!    to `--slow-mbps` MB/s (`exec:` this harness with `--sink`). The
//!    phases run interleaved so that they share the machine's load.
//! 3. Counted I/O per guest write during a backup: the job is held back
//!    with `--bwlimit 1`, the guest writes N distinct not-yet-copied data
//!    clusters while `strace` counts qemu-storage-daemon's system calls
//!    (QEMU keeps no blockstats for nodes without a device): reads and
//!    writes of the disk file, bytes sent to `vma`'s NBD socket, and the
//!    bytes `vma` reads and writes (/proc/PID/io).
//!
//! ```sh
//! cargo build --release -p vma-cli -p vma-tests --bin vma --bin backup-bench
//! target/release/backup-bench --size-mib 2048 --runs 3 --dir /var/tmp/vma-backup-bench
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const CLUSTER: u64 = 65536;

struct Opts {
    size_mib: u64,
    runs: usize,
    dir: PathBuf,
    vma: PathBuf,
    rate: u64,
    base_secs: u64,
    slow_mbps: u64,
    count_writes: u64,
    /// Which parts to run (1 idle, 2 latency, 3 counted I/O).
    parts: String,
    /// Nice value of the guest writer thread (negative: ahead of the rest).
    writer_nice: i32,
}

fn die(msg: &str) -> ! {
    eprintln!("backup-bench: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        size_mib: 2048,
        runs: 3,
        dir: PathBuf::from("/var/tmp/vma-backup-bench"),
        vma: std::env::current_exe().expect("exe").with_file_name("vma"),
        rate: 500,
        base_secs: 4,
        slow_mbps: 50,
        count_writes: 512,
        parts: "1,2,3".into(),
        writer_nice: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        let num = |v: String| v.parse().unwrap_or_else(|_| die(&format!("bad {a}")));
        match a.as_str() {
            "--size-mib" => o.size_mib = num(val()),
            "--runs" => o.runs = num(val()) as usize,
            "--dir" => o.dir = PathBuf::from(val()),
            "--vma" => o.vma = PathBuf::from(val()),
            "--rate" => o.rate = num(val()),
            "--base-secs" => o.base_secs = num(val()),
            "--slow-mbps" => o.slow_mbps = num(val()),
            "--count-writes" => o.count_writes = num(val()),
            "--parts" => o.parts = val(),
            "--writer-nice" => {
                o.writer_nice = val().parse().unwrap_or_else(|_| die("bad --writer-nice"))
            }
            "--sink" => {
                // Internal: the throttled archive reader behind `exec:`.
                let mbps = num(val());
                sink(mbps, Path::new(&val()));
            }
            "-h" | "--help" => {
                println!("usage: backup-bench [--size-mib N] [--runs N] [--dir DIR] [--vma PATH] [--rate WRITES_PER_S] [--base-secs N] [--slow-mbps N] [--count-writes N] [--parts 1,2,3] [--writer-nice N]");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    o
}

/// Copies stdin to `path` at no more than `mbps` MB/s (10^6 bytes), paced
/// per 64 KiB read: a slow archive disk, as the issue asks.
fn sink(mbps: u64, path: &Path) -> ! {
    let mut out = File::create(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => die(&format!("sink: {e}")),
        };
        out.write_all(&buf[..n])
            .unwrap_or_else(|e| die(&format!("sink: {e}")));
        total += n as u64;
        let due = Duration::from_secs_f64(total as f64 / (mbps as f64 * 1e6));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    std::process::exit(0)
}

/// xorshift64*, as vma-bench.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The disk: 25 % of the 64 KiB clusters random data, the rest holes.
/// Returns the data clusters.
fn generate(path: &Path, size: u64) -> Vec<u64> {
    let f = File::create(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    f.set_len(size).expect("set_len");
    let mut rng = Rng(0x6261_636b_7570);
    let mut buf = vec![0u8; CLUSTER as usize];
    let mut data = Vec::new();
    for c in 0..size / CLUSTER {
        if rng.next().is_multiple_of(4) {
            rng.fill(&mut buf);
            f.write_all_at(&buf, c * CLUSTER).expect("write image");
            data.push(c);
        }
    }
    f.sync_all().expect("sync image");
    data
}

fn wait4(pid: i32) -> (std::process::ExitStatus, i64) {
    let mut status = 0;
    // SAFETY: plain libc call with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r < 0 {
        die(&format!("wait4: {}", std::io::Error::last_os_error()));
    }
    (std::process::ExitStatus::from_raw(status), ru.ru_maxrss)
}

/// Runs argv to completion: (seconds, peak RSS KiB).
fn timed(argv: &[&str]) -> (f64, i64) {
    let t = Instant::now();
    // Reaped by wait4 (Child::wait would not give the rusage).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", argv[0])));
    let (st, rss) = wait4(child.id() as i32);
    let secs = t.elapsed().as_secs_f64();
    if !st.success() {
        let mut err = String::new();
        let _ = child.stderr.expect("piped").read_to_string(&mut err);
        die(&format!("{argv:?} failed ({st}): {err}"));
    }
    (secs, rss)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn wait_path(p: &Path) {
    let start = Instant::now();
    while UnixStream::connect(p).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            die(&format!("{}: no server", p.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// qemu-storage-daemon as the VM: node disk0 over file0, QMP on qmp.sock
/// (for `vma`) and watch.sock (ours), the guest's NBD export on guest.sock.
struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Vm {
    fn start(dir: &Path, img: &Path) -> Vm {
        for s in ["qmp.sock", "watch.sock", "guest.sock"] {
            let _ = std::fs::remove_file(dir.join(s));
        }
        let p = |n: &str| dir.join(n).display().to_string();
        let child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!("driver=file,filename={},node-name=file0", img.display()),
                "--blockdev",
                "driver=raw,file=file0,node-name=disk0",
                "--chardev",
                &format!("socket,path={},server=on,wait=off,id=q0", p("qmp.sock")),
                "--monitor",
                "chardev=q0",
                "--chardev",
                &format!("socket,path={},server=on,wait=off,id=q1", p("watch.sock")),
                "--monitor",
                "chardev=q1",
                "--nbd-server",
                &format!("addr.type=unix,addr.path={}", p("guest.sock")),
                "--export",
                "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("qemu-storage-daemon: {e}")));
        for s in ["qmp.sock", "watch.sock", "guest.sock"] {
            wait_path(&dir.join(s));
        }
        Vm {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn guest_uri(&self) -> String {
        format!(
            "nbd+unix:///disk0?socket={}",
            self.dir.join("guest.sock").display()
        )
    }

    /// One QMP command on our own monitor; returns the reply line.
    fn qmp(&self, cmd: &str) -> String {
        let mut s = UnixStream::connect(self.dir.join("watch.sock")).expect("watch.sock");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP greeting");
        let mut reply = String::new();
        for c in [r#"{"execute":"qmp_capabilities"}"#, cmd] {
            writeln!(s, "{c}").expect("QMP write");
            loop {
                reply.clear();
                if r.read_line(&mut reply).unwrap_or(0) == 0 {
                    die(&format!("QMP closed on {c}"));
                }
                if !reply.starts_with(r#"{"event""#) && !reply.contains(r#""event":"#) {
                    break;
                }
            }
            if !reply.contains("\"return\"") {
                die(&format!("QMP {c}: {reply}"));
            }
        }
        reply
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal NBD client (fixed newstyle, EXPORT_NAME, simple replies):
/// the guest's write path.
struct Nbd(UnixStream);

impl Nbd {
    fn connect(sock: &Path, export: &str) -> Nbd {
        let mut s = UnixStream::connect(sock).unwrap_or_else(|e| die(&format!("guest NBD: {e}")));
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("NBD greeting");
        assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT", "NBD greeting");
        // FIXED_NEWSTYLE | NO_ZEROES.
        s.write_all(&3u32.to_be_bytes()).expect("NBD flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).expect("NBD option");
        let mut info = [0u8; 10];
        s.read_exact(&mut info).expect("NBD export info");
        Nbd(s)
    }

    fn write(&mut self, offset: u64, data: &[u8], handle: u64) {
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&(data.len() as u32).to_be_bytes());
        req.extend_from_slice(data);
        self.0.write_all(&req).expect("NBD write");
        let mut rep = [0u8; 16];
        self.0.read_exact(&mut rep).expect("NBD reply");
        let err = u32::from_be_bytes(rep[4..8].try_into().expect("4"));
        if rep[..4] != 0x6744_6698u32.to_be_bytes() || err != 0 {
            die(&format!("guest write at {offset} failed: error {err}"));
        }
    }
}

struct Writes {
    lat: Vec<f64>,
    lag: Vec<f64>,
    late: u64,
}

/// Writes 4 KiB at random 4 KiB-aligned offsets, `rate` per second on a
/// fixed schedule, until `stop`. Returns each write's latency in ms (send
/// to reply), how far each reply came after the write's slot in ms (what
/// a guest on a fixed schedule sees, queueing included), and how many
/// writes were issued late (the previous one overran their slot).
fn guest_writer(
    nice: i32,
    sock: PathBuf,
    size: u64,
    rate: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Writes> {
    std::thread::spawn(move || {
        if nice != 0 {
            // SAFETY: setpriority(2) of this thread (a tid is a PRIO_PROCESS id on Linux).
            let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, nice) };
            if r != 0 {
                die(&format!("setpriority: {}", std::io::Error::last_os_error()));
            }
        }
        let mut nbd = Nbd::connect(&sock, "disk0");
        let mut rng = Rng(seed | 1);
        let mut data = vec![0u8; 4096];
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        let mut lat = Vec::new();
        let mut lag = Vec::new();
        let mut late = 0;
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let due = start + period * i;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else if i > 0 {
                late += 1;
            }
            rng.fill(&mut data[..64]);
            let off = rng.next() % (size / 4096) * 4096;
            let t = Instant::now();
            nbd.write(off, &data, i as u64);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            lag.push(due.elapsed().as_secs_f64() * 1e3);
            i += 1;
        }
        Writes { lat, lag, late }
    })
}

/// A running `vma backup` with its stderr collected; `started` fires when
/// the jobs run.
struct Backup {
    child: Child,
    t0: Instant,
    started: mpsc::Receiver<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl Backup {
    fn start(o: &Opts, vm: &Vm, out: &str, extra: &[&str]) -> Backup {
        let t0 = Instant::now();
        let mut child = Command::new(&o.vma)
            .arg("backup")
            .arg("--qmp")
            .arg(vm.dir.join("qmp.sock"))
            .args(["-d", "drive-scsi0=disk0"])
            .args(extra)
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("{}: {e}", o.vma.display())));
        let (tx, started) = mpsc::channel();
        let err = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("backup: started") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Backup {
            child,
            t0,
            started,
            stderr,
        }
    }

    fn wait_started(&self) {
        if self.started.recv_timeout(Duration::from_secs(60)).is_err() {
            die("vma backup did not start its jobs");
        }
    }

    /// Waits for the exit: (seconds since start, peak RSS KiB, stderr).
    fn finish(self) -> (f64, i64, String) {
        let (st, rss) = wait4(self.child.id() as i32);
        let secs = self.t0.elapsed().as_secs_f64();
        let stderr = self.stderr.join().expect("stderr thread");
        if !st.success() {
            die(&format!("vma backup failed ({st}):\n{stderr}"));
        }
        (secs, rss, stderr)
    }
}

fn rm(p: &Path) {
    let _ = std::fs::remove_file(p);
}

fn summary_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.contains("writes delayed"))
        .unwrap_or("")
        .trim_start_matches("backup: ")
        .to_string()
}

/// Part 1: idle disk, three commands alternately.
fn idle(o: &Opts, vm: &Vm, img: &Path) {
    let vma = o.vma.to_str().expect("utf-8");
    let (conv, bk, cr) = (
        o.dir.join("convert.raw"),
        o.dir.join("backup.vma"),
        o.dir.join("create.vma"),
    );
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut rss = [0i64; 4];
    let mut summary = String::new();
    for _ in 0..o.runs {
        rm(&conv);
        let (s, r) = timed(&[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &vm.guest_uri(),
            conv.to_str().expect("utf-8"),
        ]);
        t[0].push(s);
        rss[0] = rss[0].max(r);
        rm(&conv);
        rm(&bk);
        let b = Backup::start(o, vm, bk.to_str().expect("utf-8"), &[]);
        let (s, r, err) = b.finish();
        t[1].push(s);
        rss[1] = rss[1].max(r);
        summary = summary_line(&err);
        rm(&bk);
        let b = Backup::start(o, vm, bk.to_str().expect("utf-8"), &["--max-workers", "0"]);
        let (s, r, _) = b.finish();
        t[3].push(s);
        rss[3] = rss[3].max(r);
        rm(&bk);
        rm(&cr);
        let (s, r) = timed(&[
            vma,
            "create",
            cr.to_str().expect("utf-8"),
            "-d",
            &format!("format=raw:drive-scsi0={}", img.display()),
        ]);
        t[2].push(s);
        rss[2] = rss[2].max(r);
        rm(&cr);
    }
    let floor = median(t[0].clone());
    println!(
        "### 1. Idle disk: time, medians of {} alternate runs\n",
        o.runs
    );
    println!("| command | median | runs | ratio to floor | peak RSS |");
    println!("|---|---:|---|---:|---:|");
    let names = [
        "`qemu-img convert -f raw -O raw NBD-export out.raw` (floor)",
        "`vma backup --qmp … -d drive-scsi0=disk0 out.vma`",
        "`vma create out.vma -d format=raw:drive-scsi0=disk.raw`",
        "`vma backup --max-workers 0 …` (QEMU's job defaults)",
    ];
    for (i, n) in names.iter().enumerate() {
        let m = median(t[i].clone());
        let runs: Vec<String> = t[i].iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "| {n} | {m:.3} s | {} | {:.2}× | {:.1} MiB |",
            runs.join(" / "),
            m / floor,
            rss[i] as f64 / 1024.0
        );
    }
    println!("\nvma backup's summary (last run): {summary}\n");
}

struct Phase {
    name: String,
    lat: Vec<f64>,
    lag: Vec<f64>,
    run_p99: Vec<f64>,
    late: u64,
    secs: Vec<f64>,
    rss: i64,
    summary: String,
}

impl Phase {
    fn add(&mut self, w: Writes) {
        let mut v = w.lat.clone();
        v.sort_by(f64::total_cmp);
        self.run_p99.push(pct(&v, 0.99));
        self.lat.extend(w.lat);
        self.lag.extend(w.lag);
        self.late += w.late;
    }
}

/// Part 2: guest write latency without a backup, during a fast one and
/// during one into a throttled sink, interleaved.
fn latency(o: &Opts, vm: &Vm, size: u64) {
    let sock = vm.dir.join("guest.sock");
    let me = std::env::current_exe().expect("exe");
    let fast = o.dir.join("fast.vma");
    let slow = o.dir.join("slow.vma");
    let slow_out = format!(
        "exec:{} --sink {} {}",
        me.display(),
        o.slow_mbps,
        slow.display()
    );
    let mut phases: Vec<Phase> = [
        "no backup".to_string(),
        "copy-before-write into QEMU's null-co (no vma, no NBD; job held back)".to_string(),
        "copy-before-write only (job held back by `--bwlimit 1`)".to_string(),
        "backup to a local file".to_string(),
        "backup to a local file, `--max-workers 0` (QEMU's job defaults)".to_string(),
        "backup to a local file, `--bwlimit 204800` (200 MiB/s)".to_string(),
        format!("backup into a {} MB/s sink", o.slow_mbps),
    ]
    .into_iter()
    .map(|name| Phase {
        name,
        lat: Vec::new(),
        lag: Vec::new(),
        run_p99: Vec::new(),
        late: 0,
        secs: Vec::new(),
        rss: 0,
        summary: String::new(),
    })
    .collect();
    let mut seed = 1;
    for _ in 0..o.runs {
        for (k, phase) in phases.iter_mut().enumerate() {
            seed += 1;
            let stop = Arc::new(AtomicBool::new(false));
            if k == 0 {
                phase.add(write_for_base_secs(o, &sock, size, seed));
                phase.secs.push(o.base_secs as f64);
                continue;
            }
            if k == 1 {
                phase.add(null_target_cbw(o, vm, size, seed));
                phase.secs.push(o.base_secs as f64);
                continue;
            }
            rm(&fast);
            rm(&slow);
            let (out, extra) = match k {
                2 => (fast.display().to_string(), &["--bwlimit", "1"][..]),
                3 => (fast.display().to_string(), &[][..]),
                4 => (fast.display().to_string(), &["--max-workers", "0"][..]),
                5 => (fast.display().to_string(), &["--bwlimit", "204800"][..]),
                _ => (slow_out.clone(), &[][..]),
            };
            let b = Backup::start(o, vm, &out, extra);
            b.wait_started();
            let w = guest_writer(
                o.writer_nice,
                sock.clone(),
                size,
                o.rate,
                seed,
                stop.clone(),
            );
            if k == 2 {
                // The job copies 1 KiB/s: the guest's writes into clusters not
                // copied yet (nearly all) pay copy-before-write and nothing else
                // competes; then the job runs to the end at full speed.
                std::thread::sleep(Duration::from_secs(o.base_secs));
                stop.store(true, Ordering::Relaxed);
                vm.qmp(&format!(
                    r#"{{"execute":"block-job-set-speed","arguments":{{"device":"vma-backup-{}-job0","speed":0}}}}"#,
                    b.child.id()
                ));
            }
            let (secs, rss, err) = b.finish();
            stop.store(true, Ordering::Relaxed);
            let w = w.join().expect("writer");
            phase.add(w);
            phase.secs.push(secs);
            phase.rss = phase.rss.max(rss);
            phase.summary = summary_line(&err);
            rm(&fast);
            rm(&slow);
        }
    }
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        pct(&v, q)
    };
    let base99 = p(&phases[0].lat, 0.99);
    println!(
        "### 2. Guest 4 KiB random writes at {} /s (queue depth 1, writer nice {}), {} runs interleaved\n",
        o.rate, o.writer_nice, o.runs
    );
    println!("| phase | writes | p50 ms | p99 ms | p99 per run | max ms | p99 ÷ no-backup p99 | reply after slot p50 / p99 ms | late slots | backup time (runs) | vma peak RSS |");
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|");
    for ph in &phases {
        let runs: Vec<String> = ph.secs.iter().map(|s| format!("{s:.1}")).collect();
        println!(
            "| {} | {} | {:.3} | {:.3} | {} | {:.1} | {:.2}× | {:.2} / {:.1} | {} | {} s | {} |",
            ph.name,
            ph.lat.len(),
            p(&ph.lat, 0.5),
            p(&ph.lat, 0.99),
            ph.run_p99
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            p(&ph.lat, 1.0),
            p(&ph.lat, 0.99) / base99,
            p(&ph.lag, 0.5),
            p(&ph.lag, 0.99),
            ph.late,
            runs.join(" / "),
            if ph.rss > 0 {
                format!("{:.1} MiB", ph.rss as f64 / 1024.0)
            } else {
                "—".into()
            }
        );
    }
    for ph in &phases[1..] {
        println!("\n{}: {}", ph.name, ph.summary);
    }
    println!();
}

/// The guest writing for `--base-secs` (no backup job of ours involved).
fn write_for_base_secs(o: &Opts, sock: &Path, size: u64, seed: u64) -> Writes {
    let stop = Arc::new(AtomicBool::new(false));
    let w = guest_writer(
        o.writer_nice,
        sock.to_path_buf(),
        size,
        o.rate,
        seed,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(o.base_secs));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer")
}

/// The guest's writes while QEMU's backup job copies into its `null-co`
/// driver (writes discarded, in-process): what copy-before-write costs QEMU
/// itself, without vma and without NBD. The job is held back (speed 1 B/s)
/// so that nearly every write lands in a cluster not copied yet.
fn null_target_cbw(o: &Opts, vm: &Vm, size: u64, seed: u64) -> Writes {
    vm.qmp(&format!(
        r#"{{"execute":"blockdev-add","arguments":{{"driver":"null-co","node-name":"bench-null","size":{size}}}}}"#
    ));
    vm.qmp(
        r#"{"execute":"blockdev-backup","arguments":{"job-id":"bench-null-job","device":"disk0","target":"bench-null","sync":"full","speed":1,"x-perf":{"max-workers":4,"max-chunk":65536}}}"#,
    );
    let w = write_for_base_secs(o, &vm.dir.join("guest.sock"), size, seed);
    vm.qmp(
        r#"{"execute":"block-job-cancel","arguments":{"device":"bench-null-job","force":true}}"#,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while vm
        .qmp(r#"{"execute":"query-jobs"}"#)
        .contains("bench-null-job")
    {
        if Instant::now() > deadline {
            die("the null-co backup job did not go away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    vm.qmp(r#"{"execute":"blockdev-del","arguments":{"node-name":"bench-null"}}"#);
    w
}

/// /proc/PID/io as (rchar, wchar); rchar misses socket recv(2).
fn proc_io(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("rchar:"), get("wchar:"))
}

/// A send on the NBD client socket QEMU opened to `vma`'s private
/// socket: a Unix stream without a name of ours (strace -yy shows the
/// name of named sockets: the guest export's and the monitors').
fn is_target_send(line: &str, call: &str) -> bool {
    (call.starts_with("sendmsg") || call.starts_with("writev") || call.starts_with("write("))
        && line.contains("UNIX-STREAM")
        && !["guest.sock", "qmp.sock", "watch.sock"]
            .iter()
            .any(|s| line.contains(s))
}

/// Part 3: counted I/O per guest write into a not-yet-copied data cluster.
fn counted(o: &Opts, vm: &Vm, img: &Path, data: &[u64]) {
    let out = o.dir.join("count.vma");
    rm(&out);
    // The job copies 1 KiB/s: nothing of its own during the window.
    let b = Backup::start(o, vm, out.to_str().expect("utf-8"), &["--bwlimit", "1"]);
    b.wait_started();
    std::thread::sleep(Duration::from_secs(1));
    let vma_pid = b.child.id();
    // Distinct data clusters in the second half of the disk, spread out.
    let half = o.size_mib * (1 << 20) / CLUSTER / 2;
    let cand: Vec<u64> = data.iter().copied().filter(|&c| c >= half).collect();
    let n = (o.count_writes as usize).min(cand.len());
    let step = cand.len() / n.max(1);
    let targets: Vec<u64> = (0..n).map(|i| cand[i * step]).collect();
    let trace = o.dir.join("strace.txt");
    rm(&trace);
    let mut st = Command::new("strace")
        .args(["-f", "-yy", "-qq", "-e", "trace=pread64,preadv,preadv2,pwrite64,pwritev,pwritev2,sendmsg,writev,write,io_uring_enter", "-o"])
        .arg(&trace)
        .arg("-p")
        .arg(vm.child.id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("strace: {e}")));
    std::thread::sleep(Duration::from_secs(2));
    let io0 = proc_io(vma_pid);
    let mut nbd = Nbd::connect(&vm.dir.join("guest.sock"), "disk0");
    let buf = vec![0xa5u8; 4096];
    for (i, c) in targets.iter().enumerate() {
        nbd.write(c * CLUSTER + 8192, &buf, i as u64);
    }
    // Let vma's writer take what the queue holds.
    std::thread::sleep(Duration::from_secs(2));
    let io1 = proc_io(vma_pid);
    // SAFETY: kill(2) of the strace we started.
    unsafe { libc::kill(st.id() as i32, libc::SIGINT) };
    let _ = st.wait();
    // Let the job run at full speed to the end.
    vm.qmp(&format!(
        r#"{{"execute":"block-job-set-speed","arguments":{{"device":"vma-backup-{vma_pid}-job0","speed":0}}}}"#
    ));
    let (_, rss, err) = b.finish();
    let vfy = Command::new(&o.vma).arg("verify").arg(&out).output();
    let verified = vfy.is_ok_and(|v| v.status.success());
    rm(&out);

    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let img_name = img
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (mut rd, mut rd_b, mut wr, mut wr_b, mut tgt, mut tgt_b, mut uring) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    // strace -f splits calls that block into "<unfinished ...>" and
    // "<... NAME resumed>" lines: join them per thread.
    let mut pending = std::collections::HashMap::new();
    let mut calls = Vec::new();
    for l in text.lines() {
        let pid = l.split_whitespace().next().unwrap_or("").to_string();
        if let Some(head) = l.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, head.to_string());
        } else if let Some((_, tail)) = l.split_once(" resumed>") {
            if let Some(head) = pending.remove(&pid) {
                calls.push(head + tail);
            }
        } else {
            calls.push(l.to_string());
        }
    }
    for l in &calls {
        let ret: u64 = l
            .rsplit(" = ")
            .next()
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let call = l.split_whitespace().nth(1).unwrap_or("");
        if call.starts_with("io_uring_enter") {
            uring += 1;
        }
        if l.contains(&format!("{img_name}>")) {
            if call.starts_with("pread") {
                rd += 1;
                rd_b += ret;
            } else if call.starts_with("pwrite") {
                wr += 1;
                wr_b += ret;
            }
        } else if is_target_send(l, call) {
            tgt += 1;
            tgt_b += ret;
        }
    }
    let nf = n as f64;
    println!(
        "### 3. Counted I/O: {n} guest 4 KiB writes, each into a distinct not-yet-copied data cluster\n"
    );
    println!("The job held back with `--bwlimit 1`; qemu-storage-daemon's system calls counted with `strace -f`; vma's bytes from /proc/PID/io.\n");
    println!("| I/O | count | per guest write | bytes per guest write |");
    println!("|---|---:|---:|---:|");
    println!(
        "| source reads (pread/preadv of the disk image by QEMU) | {rd} | {:.2} | {:.0} |",
        rd as f64 / nf,
        rd_b as f64 / nf
    );
    println!(
        "| disk writes (pwrite/pwritev of the disk image: the guest's own) | {wr} | {:.2} | {:.0} |",
        wr as f64 / nf,
        wr_b as f64 / nf
    );
    println!(
        "| sends to vma's NBD socket (QEMU → vma: the request header and the 64 KiB cluster) | {tgt} | {:.2} | {:.0} |",
        tgt as f64 / nf,
        tgt_b as f64 / nf
    );
    println!(
        "| vma: bytes written (wchar: archive extents + NBD replies; the last extent is still buffered) | — | — | {:.0} |",
        (io1.1 - io0.1) as f64 / nf
    );
    println!(
        "\nio_uring_enter calls seen: {uring} (0 means every disk access was a plain syscall, so counted above). \
         Archive verified afterwards: {verified}. vma peak RSS: {:.1} MiB. Summary: {}\n",
        rss as f64 / 1024.0,
        summary_line(&err)
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let qemu = Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "Machine: {cores} CPUs ({cpu}); {qemu}; load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() {
    let o = parse_args();
    std::fs::create_dir_all(&o.dir).unwrap_or_else(|e| die(&format!("{}: {e}", o.dir.display())));
    let size = o.size_mib << 20;
    let img = o.dir.join("disk.raw");
    let data = generate(&img, size);
    println!("{}\n", machine());
    println!(
        "Disk: {} MiB raw, {} of {} clusters random data (the rest holes), page cache warm.\n",
        o.size_mib,
        data.len(),
        size / CLUSTER
    );
    let vm = Vm::start(&o.dir, &img);
    // Warm the page cache.
    let _ = timed(&["cat", img.to_str().expect("utf-8")]);
    let part = |n: &str| o.parts.split(',').any(|p| p == n);
    if part("1") {
        idle(&o, &vm, &img);
    }
    if part("3") {
        counted(&o, &vm, &img, &data);
    }
    if part("2") {
        latency(&o, &vm, size);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Load average at the end: {load}");
    drop(vm);
    rm(&img);
}
