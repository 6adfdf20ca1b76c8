//! The copy pipeline of `vma create`: a reader thread reads every device in
//! order, skipping holes its [`Source`] reports (announced as zero clusters
//! without reading); the calling thread feeds the clusters to the archive
//! writer (which detects zero blocks itself) and reports `-v` progress.
//! Bounded: [`READ_BUFFERS`] buffers of [`READ_CHUNK`] bytes circulate.

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::{anyhow, bail, Context, Result};
use vma_format::{Writer, WriterBuilder};

use super::compress::ParallelCompressor;
use super::output::{Sink, Target};
use super::source::Source;
use super::CreateArgs;

/// Bytes per VMA cluster (spec §7).
const CLUSTER: u64 = vma_format::raw::CLUSTER_SIZE as u64;
/// Bytes read from a source per read call (a multiple of [`CLUSTER`]).
const READ_CHUNK: usize = 4 << 20;
// One bit per cluster of a read buffer in `Msg::Data::zero`.
const _: () = assert!(READ_CHUNK as u64 / CLUSTER <= 64);
/// Read buffers in flight between the reader thread and the writer: bounds memory.
const READ_BUFFERS: usize = 3;

/// What the reader thread hands to the writer.
enum Msg {
    /// `len` bytes of device data starting at cluster `first`; bit i of
    /// `zero` set: cluster `first + i` lies in a hole and was not read.
    Data {
        dev: u8,
        first: u64,
        buf: Vec<u8>,
        len: usize,
        zero: u64,
    },
    /// `count` clusters known to be zero, starting at `first`.
    Zero {
        dev: u8,
        first: u64,
        count: u64,
    },
    Err(anyhow::Error),
}

/// A device being archived.
pub(super) struct Input {
    pub(super) dev_id: u8,
    pub(super) name: String,
    pub(super) path: PathBuf,
    /// Device size recorded in the archive: the source size rounded up to 512.
    pub(super) size: u64,
    pub(super) source: Box<dyn Source>,
}

/// Reads every device in order, sequentially, in [`READ_CHUNK`] pieces.
fn reader_thread(inputs: Vec<Input>, tx: SyncSender<Msg>, pool: Receiver<Vec<u8>>) {
    for mut input in inputs {
        if let Err(e) = read_device(&mut input, &tx, &pool) {
            let _ = tx.send(Msg::Err(e));
            return;
        }
    }
}

