//! The streaming reader: any [`std::io::Read`], never seeking (spec §2).
//!
//! Owns the read loop over a pipe, stdin or a decompressor: the header, then
//! one extent at a time into a single reused buffer of at most one maximal
//! extent (3.7 MiB), validated by the shared core in [`crate::extent`].

use std::io::Read;

use crate::error::{Error, Result};
use crate::extent::{Completeness, ExtentLayout, SlotEntry, Tracker};
use crate::header::{read_full, read_header, ArchiveHeader};
use crate::raw::*;

/// Reads a VMA archive front to back.
///
/// ```no_run
/// # fn main() -> vma_format::Result<()> {
/// let mut r = vma_format::StreamReader::new(std::io::stdin().lock())?;
/// while let Some(extent) = r.next_extent()? {
///     for c in extent.clusters() {
///         println!("dev {} cluster {} mask {:04x}", c.dev_id, c.cluster, c.mask);
///     }
/// }
/// r.completeness().check(|_| true)?; // truncated archives fail here
/// # Ok(()) }
/// ```
pub struct StreamReader<R> {
    inner: R,
    header: ArchiveHeader,
    tracker: Tracker,
    layout: ExtentLayout,
    buf: Vec<u8>,
    offset: u64,
    index: u64,
    done: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and validates the header.
    pub fn new(mut inner: R) -> Result<Self> {
        let header = read_header(&mut inner)?;
        let tracker = Tracker::new(&header);
        let offset = header.header_size();
        Ok(StreamReader {
            inner,
            header,
            tracker,
            layout: ExtentLayout::default(),
            buf: Vec::new(),
            offset,
            index: 0,
            done: false,
        })
    }

    /// The archive header.
    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    /// Archive byte offset of the next extent (after EOF: the archive length).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of extents read so far.
    pub fn extents_read(&self) -> u64 {
        self.index
    }

    /// Reads and validates the next extent; `None` at a clean EOF on an extent boundary.
    pub fn next_extent(&mut self) -> Result<Option<Extent<'_>>> {
        if self.done {
            return Ok(None);
        }
        let offset = self.offset;
        let index = self.index;
        let mut head = [0u8; EXTENT_HEADER_SIZE];
        let got = read_full(&mut self.inner, &mut head, offset)?;
        if got == 0 {
            self.done = true;
            return Ok(None);
        }
        if got < EXTENT_HEADER_SIZE {
            self.done = true;
            return Err(Error::ShortExtentHeader {
                offset,
                have: got as u64,
            });
        }
        self.layout
            .parse(&head, self.header.uuid.as_bytes(), offset, index)?;
        let need = self.layout.data_len();
        self.buf.resize(need, 0);
        let got = read_full(
            &mut self.inner,
            &mut self.buf,
            offset + EXTENT_HEADER_SIZE as u64,
        )?;
        if got < need {
            self.done = true;
            return Err(Error::ShortExtent {
                offset,
                have: (EXTENT_HEADER_SIZE + got) as u64,
                need: (EXTENT_HEADER_SIZE + need) as u64,
            });
        }
        for e in self.layout.entries() {
            self.tracker.check(e, offset, index)?;
        }
        self.offset += (EXTENT_HEADER_SIZE + need) as u64;
        self.index += 1;
        Ok(Some(Extent {
            offset,
            index,
            layout: &self.layout,
            data: &self.buf,
        }))
    }

    /// Completeness so far; after `next_extent` returned `None` it is final.
    pub fn completeness(&self) -> Completeness {
        self.tracker.completeness(self.offset)
    }

    /// Stored 4 KiB blocks seen so far for `dev_id`.
    pub fn stored_blocks(&self, dev_id: u8) -> u64 {
        self.tracker.stored_blocks(dev_id)
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// One validated extent, borrowed from the reader's buffer.
#[derive(Clone, Copy)]
pub struct Extent<'a> {
    /// Archive byte offset of the extent header.
    pub offset: u64,
    /// Extent number, from 0.
    pub index: u64,
    layout: &'a ExtentLayout,
    data: &'a [u8],
}

impl<'a> Extent<'a> {
    /// Number of 4 KiB data blocks.
    pub fn block_count(&self) -> u16 {
        self.layout.block_count
    }

    /// The clusters in slot order.
    pub fn clusters(&self) -> impl Iterator<Item = Cluster<'a>> + 'a {
        let data = self.data;
        self.layout.entries().iter().map(move |e: &SlotEntry| {
            let start = e.data_offset as usize;
            let len = e.info.stored_blocks() as usize * BLOCK_SIZE;
            Cluster {
                dev_id: e.info.dev_id,
                cluster: e.info.cluster,
                mask: e.info.mask,
                data: &data[start..start + len],
            }
        })
    }
}

/// One cluster of an extent: which device, where, and its stored blocks.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// dev_id.
    pub dev_id: u8,
    /// Cluster number; byte offset in the device is `cluster * 65536`.
    pub cluster: u32,
    /// Bit i set ⇔ block i is stored (spec §7.4).
    pub mask: u16,
    /// The stored blocks, ascending, `popcount(mask) * 4096` bytes.
    pub data: &'a [u8],
}

impl<'a> Cluster<'a> {
    /// Byte offset of the cluster in its device.
    pub fn device_offset(&self) -> u64 {
        u64::from(self.cluster) * CLUSTER_SIZE as u64
    }

    /// Runs of consecutive stored blocks: (first block index, bytes). Each run is
    /// contiguous both in the archive and on the device, so it can be written
    /// with one call.
    pub fn runs(&self) -> Runs<'a> {
        Runs {
            mask: self.mask,
            data: self.data,
            pos: 0,
        }
    }

    /// Expands the cluster into 64 KiB of device bytes (zeros where not stored).
    pub fn expand(&self, out: &mut [u8; CLUSTER_SIZE]) {
        out.fill(0);
        for (b, bytes) in self.runs() {
            out[b * BLOCK_SIZE..b * BLOCK_SIZE + bytes.len()].copy_from_slice(bytes);
        }
    }
}

/// Iterator of [`Cluster::runs`].
pub struct Runs<'a> {
    mask: u16,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = (usize, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.mask == 0 {
            return None;
        }
        let first = self.mask.trailing_zeros() as usize;
        let n = (self.mask >> first).trailing_ones() as usize;
        // Clear the run's bits.
        self.mask &= !(((1u32 << n) - 1) << first) as u16;
        let bytes = &self.data[self.pos..self.pos + n * BLOCK_SIZE];
        self.pos += n * BLOCK_SIZE;
        Some((first, bytes))
    }
}
