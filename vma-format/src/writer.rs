//! The out-of-order writer (spec §4, §7, §8).
//!
//! Owns turning clusters handed over in any order, from any number of
//! threads, into a byte stream Proxmox's reader accepts: zero-block
//! detection, at most 58 clusters per extent, extent and header MD5s, the
//! header written at the first flush (that is when Proxmox takes ctime), and
//! a completeness check at [`Writer::finish`]. Output is any [`Write`]; it
//! never seeks, so a pipe or stdout works. [`WriterBuilder::build_background`]
//! moves the output's writes to a thread of the writer's own.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use uuid::Uuid;

use crate::error::{Error, Name, Result};
use crate::extent::Coverage;
use crate::header::build_header;
use crate::names::check_name;
use crate::raw::*;

/// Collects configs and devices; [`WriterBuilder::build`] starts the archive.
#[derive(Debug, Default, Clone)]
pub struct WriterBuilder {
    configs: Vec<(Vec<u8>, Vec<u8>)>,
    devices: Vec<(Vec<u8>, u64)>,
    uuid: Option<Uuid>,
    ctime: Option<i64>,
}

impl WriterBuilder {
    /// An empty archive description.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a config blob. The name is reduced to its basename, as vzdump does
    /// (spec §5.1). At most 256 configs of at most 65535 bytes.
    pub fn add_config(&mut self, name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> Result<()> {
        let name = name.as_ref();
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name).to_vec();
        let data = data.into();
        if self.configs.len() >= CONFIG_SLOTS {
            return Err(Error::TooManyConfigs);
        }
        check_name(&base).map_err(|why| Error::InvalidName {
            what: "config",
            name: Name(base.clone()),
            why,
        })?;
        if data.len() > MAX_BLOB_LEN {
            return Err(Error::BlobTooLarge {
                what: "config",
                name: Name(base),
                len: data.len(),
            });
        }
        if self.configs.iter().any(|(n, _)| *n == base) {
            return Err(Error::InvalidName {
                what: "config",
                name: Name(base),
                why: "name used twice",
            });
        }
        self.configs.push((base, data));
        Ok(())
    }

    /// Adds a device and returns its dev_id (1, 2, … in call order). At most 254.
    ///
    /// `size` is recorded as given. Proxmox's reader rejects data in a final
    /// partial 512-byte sector (spec §12 d), so callers that want Proxmox
    /// compatibility for such sizes should round up to 512, as `vma create` does.
    pub fn add_device(&mut self, name: impl AsRef<[u8]>, size: u64) -> Result<u8> {
        let name = name.as_ref().to_vec();
        if self.devices.len() >= MAX_DEV_ID as usize {
            return Err(Error::TooManyDevices);
        }
        check_name(&name).map_err(|why| Error::InvalidName {
            what: "device",
            name: Name(name.clone()),
            why,
        })?;
        if self.devices.iter().any(|(n, _)| *n == name) {
            return Err(Error::InvalidName {
                what: "device",
                name: Name(name),
                why: "name used twice",
            });
        }
        if size == 0 || size > MAX_DEVICE_SIZE {
            return Err(Error::InvalidDeviceSize {
                name: Name(name),
                size,
            });
        }
        self.devices.push((name, size));
        Ok(self.devices.len() as u8)
    }

    /// Uses this UUID instead of a random one (reproducible archives).
    pub fn uuid(&mut self, uuid: Uuid) -> &mut Self {
        self.uuid = Some(uuid);
        self
    }

    /// Uses this ctime instead of the time of the first flush.
    pub fn ctime(&mut self, ctime: i64) -> &mut Self {
        self.ctime = Some(ctime);
        self
    }

    /// Starts writing to `out`. Nothing is written until the first extent is full
    /// (or [`Writer::finish`]), as with Proxmox's writer.
    pub fn build<W: Write>(self, out: W) -> Result<Writer<W>> {
        self.start(Output::Direct(out))
    }

