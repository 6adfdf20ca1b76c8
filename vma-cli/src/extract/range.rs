//! `vma extract --range START:END -d NAME ARCHIVE OUT`: one slice of one
//! disk, for restoring a large disk from several machines at once.
//!
//! Random access through vma-format's [`IndexedReader`]: a local archive
//! (plain or compressed, through `vma_seekable` and its sidecar index) or a
//! remote one (`s3://`, `http(s)://`: ranged GETs, the index beside the
//! object or in the cache directory, see `crate::remote`). Only the device
//! bytes `[START, END)` are written, into OUT at the same offsets; OUT must
//! exist and is neither created nor truncated, so N processes may fill one
//! shared file or block device. Zero runs are written as zeros: OUT may hold
//! old data.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use vma_format::{IndexedReader, MappingKind, ReadAt};

use super::remote::Fetched;
use super::ExtractArgs;

/// Bytes read and written per step (bounded memory).
const CHUNK: usize = 4 << 20;

/// Parses a size: bytes, or with a K, M, G or T suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a byte offset (digits, optionally K, M, G or T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| anyhow!("'{s}' is too large"))
}

/// `START:END` (END may be empty: up to the device end) → (start, end).
pub fn parse_range(s: &str) -> Result<(u64, Option<u64>)> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("--range '{s}': expected START:END (END may be empty)"))?;
    let start = parse_size(a).with_context(|| format!("--range '{s}'"))?;
    let end = if b.is_empty() {
        None
    } else {
        Some(parse_size(b).with_context(|| format!("--range '{s}'"))?)
    };
    if end.is_some_and(|e| e <= start) {
        bail!("--range '{s}': END must be greater than START");
    }
    Ok((start, end))
}

/// The random-access source of `archive`, and what it fetches (`-v`).
fn open_source(archive: &Path) -> Result<(Box<dyn ReadAt>, Fetched)> {
    if let Some(url) = crate::input::remote_url(archive) {
        return open_remote(url);
    }
    // The sidecar (and cache file) on disk, as `vma mount` keeps them, so the
    // processes restoring other ranges of the same archive reuse the index.
    let mut opts = vma_seekable::SeekOptions::default();
    opts.store = vma_seekable::IndexStore::on_disk(None);
    opts.notice = Some(std::sync::Arc::new(|m: &str| eprintln!("vma: {m}")));
    let (_, src) = vma_seekable::open(archive, &opts)
        .with_context(|| format!("can't open {}", archive.display()))?;
    Ok((src, Fetched::default()))
}

#[cfg(feature = "remote")]
fn open_remote(url: &str) -> Result<(Box<dyn ReadAt>, Fetched)> {
    // The index as `vma index URL` keeps it: `<key>.vmaidx` beside the
    // object (else in the cache directory), so that the processes restoring
    // the other ranges, on this host or others, reuse it. Without one, this
    // process builds it (the extent headers of a plain archive; the frame
    // table, lzop blocks or gzip checkpoints of a compressed one; a local
    // cache file for one big zstd frame) and stores it there.
    let mut opts = vma_seekable::SeekOptions::default();
    opts.notice = Some(std::sync::Arc::new(|m: &str| eprintln!("vma: {m}")));
    let r = crate::remote::open_seekable(url, &opts, crate::index::cache_dir(None))?;
    let size = r.object.size()?;
    let fetched = Fetched::remote(r.object, size, "ranged GETs of the index and the range");
    Ok((r.seekable.source, fetched))
}

#[cfg(not(feature = "remote"))]
fn open_remote(url: &str) -> Result<(Box<dyn ReadAt>, Fetched)> {
    bail!("can't open {url} - this vma was built without remote archive support (feature `remote`)")
}

/// All of `buf` at `pos` (one slice of [`crate::sys::pwritev_all`]).
fn write_at(f: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
    crate::sys::pwritev_all(f, &mut [std::io::IoSlice::new(buf)], pos)
}

/// The archive for messages (a URL without its userinfo).
fn shown(p: &Path) -> String {
    #[cfg(feature = "remote")]
    if let Some(url) = crate::input::remote_url(p) {
        return vma_remote::display_url(url);
    }
    p.display().to_string()
}

/// Runs `vma extract --range`.
pub fn run(args: &ExtractArgs, range: &str) -> Result<()> {
    let (start, end) = parse_range(range)?;
    let name = match args.drives.as_slice() {
        [one] if !one.contains(',') => one.as_str(),
        _ => bail!("--range needs exactly one device: -d NAME"),
    };
    let out_path = &args.targetdir;
    // OUT first: a typo fails before any request to the archive.
    let out = OpenOptions::new()
        .write(true)
        .open(out_path)
        .with_context(|| {
            format!(
                "can't open {} (with --range, OUT is an existing file or block device)",
                out_path.display()
            )
        })?;
    let (source, fetched) = open_source(&args.file)?;
    let reader = IndexedReader::open(source)
        .with_context(|| format!("can't read the index of {}", shown(&args.file)))?;
    let dev = reader
        .header()
        .devices
        .iter()
        .find(|d| d.id != 255 && d.name == name.as_bytes())
        .ok_or_else(|| anyhow!("no device '{name}' in the archive"))?;
    let (id, size) = (dev.id, dev.size);
    let end = end.unwrap_or(size);
    if end > size {
        bail!("--range {range}: END {end} is past the end of device '{name}' ({size} bytes)");
    }
    if start >= end {
        bail!("--range {range}: START {start} is at or past the end ({end})");
    }
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    let mut written = 0u64;
    while pos < end {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let m = reader
            .map(id, pos)?
            .ok_or_else(|| anyhow!("internal: no mapping at {pos}"))?;
        let run_end = m.end.min(end).min(pos + CHUNK as u64);
        let len = (run_end - pos) as usize;
        let data = match m.kind {
            MappingKind::Data => {
                let got = reader.read(id, pos, &mut buf[..len])?;
                if got != len {
                    bail!("device '{name}': short read at {pos}");
                }
                &buf[..len]
            }
            MappingKind::Zero => &zeros[..len],
        };
        write_at(&out, data, pos)
            .with_context(|| format!("can't write {} at byte {pos}", out_path.display()))?;
        written += len as u64;
        pos = run_end;
    }
    out.sync_all()
        .with_context(|| format!("can't write {}", out_path.display()))?;
    if args.verbose {
        eprintln!("device {name}: wrote bytes {start}..{end} ({written} bytes) of {size}");
        fetched.report();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0:64K").unwrap(), (0, Some(65536)));
        assert_eq!(parse_range("1M:").unwrap(), (1 << 20, None));
        assert_eq!(parse_range("5:7").unwrap(), (5, Some(7)));
        assert!(parse_range("7:5").is_err());
        assert!(parse_range("7").is_err());
        assert!(parse_range("x:5").is_err());
        assert!(parse_range("0:99999999999T").is_err());
    }
}
