//! The streaming reader: any [`std::io::Read`], never seeking (spec §2).
//!
//! Owns the read loop over a pipe, stdin or a decompressor: the header, then
//! one extent at a time into a single reused buffer of at most one maximal
//! extent (3.7 MiB), validated by the shared core in [`crate::extent`].

use std::io::Read;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::extent::{Completeness, ExtentLayout, SlotEntry, Tracker};
use crate::header::{read_full, read_header, ArchiveHeader};
use crate::raw::*;

/// A byte range of an archive that starts and ends on extent boundaries (or
/// at 0, holding the header), and the number of its first extent; see
/// [`crate::IndexedReader::extents_for`] and [`StreamReader::set_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePart {
    /// Archive bytes.
    pub range: Range<u64>,
    /// Number of the extent at `range.start` (0 for the part at 0).
    pub first_extent: u64,
}

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
    salvage: bool,
    damage: Vec<Error>,
    /// Bytes read ahead while resynchronizing, consumed before the source.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Extent data is read through `buf` in small pieces and dropped.
    discard: bool,
    /// Salvage of an extent cut short: how many of its data bytes exist.
    cut: Option<usize>,
    /// [`StreamReader::set_parts`]: the parts the source holds, the one
    /// being read, and the archive's length.
    parts: Vec<ArchivePart>,
    part: usize,
    archive_end: u64,
}

