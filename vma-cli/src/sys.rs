//! The operating-system specifics of `vma` that differ between Unix and
//! Windows, in one place: bytes ⇄ file names, file kinds, duplicating
//! stdin/stdout, creating the output file, positional reads, running a
//! shell command, and every `unsafe` call of the CLI outside `interrupt`,
//! `json_doc`, `outcome` and `serve` (thin wrappers over libc calls std does
//! not offer: the Unix half). The crate root denies `unsafe_code`; this
//! module allows it, and each block says why it is sound. Callers keep the
//! policy (retries, error mapping). Everything else in the CLI is portable.
//!
//! On Unix a file name is any bytes (what Proxmox's tool works with). On
//! Windows names come from the archive or a map file as bytes too; they are
//! read as UTF-8 (archive names are checked to be UTF-8 already), other
//! bytes replaced, so a name never becomes an invalid path.

use std::ffi::{OsStr, OsString};
use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::path::Path;
use std::process::{ChildStdin, Command};

/// The bytes of an OS string (Unix: the name itself; Windows: its WTF-8
/// form, whose ASCII bytes are the name's ASCII characters, so prefixes such
/// as `exec:` and separators such as `=` are found the same way).
pub fn bytes(s: &OsStr) -> &[u8] {
    s.as_encoded_bytes()
}

/// An OS string from bytes (see the module doc for Windows).
#[cfg(unix)]
pub fn os_string(b: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(b).to_os_string()
}

/// An OS string from bytes (see the module doc for Windows).
#[cfg(not(unix))]
pub fn os_string(b: &[u8]) -> OsString {
    OsString::from(String::from_utf8_lossy(b).into_owned())
}

#[cfg(unix)]
pub use unix::*;
#[cfg(windows)]
pub use windows::*;

/// `sh -c CMD` (Windows: `cmd /C CMD`), for `exec:CMD` outputs.
pub fn shell(cmd: &OsStr) -> Command {
    let (sh, flag) = if cfg!(windows) {
        ("cmd", "/C")
    } else {
        ("sh", "-c")
    };
    let mut c = Command::new(sh);
    c.arg(flag).arg(cmd);
    c
}

#[cfg(unix)]
mod unix {
    use super::*;
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};

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
        let n =
            unsafe { libc::pwritev(f.as_raw_fd(), bufs.as_ptr().cast::<libc::iovec>(), cnt, off) };
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
}

#[cfg(windows)]
mod windows {
    use super::*;
    use std::os::windows::fs::FileExt;
    use std::os::windows::io::{AsHandle, OwnedHandle};

    /// Windows has no FIFOs in the file system.
    pub fn is_fifo(_: &FileType) -> bool {
        false
    }

    /// Raw disks are not opened through a path here.
    pub fn is_block_device(_: &FileType) -> bool {
        false
    }

    /// Standard input as a `File` of its own (ReadFile on the handle: raw
    /// bytes, no text-mode translation).
    pub fn dup_stdin() -> io::Result<File> {
        Ok(File::from(io::stdin().as_handle().try_clone_to_owned()?))
    }

    /// Standard output as a `File` of its own.
    pub fn dup_stdout() -> io::Result<File> {
        Ok(File::from(io::stdout().as_handle().try_clone_to_owned()?))
    }

    /// A child's stdin pipe as a `File`.
    pub fn child_stdin_file(s: ChildStdin) -> File {
        File::from(OwnedHandle::from(s))
    }

    /// Creates `path`, which must not exist, for writing.
    pub fn create_new(path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    /// Marks a new output file sparse (FSCTL_SET_SPARSE), so that ranges
    /// never written are holes on NTFS. Where the file system refuses (FAT,
    /// exFAT, network shares), they are zeros on disk: the same bytes.
    #[allow(unsafe_code)] // DeviceIoControl: std has no wrapper
    pub fn make_sparse(file: &File) {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::System::Ioctl::FSCTL_SET_SPARSE;
        use windows_sys::Win32::System::IO::DeviceIoControl;
        let mut returned = 0u32;
        // SAFETY: a valid handle we own; no input or output buffer (a null
        // input means "set sparse"); a synchronous call (no OVERLAPPED).
        unsafe {
            DeviceIoControl(
                file.as_raw_handle(),
                FSCTL_SET_SPARSE,
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                0,
                &mut returned,
                std::ptr::null_mut(),
            );
        }
    }

    /// Fills `buf` from `pos` of `file` (seek_read; the cursor moves, which
    /// no caller relies on).
    pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_read(buf, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `strerror(3)` of an errno value.
#[cfg(test)]
pub fn strerror(code: i32) -> String {
    // SAFETY: strerror returns a valid C string (the C library's own table).
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned()
}
