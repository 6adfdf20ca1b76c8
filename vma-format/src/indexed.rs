//! The indexed random-access reader over a positional source.
//!
//! Owns [`ReadAt`] (positional reads, `&self`, thread-safe) and
//! [`IndexedReader`]: it reads the header and every extent *header* (seeking
//! over data), validates them with the same core as the streaming reader
//! ([`crate::extent`]), and keeps a per-device sorted index of 12 bytes per
//! stored cluster. Reads of any byte range and the data/zero mapping that
//! serves `SEEK_DATA`/`SEEK_HOLE` are answered from that index.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::{Completeness, ExtentLayout, Tracker};
use crate::header::{read_header, ArchiveHeader};
use crate::raw::*;
use crate::stream::ArchivePart;

mod disk;
pub use disk::Disk;

/// A source that can be read at any offset through a shared reference.
///
/// Implemented for [`File`] (pread), byte containers and memory maps; a
/// decompressing or remote source can implement it too. The method is
/// `read_at_offset(offset, buf)`, not `read_at`: std's
/// `FileExt::read_at(buf, offset)` takes its arguments the other way round.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; 0 means EOF.
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Total length of the source in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Reads until `buf` is full or EOF; returns the bytes read.
    fn read_full_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_at_offset(offset + got as u64, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

impl ReadAt for File {
    #[cfg(unix)]
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
    // Windows has no pread: seek_read reads at `offset` through an OVERLAPPED
    // offset (safe from several threads); it also moves the file cursor,
    // which no user of a ReadAt relies on.
    #[cfg(windows)]
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for memmap2::Mmap {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

/// Adapts a [`ReadAt`] to a sequential [`Read`] for the header.
struct Cursor<'a, S: ?Sized> {
    src: &'a S,
    pos: u64,
}

impl<S: ReadAt + ?Sized> Read for Cursor<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at_offset(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One stored cluster in the index: 12 bytes, so that with the per-extent
/// table (24 bytes per up to 58 clusters) the index stays under 16 bytes per
/// stored cluster.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct IndexEntry {
    cluster: u32,
    /// Extent number; its offset is `extents[extent].offset`.
    extent: u32,
    /// First stored block of the cluster, in 4 KiB units after the extent header.
    block: u16,
    mask: u16,
}
const _: () = assert!(std::mem::size_of::<IndexEntry>() == 12);

#[derive(Debug, Clone, Copy)]
struct ExtentRef {
    offset: u64,
    md5: [u8; 16],
}

#[derive(Debug, Default)]
struct DevIndex {
    size: u64,
    /// Clusters with at least one stored block, sorted by cluster.
    entries: Vec<IndexEntry>,
    stored_blocks: u64,
    /// Extents holding any cluster of the device (zero clusters too: a
    /// streaming reader must see them to call the device complete), ascending.
    extents: Vec<u32>,
}

/// What a byte range of a device holds (for `SEEK_DATA`/`SEEK_HOLE`, `qemu-img map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// Stored bytes.
    Data,
    /// Reads as zeros (zero blocks, mask-0 or absent clusters).
    Zero,
}

/// A maximal run `[start, end)` of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Data or zero.
    pub kind: MappingKind,
    /// First byte.
    pub start: u64,
    /// One past the last byte; at most the device size.
    pub end: u64,
}

/// Random access to the disks of an archive.
pub struct IndexedReader<S> {
    source: S,
    header: ArchiveHeader,
    devs: Vec<DevIndex>,
    extents: Vec<ExtentRef>,
    completeness: Completeness,
    warnings: Vec<crate::Warning>,
    verify_reads: bool,
}

