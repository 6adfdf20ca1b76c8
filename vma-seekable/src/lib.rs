#![doc = include_str!("../README.md")]
//!
//! ## How
//!
//! Random access into compressed archives without a decompressed copy.
//! This crate owns [`open`], [`open_seekable`] and [`build_index`]: they give a
//! [`ReadAt`] over the *decompressed* VMA stream of a plain, zstd, gzip or
//! lzop archive, for [`vma_format::IndexedReader`]. They open a file;
//! [`open_source`] opens any [`ReadAt`] (bytes in memory, a remote object
//! read by ranges) given its [`Identity`] (name, size, modification time),
//! which keys and validates a sidecar.
//!
//! How each format is made seekable:
//!
//! - **plain**: the file itself.
//! - **lzop**: a table of the lzop blocks (compressed offset and length,
//!   decompressed offset and length, checksums), built by walking the block
//!   headers and seeking over the data. A read decodes only its blocks.
//! - **zstd, several frames** (`vma create --compress zstd` ends a frame every
//!   512 KiB of archive stream; concatenated `zstd` outputs have one frame per
//!   part): a table of the frames, from their frame and block headers
//!   (Frame_Content_Size, or one decode when a frame lacks it). A read decodes
//!   only its frames, and on a frame's first touch only as far as the read
//!   needs. Used when no frame decodes to more than
//!   [`SeekOptions::max_direct_frame`]. A random 4 KiB read that misses the
//!   cache decodes at most a frame (512 KiB: a fraction of a
//!   millisecond; 8 MiB: a few ms); lowering `max_direct_frame` trades a cache
//!   file for faster random reads.
//! - **gzip** (`gzip`, `pigz`, `pigz --rsyncable`, concatenated members):
//!   deflate **checkpoints**, as zlib's `zran.c` does (`seekable/gzip.rs`). One
//!   decoding pass, stopping at every deflate block boundary, records a
//!   checkpoint at each member start and then at the first block boundary
//!   [`SeekOptions::gzip_span`] (2 MiB) of output after the previous one: the
//!   compressed byte and bit where the next block starts, and the 32 KiB
//!   window before it (zstd-compressed in the sidecar). The pass checks each
//!   member's CRC-32 and ISIZE and records a CRC-32 per span. A read starts
//!   an inflater at the checkpoint before it (primed with the bits, the
//!   window as dictionary) and decodes forward, only as far as the read needs
//!   on the first touch (like large zstd frames); a whole span is checked
//!   against its CRC-32. No cache file.
//! - **zstd, one big frame** (plain `zstd`, what vzdump writes): there is no
//!   place to start decoding but the beginning, and zstd's decoder state
//!   cannot be restored mid-frame. So one decoding pass writes a **cache
//!   file** of the decompressed stream (the archive's stored data; zero
//!   blocks are not in a VMA stream): independent zstd frames of
//!   [`SeekOptions::cache_frame_size`] bytes (256 KiB), each with a content
//!   checksum, itself a valid multi-frame `.zst` file (`seekable/scan.rs`).
//!   Frames are compressed (level [`SeekOptions::cache_level`]) by
//!   low-priority worker threads when the CPU has room; the decoder never
//!   waits for them, so when they are busy — or the data looks random — a
//!   frame is stored as zstd raw blocks, and a frame that arrives late takes
//!   a reserved place padded by a skippable frame (a hole on disk). The
//!   first mount thus costs about one decompression; the cache is between
//!   the compressed and the decompressed size, depending on spare CPU.
//!   Reads then decode cache frames.
//!
//! Decoded frames are kept in an LRU cache bounded by
//! [`SeekOptions::memory`] (32 MiB by default, at least two frames). The VMA
//! header and every extent header are recorded when the index is built and
//! kept in the sidecar, so that [`vma_format::IndexedReader::open`], which reads
//! all of them, decodes nothing on a reused index. Building the index for a
//! frame table decodes only what that takes: the lzop blocks holding a
//! header (about one in fifteen), or, for frames of several MiB, every frame
//! on [`SeekOptions::threads`] threads.
//!
//! Where the index is kept is [`SeekOptions::store`], an [`IndexStore`]. By
//! default ([`IndexStore::Memory`]) nothing is kept: no sidecar is read or
//! written, every open builds the index, and a cache file is an unlinked
//! temporary file in [`SeekOptions::temp_dir`]. Asked for explicitly (`vma
//! mount`, `vma index` and `vma serve` do), the index is kept in a
//! **sidecar** (format in [`sidecar`]): `<archive>.vmaidx` beside the archive
//! ([`IndexStore::BesideArchive`], falling back to a directory such as
//! [`user_cache_dir`] when that cannot be written) or in a directory of
//! your choice ([`IndexStore::Dir`]) under a name derived from the
//! archive's canonical path; the cache file is its sibling with the
//! extension `.vmacache`. A sidecar is only used when its checksum, version,
//! the archive's size, mtime (ns) and VMA UUID all match; otherwise it is
//! rebuilt. [`remove_index`] deletes both.
//!
//! An index build can be stopped from another thread or a signal handler
//! ([`SeekOptions::cancel`]): its loops and worker threads look at the flag
//! at least once per frame or cache chunk, and the open fails with
//! [`Error::Cancelled`] having removed its temporary and partial files.
//!
//! Before a cache file is written, [`SeekOptions::notice`] is told where it
//! goes and how big it can get: the decompressed size from the zstd frame
//! header, else a bound from the devices' sizes in the VMA header. A place
//! whose filesystem lacks that much free space plus a margin
//! ([`CACHE_MARGIN_PERCENT`], [`CACHE_MARGIN_FIXED`]) is skipped with the
//! numbers (when only the bound does not fit, one decoding pass measures the
//! real size first), and the pass stops if the stream outgrows what was
//! checked. The cache file and then its directory are synced before the
//! sidecar is written (synced too): the sidecar is the commit point. On
//! open, a cache whose length, id or sampled frame starts do not match the
//! sidecar (cut short, missing, or never written after a crash) is rebuilt.
//!
//! Benchmark (first open vs the command-line decompressor, reopen, index and
//! cache sizes, random 4 KiB reads/s for each form):
//! `SEEK_BENCH_MIB=256 cargo run --release -p vma-seekable --example seekable_bench`
//! (`vma-seekable/examples/seekable_bench.rs`; its doc lists the env variables).
//!
//! ## Layout
//!
//! The modules form a DAG, each using only those listed before it (checked
//! with `grep -n 'use crate::\|crate::[a-z_]*::' src/*.rs`):
//!
//! 0. `sys`: every `unsafe` call, behind safe functions — OS calls
//!    (`sys`: statvfs, setpriority, sync_file_range; GetDiskFreeSpaceExW on
//!    Windows) and `sys::zlib`, the binding to zlib's C API that gzip
//!    checkpoints need (inflatePrime, Z_BLOCK, raw dictionaries: flate2
//!    exposes none of them); it imports nothing of the crate;
//! 1. data types: `types` (Frame, Codec, Pinned, Point, Points), `walker`
//!    (VmaWalker: the VMA structure followed through a passing stream);
//! 2. codecs: `gzip` (checkpoint pass, span
//!    decoding), `zstd_frame` (frame header walk, raw frames and their
//!    XXH64), `lzo` (lzop block table);
//! 3. sources: `source` (FrameSource, the [`ReadAt`] over a frame table;
//!    the gzip tests live below it in `gzip_tests`), `pin` (walks that pin
//!    the VMA structures through a source);
//! 4. storage: `cache` (the cache-file pass), `sidecar`
//!    (the index file, its places, temporary files);
//! 5. this file: the policy ([`SeekOptions`], [`IndexStore`]) and [`open`].
//!
//! `unsafe` is denied in the crate root and allowed in `sys` only (with its
//! submodule `sys::zlib`), each block with a `// SAFETY:` comment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// The modules by layer; each uses only the layers above it and, within its
// layer, those named before it in the crate doc's "Layout".
// every `unsafe` call
#[allow(unsafe_code)]
mod sys;
// data types
mod types;
mod walker;
// codecs
mod gzip;
mod lzo;
mod zstd_frame;
// sources
mod pin;
mod source;
// storage
mod cache;
pub mod sidecar;

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache::CacheSpec;
use sidecar::{Kind, Sidecar, Stamp, Temp};
use source::FrameSource;
use types::{Codec, Cursor, Frame, Pinned};
use vma_format::compress::{detect, Compression, LZOP_MAGIC};
use vma_format::error::{Error, Result};
use vma_format::raw::{hdr, MAGIC};
use vma_format::ReadAt;

