//! `vma backup`: a consistent backup of a running QEMU into a VMA archive,
//! with 1 read + 2 writes per guest write and no temporary storage.
//!
//! Owns the command line and the orchestration: find the disks over QMP,
//! serve one write-only NBD export per disk on a private Unix socket
//! ([`export`]), attach an `nbd` node per disk and start one `transaction` of
//! `blockdev-backup sync=full` jobs (one point in time for all disks), feed
//! the arriving clusters into `vma_format::Writer`, and finalize only when
//! every job is `pending`. On any failure (job error, QEMU gone, archive
//! write error, SIGINT/SIGTERM) it cancels the jobs, removes the nodes it
//! added, deletes the partial archive and fails; the VM keeps running.
//! The output side (temporary file, fsync, rename, `-`, `exec:`,
//! compression) is `vma create`'s.

mod export;
mod qmp;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vma_format::WriterBuilder;
use vma_nbd::{ConnConfig, Export, Exports, Listener, Server, ServerConfig};

use crate::create::args::read_configs;
use crate::create::compress::{Codec, ParallelCompressor};
use crate::create::output::{Sink, Target};
use export::{BackupExport, Item, Queue, CLUSTER};
use qmp::{Agent, Qmp};

const MIB: u64 = 1 << 20;

/// Options of `vma backup`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
QEMU's backup job (blockdev-backup, copy-before-write) writes each disk into an NBD export that
vma serves on a private Unix socket; clusters go straight into the archive, in any order. All disks
share one point in time (one QMP transaction). Nothing is finalized until every job succeeded; on
failure or SIGINT/SIGTERM the jobs are cancelled, the nodes vma added are removed and the partial
archive is deleted. The VM keeps running either way.

Disks: without -d, every disk attached to a guest device (query-block, CD-ROMs and other removable
media excepted) is backed up as drive-<id>, as vzdump names them. -d NAME=NODE picks a block node
by node name, or by the id of its guest device, and names it NAME in the archive.

OUT works as in `vma create`: a new file (written to a hidden temporary file, synced and renamed),
`-` for standard output, an existing FIFO, or `exec:COMMAND`.

Examples:
  vma backup --qmp /var/run/qemu-server/100.qmp -c 100.conf vzdump-qemu-100.vma
  vma backup --qmp qmp.sock -d drive-scsi0=disk0 --bwlimit 51200 --compress zstd backup.vma.zst")]
pub struct BackupArgs {
    /// The VM's QMP socket (a Unix socket path).
    #[arg(long, value_name = "SOCKET")]
    pub qmp: PathBuf,

    /// Archive to create (must not exist); `-` = standard output; `exec:CMD` = pipe into CMD.
    #[arg(value_name = "OUT", allow_hyphen_values = true)]
    pub out: OsString,

    /// Add a config file (stored under its basename).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,

    /// Back up block node (or guest device id) NODE as device NAME (repeatable).
    #[arg(short = 'd', long = "device", value_name = "NAME=NODE")]
    pub devices: Vec<String>,

    /// Limit the backup jobs to this many KiB/s in total (split evenly between the disks).
    #[arg(long, value_name = "KIB_PER_S")]
    pub bwlimit: Option<u64>,

    /// Compress the archive: zstd, gzip or lzo (as `vma create --compress`).
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,

    /// Compression level (as `vma create --level`).
    #[arg(long, value_name = "N", requires = "compress")]
    pub level: Option<i32>,

    /// Memory for clusters waiting to be written, in MiB: absorbs bursts; when
    /// full, QEMU's writes (and so the guest's) are delayed, never failed.
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub buffer: u64,

    /// Copy requests each backup job keeps in flight, one 64 KiB cluster each
    /// (QEMU's x-perf max-workers and max-chunk). Few keep the guest's own
    /// writes fast during the backup: a copy-before-write does not queue behind
    /// megabytes of background copies. 0 = QEMU's defaults (64 requests of up to
    /// 1 MiB): a faster backup of an idle VM, slower guest writes during it.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub max_workers: u64,