/// Sends one device's clusters; returns Ok early if the writer went away.
///
/// Whole clusters inside a hole are announced as [`Msg::Zero`] without being
/// read. Everything else goes out in buffers of up to [`READ_CHUNK`] bytes,
/// however the data is fragmented: holes smaller than the rest of the buffer
/// are zero-filled in place (the writer's zero detection drops them again).
/// One message per buffer, not per data region, keeps the thread hand-offs
/// (futex wake-ups) rare on images whose data is scattered in 4 KiB pieces.
fn read_device(input: &mut Input, tx: &SyncSender<Msg>, pool: &Receiver<Vec<u8>>) -> Result<()> {
    let (dev, dev_size) = (input.dev_id, input.size);
    let src_size = input.source.size();
    let path = input.path.clone();
    let ctx = |pos: u64| format!("reading {} at offset {pos}", path.display());
    // (data?, end) from `p`; beyond the source the device reads as zero.
    let region = |source: &mut Box<dyn Source>, p: u64| -> Result<(bool, u64)> {
        if p >= src_size {
            return Ok((false, dev_size));
        }
        let (data, e) = source.region(p).with_context(|| ctx(p))?;
        let e = e.max(p + 1);
        Ok(match (data, e >= src_size) {
            (true, _) => (true, e.min(src_size)),
            (false, true) => (false, dev_size),
            (false, false) => (false, e),
        })
    };
    let mut pos = 0u64; // always on a cluster boundary
    while pos < dev_size {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let (data, e) = region(&mut input.source, pos)?;
        if !data {
            let first = pos / CLUSTER;
            let last = if e >= dev_size {
                dev_size.div_ceil(CLUSTER)
            } else {
                e / CLUSTER
            };
            if last > first {
                if tx
                    .send(Msg::Zero {
                        dev,
                        first,
                        count: last - first,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                pos = last * CLUSTER;
                continue;
            }
        }
        let Ok(mut buf) = pool.recv() else {
            return Ok(());
        };
        let mut end = (pos + READ_CHUNK as u64).min(dev_size);
        let (mut p, mut reg) = (pos, (data, e));
        let mut zero = 0u64;
        while p < end {
            let (data, e) = reg;
            let stop = if data {
                let stop = e.min(end);
                input
                    .source
                    .read_at(&mut buf[(p - pos) as usize..(stop - pos) as usize], p)
                    .with_context(|| ctx(p))?;
                stop
            } else {
                let next = p.next_multiple_of(CLUSTER);
                // A hole running past this buffer ends it at a cluster
                // boundary; the next round announces the hole without reading.
                if e > end && p > pos {
                    end = next.min(end);
                }
                let stop = e.min(end);
                // Whole clusters of the hole are flagged, not zero-filled.
                let full_end = if stop == dev_size {
                    stop.next_multiple_of(CLUSTER)
                } else {
                    stop / CLUSTER * CLUSTER
                };
                if full_end > next {
                    for c in (next - pos) / CLUSTER..(full_end - pos) / CLUSTER {
                        zero |= 1 << c;
                    }
                    buf[(p - pos) as usize..(next - pos) as usize].fill(0);
                    let tail = full_end.min(stop);
                    buf[(tail - pos) as usize..(stop - pos) as usize].fill(0);
                } else {
                    buf[(p - pos) as usize..(stop - pos) as usize].fill(0);
                }
                stop
            };
            p = stop;
            if p < end {
                reg = region(&mut input.source, p)?;
            }
        }
        let len = (end - pos) as usize;
        if tx
            .send(Msg::Data {
                dev,
                first: pos / CLUSTER,
                buf,
                len,
                zero,
            })
            .is_err()
        {
            return Ok(());
        }
        pos = end;
    }
    Ok(())
}

/// `-v` output: Proxmox's progress lines, or a bar on a terminal.
struct Progress {
    verbose: bool,
    total: u64,
    transferred: u64,
    zeros: u64,
    last_percent: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(verbose: bool, total: u64) -> Self {
        let bar = (verbose && total > 0 && io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            verbose,
            total,
            transferred: 0,
            zeros: 0,
            last_percent: None,
            bar,
        }
    }

    fn add(&mut self, bytes: u64, zeros: u64) {
        self.transferred += bytes;
        self.zeros += zeros;
        if !self.verbose || self.total == 0 {
            return;
        }
        if let Some(b) = &self.bar {
            b.set_position(self.transferred);
            return;
        }
        let percent = self.transferred * 100 / self.total;
        if self.last_percent != Some(percent) {
            self.last_percent = Some(percent);
            eprintln!(
                "progress {percent}% {}/{} {}",
                self.transferred, self.total, self.zeros
            );
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Zero bytes of `cluster` counted as the writer counts them (a stored
/// partial last block counts as 4096 stored bytes); only computed for `-v`.
fn zero_bytes(cluster: &[u8]) -> u64 {
    let stored = cluster
        .chunks(4096)
        .filter(|b| !vma_format::is_zero_block(b))
        .count() as u64
        * 4096;
    (cluster.len() as u64).saturating_sub(stored)
}

/// Feeds the writer from the reader thread's messages.
fn copy_loop(
    writer: &Writer<Sink>,
    rx: Receiver<Msg>,
    pool: SyncSender<Vec<u8>>,
    inputs: &[(String, u64)],
    progress: &mut Progress,
) -> Result<()> {
    for msg in rx {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        match msg {
            Msg::Data {
                dev,
                first,
                buf,
                len,
                zero,
            } => {
                let name = &inputs[usize::from(dev) - 1].0;
                for (i, c) in buf[..len].chunks(CLUSTER as usize).enumerate() {
                    let cluster = first + i as u64;
                    let hole = zero & (1 << i) != 0;
                    if hole {
                        writer.write_zero_cluster(dev, cluster as u32)
                    } else {
                        writer.write_cluster(dev, cluster as u32, c)
                    }
                    .with_context(|| format!("writing cluster {cluster} of device {name}"))?;
                    let z = match (hole, progress.verbose) {
                        (true, _) => c.len() as u64,
                        (false, true) => zero_bytes(c),
                        (false, false) => 0,
                    };
                    progress.add(c.len() as u64, z);
                }
                // The reader may already be gone; then the buffer is simply dropped.
                let _ = pool.try_send(buf);
            }
            Msg::Zero { dev, first, count } => {
                let (name, size) = &inputs[usize::from(dev) - 1];
                for cluster in first..first + count {
                    let len = (size - cluster * CLUSTER).min(CLUSTER);
                    writer
                        .write_zero_cluster(dev, cluster as u32)
                        .with_context(|| format!("writing cluster {cluster} of device {name}"))?;
                    progress.add(len, len);
                }
            }
            Msg::Err(e) => return Err(e),
        }
    }
    if crate::interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A finished archive, not yet committed.
pub(super) struct Written {
    pub(super) file: File,
    pub(super) summary: vma_format::WriteSummary,
    /// Device names and sizes, in dev_id order.
    pub(super) names: Vec<(String, u64)>,
}

/// Writes the whole archive into `target`; returns the output file, the
/// writer's statistics and the device names and sizes.
pub(super) fn write_archive(
    target: &mut Target,
    args: &CreateArgs,
    builder: WriterBuilder,
    inputs: Vec<Input>,
) -> Result<Written> {
    let file = target.file()?;
    let sink = match args.compress {
        None => Sink::Plain(file),
        Some(codec) => {
            let threads = args.threads.map_or_else(
                // More than 8 threads rarely pays and costs 16 MiB each.
                || std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                |n| n.get(),
            );
            Sink::Compressed(
                ParallelCompressor::new(file, codec, args.level, threads)
                    .context("can't start the compressor")?,
            )
        }
    };
    // Extents are written on the writer's own thread: the output's system
    // calls overlap the reader's and the zero detection.
    let writer = builder
        .build_background(sink)
        .context("can't start the archive")?;

    let names: Vec<(String, u64)> = inputs.iter().map(|i| (i.name.clone(), i.size)).collect();
    let total = names.iter().map(|(_, s)| s).sum();
    let mut progress = Progress::new(args.verbose, total);
    let (tx, rx) = sync_channel::<Msg>(READ_BUFFERS);
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(READ_BUFFERS);
    for _ in 0..READ_BUFFERS {
        pool_tx
            .send(vec![0u8; READ_CHUNK])
            .map_err(|_| anyhow!("internal: buffer pool closed"))?;
    }
    let reader = std::thread::Builder::new()
        .name("vma-create-reader".into())
        .spawn(move || reader_thread(inputs, tx, pool_rx))
        .context("can't start the reader thread")?;
    let copied = copy_loop(&writer, rx, pool_tx, &names, &mut progress);
    // copy_loop dropped its channel ends, so the reader stops if it still runs.
    let joined = reader.join();
    progress.done();
    copied?;
    joined.map_err(|_| anyhow!("the reader thread panicked"))?;

    let (sink, summary) = writer.finish().context("can't finish the archive")?;
    let out_file = sink
        .finish()
        .with_context(|| format!("can't write {}", target.describe(&args.out)))?;
    Ok(Written {
        file: out_file,
        summary,
        names,
    })
}
