//! Shared helpers of the vma-format fuzz targets (see `fuzz/README.md`).
//!
//! Owns what more than one target needs: [`fix_checksums`] (so mutated
//! archives get past the MD5 checks and reach the deeper validation),
//! [`StreamImage`] (an archive drained through the streaming reader, kept as
//! compact stored clusters so any byte range can be reconstructed), and the
//! invariant checks on [`Completeness`].

use std::collections::HashMap;

use vma_format::raw::{
    ext, extent_md5, hdr, header_md5, BLOCK_SIZE, CLUSTER_SIZE, EXTENT_HEADER_SIZE,
    HEADER_FIXED_SIZE, MAGIC, MAX_READER_HEADER_SIZE,
};
use vma_format::{ArchiveHeader, Completeness, StreamReader};

/// A scratch directory for targets that write files, under `$TMPDIR`
/// (`run-ci.sh` points that at `/dev/shm` when it can and removes it at the
/// end: libFuzzer exits without running destructors, so these are never
/// cleaned up by the targets themselves).
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("scratch directory")
}

/// Largest read length the targets ask for (1 MiB).
pub const MAX_READ_LEN: usize = 1 << 20;

/// A copy of `data` with the header MD5 and every extent-header MD5 recomputed,
/// or `None` if nothing changed (or `data` is not even a plausible header).
///
/// Without this, a single mutated byte almost always fails the checksum and the
/// fuzzer never reaches the header, extent and cluster validation behind it.
/// Every target runs on the input as given *and* on this copy.
pub fn fix_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_FIXED_SIZE || data[..4] != MAGIC {
        return None;
    }
    let size = u32::from_be_bytes(
        data[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .ok()?,
    ) as usize;
    if size <= HEADER_FIXED_SIZE || size > MAX_READER_HEADER_SIZE || size > data.len() {
        return None;
    }
    let mut out = data.to_vec();
    let md5 = header_md5(&out[..size]);
    out[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    let mut off = size;
    while off + EXTENT_HEADER_SIZE <= out.len() {
        let head: &mut [u8; EXTENT_HEADER_SIZE] =
            (&mut out[off..off + EXTENT_HEADER_SIZE]).try_into().ok()?;
        let md5 = extent_md5(head);
        head[ext::MD5..ext::MD5 + 16].copy_from_slice(&md5);
        let blocks =
            u16::from_be_bytes([head[ext::BLOCK_COUNT], head[ext::BLOCK_COUNT + 1]]) as usize;
        off += EXTENT_HEADER_SIZE + blocks * BLOCK_SIZE;
    }
    (out != data).then_some(out)
}

/// The input, then its checksum-fixed copy if that differs.
pub fn variants(data: &[u8]) -> impl Iterator<Item = std::borrow::Cow<'_, [u8]>> {
    std::iter::once(std::borrow::Cow::Borrowed(data))
        .chain(fix_checksums(data).map(std::borrow::Cow::Owned))
}

/// An archive drained through [`StreamReader`], with every stored cluster kept.
pub struct StreamImage {
    /// The header.
    pub header: ArchiveHeader,
    /// (dev_id, cluster) → (mask, stored blocks) for clusters with mask ≠ 0.
    pub clusters: HashMap<(u8, u32), (u16, Vec<u8>)>,
    /// Clusters per extent, in order.
    pub extent_clusters: Vec<usize>,
    /// Final completeness.
    pub completeness: Completeness,
}

