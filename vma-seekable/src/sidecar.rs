//! The persistent index (`.vmaidx`) and where it lives.
//!
//! Owns the sidecar byte format and its validation, the cache file's leading
//! identification frame, and the location rules (next to the archive, else
//! the user cache directory under a name derived from the canonical path).
//!
//! Format (little-endian), version 2:
//!
//! ```text
//!   0  magic "VMAIDX\r\n"        8
//!   8  version u32, kind u8, compression u8, reserved u16
//!  16  archive size u64, archive mtime seconds i64, mtime nanoseconds u32, reserved u32
//!  40  VMA UUID [16]
//!  56  decompressed size u64
//!  64  cache id [16] (zero without a cache file), cache file size u64
//!  88  frame count u64, pinned range count u64, pinned blob length u64
//! 112  checkpoint count u64 (kind 4: the frame count; else 0), window blob length u64
//! 128  frames: c_off u64, c_len u64, u_off u64, u_len u64, adler u32, crc u32, sums u8  (41 bytes each)
//!      pinned ranges: offset u64, length u32, blob position u64                       (20 bytes each)
//!      pinned blob
//!      checkpoints: bits u8, window length u32, window blob position u64, stored length u32  (17 bytes each)
//!      window blob: each checkpoint's deflate window (≤ 32 KiB), zstd-compressed on its own
//!  end crc32 of everything before it, u32
//! ```
//!
//! Kinds: 1 lzop blocks, 2 zstd frames of the archive, 3 zstd frames of the
//! cache file, 5 a plain archive (compression 0, no frames: only the pinned
//! header and extent headers, for remote archives), 4 gzip spans from deflate checkpoints (frame `c_off` is the
//! byte holding a span's first bit, `bits` the bits of it that belong to the
//! span before; `crc` with `sums & 2` the CRC-32 of the span's decoded bytes).
//! Version 1 (no checkpoints) is refused, so its sidecars are rebuilt.
//!
//! The cache file (`.vmacache`) is a valid multi-frame zstd file: a skippable
//! frame holding `"VMACACHE"` and the cache id, then the data frames.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::types::{Frame, Pinned, Point, Points, WINDOW};
use crate::zstd_frame::ZSTD_SKIPPABLE;
use vma_format::compress::Compression;

pub(crate) const MAGIC: [u8; 8] = *b"VMAIDX\r\n";
pub(crate) const VERSION: u32 = 2;
const FIXED: usize = 128;
const FRAME_BYTES: usize = 41;
const RANGE_BYTES: usize = 20;
const POINT_BYTES: usize = 17;
pub(crate) const CACHE_MAGIC: [u8; 8] = *b"VMACACHE";
/// Length of the cache file's identification frame.
pub(crate) const CACHE_HEAD: u64 = 8 + 24;

/// What the frame table indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// lzop blocks of the archive.
    Lzo = 1,
    /// zstd frames of the archive.
    ZstdFrames = 2,
    /// zstd frames of the cache file.
    Cache = 3,
    /// gzip spans of the archive, each from a deflate checkpoint.
    Gzip = 4,
    /// A plain archive: no frames, only the pinned VMA structures (kept
    /// for a remote archive, where reading every extent header costs a
    /// request each).
    Plain = 5,
}

/// Identity of the archive the index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uuid: [u8; 16],
}

/// The modification time as (seconds, nanoseconds) since the Unix epoch.
#[cfg(unix)]
pub(crate) fn mtime(meta: &fs::Metadata) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec() as u32)
}

/// The modification time as (seconds, nanoseconds) since the Unix epoch
/// (Windows keeps 100 ns ticks; a time before 1970 or unknown counts as 0,
/// which only makes the sidecar look stale).
#[cfg(not(unix))]
pub(crate) fn mtime(meta: &fs::Metadata) -> (i64, u32) {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or((0, 0), |d| {
            (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            )
        })
}