pub use sidecar::dir_writable;

/// Default of [`SeekOptions::gzip_span`].
///
/// Measured with `seekable_bench` on a 512 MiB archive (gzip -1, half random
/// data, 2 shared cores): 1 MiB spans 650-930 random 4 KiB reads/s with a
/// sidecar of 3.7% of the archive, 2 MiB ~360/s and 2.0%, 4 MiB 190-270/s
/// and 1.0%. A read that misses decodes half a span on average.
pub const DEFAULT_GZIP_SPAN: u64 = 2 << 20;

/// Progress callback: `(compressed bytes consumed, archive size)`.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Receives what the user should know before a cache file is written
/// (where it goes, how big it can get), one complete sentence per call.
pub type Notice = Arc<dyn Fn(&str) + Send + Sync>;

/// Free space a cache file must leave on its filesystem, beyond
/// [`CACHE_MARGIN_PERCENT`] of its size: a full backup storage breaks the
/// next backup.
pub const CACHE_MARGIN_FIXED: u64 = 256 << 20;

/// Free space a cache file must leave, in percent of its largest size.
pub const CACHE_MARGIN_PERCENT: u64 = 5;

/// Where the index of a compressed archive (sidecar and cache file) is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexStore {
    /// Nowhere on disk (the default): no sidecar is read or written, every
    /// open builds the index, and a cache file is an unlinked temporary
    /// file in [`SeekOptions::temp_dir`], gone when the source is dropped.
    #[default]
    Memory,
    /// `<archive>.vmaidx` (and `.vmacache`) beside the archive; where that
    /// directory cannot be written, in `fallback` under a name derived from
    /// the archive's canonical path (`vma mount` gives [`user_cache_dir`]).
    BesideArchive {
        /// The directory to use when the archive's own is not writable.
        fallback: Option<PathBuf>,
    },
    /// Only in this directory, under a name derived from the archive's
    /// canonical path.
    Dir(PathBuf),
    /// An archive that is not a local file (an object in a bucket): the
    /// sidecar is first looked up and stored `beside` it (`<key>.vmaidx`),
    /// then in `local` under a name derived from [`Identity::name`]. A
    /// cache file (one-frame zstd) and its sidecar are only ever local: a
    /// sidecar in the bucket must serve every host that reads the archive.
    /// A plain archive gets a sidecar too (its header and extent headers):
    /// reading them from the object costs a request per extent.
    Remote {
        /// The sidecar's place beside the archive.
        beside: Beside,
        /// The local directory for the sidecar (when `beside` cannot be
        /// written) and for a cache file.
        local: Option<PathBuf>,
    },
}

/// Where a sidecar lives when it is not a local file: an object beside a
/// remote archive. Implemented by the caller (vma-cli over vma-remote).
pub trait SidecarStore: Send + Sync {
    /// Its name, for messages and [`IndexInfo::sidecar`] (no secrets).
    fn name(&self) -> String;
    /// Its bytes, or `None` if there is no such object.
    fn get(&self) -> std::io::Result<Option<Vec<u8>>>;
    /// Stores `bytes` (replacing any); an error when the place is read-only.
    fn put(&self, bytes: &[u8]) -> std::io::Result<()>;
    /// Deletes it; `false` if there was none.
    fn delete(&self) -> std::io::Result<bool>;
}

/// A shared [`SidecarStore`] (compared by identity).
#[derive(Clone)]
pub struct Beside(pub Arc<dyn SidecarStore>);

impl PartialEq for Beside {
    fn eq(&self, other: &Beside) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Beside {}

impl fmt::Debug for Beside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Beside({})", self.0.name())
    }
}

impl IndexStore {
    /// What `vma mount`, `vma index` and `vma serve` use: `dir` if given,
    /// else beside the archive, falling back to [`user_cache_dir`].
    pub fn on_disk(dir: Option<PathBuf>) -> IndexStore {
        match dir {
            Some(d) => IndexStore::Dir(d),
            None => IndexStore::BesideArchive {
                fallback: user_cache_dir(),
            },
        }
    }
}

/// The user's cache directory for indexes: `$XDG_CACHE_HOME/vma-rs`, else
/// `~/.cache/vma-rs` (`None` without either variable).
pub fn user_cache_dir() -> Option<PathBuf> {
    sidecar::user_cache_dir()
}

/// A request to stop an index build, polled by its loops and worker threads.
///
/// Built from a flag another thread sets ([`Cancel::flag`]) or from any
/// check ([`Cancel::when`]: `vma mount` asks whether a signal is pending).
#[derive(Clone)]
pub struct Cancel(Arc<dyn Fn() -> bool + Send + Sync>);

impl Cancel {
    /// Cancelled once `flag` is true.
    pub fn flag(flag: Arc<std::sync::atomic::AtomicBool>) -> Cancel {
        Cancel(Arc::new(move || {
            flag.load(std::sync::atomic::Ordering::Relaxed)
        }))
    }

    /// Cancelled once `check` returns true (it must be cheap: it is called
    /// once per frame or chunk).
    pub fn when(check: impl Fn() -> bool + Send + Sync + 'static) -> Cancel {
        Cancel(Arc::new(check))
    }

    /// Whether the build should stop.
    pub fn is_cancelled(&self) -> bool {
        (self.0)()
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cancel")
    }
}