    /// The guest agent's socket: freeze the guest's filesystems around the
    /// start of the backup (guest-fsfreeze-freeze / thaw).
    #[arg(long, value_name = "SOCKET")]
    pub qga: Option<PathBuf>,
}

/// A disk to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Disk {
    /// Device name in the archive.
    name: String,
    /// QEMU block node name.
    node: String,
    size: u64,
}

/// The id a device was given (`-device ...,id=scsi0`) from query-block's
/// `qdev`, which is that id or a QOM path `/machine/peripheral/ID/...`.
fn qdev_id(qdev: &str) -> Option<&str> {
    if let Some(rest) = qdev.strip_prefix("/machine/peripheral/") {
        return rest.split('/').next().filter(|s| !s.is_empty());
    }
    (!qdev.is_empty() && !qdev.starts_with('/')).then_some(qdev)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Picks the disks from query-named-block-nodes and query-block answers.
fn select_disks(specs: &[String], nodes: &Value, blocks: &Value) -> Result<Vec<Disk>> {
    let empty = Vec::new();
    let nodes = nodes.as_array().unwrap_or(&empty);
    let blocks = blocks.as_array().unwrap_or(&empty);
    let size_of = |v: &Value| v.pointer("/image/virtual-size").and_then(Value::as_u64);
    let mut disks = Vec::new();
    if specs.is_empty() {
        for b in blocks {
            let Some(ins) = b.get("inserted") else {
                continue;
            };
            if b.get("removable").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let device = str_of(b, "device");
            let name = if let Some(id) = qdev_id(str_of(b, "qdev")) {
                format!("drive-{id}")
            } else if device.starts_with("drive-") {
                device.to_string()
            } else if !device.is_empty() {
                format!("drive-{device}")
            } else {
                continue;
            };
            let node = str_of(ins, "node-name").to_string();
            let size =
                size_of(ins).ok_or_else(|| anyhow!("query-block: {name} has no virtual-size"))?;
            disks.push(Disk { name, node, size });
        }
        return Ok(disks);
    }
    for spec in specs {
        let (name, node) = spec
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .ok_or_else(|| anyhow!("-d {spec}: expected NAME=NODE (e.g. drive-scsi0=disk0)"))?;
        let by_node = nodes.iter().find(|n| str_of(n, "node-name") == node);
        let (node_name, size) = if let Some(n) = by_node {
            (node.to_string(), size_of(n))
        } else if let Some(ins) = blocks
            .iter()
            .find(|b| {
                let qdev = str_of(b, "qdev");
                str_of(b, "device") == node || qdev == node || qdev_id(qdev) == Some(node)
            })
            .and_then(|b| b.get("inserted"))
        {
            (str_of(ins, "node-name").to_string(), size_of(ins))
        } else {
            bail!("-d {spec}: QEMU has no block node or device called '{node}'");
        };
        let size = size.ok_or_else(|| anyhow!("-d {spec}: QEMU reports no size for '{node}'"))?;
        if disks.iter().any(|d: &Disk| d.name == name) {
            bail!("-d {spec}: device name {name} given twice");
        }
        disks.push(Disk {
            name: name.to_string(),
            node: node_name,
            size,
        });
    }
    Ok(disks)
}

/// A directory only we can enter, for the NBD socket; removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("vma-backup-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("can't create {}", dir.display()))?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What we added to QEMU, to be removed again.
#[derive(Default)]
struct Added {
    nodes: Vec<String>,
    jobs: Vec<String>,
}

impl Added {
    /// Cancels and dismisses our jobs and deletes our nodes, if QEMU is
    /// still there; problems are warnings (the backup failed already).
    fn undo(&mut self, qmp: &mut Qmp) {
        if qmp.is_closed() {
            return;
        }
        for job in &self.jobs {
            let _ = qmp.execute("job-cancel", json!({"id": job}));
        }
        // Cancelled jobs go through "aborting" to "concluded".
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.jobs.is_empty() {
            let listed = match qmp.execute("query-jobs", json!({})) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("vma: warning: query-jobs: {e:#}");
                    break;
                }
            };
            let ours: Vec<(String, String)> = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(|j| self.jobs.iter().any(|id| id == str_of(j, "id")))
                .map(|j| (str_of(j, "id").to_string(), str_of(j, "status").to_string()))
                .collect();
            if ours.iter().all(|(_, s)| s == "concluded" || s == "null") {
                for (id, _) in &ours {
                    if let Err(e) = qmp.execute("job-dismiss", json!({"id": id})) {
                        eprintln!("vma: warning: {e:#}");
                    }
                }
                self.jobs.clear();
                break;
            }
            if Instant::now() > deadline {
                eprintln!("vma: warning: backup jobs still running after job-cancel: {ours:?}");
                break;
            }
            let _ = qmp.next_event(Duration::from_millis(100));
        }
        for node in std::mem::take(&mut self.nodes) {
            if let Err(e) = qmp.execute("blockdev-del", json!({"node-name": node})) {
                eprintln!("vma: warning: can't remove node {node}: {e:#}");
            }
        }
    }
}

