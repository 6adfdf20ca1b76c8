//! The filesystem itself: [`VmaFs`] owns the archive's [`IndexedReader`] and
//! the fixed inode table, and answers FUSE requests from it.
//!
//! The reader works on the *decompressed* VMA stream through
//! [`vma_seekable`]: a plain archive is read directly; a zstd, gzip
//! or lzop one through its sidecar index (and, for one-frame zstd and gzip,
//! its cache file), built or validated when the filesystem is opened.
//!
//! Layout: inode 1 is the root directory; then one regular file per disk
//! (`<devname>.raw`, in dev_id order) and one per config blob (slot order).
//! Inode numbers are the position in that order, so they are stable for a
//! given archive. Nothing ever changes, so attributes and data are cached by
//! the kernel for a long time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, Request,
};
use vma_format::raw::{hdr, MAX_FILE_LEN};
use vma_format::{names, IndexedReader, ReadAt};
use vma_seekable::{self as seekable, IndexInfo, IndexStore, SeekOptions};

use crate::{log, Error, Level};

/// How long the kernel may cache entries and attributes: the archive is
/// read-only and never changes while mounted.
const TTL: Duration = Duration::from_secs(3600);

/// Largest read we ask the kernel for (it may cap it lower).
const MAX_READ: u32 = 1 << 20;

/// What an inode is.
#[derive(Debug, Clone)]
enum Kind {
    /// A disk image.
    Disk { dev_id: u8, size: u64, stored: u64 },
    /// A config blob (index into `header().configs`).
    Config { index: usize },
}

#[derive(Debug, Clone)]
struct Node {
    name: OsString,
    kind: Kind,
}

/// A read-only FUSE filesystem over one VMA archive.
pub struct VmaFs {
    path: PathBuf,
    reader: IndexedReader<Box<dyn ReadAt>>,
    info: IndexInfo,
    nodes: Vec<Node>,
    by_name: HashMap<OsString, usize>,
    mtime: SystemTime,
    uid: u32,
    gid: u32,
    index_time: Duration,
}

impl std::fmt::Debug for VmaFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmaFs")
            .field("path", &self.path)
            .field("files", &self.nodes.len())
            .field("index_time", &self.index_time)
            .finish()
    }
}

impl VmaFs {
    /// Opens and indexes `path`; refuses an archive with missing clusters.
    pub fn open(path: &Path) -> Result<VmaFs, Error> {
        Self::open_with(path, false)
    }

    /// Opens and indexes `path`. With `allow_incomplete`, missing clusters
    /// read as zeros (and a warning is logged) instead of refusing. A
    /// compressed archive's index is kept on disk as `vma mount` keeps it
    /// ([`IndexStore::on_disk`]), for later mounts to reuse.
    pub fn open_with(path: &Path, allow_incomplete: bool) -> Result<VmaFs, Error> {
        let mut seek = SeekOptions::default();
        seek.store = IndexStore::on_disk(None);
        Self::open_seek(path, allow_incomplete, &seek)
    }