/// How [`open`] and [`build_index`] find, build and use the index.
#[derive(Clone)]
#[non_exhaustive]
pub struct SeekOptions {
    /// Where the index is kept (default: in memory only).
    pub store: IndexStore,
    /// Where [`IndexStore::Memory`] puts its unlinked cache file (default:
    /// the system's temporary directory).
    pub temp_dir: Option<PathBuf>,
    /// Stops an index build; the open then fails with [`Error::Cancelled`].
    pub cancel: Option<Cancel>,
    /// Rebuild even if a valid sidecar exists.
    pub rebuild: bool,
    /// Bytes of decoded frames kept in memory (at least two frames are).
    pub memory: usize,
    /// Decompressed bytes per frame of a cache file.
    pub cache_frame_size: usize,
    /// zstd level of the cache file.
    pub cache_level: i32,
    /// Threads for decoding (index build) and compressing (cache file);
    /// 0 = available parallelism.
    pub threads: usize,
    /// Largest zstd frame read directly from the archive; archives with a
    /// larger frame go through a cache file. Random reads cost a decode of
    /// up to this many bytes (cache frames: `cache_frame_size`).
    pub max_direct_frame: u64,
    /// gzip: decompressed bytes between deflate checkpoints (at least; a
    /// checkpoint waits for the next deflate block boundary). A random read
    /// that misses the cache decodes up to this much; the sidecar keeps a
    /// compressed 32 KiB window per checkpoint.
    pub gzip_span: u64,
    /// Called during the decoding pass.
    pub progress: Option<Progress>,
    /// Told where a cache file goes and how big it can get, before it is
    /// written (and before a pass that only measures the decompressed size).
    pub notice: Option<Notice>,
}

impl Default for SeekOptions {
    fn default() -> Self {
        SeekOptions {
            store: IndexStore::Memory,
            temp_dir: None,
            cancel: None,
            rebuild: false,
            memory: 32 << 20,
            cache_frame_size: 256 << 10,
            cache_level: 1,
            threads: 0,
            max_direct_frame: 16 << 20,
            gzip_span: DEFAULT_GZIP_SPAN,
            progress: None,
            notice: None,
        }
    }
}

impl SeekOptions {
    /// Calls the progress callback, if any.
    fn report(&self, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(done, total);
        }
    }

    /// Whether the build was asked to stop.
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// `Err(Cancelled)` once the build was asked to stop.
    fn check_cancel(&self) -> Result<()> {
        if self.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Calls the notice callback, if any.
    fn notify(&self, msg: &str) {
        if let Some(n) = &self.notice {
            n(msg);
        }
    }
}

impl fmt::Debug for SeekOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeekOptions")
            .field("store", &self.store)
            .field("temp_dir", &self.temp_dir)
            .field("cancel", &self.cancel.is_some())
            .field("rebuild", &self.rebuild)
            .field("memory", &self.memory)
            .field("cache_frame_size", &self.cache_frame_size)
            .field("cache_level", &self.cache_level)
            .field("threads", &self.threads)
            .field("max_direct_frame", &self.max_direct_frame)
            .field("gzip_span", &self.gzip_span)
            .field("progress", &self.progress.is_some())
            .field("notice", &self.notice.is_some())
            .finish()
    }
}

/// How the decompressed stream is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// A plain archive: no index.
    Plain,
    /// lzop blocks of the archive.
    LzoBlocks,
    /// zstd frames of the archive.
    ZstdFrames,
    /// zstd frames of the cache file.
    CacheFile,
    /// Spans of the gzip archive, each decoded from a deflate checkpoint.
    GzipCheckpoints,
}

/// What [`open_seekable`] / [`build_index`] found or did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IndexInfo {
    /// The archive's compression.
    pub compression: Compression,
    /// How reads are served.
    pub kind: IndexKind,
    /// The sidecar in use (`None`: plain, or it could not be written).
    pub sidecar: Option<PathBuf>,
    /// Its size in bytes.
    pub sidecar_bytes: u64,
    /// The cache file ([`IndexKind::CacheFile`]).
    pub cache: Option<PathBuf>,
    /// Its size in bytes.
    pub cache_bytes: u64,
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// Size of the decompressed VMA stream.
    pub decompressed_bytes: u64,
    /// Frames (or lzop blocks) in the table; for a plain archive
    /// ([`IndexStore::Remote`]), the extent headers kept.
    pub frames: usize,
    /// The index was built now (not loaded from a sidecar).
    pub rebuilt: bool,
    /// Why existing sidecars were not used, or why none could be written.
    pub notes: Vec<String>,
    /// Time taken by the call.
    pub elapsed: Duration,
}

