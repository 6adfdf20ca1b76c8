//! The operating-system specifics of `vma` that differ between Unix and
//! Windows, in one place, so that every other module is platform-neutral:
//! bytes ⇄ file names, file kinds, duplicating stdin/stdout, creating the
//! output file, positional reads and writes, running a shell command, the
//! stop signals (SIGINT, SIGTERM, SIGHUP) and the signal thread's exit,
//! non-replacing renames, and the daemon plumbing of `vma serve`.
//!
//! This is also where every `unsafe` call of the CLI is: thin wrappers over
//! libc (Unix, `sys/unix.rs`) and windows-sys (Windows, `sys/windows.rs`)
//! calls std does not offer. The crate root denies `unsafe_code`; this module
//! allows it, and each block says why it is sound (`// SAFETY:`). Callers
//! keep the policy (retries, error mapping, what a signal does).
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
mod unix;
#[cfg(unix)]
pub use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Most slices one gathered write takes (Linux IOV_MAX; on Windows the
/// limit of a [`Pending`](crate::writer::Pending) run, written slice by slice).
pub const MAX_IOV: usize = 1024;

/// A time broken down in the local time zone, as `ctime(3)` shows it.
pub struct LocalTime {
    /// 0 = Sunday.
    pub weekday: usize,
    /// 0 = January.
    pub month: usize,
    pub day: i32,
    pub hour: i32,
    pub minute: i32,
    pub second: i32,
    pub year: i64,
}

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

/// The write end of an anonymous pipe as a `File`, which the archive writer
/// and the compressor take (the remote output feeds an upload from the read end).
#[cfg(feature = "remote")]
pub fn pipe_writer_file(wr: io::PipeWriter) -> File {
    #[cfg(unix)]
    return File::from(std::os::fd::OwnedFd::from(wr));
    #[cfg(windows)]
    return File::from(std::os::windows::io::OwnedHandle::from(wr));
}

/// Ends the process at once with `code`: `_exit(2)`, so no atexit handler
/// runs and no stdout buffer is flushed (a blocked thread may hold its lock).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Writes `text` to file descriptor 1 with one `write(2)`, bypassing std's
/// stdout and its lock (which a blocked thread may hold). Best effort.
pub fn write_stdout_raw(text: &[u8]) {
    // SAFETY: write(2) of a valid buffer of that length to fd 1. (`as _`:
    // the length is a size_t on Unix, an unsigned int on Windows.)
    unsafe { libc::write(1, text.as_ptr().cast(), text.len() as _) };
}

/// `strerror(3)` of an errno value.
#[cfg(test)]
pub fn strerror(code: i32) -> String {
    // SAFETY: strerror returns a valid C string (the C library's own table).
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    /// SEEK_DATA/SEEK_HOLE as `vma create` uses them: data, a hole that is
    /// skipped without reading, and a hole running to the end.
    #[test]
    fn data_region_finds_data_and_holes() {
        let path = std::env::temp_dir().join(format!("vma-cli-sys-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let (mib4, size) = (4u64 << 20, 8u64 << 20);
        f.write_all(&[1; 4096]).unwrap();
        f.seek(SeekFrom::Start(mib4)).unwrap();
        f.write_all(&[2; 4096]).unwrap();
        f.set_len(size).unwrap();
        let r = |pos| super::data_region(&f, pos, size).unwrap();
        let first = r(0).expect("the temp dir's file system reports holes");
        assert!(first.0 && (4096..=mib4).contains(&first.1), "{first:?}");
        assert_eq!(r(mib4 - 4096), Some((false, mib4)));
        let second = r(mib4).unwrap();
        assert!(second.0 && second.1 > mib4, "{second:?}");
        assert_eq!(r(size - 4096), Some((false, size)));
        drop(f);
        std::fs::remove_file(&path).unwrap();
    }
}
