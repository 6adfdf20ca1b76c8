//! The backup target: one write-only NBD export per disk, and the bounded
//! queue between those exports and the archive writer.
//!
//! QEMU's backup job writes each 64 KiB cluster of the source into the export
//! (out of order, up to 1 MiB per request). [`BackupExport`] cuts requests
//! into clusters, queues them and acknowledges the request as soon as its
//! clusters are queued; [`Queue::run_consumer`] hands them to
//! `vma_format::Writer`. The queue holds at most `--buffer` bytes: when it is
//! full, a write waits, so its NBD reply is delayed and QEMU (and through
//! copy-before-write the guest) slows down instead of failing.
//!
//! A cluster is accepted once (one bit per cluster and device): QEMU retries
//! a request after an error reply, and a cluster it sends again after it was
//! accepted is acknowledged and dropped, so the archive never holds a
//! cluster twice. The first accepted copy wins: the job reads the source
//! before the guest may change it, so every copy of a cluster carries the
//! same point-in-time data.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use vma_nbd::{proto, Export};

/// Bytes per VMA cluster, QEMU's backup granularity with an NBD target.
pub const CLUSTER: u64 = vma_format::raw::CLUSTER_SIZE as u64;

/// A queued piece of a disk.
pub enum Item {
    /// One cluster's data (65536 bytes, or the rest of the disk for the last one).
    Data {
        dev: u8,
        cluster: u32,
        data: Vec<u8>,
    },
    /// `count` clusters of zeros from `first` (WRITE_ZEROES).
    Zero { dev: u8, first: u32, count: u32 },
}

impl Item {
    fn cost(&self) -> usize {
        match self {
            Item::Data { data, .. } => data.len(),
            // A range, whatever its length: a few bytes of memory.
            Item::Zero { .. } => 0,
        }
    }
}

#[derive(Default)]
struct QState {
    items: VecDeque<Item>,
    bytes: usize,
    closed: bool,
    failed: Option<String>,
    peak: usize,
    /// Writes that had to wait for room (backpressure events).
    stalls: u64,
}

/// Cluster data between the NBD exports and the archive writer, at most
/// `capacity` bytes of it.
pub struct Queue {
    state: Mutex<QState>,
    not_full: Condvar,
    not_empty: Condvar,
    capacity: usize,
}

/// What [`Queue::stats`] reports.
#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    pub bytes: usize,
    pub peak: usize,
    pub stalls: u64,
}

