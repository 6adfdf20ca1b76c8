//! Every `unsafe` call of vma-fuse: thin wrappers over the libc calls of the
//! mount daemon (descriptors, signals, fork, syslog, umount2) and of the
//! filesystem (uid/gid, malloc tuning). The crate root denies `unsafe_code`;
//! only this module allows it, and each block says why it is sound. The
//! policy (when to fork, what to log, how to react) stays in `daemon.rs`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// umount2(2) on `path`.
pub(crate) fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One syslog(3) line at `prio` (facility included).
pub(crate) fn syslog(prio: libc::c_int, msg: &CStr) {
    // SAFETY: both strings are NUL-terminated; "%s" consumes exactly one.
    unsafe { libc::syslog(prio, c"%s".as_ptr(), msg.as_ptr()) };
}

/// The daemon's stdio goes to /dev/null and its log to syslog as `ident`.
pub(crate) fn detach_stdio_and_open_syslog(ident: &'static CStr) {
    // SAFETY: openlog keeps the pointer: ident is static; dup2 onto 0-2 of
    // /dev/null.
    unsafe {
        libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
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
}

/// A signal set of `signals`.
pub(crate) fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid value; sigemptyset/sigaddset
    // initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// pthread_sigmask(SIG_BLOCK, set) for this thread (inherited by threads
/// it spawns); returns the previous mask for [`set_signal_mask`].
pub(crate) fn block_signals(set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: the sets are valid; a zeroed sigset_t is a valid value.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old);
        old
    }
}

/// pthread_sigmask(SIG_SETMASK, mask) for this thread.
pub(crate) fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: the set is valid; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// Whether a signal of `set` is pending for this thread or the process
/// (sigpending(2)); async-signal-safe, cheap enough to poll per frame.
pub(crate) fn signal_pending(set: &libc::sigset_t) -> bool {
    // SAFETY: a zeroed sigset_t is a valid value; sigpending fills it and
    // sigismember only reads the sets.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut pending) != 0 {
            return false;
        }
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .iter()
            .any(|&s| libc::sigismember(set, s) == 1 && libc::sigismember(&pending, s) == 1)
    }
}

/// Takes every pending signal of `set` (blocked in this thread) without
/// waiting; true if there was one.
pub(crate) fn take_pending_signal(set: &libc::sigset_t) -> bool {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut any = false;
    while sigtimedwait(set, &now) > 0 {
        any = true;
    }
    any
}

/// sigtimedwait(2) for a signal of `set`: the signal, or ≤ 0 on timeout.
pub(crate) fn sigtimedwait(set: &libc::sigset_t, timeout: &libc::timespec) -> libc::c_int {
    // SAFETY: set and timeout are valid; no siginfo wanted.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), timeout) }
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors; we own them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// fork(2): the child's pid in the parent, 0 in the child, -1 on error.
///
/// Crate contract: only called after `daemon::single_threaded()` said this
/// process runs one thread, so no lock held by another thread is copied into
/// the child locked.
pub(crate) fn fork() -> libc::pid_t {
    // SAFETY: single-threaded (the contract above); the children only fork
    // again, serve, or _exit.
    unsafe { libc::fork() }
}

/// setsid(2): the forked child leaves the caller's session.
pub(crate) fn setsid() {
    // SAFETY: no memory involved; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
}

/// waitpid(2) on our own child; its status is not needed.
pub(crate) fn wait_child(child: libc::pid_t) {
    let mut status = 0;
    // SAFETY: child is our own child; status is a valid int.
    unsafe { libc::waitpid(child, &mut status, 0) };
}

/// _exit(2): ends a forked child without running the parent's destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// The real uid and gid of this process.
pub(crate) fn uid_gid() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Fixes glibc's mmap threshold at 128 KiB (see `fixed_mmap_threshold`).
pub(crate) fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // serving threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
