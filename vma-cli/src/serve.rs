//! `vma serve`: each disk of an archive as a read-only NBD export named by
//! its device name, served by the `vma-nbd` crate.
//!
//! The archive is opened exactly as `vma mount` opens it ([`VmaFs`]: a plain
//! archive directly, a compressed one through its sidecar index; a local
//! file or an object in storage), with every read re-checking the extent
//! header it touches (a remote object: pinned by its ETag instead), so a
//! damaged or changed extent gives EIO (reason logged) instead of wrong bytes. Block status
//! (`base:allocation`) comes from the reader's data/zero mapping: zero
//! blocks and absent clusters are reported as hole + zero.
//!
//! Process plumbing as `vma mount`: detach once the socket listens unless
//! `--foreground`, `--pidfile`, and SIGINT/SIGTERM/SIGHUP stop the server
//! cleanly (connections closed, socket file and pidfile removed).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use vma_format::MappingKind;
use vma_fuse::{Ready, Started, StopSignals, VmaFs};
use vma_nbd::proto::{STATE_HOLE, STATE_ZERO};
use vma_nbd::{Export, Exports, Extent, Listener, Server, ServerConfig};

/// The NBD port, used when neither --socket nor --listen is given.
const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

pub(crate) const AFTER_HELP: &str = "\
Each disk is a read-only export named by its device name (e.g. drive-scsi0);
the URI of each is printed on standard output. Without --socket or --listen,
the server listens on 127.0.0.1:10809 (TCP, localhost only).

Examples:
  vma serve --socket /run/vma.sock backup.vma.zst
  nbdinfo --list 'nbd+unix:///?socket=/run/vma.sock'
  qemu-img convert -O qcow2 'nbd+unix:///drive-scsi0?socket=/run/vma.sock' disk.qcow2
  vma serve --foreground --listen 127.0.0.1:10810 backup.vma

Live restore (a writable disk at once; see README.md):
  qemu-img create -f qcow2 -F raw -b 'nbd+unix:///drive-scsi0?socket=/run/vma.sock' vm.qcow2";

/// Options of `vma serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The archive: a plain .vma, or .vma.zst / .vma.gz / .vma.lzo (random
    /// access through a sidecar index `<archive>.vmaidx`, built on first use);
    /// a path, or an object in storage (s3://bucket/key, http(s)://: its
    /// index kept in $VMA_CACHE_DIR, else ~/.cache/vma-rs/).
    pub archive: PathBuf,
    /// Listen on this Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on this TCP address (`ADDR:PORT`, or `PORT` for 127.0.0.1).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Stay in the foreground (logs on stderr) instead of detaching.
    #[arg(short, long)]
    pub foreground: bool,
    /// Write the server's process id to this file (removed when it stops).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Serve even if clusters are missing (they read as zeros).
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Rebuild a compressed archive's sidecar index even if a valid one exists.
    #[arg(long)]
    pub rebuild_index: bool,
    /// Most client connections served at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_connections: usize,
}

/// Set once detached: log to syslog instead of stderr.
static USE_SYSLOG: AtomicBool = AtomicBool::new(false);

fn log(msg: &str) {
    if USE_SYSLOG.load(Ordering::Relaxed) {
        vma_fuse::syslog_error(msg);
    } else {
        eprintln!("vma serve: {msg}");
    }
}

/// One disk of the archive as an export.
struct Disk {
    fs: Arc<VmaFs>,
    dev_id: u8,
    size: u64,
    name: String,
}

impl Disk {
    fn eio(&self, e: vma_format::Error) -> io::Error {
        // No raw errno: vma-nbd maps it to EIO and logs the text.
        io::Error::other(format!("{}: {e}", self.name))
    }
}