/// Runs `vma backup`.
pub fn run(args: BackupArgs) -> Result<()> {
    let mut builder = WriterBuilder::new();
    read_configs(&mut builder, &args.configs)?;
    let mut qmp = Qmp::connect(&args.qmp)?;
    let nodes = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
    let blocks = qmp.execute("query-block", json!({}))?;
    let disks = select_disks(&args.devices, &nodes, &blocks)?;
    if disks.is_empty() {
        bail!(
            "QEMU has no disk attached to a guest device; name the block nodes with -d NAME=NODE"
        );
    }
    for d in &disks {
        builder
            .add_device(&d.name, d.size)
            .with_context(|| format!("can't add device {} (node {})", d.name, d.node))?;
    }
    let mut target = Target::open(&args.out)?;
    let mut added = Added::default();
    match backup(&mut qmp, &args, builder, &disks, &mut target, &mut added) {
        Ok(file) => target.commit(file),
        Err(e) => {
            added.undo(&mut qmp);
            Err(target.explain(e))
        }
    }
}

/// The archive writer failed; its own error comes from joining its thread.
#[derive(Debug)]
struct ArchiveFailed(String);

impl std::fmt::Display for ArchiveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "can't write the archive: {}", self.0)
    }
}

impl std::error::Error for ArchiveFailed {}

/// Checks that stop the wait for the jobs.
fn check_abort(queue: &Queue) -> Result<()> {
    if crate::interrupt::interrupted() {
        bail!("interrupted by a signal; backup cancelled");
    }
    if let Some(why) = queue.failure() {
        return Err(ArchiveFailed(why).into());
    }
    Ok(())
}

/// The writer thread's result as an error that keeps `vma_format::Error`
/// (so `Target::explain` names OUT).
fn consumer_error(
    joined: std::thread::Result<Result<(), Option<vma_format::Error>>>,
) -> Option<anyhow::Error> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(Some(e))) => Some(anyhow::Error::from(e).context("can't write the archive")),
        Ok(Err(None)) => Some(anyhow!("the backup was aborted")),
        Err(_) => Some(anyhow!("the archive writer thread panicked")),
    }
}

/// Progress lines on stderr.
struct Progress {
    total: u64,
    start: Instant,
    last: Instant,
    last_percent: u64,
}

