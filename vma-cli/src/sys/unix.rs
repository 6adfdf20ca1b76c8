//! The Unix half of [`crate::sys`]: libc calls, each with its `// SAFETY:`.

use super::*;
use std::ffi::CString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

extern "C" {
    // glibc's tzset; not exported by the libc crate.
    fn tzset();
}

/// `fcntl(F_SETPIPE_SZ)`: asks for a pipe buffer of `size` bytes; the
/// result (not a pipe, limit reached) is ignored by design.
pub fn set_pipe_size(f: &File, size: i32) {
    // SAFETY: fcntl on a valid, owned fd with an integer argument.
    unsafe {
        libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, size);
    }
}

/// `lseek(2)` with any `whence` (std's `Seek` has no SEEK_DATA/SEEK_HOLE).
fn lseek(f: &File, off: libc::off_t, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Whether `pos` of `file` (`size` bytes) is data or hole, and where that
/// region ends: `SEEK_DATA`/`SEEK_HOLE`. `None` when the file system cannot
/// tell (EINVAL, EOPNOTSUPP).
pub fn data_region(file: &File, pos: u64, size: u64) -> io::Result<Option<(bool, u64)>> {
    let seek = |whence| -> io::Result<Option<u64>> {
        let off =
            libc::off_t::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match lseek(file, off, whence) {
            Ok(r) => Ok(Some(r)),
            // ENXIO: no data (or no hole) at or after `pos`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(e),
        }
    };
    match seek(libc::SEEK_DATA) {
        Ok(None) => Ok(Some((false, size))),
        Ok(Some(d)) if d > pos => Ok(Some((false, d.min(size)))),
        Ok(Some(_)) => {
            let h = seek(libc::SEEK_HOLE)?.unwrap_or(size);
            Ok(Some((true, h.clamp(pos + 1, size))))
        }
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One `pwritev(2)` of `bufs` at `off`; the bytes written.
fn pwritev(f: &File, bufs: &[IoSlice<'_>], off: libc::off_t) -> io::Result<usize> {
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

/// Writes all of `bufs` at `offset`, retrying short writes.
pub fn pwritev_all(file: &File, mut bufs: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    while !bufs.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let cnt = bufs.len().min(super::MAX_IOV);
        let n = match pwritev(file, &bufs[..cnt], off) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut bufs, n as usize);
    }
    Ok(())
}

/// `localtime_r(3)` after `tzset(3)` (so `TZ` is honoured); `None` when the
/// time is out of range.
pub fn local_time(t: i64) -> Option<LocalTime> {
    // `&t` is taken as a `*const time_t`: i64 on the 64-bit targets we
    // build for (a target where it is not fails to compile here). The alias
    // is not named: libc deprecates it on musl.
    // SAFETY: tzset has no preconditions; localtime_r writes only into `tm`,
    // a zeroed libc::tm being a valid value of that plain C struct.
    let tm = unsafe {
        tzset();
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
    }?;
    Some(LocalTime {
        weekday: usize::try_from(tm.tm_wday).ok()?,
        month: usize::try_from(tm.tm_mon).ok()?,
        day: tm.tm_mday,
        hour: tm.tm_hour,
        minute: tm.tm_min,
        second: tm.tm_sec,
        year: i64::from(tm.tm_year) + 1900,
    })
}

/// A FIFO (named pipe)?
pub fn is_fifo(ft: &FileType) -> bool {
    ft.is_fifo()
}

/// A block device?
pub fn is_block_device(ft: &FileType) -> bool {
    ft.is_block_device()
}

/// Standard input as a `File` of its own (unbuffered: large reads go
/// straight to the kernel, no 8 KiB StdinLock buffer, no copy).
pub fn dup_stdin() -> io::Result<File> {
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

/// Standard output as a `File` of its own.
pub fn dup_stdout() -> io::Result<File> {
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

/// A child's stdin pipe as a `File`.
pub fn child_stdin_file(s: ChildStdin) -> File {
    File::from(OwnedFd::from(s))
}

/// Creates `path`, which must not exist, for writing (mode 0644 before
/// the umask, as Proxmox's tool creates its archives).
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
}

/// Files are sparse already: ranges never written are holes.
pub fn make_sparse(_: &File) {}

/// Fills `buf` from `pos` of `file` (pread: no shared cursor moves).
pub fn read_exact_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
    file.read_exact_at(buf, pos)
}

/// The signals that stop every command: SIGINT, SIGTERM, SIGHUP.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The set of [`STOP_SIGNALS`].
fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid value; sigemptyset/sigaddset
    // initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// pthread_sigmask(how, set) for the calling thread (and the threads it
/// spawns from now on).
fn sigmask(how: libc::c_int, set: &libc::sigset_t) {
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
}

/// Blocks the stop signals in this thread and starts a thread (`name`) that
/// waits for them with sigwait(2); on the first one it unblocks them in
/// itself (a second signal then takes the default action: terminate) and
/// runs `f`. Call it before spawning other threads, so that they inherit the
/// blocked mask. If no thread can be started, the mask is restored and the
/// signals act the default way.
pub fn on_stop_signal(name: &str, f: impl FnOnce() + Send + 'static) {
    let set = stop_signal_set();
    sigmask(libc::SIG_BLOCK, &set);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: valid set and out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                sigmask(libc::SIG_UNBLOCK, &set);
                f();
                return;
            }
        });
    if spawned.is_err() {
        sigmask(libc::SIG_UNBLOCK, &set);
    }
}

/// The flag [`flag_on_stop_signals`]'s handler sets.
static STOP_FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

/// Makes the stop signals set `flag` (and nothing else); the handler resets
/// itself (SA_RESETHAND), so a second signal kills the process the default
/// way. For a command that polls the flag and unwinds by itself.
pub fn flag_on_stop_signals(flag: &'static AtomicBool) {
    extern "C" fn handler(_sig: libc::c_int) {
        // Only atomic loads and stores: async-signal-safe.
        let flag = STOP_FLAG.load(Ordering::SeqCst);
        // SAFETY: null, or the `&'static AtomicBool` stored below.
        if let Some(flag) = unsafe { flag.as_ref() } {
            flag.store(true, Ordering::SeqCst);
        }
    }
    STOP_FLAG.store(std::ptr::from_ref(flag).cast_mut(), Ordering::SeqCst);
    for sig in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction is valid; the handler above is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing `to`:
/// `renameat2(RENAME_NOREPLACE)`, or link + unlink on file systems without it.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (c_path(from)?, c_path(to)?);
    // The raw system call, not libc's wrapper: musl (the static build) has
    // no renameat2() symbol.
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            // link(2) never replaces either.
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Makes the entries of directory `dir` durable (fsync of the directory).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
