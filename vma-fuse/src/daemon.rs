//! Process plumbing of `vma mount`: serving a session until it is unmounted
//! (with signals turned into a clean unmount), detaching into a daemon that
//! reports readiness through a pipe, syslog, and umount(2).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

fn signal_set() -> libc::sigset_t {
    sys::signal_set(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
}

/// Mounts and serves `fs` until the filesystem is unmounted. SIGINT, SIGTERM
/// and SIGHUP unmount it (lazily if busy), so the process never leaves a dead
/// mount behind. Once the mount is live, a `b"K"` is written to `ready` (taken).
pub(crate) fn serve(
    fs: VmaFs,
    mountpoint: &Path,
    config: &fuser::Config,
    ready: &mut Option<File>,
) -> Result<(), Error> {
    let set = signal_set();
    // Blocking is per-thread and inherited by the threads spawned below, so
    // only the signal thread sees these signals.
    let old = sys::block_signals(&set);
    let restore = || sys::set_signal_mask(&old);

    let mut session = match fuser::Session::new(fs, mountpoint, config) {
        Ok(s) => s,
        Err(error) => {
            restore();
            return Err(Error::Mount {
                mountpoint: mountpoint.to_path_buf(),
                error,
            });
        }
    };
    let mut unmounter = session.unmount_callable();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let mountpoint = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("vma-fuse-signals".into())
            .spawn(move || {
                let timeout = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                while !done.load(Ordering::Acquire) {
                    let sig = sys::sigtimedwait(&set, &timeout);
                    if sig > 0 {
                        log(
                            Level::Info,
                            &format!("signal {sig}: unmounting {}", mountpoint.display()),
                        );
                        if let Err(e) = unmounter.unmount() {
                            log(Level::Warn, &format!("unmount: {e}; detaching lazily"));
                            let _ = umount2(&mountpoint, libc::MNT_DETACH);
                        }
                        break;
                    }
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
    if let Some(mut pipe) = ready.take() {
        let _ = pipe.write_all(b"K");
    }
    let result = session.run();
    done.store(true, Ordering::Release);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    restore();
    result.map_err(|error| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        error,
    })
}

/// Forks the daemon (double fork: the daemon is reparented, never a zombie of
/// the caller), which mounts and serves; returns once it reports the mount live,
/// or its error.
pub(crate) fn detach(fs: VmaFs, mountpoint: &Path, config: &fuser::Config) -> Result<(), Error> {
    let os = |what: &str| Error::Io {
        what: what.into(),
        error: std::io::Error::last_os_error(),
    };
    // Again here: building the index ran (and joined) threads of its own.
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
            sys::exit_now(daemon_main(fs, mountpoint, config, wr))
        }
        child => {
            drop(wr);
            drop(fs);
            // The intermediate child, which exits at once.
            sys::wait_child(child);
            let mut msg = Vec::new();
            let _ = rd.read_to_end(&mut msg);
            match msg.split_first() {
                Some((b'K', _)) => Ok(()),
                Some((b'E', m)) => Err(Error::Daemon(String::from_utf8_lossy(m).into_owned())),
                _ => Err(Error::Daemon("exited before the mount was ready".into())),
            }
        }
    }
}

/// The daemon: serve, reporting errors through the pipe until the mount is
/// live and to syslog after. Returns the exit code.
fn daemon_main(fs: VmaFs, mountpoint: &Path, config: &fuser::Config, wr: File) -> i32 {
    // The daemon must not keep the caller's working directory busy.
    let _ = std::env::set_current_dir("/");
    let summary = fs.summary();
    // Detached from here on: stdio goes to /dev/null, logs to syslog.
    sys::detach_stdio_and_open_syslog(c"vma-fuse");
    USE_SYSLOG.store(true, Ordering::Relaxed);
    log(Level::Info, &summary);
    let mut ready = Some(wr);
    match serve(fs, mountpoint, config, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            match ready.as_mut() {
                Some(pipe) => {
                    let _ = write!(pipe, "E{e}");
                }
                None => log(Level::Error, &e.to_string()),
            }
            1
        }
    }
}