impl IndexInfo {
    /// No index (yet) of an archive of `size` bytes: a plain one's.
    fn none(compression: Compression, size: u64) -> IndexInfo {
        IndexInfo {
            compression,
            kind: IndexKind::Plain,
            sidecar: None,
            sidecar_bytes: 0,
            cache: None,
            cache_bytes: 0,
            archive_bytes: size,
            decompressed_bytes: size,
            frames: 0,
            rebuilt: false,
            notes: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// An opened archive: the decompressed stream and how it was reached.
pub struct Seekable {
    /// The archive's compression.
    pub compression: Compression,
    /// Positional reads of the decompressed VMA stream.
    pub source: Box<dyn ReadAt>,
    /// Index details.
    pub info: IndexInfo,
}

impl fmt::Debug for Seekable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seekable")
            .field("info", &self.info)
            .finish()
    }
}

/// Opens `path` for random access to its decompressed VMA stream, reusing or
/// (re)building the index as needed.
pub fn open(path: &Path, opts: &SeekOptions) -> Result<(Compression, Box<dyn ReadAt>)> {
    let s = open_seekable(path, opts)?;
    Ok((s.compression, s.source))
}

/// Makes sure a valid index exists for `path` (building it unless one is
/// valid, or always with [`SeekOptions::rebuild`]) and says where it is.
pub fn build_index(path: &Path, opts: &SeekOptions) -> Result<IndexInfo> {
    Ok(open_seekable(path, opts)?.info)
}

fn read_err(path: &Path, offset: u64, e: std::io::Error) -> Error {
    Error::Read {
        offset,
        source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

fn write_err(path: &Path, e: std::io::Error) -> Error {
    Error::Write {
        offset: 0,
        source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

/// What ties an index to the archive it was built from, besides the VMA
/// UUID (which is read from the archive): a name, its size and its
/// modification time. A sidecar whose size or time differ is stale.
///
/// The name is used in messages, and [`IndexStore::BesideArchive`] and
/// [`IndexStore::Dir`] derive the sidecar's path from it; a source that is
/// not a local file (an object in a bucket) should use
/// [`IndexStore::Memory`] or [`IndexStore::Dir`] and its last-modified time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The archive's name or path.
    pub name: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time: seconds since the Unix epoch.
    pub mtime: i64,
    /// And nanoseconds.
    pub mtime_nsec: u32,
}

impl Identity {
    /// An identity from its parts.
    pub fn new(name: impl Into<PathBuf>, size: u64, mtime: i64, mtime_nsec: u32) -> Identity {
        Identity {
            name: name.into(),
            size,
            mtime,
            mtime_nsec,
        }
    }

    /// The identity of the file at `path` with metadata `meta`.
    pub fn of_file(path: &Path, meta: &fs::Metadata) -> Identity {
        let (mtime, mtime_nsec) = sidecar::mtime(meta);
        Identity::new(path, meta.len(), mtime, mtime_nsec)
    }
}

/// [`open`], with details of the index.
pub fn open_seekable(path: &Path, opts: &SeekOptions) -> Result<Seekable> {
    let file = File::open(path).map_err(|e| read_err(path, 0, e))?;
    let meta = file.metadata().map_err(|e| read_err(path, 0, e))?;
    open_source(Arc::new(file), Identity::of_file(path, &meta), opts)
}

/// Opens any positional source of a (compressed or plain) archive of
/// `id.size` bytes: a file, bytes in memory, or a remote object read by
/// ranges. [`open_seekable`] is this over a [`File`].
///
/// Everything [`open_seekable`] does applies: the index is looked up and
/// validated against `id` in the places [`SeekOptions::store`] names, or
/// built by reading `source` (one streaming pass for gzip and one-frame
/// zstd; for frame tables, the frame headers and the frames holding VMA
/// structures), and reads of the returned source decode only what they
/// need. `source` is shared: reads go to it for as long as the returned
/// source lives (but for a one-frame zstd, which reads its cache file).
pub fn open_source(source: Arc<dyn ReadAt>, id: Identity, opts: &SeekOptions) -> Result<Seekable> {
    Ok(open_inner(source, id, opts, true)?.expect("built when missing"))
}

/// [`open_source`] without building: `None` when no valid index is found
/// in the places [`SeekOptions::store`] names (a plain archive outside
/// [`IndexStore::Remote`] needs none). For a caller that has a cheaper way
/// than building one, e.g. a compressed remote archive, whose index build
/// reads through the whole object: a streaming read does the same work.
pub fn open_existing(
    source: Arc<dyn ReadAt>,
    id: Identity,
    opts: &SeekOptions,
) -> Result<Option<Seekable>> {
    open_inner(source, id, opts, false)
}

fn open_inner(
    source: Arc<dyn ReadAt>,
    id: Identity,
    opts: &SeekOptions,
    build_it: bool,
) -> Result<Option<Seekable>> {
    let started = Instant::now();
    let path = id.name.as_path();
    let file = source;
    let mut prefix = [0u8; LZOP_MAGIC.len()];
    let n = file
        .read_full_at(0, &mut prefix)
        .map_err(|e| read_err(path, 0, e))?;
    let compression = detect(&prefix[..n]);
    let mut info = IndexInfo::none(compression, id.size);
    let remote = match &opts.store {
        IndexStore::Remote { beside, .. } => Some(beside),
        _ => None,
    };
    if compression == Compression::None && remote.is_none() {
        info.elapsed = started.elapsed();
        return Ok(Some(Seekable {
            compression,
            source: Box::new(file),
            info,
        }));
    }

    // The UUID ties the index to this archive; decoding the first bytes is cheap.
    let mut head = [0u8; hdr::UUID + 16];
    let got = if compression == Compression::None {
        file.read_full_at(0, &mut head)
            .map_err(|e| read_err(path, 0, e))?
    } else {
        let (_, mut r) = vma_format::compress::decompressor(Cursor::new(&*file))?;
        vma_format::header::read_full(&mut r, &mut head, 0)?
    };
    if got < 4 {
        return Err(Error::HeaderEof { got: got as u64 });
    }
    if head[..4] != MAGIC {
        return Err(Error::BadMagic {
            found: head[..4].try_into().expect("4"),
        });
    }
    if got < head.len() {
        return Err(Error::HeaderEof { got: got as u64 });
    }
    let stamp = Stamp {
        size: id.size,
        mtime: id.mtime,
        mtime_nsec: id.mtime_nsec,
        uuid: head[hdr::UUID..].try_into().expect("16"),
    };

    let candidates = candidates(path, opts);
    if !opts.rebuild {
        // The sidecar beside a remote archive, then the local ones.
        // (name, local, bytes): only a local sidecar may name a cache file.
        let beside = remote.and_then(|b| match b.0.get() {
            Ok(Some(bytes)) => Some((PathBuf::from(b.0.name()), false, Ok(bytes))),
            Ok(None) => None,
            Err(e) => Some((PathBuf::from(b.0.name()), false, Err(e))),
        });
        let local = candidates.iter().map(|c| match fs::read(c) {
            Ok(b) => Some((c.clone(), true, Ok(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some((c.clone(), true, Err(e))),
        });
        for (c, local, bytes) in beside.into_iter().chain(local.flatten()) {
            let loaded = match bytes {
                Ok(b) => load(
                    &b,
                    local.then_some(&*c),
                    path,
                    &file,
                    stamp,
                    compression,
                    opts,
                )
                .map(|l| (l, b.len())),
                Err(e) => Err(Some(e.to_string())),
            };
            match loaded {
                Ok(((source, sc, cache), len)) => {
                    info.kind = kind_of(sc.kind);
                    info.sidecar = Some(c.clone());
                    info.sidecar_bytes = len as u64;
                    info.cache_bytes = sc.cache_size;
                    info.cache = cache;
                    info.decompressed_bytes = sc.size;
                    info.frames = table_len(&sc);
                    info.elapsed = started.elapsed();
                    return Ok(Some(Seekable {
                        compression,
                        source,
                        info,
                    }));
                }
                Err(Some(why)) => info.notes.push(format!("{}: {why}", c.display())),
                Err(None) => {}
            }
        }
    }
    if !build_it {
        return Ok(None);
    }
    info.rebuilt = true;
    let source = build(path, file, stamp, compression, &candidates, opts, &mut info)?;
    info.elapsed = started.elapsed();
    Ok(Some(Seekable {
        compression,
        source,
        info,
    }))
}

/// [`IndexInfo::frames`]: the frames, or for a plain archive the extent
/// headers kept (every pinned range but the header's).
fn table_len(sc: &Sidecar) -> usize {
    match sc.kind {
        Kind::Plain => sc.pinned.ranges.len().saturating_sub(1),
        _ => sc.frames.len(),
    }
}

fn kind_of(k: Kind) -> IndexKind {
    match k {
        Kind::Plain => IndexKind::Plain,
        Kind::Lzo => IndexKind::LzoBlocks,
        Kind::ZstdFrames => IndexKind::ZstdFrames,
        Kind::Cache => IndexKind::CacheFile,
        Kind::Gzip => IndexKind::GzipCheckpoints,
    }
}

/// Sidecar paths, in order of preference (none for [`IndexStore::Memory`]).
fn candidates(path: &Path, opts: &SeekOptions) -> Vec<PathBuf> {
    match &opts.store {
        IndexStore::Memory => Vec::new(),
        IndexStore::Dir(d) => vec![sidecar::in_dir(d, path)],
        IndexStore::Remote { local, .. } => {
            local.iter().map(|d| sidecar::in_dir(d, path)).collect()
        }
        IndexStore::BesideArchive { fallback } => {
            let mut v = vec![sidecar::beside(path)];
            v.extend(fallback.as_ref().map(|d| sidecar::in_dir(d, path)));
            v
        }
    }
}

/// A loaded sidecar: the source it gives, the sidecar, its cache file.
type Loaded = (Box<dyn ReadAt>, Sidecar, Option<PathBuf>);

/// The source a sidecar's `bytes` give, if they are valid for this archive
/// (`Err` says why not). `sc_path`: where a local sidecar is, which names
/// its cache file (`None` for one beside a remote archive: no cache file).
fn load(
    bytes: &[u8],
    sc_path: Option<&Path>,
    archive: &Path,
    file: &Arc<dyn ReadAt>,
    stamp: Stamp,
    compression: Compression,
    opts: &SeekOptions,
) -> std::result::Result<Loaded, Option<String>> {
    let sc = Sidecar::decode(bytes)?;
    if sc.stamp.size != stamp.size {
        return Err(Some("stale: archive size changed".into()));
    }
    if (sc.stamp.mtime, sc.stamp.mtime_nsec) != (stamp.mtime, stamp.mtime_nsec) {
        return Err(Some("stale: archive mtime changed".into()));
    }
    if sc.stamp.uuid != stamp.uuid {
        return Err(Some("stale: archive UUID changed".into()));
    }
    if sc.compression != compression {
        return Err(Some("stale: compression changed".into()));
    }
    if sc.kind == Kind::Plain {
        let src = pin::PinnedSource::new(Arc::clone(file), sc.pinned.clone());
        return Ok((Box::new(src), sc, None));
    }
    let (data, data_path, codec, cache) = match sc.kind {
        Kind::Cache => {
            let Some(sc_path) = sc_path else {
                return Err(Some("an index with a cache file must be local".into()));
            };
            let cp = sidecar::cache_path(sc_path);
            let f = File::open(&cp).map_err(|e| format!("cache file {}: {e}", cp.display()))?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            let mut head = [0u8; sidecar::CACHE_HEAD as usize];
            let got = f.read_full_at(0, &mut head).map_err(|e| e.to_string())?;
            if len != sc.cache_size
                || got != head.len()
                || head[..] != sidecar::cache_head(&sc.cache_id)[..]
            {
                return Err(Some(format!("cache file {} does not match", cp.display())));
            }
            (
                Arc::new(f) as Arc<dyn ReadAt>,
                cp.clone(),
                Codec::Zstd,
                Some(cp),
            )
        }
        k => {
            let f = Arc::clone(file);
            let codec = match k {
                Kind::Lzo => Codec::Lzo,
                Kind::Gzip => Codec::Gzip,
                _ => Codec::Zstd,
            };
            (f, archive.to_path_buf(), codec, None)
        }
    };
    let data_len = if cache.is_some() {
        sc.cache_size
    } else {
        stamp.size
    };
    if sc
        .frames
        .iter()
        .any(|f| f.c_off.saturating_add(f.c_len) > data_len)
    {
        return Err(Some("frame table points past the end of the file".into()));
    }
    if let Some(cp) = &cache {
        if let Some(why) = unwritten_frame(&*data, &sc.frames) {
            return Err(Some(format!("cache file {}: {why}", cp.display())));
        }
    }
    let mut source = FrameSource::new(
        data,
        data_path,
        codec,
        sc.frames.clone(),
        sc.pinned.clone(),
        opts.memory,
    );
    source.set_points(sc.points.clone());
    Ok((Box::new(source), sc, cache))
}

/// Why a cache file cannot be trusted although its length and id match:
/// one of a sample of its frames (the first, the last and about 16 between)
/// does not start with a zstd frame magic. A crash after an unsynced write
/// leaves such a file (pages never written read as zeros). Reads would
/// catch it by the frames' checksums; this makes it a rebuild instead.
fn unwritten_frame(f: &dyn ReadAt, frames: &[Frame]) -> Option<String> {
    let n = frames.len();
    let step = (n / 16).max(1);
    let sample = (0..n).step_by(step).chain(n.checked_sub(1));
    for i in sample {
        let fr = &frames[i];
        let mut m = [0u8; 4];
        match f.read_full_at(fr.c_off, &mut m) {
            Ok(4) if u32::from_le_bytes(m) == zstd_frame::ZSTD_MAGIC => {}
            Ok(_) => {
                return Some(format!(
                    "frame {i} at byte offset {} is not a zstd frame (unwritten data)",
                    fr.c_off
                ))
            }
            Err(e) => return Some(format!("frame {i} at byte offset {}: {e}", fr.c_off)),
        }
    }
    None
}

/// Leaves an empty file at `target` through a temporary file and rename: the
/// real test that the final name can be written (a read-only directory, a
/// directory in the way, root or not).
fn claim(target: &Path) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map_or("vmaidx".into(), |n| n.to_string_lossy().into_owned());
    Temp::new_in(dir, &name)?.persist(target).map(drop)
}

fn create_parent(p: &Path) {
    if let Some(d) = p.parent() {
        let _ = fs::create_dir_all(d);
    }
}

fn build(
    path: &Path,
    file: Arc<dyn ReadAt>,
    stamp: Stamp,
    compression: Compression,
    candidates: &[PathBuf],
    opts: &SeekOptions,
    info: &mut IndexInfo,
) -> Result<Box<dyn ReadAt>> {
    let total = stamp.size;
    let progress = |done: u64| opts.report(done, total);
    let stop = || opts.cancelled();
    if compression == Compression::Gzip {
        return build_gzip(path, file, stamp, candidates, opts, info);
    }
    if compression == Compression::None {
        return build_plain(path, file, stamp, candidates, opts, info);
    }
    // Decompressed size from the zstd frame headers, if they all give it.
    let mut content_size = None;
    let table = match compression {
        Compression::Lzo => Some((Kind::Lzo, lzo::lzo_blocks(&*file, total, &stop)?)),
        Compression::Zstd => match zstd_table(&*file, total, opts)? {
            Ok(f) => Some((Kind::ZstdFrames, f)),
            Err(size) => {
                content_size = size;
                None
            }
        },
        _ => None,
    };

    if let Some((kind, frames)) = table {
        let codec = if kind == Kind::Lzo {
            Codec::Lzo
        } else {
            Codec::Zstd
        };
        let mut src = FrameSource::new(
            file,
            path.to_path_buf(),
            codec,
            frames,
            Pinned::default(),
            opts.memory,
        );
        // Only the frames holding the VMA header and extent headers are
        // decoded (for 256 KiB lzop blocks, about one in fifteen).
        let pinned =
            if kind == Kind::ZstdFrames && src.size / (src.frames.len().max(1) as u64) >= 2 << 20 {
                // Frames of several MiB nearly all hold an extent header: decode
                // them all, on several threads.
                pin::walk_all_frames(&src, threads(opts), &progress, &stop)
            } else {
                pin::walk(&src, &|at| progress(src_progress(&src, at)), &stop)
            }
            .map_err(|source| match opts.cancelled() {
                true => Error::Cancelled,
                false => Error::Read { offset: 0, source },
            })?;
        progress(total);
        src.set_pinned(pinned);
        let sc = Sidecar {
            kind,
            compression,
            stamp,
            size: src.size,
            cache_id: [0; 16],
            cache_size: 0,
            frames: src.frames.clone(),
            pinned: src.pinned.clone(),
            points: Default::default(),
        };
        info.kind = kind_of(kind);
        save_sidecar(&sc, opts, candidates, info);
        return Ok(Box::new(src));
    }

    // Cache file: the whole decompressed stream goes to disk. Find a place
    // where both names can be written and the cache fits, say where it goes
    // and how big it can get, then write it.
    let mut size = match content_size {
        Some(n) => StreamSize::Exact(n),
        None => StreamSize::Bound(devices_bound(&*file)?),
    };
    if candidates.is_empty() {
        return unnamed_cache(path, &*file, total, size, opts, info);
    }
    let mut place = None;
    let mut full = false;
    for c in candidates {
        create_parent(c);
        let cp = sidecar::cache_path(c);
        if let Err(e) = claim(c).and_then(|()| claim(&cp)) {
            info.notes
                .push(format!("{}: cannot write: {e}", c.display()));
            continue;
        }
        // Measured after `claim`, which replaced any old cache by an empty file.
        match room(&cp, &mut size, path, &*file, opts) {
            Ok(free) => {
                opts.notify(&format!(
                    "writing the seek cache {}: {}; {} free there",
                    cp.display(),
                    size.describe(opts.cache_frame_size),
                    human(free)
                ));
                place = Some(c.clone());
                break;
            }
            Err(why) => {
                full |= why.kind() == std::io::ErrorKind::StorageFull;
                remove_placeholders(&[c, &cp]);
                info.notes.push(format!("{}: {why}", cp.display()));
            }
        }
    }
    if place.is_none() {
        // A measuring pass in `room` stopped for it (placeholders removed).
        opts.check_cancel()?;
    }
    let Some(sc_path) = place else {
        let kind = if full {
            std::io::ErrorKind::StorageFull
        } else {
            std::io::ErrorKind::Other
        };
        return Err(Error::Write {
            offset: 0,
            source: std::io::Error::new(
                kind,
                format!(
                    "no place to write the seek cache of {}: {}",
                    path.display(),
                    info.notes.join("; ")
                ),
            ),
        });
    };
    let cp = sidecar::cache_path(&sc_path);
    let dir = cp.parent().unwrap_or(Path::new("."));
    let mut tmp = Temp::new_in(dir, "vmacache").map_err(|e| write_err(&cp, e))?;
    let id = *uuid::Uuid::new_v4().as_bytes();
    let head = sidecar::cache_head(&id);
    tmp.file()
        .write_all(&head)
        .map_err(|e| write_err(tmp.path(), e))?;
    let spec = CacheSpec {
        out: tmp.file(),
        start: head.len() as u64,
        frame_size: opts.cache_frame_size,
        level: opts.cache_level,
        threads: threads(opts),
        // Never more than the space was checked for.
        limit: size.bytes(),
        stop: &stop,
    };
    let pass = match cache::pass(&*file, spec, &progress) {
        Ok(p) => p,
        Err(e) => {
            remove_placeholders(&[&sc_path, &cp]);
            return Err(e);
        }
    };
    progress(total);
    let cache_size = pass
        .frames
        .last()
        .map_or(head.len() as u64, |f| f.c_off + f.c_len);
    // The sidecar is the commit point: the cache must be on disk, under its
    // name, before the sidecar that trusts it is (Temp::persist syncs the
    // file, renames, then syncs the directory). A rename over an existing
    // file (the placeholder `claim` left) would make ext4 flush the whole
    // file at rename time (`auto_da_alloc`), on top of the sync. Readers
    // check the cache id, so a moment without it is safe.
    let _ = fs::remove_file(&cp);
    let cache_file: Arc<dyn ReadAt> = Arc::new(tmp.persist(&cp).map_err(|e| write_err(&cp, e))?);
    let sc = Sidecar {
        kind: Kind::Cache,
        compression,
        stamp,
        size: pass.size,
        cache_id: id,
        cache_size,
        frames: pass.frames,
        pinned: pass.pinned,
        points: Default::default(),
    };
    let bytes = sc.encode();
    let mut t = Temp::new_in(dir, "vmaidx").map_err(|e| write_err(&sc_path, e))?;
    t.file()
        .write_all(&bytes)
        .map_err(|e| write_err(t.path(), e))?;
    t.persist(&sc_path).map_err(|e| write_err(&sc_path, e))?;
    info.kind = IndexKind::CacheFile;
    info.sidecar = Some(sc_path);
    info.sidecar_bytes = bytes.len() as u64;
    info.cache = Some(cp.clone());
    info.cache_bytes = cache_size;
    info.decompressed_bytes = sc.size;
    info.frames = sc.frames.len();
    Ok(Box::new(FrameSource::new(
        cache_file,
        cp,
        Codec::Zstd,
        sc.frames,
        sc.pinned,
        opts.memory,
    )))
}

/// [`IndexStore::Memory`]: the cache file is a temporary file in
/// `temp_dir` (else the system's temporary directory), unlinked at once, so
/// nothing outlives the returned source; no sidecar.
fn unnamed_cache(
    path: &Path,
    src: &dyn ReadAt,
    total: u64,
    mut size: StreamSize,
    opts: &SeekOptions,
    info: &mut IndexInfo,
) -> Result<Box<dyn ReadAt>> {
    let dir = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let _ = fs::create_dir_all(&dir);
    let free =
        room(&dir.join(".vmacache"), &mut size, path, src, opts).map_err(|e| write_err(&dir, e))?;
    opts.notify(&format!(
        "writing an unnamed seek cache (deleted once closed) in {}: {}; {} free there",
        dir.display(),
        size.describe(opts.cache_frame_size),
        human(free)
    ));
    let mut file = Temp::new_in(&dir, "vmacache")
        .and_then(Temp::unlink)
        .map_err(|e| write_err(&dir, e))?;
    let head = sidecar::cache_head(&[0; 16]);
    file.write_all(&head).map_err(|e| write_err(&dir, e))?;
    let stop = || opts.cancelled();
    let spec = CacheSpec {
        out: &mut file,
        start: head.len() as u64,
        frame_size: opts.cache_frame_size,
        level: opts.cache_level,
        threads: threads(opts),
        limit: size.bytes(),
        stop: &stop,
    };
    let pass = cache::pass(src, spec, &|done| opts.report(done, total))?;
    opts.report(total, total);
    info.kind = IndexKind::CacheFile;
    info.cache_bytes = pass
        .frames
        .last()
        .map_or(head.len() as u64, |f| f.c_off + f.c_len);
    info.decompressed_bytes = pass.size;
    info.frames = pass.frames.len();
    Ok(Box::new(FrameSource::new(
        Arc::new(file),
        dir.join("(unnamed seek cache)"),
        Codec::Zstd,
        pass.frames,
        pass.pinned,
        opts.memory,
    )))
}

/// Stores a sidecar that needs no cache file beside a remote archive, else
/// in the first candidate place that takes it, and records what was done in
/// `info`; failing to store it only costs a rebuild next time (noted, not an
/// error).
fn save_sidecar(sc: &Sidecar, opts: &SeekOptions, candidates: &[PathBuf], info: &mut IndexInfo) {
    info.decompressed_bytes = sc.size;
    info.frames = table_len(sc);
    let bytes = sc.encode();
    if let IndexStore::Remote { beside, .. } = &opts.store {
        match beside.0.put(&bytes) {
            Ok(()) => {
                info.sidecar = Some(PathBuf::from(beside.0.name()));
                info.sidecar_bytes = bytes.len() as u64;
                return;
            }
            Err(e) => info
                .notes
                .push(format!("{}: cannot write: {e}", beside.0.name())),
        }
    }
    match store(candidates, &bytes) {
        Ok(p) => {
            info.sidecar = Some(p);
            info.sidecar_bytes = bytes.len() as u64;
        }
        Err(notes) => info.notes.extend(notes),
    }
}

/// A plain archive read through [`IndexStore::Remote`]: its header and
/// extent headers are read once (a request each) and kept in the sidecar,
/// so that later opens read none of them from the object.
fn build_plain(
    path: &Path,
    file: Arc<dyn ReadAt>,
    stamp: Stamp,
    candidates: &[PathBuf],
    opts: &SeekOptions,
    info: &mut IndexInfo,
) -> Result<Box<dyn ReadAt>> {
    let total = stamp.size;
    let pinned = pin::walk(&*file, &|at| opts.report(at, total), &|| opts.cancelled()).map_err(
        |source| match opts.cancelled() {
            true => Error::Cancelled,
            false => read_err(path, 0, source),
        },
    )?;
    opts.report(total, total);
    let sc = Sidecar::plain(stamp, pinned);
    info.kind = IndexKind::Plain;
    save_sidecar(&sc, opts, candidates, info);
    Ok(Box::new(pin::PinnedSource::new(file, sc.pinned)))
}

/// The index of a plain archive built from a pass that reads it anyway (a
/// remote `vma extract` streams the whole object): feed it every byte in
/// order, then [`StreamIndexer::finish`] stores the sidecar as
/// [`IndexStore::Remote`] says, so that the next reader needs no pass.
#[derive(Default)]
pub struct StreamIndexer {
    walker: walker::VmaWalker,
    pos: u64,
}

impl StreamIndexer {
    /// An indexer at the start of the archive.
    pub fn new() -> StreamIndexer {
        StreamIndexer {
            walker: walker::VmaWalker::new(),
            pos: 0,
        }
    }

    /// The next bytes of the archive.
    pub fn feed(&mut self, data: &[u8]) {
        self.walker.feed(self.pos, data);
        self.pos += data.len() as u64;
    }

    /// Stores the index of the archive `id` names, when the whole archive
    /// (`id.size` bytes) went through and its structure was followed to the
    /// end; `None` otherwise (nothing is stored: a damaged or partly read
    /// archive gets no index).
    pub fn finish(self, id: &Identity, opts: &SeekOptions) -> Option<IndexInfo> {
        let w = self.walker;
        let (_, header, at) = w.pinned.ranges.first().copied()?;
        let at = usize::try_from(at).ok()?;
        let ends_at_the_end = w.wants().is_some_and(|(at, _)| at == id.size);
        if self.pos != id.size
            || w.stopped
            || !ends_at_the_end
            || (header as usize) < hdr::UUID + 16
        {
            return None;
        }
        let uuid = w.pinned.blob[at + hdr::UUID..at + hdr::UUID + 16]
            .try_into()
            .expect("16");
        let stamp = Stamp {
            size: id.size,
            mtime: id.mtime,
            mtime_nsec: id.mtime_nsec,
            uuid,
        };
        let sc = Sidecar::plain(stamp, w.pinned);
        let mut info = IndexInfo::none(Compression::None, id.size);
        info.rebuilt = true;
        save_sidecar(&sc, opts, &candidates(&id.name, opts), &mut info);
        Some(info)
    }
}

/// gzip: one decoding pass records the checkpoints (and the pinned VMA
/// structures); reads then decode spans of the archive itself.
fn build_gzip(
    path: &Path,
    file: Arc<dyn ReadAt>,
    stamp: Stamp,
    candidates: &[PathBuf],
    opts: &SeekOptions,
    info: &mut IndexInfo,
) -> Result<Box<dyn ReadAt>> {
    let total = stamp.size;
    let progress = |done: u64| opts.report(done, total);
    let stop = || opts.cancelled();
    let pass =
        gzip::pass(&*file, total, opts.gzip_span, &progress, &stop).map_err(|e| match e {
            Error::Read { offset, source } => read_err(path, offset, source),
            e => e,
        })?;
    progress(total);
    let sc = Sidecar {
        kind: Kind::Gzip,
        compression: Compression::Gzip,
        stamp,
        size: pass.size,
        cache_id: [0; 16],
        cache_size: 0,
        frames: pass.frames,
        pinned: pass.pinned,
        points: pass.points,
    };
    info.kind = IndexKind::GzipCheckpoints;
    save_sidecar(&sc, opts, candidates, info);
    let mut src = FrameSource::new(
        file,
        path.to_path_buf(),
        Codec::Gzip,
        sc.frames,
        sc.pinned,
        opts.memory,
    );
    src.set_points(sc.points);
    Ok(Box::new(src))
}

/// The frame table of a zstd archive read directly, or, when a frame is too
/// large for that (then a cache file is needed), `Err` with the decompressed
/// size if every frame header gives it (Frame_Content_Size).
fn zstd_table(
    file: &dyn ReadAt,
    len: u64,
    opts: &SeekOptions,
) -> Result<std::result::Result<Vec<Frame>, Option<u64>>> {
    let mut frames = zstd_frame::zstd_frames(file, len)?;
    let content_size = frames.iter().try_fold(0u64, |n, f| {
        (f.u_len != u64::MAX).then(|| n.checked_add(f.u_len))?
    });
    let mut u_off = 0u64;
    for f in &mut frames {
        opts.check_cancel()?;
        if f.u_len == u64::MAX {
            if f.c_len > opts.max_direct_frame.saturating_mul(2) {
                return Ok(Err(content_size));
            }
            match zstd_frame::zstd_frame_size(file, f, opts.max_direct_frame)? {
                Ok(n) => f.u_len = n,
                Err(zstd_frame::UnknownSize) => return Ok(Err(content_size)),
            }
        }
        if f.u_len > opts.max_direct_frame {
            return Ok(Err(content_size));
        }
        f.u_off = u_off;
        u_off = u_off
            .checked_add(f.u_len)
            .ok_or_else(|| zstd_frame::zcorrupt(f.c_off, "frame sizes overflow"))?;
    }
    Ok(Ok(frames))
}

/// How big the decompressed stream (and so the cache file) can be.
#[derive(Debug, Clone, Copy)]
enum StreamSize {
    /// Given by the zstd frame headers, or measured by a decoding pass.
    Exact(u64),
    /// Not known: at most this, from the devices' sizes in the VMA header.
    Bound(u64),
    /// Measured: more than this (the pass stopped once that would not fit).
    MoreThan(u64),
}

impl StreamSize {
    fn bytes(self) -> u64 {
        match self {
            StreamSize::Exact(n) | StreamSize::Bound(n) | StreamSize::MoreThan(n) => n,
        }
    }

    fn describe(self, frame_size: usize) -> String {
        let cache = human(cache_bytes(self.bytes(), frame_size));
        match self {
            StreamSize::Exact(n) => format!(
                "the decompressed archive is {}, the cache takes at most {cache}",
                human(n)
            ),
            StreamSize::Bound(n) => format!(
                "the decompressed size is not in the zstd frame header; the cache takes at most \
                 {cache}, bounded by the devices' total size in the VMA header ({} of stream)",
                human(n)
            ),
            StreamSize::MoreThan(n) => format!(
                "the decompressed archive is more than {}, the cache at least {cache}",
                human(n)
            ),
        }
    }
}

/// The largest decompressed VMA stream the header allows: the header, then
/// every cluster of every device stored once, each in an extent of its own
/// (Proxmox refuses a cluster written twice), and 1 MiB per device and
/// overall for what Proxmox tolerates past a device's end (mask-0 clusters
/// in its bitmap slack: extent headers, no data).
fn devices_bound(src: &dyn ReadAt) -> Result<u64> {
    let (_, mut r) = vma_format::compress::decompressor(Cursor::new(src))?;
    let h = vma_format::read_header(&mut r)?;
    let per_cluster = (vma_format::raw::CLUSTER_SIZE + vma_format::raw::EXTENT_HEADER_SIZE) as u64;
    let slack = 1 << 20;
    Ok(h.devices
        .iter()
        .fold(h.header_size().saturating_add(slack), |n, d| {
            n.saturating_add(d.clusters().saturating_mul(per_cluster))
                .saturating_add(slack)
        }))
}

/// Largest cache file for a stream of `stream` bytes: the id frame, then
/// frames of raw blocks (compressed ones are smaller).
fn cache_bytes(stream: u64, frame_size: usize) -> u64 {
    let chunk = frame_size.clamp(4096, u32::MAX as usize);
    let frames = stream.div_ceil(chunk as u64);
    let overhead = zstd_frame::raw_frame_len(chunk) - chunk as u64;
    sidecar::CACHE_HEAD
        .saturating_add(stream)
        .saturating_add(frames.saturating_mul(overhead))
}

/// Free space a cache of `cache` bytes needs: itself and the margin.
fn cache_need(cache: u64) -> u64 {
    cache
        .saturating_add(cache / 100 * CACHE_MARGIN_PERCENT)
        .saturating_add(CACHE_MARGIN_FIXED)
}

/// Checks that the cache fits at `cp` with the margin; returns the free
/// bytes there. When only a bound is known and it does not fit, one
/// decoding pass measures the stream (stopping as soon as it cannot fit)
/// and records the result in `size`. The error says why, with the numbers.
fn room(
    cp: &Path,
    size: &mut StreamSize,
    archive: &Path,
    src: &dyn ReadAt,
    opts: &SeekOptions,
) -> std::io::Result<u64> {
    let dir = cp.parent().unwrap_or(Path::new("."));
    let free = crate::sys::free_bytes(dir)?;
    let fits = |stream: u64| cache_need(cache_bytes(stream, opts.cache_frame_size)) <= free;
    if let StreamSize::Bound(bound) = *size {
        if !fits(bound) && fits(0) {
            opts.notify(&format!(
                "{}: the seek cache could take up to {} (the devices' total size) and {} are free \
                 in {}: measuring the decompressed size first (one decoding pass)",
                archive.display(),
                human(cache_bytes(bound, opts.cache_frame_size)),
                human(free),
                dir.display()
            ));
            // The largest stream whose cache fits (binary search).
            let (mut lo, mut hi) = (0, bound);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if fits(mid) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            if fits(lo) {
                *size = match measure(archive, src, lo, opts).map_err(std::io::Error::other)? {
                    Some(n) => StreamSize::Exact(n),
                    None => StreamSize::MoreThan(lo),
                };
            }
        }
    }
    if !matches!(size, StreamSize::MoreThan(_)) && fits(size.bytes()) {
        return Ok(free);
    }
    let cache = cache_bytes(size.bytes(), opts.cache_frame_size);
    Err(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        format!(
            "the seek cache does not fit: {}; with a margin of {CACHE_MARGIN_PERCENT} % and {} \
             it needs {} ({} bytes), but {} ({free} bytes) are free there \
             (choose another place: vma mount/index --cache-dir DIR)",
            size.describe(opts.cache_frame_size),
            human(CACHE_MARGIN_FIXED),
            human(cache_need(cache)),
            cache_need(cache),
            human(free),
        ),
    ))
}

/// Decodes the archive to count its decompressed bytes; `None` once there
/// are more than `max`.
fn measure(archive: &Path, src: &dyn ReadAt, max: u64, opts: &SeekOptions) -> Result<Option<u64>> {
    let (_, mut r) = vma_format::compress::decompressor(Cursor::new(src))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    while n <= max {
        opts.check_cancel()?;
        match std::io::Read::read(&mut r, &mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(archive, 0, e)),
        }
    }
    Ok((n <= max).then_some(n))
}

/// `1.5 GiB`-style size, for messages (which also give bytes where exact).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Removes the empty placeholders `claim` left (never a real index).
fn remove_placeholders(paths: &[&PathBuf]) {
    for p in paths {
        if fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = fs::remove_file(p);
        }
    }
}

/// Removes the index files of `path` (sidecars and cache files) from every
/// place [`open`] would look with these options; returns what was removed.
/// The archive itself is never touched.
pub fn remove_index(path: &Path, opts: &SeekOptions) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if let IndexStore::Remote { beside, .. } = &opts.store {
        if beside.0.delete()? {
            removed.push(PathBuf::from(beside.0.name()));
        }
    }
    for c in candidates(path, opts) {
        for p in [sidecar::cache_path(&c), c] {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => {
                    fs::remove_file(&p)?;
                    removed.push(p);
                }
                _ => {}
            }
        }
    }
    Ok(removed)
}

fn threads(opts: &SeekOptions) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The compressed offset of the frame holding stream offset `at`.
fn src_progress(src: &FrameSource, at: u64) -> u64 {
    let i = src.frames.partition_point(|f| f.u_off + f.u_len <= at);
    src.frames.get(i).map_or(0, |f| f.c_off)
}

/// Writes the sidecar at the first candidate that takes it.
fn store(candidates: &[PathBuf], bytes: &[u8]) -> std::result::Result<PathBuf, Vec<String>> {
    let mut notes = Vec::new();
    for c in candidates {
        create_parent(c);
        let dir = c.parent().unwrap_or(Path::new("."));
        let res = Temp::new_in(dir, "vmaidx").and_then(|mut t| {
            t.file().write_all(bytes)?;
            t.persist(c)
        });
        match res {
            Ok(_) => return Ok(c.clone()),
            Err(e) => notes.push(format!("{}: cannot write: {e}", c.display())),
        }
    }
    Err(notes)
}
