//! Process plumbing of `vma mount` and `vma serve`: detaching into a daemon
//! that reports readiness through a pipe ([`daemonize`]), a thread that turns
//! SIGINT/SIGTERM/SIGHUP into a clean stop ([`StopSignals`]), serving a mount
//! session until it is unmounted, syslog, and umount(2).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{log, sys, Error, Level, VmaFs, USE_SYSLOG};

pub(crate) use crate::sys::{ensure_stdio, umount2};

/// Ok when this process runs one thread (counted in `/proc/self/task`):
/// fork(2) copies only the calling thread, so a lock another thread holds
/// (in malloc, stdio, a logger) would stay locked forever in the child.
pub(crate) fn single_threaded() -> Result<(), Error> {
    let mut threads = 0;
    // A thread just joined can stay listed for a moment (it is released
    // after it wakes its joiner): look again for up to half a second.
    for _ in 0..50 {
        threads = std::fs::read_dir("/proc/self/task")
            .map_err(|error| Error::Io {
                what: "/proc/self/task".into(),
                error,
            })?
            .count();
        if threads <= 1 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(Error::Threaded { threads })
}

/// One syslog line (LOG_DAEMON facility).
pub(crate) fn syslog(level: Level, msg: &str) {
    let prio = match level {
        Level::Info => libc::LOG_INFO,
        Level::Warn => libc::LOG_WARNING,
        Level::Error => libc::LOG_ERR,
    };
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    sys::syslog(libc::LOG_DAEMON | prio, &msg);
}

/// SIGINT, SIGTERM and SIGHUP blocked in this thread (and in the threads it
/// spawns while this lives), so that only a [`StopSignals::watch`] thread
/// receives them. Dropping it restores the previous mask.
pub struct StopSignals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl StopSignals {
    /// Blocks the signals. Do this before spawning the threads that must not
    /// receive them.
    pub fn block() -> StopSignals {
        let set = sys::signal_set(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
        let old = sys::block_signals(&set);
        StopSignals { set, old }
    }

    /// Starts thread `name`, which waits for the signals and runs
    /// `on_signal(signal)` on the first one. Dropping the returned guard
    /// stops the thread (within 200 ms) and joins it.
    pub fn watch(
        &self,
        name: &str,
        on_signal: impl FnOnce(i32) + Send + 'static,
    ) -> io::Result<SignalWatch> {
        let done = Arc::new(AtomicBool::new(false));
        let set = self.set;
        let thread = {
            let done = done.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // Short waits, so that the thread sees `done` and ends
                    // when the work ends without a signal.
                    let timeout = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 200_000_000,
                    };
                    while !done.load(Ordering::Acquire) {
                        let sig = sys::sigtimedwait(&set, &timeout);
                        if sig > 0 {
                            on_signal(sig);
                            break;
                        }
                    }
                })?
        };
        Ok(SignalWatch {
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        sys::set_signal_mask(&self.old);
    }
}

/// The thread of [`StopSignals::watch`]; dropping it stops and joins it.
pub struct SignalWatch {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Mounts and serves `fs` until the filesystem is unmounted. SIGINT, SIGTERM
/// and SIGHUP unmount it (lazily if busy), so the process never leaves a dead
/// mount behind. Once the mount is live, a `b"K"` is written to `ready` (taken).
pub(crate) fn serve(
    fs: VmaFs,
    mountpoint: &Path,
    config: &fuser::Config,
    ready: &mut Option<Ready>,
) -> Result<(), Error> {
    // Blocked before fuser spawns its threads, so only our watcher sees them;
    // unblocked again when `signals` drops (on every return).
    let signals = StopSignals::block();
    let mut session =
        fuser::Session::new(fs, mountpoint, config).map_err(|error| Error::Mount {
            mountpoint: mountpoint.to_path_buf(),
            error,
        })?;
    let mut unmounter = session.unmount_callable();
    let watcher = {
        let mountpoint = mountpoint.to_path_buf();
        signals.watch("vma-fuse-signals", move |sig| {
            log(
                Level::Info,
                &format!("signal {sig}: unmounting {}", mountpoint.display()),
            );
            if let Err(e) = unmounter.unmount() {
                log(Level::Warn, &format!("unmount: {e}; detaching lazily"));
                let _ = umount2(&mountpoint, libc::MNT_DETACH);
            }
        })
    };
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            log(
                Level::Warn,
                &format!("no signal thread ({e}): signals will not unmount"),
            );
            None
        }
    };
    if let Some(r) = ready.take() {
        r.ok();
    }
    let result = session.run();
    drop(watcher);
    drop(signals);
    result.map_err(|error| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        error,
    })
}

