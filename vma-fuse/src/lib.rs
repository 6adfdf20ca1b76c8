//! `vma-fuse`: a read-only FUSE filesystem exposing each disk of a VMA archive
//! as a sparse file (`<devname>.raw`) and each config blob as a file.
//!
//! - [`VmaFs`] (module `fs`): the filesystem over an [`vma_format::IndexedReader`]
//!   of the archive's decompressed stream: plain, or zstd / gzip / lzop through
//!   [`vma_seekable`] (a sidecar index next to the archive, reused by
//!   later mounts).
//! - [`mount`] / [`umount`]: what `vma mount` / `vma umount` call; `mount`
//!   validates everything, then detaches a daemon and returns once the mount is
//!   live. [`Mounter`]: the same for an archive the caller opened itself
//!   (`vma mount s3://...`), with a hook run just before the fork.
//! - [`spawn_mount`] / [`MountHandle`]: an in-process mount served by background
//!   threads, unmounted when the handle drops (used by tests and embedders).
//! - [`daemonize`] and [`StopSignals`]: the daemon and signal plumbing of
//!   `vma mount`, shared with `vma serve`.
//!
//! The FUSE side is fuser's pure-Rust mount (mount(2) as root, `fusermount3`
//! otherwise): no libfuse at build time.

#![deny(unsafe_code)]

mod daemon;
mod fs;
mod mountinfo;
// The only module allowed `unsafe` (libc calls std lacks); see its doc.
#[allow(unsafe_code)]
mod sys;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vma_seekable::{Cancel, IndexStore, SeekOptions};

pub use daemon::{daemonize, Ready, SignalWatch, Started, StopSignals};
pub use fs::VmaFs;

/// For a detached daemon (`vma mount`'s, `vma serve`'s): stdio onto
/// /dev/null, and syslog opened as `ident` (facility daemon, with the pid).
pub fn detach_stdio_and_open_syslog(ident: &'static std::ffi::CStr) {
    sys::detach_stdio_and_open_syslog(ident);
}

/// One syslog line at error priority, facility daemon (a detached daemon's
/// log: `vma serve`'s, after [`detach_stdio_and_open_syslog`]).
pub fn syslog_error(msg: &str) {
    daemon::syslog(Level::Error, msg);
}