impl Progress {
    fn report(&mut self, exports: &[Arc<BackupExport>], queue: &Queue, force: bool) {
        let done: u64 = exports
            .iter()
            .map(|e| (e.accepted() * CLUSTER).min(e.size()))
            .sum();
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        if percent == self.last_percent || (!force && self.last.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Instant::now();
        self.last_percent = percent;
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let q = queue.stats();
        eprintln!(
            "backup: {percent}% ({} of {} MiB, {:.1} MiB/s), buffer {} MiB",
            done / MIB,
            self.total / MIB,
            done as f64 / MIB as f64 / secs,
            q.bytes as u64 / MIB
        );
    }
}

fn job_event(ev: &Value) -> (&str, &Value) {
    (str_of(ev, "event"), ev.get("data").unwrap_or(&Value::Null))
}

/// Waits until every job in `jobs` has status `want`; a job that ends any
/// other way is an error with QEMU's reason.
fn wait_jobs(
    qmp: &mut Qmp,
    jobs: &[String],
    want: &str,
    queue: &Queue,
    mut tick: impl FnMut(),
) -> Result<()> {
    let mut status: HashMap<&str, String> = HashMap::new();
    // What QEMU said, best first: a completion error, an I/O error event,
    // a cancellation (the other jobs of a failed group are cancelled).
    let mut completed: Option<String> = None;
    let mut io_error: Option<String> = None;
    let mut cancelled: Option<String> = None;
    let mut first_end: Option<Instant> = None;
    let is_end = |s: Option<&String>| matches!(s.map(String::as_str), Some("concluded" | "null"));
    loop {
        check_abort(queue)?;
        tick();
        let ev = qmp
            .next_event(Duration::from_millis(200))
            .context("lost QEMU's QMP connection (did QEMU exit?)")?;
        if let Some(ev) = ev {
            let (name, data) = job_event(&ev);
            let id = str_of(data, "id");
            let id = if id.is_empty() {
                str_of(data, "device")
            } else {
                id
            };
            let Some(job) = jobs.iter().find(|j| *j == id) else {
                continue;
            };
            match name {
                "JOB_STATUS_CHANGE" => {
                    status.insert(job, str_of(data, "status").to_string());
                }
                "BLOCK_JOB_ERROR" => {
                    io_error.get_or_insert(format!(
                        "backup job {job}: {} error",
                        str_of(data, "operation")
                    ));
                }
                "BLOCK_JOB_COMPLETED" => {
                    // A job cancelled with its failed group says "canceled":
                    // not the reason.
                    if let Some(e) = data
                        .get("error")
                        .and_then(Value::as_str)
                        .filter(|e| !e.contains("cancel"))
                    {
                        completed.get_or_insert(format!("backup job {job} failed: {e}"));
                    }
                }
                "BLOCK_JOB_CANCELLED" => {
                    cancelled.get_or_insert(format!("backup job {job} was cancelled"));
                }
                _ => {}
            }
        }
        if jobs
            .iter()
            .all(|j| status.get(j.as_str()).map(String::as_str) == Some(want))
        {
            return Ok(());
        }
        if want == "concluded" || !jobs.iter().any(|j| is_end(status.get(j.as_str()))) {
            continue;
        }
        // A job ended without success: let the rest of the group end too
        // (briefly), then report the most telling reason.
        let since = *first_end.get_or_insert_with(Instant::now);
        let all_ended = jobs.iter().all(|j| is_end(status.get(j.as_str())));
        if !all_ended && since.elapsed() < Duration::from_secs(10) {
            continue;
        }
        let from_query = jobs
            .iter()
            .filter_map(|j| job_error(qmp, j))
            .find(|e| !e.contains("cancel"));
        let why = completed
            .or(from_query)
            .or(io_error)
            .or(cancelled)
            .unwrap_or_else(|| "a backup job ended before it finished".to_string());
        bail!("{why}");
    }
}

/// The `error` query-jobs reports for `job`.
fn job_error(qmp: &mut Qmp, job: &str) -> Option<String> {
    let jobs = qmp.execute("query-jobs", json!({})).ok()?;
    jobs.as_array()?
        .iter()
        .find(|j| str_of(j, "id") == job)
        .and_then(|j| j.get("error"))
        .and_then(Value::as_str)
        .map(|e| format!("backup job {job} failed: {e}"))
}

/// Does the backup; returns the written archive file for [`Target::commit`].
fn backup(
    qmp: &mut Qmp,
    args: &BackupArgs,
    builder: WriterBuilder,
    disks: &[Disk],
    target: &mut Target,
    added: &mut Added,
) -> Result<File> {
    let file = target.file()?;
    let sink = match args.compress {
        None => Sink::Plain(file),
        Some(codec) => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            Sink::Compressed(
                ParallelCompressor::new(file, codec, args.level, threads)
                    .context("can't start the compressor")?,
            )
        }
    };
    let writer = Arc::new(
        builder
            .build_background(sink)
            .context("can't start the archive")?,
    );
    let queue = Arc::new(Queue::new((args.buffer * MIB) as usize));
    let consumer = {
        let (queue, writer) = (queue.clone(), writer.clone());
        std::thread::Builder::new()
            .name("vma-backup-writer".into())
            .spawn(move || {
                queue.run_consumer(|item| match item {
                    Item::Data { dev, cluster, data } => writer.write_cluster(dev, cluster, &data),
                    Item::Zero { dev, first, count } => {
                        (first..first + count).try_for_each(|c| writer.write_zero_cluster(dev, c))
                    }
                })
            })
            .context("can't start the archive writer thread")?
    };
    let dir = PrivateDir::new()?;
    let socket = dir.0.join("nbd.sock");
    let mut exports = Exports::new();
    let mut ours = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let e = Arc::new(BackupExport::new(
            &d.name,
            (i + 1) as u8,
            d.size,
            queue.clone(),
        ));
        exports.insert(d.name.clone(), e.clone());
        ours.push(e);
    }
    let listener = Listener::unix(&socket).context("can't listen on the NBD socket")?;
    let config = ServerConfig {
        max_connections: 4 * disks.len() + 4,
        conn: ConnConfig {
            // Once the backup failed, every refused write would repeat why.
            log: Some({
                let queue = queue.clone();
                Arc::new(move |m: &str| {
                    if queue.failure().is_none() {
                        eprintln!("vma: nbd: {m}");
                    }
                })
            }),
            ..ConnConfig::default()
        },
    };
    let server = Server::new(exports, config)
        .spawn(listener)
        .context("can't start the NBD server")?;
    let mut consumer = Some(consumer);
    let outcome = (|| -> Result<File> {
        let jobs = run_jobs(qmp, args, disks, &socket, &queue, &ours, added)?;
        // Every job is pending: it copied everything, and all its writes were
        // acknowledged, so queued. Complete the archive before QEMU finalizes
        // anything, so that a late write error (ENOSPC) still cancels.
        queue.close();
        if let Some(c) = consumer.take() {
            if let Some(e) = consumer_error(c.join()) {
                return Err(e);
            }
        }
        let writer = Arc::try_unwrap(writer)
            .map_err(|_| anyhow!("internal: the archive writer is still shared"))?;
        let (sink, summary) = writer.finish().context("can't finish the archive")?;
        let file = sink.finish().context("can't finish writing the archive")?;
        if file.metadata().is_ok_and(|m| m.is_file()) {
            file.sync_all().context("can't sync the archive")?;
        }
        check_abort(&queue)?;
        finalize(qmp, &jobs, &queue, added)?;
        for (d, st) in disks.iter().zip(&summary.devices) {
            eprintln!(
                "backup: {} (node {}): size={} zeros={} stored={}",
                d.name, d.node, d.size, st.zero_bytes, st.stored_bytes
            );
        }
        let q = queue.stats();
        let rewrites: u64 = ours.iter().map(|e| e.rewrites()).sum();
        eprintln!(
            "backup: archive {} bytes; buffer peak {:.1} MiB of {} MiB, writes delayed {} times, \
             {rewrites} clusters sent again and ignored, largest write {} KiB",
            summary.bytes,
            q.peak as f64 / MIB as f64,
            args.buffer,
            q.stalls,
            ours.iter().map(|e| e.largest_write()).max().unwrap_or(0) / 1024
        );
        Ok(file)
    })();
    // A writer failure: report the writer's own error.
    let outcome = match outcome {
        Err(e) if e.is::<ArchiveFailed>() => Err(consumer
            .take()
            .and_then(|c| consumer_error(c.join()))
            .unwrap_or(e)),
        o => o,
    };
    if let Err(e) = &outcome {
        // Writes waiting for room fail now, so that the jobs can be cancelled.
        queue.fail(&crate::error_text(e));
        added.undo(qmp);
    }
    // After blockdev-del: QEMU's FLUSH and DISC came in already.
    let _ = server.stop();
    drop(dir);
    outcome
}

