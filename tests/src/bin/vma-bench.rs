//! `vma-bench`: the benchmark harness (not a timed test).
//!
//! Generates a deterministic disk image of a realistic shape (about 45 % zero
//! clusters, 30 % random, 15 % text-like, 10 % with a few scattered 4 KiB
//! blocks), builds archives from it with our `vma`, then times every operation
//! against its physical floor measured in the same run on the same bytes, and
//! prints one markdown table: medians of N runs, ratios, and peak RSS.
//!
//! ```sh
//! cargo build --release -p vma-cli -p vma-tests
//! target/release/vma-bench --size-mib 2048 --runs 3 --dir /var/tmp/vma-bench
//! ```
//!
//! `--compressed` instead measures `vma mount` of the compressed forms of the
//! archive (one-frame `zstd -3`, `vma create --compress zstd`, `lzop`, and
//! `pigz`/`gzip` last): first mount against the command-line decompressor,
//! second mount, 4 KiB O_DIRECT random reads/s with 1 and 2 readers, the
//! daemon's peak RSS and the sidecar + cache size (`--forms` picks forms, e.g.
//! `--forms zst,frames`; an image and `a.vma` of the right size are reused).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    size_mib: u64,
    runs: usize,
    dir: PathBuf,
    vma: PathBuf,
    skip_mount: bool,
    compressed: bool,
    forms: Vec<String>,
    read_secs: u64,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        size_mib: 2048,
        runs: 3,
        dir: PathBuf::from("/var/tmp/vma-bench"),
        vma: std::env::current_exe().expect("exe").with_file_name("vma"),
        skip_mount: false,
        compressed: false,
        forms: ["zst", "frames", "lzo", "gz"].map(String::from).to_vec(),
        read_secs: 5,
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
            "--dir" => o.dir = PathBuf::from(val()),
            "--vma" => o.vma = PathBuf::from(val()),
            "--skip-mount" => o.skip_mount = true,
            "--compressed" => o.compressed = true,
            "--forms" => o.forms = val().split(',').map(String::from).collect(),
            "--read-secs" => o.read_secs = val().parse().unwrap_or_else(|_| die("bad --read-secs")),
            "-h" | "--help" => {
                println!("usage: vma-bench [--size-mib N] [--runs N] [--dir DIR] [--vma PATH] [--skip-mount] [--compressed [--forms zst,frames,lzo,gz] [--read-secs N]]");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("vma-bench: {msg}");
    std::process::exit(2)
}

/// xorshift64*: deterministic, fast, good enough for benchmark data.
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

const CLUSTER: usize = 65536;

/// Writes the benchmark image: zero clusters stay holes.
fn generate(path: &Path, size: u64) -> std::io::Result<[u64; 4]> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words: Vec<&[u8]> = [
        "the ",
        "backup ",
        "cluster ",
        "proxmox ",
        "virtual ",
        "machine ",
        "data ",
        "block ",
        "of ",
        "and ",
        "log: ",
        "error ",
        "info ",
        "2026-11-26 ",
        "\n",
        "kernel ",
        "disk ",
        "write ",
        "read ",
        "=",
    ]
    .iter()
    .map(|s| s.as_bytes())
    .collect();
    let mut counts = [0u64; 4];
    let mut buf = vec![0u8; CLUSTER];
    let clusters = size / CLUSTER as u64;
    for c in 0..clusters {
        let class = rng.next() % 100;
        let kind = match class {
            0..=44 => 0,
            45..=74 => 1,
            75..=89 => 2,
            _ => 3,
        };
        counts[kind] += 1;
        match kind {
            0 => continue,
            1 => rng.fill(&mut buf),
            2 => {
                let mut p = 0;
                while p < CLUSTER {
                    let w = words[(rng.next() % words.len() as u64) as usize];
                    let n = w.len().min(CLUSTER - p);
                    buf[p..p + n].copy_from_slice(&w[..n]);
                    p += n;
                }
            }
            _ => {
                buf.fill(0);
                for _ in 0..1 + rng.next() % 3 {
                    let b = (rng.next() % 16) as usize;
                    rng.fill(&mut buf[b * 4096..(b + 1) * 4096]);
                }
            }
        }
        f.write_all_at(&buf, c * CLUSTER as u64)?;
    }
    f.sync_all()?;
    Ok(counts)
}