/// Errors of the mount layer.
///
/// Each message is complete on its own (path, offset, cause); the cause is
/// not repeated as an [`std::error::Error::source`], so chained printers
/// (`anyhow`'s `{:#}`) do not print it twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The archive could not be opened or indexed.
    #[allow(missing_docs)]
    #[error("{path}: {error}")]
    Archive {
        path: PathBuf,
        error: vma_format::Error,
    },
    /// The archive lacks clusters and `allow_incomplete` was not given.
    #[allow(missing_docs)]
    #[error("{path}: {error}; refusing to mount an incomplete archive (allow it with --allow-incomplete: missing clusters then read as zeros)")]
    Incomplete {
        path: PathBuf,
        error: vma_format::Error,
    },
    /// A device or config name fails the name rule (spec §13).
    #[allow(missing_docs)]
    #[error("{path}: refusing to mount: {what} name '{name}' (pointer field at byte offset {field}): {reason}")]
    BadName {
        path: PathBuf,
        what: &'static str,
        name: String,
        field: u64,
        reason: &'static str,
    },
    /// A device is declared larger than any file can be (2^63 - 1 bytes).
    #[allow(missing_docs)]
    #[error("{path}: refusing to mount: device {name} declared size {size} bytes exceeds the largest possible file size ({} bytes)", vma_format::raw::MAX_FILE_LEN)]
    TooLarge {
        path: PathBuf,
        name: String,
        size: u64,
    },
    /// Two files of the mount would have the same name.
    #[allow(missing_docs)]
    #[error("{path}: refusing to mount: two files would be named '{name}'")]
    DuplicateName { path: PathBuf, name: String },
    /// The mountpoint is missing or not a directory.
    #[allow(missing_docs)]
    #[error("mountpoint {path}: {reason}")]
    Mountpoint { path: PathBuf, reason: String },
    /// A `-o` option we cannot honour.
    #[allow(missing_docs)]
    #[error("mount option '{option}': {reason}")]
    Option {
        option: String,
        reason: &'static str,
    },
    /// The kernel or fusermount refused the mount.
    #[allow(missing_docs)]
    #[error("cannot mount at {mountpoint}: {error}")]
    Mount {
        mountpoint: PathBuf,
        error: std::io::Error,
    },
    /// SIGINT, SIGTERM or SIGHUP arrived while the archive was opened and
    /// indexed ([`open_interruptible`]); the index build stopped and removed
    /// its files.
    #[error("interrupted")]
    Interrupted,
    /// The background daemon failed before the mount was ready.
    #[error("mount daemon: {0}")]
    Daemon(String),
    /// Unmounting failed.
    #[allow(missing_docs)]
    #[error("can't unmount {path} - {reason}")]
    Umount { path: PathBuf, reason: String },
    /// Anything else the OS refused (open, fork, pipe).
    #[allow(missing_docs)]
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// Detaching would fork a process that runs other threads.
    #[allow(missing_docs)]
    #[error(
        "cannot detach the mount daemon: this process runs {threads} threads, and fork(2) \
             copies only the calling one (locks the others hold would stay locked in the \
             daemon); mount from a single-threaded process, in the foreground, or with spawn_mount"
    )]
    Threaded { threads: usize },
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Stay attached to the terminal instead of detaching once the mount is ready.
    pub foreground: bool,
    /// `-o` options passed through to FUSE (e.g. `allow_other`), split on commas.
    pub options: Vec<String>,
    /// Mount even if the archive lacks clusters (they read as zeros).
    pub allow_incomplete: bool,
    /// Rebuild a compressed archive's sidecar index even if a valid one exists.
    pub rebuild_index: bool,
    /// Mount over a directory that is not empty (its entries are hidden
    /// while mounted); `-o nonempty` does the same.
    pub nonempty: bool,
    /// Keep a compressed archive's index (`.vmaidx`) and cache file
    /// (`.vmacache`) in this directory instead of next to the archive.
    pub cache_dir: Option<PathBuf>,
}

impl MountOptions {
    /// How [`mount`] reaches a compressed archive's decompressed stream:
    /// the index kept on disk ([`IndexStore::on_disk`]: in `cache_dir`, else
    /// beside the archive, else the user's cache directory), `rebuild_index`,
    /// where a cache file goes and how big it can get on stderr before it is
    /// written, and (when stderr is a terminal) progress of an index build.
    pub fn seek_options(&self) -> SeekOptions {
        let mut seek = SeekOptions::default();
        seek.rebuild = self.rebuild_index;
        seek.store = IndexStore::on_disk(self.cache_dir.clone());
        seek.notice = Some(std::sync::Arc::new(|m: &str| log(Level::Info, m)));
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            seek.progress = Some(terminal_progress());
        }
        seek
    }
}

/// Prints "indexing: N%" on stderr at most once per percent, then a newline at the end.
fn terminal_progress() -> vma_seekable::Progress {
    let last = std::sync::Mutex::new(None::<u64>);
    std::sync::Arc::new(move |done: u64, total: u64| {
        let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(100);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(pct) {
            return;
        }
        *last = Some(pct);
        let end = if pct >= 100 { "\n" } else { "" };
        eprint!("\rvma-fuse: indexing the compressed archive: {pct:3}%{end}");
    })
}