    /// Like [`WriterBuilder::build`], but full extents are written to `out` by
    /// a thread of the writer's own, so that the output's system calls
    /// overlap the callers' zero detection and copying. At most
    /// [`BACKGROUND_EXTENTS`] extents wait for that thread (bounded memory). A
    /// write error is reported, with its offset, by the next call after it.
    ///
    /// Call [`Writer::finish`] (or [`Writer::abandon`]) to learn how writing
    /// ended. A writer merely dropped still joins its thread before the drop
    /// returns (the thread writes what was already handed over, at most
    /// [`BACKGROUND_EXTENTS`] extents, then drops `out`): no thread outlives
    /// the writer. A write error nobody collected is then logged with
    /// [`log::error!`].
    pub fn build_background<W: Write + Send + 'static>(self, out: W) -> Result<Writer<W>> {
        let (jobs, jobs_rx) = mpsc::sync_channel::<Vec<u8>>(BACKGROUND_EXTENTS);
        let (free_tx, free) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("vma-writer-out".into())
            .spawn(move || {
                let mut out = out;
                let mut offset = 0u64;
                for buf in jobs_rx {
                    if let Err(source) = out.write_all(&buf) {
                        // Dropping the receiver makes the next hand-over fail.
                        return (out, Some(Error::Write { offset, source }));
                    }
                    offset += buf.len() as u64;
                    let _ = free_tx.send(buf);
                }
                (out, None)
            })
            .map_err(|source| Error::Write { offset: 0, source })?;
        self.start(Output::Background {
            free,
            worker: Worker {
                jobs: Some(jobs),
                thread: Some(thread),
            },
        })
    }

    fn start<W: Write>(self, out: Output<W>) -> Result<Writer<W>> {
        let uuid = self.uuid.unwrap_or_else(Uuid::new_v4);
        // Lay the header out once now so that a too-large header fails early.
        build_header(uuid, 0, &self.configs, &self.devices)?;
        let devices: Vec<DevInfo> = self
            .devices
            .iter()
            .map(|(n, s)| DevInfo {
                name: n.clone(),
                size: *s,
                clusters: s.div_ceil(CLUSTER_SIZE as u64),
            })
            .collect();
        let state = State {
            out,
            header: Some((self.configs, self.devices, self.ctime)),
            uuid,
            buf: new_extent_buffer(),
            slots: [BlockInfo::default(); BLOCKINFO_SLOTS],
            used: 0,
            written: 0,
            coverage: devices.iter().map(|_| Coverage::default()).collect(),
            stats: devices.iter().map(|_| DeviceStats::default()).collect(),
            poisoned: false,
        };
        Ok(Writer {
            devices,
            uuid,
            state: Mutex::new(state),
        })
    }
}

/// Extents handed to the background output thread and not yet written.
pub const BACKGROUND_EXTENTS: usize = 2;

/// An empty extent buffer: 512 bytes reserved for the header, room for a full extent.
fn new_extent_buffer() -> Vec<u8> {
    let mut buf =
        Vec::with_capacity(EXTENT_HEADER_SIZE + WRITER_CLUSTERS_PER_EXTENT * CLUSTER_SIZE);
    buf.resize(EXTENT_HEADER_SIZE, 0);
    buf
}

/// Where finished extents go.
enum Output<W> {
    Direct(W),
    /// A thread writes them; emptied buffers come back on `free`.
    Background {
        free: Receiver<Vec<u8>>,
        worker: Worker<W>,
    },
}

/// The background output thread and its queue; joined on drop at the latest.
struct Worker<W> {
    jobs: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<(W, Option<Error>)>>,
}

impl<W> Worker<W> {
    /// Closes the queue and collects the thread's result (once): the output
    /// and the write error that stopped it, if any. `Err` carries a panic of
    /// the caller's `W::write_all`.
    #[allow(clippy::type_complexity)]
    fn join(&mut self) -> Option<std::thread::Result<(W, Option<Error>)>> {
        let handle = self.thread.take()?;
        // Dropping the only sender ends the thread's loop.
        self.jobs = None;
        Some(handle.join())
    }
}

impl<W> Drop for Worker<W> {
    fn drop(&mut self) {
        // Never leave a detached thread writing after the writer is gone.
        match self.join() {
            Some(Ok((_, Some(e)))) => {
                log::error!("vma writer dropped without finish; its output failed: {e}")
            }
            Some(Err(_)) => log::error!("vma writer dropped; its output thread panicked"),
            Some(Ok((_, None))) | None => {}
        }
    }
}

impl<W: Write> Output<W> {
    /// Writes `buf`, which starts at archive offset `offset`, or hands it to
    /// the output thread (leaving an emptied buffer in its place).
    fn put(&mut self, buf: &mut Vec<u8>, offset: u64) -> Result<()> {
        match self {
            Output::Direct(out) => out
                .write_all(buf)
                .map_err(|source| Error::Write { offset, source }),
            Output::Background { worker, free } => {
                let spare = free.try_recv().unwrap_or_else(|_| new_extent_buffer());
                let full = std::mem::replace(buf, spare);
                if worker.jobs.as_ref().is_some_and(|j| j.send(full).is_ok()) {
                    return Ok(());
                }
                // The thread stopped at a write error: report that error.
                match self.join() {
                    Some(Err(e)) => Err(e),
                    _ => Err(Error::Write {
                        offset,
                        source: std::io::Error::other("the archive output thread stopped"),
                    }),
                }
            }
        }
    }

