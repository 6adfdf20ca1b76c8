#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! The crate's authority is `spec/vma.md` in the repository; sections are cited as "spec §N".
//!
//! - [`raw`]: byte layout of the header, device entry, extent header and blockinfo.
//! - [`header`]: header validation and layout ([`ArchiveHeader`], [`build_header`]).
//! - [`extent`]: the checks both readers share, and completeness tracking.
//! - [`StreamReader`]: a reader over any [`std::io::Read`] (pipes, stdin), never seeking.
//! - [`IndexedReader`]: random access over a [`ReadAt`] source, with a data/zero map;
//!   [`IndexedReader::disk_by_name`] gives one disk as a [`Disk`] (`Read + Seek`, positional reads);
//!   [`IndexedReader::extents_for`] the parts of the archive some devices need.
//! - [`RangeReader`]: byte ranges of a [`ReadAt`] fetched in parallel, read in order
//!   (with [`StreamReader::set_parts`]: a streaming restore of some devices only).
//! - [`WriterBuilder`] / [`Writer`]: the out-of-order writer.
//! - [`compress`]: `.vma.zst`, `.vma.gz`, `.vma.lzo` detected by magic.
//! - [`names`]: the rule for names that become file names.
//! - [`warning`]: what the readers tolerate because Proxmox restores it (spec §12).
//!
//! Errors are one enum, [`Error`], carrying byte offsets.
// Random access into compressed archives, with its OS calls and zlib
// binding, is the `vma-seekable` crate: this one has no `unsafe` at all.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compress;
pub mod error;
pub mod extent;
pub mod header;
pub mod indexed;
pub mod lzo1x;
pub mod names;
pub mod ranges;
pub mod raw;
pub mod readahead;
pub mod stream;
pub mod warning;
pub mod writer;

pub use compress::{decompressor, detect, Compression};
pub use error::{Error, Result};
pub use extent::{Completeness, DeviceCompleteness};
pub use header::{build_header, parse_header, read_header, ArchiveHeader, Config, Device};
pub use indexed::{Disk, IndexedReader, Mapping, MappingKind, ReadAt};
pub use ranges::{RangeOptions, RangeReader};
pub use readahead::ReadAhead;
pub use stream::{ArchivePart, Cluster, Extent, Slot, StreamReader};
pub use uuid::Uuid;
pub use warning::{Warning, WarningKind};
pub use writer::{is_zero_block, DeviceStats, WriteSummary, Writer, WriterBuilder};
