//! Process plumbing of `vma mount`: serving a session until it is unmounted
//! (with signals turned into a clean unmount), detaching into a daemon that
//! reports readiness through a pipe, syslog, and umount(2).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{log, Error, Level, VmaFs, USE_SYSLOG};

/// Makes sure fds 0-2 are open (on /dev/null if not), so that no file we open
/// lands there (fuser refuses a /dev/fuse fd ≤ 2, and a detached daemon
/// redirects 0-2).
pub(crate) fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) and open only inspect/create descriptors.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}

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

/// umount2(2) on `path`.
pub(crate) fn umount2(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One syslog line (LOG_DAEMON facility).
pub(crate) fn syslog(level: Level, msg: &str) {
    let prio = match level {
        Level::Info => libc::LOG_INFO,
        Level::Warn => libc::LOG_WARNING,
        Level::Error => libc::LOG_ERR,
    };
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: both strings are NUL-terminated; "%s" consumes exactly one.
    unsafe { libc::syslog(libc::LOG_DAEMON | prio, c"%s".as_ptr(), msg.as_ptr()) };
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
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
    // SAFETY: the sets are valid; blocking is per-thread and inherited by the
    // threads spawned below, so only the signal thread sees these signals.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    let restore = || unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    };

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
                    // SAFETY: set and timeout are valid; no siginfo wanted.
                    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
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
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os("pipe"));
    }
    // SAFETY: pipe2 just returned these two descriptors; we own them.
    let (mut rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: this process runs one thread (checked just above); the child
    // only forks again or runs the daemon and never returns.
    match unsafe { libc::fork() } {
        -1 => Err(os("fork")),
        0 => {
            drop(rd);
            // SAFETY: setsid/fork/_exit in the fresh child.
            unsafe {
                libc::setsid();
                match libc::fork() {
                    0 => {}
                    -1 => {
                        let mut wr = wr;
                        let _ = write!(wr, "E{}", os("fork"));
                        libc::_exit(1);
                    }
                    _ => libc::_exit(0),
                }
            }
            libc_exit(daemon_main(fs, mountpoint, config, wr))
        }
        child => {
            drop(wr);
            drop(fs);
            let mut status = 0;
            // SAFETY: child is our own child (the intermediate one, which exits at once).
            unsafe { libc::waitpid(child, &mut status, 0) };
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

fn libc_exit(code: i32) -> ! {
    // SAFETY: ends the daemon without running the caller's (the parent's) destructors.
    unsafe { libc::_exit(code) }
}

/// The daemon: serve, reporting errors through the pipe until the mount is
/// live and to syslog after. Returns the exit code.
fn daemon_main(fs: VmaFs, mountpoint: &Path, config: &fuser::Config, wr: File) -> i32 {
    // The daemon must not keep the caller's working directory busy.
    let _ = std::env::set_current_dir("/");
    let summary = fs.summary();
    // Detached from here on: stdio goes to /dev/null, logs to syslog.
    // SAFETY: openlog with a static ident; dup2 onto 0-2 of /dev/null.
    unsafe {
        libc::openlog(c"vma-fuse".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
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