impl Export for Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn description(&self) -> Option<String> {
        Some(format!("{} of {}", self.name, self.fs.path().display()))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self
            .fs
            .reader()
            .read(self.dev_id, offset, buf)
            .map_err(|e| self.eio(e))?;
        if n < buf.len() {
            return Err(io::Error::other(format!(
                "{}: read past the end of the disk at offset {}",
                self.name,
                offset + n as u64
            )));
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<Extent>> {
        let reader = self.fs.reader();
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < max {
            let Some(m) = reader.map(self.dev_id, pos).map_err(|e| self.eio(e))? else {
                break;
            };
            let flags = match m.kind {
                MappingKind::Data => 0,
                MappingKind::Zero => STATE_HOLE | STATE_ZERO,
            };
            let stop = m.end.min(end);
            out.push(Extent {
                length: stop - pos,
                flags,
            });
            pos = stop;
        }
        Ok(out)
    }
}

/// Runs `vma serve`.
pub fn run(a: ServeArgs) -> Result<()> {
    let opts = vma_fuse::MountOptions {
        allow_incomplete: a.allow_incomplete,
        rebuild_index: a.rebuild_index,
        cache_dir: crate::index::cache_dir(None),
        ..Default::default()
    };
    // Before detaching: a signal during the index build stops it (see mount).
    // A remote object's connection is dropped just before the fork.
    let (fs, remote) = match crate::input::remote_url(&a.archive) {
        Some(url) => {
            let r = crate::mount::open_remote(url, &opts)?;
            (r.fs, Some(r.suspend))
        }
        None => {
            match vma_fuse::open_interruptible(&a.archive, a.allow_incomplete, &opts.seek_options())
            {
                Err(vma_fuse::Error::Interrupted) => crate::interrupt::exit_interrupted(),
                r => (r?, None),
            }
        }
    };
    let fs = Arc::new(fs);
    let mut exports = Exports::new();
    let mut names = Vec::new();
    for d in &fs.reader().header().devices {
        // VmaFs::open_seek checked the name rule (printable, no '/'), so it is UTF-8 text.
        let name = String::from_utf8_lossy(&d.name).into_owned();
        names.push(name.clone());
        exports.insert(
            name.clone(),
            Arc::new(Disk {
                fs: fs.clone(),
                dev_id: d.id,
                size: d.size,
                name,
            }),
        );
    }
    if exports.is_empty() {
        bail!("{}: the archive has no disks to serve", fs.path().display());
    }
    let pidfile = a.pidfile.as_deref().map(absolute).transpose()?;
    // In the foreground the pidfile exists before the socket does, so whoever
    // waits for the socket finds it (a detached server writes it before the
    // command returns).
    if let Some(p) = pidfile.as_deref().filter(|_| a.foreground) {
        write_pidfile(p)?;
    }
    let listener = match (&a.socket, &a.listen) {
        (Some(p), _) => absolute(p).and_then(|p| Ok(Listener::unix(&p)?)),
        (None, l) => parse_listen(l.as_deref().unwrap_or(DEFAULT_LISTEN))
            .and_then(|addr| Ok(Listener::tcp(addr)?)),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            if let Some(p) = pidfile.as_deref().filter(|_| a.foreground) {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    // Informational: a closed stdout (`| head -1`) must not stop the server.
    let mut out = io::stdout().lock();
    for n in &names {
        let _ = writeln!(out, "{n} {}", listener.uri(n));
    }
    let _ = out.flush();
    drop(out);
    let config = ServerConfig {
        max_connections: a.max_connections.max(1),
        conn: vma_nbd::ConnConfig {
            log: Some(Arc::new(log)),
            ..Default::default()
        },
    };
    let server = Server::new(exports, config);
    let summary = format!(
        "{}; serving {} on {}",
        fs.summary(),
        names.join(", "),
        listener.describe()
    );
    if a.foreground {
        log(&summary);
        serve(&server, listener, pidfile.as_deref())
    } else {
        if let Some(suspend) = remote {
            suspend();
        }
        detach(&server, listener, pidfile.as_deref(), &summary)
    }
}

/// `PATH` made absolute (the daemon changes to `/`), without resolving the
/// last component (it may not exist yet).
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

/// `ADDR:PORT`, `[V6]:PORT` or a bare `PORT` (127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .with_context(|| format!("--listen {s}: expected ADDR:PORT (e.g. 127.0.0.1:10809)"))
}

fn write_pidfile(p: &Path) -> Result<()> {
    std::fs::write(p, format!("{}\n", std::process::id()))
        .with_context(|| format!("pidfile {}", p.display()))
}

/// Serves until SIGINT/SIGTERM/SIGHUP, then stops cleanly (the server
/// removes the socket file; we remove the pidfile).
fn serve(server: &Server, listener: Listener, pidfile: Option<&Path>) -> Result<()> {
    // Blocked before the server spawns its threads, so only the watcher
    // below receives them (`vma mount`'s machinery).
    let signals = StopSignals::block();
    let stop = listener.stop_handle();
    let watcher = signals
        .watch("vma-serve-signals", move |sig| {
            log(&format!("signal {sig}: stopping"));
            stop.stop();
        })
        .context("signal thread")?;
    let result = server.serve(listener);
    drop(watcher);
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
    result.context("NBD server")
}

/// Forks the daemon (as `vma mount` does), which writes the pidfile and
/// serves; returns once it reports it is running.
fn detach(
    server: &Server,
    listener: Listener,
    pidfile: Option<&Path>,
    summary: &str,
) -> Result<()> {
    let started =
        vma_fuse::daemonize(|ready| daemon_main(server, listener, pidfile, summary, ready))
            .map_err(|e| anyhow!("server daemon: {e}"))?;
    match started {
        Started::Ready => Ok(()),
        Started::Failed(m) => bail!("server daemon: {m}"),
        Started::Exited => bail!("server daemon: exited before it was ready"),
    }
}

fn daemon_main(
    server: &Server,
    listener: Listener,
    pidfile: Option<&Path>,
    summary: &str,
    ready: Ready,
) -> i32 {
    if let Some(p) = pidfile {
        if let Err(e) = write_pidfile(p) {
            ready.fail(&crate::error_text(&e));
            return 1;
        }
    }
    // Detached from here on, as a `vma mount` daemon.
    vma_fuse::detach_stdio_and_open_syslog(c"vma-serve");
    USE_SYSLOG.store(true, Ordering::Relaxed);
    log(summary);
    ready.ok();
    match serve(server, listener, pidfile) {
        Ok(()) => 0,
        Err(e) => {
            log(&crate::error_text(&e));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("10810").unwrap(),
            "127.0.0.1:10810".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:1").unwrap(),
            "0.0.0.0:1".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:2").unwrap(), "[::1]:2".parse().unwrap());
        assert!(parse_listen("localhost").is_err());
    }
}
