//! Benchmark of `vma_seekable` (an example, not a test):
//!
//! ```sh
//! SEEK_BENCH_MIB=256 cargo run --release -p vma-seekable --example seekable_bench
//! ```
//!
//! Builds an archive of two disks totalling `SEEK_BENCH_MIB` MiB (the data
//! mix of `seekable_common::archive`: 1/4 zero, 1/4 repetitive, 1/2 random),
//! compresses it five ways, and for each prints the first-open (index build)
//! time next to the matching command-line decompressor writing to /dev/null,
//! the reopen time, index and cache sizes, and random 4 KiB reads per second
//! through `IndexedReader::read`. `SEEK_BENCH_LEVEL`, `SEEK_BENCH_FRAME`,
//! `SEEK_BENCH_MAX_DIRECT`, `SEEK_BENCH_THREADS` override the options;
//! `SEEK_BENCH_DIR` is where the files go (default /tmp). The gzip form is
//! indexed once per checkpoint span of `SEEK_BENCH_GZIP_SPANS` (MiB,
//! comma-separated; default `1,4`), to show the trade-off between random
//! reads and sidecar size. `SEEK_BENCH_ONLY=gzip` runs only the forms whose
//! name contains that word.

#[path = "../tests/seekable_common/mod.rs"]
mod seekable_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seekable_common::*;
use vma_format::IndexedReader;
use vma_seekable::{self as seekable, IndexStore, SeekOptions};

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn cpu(children: bool) -> f64 {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: getrusage writes one plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn tool_time(args: &[&str], path: &std::path::Path) -> Option<Duration> {
    let t = Instant::now();
    let st = Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    st.success().then(|| t.elapsed())
}

fn random_reads(r: &IndexedReader<Box<dyn vma_format::ReadAt>>, dur: Duration, seed: u64) -> f64 {
    let devs: Vec<(u8, u64)> = r.header().devices.iter().map(|d| (d.id, d.size)).collect();
    let mut rng = Rng(seed);
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < dur {
        for _ in 0..16 {
            let (id, size) = devs[rng.below(devs.len() as u64) as usize];
            let off = rng.below(size / 4096) * 4096;
            r.read(id, off, &mut buf).unwrap();
            n += 1;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let mib: u64 = std::env::var("SEEK_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let dir =
        tempfile::tempdir_in(std::env::var("SEEK_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .unwrap();
    let t = Instant::now();
    let plain = archive(mib, 42);
    println!(
        "archive: {mib} MiB of disks, {} MiB stream, built in {:.1?}",
        plain.len() >> 20,
        t.elapsed()
    );
    let mut forms: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "zstd single frame (-3)",
            zstd_single(&plain),
            &["zstd", "-d", "-c", "-q"],
        ),
        (
            "zstd 8 MiB frames (-3)",
            zstd_multi(&plain, 8 << 20),
            &["zstd", "-d", "-c", "-q"],
        ),
        (
            "zstd 512 KiB frames (-3, as vma create writes)",
            zstd_multi(&plain, 512 << 10),
            &["zstd", "-d", "-c", "-q"],
        ),
        ("gzip -1", gzip(&plain), &["gzip", "-d", "-c"]),
        ("lzop", lzop(&plain, false), &["lzop", "-d", "-c"]),
    ];
    drop(plain);
    if let Ok(only) = std::env::var("SEEK_BENCH_ONLY") {
        forms.retain(|f| f.0.contains(&only));
    }
    let spans: Vec<u64> = std::env::var("SEEK_BENCH_GZIP_SPANS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let runs = forms
        .into_iter()
        .enumerate()
        .flat_map(|(i, (name, bytes, tool))| {
            let spans = if name.starts_with("gzip") {
                spans.iter().map(|&m| Some(m << 20)).collect()
            } else {
                vec![None]
            };
            let bytes = std::rc::Rc::new(bytes);
            spans
                .into_iter()
                .enumerate()
                .map(move |(k, span)| (i, k, name, std::rc::Rc::clone(&bytes), tool, span))
        });
    for (i, k, name, bytes, tool, span) in runs {
        let path = dir.path().join(format!("b{i}.vma"));
        if k == 0 {
            std::fs::write(&path, &*bytes).unwrap();
        }
        drop(bytes);
        let name = match span {
            Some(s) => format!("{name}, {} MiB checkpoint span", s >> 20),
            None => name.to_string(),
        };
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<i64>().ok());
        let d = SeekOptions::default();
        let mut opts = {
            let mut o = d.clone();
            o.store = IndexStore::BesideArchive {
                fallback: Some(dir.path().join("cache")),
            };
            o.cache_level = env("SEEK_BENCH_LEVEL").map_or(d.cache_level, |v| v as i32);
            o.cache_frame_size = env("SEEK_BENCH_FRAME").map_or(d.cache_frame_size, |v| v as usize);
            o.max_direct_frame =
                env("SEEK_BENCH_MAX_DIRECT").map_or(d.max_direct_frame, |v| v as u64);
            o.threads = env("SEEK_BENCH_THREADS").map_or(d.threads, |v| v as usize);
            o.gzip_span = span.unwrap_or(d.gzip_span);
            o.rebuild = true;
            o
        };
        let c0 = cpu(true);
        let tool_t = tool_time(tool, &path);
        let tool_cpu = cpu(true) - c0;
        let c0 = cpu(false);
        let first = seekable::open_seekable(&path, &opts).unwrap();
        let first_cpu = cpu(false) - c0;
        let r = IndexedReader::open(first.source).unwrap();
        let info = first.info;
        let t = Instant::now();
        opts.rebuild = false;
        let again = seekable::open_seekable(&path, &opts).unwrap();
        assert!(!again.info.rebuilt);
        let r2 = IndexedReader::open(again.source).unwrap();
        let reopen = t.elapsed();
        drop(r);
        let rps = random_reads(&r2, Duration::from_secs(3), 7);
        println!(
            "{name}: archive {:.1} MiB; first open {:.2?}, {first_cpu:.2} s CPU (CLI decompressor {}, {tool_cpu:.2} s CPU); reopen incl. IndexedReader::open {:.1?}; \
             kind {:?}, {} frames, sidecar {} KiB ({:.2}% of archive), cache {:.1} MiB ({:.0}% of archive); random 4 KiB reads {:.0}/s",
            info.archive_bytes as f64 / 1048576.0,
            info.elapsed,
            tool_t.map_or("n/a".into(), |d| format!("{d:.2?}")),
            reopen,
            info.kind,
            info.frames,
            info.sidecar_bytes >> 10,
            info.sidecar_bytes as f64 * 100.0 / info.archive_bytes as f64,
            info.cache_bytes as f64 / 1048576.0,
            info.cache_bytes as f64 * 100.0 / info.archive_bytes as f64,
            rps
        );
    }
}