/// Mounts `archive` at `mountpoint`, read-only.
///
/// Everything that can be checked is checked first (mountpoint, options,
/// archive headers and extent headers, names, completeness) and reported as
/// an error. A compressed archive's sidecar index is built (or validated and
/// reused) in that step too, before detaching: for a big one-frame `.zst` that
/// is one decoding pass writing the cache file, for a `.gz` one decoding pass
/// recording deflate checkpoints. Then, unless `foreground`, the process forks
/// a daemon that serves
/// the mount, and this returns once the mount is live. With `foreground` it
/// serves in this process and returns when the filesystem is unmounted
/// (`vma umount`, or SIGINT/SIGTERM/SIGHUP, which unmount).
///
/// The mountpoint must be an empty directory (or `nonempty`) that is not
/// already a `vma mount`.
///
/// Detaching forks, so it is refused ([`Error::Threaded`]) in a process that
/// runs other threads (counted in `/proc/self/task`), before the archive is
/// opened and again just before the fork.
///
/// [`Mounter`] is the same in two steps, for an archive the caller opens
/// itself (an object in a bucket).
pub fn mount(archive: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<(), Error> {
    let mounter = Mounter::new(archive, mountpoint, opts)?;
    let fs = open_interruptible(archive, opts.allow_incomplete, &opts.seek_options())?;
    mounter.mount(fs, || {})
}

/// [`mount`] in two steps, for a [`VmaFs`] the caller opens itself
/// ([`VmaFs::from_seekable`]): [`Mounter::new`] checks what can be checked
/// before the archive is opened (mountpoint, options, a single-threaded
/// process when detaching), then [`Mounter::mount`] mounts the opened
/// filesystem.
#[derive(Debug)]
pub struct Mounter {
    mountpoint: PathBuf,
    config: fuser::Config,
    foreground: bool,
}

impl Mounter {
    /// Checks the mountpoint and options for a mount of the archive shown as
    /// `name` (its fsname is `vma:<name>`: for a URL give its display form,
    /// without secrets), and, unless `opts.foreground`, that this process
    /// runs a single thread. Call it before opening the archive, so that a
    /// wrong mountpoint fails before a long index build.
    pub fn new(name: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<Mounter, Error> {
        daemon::ensure_stdio();
        let mountpoint = check_mountpoint(mountpoint, opts)?;
        let config = fuser_config(name, opts)?;
        if !opts.foreground {
            daemon::single_threaded()?;
        }
        fixed_mmap_threshold();
        Ok(Mounter {
            mountpoint,
            config,
            foreground: opts.foreground,
        })
    }

    /// Mounts `fs`: in the foreground, serves it here until it is
    /// unmounted; else runs `before_fork` (which must end every thread this
    /// process started since [`Mounter::new`], e.g. a remote object's
    /// runtime: [`daemonize`] refuses to fork a threaded process), forks
    /// the daemon that serves it and returns once the mount is live.
    pub fn mount(self, fs: VmaFs, before_fork: impl FnOnce()) -> Result<(), Error> {
        if self.foreground {
            log(Level::Info, &fs.summary());
            daemon::serve(fs, &self.mountpoint, &self.config, &mut None)
        } else {
            before_fork();
            daemon::detach(fs, &self.mountpoint, &self.config)
        }
    }
}

/// [`VmaFs::open_seek`] for a command-line program: SIGINT, SIGTERM and
/// SIGHUP during the index build (a one-frame `.zst` may take minutes)
/// cancel it instead of killing the process, so the build removes its
/// temporary and partial files, and this returns [`Error::Interrupted`].
/// [`interruptible`] does the same for any other way of opening.
pub fn open_interruptible(
    archive: &Path,
    allow_incomplete: bool,
    seek: &SeekOptions,
) -> Result<VmaFs, Error> {
    interruptible(seek, |seek| {
        VmaFs::open_seek(archive, allow_incomplete, seek)
    })
}

/// Runs `open` (given `seek` with a [`SeekOptions::cancel`] of its own)
/// so that SIGINT, SIGTERM and SIGHUP cancel its index build instead of
/// killing the process; if one arrived, the result is
/// [`Error::Interrupted`] (converted to `E`) whatever `open` returned.
///
/// The signals are blocked in the calling thread while `open` runs (and so
/// in the threads it starts: index workers, a remote object's runtime),
/// the build polls for a pending one, and the previous signal mask is
/// restored before this returns, with no signal left pending. So nothing
/// of this outlives the call: the daemon `mount` forks afterwards, or a
/// foreground mount, sets up its own handling of these signals.
pub fn interruptible<T, E: From<Error>>(
    seek: &SeekOptions,
    open: impl FnOnce(&SeekOptions) -> Result<T, E>,
) -> Result<T, E> {
    let set = sys::signal_set(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let old = sys::block_signals(&set);
    let mut seek = seek.clone();
    seek.cancel = Some(Cancel::when(move || sys::signal_pending(&set)));
    let opened = open(&seek);
    // Taken, not left pending: unblocking must not deliver it.
    let interrupted = sys::take_pending_signal(&set);
    sys::set_signal_mask(&old);
    if interrupted {
        return Err(Error::Interrupted.into());
    }
    opened
}

/// Keeps glibc's mmap threshold fixed (at its initial 128 KiB) in the
/// process that serves the mount.
///
/// glibc raises the threshold to the size of any freed mmapped block (up to
/// 32 MiB). After that, the decoded frames (256 KiB–1 MiB) and read buffers
/// the FUSE threads allocate and free come from per-thread arenas, which keep
/// what is freed: the daemon reached 107–119 MB RSS with a 32 MiB frame
/// budget. With a fixed threshold such buffers stay mmapped and go back to
/// the OS when freed (the frame cache reuses evicted buffers, so this adds
/// no mmap per read). Not done by [`spawn_mount`]: an embedder's allocator
/// settings are its own.
fn fixed_mmap_threshold() {
    sys::fix_mmap_threshold();
}

/// Unmounts a `vma mount` (`fusermount3 -u`, falling back to umount(2)).
/// The daemon serving it then exits by itself.
///
/// Anything else is refused: the topmost mount at `mountpoint` (in
/// `/proc/self/mountinfo`) must be of type `fuse.vma`, the subtype every
/// mount of this crate sets.
pub fn umount(mountpoint: &Path) -> Result<(), Error> {
    let refuse = |reason: String| Error::Umount {
        path: mountpoint.to_path_buf(),
        reason,
    };
    // A mount whose daemon died cannot be canonicalized (ENOTCONN): then
    // the absolute path, as mountinfo lists it.
    let at = match mountpoint.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(refuse(e.to_string())),
        Err(_) => std::path::absolute(mountpoint).map_err(|e| refuse(e.to_string()))?,
    };
    match mountinfo::top_at(&at).map_err(|e| refuse(format!("/proc/self/mountinfo: {e}")))? {
        None => return Err(refuse("not mounted".into())),
        Some(m) if !m.is_vma() => {
            return Err(refuse(format!(
                "not a vma mount ({} filesystem from {}); refusing to unmount it",
                m.fstype, m.source
            )))
        }
        Some(_) => {}
    }
    let mountpoint = at.as_path();
    let fusermount = match std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(mountpoint)
        .output()
    {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => format!(
            "fusermount3 -u: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("fusermount3: {e}"),
    };
    match daemon::umount2(mountpoint, 0) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Umount {
            path: mountpoint.to_path_buf(),
            reason: format!("{fusermount}; umount(2): {e}"),
        }),
    }
}

/// An in-process mount served by background threads; dropping it unmounts.
#[derive(Debug)]
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

impl MountHandle {
    /// Where the filesystem is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads to end.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        session.umount_and_join().map_err(|e| {
            // Busy (a file still open): detach lazily so nothing is left mounted;
            // the serving thread ends when the last user closes its file.
            let _ = daemon::umount2(&self.mountpoint, libc::MNT_DETACH);
            Error::Umount {
                path: self.mountpoint.clone(),
                reason: e.to_string(),
            }
        })
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            log(Level::Warn, &e.to_string());
        }
    }
}