/// The QMP part up to `pending`: nodes, freeze, transaction, waiting with
/// progress. Returns the job ids.
fn run_jobs(
    qmp: &mut Qmp,
    args: &BackupArgs,
    disks: &[Disk],
    socket: &Path,
    queue: &Queue,
    exports: &[Arc<BackupExport>],
    added: &mut Added,
) -> Result<Vec<String>> {
    let tag = format!("vma-backup-{}", std::process::id());
    let mut actions = Vec::new();
    // 0 means no limit, as in vzdump (and QEMU's speed 0).
    let speed = args
        .bwlimit
        .filter(|&k| k > 0)
        .map(|k| (k.saturating_mul(1024) / disks.len() as u64).max(1));
    for (i, d) in disks.iter().enumerate() {
        check_abort(queue)?;
        let node = format!("{tag}-target{i}");
        qmp.execute(
            "blockdev-add",
            json!({"driver": "nbd", "node-name": node,
                   "server": {"type": "unix", "path": socket}, "export": d.name}),
        )
        .with_context(|| format!("can't attach the backup target of {}", d.name))?;
        added.nodes.push(node.clone());
        let job = format!("{tag}-job{i}");
        let mut data = json!({"job-id": job, "device": d.node, "target": node, "sync": "full",
                              "auto-finalize": false, "auto-dismiss": false});
        if let Some(s) = speed {
            data["speed"] = json!(s);
        }
        if args.max_workers > 0 {
            data["x-perf"] = json!({"max-workers": args.max_workers, "max-chunk": CLUSTER});
        }
        actions.push(json!({"type": "blockdev-backup", "data": data}));
    }
    let jobs: Vec<String> = (0..disks.len()).map(|i| format!("{tag}-job{i}")).collect();
    check_abort(queue)?;
    let agent = match &args.qga {
        Some(path) => match Agent::freeze(path) {
            Ok(a) => Some(a),
            Err(e) => {
                // vzdump's behaviour: a backup without the freeze beats none.
                eprintln!("vma: warning: can't freeze the guest's filesystems: {e:#}; continuing");
                None
            }
        },
        None => None,
    };
    let transaction = |qmp: &mut Qmp, actions: &[Value]| {
        qmp.execute(
            "transaction",
            json!({"actions": actions, "properties": {"completion-mode": "grouped"}}),
        )
    };
    let mut started = transaction(qmp, &actions);
    // x-perf is unstable QEMU interface (since 6.0): without it, QEMU's defaults.
    if matches!(&started, Err(e) if format!("{e:#}").contains("x-perf")) {
        eprintln!(
            "vma: warning: this QEMU's backup jobs take no x-perf settings; \
             --max-workers ignored (QEMU's defaults)"
        );
        for a in &mut actions {
            if let Some(d) = a["data"].as_object_mut() {
                d.remove("x-perf");
            }
        }
        started = transaction(qmp, &actions);
    }
    if let Some(a) = agent {
        if let Err(e) = a.thaw() {
            eprintln!("vma: warning: can't thaw the guest's filesystems: {e:#}");
        }
    }
    started.context("can't start the backup jobs")?;
    added.jobs = jobs.clone();
    eprintln!(
        "backup: started {} job(s) for {}",
        jobs.len(),
        disks
            .iter()
            .map(|d| format!("{}={}", d.name, d.node))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut progress = Progress {
        total: disks.iter().map(|d| d.size).sum(),
        start: Instant::now(),
        last: Instant::now(),
        last_percent: u64::MAX,
    };
    wait_jobs(qmp, &jobs, "pending", queue, || {
        progress.report(exports, queue, false)
    })?;
    progress.report(exports, queue, true);
    Ok(jobs)
}

/// Finalizes the pending jobs (one call finalizes the group), dismisses
/// them and removes our nodes.
fn finalize(qmp: &mut Qmp, jobs: &[String], queue: &Queue, added: &mut Added) -> Result<()> {
    qmp.execute("job-finalize", json!({"id": jobs[0]}))?;
    wait_jobs(qmp, jobs, "concluded", queue, || {})?;
    for job in jobs {
        if let Some(e) = job_error(qmp, job) {
            bail!("{e}");
        }
    }
    for job in jobs {
        qmp.execute("job-dismiss", json!({"id": job}))?;
    }
    added.jobs.clear();
    for node in std::mem::take(&mut added.nodes) {
        qmp.execute("blockdev-del", json!({"node-name": node}))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_disks_are_the_guest_devices_named_like_vzdump() {
        let blocks = json!([
            {"device": "drive-scsi0", "qdev": "scsi0", "removable": false,
             "inserted": {"node-name": "#block123", "image": {"virtual-size": 1048576}}},
            {"device": "", "qdev": "/machine/peripheral/virtio1/virtio-backend", "removable": false,
             "inserted": {"node-name": "disk1", "image": {"virtual-size": 65536}}},
            {"device": "ide2", "qdev": "ide2", "removable": true,
             "inserted": {"node-name": "cd", "image": {"virtual-size": 4096}}},
            {"device": "floppy0", "removable": true},
        ]);
        let disks = select_disks(&[], &json!([]), &blocks).unwrap();
        assert_eq!(
            disks,
            vec![
                Disk {
                    name: "drive-scsi0".into(),
                    node: "#block123".into(),
                    size: 1048576
                },
                Disk {
                    name: "drive-virtio1".into(),
                    node: "disk1".into(),
                    size: 65536
                },
            ]
        );
    }

    #[test]
    fn named_disks_by_node_or_device_id() {
        let nodes = json!([{"node-name": "disk0", "image": {"virtual-size": 131072}}]);
        let blocks = json!([
            {"device": "", "qdev": "/machine/peripheral/scsi1/x", "removable": false,
             "inserted": {"node-name": "n1", "image": {"virtual-size": 65536}}},
        ]);
        let specs = vec![
            "drive-scsi0=disk0".to_string(),
            "drive-scsi1=scsi1".to_string(),
        ];
        let disks = select_disks(&specs, &nodes, &blocks).unwrap();
        assert_eq!(disks[0].node, "disk0");
        assert_eq!(disks[0].size, 131072);
        assert_eq!(disks[1].node, "n1");
        let err = select_disks(&["x=nope".into()], &nodes, &blocks).unwrap_err();
        assert!(err
            .to_string()
            .contains("no block node or device called 'nope'"));
        let err = select_disks(&["disk0".into()], &nodes, &blocks).unwrap_err();
        assert!(err.to_string().contains("expected NAME=NODE"));
        let err = select_disks(&["a=disk0".into(), "a=scsi1".into()], &nodes, &blocks).unwrap_err();
        assert!(err.to_string().contains("given twice"));
    }
}