/// Piece size of [`StreamReader::set_discard_data`]: small enough that the
/// kernel's copy lands in the CPU cache, large enough to keep syscalls rare.
const DISCARD_CHUNK: usize = 256 << 10;

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
            salvage: false,
            damage: Vec::new(),
            pending: Vec::new(),
            pending_pos: 0,
            discard: false,
            cut: None,
            parts: Vec::new(),
            part: 0,
            archive_end: 0,
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

    /// Salvage mode (spec §12): instead of failing, a damaged extent is
    /// recorded in [`StreamReader::damage`] and skipped by resynchronizing on
    /// the next extent header that carries this archive's UUID and a valid
    /// checksum; a cluster failing its checks is dropped and recorded. I/O
    /// errors and truncation still end the stream, but an extent cut inside
    /// its data still yields every complete 4 KiB block before the cut
    /// (clusters cut short carry only those blocks in their mask and count
    /// as missing in [`StreamReader::completeness`]).
    pub fn set_salvage(&mut self, on: bool) {
        self.salvage = on;
    }

    /// Headers-only mode, for callers that need no data bytes (`verify`):
    /// extent data is still read — every byte, so truncation and read errors
    /// are found — but through a small reused buffer and then dropped, which
    /// is cheaper than keeping a 3.7 MiB extent. [`Extent::clusters`] then
    /// yields nothing; [`Extent::slots`] works in both modes.
    pub fn set_discard_data(&mut self, on: bool) {
        self.discard = on;
    }

    /// The source holds only `parts` of the archive, back to back (as
    /// [`crate::IndexedReader::extents_for`] gives them: the first starts
    /// at 0 and holds the header, each begins and ends on an extent
    /// boundary), and the archive is `end` bytes long. Byte offsets and
    /// extent numbers (in errors, [`Extent`], [`StreamReader::offset`]) are
    /// then the archive's, and once every part was read the stream ends at
    /// `end`. Devices whose extents were left out are incomplete in
    /// [`StreamReader::completeness`], by design: check only the others.
    /// Call it right after [`StreamReader::new`]; not with salvage mode
    /// (resynchronizing would cross from one part into the next).
    pub fn set_parts(&mut self, parts: Vec<ArchivePart>, end: u64) {
        self.parts = parts;
        self.part = 0;
        self.archive_end = end;
        self.enter_part();
    }

    /// Moves `offset`/`index` to the next part once the current one is read.
    fn enter_part(&mut self) {
        while let Some(p) = self.parts.get(self.part) {
            if self.offset < p.range.end {
                return;
            }
            self.part += 1;
            match self.parts.get(self.part) {
                Some(next) => {
                    self.offset = next.range.start;
                    self.index = next.first_extent;
                }
                // Every part read: what follows was left out on purpose.
                None => self.offset = self.offset.max(self.archive_end),
            }
        }
    }

    /// What salvage mode skipped, in stream order.
    pub fn damage(&self) -> &[Error] {
        &self.damage
    }

    /// What was tolerated so far because Proxmox restores it (spec §12 c,
    /// d), in stream order; complete once `next_extent` returned `None`.
    pub fn warnings(&self) -> &[crate::Warning] {
        self.tracker.warnings()
    }

    /// Reads and validates the next extent; `None` at a clean EOF on an extent boundary.
    pub fn next_extent(&mut self) -> Result<Option<Extent<'_>>> {
        let (offset, index, skip) = loop {
            if self.done {
                return Ok(None);
            }
            match self.read_extent() {
                Ok(Some(found)) => break found,
                Ok(None) => {
                    self.done = true;
                    return Ok(None);
                }
                Err((e, _)) if !self.salvage => {
                    self.done = true;
                    return Err(e);
                }
                Err((e, Some(window))) => {
                    let from = e.offset().unwrap_or(self.offset) + 1;
                    self.damage.push(e);
                    if !self.resync(from, window)? {
                        self.done = true;
                    }
                }
                Err((e @ (Error::ShortExtent { .. } | Error::ShortExtentHeader { .. }), None)) => {
                    self.damage.push(e);
                    self.done = true;
                }
                Err((e, None)) => {
                    self.done = true;
                    return Err(e);
                }
            }
        };
        Ok(Some(Extent {
            offset,
            index,
            skip,
            cut: self.cut,
            layout: &self.layout,
            data: (!self.discard).then_some(&self.buf[..]),
        }))
    }

    /// One extent: `Ok(Some((offset, index, dropped-slot mask)))`, `Ok(None)` at
    /// EOF, or the error plus, for damage salvage can skip, the bytes already
    /// consumed after the bad header's first byte.
    #[allow(clippy::type_complexity)]
    fn read_extent(&mut self) -> Result<Option<(u64, u64, u64)>, (Error, Option<Vec<u8>>)> {
        self.enter_part();
        let offset = self.offset;
        let index = self.index;
        let mut head = [0u8; EXTENT_HEADER_SIZE];
        let got = self.fill(&mut head, offset).map_err(|e| (e, None))?;
        if got == 0 {
            return Ok(None);
        }
        if got < EXTENT_HEADER_SIZE {
            return Err((
                Error::ShortExtentHeader {
                    offset,
                    have: got as u64,
                },
                None,
            ));
        }
        if let Err(e) = self
            .layout
            .parse(&head, self.header.uuid.as_bytes(), offset, index)
        {
            return Err((e, Some(head[1..].to_vec())));
        }
        let need = self.layout.data_len();
        let mut buf = std::mem::take(&mut self.buf);
        let got = if self.discard {
            // Pieces end on DISCARD_CHUNK boundaries of the stream and land
            // at the same offset within a page as in the file: the kernel's
            // copy runs page-aligned (about 10 % faster than VMA's natural
            // 512-byte misalignment).
            buf.resize(DISCARD_CHUNK + 2 * 4096, 0);
            let base = buf.as_ptr().align_offset(4096).min(4096);
            let mut got = 0;
            loop {
                let start = offset + (EXTENT_HEADER_SIZE + got) as u64;
                let n = (need - got).min(DISCARD_CHUNK - (start % DISCARD_CHUNK as u64) as usize);
                let at = base + (start % 4096) as usize;
                match self.fill(&mut buf[at..at + n], start) {
                    Ok(r) => {
                        got += r;
                        if r < n || got == need {
                            break Ok(got);
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        } else {
            buf.resize(need, 0);
            self.fill(&mut buf, offset + EXTENT_HEADER_SIZE as u64)
        };
        self.buf = buf;
        let got = got.map_err(|e| (e, None))?;
        if got < need {
            let short = Error::ShortExtent {
                offset,
                have: (EXTENT_HEADER_SIZE + got) as u64,
                need: (EXTENT_HEADER_SIZE + need) as u64,
            };
            if !self.salvage {
                return Err((short, None));
            }
            // The header is intact (its checksum matched): hand out what
            // precedes the cut, then end the stream.
            self.cut = Some(got);
            self.done = true;
            self.damage.push(short);
        }
        let mut skip = 0u64;
        for e in self.layout.entries() {
            // A mask-0 cluster is whole even after the cut: the (checksummed)
            // header says it is zero.
            let complete = self.cut.is_none_or(|present| {
                e.info.mask == 0
                    || e.data_offset as usize + e.info.stored_blocks() as usize * BLOCK_SIZE
                        <= present
            });
            let checked = if complete {
                self.tracker.check(e, offset, index)
            } else {
                self.tracker.check_partial(e, offset, index)
            };
            if let Err(err) = checked {
                if !self.salvage {
                    return Err((err, None));
                }
                skip |= 1 << e.slot;
                self.damage.push(err);
            }
        }
        self.offset += (EXTENT_HEADER_SIZE + self.cut.unwrap_or(need)) as u64;
        self.index += 1;
        Ok(Some((offset, index, skip)))
    }

    /// Reads into `buf` from the pushed-back bytes first, then the source.
    fn fill(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut got = 0;
        if self.pending_pos < self.pending.len() {
            got = buf.len().min(self.pending.len() - self.pending_pos);
            buf[..got].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + got]);
            self.pending_pos += got;
            if self.pending_pos == self.pending.len() {
                self.pending.clear();
                self.pending_pos = 0;
            }
        }
        if got < buf.len() {
            got += read_full(&mut self.inner, &mut buf[got..], offset + got as u64)?;
        }
        Ok(got)
    }

    /// Scans from archive offset `from` (whose first bytes are `window`) for the
    /// next valid extent header of this archive; true if one was found, and the
    /// reader is then positioned on it.
    fn resync(&mut self, from: u64, mut window: Vec<u8>) -> Result<bool> {
        window.extend_from_slice(&self.pending[self.pending_pos..]);
        self.pending.clear();
        self.pending_pos = 0;
        let uuid = *self.header.uuid.as_bytes();
        let mut base = from;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let mut i = 0;
            while i + EXTENT_HEADER_SIZE <= window.len() {
                let w = &window[i..i + EXTENT_HEADER_SIZE];
                if w[..4] == EXTENT_MAGIC
                    && w[4..6] == [0, 0]
                    && w[ext::UUID..ext::UUID + 16] == uuid
                {
                    let h: &[u8; EXTENT_HEADER_SIZE] = w.try_into().expect("512 bytes");
                    if extent_md5(h)[..] == h[ext::MD5..ext::MD5 + 16] {
                        self.pending = window.split_off(i);
                        self.offset = base + i as u64;
                        self.index += 1;
                        return Ok(true);
                    }
                }
                i += 1;
            }
            // Keep the tail that could still begin a header.
            let keep_from = window.len().saturating_sub(EXTENT_HEADER_SIZE - 1);
            window.drain(..keep_from);
            base += keep_from as u64;
            let n = read_full(&mut self.inner, &mut chunk, base + window.len() as u64)?;
            if n == 0 {
                self.offset = base + window.len() as u64;
                return Ok(false);
            }
            window.extend_from_slice(&chunk[..n]);
        }
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
    /// Slots dropped by salvage mode (bit = slot).
    skip: u64,
    /// Salvage of a cut extent: data bytes present.
    cut: Option<usize>,
    layout: &'a ExtentLayout,
    /// `None` in headers-only mode ([`StreamReader::set_discard_data`]).
    data: Option<&'a [u8]>,
}

/// One blockinfo slot of an extent: which cluster it holds, without data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// dev_id.
    pub dev_id: u8,
    /// Cluster number.
    pub cluster: u32,
    /// Bit i set ⇔ block i is stored (spec §7.4).
    pub mask: u16,
}