impl Queue {
    /// A queue of at most `capacity` bytes (a single cluster always fits).
    pub fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::default(),
            not_full: Condvar::new(),
            not_empty: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while the queue is full. Fails only once the
    /// backup failed or ended.
    pub fn push(&self, item: Item) -> io::Result<()> {
        let cost = item.cost();
        let mut st = self.lock();
        let mut stalled = false;
        loop {
            if let Some(why) = &st.failed {
                return Err(io::Error::other(format!("the backup failed: {why}")));
            }
            if st.closed {
                return Err(io::Error::from_raw_os_error(proto::ESHUTDOWN as i32));
            }
            if st.bytes == 0 || st.bytes + cost <= self.capacity {
                break;
            }
            if !stalled {
                stalled = true;
                st.stalls += 1;
            }
            st = self.not_full.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.bytes += cost;
        st.peak = st.peak.max(st.bytes);
        st.items.push_back(item);
        self.not_empty.notify_one();
        Ok(())
    }

    /// The next item; `None` once the queue is closed and empty, or failed.
    fn pop(&self) -> Option<Item> {
        let mut st = self.lock();
        loop {
            if st.failed.is_some() {
                return None;
            }
            if let Some(item) = st.items.pop_front() {
                st.bytes -= item.cost();
                self.not_full.notify_all();
                return Some(item);
            }
            if st.closed {
                return None;
            }
            st = self.not_empty.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more items: the consumer ends after the last one.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// The backup failed: waiting and later writes fail at once, the
    /// consumer stops, queued data is dropped.
    pub fn fail(&self, why: &str) {
        let mut st = self.lock();
        if st.failed.is_none() {
            st.failed = Some(why.to_string());
        }
        st.items.clear();
        st.bytes = 0;
        drop(st);
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Why the backup failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Current and peak queued bytes, and how often a write waited.
    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            bytes: st.bytes,
            peak: st.peak,
            stalls: st.stalls,
        }
    }

    /// Hands every queued cluster to `put` (the archive writer) until the
    /// queue is closed and empty. A failure of `put` fails the queue (so
    /// the exports stop accepting writes) and is returned as `Some`; `None`:
    /// the queue was failed from outside.
    pub fn run_consumer<E: std::fmt::Display>(
        &self,
        mut put: impl FnMut(Item) -> Result<(), E>,
    ) -> Result<(), Option<E>> {
        while let Some(item) = self.pop() {
            if let Err(e) = put(item) {
                self.fail(&e.to_string());
                return Err(Some(e));
            }
        }
        match self.failure() {
            Some(_) => Err(None),
            None => Ok(()),
        }
    }
}

/// One disk's write-only NBD export.
pub struct BackupExport {
    name: String,
    dev: u8,
    size: u64,
    queue: Arc<Queue>,
    /// One bit per cluster: accepted already.
    done: Vec<AtomicU64>,
    accepted: AtomicU64,
    rewrites: AtomicU64,
    /// Longest data write seen, in bytes (QEMU's request size).
    largest_write: AtomicU64,
}

fn einval(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl BackupExport {
    /// The export of device `dev` (`name` in the archive), `size` bytes.
    pub fn new(name: &str, dev: u8, size: u64, queue: Arc<Queue>) -> BackupExport {
        let clusters = size.div_ceil(CLUSTER);
        BackupExport {
            name: name.to_string(),
            dev,
            size,
            queue,
            done: (0..clusters.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            accepted: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
            largest_write: AtomicU64::new(0),
        }
    }

    /// Clusters accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Clusters sent again after they were accepted (and dropped).
    pub fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Relaxed)
    }

    /// The longest data write QEMU sent, in bytes: one cluster when the
    /// jobs run with `--max-workers` (x-perf max-chunk), up to 1 MiB without.
    pub fn largest_write(&self) -> u64 {
        self.largest_write.load(Ordering::Relaxed)
    }

    /// The clusters `[offset, offset+len)` covers; the range must start on a
    /// cluster and end on one or at the end of the disk.
    fn cluster_range(&self, what: &str, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        let end = offset + len;
        if !offset.is_multiple_of(CLUSTER) || (!end.is_multiple_of(CLUSTER) && end != self.size) {
            return Err(einval(format!(
                "{}: {what} of {len} bytes at offset {offset} is not aligned to 64 KiB clusters \
                 (a backup target takes whole clusters)",
                self.name
            )));
        }
        Ok((offset / CLUSTER, end.div_ceil(CLUSTER)))
    }

    /// Marks `cluster` accepted; false if it was already.
    fn claim(&self, cluster: u64) -> bool {
        let bit = 1u64 << (cluster % 64);
        let old = self.done[(cluster / 64) as usize].fetch_or(bit, Ordering::SeqCst);
        if old & bit != 0 {
            self.rewrites.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Undoes [`BackupExport::claim`] for clusters that could not be queued.
    fn unclaim(&self, first: u64, end: u64) {
        for c in first..end {
            self.done[(c / 64) as usize].fetch_and(!(1u64 << (c % 64)), Ordering::SeqCst);
        }
    }

    fn push(&self, item: Item, first: u64, end: u64) -> io::Result<()> {
        match self.queue.push(item) {
            Ok(()) => {
                self.accepted.fetch_add(end - first, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.unclaim(first, end);
                Err(e)
            }
        }
    }
}

impl Export for BackupExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    fn description(&self) -> Option<String> {
        Some(format!("vma backup target for {}", self.name))
    }

    fn read_at(&self, offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: read at offset {offset}: a backup target is write-only",
                self.name
            ),
        ))
    }

    /// Acknowledged once queued (FUA included: durability comes from the
    /// archive's fsync at the end, and success only from the job's events).
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let (first, end) = self.cluster_range("write", offset, data.len() as u64)?;
        self.largest_write
            .fetch_max(data.len() as u64, Ordering::Relaxed);
        for c in first..end {
            if !self.claim(c) {
                continue;
            }
            let s = ((c - first) * CLUSTER) as usize;
            let e = (s + CLUSTER as usize).min(data.len());
            let item = Item::Data {
                dev: self.dev,
                cluster: c as u32,
                data: data[s..e].to_vec(),
            };
            self.push(item, c, c + 1)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _punch: bool, _fua: bool) -> io::Result<()> {
        let (first, end) = self.cluster_range("write zeroes", offset, len)?;
        // Runs of clusters not accepted yet become one queue item each.
        let mut run: Option<u64> = None;
        for c in first..=end {
            let fresh = c < end && self.claim(c);
            match (run, fresh) {
                (None, true) => run = Some(c),
                (Some(start), false) => {
                    run = None;
                    let item = Item::Zero {
                        dev: self.dev,
                        first: start as u32,
                        count: (c - start) as u32,
                    };
                    // On failure, later clusters of the request are not claimed.
                    self.push(item, start, c)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn fast_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn export(size: u64, cap: usize) -> (Arc<Queue>, BackupExport) {
        let q = Arc::new(Queue::new(cap));
        let e = BackupExport::new("drive-scsi0", 1, size, q.clone());
        (q, e)
    }

    fn drain(q: &Queue) -> Vec<(u32, Option<usize>)> {
        q.close();
        consume(q)
    }

    fn consume(q: &Queue) -> Vec<(u32, Option<usize>)> {
        let mut got = Vec::new();
        q.run_consumer(|item| {
            match item {
                Item::Data { cluster, data, .. } => got.push((cluster, Some(data.len()))),
                Item::Zero { first, count, .. } => {
                    got.extend((first..first + count).map(|c| (c, None)))
                }
            }
            Ok::<(), String>(())
        })
        .unwrap();
        got
    }

    #[test]
    fn splits_writes_into_clusters_and_handles_the_partial_last_one() {
        // 2 clusters and 4 KiB.
        let size = 2 * CLUSTER + 4096;
        let (q, e) = export(size, 1 << 20);
        e.write_at(CLUSTER, &vec![7u8; (CLUSTER + 4096) as usize], false)
            .unwrap();
        e.write_zeroes(0, CLUSTER, false, false).unwrap();
        assert_eq!(e.accepted(), 3);
        let got = drain(&q);
        assert_eq!(got, vec![(1, Some(65536)), (2, Some(4096)), (0, None)]);
    }

    #[test]
    fn rejects_misaligned_writes_with_einval() {
        let (_q, e) = export(4 * CLUSTER, 1 << 20);
        for (off, len) in [(4096, CLUSTER), (0, 4096), (CLUSTER, CLUSTER + 512)] {
            let err = e
                .write_at(off, &vec![1u8; len as usize], false)
                .unwrap_err();
            assert_eq!(vma_nbd::errno_of(&err), proto::EINVAL, "{off} {len}");
            assert!(err.to_string().contains("not aligned"), "{err}");
        }
        let err = e.write_zeroes(100, CLUSTER, false, false).unwrap_err();
        assert_eq!(vma_nbd::errno_of(&err), proto::EINVAL);
        assert_eq!(e.accepted(), 0);
    }

    #[test]
    fn a_retried_cluster_is_acknowledged_and_dropped() {
        let (q, e) = export(4 * CLUSTER, 1 << 20);
        e.write_at(0, &vec![1u8; 2 * CLUSTER as usize], false)
            .unwrap();
        // A retry overlapping the first request, and a zero retry.
        e.write_at(CLUSTER, &vec![2u8; 2 * CLUSTER as usize], false)
            .unwrap();
        e.write_zeroes(0, 4 * CLUSTER, false, false).unwrap();
        assert_eq!(e.rewrites(), 4);
        let got = drain(&q);
        assert_eq!(
            got,
            vec![
                (0, Some(65536)),
                (1, Some(65536)),
                (2, Some(65536)),
                (3, None)
            ]
        );
    }

    #[test]
    fn a_full_queue_delays_writes_instead_of_failing_them() {
        let (q, e) = export(64 * CLUSTER, 2 * CLUSTER as usize);
        let e = Arc::new(e);
        let writer = {
            let e = e.clone();
            std::thread::spawn(move || e.write_at(0, &vec![3u8; 8 * CLUSTER as usize], false))
        };
        std::thread::sleep(Duration::from_millis(200));
        // Two clusters fit; the request waits for room.
        assert!(!writer.is_finished());
        assert_eq!(q.stats().bytes, 2 * CLUSTER as usize);
        let consumer = {
            let q = q.clone();
            std::thread::spawn(move || consume(&q))
        };
        writer.join().unwrap().unwrap();
        q.close();
        let got = consumer.join().unwrap();
        assert_eq!(got.len(), 8);
        let st = q.stats();
        assert!(st.peak <= 2 * CLUSTER as usize, "{st:?}");
        assert!(st.stalls >= 1);
    }

    #[test]
    fn a_failed_queue_fails_waiting_writes_and_forgets_their_clusters() {
        let (q, e) = export(64 * CLUSTER, CLUSTER as usize);
        let e = Arc::new(e);
        let writer = {
            let e = e.clone();
            std::thread::spawn(move || e.write_at(0, &vec![3u8; 4 * CLUSTER as usize], false))
        };
        std::thread::sleep(Duration::from_millis(100));
        q.fail("disk full");
        let err = writer.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(e.accepted(), 1);
    }
}