struct Sample {
    secs: f64,
    max_rss_kib: i64,
    /// User + system CPU seconds of the process tree.
    cpu: f64,
}

/// Runs `cmd` (argv), stdin from `input` if any, stdout to `output` or /dev/null;
/// returns wall time and the peak RSS of the process tree (wait4, RUSAGE_BOTH).
fn run(argv: &[&str], input: Option<&Path>, output: Option<&Path>) -> Sample {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    c.stdin(match input {
        Some(p) => {
            Stdio::from(File::open(p).unwrap_or_else(|e| die(&format!("{}: {e}", p.display()))))
        }
        None => Stdio::null(),
    });
    c.stdout(match output {
        Some(p) => {
            Stdio::from(File::create(p).unwrap_or_else(|e| die(&format!("{}: {e}", p.display()))))
        }
        None => Stdio::null(),
    });
    let t = Instant::now();
    // Reaped by wait4 below (Child::wait would not give us the rusage).
    #[allow(clippy::zombie_processes)]
    let child = c
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", argv[0])));
    let (status, rss, cpu) = wait4(child.id() as i32);
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        die(&format!("{argv:?} failed: {status:?}"));
    }
    Sample {
        secs,
        max_rss_kib: rss,
        cpu,
    }
}

/// Runs a shell pipeline (for floors like `cat a | b`); RSS is the maximum over the tree.
fn sh(script: &str) -> Sample {
    run(&["sh", "-c", script], None, None)
}