impl<S: ReadAt> IndexedReader<S> {
    /// Reads the header and every extent header, validating as the streaming
    /// reader does, and builds the index.
    pub fn open(source: S) -> Result<Self> {
        let header = read_header(&mut Cursor {
            src: &source,
            pos: 0,
        })?;
        let file_size = source
            .size()
            .map_err(|source| Error::Read { offset: 0, source })?;
        let mut tracker = Tracker::new(&header);
        let mut devs: Vec<DevIndex> = (0..DEV_SLOTS).map(|_| DevIndex::default()).collect();
        for d in &header.devices {
            devs[d.id as usize].size = d.size;
        }
        let mut extents = Vec::new();
        let mut layout = ExtentLayout::default();
        let mut offset = header.header_size();
        let mut head = [0u8; EXTENT_HEADER_SIZE];
        loop {
            let index = extents.len() as u64;
            let got = source
                .read_full_at(offset, &mut head)
                .map_err(|source| Error::Read { offset, source })?;
            if got == 0 {
                break;
            }
            if got < EXTENT_HEADER_SIZE {
                return Err(Error::ShortExtentHeader {
                    offset,
                    have: got as u64,
                });
            }
            layout.parse(&head, header.uuid.as_bytes(), offset, index)?;
            let need = (EXTENT_HEADER_SIZE + layout.data_len()) as u64;
            if offset + need > file_size {
                return Err(Error::ShortExtent {
                    offset,
                    have: file_size - offset,
                    need,
                });
            }
            let extent = u32::try_from(index).map_err(|_| Error::ShortExtent {
                offset,
                have: 0,
                need,
            })?;
            for e in layout.entries() {
                tracker.check(e, offset, index)?;
                let d = &mut devs[e.info.dev_id as usize];
                if d.extents.last() != Some(&extent) {
                    d.extents.push(extent);
                }
                if e.info.mask != 0 {
                    d.stored_blocks += u64::from(e.info.stored_blocks());
                    d.entries.push(IndexEntry {
                        cluster: e.info.cluster,
                        extent,
                        block: (e.data_offset / BLOCK_SIZE as u32) as u16,
                        mask: e.info.mask,
                    });
                }
            }
            extents.push(ExtentRef {
                offset,
                md5: extent_md5(&head),
            });
            offset += need;
        }
        for d in &mut devs {
            // Archives are mostly ordered already; sort_unstable is cheap then.
            d.entries.sort_unstable_by_key(|e| e.cluster);
            d.entries.shrink_to_fit();
            d.extents.shrink_to_fit();
        }
        extents.shrink_to_fit();
        let completeness = tracker.completeness(offset);
        Ok(IndexedReader {
            source,
            header,
            devs,
            extents,
            completeness,
            warnings: tracker.warnings().to_vec(),
            verify_reads: false,
        })
    }

    /// The archive header.
    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    /// The positional source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Which clusters the archive lacks (truncation), per device.
    pub fn completeness(&self) -> &Completeness {
        &self.completeness
    }

    /// What was tolerated because Proxmox restores it (spec §12 c, d).
    pub fn warnings(&self) -> &[crate::Warning] {
        &self.warnings
    }

    /// Number of extents.
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Bytes of memory held by the index (entries and extent table).
    pub fn index_bytes(&self) -> usize {
        self.devs
            .iter()
            .map(|d| {
                d.entries.capacity() * std::mem::size_of::<IndexEntry>()
                    + d.extents.capacity() * std::mem::size_of::<u32>()
            })
            .sum::<usize>()
            + self.extents.capacity() * std::mem::size_of::<ExtentRef>()
    }

    /// Number of stored (non-zero) clusters over all devices.
    pub fn stored_clusters(&self) -> usize {
        self.devs.iter().map(|d| d.entries.len()).sum()
    }

    /// Re-check each touched extent header against the index on every read, so
    /// a file changed underneath gives an error instead of wrong bytes.
    pub fn set_verify_reads(&mut self, on: bool) {
        self.verify_reads = on;
    }

