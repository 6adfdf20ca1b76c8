//! The shared core of both readers: extent-header validation (spec §11.2),
//! per-cluster checks (spec §11.3) and completeness tracking (spec §11.4).
//!
//! Both [`crate::StreamReader`] and [`crate::IndexedReader`] feed every extent
//! header through `ExtentLayout::parse` and every cluster through
//! `Tracker::check` (both crate-internal), so the two readers accept and reject exactly the same
//! archives and record the same [`crate::Warning`]s for shapes Proxmox
//! restores but no correct writer produces (spec §12 c, d).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, Name, Result};
use crate::header::ArchiveHeader;
use crate::raw::*;
use crate::warning::{Warning, WarningKind};

/// One used blockinfo slot, with where its data sits inside the extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotEntry {
    /// Slot index 0..59.
    pub slot: usize,
    /// The decoded blockinfo.
    pub info: BlockInfo,
    /// Offset of the cluster's first stored block, counted from the end of the extent header.
    pub data_offset: u32,
}

/// A validated extent header: its used slots and the data length.
#[derive(Debug, Clone)]
pub(crate) struct ExtentLayout {
    /// Number of 4 KiB blocks after the header.
    pub block_count: u16,
    entries: [SlotEntry; BLOCKINFO_SLOTS],
    len: usize,
}

impl Default for ExtentLayout {
    fn default() -> Self {
        let e = SlotEntry {
            slot: 0,
            info: BlockInfo::default(),
            data_offset: 0,
        };
        ExtentLayout {
            block_count: 0,
            entries: [e; BLOCKINFO_SLOTS],
            len: 0,
        }
    }
}

impl ExtentLayout {
    /// Validates a 512-byte extent header at archive byte `offset` (extent number
    /// `index`) in Proxmox's order: checksum, uuid, magic, block accounting
    /// (spec §11.2). Cluster-level checks are [`Tracker::check`]'s.
    pub fn parse(
        &mut self,
        buf: &[u8; EXTENT_HEADER_SIZE],
        uuid: &[u8; 16],
        offset: u64,
        index: u64,
    ) -> Result<()> {
        let raw = RawExtentHeader::parse(buf);
        if extent_md5(buf) != raw.md5 {
            return Err(Error::ExtentChecksum { offset, index });
        }
        if &raw.uuid != uuid {
            return Err(Error::ExtentUuid { offset, index });
        }
        if raw.magic != EXTENT_MAGIC || raw.reserved != 0 {
            return Err(Error::ExtentMagic { offset, index });
        }
        self.block_count = raw.block_count;
        self.len = 0;
        let mut blocks = 0u32;
        for (slot, info) in raw.blockinfo.iter().enumerate() {
            // dev_id 0 marks an empty slot (spec §7.2).
            if info.dev_id == 0 {
                continue;
            }
            let data_offset = blocks * BLOCK_SIZE as u32;
            blocks += info.stored_blocks();
            if blocks > u32::from(raw.block_count) {
                return Err(Error::TooManyBlocks {
                    offset,
                    index,
                    block_count: raw.block_count,
                });
            }
            self.entries[self.len] = SlotEntry {
                slot,
                info: *info,
                data_offset,
            };
            self.len += 1;
        }
        if blocks < u32::from(raw.block_count) {
            return Err(Error::MissingBlocks {
                offset,
                index,
                stored: blocks,
                block_count: raw.block_count,
            });
        }
        Ok(())
    }

    /// Length of the data following the header.
    pub fn data_len(&self) -> usize {
        self.block_count as usize * BLOCK_SIZE
    }

    /// The used slots in slot order.
    pub fn entries(&self) -> &[SlotEntry] {
        &self.entries[..self.len]
    }
}

/// Absolute offset of blockinfo `slot` of the extent at `extent` (spec §12 f).
pub(crate) fn slot_offset(extent: u64, slot: usize) -> u64 {
    extent.saturating_add((ext::BLOCKINFO + 8 * slot) as u64)
}

/// Clusters per coverage chunk: 4096 bits = 512 bytes, covering 256 MiB of disk.
const CHUNK_CLUSTERS: u64 = 4096;