fn wait4(pid: i32) -> (std::process::ExitStatus, i64, f64) {
    let mut status = 0;
    // SAFETY: plain libc call with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r < 0 {
        die(&format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    (
        std::process::ExitStatus::from_raw(status),
        ru.ru_maxrss,
        t(ru.ru_utime) + t(ru.ru_stime),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn drop_dir(p: &Path) {
    let _ = fs::remove_dir_all(p);
}

struct Row {
    op: String,
    ours: String,
    floor_name: String,
    floor: String,
    /// ours ÷ floor for times; floor ÷ ours (i.e. our speed over theirs) for mount rows.
    ratio: f64,
    target: String,
    rss_kib: i64,
}

/// A time row: lower is better, ratio = ours ÷ floor.
fn time_row(
    op: &str,
    (ours, floor, rss_kib): (f64, f64, i64),
    floor_name: &str,
    target: &str,
) -> Row {
    Row {
        op: op.into(),
        ours: format!("{ours:.3} s"),
        floor_name: floor_name.into(),
        floor: format!("{floor:.3} s"),
        ratio: ours / floor,
        target: target.into(),
        rss_kib,
    }
}

/// Measures `ours` and `floor` alternately `runs` times, with `prep` before each.
fn measure(
    runs: usize,
    mut prep: impl FnMut(),
    mut ours: impl FnMut() -> Sample,
    mut floor: impl FnMut() -> Sample,
) -> (f64, f64, i64) {
    let (mut a, mut b, mut rss) = (vec![], vec![], 0);
    for _ in 0..runs {
        prep();
        let s = ours();
        rss = rss.max(s.max_rss_kib);
        a.push(s.secs);
        prep();
        b.push(floor().secs);
    }
    (median(a), median(b), rss)
}

fn main() {
    let o = parse_args();
    if !o.vma.exists() {
        die(&format!(
            "{} not found; build with cargo build --release -p vma-cli",
            o.vma.display()
        ));
    }
    fs::create_dir_all(&o.dir).unwrap_or_else(|e| die(&format!("{}: {e}", o.dir.display())));
    let vma = o.vma.to_str().expect("utf-8 path").to_string();
    let d = |n: &str| o.dir.join(n);
    let s = |p: PathBuf| p.to_str().expect("utf-8 path").to_string();
    let size = o.size_mib << 20;
    let img = d("disk.raw");
    let (img_s, a_vma, a_zst, out) = (s(img.clone()), s(d("a.vma")), s(d("a.vma.zst")), d("out"));
    // The image and its archive, made with our `vma create`.
    let make_image_and_archive = || {
        eprintln!("generating {} MiB image…", o.size_mib);
        let counts = generate(&img, size).unwrap_or_else(|e| die(&format!("generate: {e}")));
        let _ = fs::remove_file(&a_vma);
        run(
            &[
                &vma,
                "create",
                &a_vma,
                "-d",
                &format!("format=raw:drive-scsi0={img_s}"),
            ],
            None,
            None,
        );
        counts
    };
    if o.compressed {
        let have = |p: &str| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if have(&img_s) != size || have(&a_vma) == 0 {
            make_image_and_archive();
        }
        compressed_mounts(&o, &vma, &a_vma);
        return;
    }
    let counts = make_image_and_archive();
    let _ = fs::remove_file(&a_zst);
    sh(&format!("zstd -q -T0 -3 {a_vma} -o {a_zst}"));
    let archive_bytes = fs::metadata(&a_vma).map(|m| m.len()).unwrap_or(0);
    let mut rows = Vec::new();
    let n = o.runs;
    let cp_floor = || {
        sh(&format!(
            "cp --sparse=always {img_s} {}/floor.raw && rm -f {0}/floor.raw",
            s(o.dir.clone())
        ))
    };

    eprintln!("extract (file)…");
    let m = measure(
        n,
        || drop_dir(&out),
        || run(&[&vma, "extract", &a_vma, &s(out.clone())], None, None),
        cp_floor,
    );
    rows.push(time_row(
        "extract, file → sparse raw",
        m,
        "`cp --sparse=always`",
        "≤ 1.25×",
    ));

    eprintln!("extract (stdin)…");
    let m = measure(
        n,
        || drop_dir(&out),
        || {
            run(
                &[&vma, "extract", "-", &s(out.clone())],
                Some(Path::new(&a_vma)),
                None,
            )
        },
        cp_floor,
    );
    rows.push(time_row(
        "extract from stdin",
        m,
        "`cp --sparse=always`",
        "≤ 1.25×",
    ));

    eprintln!("create…");
    let c_out = s(d("c.vma"));
    let rm_c = || {
        let _ = fs::remove_file(&c_out);
    };
    let dev = format!("format=raw:drive-scsi0={img_s}");
    let m = measure(
        n,
        rm_c,
        || {
            run(
                &[&vma, "create", "-", "-d", &dev],
                None,
                Some(Path::new(&c_out)),
            )
        },
        || sh(&format!("cp {img_s} {c_out}")),
    );
    rows.push(time_row(
        "create, raw → archive on stdout",
        m,
        "`cp` of the image",
        "≤ 1.25×",
    ));
    // A file OUT is fsynced before its rename (durability); compare with a durable cp.
    let m = measure(
        n,
        rm_c,
        || run(&[&vma, "create", &c_out, "-d", &dev], None, None),
        || sh(&format!("cp {img_s} {c_out} && sync {c_out}")),
    );
    rows.push(time_row(
        "create, raw → archive file (fsync + rename)",
        m,
        "`cp` + `sync FILE`",
        "≤ 1.25×",
    ));
    rm_c();

    eprintln!("verify (stdin)…");
    let m = measure(
        n,
        || {},
        || run(&[&vma, "verify", "-"], Some(Path::new(&a_vma)), None),
        || sh(&format!("cat {a_vma} > /dev/null")),
    );
    rows.push(time_row(
        "verify from stdin",
        m,
        "`cat a.vma > /dev/null`",
        "≤ 1.1×",
    ));

    eprintln!("verify (file)…");
    let m = measure(
        n,
        || {},
        || run(&[&vma, "verify", &a_vma], None, None),
        || sh(&format!("cat {a_vma} > /dev/null")),
    );
    rows.push(time_row(
        "verify, seekable file",
        m,
        "`cat a.vma > /dev/null`",
        "(report)",
    ));

    eprintln!("extract .vma.zst…");
    let m = measure(
        n,
        || drop_dir(&out),
        || run(&[&vma, "extract", &a_zst, &s(out.clone())], None, None),
        || sh(&format!("zstd -q -d -c {a_zst} > /dev/null")),
    );
    rows.push(time_row(
        "extract of `.vma.zst`",
        m,
        "`zstd -d -c > /dev/null`",
        "≤ 1.15×",
    ));
    // Context for the row above: the same decompression when it, too, has to
    // write its output (the archive, 0.95 of the bytes extract writes).
    let z_out = s(d("z.vma"));
    let m = measure(
        n,
        || drop_dir(&out),
        || run(&[&vma, "extract", &a_zst, &s(out.clone())], None, None),
        || sh(&format!("zstd -q -d -f -c {a_zst} > {z_out}")),
    );
    let _ = fs::remove_file(&z_out);
    rows.push(time_row(
        "extract of `.vma.zst` (context)",
        m,
        "`zstd -d -c > a.vma` (writes its output)",
        "(report)",
    ));
    drop_dir(&out);

    let mut extra = match File::open(&a_vma).map(vma_format::IndexedReader::open) {
        Ok(Ok(ix)) => format!(
            "\nMount index: {} bytes for {} stored clusters ({} extents) = {:.1} bytes per stored cluster.\n",
            ix.index_bytes(),
            ix.stored_clusters(),
            ix.extent_count(),
            ix.index_bytes() as f64 / ix.stored_clusters().max(1) as f64
        ),
        _ => "\nMount index: archive did not open in-process\n".into(),
    };
    if !o.skip_mount {
        match mount_rows(&o, &vma, &a_vma, &img_s) {
            Ok((r, e)) => {
                rows.extend(r);
                extra += &e;
            }
            Err(e) => extra += &format!("mount benchmarks failed: {e}\n"),
        }
    }

    println!("Image: {} MiB; clusters: {} zero, {} random, {} text-like, {} sparse-4K; archive {} bytes ({} MiB).",
        o.size_mib, counts[0], counts[1], counts[2], counts[3], archive_bytes, archive_bytes >> 20);
    println!(
        "Medians of {n} runs, warm page cache; floor measured in the same run on the same bytes.\n"
    );
    println!("| operation | ours | floor | floor | ratio | target | peak RSS |");
    println!("|---|---:|---|---:|---:|---|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.2}× | {} | {} |",
            r.op,
            r.ours,
            r.floor_name,
            r.floor,
            r.ratio,
            r.target,
            if r.rss_kib > 0 {
                format!("{:.1} MiB", r.rss_kib as f64 / 1024.0)
            } else {
                "—".into()
            }
        );
    }
    print!("{extra}");
}

/// Mount benchmarks: `vma mount` against `qemu-storage-daemon`'s FUSE export of the same raw bytes.
fn mount_rows(o: &Opts, vma: &str, a_vma: &str, img: &str) -> Result<(Vec<Row>, String), String> {
    let mnt = o.dir.join("mnt");
    let qfile = o.dir.join("qsd.raw");
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = Command::new("fusermount3").arg("-u").arg(&qfile).status();
    fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    File::create(&qfile).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let st = Command::new(vma)
        .args(["mount", a_vma])
        .arg(&mnt)
        .status()
        .map_err(|e| e.to_string())?;
    let mount_secs = t.elapsed().as_secs_f64();
    if !st.success() {
        return Err("vma mount failed".into());
    }
    let mut qsd = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!("driver=file,node-name=f,filename={img},aio=threads"),
        ])
        .args([
            "--export",
            &format!(
                "type=fuse,id=e,node-name=f,mountpoint={},writable=off",
                qfile.display()
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu-storage-daemon: {e}"))?;
    // Wait until the export is live (the file takes the image's size).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&qfile).map(|m| m.len()).unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            let _ = qsd.kill();
            return Err("qemu-storage-daemon export did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours = mnt.join("drive-scsi0.raw");
    let res = (|| {
        let mut rows = vec![];
        let dd = |p: &Path| {
            sh(&format!(
                "dd if={} of=/dev/null bs=1M status=none",
                p.display()
            ))
        };
        // First read: drop caches so both sides start cold on the FUSE layer.
        let drop_caches = || {
            let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        };
        drop_caches();
        let a1 = dd(&ours).secs;
        let b1 = dd(&qfile).secs;
        rows.push(speed_row(
            "mount, sequential read (dd bs=1M), first",
            a1,
            b1,
            "≥ 1.0×",
        ));
        let a2 = median((0..o.runs).map(|_| dd(&ours).secs).collect());
        let b2 = median((0..o.runs).map(|_| dd(&qfile).secs).collect());
        rows.push(speed_row(
            "mount, sequential read (dd bs=1M), repeated",
            a2,
            b2,
            "near page cache",
        ));
        for threads in [1usize, 2] {
            let ra = random_reads(&ours, threads, Duration::from_secs(3))?;
            let rb = random_reads(&qfile, threads, Duration::from_secs(3))?;
            rows.push(Row {
                op: format!("mount, 4 KiB O_DIRECT random reads, {threads} reader(s)"),
                ours: format!("{ra:.0} reads/s"),
                floor_name: "qemu-storage-daemon FUSE export of the raw".into(),
                floor: format!("{rb:.0} reads/s"),
                ratio: ra / rb,
                target: "≥ 1.0× (speed)".into(),
                rss_kib: 0,
            });
        }
        Ok::<_, String>(rows)
    })();
    let _ = Command::new(vma).arg("umount").arg(&mnt).status();
    let _ = Command::new("fusermount3").arg("-u").arg(&qfile).status();
    let _ = qsd.kill();
    let _ = qsd.wait();
    let rows = res?;
    Ok((
        rows,
        format!("\nMount start-up (index build + detach) of the archive: {mount_secs:.3} s.\n"),
    ))
}

/// A mount row from two times: ratio is our speed over the floor's.
fn speed_row(op: &str, ours: f64, floor: f64, target: &str) -> Row {
    let mib = |t: f64| format!("{t:.3} s");
    Row {
        op: op.into(),
        ours: mib(ours),
        floor_name: "same reads through qemu-storage-daemon's FUSE export of the raw".into(),
        floor: mib(floor),
        ratio: floor / ours,
        target: format!("{target} (speed)"),
        rss_kib: 0,
    }
}

/// Random 4 KiB O_DIRECT reads for `dur` from `threads` threads; returns reads per second.
fn random_reads(path: &Path, threads: usize, dur: Duration) -> Result<f64, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    let total: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || -> Result<u64, String> {
                    let f = fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(path)
                        .map_err(|e| format!("{}: O_DIRECT open: {e}", path.display()))?;
                    // O_DIRECT needs an aligned buffer: take a 4 KiB-aligned window of a larger one.
                    let mut raw = vec![0u8; 8192];
                    let off = raw.as_ptr().align_offset(4096);
                    let buf = &mut raw[off..off + 4096];
                    let mut rng = Rng(0x1234_5678 + t as u64);
                    let blocks = size / 4096;
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        let b = rng.next() % blocks;
                        f.read_exact_at(buf, b * 4096).map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread").unwrap_or(0))
            .sum()
    });
    Ok(total as f64 / dur.as_secs_f64())
}

/// The pid of the detached `vma mount ARCHIVE MNT` daemon (its argv is the
/// command's: it is a fork of it).
fn mount_daemon(archive: &str, mnt: &Path) -> Option<i32> {
    let want = format!("mount\0{archive}\0{}\0", mnt.display());
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        cmd.contains(&want).then_some(pid)
    })
}

