//! Every `unsafe` call of the CLI: thin wrappers over libc calls that std
//! does not offer. The crate root denies `unsafe_code`; only this module
//! allows it, and each block says why it is sound. Callers keep the policy
//! (retries, error mapping).

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

extern "C" {
    // glibc's tzset; not exported by the libc crate.
    fn tzset();
}

/// `fcntl(F_SETPIPE_SZ)`: asks for a pipe buffer of `size` bytes; the
/// result (not a pipe, limit reached) is ignored by design.
pub fn set_pipe_size(f: &File, size: libc::c_int) {
    // SAFETY: fcntl on a valid, owned fd with an integer argument.
    unsafe {
        libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, size);
    }
}

/// `lseek(2)` with any `whence` (std's `Seek` has no SEEK_DATA/SEEK_HOLE).
pub fn lseek(f: &File, off: libc::off_t, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// One `pwritev(2)` of `bufs` at `off`; the bytes written.
pub fn pwritev(f: &File, bufs: &[IoSlice<'_>], off: libc::off_t) -> io::Result<usize> {
    let cnt = libc::c_int::try_from(bufs.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: IoSlice is ABI-compatible with iovec on Unix (std guarantees
    // it); the slices outlive the call; cnt ≤ bufs.len(); fd is valid.
    let n = unsafe { libc::pwritev(f.as_raw_fd(), bufs.as_ptr().cast::<libc::iovec>(), cnt, off) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `localtime_r(3)` after `tzset(3)` (so `TZ` is honoured); `None` when the
/// time is out of range.
pub fn localtime(t: libc::time_t) -> Option<libc::tm> {
    // SAFETY: tzset has no preconditions; localtime_r writes only into `tm`,
    // a zeroed libc::tm being a valid value of that plain C struct.
    unsafe {
        tzset();
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
    }
}

/// Installs `handler` for `signals`, reset to the default after its first
/// delivery (SA_RESETHAND). The handler must be async-signal-safe.
pub fn on_signals_once(signals: &[libc::c_int], handler: extern "C" fn(libc::c_int)) {
    for &sig in signals {
        // SAFETY: a zeroed sigaction is valid; the caller's handler is
        // async-signal-safe (documented contract of this function).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// `strerror(3)` of an errno value.
#[cfg(test)]
pub fn strerror(code: i32) -> String {
    // SAFETY: strerror returns a valid C string (glibc's own table).
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned()
}
