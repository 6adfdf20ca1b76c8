//! `vma index`: builds (or validates and reuses) the sidecar index that gives
//! random access into a compressed archive (`vma_seekable`), without
//! mounting, and says where it is and what it costs on disk.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use vma_seekable::{self as seekable, Cancel, IndexInfo, IndexKind, IndexStore, SeekOptions};

/// Options of `vma index`.
#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// The archive (.vma.zst, .vma.gz, .vma.lzo; a plain .vma needs no index).
    pub archive: PathBuf,
    /// Rebuild the index even if a valid one exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Delete the archive's index (.vmaidx) and cache file (.vmacache)
    /// instead, from next to the archive, ~/.cache/vma-rs/ and --cache-dir;
    /// print each path removed.
    #[arg(long, conflicts_with = "rebuild")]
    pub remove: bool,
    /// Keep (or look for) the index and cache file in DIR instead of next
    /// to the archive [env: VMA_CACHE_DIR].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Where the index and cache files go: `--cache-dir`, else `$VMA_CACHE_DIR`
/// (if set and not empty), else the library's default places. (`vma mount`
/// uses it too; it lives here because index exists on every platform.)
pub fn cache_dir(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| {
        std::env::var_os("VMA_CACHE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Runs `vma index`.
pub fn run(a: IndexArgs) -> Result<()> {
    if let Some(url) = crate::input::remote_url(&a.archive) {
        return run_remote(url, &a);
    }
    let mut opts = SeekOptions::default();
    opts.rebuild = a.rebuild;
    // Kept on disk for mount and later opens (the library keeps nothing).
    opts.store = IndexStore::on_disk(cache_dir(a.cache_dir.clone()));
    opts.notice = Some(Arc::new(|m: &str| eprintln!("vma: {m}")));
    if a.remove {
        return remove(&a, &opts);
    }
    if std::io::stderr().is_terminal() {
        opts.progress = Some(progress());
    }
    // The other commands' message (and no archive offset) for a file that
    // cannot be opened at all.
    std::fs::File::open(&a.archive).map_err(|e| {
        anyhow::anyhow!(
            "can't open file {} - {}",
            a.archive.display(),
            crate::input::strerror(&e)
        )
    })?;
    // A signal stops the build (polled through `cancel`); the signal thread
    // waits for it to have removed its temporary and partial files before
    // the process exits (`interrupt`): until `built` is dropped.
    opts.cancel = Some(Cancel::when(crate::interrupt::interrupted));
    let (built, wait) = std::sync::mpsc::channel::<()>();
    let _wait_for_build = crate::interrupt::on_interrupt(move || {
        let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
    });
    let info = seekable::build_index(&a.archive, &opts);
    drop(built);
    let info = info.with_context(|| format!("cannot index {}", a.archive.display()))?;
    if info.kind == IndexKind::Plain {
        // Nothing was decoded: check it is a VMA at all (its header).
        let file = std::fs::File::open(&a.archive)
            .with_context(|| format!("cannot open {}", a.archive.display()))?;
        vma_format::StreamReader::new(std::io::BufReader::new(file))
            .with_context(|| format!("{}: not a VMA archive", a.archive.display()))?;
    }
    report(&a, &a.archive.display().to_string(), &info, None)
}

/// Prints what `vma index` did: text or `--json`; `fetched`: requests and
/// bytes of a remote archive.
fn report(a: &IndexArgs, name: &str, info: &IndexInfo, fetched: Option<(u64, u64)>) -> Result<()> {
    if a.json {
        let mut v = json(info);
        if let Some(m) = v.as_object_mut() {
            if let Some((requests, bytes)) = fetched {
                m.insert("requests".into(), requests.into());
                m.insert("bytes_fetched".into(), bytes.into());
            }
            crate::json_doc::set_result(m, None);
        }
        return crate::json_doc::emit(&v);
    }
    println!("{}", text(name, info, fetched.is_some()));
    if let Some((requests, bytes)) = fetched {
        println!("fetched: {requests} requests, {bytes} bytes");
    }
    Ok(())
}

/// `vma index URL`: the index of an archive in object storage, kept beside
/// it (`<key>.vmaidx`) when the bucket takes it, else in the cache directory.
/// A plain archive gets one too: it saves a request per extent on each open.
#[cfg(feature = "remote")]
fn run_remote(url: &str, a: &IndexArgs) -> Result<()> {
    let cache_dir = cache_dir(a.cache_dir.clone());
    if a.remove {
        let removed = crate::remote::remove_index(url, cache_dir)?;
        return print_removed(a, &vma_remote::display_url(url), &removed);
    }
    let mut opts = SeekOptions::default();
    opts.rebuild = a.rebuild;
    opts.notice = Some(Arc::new(|m: &str| eprintln!("vma: {m}")));
    if std::io::stderr().is_terminal() {
        opts.progress = Some(progress());
    }
    opts.cancel = Some(Cancel::when(crate::interrupt::interrupted));
    let (built, wait) = std::sync::mpsc::channel::<()>();
    let _wait_for_build = crate::interrupt::on_interrupt(move || {
        let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
    });
    let opened = crate::remote::open_seekable(url, &opts, cache_dir);
    drop(built);
    let opened = opened?;
    let name = opened.object.display();
    let info = opened.seekable.info.clone();
    // Reading the header and extent headers checks that it is a VMA
    // archive; they come from the index, so this costs no request.
    vma_format::IndexedReader::open(opened.seekable.source)
        .with_context(|| format!("{name}: not a valid VMA archive"))?;
    let s = opened.object.stats();
    report(a, &name, &info, Some((s.requests, s.bytes)))
}

#[cfg(not(feature = "remote"))]
fn run_remote(url: &str, _: &IndexArgs) -> Result<()> {
    anyhow::bail!(
        "can't open {url} - this vma was built without remote archive support (feature `remote`)"
    )
}

fn print_removed(a: &IndexArgs, name: &str, removed: &[PathBuf]) -> Result<()> {
    if a.json {
        let paths: Vec<_> = removed.iter().map(|p| p.to_string_lossy()).collect();
        println!("{}", serde_json::json!({ "removed": paths }));
    } else if removed.is_empty() {
        println!("{name}: no index or cache file found");
    } else {
        for p in removed {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}

/// `vma index --remove`: deletes the index and cache files, never the archive.
fn remove(a: &IndexArgs, opts: &SeekOptions) -> Result<()> {
    let removed = seekable::remove_index(&a.archive, opts)
        .with_context(|| format!("cannot remove the index of {}", a.archive.display()))?;
    print_removed(a, &a.archive.display().to_string(), &removed)
}

fn kind_name(k: IndexKind) -> &'static str {
    match k {
        IndexKind::Plain => "plain",
        IndexKind::LzoBlocks => "lzo-blocks",
        IndexKind::ZstdFrames => "zstd-frames",
        IndexKind::CacheFile => "cache-file",
        IndexKind::GzipCheckpoints => "gzip-checkpoints",
    }
}

fn path_json(p: &Option<PathBuf>) -> serde_json::Value {
    p.as_ref()
        .map_or(serde_json::Value::Null, |p| p.to_string_lossy().into())
}

fn json(i: &IndexInfo) -> serde_json::Value {
    serde_json::json!({
        "compression": i.compression.name(),
        "kind": kind_name(i.kind),
        "sidecar": path_json(&i.sidecar),
        "sidecar_bytes": i.sidecar_bytes,
        "cache": path_json(&i.cache),
        "cache_bytes": i.cache_bytes,
        "archive_bytes": i.archive_bytes,
        "decompressed_bytes": i.decompressed_bytes,
        "frames": i.frames,
        "rebuilt": i.rebuilt,
        "seconds": i.elapsed.as_secs_f64(),
        "notes": i.notes,
    })
}

/// `remote`: an archive in object storage, where a plain one has an index
/// too (its extent headers).
fn text(archive: &str, i: &IndexInfo, remote: bool) -> String {
    if i.kind == IndexKind::Plain && !remote {
        return format!(
            "{archive}: plain archive ({} bytes): random access needs no index",
            i.archive_bytes
        );
    }
    let mut s = if i.kind == IndexKind::Plain {
        format!("{archive}: plain archive, {} bytes\n", i.archive_bytes)
    } else {
        format!(
            "{archive}: {} archive, {} bytes ({} decompressed)\n",
            i.compression.name(),
            i.archive_bytes,
            i.decompressed_bytes
        )
    };
    let unit = match i.kind {
        IndexKind::Plain => "extent headers of the archive",
        IndexKind::LzoBlocks => "lzop blocks of the archive",
        IndexKind::ZstdFrames => "zstd frames of the archive",
        IndexKind::GzipCheckpoints => "gzip spans of the archive (deflate checkpoints)",
        _ => "zstd frames of the cache file",
    };
    s += &format!(
        "index: {} {unit}, {} in {:.3} s\n",
        i.frames,
        if i.rebuilt { "built" } else { "valid, reused" },
        i.elapsed.as_secs_f64()
    );
    match &i.sidecar {
        Some(p) => s += &format!("sidecar: {} ({} bytes)\n", p.display(), i.sidecar_bytes),
        None => s += "sidecar: not saved (no writable place); later opens rebuild it\n",
    }
    if let Some(c) = &i.cache {
        s += &format!("cache: {} ({} bytes)\n", c.display(), i.cache_bytes);
    }
    for n in &i.notes {
        s += &format!("note: {n}\n");
    }
    s.pop();
    s
}

/// "indexing: N%" on stderr, once per percent, a newline at the end.
fn progress() -> seekable::Progress {
    let last = Mutex::new(None::<u64>);
    Arc::new(move |done: u64, total: u64| {
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != Some(pct) {
            *last = Some(pct);
            let end = if pct >= 100 { "\n" } else { "" };
            eprint!("\rindexing: {pct:3}%{end}");
        }
    })
}