/// Mounts `fs` at `mountpoint` in this process (served by background threads)
/// and returns once the mount is live. `opts.foreground` is ignored.
pub fn spawn_mount(
    fs: VmaFs,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<MountHandle, Error> {
    let mountpoint = check_mountpoint(mountpoint, opts)?;
    let config = fuser_config(fs.path(), opts)?;
    let session = fuser::Session::new(fs, &mountpoint, &config)
        .and_then(fuser::Session::spawn)
        .map_err(|error| Error::Mount {
            mountpoint: mountpoint.clone(),
            error,
        })?;
    Ok(MountHandle {
        session: Some(session),
        mountpoint,
    })
}

/// The canonical mountpoint, or why it cannot be one: not a directory,
/// already a `vma mount` (a second one would stack on it), or not empty
/// (its files would be hidden) without `nonempty`.
fn check_mountpoint(mountpoint: &Path, opts: &MountOptions) -> Result<PathBuf, Error> {
    let err = |reason: String| Error::Mountpoint {
        path: mountpoint.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(mountpoint).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    let canon = mountpoint.canonicalize().map_err(|e| err(e.to_string()))?;
    if let Ok(Some(m)) = mountinfo::top_at(&canon) {
        if m.is_vma() {
            return Err(err(format!(
                "already a vma mount (of {}); unmount it first with `vma umount`",
                m.source
            )));
        }
    }
    let nonempty = opts.nonempty
        || opts
            .options
            .iter()
            .flat_map(|o| o.split(','))
            .any(|o| o.trim() == "nonempty");
    if !nonempty {
        let mut entries = std::fs::read_dir(&canon).map_err(|e| err(e.to_string()))?;
        if let Some(e) = entries.next() {
            let first = e.map_or_else(|e| e.to_string(), |e| format!("{:?}", e.file_name()));
            return Err(err(format!(
                "not empty (it holds {first}, which the mount would hide); \
                 mount over it anyway with --nonempty (-o nonempty)"
            )));
        }
    }
    Ok(canon)
}

/// Number of FUSE worker threads: reads block on the archive's I/O, so a few
/// more than the cores.
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(4, 16)
}

/// Translates `-o` options into fuser's session config; always read-only.
fn fuser_config(archive: &Path, opts: &MountOptions) -> Result<fuser::Config, Error> {
    use fuser::MountOption as M;
    let mut config = fuser::Config::default();
    let mut mo = vec![M::RO, M::NoDev, M::NoSuid, M::Subtype("vma".into())];
    let mut fsname = None;
    for opt in opts
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
    {
        let o = match opt {
            "" | "ro" => continue,
            "rw" => {
                return Err(Error::Option {
                    option: opt.into(),
                    reason: "the filesystem is read-only",
                })
            }
            "allow_other" => {
                config.acl = fuser::SessionACL::All;
                continue;
            }
            "allow_root" => {
                config.acl = fuser::SessionACL::RootAndOwner;
                continue;
            }
            "default_permissions" => M::DefaultPermissions,
            "auto_unmount" => M::AutoUnmount,
            "dev" => M::Dev,
            "suid" => M::Suid,
            // Defaults already; `nonempty` is checked by `check_mountpoint`
            // (fuse3 itself allows non-empty mountpoints).
            "nodev" | "nosuid" | "nonempty" => continue,
            "exec" => M::Exec,
            "noexec" => M::NoExec,
            "atime" => M::Atime,
            "noatime" => M::NoAtime,
            "sync" => M::Sync,
            "async" => M::Async,
            "dirsync" => M::DirSync,
            o if o.starts_with("fsname=") => {
                // Always starting with `vma:`: how a vma mount is recognised.
                fsname = Some(format!("vma:{}", &o["fsname=".len()..]));
                continue;
            }
            o if o.starts_with("subtype=") => {
                return Err(Error::Option {
                    option: o.into(),
                    reason: "the subtype is always vma: it is how vma umount and vma mount \
                             recognise a vma mount",
                })
            }
            o => M::CUSTOM(o.into()),
        };
        match o {
            M::Dev => mo.retain(|m| *m != M::NoDev),
            M::Suid => mo.retain(|m| *m != M::NoSuid),
            _ => {}
        }
        if !mo.contains(&o) {
            mo.push(o);
        }
    }
    // `vma:<archive>` shows in /proc/mounts (the path left out if it would
    // break the comma-separated option string fusermount gets).
    let fsname = fsname.unwrap_or_else(|| {
        // A URL (its display form) is no path of this machine.
        let url = archive.to_str().is_some_and(|s| s.contains("://"));
        let p = match archive.canonicalize() {
            Ok(p) if !url => p,
            _ => archive.to_path_buf(),
        };
        let p = p.to_string_lossy();
        if p.contains([',', ' ', '\t', '\n', '\\']) {
            "vma".into()
        } else {
            format!("vma:{p}")
        }
    });
    mo.push(M::FSName(fsname));
    config.mount_options = mo;
    config.n_threads = Some(worker_threads());
    config.clone_fd = true;
    Ok(config)
}

/// Log levels (syslog priorities once detached).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

/// Set once the daemon has detached: log to syslog instead of stderr.
static USE_SYSLOG: AtomicBool = AtomicBool::new(false);

/// One log line: stderr while attached, syslog once detached.
pub(crate) fn log(level: Level, msg: &str) {
    if USE_SYSLOG.load(Ordering::Relaxed) {
        daemon::syslog(level, msg);
    } else {
        let tag = match level {
            Level::Info => "",
            Level::Warn => "warning: ",
            Level::Error => "error: ",
        };
        eprintln!("vma-fuse: {tag}{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::MountOption as M;

    fn config(opts: &[&str]) -> Result<fuser::Config, Error> {
        let opts = MountOptions {
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        fuser_config(Path::new("/x/a.vma"), &opts)
    }

    #[test]
    fn always_read_only_nodev_nosuid() {
        let c = config(&[]).unwrap();
        for m in [
            M::RO,
            M::NoDev,
            M::NoSuid,
            M::FSName("vma:/x/a.vma".into()),
            M::Subtype("vma".into()),
        ] {
            assert!(c.mount_options.contains(&m), "{m:?}");
        }
        assert_eq!(c.acl, fuser::SessionACL::Owner);
        assert!(c.n_threads.unwrap() >= 4);
        assert!(matches!(config(&["ro,rw"]), Err(Error::Option { .. })));
        // The subtype is how a vma mount is recognised: not for the user to change.
        assert!(matches!(config(&["subtype=x"]), Err(Error::Option { .. })));
    }

    #[test]
    fn options_map_to_fuser() {
        let c = config(&[
            "allow_other,default_permissions",
            "dev",
            "noatime,max_read=65536",
            "fsname=backup",
        ])
        .unwrap();
        assert_eq!(c.acl, fuser::SessionACL::All);
        for m in [
            M::DefaultPermissions,
            M::Dev,
            M::NoAtime,
            M::CUSTOM("max_read=65536".into()),
            M::FSName("vma:backup".into()),
        ] {
            assert!(c.mount_options.contains(&m), "{m:?}");
        }
        assert!(
            !c.mount_options.contains(&M::NoDev),
            "dev replaces the nodev default"
        );
        assert_eq!(
            c.mount_options
                .iter()
                .filter(|m| matches!(m, M::FSName(_)))
                .count(),
            1
        );
        assert_eq!(
            config(&["allow_root"]).unwrap().acl,
            fuser::SessionACL::RootAndOwner
        );
    }

    #[test]
    fn fsname_avoids_separators() {
        let c = fuser_config(Path::new("/x/a,b.vma"), &MountOptions::default()).unwrap();
        assert!(c.mount_options.contains(&M::FSName("vma".into())));
    }
}