    /// Waits until everything handed over is written; returns the output.
    fn close(mut self) -> Result<W> {
        match self.join() {
            None => match self {
                Output::Direct(out) => Ok(out),
                Output::Background { .. } => Err(Error::Poisoned),
            },
            Some(res) => res,
        }
    }

    /// Closes the queue and collects the thread's result (once).
    fn join(&mut self) -> Option<Result<W>> {
        let Output::Background { worker, .. } = self else {
            return None;
        };
        Some(match worker.join()? {
            Ok((_, Some(e))) => Err(e),
            Ok((out, None)) => Ok(out),
            // `write_all` of the caller's `W` panicked: pass the panic on.
            Err(p) => std::panic::resume_unwind(p),
        })
    }
}

#[derive(Debug)]
struct DevInfo {
    name: Vec<u8>,
    size: u64,
    clusters: u64,
}

/// Per-device byte counts of a finished archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceStats {
    /// Bytes of 4 KiB blocks stored.
    pub stored_bytes: u64,
    /// Bytes of device data found zero and not stored.
    pub zero_bytes: u64,
}

/// What [`Writer::finish`] reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteSummary {
    /// Archive UUID.
    pub uuid: Uuid,
    /// Total archive bytes written.
    pub bytes: u64,
    /// Per device, in dev_id order.
    pub devices: Vec<DeviceStats>,
}

type PendingHeader = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, u64)>, Option<i64>);

struct State<W> {
    out: Output<W>,
    /// Configs, devices and forced ctime until the header is written.
    header: Option<PendingHeader>,
    uuid: Uuid,
    /// 512 bytes reserved for the extent header, then the data blocks.
    buf: Vec<u8>,
    slots: [BlockInfo; BLOCKINFO_SLOTS],
    used: usize,
    written: u64,
    coverage: Vec<Coverage>,
    stats: Vec<DeviceStats>,
    poisoned: bool,
}

/// Writes an archive; `&self` methods so several threads can feed one writer.
pub struct Writer<W> {
    devices: Vec<DevInfo>,
    uuid: Uuid,
    state: Mutex<State<W>>,
}

/// Whether a 4 KiB block is all zero, in a form the compiler vectorizes.
#[inline]
pub fn is_zero_block(b: &[u8]) -> bool {
    let (chunks, rest) = b.as_chunks::<16>();
    chunks
        .iter()
        .fold(0u128, |acc, c| acc | u128::from_ne_bytes(*c))
        == 0
        && rest.iter().all(|&x| x == 0)
}

impl<W: Write> Writer<W> {
    /// The archive UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Number of clusters of `dev_id`, or `None` for an unknown id.
    pub fn clusters(&self, dev_id: u8) -> Option<u64> {
        self.devices
            .get(usize::from(dev_id).wrapping_sub(1))
            .map(|d| d.clusters)
    }

    /// Hands over cluster `cluster` of device `dev_id`: exactly 65536 bytes, or
    /// the remaining bytes for the device's last cluster. Any order, any thread;
    /// each cluster exactly once.
    pub fn write_cluster(&self, dev_id: u8, cluster: u32, data: &[u8]) -> Result<()> {
        self.put_cluster(dev_id, cluster, Some(data))
    }

    /// Hands over cluster `cluster` of device `dev_id` as all zero (a hole in
    /// the source): the same as [`Writer::write_cluster`] with zeros, without
    /// scanning 64 KiB of them.
    pub fn write_zero_cluster(&self, dev_id: u8, cluster: u32) -> Result<()> {
        self.put_cluster(dev_id, cluster, None)
    }

