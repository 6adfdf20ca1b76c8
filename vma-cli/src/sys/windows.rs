//! The Windows half of [`crate::sys`].

use super::*;
use std::io::IoSlice;
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

/// Pipe buffer sizes are Linux's (`F_SETPIPE_SZ`): nothing to do here.
pub fn set_pipe_size(_: &File, _: i32) {}

/// Marks a new output file sparse (FSCTL_SET_SPARSE), so that ranges
/// never written are holes on NTFS. Where the file system refuses (FAT,
/// exFAT, network shares), they are zeros on disk: the same bytes.
/// (DeviceIoControl: std has no wrapper.)
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

/// Writes all of `bufs` at `offset`: Windows has no gathered positional
/// write, so one `seek_write` per slice (runs are still one per extent).
pub fn pwritev_all(file: &File, bufs: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    for b in bufs.iter() {
        let mut b: &[u8] = b;
        while !b.is_empty() {
            match file.seek_write(b, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    offset += n as u64;
                    b = &b[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
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

/// Windows has none of the stop signals (see `interrupt`): nothing to wait
/// for, and Ctrl-C ends the process the default way.
pub fn on_stop_signal(_name: &str, _f: impl FnOnce() + Send + 'static) {}

/// No stop signals on Windows: the flag stays false.
pub fn flag_on_stop_signals(_flag: &'static std::sync::atomic::AtomicBool) {}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
/// Windows has no RENAME_NOREPLACE here, and `std::fs::rename` replaces (it
/// is MoveFileExW with MOVEFILE_REPLACE_EXISTING), so `to` is checked to be
/// absent first, then renamed; no hard link (FAT has none). Between the
/// check and the rename another process could create `to`: extract's names
/// are in a directory it created itself, so that is accepted.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(to) {
        Ok(_) => return Err(io::ErrorKind::AlreadyExists.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::rename(from, to)
}

/// Nothing: a directory cannot be opened as a file to flush it here, and
/// NTFS journals the renames itself.
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// `t` in Windows' local time zone (the system's setting; `TZ` is not
/// read); `None` when out of range.
pub fn local_time(t: i64) -> Option<LocalTime> {
    let utc = time::OffsetDateTime::from_unix_timestamp(t).ok()?;
    let offset = time::UtcOffset::local_offset_at(utc).unwrap_or(time::UtcOffset::UTC);
    let tm = utc.checked_to_offset(offset)?;
    Some(LocalTime {
        weekday: usize::from(tm.weekday().number_days_from_sunday()),
        month: usize::from(u8::from(tm.month()) - 1),
        day: i32::from(tm.day()),
        hour: i32::from(tm.hour()),
        minute: i32::from(tm.minute()),
        second: i32::from(tm.second()),
        year: i64::from(tm.year()),
    })
}

/// No `SEEK_DATA` here: the caller reads everything (see the Unix half).
pub fn data_region(_file: &File, _pos: u64, _size: u64) -> io::Result<Option<(bool, u64)>> {
    Ok(None)
}