    /// [`VmaFs::open_with`], reaching a compressed archive's decompressed
    /// stream with `seek` (where the sidecar index lives, rebuild, memory).
    pub fn open_seek(
        path: &Path,
        allow_incomplete: bool,
        seek: &SeekOptions,
    ) -> Result<VmaFs, Error> {
        let opened = seekable::open_seekable(path, seek).map_err(|error| Error::Archive {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_seekable(path.to_path_buf(), opened, allow_incomplete)
    }

    /// The filesystem over an archive already opened for random access (a
    /// local file through [`seekable::open_seekable`], or any other source,
    /// e.g. an object in a bucket, through [`seekable::open_source`]).
    ///
    /// `name` is how the archive is shown: in messages, the log and the
    /// mount's fsname (for a URL, give its display form: no secrets). Reads
    /// re-check each extent header they touch ([`Self::set_verify_reads`]).
    pub fn from_seekable(
        name: PathBuf,
        opened: seekable::Seekable,
        allow_incomplete: bool,
    ) -> Result<VmaFs, Error> {
        let start = Instant::now();
        let path = name.as_path();
        let archive_err = |error| Error::Archive {
            path: path.to_path_buf(),
            error,
        };
        let info = opened.info;
        let mut reader = IndexedReader::open(opened.source).map_err(archive_err)?;
        // The index (built or loaded by the caller's open) plus the extent headers.
        let index_time = info.elapsed + start.elapsed();
        // The archive may change underneath us: check each extent header on read.
        reader.set_verify_reads(true);

        let header = reader.header();
        let mut nodes = Vec::new();
        for d in &header.devices {
            let field = hdr::DEV_INFO + hdr::DEV_INFO_SIZE * d.id as usize + hdr::DEV_NAME_PTR;
            check(path, "device", &d.name, field)?;
            // The kernel takes file sizes as signed 64-bit (loff_t): a larger
            // declared size would make the file fail every lookup with EIO.
            if d.size > MAX_FILE_LEN {
                return Err(Error::TooLarge {
                    path: path.to_path_buf(),
                    name: vma_format::error::Name(d.name.clone()).to_string(),
                    size: d.size,
                });
            }
            let mut name = d.name.clone();
            name.extend_from_slice(b".raw");
            nodes.push(Node {
                name: OsStr::from_bytes(&name).to_os_string(),
                kind: Kind::Disk {
                    dev_id: d.id,
                    size: d.size,
                    stored: reader.stored_bytes(d.id),
                },
            });
        }
        for (index, c) in header.configs.iter().enumerate() {
            check(path, "config", &c.name, hdr::CONFIG_NAMES + 4 * c.slot)?;
            nodes.push(Node {
                name: OsStr::from_bytes(&c.name).to_os_string(),
                kind: Kind::Config { index },
            });
        }
        let mut by_name = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if by_name.insert(n.name.clone(), i).is_some() {
                return Err(Error::DuplicateName {
                    path: path.to_path_buf(),
                    name: n.name.to_string_lossy().into_owned(),
                });
            }
        }
        // Names and sizes first: a refusal must not follow a "mounting anyway".
        if let Err(error) = reader.completeness().check(|_| true) {
            if !allow_incomplete {
                return Err(Error::Incomplete {
                    path: path.to_path_buf(),
                    error,
                });
            }
            log(
                Level::Warn,
                &format!(
                    "{}: {error}; mounting anyway, missing clusters read as zeros",
                    path.display()
                ),
            );
        }

        let ctime = header.ctime;
        let mtime = if ctime >= 0 {
            UNIX_EPOCH + Duration::from_secs(ctime.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(ctime.unsigned_abs())
        };
        let (uid, gid) = crate::sys::uid_gid();
        Ok(VmaFs {
            path: name,
            reader,
            info,
            nodes,
            by_name,
            mtime,
            uid,
            gid,
            index_time,
        })
    }

    /// The archive path (or the name given to [`Self::from_seekable`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether each read re-reads and checks the extent header it touches
    /// (on by default), so that a local archive changed while mounted gives
    /// EIO instead of wrong bytes. A source that refuses a changed archive
    /// by itself (an object pinned by its ETag) can turn it off.
    pub fn set_verify_reads(&mut self, on: bool) {
        self.reader.set_verify_reads(on);
    }

    /// Time spent opening: the compressed archive's index (built or loaded)
    /// plus reading the extent headers.
    pub fn index_time(&self) -> Duration {
        self.index_time
    }

    /// How the decompressed stream is reached: compression, sidecar index
    /// and cache file (paths and sizes), whether it was rebuilt now.
    pub fn index_info(&self) -> &IndexInfo {
        &self.info
    }

    /// The underlying reader (header, completeness, stored bytes).
    pub fn reader(&self) -> &IndexedReader<Box<dyn ReadAt>> {
        &self.reader
    }

    /// File names in the root directory, in inode order.
    pub fn names(&self) -> Vec<OsString> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// One line for the log: what was indexed and how long it took.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: indexed {} extents ({} stored clusters, {} KiB of index) in {:.3} ms",
            self.path.display(),
            self.reader.extent_count(),
            self.reader.stored_clusters(),
            self.reader.index_bytes().div_ceil(1024),
            self.index_time.as_secs_f64() * 1000.0
        );
        let i = &self.info;
        if i.kind != seekable::IndexKind::Plain {
            s.push_str(&format!(
                "; {} archive of {} bytes ({} bytes decompressed, {} {}), index {} in {:.3} s",
                i.compression.name(),
                i.archive_bytes,
                i.decompressed_bytes,
                i.frames,
                match i.kind {
                    seekable::IndexKind::LzoBlocks => "lzop blocks",
                    seekable::IndexKind::GzipCheckpoints => "gzip spans (deflate checkpoints)",
                    _ => "zstd frames",
                },
                if i.rebuilt { "built" } else { "reused" },
                i.elapsed.as_secs_f64()
            ));
            match &i.sidecar {
                Some(p) => s.push_str(&format!(
                    "; sidecar {} ({} bytes)",
                    p.display(),
                    i.sidecar_bytes
                )),
                None => s.push_str("; sidecar not saved"),
            }
            if let Some(c) = &i.cache {
                s.push_str(&format!(
                    "; cache file {} ({} bytes)",
                    c.display(),
                    i.cache_bytes
                ));
            }
            for n in &i.notes {
                s.push_str(&format!("; {n}"));
            }
        }
        s
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        ino.0
            .checked_sub(2)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.nodes.get(i))
    }

    fn config_data(&self, index: usize) -> &[u8] {
        &self.reader.header().configs[index].data
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size, blocks) = if ino == INodeNo::ROOT {
            (FileType::Directory, 0o555, 2, 0, 0)
        } else {
            let (size, blocks) = match self.node(ino)?.kind {
                Kind::Disk { size, stored, .. } => (size, stored / 512),
                Kind::Config { index } => {
                    let len = self.config_data(index).len() as u64;
                    (len, len.div_ceil(512))
                }
            };
            (FileType::RegularFile, 0o444, 1, size, blocks)
        };
        Some(FileAttr {
            ino,
            size,
            blocks,
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        })
    }
}