/// A sparse set of cluster numbers whose memory follows what was inserted, not
/// the device size: a header declaring 256 TiB costs nothing until clusters
/// arrive (spec §12, issue "bounded memory").
#[derive(Debug, Default, Clone)]
pub(crate) struct Coverage {
    chunks: BTreeMap<u32, Box<[u64; (CHUNK_CLUSTERS / 64) as usize]>>,
    count: u64,
}

impl Coverage {
    /// Inserts `cluster`; false if it was already there.
    pub fn insert(&mut self, cluster: u32) -> bool {
        let c = u64::from(cluster);
        let chunk = self
            .chunks
            .entry((c / CHUNK_CLUSTERS) as u32)
            .or_insert_with(|| Box::new([0; 64]));
        let bit = c % CHUNK_CLUSTERS;
        let word = &mut chunk[(bit / 64) as usize];
        let m = 1u64 << (bit % 64);
        if *word & m != 0 {
            return false;
        }
        *word |= m;
        self.count += 1;
        true
    }

    /// Whether `cluster` is present.
    pub fn contains(&self, cluster: u32) -> bool {
        let c = u64::from(cluster);
        self.chunks
            .get(&((c / CHUNK_CLUSTERS) as u32))
            .is_some_and(|ch| ch[((c % CHUNK_CLUSTERS) / 64) as usize] & (1 << (c % 64)) != 0)
    }

    /// Number of clusters present.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Up to `max` ranges of clusters in `0..total` that are absent, in order,
    /// and whether more exist beyond them.
    pub fn missing_ranges(&self, total: u64, max: usize) -> (Vec<Range<u64>>, bool) {
        let mut out: Vec<Range<u64>> = Vec::new();
        let push = |r: Range<u64>, out: &mut Vec<Range<u64>>| -> bool {
            if let Some(last) = out.last_mut().filter(|l| l.end == r.start) {
                last.end = r.end;
            } else if out.len() == max {
                return false;
            } else {
                out.push(r);
            }
            true
        };
        let mut pos = 0u64;
        for (&ci, chunk) in &self.chunks {
            let base = u64::from(ci) * CHUNK_CLUSTERS;
            if base >= total {
                break;
            }
            if pos < base && !push(pos..base, &mut out) {
                return (out, true);
            }
            let end = (base + CHUNK_CLUSTERS).min(total);
            let mut c = base;
            while c < end {
                let off = c - base;
                let w = chunk[(off / 64) as usize];
                if w == u64::MAX && off.is_multiple_of(64) {
                    c += 64;
                    continue;
                }
                if w & (1 << (off % 64)) == 0 && !push(c..c + 1, &mut out) {
                    return (out, true);
                }
                c += 1;
            }
            pos = end;
        }
        if pos < total && !push(pos..total, &mut out) {
            return (out, true);
        }
        (out, false)
    }
}

/// Completeness of one device after the whole archive was read (spec §11.4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceCompleteness {
    /// dev_id.
    pub dev_id: u8,
    /// Device name.
    pub name: Vec<u8>,
    /// Clusters the device has, `ceil(size / 65536)`.
    pub total: u64,
    /// Clusters seen.
    pub seen: u64,
    /// Clusters never seen (`total - seen`).
    pub missing: u64,
    /// The first missing ranges (at most [`MAX_REPORTED_RANGES`]).
    pub ranges: Vec<Range<u64>>,
    /// More missing ranges exist beyond `ranges`.
    pub more: bool,
}

/// How many missing ranges a report lists per device.
pub const MAX_REPORTED_RANGES: usize = 16;

/// Completeness of every device (spec §11.4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completeness {
    /// One entry per device, in dev_id order.
    pub devices: Vec<DeviceCompleteness>,
    /// Archive byte offset where the stream ended.
    pub end: u64,
}

impl Completeness {
    /// True when every cluster of every device was seen.
    pub fn is_complete(&self) -> bool {
        self.devices.iter().all(|d| d.missing == 0)
    }

    /// `Err(MissingClusters)` for the first incomplete device among those `wanted`.
    pub fn check(&self, wanted: impl Fn(u8) -> bool) -> Result<()> {
        match self
            .devices
            .iter()
            .find(|d| d.missing > 0 && wanted(d.dev_id))
        {
            None => Ok(()),
            Some(d) => Err(Error::MissingClusters {
                dev_id: d.dev_id,
                name: Name(d.name.clone()),
                missing: d.missing,
                total: d.total,
                ranges: d.ranges.clone(),
                more: d.more,
                end: self.end,
            }),
        }
    }
}