/// The decoded sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sidecar {
    pub kind: Kind,
    pub compression: Compression,
    pub stamp: Stamp,
    pub size: u64,
    pub cache_id: [u8; 16],
    pub cache_size: u64,
    pub frames: Vec<Frame>,
    pub pinned: Pinned,
    /// [`Kind::Gzip`]: one checkpoint per frame.
    pub points: Points,
}

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Zstd => 1,
        Compression::Gzip => 2,
        Compression::Lzo => 3,
    }
}

impl Sidecar {
    /// A plain archive's: no frames, only its pinned VMA structures.
    pub fn plain(stamp: Stamp, pinned: Pinned) -> Sidecar {
        Sidecar {
            kind: Kind::Plain,
            compression: Compression::None,
            stamp,
            size: stamp.size,
            cache_id: [0; 16],
            cache_size: 0,
            frames: Vec::new(),
            pinned,
            points: Default::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            FIXED
                + self.frames.len() * FRAME_BYTES
                + self.pinned.ranges.len() * RANGE_BYTES
                + self.pinned.blob.len()
                + self.points.points.len() * POINT_BYTES
                + self.points.blob.len()
                + 4,
        );
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(self.kind as u8);
        b.push(compression_code(self.compression));
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.stamp.size.to_le_bytes());
        b.extend_from_slice(&self.stamp.mtime.to_le_bytes());
        b.extend_from_slice(&self.stamp.mtime_nsec.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.stamp.uuid);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.cache_id);
        b.extend_from_slice(&self.cache_size.to_le_bytes());
        b.extend_from_slice(&(self.frames.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.pinned.ranges.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.pinned.blob.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.points.points.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.points.blob.len() as u64).to_le_bytes());
        debug_assert_eq!(b.len(), FIXED);
        for f in &self.frames {
            for v in [f.c_off, f.c_len, f.u_off, f.u_len] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&f.adler.to_le_bytes());
            b.extend_from_slice(&f.crc.to_le_bytes());
            b.push(f.sums);
        }
        for &(off, len, at) in &self.pinned.ranges {
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&at.to_le_bytes());
        }
        b.extend_from_slice(&self.pinned.blob);
        for p in &self.points.points {
            b.push(p.bits);
            b.extend_from_slice(&p.window_len.to_le_bytes());
            b.extend_from_slice(&p.at.to_le_bytes());
            b.extend_from_slice(&p.len.to_le_bytes());
        }
        b.extend_from_slice(&self.points.blob);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a sidecar; the error says why it is not usable.
    pub fn decode(b: &[u8]) -> Result<Sidecar, String> {
        if b.len() < FIXED + 4 {
            return Err("too short".into());
        }
        if b[..8] != MAGIC {
            return Err("not a vma index (bad magic)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader { b: body, at: 8 };
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("version {version}, expected {VERSION}"));
        }
        let kind = match r.u8()? {
            1 => Kind::Lzo,
            2 => Kind::ZstdFrames,
            3 => Kind::Cache,
            4 => Kind::Gzip,
            5 => Kind::Plain,
            k => return Err(format!("unknown kind {k}")),
        };
        let compression = match r.u8()? {
            0 if kind == Kind::Plain => Compression::None,
            1 => Compression::Zstd,
            2 => Compression::Gzip,
            3 => Compression::Lzo,
            c => return Err(format!("unknown compression {c}")),
        };
        r.take(2)?;
        let size = r.u64()?;
        let mtime = r.u64()? as i64;
        let mtime_nsec = r.u32()?;
        r.take(4)?;
        let uuid = r.take(16)?.try_into().expect("16");
        let stamp = Stamp {
            size,
            mtime,
            mtime_nsec,
            uuid,
        };
        let dsize = r.u64()?;
        let cache_id = r.take(16)?.try_into().expect("16");
        let cache_size = r.u64()?;
        let nframes = r.u64()?;
        let nranges = r.u64()?;
        let blob_len = r.u64()?;
        let npoints = r.u64()?;
        let windows_len = r.u64()?;
        let rest = (body.len() - r.at) as u64;
        let need = nframes
            .checked_mul(FRAME_BYTES as u64)
            .and_then(|f| f.checked_add(nranges.checked_mul(RANGE_BYTES as u64)?))
            .and_then(|n| n.checked_add(blob_len))
            .and_then(|n| n.checked_add(npoints.checked_mul(POINT_BYTES as u64)?))
            .and_then(|n| n.checked_add(windows_len));
        if need != Some(rest) {
            return Err("table sizes do not match the file length".into());
        }
        let mut frames = Vec::with_capacity(nframes as usize);
        let mut u_end = 0u64;
        for _ in 0..nframes {
            let f = Frame {
                c_off: r.u64()?,
                c_len: r.u64()?,
                u_off: r.u64()?,
                u_len: r.u64()?,
                adler: r.u32()?,
                crc: r.u32()?,
                sums: r.u8()?,
            };
            if f.u_off != u_end || f.c_off.checked_add(f.c_len).is_none() {
                return Err("frame table is not contiguous".into());
            }
            u_end = f
                .u_off
                .checked_add(f.u_len)
                .ok_or("frame table overflows")?;
            frames.push(f);
        }
        // A plain archive's stream is the archive itself: no frames.
        if kind == Kind::Plain {
            if nframes != 0 || dsize != size || cache_size != 0 {
                return Err("plain index with frames or a cache file".into());
            }
        } else if u_end != dsize {
            return Err("frame table does not cover the stream".into());
        }
        let mut pinned = Pinned::default();
        let mut last_end = 0u64;
        for _ in 0..nranges {
            let (off, len, at) = (r.u64()?, r.u32()?, r.u64()?);
            let end = off
                .checked_add(u64::from(len))
                .ok_or("pinned range overflows")?;
            if off < last_end
                || end > dsize
                || at.checked_add(u64::from(len)).is_none_or(|e| e > blob_len)
            {
                return Err("pinned ranges out of order or out of bounds".into());
            }
            last_end = end;
            pinned.ranges.push((off, len, at));
        }
        pinned.blob = r.take(blob_len as usize)?.to_vec();
        let want_points = if kind == Kind::Gzip { nframes } else { 0 };
        if npoints != want_points {
            return Err("checkpoint count does not match the frame count".into());
        }
        let mut points = Points::default();
        for f in frames.iter().take(npoints as usize) {
            let p = Point {
                bits: r.u8()?,
                window_len: r.u32()?,
                at: r.u64()?,
                len: r.u32()?,
            };
            if p.bits > 7
                || (p.bits > 0 && f.c_len == 0)
                || p.window_len as usize > WINDOW
                || (p.window_len == 0) != (p.len == 0)
                || p.at
                    .checked_add(u64::from(p.len))
                    .is_none_or(|e| e > windows_len)
            {
                return Err("gzip checkpoint out of bounds".into());
            }
            points.points.push(p);
        }
        points.blob = r.take(windows_len as usize)?.to_vec();
        Ok(Sidecar {
            kind,
            compression,
            stamp,
            size: dsize,
            cache_id,
            cache_size,
            frames,
            pinned,
            points,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at.checked_add(n).ok_or("truncated")?)
            .ok_or("truncated")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// The cache file's first bytes: a zstd skippable frame with the cache id.
pub(crate) fn cache_head(id: &[u8; 16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(CACHE_HEAD as usize);
    b.extend_from_slice(&ZSTD_SKIPPABLE.to_le_bytes());
    b.extend_from_slice(&24u32.to_le_bytes());
    b.extend_from_slice(&CACHE_MAGIC);
    b.extend_from_slice(id);
    b
}

/// The cache file that belongs to a sidecar path.
pub(crate) fn cache_path(sidecar: &Path) -> PathBuf {
    sidecar.with_extension("vmacache")
}

/// `<archive>.vmaidx`, next to the archive.
pub(crate) fn beside(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".vmaidx");
    PathBuf::from(s)
}

/// `<dir>/<file name>-<hash of the canonical path>.vmaidx`.
pub(crate) fn in_dir(dir: &Path, archive: &Path) -> PathBuf {
    use md5::{Digest, Md5};
    let canon = fs::canonicalize(archive).unwrap_or_else(|_| archive.to_path_buf());
    let hash = Md5::digest(canon.as_os_str().as_encoded_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = archive
        .file_name()
        .map_or_else(|| "archive".into(), |n| n.to_string_lossy().into_owned());
    dir.join(format!("{name}-{hex}.vmaidx"))
}

/// `$XDG_CACHE_HOME/vma-rs`, else `~/.cache/vma-rs`.
pub(crate) fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("vma-rs"))
}

/// A temporary file in `dir`, renamed over its final name by [`Temp::persist`]
/// (tempfile's `NamedTempFile`: a unique name, removed on drop unless
/// persisted or unlinked).
pub(crate) struct Temp(tempfile::NamedTempFile);

impl Temp {
    /// Fails when `dir` does not take new files (read-only, missing, not a directory).
    pub fn new_in(dir: &Path, stem: &str) -> io::Result<Temp> {
        tempfile::Builder::new()
            .prefix(&format!(".{stem}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map(Temp)
    }

    /// Its current name.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The open file.
    pub fn file(&mut self) -> &mut File {
        self.0.as_file_mut()
    }

    /// Syncs the file, renames it to `to`, then syncs the directory: once
    /// this returns, `to` survives a crash with this content (what makes a
    /// sidecar written after its cache file a commit point). The rename
    /// replaces `to` on purpose (not `persist_noclobber`): `to` is the
    /// placeholder `claim` left, or an older sidecar being rebuilt.
    pub fn persist(mut self, to: &Path) -> io::Result<File> {
        self.0.as_file_mut().flush()?;
        self.0.as_file().sync_all()?;
        let file = self.0.persist(to).map_err(|e| e.error)?;
        sync_dir(to.parent().unwrap_or(Path::new(".")))?;
        Ok(file)
    }

    /// Removes the name at once: the file lives until its last descriptor closes.
    pub fn unlink(self) -> io::Result<File> {
        Ok(self.0.into_file())
    }
}

/// fsync(2) on a directory, so that a rename in it is durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file to flush it; NTFS journals the
/// rename itself, so there is nothing to do.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Whether new files can be created in `dir` (tried, not guessed from modes:
/// root, ACLs and read-only mounts all answer correctly).
pub fn dir_writable(dir: &Path) -> bool {
    Temp::new_in(dir, "vmaidx-probe").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sidecar {
        let mut pinned = Pinned::default();
        pinned.push(0, &[1; 100]);
        pinned.push(200, &[2; 50]);
        Sidecar {
            kind: Kind::Lzo,
            compression: Compression::Lzo,
            stamp: Stamp {
                size: 12345,
                mtime: -5,
                mtime_nsec: 999,
                uuid: [7; 16],
            },
            size: 300,
            cache_id: [0; 16],
            cache_size: 0,
            frames: vec![
                Frame {
                    c_off: 50,
                    c_len: 10,
                    u_off: 0,
                    u_len: 256,
                    adler: 1,
                    crc: 0,
                    sums: 1,
                },
                Frame {
                    c_off: 70,
                    c_len: 5,
                    u_off: 256,
                    u_len: 44,
                    adler: 2,
                    crc: 0,
                    sums: 1,
                },
            ],
            pinned,
            points: Points::default(),
        }
    }

    /// [`sample`] as a gzip index: two spans, the second from a checkpoint
    /// at bit 3 with a window.
    fn sample_gzip() -> Sidecar {
        let mut s = sample();
        s.kind = Kind::Gzip;
        s.compression = Compression::Gzip;
        for f in &mut s.frames {
            (f.adler, f.crc, f.sums) = (0, 0xDEAD_BEEF, 2);
        }
        s.points.points = vec![
            Point {
                bits: 0,
                window_len: 0,
                at: 0,
                len: 0,
            },
            Point {
                bits: 3,
                window_len: 256,
                at: 0,
                len: 9,
            },
        ];
        s.points.blob = vec![5; 9];
        s
    }

    /// A plain archive's: no frames, the archive's own size, compression 0.
    fn sample_plain() -> Sidecar {
        let mut pinned = Pinned::default();
        pinned.push(0, &[1; 100]);
        pinned.push(4096, &[2; 512]);
        let stamp = Stamp {
            size: 10_000,
            mtime: 1,
            mtime_nsec: 0,
            uuid: [7; 16],
        };
        Sidecar::plain(stamp, pinned)
    }

    #[test]
    fn round_trips() {
        for s in [sample(), sample_gzip(), sample_plain()] {
            assert_eq!(Sidecar::decode(&s.encode()), Ok(s));
        }
    }

    #[test]
    fn a_plain_index_with_frames_or_another_size_is_refused() {
        let mut s = sample_plain();
        s.size = 9_999;
        assert!(Sidecar::decode(&s.encode()).is_err());
        let mut s = sample_plain();
        s.frames = sample().frames;
        s.size = s.frames.iter().map(|f| f.u_len).sum();
        s.stamp.size = s.size;
        assert!(Sidecar::decode(&s.encode()).is_err());
        // Compression "none" belongs to the plain kind only.
        let mut s = sample();
        s.compression = Compression::None;
        assert!(Sidecar::decode(&s.encode()).is_err());
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_refused() {
        for s in [sample(), sample_gzip(), sample_plain()] {
            let b = s.encode();
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x40;
                assert!(Sidecar::decode(&c).is_err(), "flip at {i}");
            }
            for n in 0..b.len() {
                assert!(Sidecar::decode(&b[..n]).is_err(), "truncated to {n}");
            }
        }
    }

    #[test]
    fn version_1_sidecars_are_refused() {
        let mut b = sample().encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Sidecar::decode(&b).unwrap_err(), "version 1, expected 2");
    }

    #[test]
    fn bad_checkpoints_are_refused_even_with_a_good_crc() {
        let cases: [fn(&mut Sidecar); 6] = [
            |s| s.points.points[1].bits = 8,
            |s| s.points.points[1].window_len = 32769,
            |s| s.points.points[1].at = 1,   // past the blob's end
            |s| s.points.points[1].len = 0,  // a window of no bytes
            |s| s.points.points.truncate(1), // fewer checkpoints than frames
            |s| s.kind = Kind::Lzo,          // checkpoints on another kind
        ];
        for (k, f) in cases.iter().enumerate() {
            let mut s = sample_gzip();
            f(&mut s);
            assert!(Sidecar::decode(&s.encode()).is_err(), "case {k}");
        }
        // Huge counts are refused by the length check, before any allocation.
        let mut b = sample_gzip().encode();
        b[112..120].copy_from_slice(&u64::MAX.to_le_bytes());
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(Sidecar::decode(&b).unwrap_err().contains("table sizes"));
    }

    #[test]
    fn inconsistent_tables_are_refused_even_with_a_good_crc() {
        let mut s = sample();
        s.frames[1].u_off = 255;
        assert!(Sidecar::decode(&s.encode())
            .unwrap_err()
            .contains("contiguous"));
        let mut s = sample();
        s.size = 301;
        assert!(Sidecar::decode(&s.encode()).is_err());
        let mut s = sample();
        s.pinned.ranges[1].0 = 50;
        assert!(Sidecar::decode(&s.encode()).is_err());
    }

    #[test]
    fn writable_check_tries_for_real() {
        let d = tempfile::tempdir().unwrap();
        assert!(dir_writable(d.path()));
        // Leaves nothing behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        // A "directory" that is a regular file refuses new files even for root.
        let f = d.path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(!dir_writable(&f));
        assert!(!dir_writable(&d.path().join("missing")));
    }

    #[test]
    fn names() {
        assert_eq!(
            beside(Path::new("/a/b.vma.zst")),
            Path::new("/a/b.vma.zst.vmaidx")
        );
        assert_eq!(
            cache_path(Path::new("/a/b.vma.zst.vmaidx")),
            Path::new("/a/b.vma.zst.vmacache")
        );
        let p = in_dir(Path::new("/c"), Path::new("/nonexistent/x.vma.gz"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("x.vma.gz-") && name.ends_with(".vmaidx"),
            "{name}"
        );
        assert_ne!(p, in_dir(Path::new("/c"), Path::new("/other/x.vma.gz")));
    }
}
