//! `vma-nbd`: a small NBD (Network Block Device) server, protocol only.
//!
//! It knows nothing about VMA: whoever embeds it implements [`Export`] (size,
//! reads, optional writes, block status) and hands a set of named exports to a
//! [`Server`], which listens on a Unix socket or a TCP address (127.0.0.1
//! unless told otherwise) and serves each connection on its own thread
//! (std threads, a bounded number of connections).
//!
//! Protocol coverage (NetworkBlockDevice/nbd `doc/proto.md`; see
//! `vma-nbd/README.md`):
//! - fixed newstyle handshake; options EXPORT_NAME, ABORT, LIST, INFO, GO
//!   (with INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION), STRUCTURED_REPLY,
//!   LIST_META_CONTEXT / SET_META_CONTEXT for `base:allocation`; any other
//!   option (QEMU 10's EXTENDED_HEADERS, STARTTLS, ...) gets NBD_REP_ERR_UNSUP;
//! - simple and structured replies; READ, WRITE, WRITE_ZEROES (NO_HOLE,
//!   FAST_ZERO), TRIM, FLUSH, DISC and BLOCK_STATUS.
//!
//! Modules: [`proto`] (wire constants and parsers), `conn` (one connection:
//! handshake and transmission over any `Read`/`Write` pair, see
//! [`serve_stream`]), `server` (listeners, threads, shutdown), [`mem`]
//! (an in-memory writable export for tests).
#![forbid(unsafe_code)]

mod conn;
pub mod mem;
pub mod proto;
mod server;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

pub use conn::{serve_stream, ConnConfig};
pub use server::{Listener, Running, Server, ServerConfig, StopHandle};

/// Largest READ/WRITE payload advertised (and accepted): 32 MiB, the size
/// the protocol says no peer should treat as a denial of service.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size (requests must be aligned to it).
    pub min: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum READ/WRITE payload.
    pub max: u32,
}

impl Default for BlockSize {
    fn default() -> Self {
        BlockSize {
            min: 1,
            preferred: 4096,
            max: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// One `base:allocation` block status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes covered (not zero).
    pub length: u64,
    /// [`proto::STATE_HOLE`] and/or [`proto::STATE_ZERO`], or 0 for data.
    pub flags: u32,
}

/// A block device served over NBD.
///
/// Offsets and lengths are already checked against [`Export::size`] and the
/// advertised payload limit when these are called. Errors become the NBD
/// error of their `raw_os_error` (EIO if it has none that NBD knows); their
/// text goes into structured error replies and the log.
pub trait Export: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Refuse writes (advertised with NBD_FLAG_READ_ONLY).
    fn read_only(&self) -> bool {
        true
    }

    /// Block size constraints.
    fn block_size(&self) -> BlockSize {
        BlockSize::default()
    }

    /// A description for NBD_INFO_DESCRIPTION and LIST.
    fn description(&self) -> Option<String> {
        None
    }

    /// Fills `buf` with the bytes at `offset` (never short).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `offset`; `fua`: durable before returning.
    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(proto::EPERM as i32))
    }

    /// Makes `[offset, offset+len)` read as zeros; `punch_hole`: the client
    /// allows deallocating (no NO_HOLE flag). The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64, _punch_hole: bool, fua: bool) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.write_at(pos, &zeros[..n], fua)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Whether [`Export::write_zeroes`] is fast (no data written), for
    /// NBD_CMD_FLAG_FAST_ZERO: if not, such requests fail with ENOTSUP at once.
    fn fast_zero(&self) -> bool {
        false
    }

    /// Advisory discard of `[offset, offset+len)`.
    fn trim(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// `base:allocation` status of `[offset, offset+len)`: consecutive
    /// descriptors from `offset`, at most `max` of them (may cover less than
    /// `len`, at least one byte). The default says "data" for all of it.
    fn block_status(&self, _offset: u64, len: u64, _max: usize) -> io::Result<Vec<Extent>> {
        Ok(vec![Extent {
            length: len,
            flags: 0,
        }])
    }
}

/// The named exports of a server. The empty name (old clients, `nbd://host`)
/// selects the only export when there is exactly one.
#[derive(Clone, Default)]
pub struct Exports {
    map: BTreeMap<String, Arc<dyn Export>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl Exports {
    /// No exports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the export `name`. Names longer than 4096 bytes
    /// cannot be asked for by clients (the protocol's limit).
    pub fn insert(&mut self, name: impl Into<String>, export: Arc<dyn Export>) {
        self.map.insert(name.into(), export);
    }

    /// The export called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Export>> {
        match self.map.get(name) {
            Some(e) => Some(e),
            None if name.is_empty() && self.map.len() == 1 => self.map.values().next(),
            None => None,
        }
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No exports at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The NBD error number for an export's error.
pub fn errno_of(e: &io::Error) -> u32 {
    use proto::*;
    if let Some(n) = e.raw_os_error() {
        let n = n as u32;
        if [
            EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN,
        ]
        .contains(&n)
        {
            return n;
        }
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::OutOfMemory => ENOMEM,
        io::ErrorKind::StorageFull => ENOSPC,
        io::ErrorKind::Unsupported => ENOTSUP,
        _ => EIO,
    }
}