#[derive(Debug)]
struct DevState {
    name: Vec<u8>,
    size: u64,
    clusters: u64,
    /// End of Proxmox's cluster bitmap (spec §11.3): mask-0 clusters in
    /// `clusters..slack_end` are tolerated with a warning (spec §12 c).
    slack_end: u64,
    vmstate: bool,
    next_vmstate: u64,
    seen: Coverage,
    /// Tolerated clusters past the end, kept apart so that completeness
    /// counts only real clusters; at most 63 per device.
    past_end: Coverage,
    /// Clusters handed out cut short (salvage of a truncated extent): not
    /// `seen` (they stay missing), but a second copy is still a duplicate.
    partial: Coverage,
    stored_blocks: u64,
}

/// The end of Proxmox's duplicate/completeness bitmap for a device of `size`
/// bytes: `64 · ceil(floor(size / 512) / 8192)` clusters (spec §11.3). At
/// most 2^48 for any u64 size, so it cannot overflow.
pub fn bitmap_end(size: u64) -> u64 {
    (size / 512).div_ceil(8192) * 64
}

/// Per-device state while reading: which clusters were seen, plus the checks
/// of spec §11.3.
#[derive(Debug)]
pub(crate) struct Tracker {
    devs: Vec<Option<DevState>>,
    warnings: Vec<Warning>,
}

impl Tracker {
    /// A tracker for the devices of `header`.
    pub fn new(header: &ArchiveHeader) -> Self {
        let mut devs: Vec<Option<DevState>> = (0..DEV_SLOTS).map(|_| None).collect();
        for d in &header.devices {
            devs[d.id as usize] = Some(DevState {
                name: d.name.clone(),
                size: d.size,
                clusters: d.clusters(),
                slack_end: bitmap_end(d.size),
                vmstate: d.is_vmstate(),
                next_vmstate: 0,
                seen: Coverage::default(),
                past_end: Coverage::default(),
                partial: Coverage::default(),
                stored_blocks: 0,
            });
        }
        Tracker {
            devs,
            warnings: Vec::new(),
        }
    }

    /// Checks and records one cluster of the extent at `offset`/`index` (spec §11.3).
    pub fn check(&mut self, e: &SlotEntry, offset: u64, index: u64) -> Result<()> {
        self.check_cluster(e, offset, index, true)
    }

    /// Like [`Tracker::check`], but for a cluster whose data is cut short
    /// (salvage of a truncated extent): checked, never recorded as seen, so
    /// completeness reports it missing.
    pub fn check_partial(&mut self, e: &SlotEntry, offset: u64, index: u64) -> Result<()> {
        self.check_cluster(e, offset, index, false)
    }