/// Drains `data` through the streaming reader, checking the per-cluster
/// invariants of its output on the way. `Err` is whatever the reader reported,
/// at open or at any `next_extent`.
pub fn stream_image(data: &[u8]) -> vma_format::Result<StreamImage> {
    let mut r = StreamReader::new(data)?;
    let header = r.header().clone();
    let mut clusters = HashMap::new();
    let mut extent_clusters = Vec::new();
    let mut last_offset = r.offset();
    let mut past_end = false;
    while let Some(x) = r.next_extent()? {
        assert_eq!(x.offset, last_offset, "extent offsets are contiguous");
        let mut n = 0;
        let mut stored = 0usize;
        for c in x.clusters() {
            n += 1;
            let dev = header
                .device(c.dev_id)
                .expect("cluster of a declared device");
            assert_eq!(c.data.len(), c.mask.count_ones() as usize * BLOCK_SIZE);
            assert_eq!(
                c.device_offset(),
                u64::from(c.cluster) * CLUSTER_SIZE as u64
            );
            if !dev.is_vmstate() && c.device_offset() >= dev.size {
                // Tolerated as Proxmox's reader does (spec §12 c): a mask-0
                // cluster in its bitmap slack, reported as a warning. Data
                // past the end is never accepted.
                assert_eq!(c.mask, 0, "accepted cluster with data past the device end");
                past_end = true;
            }
            let mut run_bytes = 0;
            let mut prev_end = 0;
            for (first, bytes) in c.runs() {
                assert!(first >= prev_end && first < 16);
                assert_eq!(bytes.len() % BLOCK_SIZE, 0);
                prev_end = first + bytes.len() / BLOCK_SIZE;
                assert!(prev_end <= 16);
                run_bytes += bytes.len();
            }
            assert_eq!(run_bytes, c.data.len());
            stored += c.data.len();
            if c.mask != 0 {
                let old = clusters.insert((c.dev_id, c.cluster), (c.mask, c.data.to_vec()));
                assert!(old.is_none(), "duplicate cluster accepted");
            }
        }
        assert_eq!(stored, usize::from(x.block_count()) * BLOCK_SIZE);
        extent_clusters.push(n);
        last_offset = r.offset();
    }
    assert_eq!(
        r.offset(),
        data.len() as u64,
        "a clean EOF is at the end of the input"
    );
    // Draining again after EOF stays at EOF.
    assert!(r.next_extent()?.is_none());
    assert!(
        !past_end || !r.warnings().is_empty(),
        "a cluster past the device end was accepted without a warning"
    );
    let completeness = r.completeness();
    check_completeness(&header, &completeness, Some(data.len() as u64));
    for d in &header.devices {
        let blocks: u64 = clusters
            .iter()
            .filter(|((id, _), _)| *id == d.id)
            .map(|(_, (m, _))| u64::from(m.count_ones()))
            .sum();
        assert_eq!(r.stored_blocks(d.id), blocks);
    }
    Ok(StreamImage {
        header,
        clusters,
        extent_clusters,
        completeness,
    })
}

/// Invariants of a completeness report.
/// `end`, when given, is where the stream must have ended.
pub fn check_completeness(header: &ArchiveHeader, c: &Completeness, end: Option<u64>) {
    if let Some(end) = end {
        assert_eq!(c.end, end);
    }
    assert_eq!(c.devices.len(), header.devices.len());
    for (d, h) in c.devices.iter().zip(&header.devices) {
        assert_eq!(d.dev_id, h.id);
        assert_eq!(d.name, h.name);
        assert_eq!(d.seen + d.missing, d.total);
        let mut listed = 0u64;
        let mut prev = 0u64;
        for r in &d.ranges {
            assert!(
                r.start < r.end && r.end <= d.total && r.start >= prev,
                "bad missing range {r:?}"
            );
            prev = r.end;
            listed += r.end - r.start;
        }
        assert!(d.ranges.len() <= vma_format::extent::MAX_REPORTED_RANGES);
        if !d.more {
            assert_eq!(listed, d.missing, "missing ranges add up");
        }
    }
    assert_eq!(c.is_complete(), c.check(|_| true).is_ok());
}

impl StreamImage {
    /// Whether the stream stored the 4 KiB block holding device byte `offset`.
    pub fn stored(&self, dev_id: u8, offset: u64) -> bool {
        let blk = offset / BLOCK_SIZE as u64;
        let Ok(cluster) = u32::try_from(blk / 16) else {
            return false;
        };
        self.clusters
            .get(&(dev_id, cluster))
            .is_some_and(|(m, _)| m & (1 << (blk % 16)) != 0)
    }

    /// The device bytes `[offset, offset + len)` as the stream stored them
    /// (zeros where nothing was stored), clipped to the device size.
    pub fn expected(&self, dev_id: u8, offset: u64, len: usize) -> Option<Vec<u8>> {
        let size = self.header.device(dev_id)?.size;
        if offset >= size {
            return Some(Vec::new());
        }
        let end = offset + (len as u64).min(size - offset);
        let mut out = vec![0u8; (end - offset) as usize];
        let bs = BLOCK_SIZE as u64;
        let mut blk = offset / bs;
        while blk * bs < end {
            let cluster = (blk / 16) as u32;
            let bit = (blk % 16) as u16;
            if let Some((mask, data)) = self.clusters.get(&(dev_id, cluster)) {
                if mask & (1 << bit) != 0 {
                    let idx = (mask & ((1u16 << bit) - 1)).count_ones() as usize;
                    let src = &data[idx * BLOCK_SIZE..(idx + 1) * BLOCK_SIZE];
                    let (s, t) = ((blk * bs).max(offset), ((blk + 1) * bs).min(end));
                    out[(s - offset) as usize..(t - offset) as usize]
                        .copy_from_slice(&src[(s - blk * bs) as usize..(t - blk * bs) as usize]);
                }
            }
            blk += 1;
        }
        Some(out)
    }
}
