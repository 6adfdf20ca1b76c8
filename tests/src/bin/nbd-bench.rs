//! `nbd-bench`: `vma serve` against `qemu-nbd -r` serving the same disk as a
//! raw file, with the same clients: `nbdcopy` to `null:` (sequential
//! throughput) and `qemu-img bench` 4 KiB reads at queue depth 1 and 16. The
//! reads step through the disk by a prime number of 4 KiB blocks (mod the
//! disk size: qemu-img bench wraps), so they land scattered over the whole
//! disk, data and holes alike. Servers run interleaved, medians of `--runs`.
//!
//! ```sh
//! cargo build --release -p vma-cli -p vma-tests --bin vma --bin nbd-bench
//! target/release/nbd-bench --size-mib 512 --runs 3 --dir /var/tmp/vma-nbd-bench
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    size_mib: u64,
    runs: usize,
    count: u64,
    dir: PathBuf,
    vma: PathBuf,
}

fn die(msg: &str) -> ! {
    eprintln!("nbd-bench: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        size_mib: 512,
        runs: 3,
        count: 50_000,
        dir: PathBuf::from("/var/tmp/vma-nbd-bench"),
        vma: std::env::current_exe().expect("exe").with_file_name("vma"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--size-mib" => o.size_mib = val().parse().unwrap_or_else(|_| die("bad --size-mib")),
            "--runs" => o.runs = val().parse().unwrap_or_else(|_| die("bad --runs")),
            "--count" => o.count = val().parse().unwrap_or_else(|_| die("bad --count")),
            "--dir" => o.dir = PathBuf::from(val()),
            "--vma" => o.vma = PathBuf::from(val()),
            _ => die(&format!("unknown argument {a}")),
        }
    }
    o
}

/// A deterministic image: per 64 KiB cluster, 40 % zero, 40 % random, 20 %
/// random in every other 4 KiB block.
fn generate(path: &Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let mut rng = vma_tests::TestRng::new(0x6e62_6462);
    let mut out = Vec::with_capacity(size as usize);
    let mut c = vec![0u8; 65536];
    for _ in 0..size / 65536 {
        c.fill(0);
        match rng.below(10) {
            0..=3 => {}
            4..=7 => rng.fill(&mut c),
            _ => {
                for b in (0..16).step_by(2) {
                    rng.fill(&mut c[b * 4096..(b + 1) * 4096]);
                }
            }
        }
        out.extend_from_slice(&c);
    }
    std::fs::write(path, out).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| die(&format!("{cmd:?}: {e}")));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        die(&format!("{cmd:?} failed: {text}"));
    }
    text
}

fn wait_socket(p: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(p).is_err() {
        if start.elapsed() > Duration::from_secs(120) {
            die(&format!("{}: no server", p.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn uri(sock: &Path) -> String {
    format!("nbd+unix:///drive-scsi0?socket={}", sock.display())
}

/// Seconds of `nbdcopy URI null:`.
fn copy_secs(sock: &Path) -> f64 {
    let t = Instant::now();
    check(Command::new("nbdcopy").arg(uri(sock)).arg("null:"));
    t.elapsed().as_secs_f64()
}

/// Reads/s of `qemu-img bench`, 4 KiB at `depth`.
fn bench_iops(sock: &Path, count: u64, depth: u32) -> f64 {
    let text = check(Command::new("qemu-img").args([
        "bench",
        "-f",
        "raw",
        "-c",
        &count.to_string(),
        "-d",
        &depth.to_string(),
        "-s",
        "4096",
        "-S",
        &(4096u64 * 7919).to_string(),
        &uri(sock),
    ]));
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|r| r.trim_end_matches(" seconds.").parse().ok())
        .unwrap_or_else(|| die(&format!("qemu-img bench output: {text}")));
    count as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Server {
    name: &'static str,
    sock: PathBuf,
    child: Option<Child>,
}

fn main() {
    let o = parse_args();
    std::fs::create_dir_all(&o.dir).unwrap_or_else(|e| die(&format!("{}: {e}", o.dir.display())));
    let size = o.size_mib << 20;
    let img = o.dir.join("disk.raw");
    generate(&img, size);
    let vma = o.vma.to_str().expect("utf-8 path");
    let mut servers = Vec::new();
    for (name, file, extra) in [
        ("vma serve (.vma)", "a.vma", &[][..]),
        (
            "vma serve (create --compress zstd)",
            "a.vma.zst",
            &["--compress", "zstd"][..],
        ),
    ] {
        let archive = o.dir.join(file);
        if !archive.exists() {
            check(
                Command::new(vma)
                    .arg("create")
                    .arg(&archive)
                    .args(extra)
                    .arg("-d")
                    .arg(format!("format=raw:drive-scsi0={}", img.display())),
            );
        }
        let sock = o.dir.join(format!("{file}.sock"));
        let child = Command::new(vma)
            .args(["serve", "--foreground", "--socket"])
            .arg(&sock)
            .arg(&archive)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("{vma}: {e}")));
        wait_socket(&sock);
        servers.push(Server {
            name,
            sock,
            child: Some(child),
        });
    }
    let qsock = o.dir.join("qemu-nbd.sock");
    let qpid = o.dir.join("qemu-nbd.pid");
    check(
        Command::new("qemu-nbd")
            .args([
                "-t",
                "-e",
                "16",
                "-r",
                "-f",
                "raw",
                "-x",
                "drive-scsi0",
                "-k",
            ])
            .arg(&qsock)
            .arg("--fork")
            .arg("--pid-file")
            .arg(&qpid)
            .arg(&img),
    );
    wait_socket(&qsock);
    servers.insert(
        0,
        Server {
            name: "qemu-nbd -r (raw)",
            sock: qsock,
            child: None,
        },
    );
    // Warm the page cache for everyone.
    for s in &servers {
        copy_secs(&s.sock);
    }
    let mut res: Vec<[Vec<f64>; 3]> = servers.iter().map(|_| Default::default()).collect();
    for _ in 0..o.runs {
        for (i, s) in servers.iter().enumerate() {
            res[i][0].push(size as f64 / (1 << 20) as f64 / copy_secs(&s.sock));
            res[i][1].push(bench_iops(&s.sock, o.count / 4, 1));
            res[i][2].push(bench_iops(&s.sock, o.count, 16));
        }
    }
    println!(
        "Disk: {} MiB (40 % zero clusters, 40 % random, 20 % half-filled); medians of {} runs.\n",
        o.size_mib, o.runs
    );
    println!("| server | nbdcopy MiB/s | ratio | 4 KiB reads/s QD1 | ratio | 4 KiB reads/s QD16 | ratio |");
    println!("|---|---|---|---|---|---|---|");
    let base: Vec<f64> = (0..3).map(|k| median(res[0][k].clone())).collect();
    for (i, s) in servers.iter().enumerate() {
        let m: Vec<f64> = (0..3).map(|k| median(res[i][k].clone())).collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
            s.name,
            m[0],
            m[0] / base[0],
            m[1],
            m[1] / base[1],
            m[2],
            m[2] / base[2]
        );
    }
    for s in &mut servers {
        if let Some(c) = s.child.as_mut() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
    if let Ok(pid) = std::fs::read_to_string(&qpid) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) of the qemu-nbd we started (its pidfile).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}