    /// What was tolerated so far (spec §12 c, d), in stream order.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    fn check_cluster(
        &mut self,
        e: &SlotEntry,
        offset: u64,
        index: u64,
        complete: bool,
    ) -> Result<()> {
        let bi = e.info;
        let Some(d) = self.devs[bi.dev_id as usize].as_mut() else {
            return Err(Error::WrongDevId {
                dev_id: bi.dev_id,
                offset,
                index,
                slot: e.slot,
            });
        };
        let cluster = u64::from(bi.cluster);
        let mut past_end_blocks = 0;
        let beyond = || Error::BeyondEnd {
            dev_id: bi.dev_id,
            name: Name(d.name.clone()),
            cluster: bi.cluster,
            size: d.size,
            offset,
            index,
            slot: e.slot,
        };
        let duplicate = || Error::DuplicateCluster {
            dev_id: bi.dev_id,
            name: Name(d.name.clone()),
            cluster: bi.cluster,
            offset,
            index,
            slot: e.slot,
        };
        if d.vmstate {
            if cluster != d.next_vmstate {
                return Err(Error::VmstateOrder {
                    dev_id: bi.dev_id,
                    cluster: bi.cluster,
                    expected: d.next_vmstate,
                    offset,
                    index,
                    slot: e.slot,
                });
            }
            d.next_vmstate += 1;
        } else {
            // Past the end: Proxmox accepts a mask-0 cluster inside its bitmap
            // and aborts on anything else (spec §11.3); we accept the same
            // with a warning and refuse the rest cleanly (spec §12 c).
            if cluster >= d.clusters {
                if bi.mask != 0 || cluster >= d.slack_end {
                    return Err(beyond());
                }
                if complete {
                    if !d.past_end.insert(bi.cluster) {
                        return Err(duplicate());
                    }
                    self.warnings.push(Warning {
                        dev_id: bi.dev_id,
                        name: Name(d.name.clone()),
                        kind: WarningKind::ClusterPastEnd {
                            cluster: bi.cluster,
                        },
                        offset: slot_offset(offset, e.slot),
                    });
                }
                return Ok(());
            }
            // A stored block must start before the device end (spec §12 d),
            // except under a full mask, which Proxmox checks only at the
            // cluster's start: tolerated with a warning. `cluster < 2^32`, so
            // none of this overflows.
            if bi.mask != 0 {
                let start = cluster * CLUSTER_SIZE as u64;
                let last_block = 15 - u64::from(bi.mask.leading_zeros());
                if start + last_block * BLOCK_SIZE as u64 >= d.size {
                    if bi.mask != 0xFFFF {
                        return Err(beyond());
                    }
                    let inside = (d.size - start).div_ceil(BLOCK_SIZE as u64);
                    past_end_blocks = BLOCKS_PER_CLUSTER as u32 - inside as u32;
                }
            }
        }
        if !complete {
            // Not recorded (it stays missing), but a copy of a cluster
            // already read is still a duplicate, as for a whole one.
            if d.seen.contains(bi.cluster) || !d.partial.insert(bi.cluster) {
                return Err(duplicate());
            }
            return Ok(());
        }
        if d.partial.contains(bi.cluster) || !d.seen.insert(bi.cluster) {
            return Err(duplicate());
        }
        d.stored_blocks += u64::from(bi.stored_blocks());
        if past_end_blocks > 0 {
            self.warnings.push(Warning {
                dev_id: bi.dev_id,
                name: Name(d.name.clone()),
                kind: WarningKind::BlocksPastEnd {
                    cluster: bi.cluster,
                    blocks: past_end_blocks,
                },
                offset: slot_offset(offset, e.slot),
            });
        }
        Ok(())
    }

    /// Stored (non-zero) 4 KiB blocks seen for `dev_id`.
    pub fn stored_blocks(&self, dev_id: u8) -> u64 {
        self.devs[dev_id as usize]
            .as_ref()
            .map_or(0, |d| d.stored_blocks)
    }

    /// The completeness report, with the stream ending at `end`.
    pub fn completeness(&self, end: u64) -> Completeness {
        let devices = self
            .devs
            .iter()
            .enumerate()
            .filter_map(|(id, d)| {
                let d = d.as_ref()?;
                // vmstate has no end-of-device check (spec §5).
                let total = if d.vmstate { d.seen.len() } else { d.clusters };
                let (ranges, more) = d.seen.missing_ranges(total, MAX_REPORTED_RANGES);
                Some(DeviceCompleteness {
                    dev_id: id as u8,
                    name: d.name.clone(),
                    total,
                    seen: d.seen.len(),
                    missing: total - d.seen.len(),
                    ranges,
                    more,
                })
            })
            .collect();
        Completeness { devices, end }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_missing_ranges() {
        let mut c = Coverage::default();
        for x in [0u32, 1, 2, 5, 4096, 4097, 9000] {
            assert!(c.insert(x));
        }
        assert!(!c.insert(5));
        assert_eq!(c.len(), 7);
        let (r, more) = c.missing_ranges(10000, 16);
        assert_eq!(r, vec![3..5, 6..4096, 4098..9000, 9001..10000]);
        assert!(!more);
        let (r, more) = c.missing_ranges(10000, 2);
        assert_eq!(r, vec![3..5, 6..4096]);
        assert!(more);
        let (r, _) = Coverage::default().missing_ranges(1 << 32, 4);
        assert_eq!(r, vec![0..1 << 32]);
    }

    #[test]
    fn coverage_memory_follows_content() {
        let mut c = Coverage::default();
        c.insert(u32::MAX);
        assert_eq!(c.chunks.len(), 1);
        assert!(c.contains(u32::MAX) && !c.contains(0));
    }
}