    /// The parts of the archive a streaming reader needs to restore the
    /// devices `dev_ids`: the header and every extent holding a cluster of
    /// one of them (zero clusters included, so that the devices are seen
    /// complete), adjacent extents merged, in archive order. Feed them, back
    /// to back, to a [`crate::StreamReader`] with
    /// [`crate::StreamReader::set_parts`]. Unknown dev_ids select nothing.
    pub fn extents_for(&self, dev_ids: &[u8]) -> Vec<ArchivePart> {
        let mut wanted: Vec<u32> = dev_ids
            .iter()
            .flat_map(|&id| self.devs[id as usize].extents.iter().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let end_of = |i: usize| {
            self.extents
                .get(i + 1)
                .map_or(self.completeness.end, |x| x.offset)
        };
        let mut parts = vec![ArchivePart {
            range: 0..self.header.header_size(),
            first_extent: 0,
        }];
        for i in wanted {
            let i = i as usize;
            let (start, end) = (self.extents[i].offset, end_of(i));
            let last = parts.last_mut().expect("the header part");
            if last.range.end == start {
                last.range.end = end;
            } else {
                parts.push(ArchivePart {
                    range: start..end,
                    first_extent: i as u64,
                });
            }
        }
        parts
    }

    /// Bytes stored (non-zero 4 KiB blocks) for `dev_id`.
    pub fn stored_bytes(&self, dev_id: u8) -> u64 {
        self.devs[dev_id as usize].stored_blocks * BLOCK_SIZE as u64
    }

    fn dev(&self, dev_id: u8) -> Result<&DevIndex> {
        match self.devs.get(dev_id as usize) {
            Some(d) if d.size > 0 => Ok(d),
            _ => Err(Error::NoSuchDevice { dev_id }),
        }
    }

    fn check_extent(&self, extent: u32) -> Result<()> {
        let x = self.extents[extent as usize];
        let mut head = [0u8; EXTENT_HEADER_SIZE];
        let got = self
            .source
            .read_full_at(x.offset, &mut head)
            .map_err(|source| Error::Read {
                offset: x.offset,
                source,
            })?;
        if got < EXTENT_HEADER_SIZE
            || extent_md5(&head) != x.md5
            || head[ext::MD5..ext::MD5 + 16] != x.md5
        {
            return Err(Error::ExtentChecksum {
                offset: x.offset,
                index: u64::from(extent),
            });
        }
        Ok(())
    }

    /// Reads device bytes at `offset` into `buf`; returns the count (short only at the device end).
    /// Zero blocks and absent clusters read as zeros.
    pub fn read(&self, dev_id: u8, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let d = self.dev(dev_id)?;
        if offset >= d.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(d.size - offset) as usize;
        let cs = CLUSTER_SIZE as u64;
        let mut pos = offset;
        let end = offset + len as u64;
        let mut i = d
            .entries
            .partition_point(|e| u64::from(e.cluster) < pos / cs);
        while pos < end {
            let c = pos / cs;
            let cstart = c * cs;
            // Saturating: the last cluster of a device near 2^64 bytes ends past u64.
            let cend = cstart.saturating_add(cs).min(end);
            let out = &mut buf[(pos - offset) as usize..(cend - offset) as usize];
            out.fill(0);
            while i < d.entries.len() && u64::from(d.entries[i].cluster) < c {
                i += 1;
            }
            if let Some(e) = d.entries.get(i).filter(|e| u64::from(e.cluster) == c) {
                if self.verify_reads {
                    self.check_extent(e.extent)?;
                }
                let data_base = self.extents[e.extent as usize].offset
                    + EXTENT_HEADER_SIZE as u64
                    + u64::from(e.block) * BLOCK_SIZE as u64;
                let mut stored_before = 0u64;
                let mut mask = e.mask;
                while mask != 0 {
                    let first = mask.trailing_zeros() as u64;
                    let n = (mask >> first).trailing_ones() as u64;
                    mask &= !((((1u32 << n) - 1) << first) as u16);
                    let run_start = cstart + first * BLOCK_SIZE as u64;
                    let run_end = run_start.saturating_add(n * BLOCK_SIZE as u64);
                    let (s, t) = (run_start.max(pos), run_end.min(cend));
                    if s < t {
                        let src = data_base + stored_before + (s - run_start);
                        let dst = &mut out[(s - pos) as usize..(t - pos) as usize];
                        let got =
                            self.source
                                .read_full_at(src, dst)
                                .map_err(|source| Error::Read {
                                    offset: src,
                                    source,
                                })?;
                        if got < dst.len() {
                            // The source shrank underneath us: report what is left of the extent.
                            let x = self.extents[e.extent as usize].offset;
                            let end = self.source.size().unwrap_or(src + got as u64);
                            return Err(Error::ShortExtent {
                                offset: x,
                                have: end.saturating_sub(x),
                                need: src + dst.len() as u64 - x,
                            });
                        }
                    }
                    stored_before += n * BLOCK_SIZE as u64;
                }
            }
            pos = cend;
        }
        Ok(len)
    }

    /// The maximal data or zero run containing `offset`; `None` at or past the device end.
    pub fn map(&self, dev_id: u8, offset: u64) -> Result<Option<Mapping>> {
        let d = self.dev(dev_id)?;
        if offset >= d.size {
            return Ok(None);
        }
        let bs = BLOCK_SIZE as u64;
        let bpc = BLOCKS_PER_CLUSTER as u64;
        let blk = offset / bs;
        let mut c = blk / bpc;
        let mut bit = (blk % bpc) as u32;
        let mut i = d.entries.partition_point(|e| u64::from(e.cluster) < c);
        let at = |i: usize, c: u64| d.entries.get(i).filter(|e| u64::from(e.cluster) == c);
        let is_data = at(i, c).is_some_and(|e| e.mask & (1 << bit) != 0);
        let end_blk = if is_data {
            loop {
                let e = at(i, c).expect("data cluster is indexed");
                let n = (u32::from(e.mask) >> bit).trailing_ones();
                if bit + n < 16 {
                    break c * bpc + u64::from(bit + n);
                }
                c += 1;
                i += 1;
                bit = 0;
                if at(i, c).is_none_or(|e| e.mask & 1 == 0) {
                    break c * bpc;
                }
            }
        } else {
            loop {
                match at(i, c) {
                    Some(e) if u32::from(e.mask) >> bit != 0 => {
                        break c * bpc
                            + u64::from(bit + (u32::from(e.mask) >> bit).trailing_zeros());
                    }
                    Some(_) => {
                        c += 1;
                        i += 1;
                        bit = 0;
                    }
                    None => match d.entries.get(i) {
                        // Jump over absent clusters to the next indexed one.
                        Some(e) => {
                            c = u64::from(e.cluster);
                            bit = 0;
                        }
                        // Nothing stored after here: zero up to the device end.
                        None => break u64::MAX,
                    },
                }
            }
        };
        // Block numbers times 4096 can exceed u64 for a device near 2^64 bytes.
        let end = end_blk.checked_mul(bs).map_or(d.size, |e| e.min(d.size));
        let kind = if is_data {
            MappingKind::Data
        } else {
            MappingKind::Zero
        };
        Ok(Some(Mapping {
            kind,
            start: offset,
            end,
        }))
    }

    /// `SEEK_DATA`: the first data byte at or after `offset`, `None` if there is none.
    pub fn seek_data(&self, dev_id: u8, offset: u64) -> Result<Option<u64>> {
        let size = self.dev(dev_id)?.size;
        Ok(match self.map(dev_id, offset)? {
            None => None,
            Some(m) if m.kind == MappingKind::Data => Some(offset),
            Some(m) => (m.end < size).then_some(m.end),
        })
    }

    /// `SEEK_HOLE`: the first hole byte at or after `offset` (the device end counts
    /// as a hole), `None` at or past the end.
    pub fn seek_hole(&self, dev_id: u8, offset: u64) -> Result<Option<u64>> {
        Ok(match self.map(dev_id, offset)? {
            None => None,
            Some(m) if m.kind == MappingKind::Zero => Some(offset),
            Some(m) => Some(m.end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StreamReader, WriterBuilder};

    /// Three disks of 300 clusters written in runs of 87 clusters, a, b, c
    /// in turn, so extents (58 clusters) hold one or two disks; disk b's
    /// odd clusters are zero (mask 0), and so are disk c's clusters 87..174
    /// (whole extents with no stored block of c).
    fn interleaved() -> (Vec<u8>, [u8; 3]) {
        let mut b = WriterBuilder::new();
        let ids = [
            b.add_device("a", 300 * 65536).unwrap(),
            b.add_device("b", 300 * 65536).unwrap(),
            b.add_device("c", 300 * 65536).unwrap(),
        ];
        let w = b.build(Vec::new()).unwrap();
        for run in 0..300 / 87 + 1 {
            for (k, &id) in ids.iter().enumerate() {
                for c in (run * 87..(run + 1) * 87).filter(|&c| c < 300) {
                    let zero = (k == 1 && c % 2 == 1) || (k == 2 && (87..174).contains(&c));
                    if zero {
                        w.write_zero_cluster(id, c).unwrap();
                    } else {
                        w.write_cluster(id, c, &[id ^ c as u8 | 1; 65536]).unwrap();
                    }
                }
            }
        }
        (w.finish().unwrap().0, ids)
    }

    /// The device contents a streaming reader restores from `src`.
    fn restore(src: &[u8], parts: Option<(Vec<ArchivePart>, u64)>) -> (Vec<Vec<u8>>, Completeness) {
        let mut r = StreamReader::new(src).unwrap();
        if let Some((p, end)) = parts {
            r.set_parts(p, end);
        }
        let mut disks = vec![vec![0u8; 300 * 65536]; 3];
        while let Some(x) = r.next_extent().unwrap() {
            for c in x.clusters() {
                let mut buf = [0u8; CLUSTER_SIZE];
                c.expand(&mut buf);
                let at = c.device_offset() as usize;
                disks[c.dev_id as usize - 1][at..at + CLUSTER_SIZE].copy_from_slice(&buf);
            }
        }
        (disks, r.completeness())
    }

    #[test]
    fn extents_for_some_devices_restore_them_completely() {
        let (archive, ids) = interleaved();
        let ix = IndexedReader::open(&archive[..]).unwrap();
        let end = archive.len() as u64;
        assert_eq!(ix.completeness().end, end);
        let (full, _) = restore(&archive, None);
        for sel in [&ids[..1], &ids[1..2], &ids[2..3], &[ids[0], ids[2]][..]] {
            let parts = ix.extents_for(sel);
            // Ascending, disjoint, not adjacent (merged), extent-aligned.
            assert_eq!(parts[0].range.start, 0);
            assert!(parts.windows(2).all(|w| w[0].range.end < w[1].range.start));
            let fetched: u64 = parts.iter().map(|p| p.range.end - p.range.start).sum();
            if sel.len() == 1 {
                assert!(fetched < end * 2 / 3, "{sel:?}: {fetched} of {end} bytes");
            }
            let sparse: Vec<u8> = parts
                .iter()
                .flat_map(|p| archive[p.range.start as usize..p.range.end as usize].to_vec())
                .collect();
            let (disks, done) = restore(&sparse, Some((parts.clone(), end)));
            assert_eq!(done.end, end, "ends at the archive's end");
            for &id in sel {
                let i = id as usize - 1;
                assert_eq!(disks[i], full[i], "{sel:?}: disk {id}");
            }
            done.check(|id| sel.contains(&id)).unwrap();
            // The devices left out are incomplete, and reported as such if asked.
            if sel.len() == 1 {
                assert!(done.check(|_| true).is_err());
            }
        }
        // Disk c has extents of zero clusters only: without them it would
        // be incomplete (the check above).
        let c = &ix.devs[ids[2] as usize];
        assert!(c
            .extents
            .iter()
            .any(|x| c.entries.iter().all(|e| e.extent != *x)));
        let header_only = ArchivePart {
            range: 0..ix.header().header_size(),
            first_extent: 0,
        };
        assert_eq!(ix.extents_for(&[9]), vec![header_only]);
    }

    #[test]
    fn parts_keep_archive_offsets_and_extent_numbers_in_errors() {
        let (mut archive, ids) = interleaved();
        let ix = IndexedReader::open(&archive[..]).unwrap();
        let parts = ix.extents_for(&ids[2..3]);
        // Damage the header of the second part's first extent (after a gap).
        let p = &parts[1];
        assert!(p.first_extent > 0);
        archive[p.range.start as usize + 100] ^= 1;
        let sparse: Vec<u8> = parts
            .iter()
            .flat_map(|p| archive[p.range.start as usize..p.range.end as usize].to_vec())
            .collect();
        let mut r = StreamReader::new(&sparse[..]).unwrap();
        r.set_parts(parts.clone(), archive.len() as u64);
        let e = loop {
            match r.next_extent() {
                Ok(Some(x)) => assert!(parts.iter().any(|p| p.range.contains(&x.offset))),
                Ok(None) => panic!("damage not found"),
                Err(e) => break e,
            }
        };
        match e {
            Error::ExtentChecksum { offset, index } => {
                assert_eq!((offset, index), (p.range.start, p.first_extent))
            }
            e => panic!("{e}"),
        }
    }
}