/// VmHWM of `pid` in KiB.
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `--compressed`: `vma mount` of each compressed form of `a_vma`.
fn compressed_mounts(o: &Opts, vma: &str, a_vma: &str) {
    let d = |n: &str| o.dir.join(n).to_str().expect("utf-8 path").to_string();
    let img = d("disk.raw");
    let mnt = o.dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap_or_else(|e| die(&format!("{}: {e}", mnt.display())));
    let _ = Command::new(vma)
        .arg("umount")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let gz_tool = if have("pigz") { "pigz -p 2" } else { "gzip -1" };
    // (form, archive, tool it needs, how it is made, command-line decompressor)
    let forms: Vec<(&str, String, &str, String, String)> = vec![
        (
            "zst",
            d("a.vma.zst"),
            "zstd",
            format!("zstd -q -f -T0 -3 {a_vma} -o {}", d("a.vma.zst")),
            "zstd -q -d -c".into(),
        ),
        (
            "frames",
            d("a-frames.vma.zst"),
            "zstd",
            format!(
                "rm -f {0} && {vma} create --compress zstd {0} -d format=raw:drive-scsi0={img}",
                d("a-frames.vma.zst")
            ),
            "zstd -q -d -c".into(),
        ),
        (
            "lzo",
            d("a.vma.lzo"),
            "lzop",
            format!("lzop -c {a_vma} > {}", d("a.vma.lzo")),
            "lzop -d -c".into(),
        ),
        (
            "gz",
            d("a.vma.gz"),
            gz_tool.split(' ').next().unwrap_or("gzip"),
            format!("{gz_tool} -c {a_vma} > {}", d("a.vma.gz")),
            "gzip -d -c".into(),
        ),
    ];
    println!(
        "Image: {} MiB, archive {} bytes; medians of {} runs; random reads {} s each; load before: {}",
        o.size_mib,
        file_len(Path::new(a_vma)),
        o.runs,
        o.read_secs,
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!();
    println!("| form | made by | archive | first mount | decompressor | ratio | second mount | 4 KiB reads/s, 1 reader | 2 readers | daemon peak RSS | sidecar + cache |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (form, archive, tool, make, dec) in &forms {
        if !o.forms.iter().any(|f| f == form) {
            continue;
        }
        if !have(tool) {
            eprintln!("{form}: {tool} not installed, skipped");
            continue;
        }
        eprintln!("{form}: making {archive}…");
        sh(make);
        let sidecar = PathBuf::from(format!("{archive}.vmaidx"));
        let cache = sidecar.with_extension("vmacache");
        let umount = || {
            let _ = Command::new(vma).arg("umount").arg(&mnt).status();
            // The daemon exits once unmounted; wait so runs do not overlap.
            let deadline = Instant::now() + Duration::from_secs(10);
            while mount_daemon(archive, &mnt).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let mount = || {
            run(
                &[vma, "mount", archive, mnt.to_str().expect("utf-8")],
                None,
                None,
            )
        };
        eprintln!("{form}: first mounts…");
        let (mut first, mut floor, mut first_cpu, mut floor_cpu) = (vec![], vec![], vec![], vec![]);
        for _ in 0..o.runs {
            let _ = fs::remove_file(&sidecar);
            let _ = fs::remove_file(&cache);
            let m = mount();
            first.push(m.secs);
            first_cpu.push(m.cpu);
            umount();
            let f = sh(&format!("{dec} {archive} > /dev/null"));
            floor.push(f.secs);
            floor_cpu.push(f.cpu);
        }
        let mut second = vec![];
        for _ in 0..o.runs {
            second.push(mount().secs);
            umount();
        }
        mount();
        let pid = mount_daemon(archive, &mnt);
        let disk = mnt.join("drive-scsi0.raw");
        let dur = Duration::from_secs(o.read_secs);
        let r1 = random_reads(&disk, 1, dur).unwrap_or_else(|e| die(&e));
        let r2 = random_reads(&disk, 2, dur).unwrap_or_else(|e| die(&e));
        let rss = pid.and_then(vm_hwm_kib);
        umount();
        let (first, floor, second) = (median(first), median(floor), median(second));
        let (first_cpu, floor_cpu) = (median(first_cpu), median(floor_cpu));
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let made_by = if *form == "frames" {
            "vma create --compress zstd".into()
        } else {
            make.split(" > ")
                .next()
                .unwrap_or(make)
                .replace(a_vma, "a.vma")
                .replace(o.dir.to_str().unwrap_or(""), ".")
        };
        println!(
            "| {form} | `{made_by}` | {} | {first:.2} s ({first_cpu:.2} s CPU) | `{dec}` {floor:.2} s ({floor_cpu:.2} s CPU) | {:.2}× | {second:.3} s | {r1:.0} | {r2:.0} | {} | {} + {} |",
            mb(file_len(Path::new(archive))),
            first / floor,
            rss.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            mb(file_len(&sidecar)),
            mb(file_len(&cache)),
        );
    }
    println!(
        "\nload after: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