/// Applies the one name rule (spec §13) with the offset of the name's pointer field.
fn check(path: &Path, what: &'static str, name: &[u8], field: usize) -> Result<(), Error> {
    names::check_name(name).map_err(|reason| Error::BadName {
        path: path.to_path_buf(),
        what,
        name: vma_format::error::Name(name.to_vec()).to_string(),
        field: field as u64,
        reason,
    })
}

thread_local! {
    /// One read buffer per FUSE worker thread, reused across requests.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Filesystem for VmaFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large reads: max_pages follows max(max_write, max_readahead); the
        // kernel caps it at its own limit (1 MiB by default).
        let _ = config.set_max_write(MAX_READ);
        let _ = config
            .set_max_readahead(MAX_READ)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(InitFlags::FUSE_MAX_PAGES);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self
            .by_name
            .get(name)
            .and_then(|&i| self.attr(INodeNo(i as u64 + 2)))
        {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.node(ino).is_none() {
            return reply.error(if ino == INodeNo::ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // The archive never changes while mounted: keep the page cache across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match node.kind {
            Kind::Config { index } => {
                let data = self.config_data(index);
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Kind::Disk {
                dev_id,
                size: dev_size,
                ..
            } => {
                let len = u64::from(size).min(dev_size.saturating_sub(offset)) as usize;
                BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    match self.reader.read(dev_id, offset, &mut buf[..len]) {
                        Ok(n) => reply.data(&buf[..n]),
                        Err(e) => {
                            log(
                                Level::Error,
                                &format!(
                                    "{}: read of {} bytes at offset {offset} of {}: {e}",
                                    self.path.display(),
                                    len,
                                    node.name.to_string_lossy()
                                ),
                            );
                            reply.error(Errno::EIO);
                        }
                    }
                });
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        // Entry k (0 = ".", 1 = "..", 2.. = files) carries offset k + 1: the
        // offset of the entry that follows it.
        let dots = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
        ];
        let files = self.nodes.iter().enumerate().map(|(i, n)| {
            (
                INodeNo(i as u64 + 2),
                FileType::RegularFile,
                n.name.as_os_str(),
            )
        });
        for (k, (ino, kind, name)) in dots
            .into_iter()
            .chain(files)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(ino, k as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stored: u64 = self
            .nodes
            .iter()
            .map(|n| match n.kind {
                Kind::Disk { stored, .. } => stored,
                Kind::Config { index } => self.config_data(index).len() as u64,
            })
            .sum();
        let files = self.nodes.len() as u64 + 1;
        reply.statfs(stored.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::EINVAL);
        };
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            // The kernel answers SEEK_SET/CUR/END itself.
            return reply.error(Errno::EINVAL);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let found = match node.kind {
            Kind::Config { index } => {
                let len = self.config_data(index).len() as u64;
                Ok((offset < len).then_some(if whence == libc::SEEK_DATA {
                    offset
                } else {
                    len
                }))
            }
            Kind::Disk { dev_id, .. } if whence == libc::SEEK_DATA => {
                self.reader.seek_data(dev_id, offset)
            }
            Kind::Disk { dev_id, .. } => self.reader.seek_hole(dev_id, offset),
        };
        match found {
            Ok(Some(pos)) => match i64::try_from(pos) {
                Ok(pos) => reply.offset(pos),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => {
                log(
                    Level::Error,
                    &format!(
                        "{}: lseek in {}: {e}",
                        self.path.display(),
                        node.name.to_string_lossy()
                    ),
                );
                reply.error(Errno::EIO);
            }
        }
    }
}