impl Slot {
    /// Byte offset of the cluster in its device.
    pub fn device_offset(&self) -> u64 {
        u64::from(self.cluster) * CLUSTER_SIZE as u64
    }

    /// Bytes of the stored blocks that lie inside a device of `size` bytes:
    /// a block straddling the device end counts up to the end (spec §7.5).
    pub fn stored_bytes_within(&self, size: u64) -> u64 {
        let off = self.device_offset();
        let mut m = self.mask;
        let mut n = 0;
        while m != 0 {
            let start = off + u64::from(m.trailing_zeros()) * BLOCK_SIZE as u64;
            n += size.saturating_sub(start).min(BLOCK_SIZE as u64);
            m &= m - 1;
        }
        n
    }
}

impl<'a> Extent<'a> {
    /// Number of 4 KiB data blocks.
    pub fn block_count(&self) -> u16 {
        self.layout.block_count
    }

    /// Whether this extent was cut short and salvaged: its clusters then
    /// carry only the blocks before the cut.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    /// The valid slots in slot order with the mask of the blocks present
    /// (all of them unless cut short); `None` for a slot to leave out.
    fn present(&self) -> impl Iterator<Item = (&'a SlotEntry, u16)> + 'a {
        let (skip, cut) = (self.skip, self.cut);
        self.layout.entries().iter().filter_map(move |e| {
            if skip & (1 << e.slot) != 0 {
                return None;
            }
            let Some(present) = cut else {
                return Some((e, e.info.mask));
            };
            let have = present.saturating_sub(e.data_offset as usize) / BLOCK_SIZE;
            let mask = first_set_bits(e.info.mask, have);
            // A cluster whose stored data lies wholly after the cut yields nothing.
            (e.info.mask == 0 || mask != 0).then_some((e, mask))
        })
    }

    /// The clusters (valid slots) in slot order, without their data.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + 'a {
        self.present().map(|(e, mask)| Slot {
            dev_id: e.info.dev_id,
            cluster: e.info.cluster,
            mask,
        })
    }

    /// The clusters in slot order, with their data; nothing in headers-only
    /// mode ([`StreamReader::set_discard_data`]).
    pub fn clusters(&self) -> impl Iterator<Item = Cluster<'a>> + 'a {
        let data = self.data;
        self.present()
            .filter(move |_| data.is_some())
            .map(move |(e, mask)| {
                let start = e.data_offset as usize;
                let len = mask.count_ones() as usize * BLOCK_SIZE;
                Cluster {
                    dev_id: e.info.dev_id,
                    cluster: e.info.cluster,
                    mask,
                    data: &data.unwrap_or_default()[start..start + len],
                }
            })
    }
}

/// The lowest `n` set bits of `mask`: the first `n` stored blocks.
fn first_set_bits(mask: u16, n: usize) -> u16 {
    let mut rest = mask;
    for _ in 0..n.min(16) {
        rest &= rest.wrapping_sub(1);
    }
    mask & !rest
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