    fn put_cluster(&self, dev_id: u8, cluster: u32, data: Option<&[u8]>) -> Result<()> {
        let d = self
            .devices
            .get(usize::from(dev_id).wrapping_sub(1))
            .ok_or(Error::UnknownDevice { dev_id })?;
        if u64::from(cluster) >= d.clusters {
            return Err(Error::ClusterOutOfRange {
                name: Name(d.name.clone()),
                cluster: cluster.into(),
                clusters: d.clusters,
            });
        }
        let start = u64::from(cluster) * CLUSTER_SIZE as u64;
        let expected = (d.size - start).min(CLUSTER_SIZE as u64) as usize;
        let mut mask = 0u16;
        if let Some(data) = data {
            if data.len() != expected {
                return Err(Error::ClusterLength {
                    name: Name(d.name.clone()),
                    cluster,
                    len: data.len(),
                    expected,
                });
            }
            // Zero detection outside the lock: it is the costly part.
            for (i, b) in data.chunks(BLOCK_SIZE).enumerate() {
                if !is_zero_block(b) {
                    mask |= 1 << i;
                }
            }
        }
        let data = data.unwrap_or(&[]);
        let mut st = self.state.lock().map_err(|_| Error::Poisoned)?;
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let idx = usize::from(dev_id) - 1;
        // Readers require vmstate in strict sequence (spec §5.3, §11.3).
        if d.name == b"vmstate" && u64::from(cluster) != st.coverage[idx].len() {
            return Err(Error::VmstateWriteOrder {
                cluster,
                expected: st.coverage[idx].len(),
            });
        }
        if !st.coverage[idx].insert(cluster) {
            return Err(Error::DuplicateWrite {
                name: Name(d.name.clone()),
                cluster,
            });
        }
        let stored = mask.count_ones() as u64 * BLOCK_SIZE as u64;
        st.stats[idx].stored_bytes += stored;
        st.stats[idx].zero_bytes += (expected as u64).saturating_sub(stored);
        let mut m = mask;
        while m != 0 {
            let first = m.trailing_zeros() as usize;
            let n = (m >> first).trailing_ones() as usize;
            m &= !((((1u32 << n) - 1) << first) as u16);
            let s = first * BLOCK_SIZE;
            let e = ((first + n) * BLOCK_SIZE).min(data.len());
            st.buf.extend_from_slice(&data[s..e]);
            // A block straddling the device end is stored whole, zero-padded (spec §7.5).
            let pad = (BLOCK_SIZE - (e - s) % BLOCK_SIZE) % BLOCK_SIZE;
            let new_len = st.buf.len() + pad;
            st.buf.resize(new_len, 0);
        }
        let used = st.used;
        st.slots[used] = BlockInfo {
            mask,
            reserved: 0,
            dev_id,
            cluster,
        };
        st.used += 1;
        if st.used == WRITER_CLUSTERS_PER_EXTENT {
            st.flush()?;
        }
        Ok(())
    }

    /// Writes the last extent and returns the output. Fails, writing nothing
    /// more, if any cluster of any device was never written.
    pub fn finish(self) -> Result<(W, WriteSummary)> {
        let mut st = self.state.into_inner().map_err(|_| Error::Poisoned)?;
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        for (d, cov) in self.devices.iter().zip(&st.coverage) {
            if cov.len() != d.clusters {
                let (ranges, _) = cov.missing_ranges(d.clusters, 4);
                return Err(Error::Incomplete {
                    name: Name(d.name.clone()),
                    missing: d.clusters - cov.len(),
                    total: d.clusters,
                    ranges,
                });
            }
        }
        // A diskless archive still gets one empty extent, as Proxmox writes (spec §7.6).
        if st.used > 0 || st.header.is_some() {
            st.flush()?;
        }
        let written = st.written;
        let mut out = st.out.close()?;
        out.flush().map_err(|source| Error::Write {
            offset: written,
            source,
        })?;
        let summary = WriteSummary {
            uuid: self.uuid,
            bytes: st.written,
            devices: st.stats.clone(),
        };
        Ok((out, summary))
    }
}

impl<W: Write> Writer<W> {
    /// Gives the archive up without writing the rest (it stays incomplete):
    /// waits for the output thread of [`WriterBuilder::build_background`] to
    /// write what was handed over and returns how writing ended, so that an
    /// error is not lost as it would be (only logged) on a plain drop.
    pub fn abandon(self) -> Result<W> {
        let st = self.state.into_inner().map_err(|_| Error::Poisoned)?;
        st.out.close()
    }
}

impl<W: Write> State<W> {
    /// Writes (or hands over) `buf`, counting its bytes; a failure poisons the writer.
    fn emit(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let len = buf.len() as u64;
        if let Err(e) = self.out.put(buf, self.written) {
            self.poisoned = true;
            return Err(e);
        }
        self.written += len;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some((configs, devices, ctime)) = self.header.take() {
            // Proxmox takes ctime when the header is written (spec §3).
            let ctime = ctime.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
            let mut h = build_header(self.uuid, ctime, &configs, &devices)?;
            self.emit(&mut h)?;
        }
        let blocks = (self.buf.len() - EXTENT_HEADER_SIZE) / BLOCK_SIZE;
        let mut eh = RawExtentHeader {
            block_count: blocks as u16,
            uuid: *self.uuid.as_bytes(),
            ..RawExtentHeader::default()
        };
        eh.blockinfo[..self.used].copy_from_slice(&self.slots[..self.used]);
        let mut bytes = eh.serialize();
        let md5 = extent_md5(&bytes);
        bytes[ext::MD5..ext::MD5 + 16].copy_from_slice(&md5);
        self.buf[..EXTENT_HEADER_SIZE].copy_from_slice(&bytes);
        let mut buf = std::mem::take(&mut self.buf);
        let res = self.emit(&mut buf);
        // In the background case `buf` is now another, emptied buffer.
        buf.clear();
        buf.resize(EXTENT_HEADER_SIZE, 0);
        self.buf = buf;
        self.used = 0;
        res
    }
}
