//! The one error type of the crate.
//!
//! Every variant that concerns archive bytes carries the absolute byte offset
//! of the structure it is about (spec §12 f). Display keeps Proxmox's wording
//! where users search for it (spec §11), then adds where.

use std::fmt;
use std::io;
use std::ops::Range;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A device name as it appears in messages: lossy UTF-8, control bytes escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub Vec<u8>);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in String::from_utf8_lossy(&self.0).chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Formats missing cluster ranges as `a-b, c, …`.
pub(crate) struct Ranges<'a>(pub &'a [Range<u64>]);

impl fmt::Display for Ranges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if r.end - r.start == 1 {
                write!(f, "{}", r.start)?;
            } else {
                write!(f, "{}-{}", r.start, r.end - 1)?;
            }
        }
        Ok(())
    }
}

/// Everything that can go wrong reading or writing a VMA archive.
///
/// Field names are uniform: `offset` is the absolute archive byte offset of the
/// structure (extent header, field), `index` the extent number, `dev_id` and
/// `cluster` the device and cluster concerned.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- I/O ----
    /// Reading the archive failed at `offset`.
    #[error("read error at byte offset {offset}: {source}")]
    Read { offset: u64, source: io::Error },
    /// Writing the archive failed.
    #[error("write error at archive byte offset {offset}: {source}")]
    Write { offset: u64, source: io::Error },

    // ---- header (spec §11.1) ----
    /// Fewer than 12288 bytes before EOF.
    #[error("can't read vma header - got EOF (read {got} of 12288 bytes)")]
    HeaderEof { got: u64 },
    /// The first four bytes are not `VMA\0`.
    #[error("not a vma file - wrong magic number (found {found:02x?} at byte offset 0)")]
    BadMagic { found: [u8; 4] },
    /// Not a VMA but a tar archive (`ustar` at byte offset 257): most likely
    /// a vzdump container backup, which users try on `vma` by mistake.
    #[error("not a VMA (looks like a tar archive: vzdump's container backups are tar) - wrong magic number (found {found:02x?} at byte offset 0, \"ustar\" at byte offset 257)")]
    TarArchive { found: [u8; 4] },
    /// header_size ≤ 12288, or above our cap (spec §10).
    #[error("wrong vma header size {size} (field at byte offset 56)")]
    HeaderSize { size: u32 },
    /// EOF before `header_size` bytes.
    #[error(
        "can't read vma header data - got EOF at byte offset {got} (header size {header_size})"
    )]
    HeaderDataEof { header_size: u32, got: u64 },
    /// Header MD5 mismatch (Proxmox: "wrong vma header chechsum").
    #[error("wrong vma header checksum (MD5 at byte offset 32)")]
    HeaderChecksum,
    /// Version is not 1.
    #[error("wrong vma version {version} (field at byte offset 4)")]
    Version { version: u32 },
    /// blob_buffer_offset < 12288.
    #[error("wrong vma blob buffer offset {blob_offset} (field at byte offset 48)")]
    BlobBufferOffset { blob_offset: u32 },
    /// blob_buffer_offset + blob_buffer_size > header_size.
    #[error("wrong vma blob buffer size {blob_size} at offset {blob_offset} (header size {header_size}; field at byte offset 52)")]
    BlobBufferSize {
        blob_offset: u32,
        blob_size: u32,
        header_size: u32,
    },
    /// A config slot points outside the blob list or at a non-string name.
    #[error("vma contains invalid data pointers (config slot {slot}, pointer at byte offset {field_offset})")]
    InvalidDataPointers { slot: usize, field_offset: u64 },

    // ---- extents (spec §11.2) ----
    /// 1..511 bytes after the last extent.
    #[error("read short extent ({have} bytes) at byte offset {offset}")]
    ShortExtentHeader { offset: u64, have: u64 },
    /// EOF inside an extent's data.
    #[error("short vma extent (have {have} < need {need} bytes) at byte offset {offset}")]
    ShortExtent { offset: u64, have: u64, need: u64 },
    /// Extent header MD5 mismatch (Proxmox: "wrong vma extent header chechsum").
    #[error("wrong vma extent header checksum (extent {index} at byte offset {offset})")]
    ExtentChecksum { offset: u64, index: u64 },
    /// Extent UUID differs from the archive's.
    #[error("wrong vma extent uuid (extent {index} at byte offset {offset})")]
    ExtentUuid { offset: u64, index: u64 },
    /// Not `VMAE`, or reserved ≠ 0.
    #[error("wrong vma extent header magic (extent {index} at byte offset {offset})")]
    ExtentMagic { offset: u64, index: u64 },
    /// The masks describe more blocks than block_count.
    #[error("short vma extent - too many blocks (masks need more than {block_count} blocks; extent {index} at byte offset {offset})")]
    TooManyBlocks {
        offset: u64,
        index: u64,
        block_count: u16,
    },
    /// The masks describe fewer blocks than block_count.
    #[error("vma extent error - missing blocks (masks describe {stored} of {block_count} blocks; extent {index} at byte offset {offset})")]
    MissingBlocks {
        offset: u64,
        index: u64,
        stored: u32,
        block_count: u16,
    },

    // ---- clusters (spec §11.3) ----
    /// A slot names a dev_id with no device.
    #[error("got wrong dev id {dev_id} (extent {index} at byte offset {offset}, slot {slot})")]
    WrongDevId {
        dev_id: u8,
        offset: u64,
        index: u64,
        slot: usize,
    },
    /// The same cluster of a device appears twice.
    #[error("found duplicated cluster {cluster} for stream {name} (extent {index} at byte offset {offset}, slot {slot})")]
    DuplicateCluster {
        dev_id: u8,
        name: Name,
        cluster: u32,
        offset: u64,
        index: u64,
        slot: usize,
    },
    /// A cluster or stored block lies at or past the device end.
    #[error("got wrong block address - write beyond end (cluster {cluster} of stream {name}, size {size}; extent {index} at byte offset {offset}, slot {slot})")]
    BeyondEnd {
        dev_id: u8,
        name: Name,
        cluster: u32,
        size: u64,
        offset: u64,
        index: u64,
        slot: usize,
    },
    /// vmstate clusters must be sequential.
    #[error("found out of order vmstate data (cluster {cluster}, expected {expected}; extent {index} at byte offset {offset}, slot {slot})")]
    VmstateOrder {
        dev_id: u8,
        cluster: u32,
        expected: u64,
        offset: u64,
        index: u64,
        slot: usize,
    },

    // ---- completeness (spec §11.4) ----
    /// Clusters never seen by EOF (truncation or a broken writer).
    #[error("detected missing cluster {} for stream {name} ({missing} of {total} clusters missing: {}{}; archive ends at byte offset {end})",
        .ranges.first().map_or(0, |r| r.start), Ranges(.ranges), if *.more { ", …" } else { "" })]
    MissingClusters {
        dev_id: u8,
        name: Name,
        missing: u64,
        total: u64,
        ranges: Vec<Range<u64>>,
        more: bool,
        end: u64,
    },

    // ---- indexed reads ----
    /// A read names a dev_id with no device.
    #[error("no device with dev id {dev_id}")]
    NoSuchDevice { dev_id: u8 },
    /// A disk is asked for by a name no device has.
    #[error("no device named '{name}'")]
    NoSuchDeviceName { name: Name },

    // ---- compressed input ----
    /// A compressed stream is corrupt.
    #[error("{format} stream corrupt at compressed byte offset {offset}: {message}")]
    Compressed {
        format: &'static str,
        offset: u64,
        message: String,
    },

    // ---- writer ----
    /// More than 256 configs.
    #[error("too many config files (at most 256)")]
    TooManyConfigs,
    /// More than 254 devices.
    #[error("too many devices (at most 254)")]
    TooManyDevices,
    /// A blob does not fit a u16 length.
    #[error("{what} '{name}' is {len} bytes; a vma blob holds at most 65535")]
    BlobTooLarge {
        what: &'static str,
        name: Name,
        len: usize,
    },
    /// Header would exceed 512 KiB.
    #[error("vma header would be {size} bytes; at most 524288 are allowed")]
    WriterHeaderTooLarge { size: usize },
    /// A name is empty, has a NUL, or repeats another.
    #[error("invalid {what} name '{name}': {why}")]
    InvalidName {
        what: &'static str,
        name: Name,
        why: &'static str,
    },
    /// Device size 0 or above 256 TiB.
    #[error("invalid size {size} for device '{name}' (must be 1..=2^48 bytes)")]
    InvalidDeviceSize { name: Name, size: u64 },
    /// A cluster for a dev_id the writer does not know.
    #[error("no device registered with dev id {dev_id}")]
    UnknownDevice { dev_id: u8 },
    /// Cluster number at or past the device end.
    #[error("cluster {cluster} is beyond the end of device '{name}' ({clusters} clusters)")]
    ClusterOutOfRange {
        name: Name,
        cluster: u64,
        clusters: u64,
    },
    /// Cluster data of the wrong length.
    #[error("cluster {cluster} of device '{name}' has {len} bytes; expected {expected}")]
    ClusterLength {
        name: Name,
        cluster: u32,
        len: usize,
        expected: usize,
    },
    /// The same cluster written twice.
    #[error("cluster {cluster} of device '{name}' was already written")]
    DuplicateWrite { name: Name, cluster: u32 },
    /// vmstate clusters must be written in order 0, 1, 2, … (spec §5.3).
    #[error("vmstate cluster {cluster} written out of order (expected {expected})")]
    VmstateWriteOrder { cluster: u32, expected: u64 },
    /// `finish` with clusters never written.
    #[error("device '{name}' is incomplete: {missing} of {total} clusters never written (first: {})", Ranges(.ranges))]
    Incomplete {
        name: Name,
        missing: u64,
        total: u64,
        ranges: Vec<Range<u64>>,
    },
    /// A previous write failed; the archive is unusable.
    #[error("writer is unusable after an earlier error")]
    Poisoned,
    /// A long operation (building a seek index) was asked to stop.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// The absolute archive byte offset of the structure this error concerns
    /// (spec §12 f), where it has one.
    pub fn offset(&self) -> Option<u64> {
        use Error::*;
        Some(match self {
            Read { offset, .. } | Write { offset, .. } => *offset,
            HeaderEof { .. } | BadMagic { .. } => 0,
            HeaderSize { .. } => 56,
            HeaderDataEof { got, .. } => *got,
            HeaderChecksum => 32,
            Version { .. } => 4,
            BlobBufferOffset { .. } => 48,
            BlobBufferSize { .. } => 52,
            InvalidDataPointers { field_offset, .. } => *field_offset,
            ShortExtentHeader { offset, .. }
            | ShortExtent { offset, .. }
            | ExtentChecksum { offset, .. }
            | ExtentUuid { offset, .. }
            | ExtentMagic { offset, .. }
            | TooManyBlocks { offset, .. }
            | MissingBlocks { offset, .. } => *offset,
            // Slot errors point at the blockinfo entry (spec §12 f).
            WrongDevId { offset, slot, .. }
            | DuplicateCluster { offset, slot, .. }
            | BeyondEnd { offset, slot, .. }
            | VmstateOrder { offset, slot, .. } => crate::extent::slot_offset(*offset, *slot),
            // Completeness points at the device's table entry (spec §12 f).
            MissingClusters { dev_id, .. } => {
                (crate::raw::hdr::DEV_INFO + crate::raw::hdr::DEV_INFO_SIZE * *dev_id as usize)
                    as u64
            }
            Compressed { offset, .. } => *offset,
            _ => return None,
        })
    }

    /// True for errors that mean "the archive bytes are damaged here" and that a
    /// salvaging reader may skip past by resynchronizing on the next extent.
    pub fn is_extent_damage(&self) -> bool {
        use Error::*;
        matches!(
            self,
            ExtentChecksum { .. }
                | ExtentUuid { .. }
                | ExtentMagic { .. }
                | TooManyBlocks { .. }
                | MissingBlocks { .. }
                | WrongDevId { .. }
                | DuplicateCluster { .. }
                | BeyondEnd { .. }
                | VmstateOrder { .. }
        )
    }
}