/// The daemon's end of [`daemonize`]'s readiness pipe.
pub struct Ready(File);

impl Ready {
    /// Tells the caller that the daemon is ready: its [`daemonize`] returns
    /// [`Started::Ready`].
    pub fn ok(mut self) {
        let _ = self.0.write_all(b"K");
    }

    /// Tells the caller that the daemon failed before it was ready, with
    /// `msg`: its [`daemonize`] returns [`Started::Failed`].
    pub fn fail(mut self, msg: &str) {
        let _ = write!(self.0, "E{msg}");
    }
}

/// What the daemon of [`daemonize`] reported.
#[derive(Debug)]
pub enum Started {
    /// It is ready ([`Ready::ok`]).
    Ready,
    /// It failed before it was ready ([`Ready::fail`]).
    Failed(String),
    /// It ended without a word.
    Exited,
}

/// Runs `daemon` in a detached daemon process and returns once it reported
/// ready or failed (through the [`Ready`] it is given), or ended.
///
/// Double fork: the daemon runs in a new session, reparented (never a
/// zombie of the caller), with `/` as its working directory (it must not
/// keep the caller's busy); its exit status is `daemon`'s return value, and
/// it exits with `_exit` (no destructors of the caller's state). In the
/// calling process `daemon` is dropped unrun.
///
/// fork(2) copies only the calling thread, so this is refused
/// ([`Error::Threaded`]) in a process that runs other threads.
pub fn daemonize(daemon: impl FnOnce(Ready) -> i32) -> Result<Started, Error> {
    let os = |what: &str| Error::Io {
        what: what.into(),
        error: std::io::Error::last_os_error(),
    };
    single_threaded()?;
    let (mut rd, wr) = sys::pipe().map_err(|error| Error::Io {
        what: "pipe".into(),
        error,
    })?;
    // This process runs one thread (checked just above): sys::fork's contract.
    match sys::fork() {
        -1 => Err(os("fork")),
        0 => {
            drop(rd);
            // The fresh child: a new session, then the daemon as its child
            // (still one thread), and the intermediate process exits at once.
            sys::setsid();
            match sys::fork() {
                0 => {}
                -1 => {
                    let mut wr = wr;
                    let _ = write!(wr, "E{}", os("fork"));
                    sys::exit_now(1);
                }
                _ => sys::exit_now(0),
            }
            let _ = std::env::set_current_dir("/");
            sys::exit_now(daemon(Ready(wr)))
        }
        child => {
            drop(wr);
            drop(daemon);
            // The intermediate child, which exits at once.
            sys::wait_child(child);
            let mut msg = Vec::new();
            let _ = rd.read_to_end(&mut msg);
            Ok(match msg.split_first() {
                Some((b'K', _)) => Started::Ready,
                Some((b'E', m)) => Started::Failed(String::from_utf8_lossy(m).into_owned()),
                _ => Started::Exited,
            })
        }
    }
}

/// Forks the daemon, which mounts and serves; returns once it reports the
/// mount live, or its error.
pub(crate) fn detach(fs: VmaFs, mountpoint: &Path, config: &fuser::Config) -> Result<(), Error> {
    // (daemonize checks again that this process runs one thread: building
    // the index ran, and joined, threads of its own.)
    match daemonize(|ready| daemon_main(fs, mountpoint, config, ready))? {
        Started::Ready => Ok(()),
        Started::Failed(m) => Err(Error::Daemon(m)),
        Started::Exited => Err(Error::Daemon("exited before the mount was ready".into())),
    }
}

/// The daemon: serve, reporting errors through the pipe until the mount is
/// live and to syslog after. Returns the exit code.
fn daemon_main(fs: VmaFs, mountpoint: &Path, config: &fuser::Config, ready: Ready) -> i32 {
    let summary = fs.summary();
    // Detached from here on: stdio goes to /dev/null, logs to syslog.
    sys::detach_stdio_and_open_syslog(c"vma-fuse");
    USE_SYSLOG.store(true, Ordering::Relaxed);
    log(Level::Info, &summary);
    let mut ready = Some(ready);
    match serve(fs, mountpoint, config, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            match ready.take() {
                Some(r) => r.fail(&e.to_string()),
                None => log(Level::Error, &e.to_string()),
            }
            1
        }
    }
}
