//! Every `unsafe` call of vma-seekable: the OS calls std has no wrapper for
//! (statvfs, or GetDiskFreeSpaceExW on Windows; setpriority;
//! sync_file_range) here, and the zlib binding in [`zlib`]. The crate root
//! denies `unsafe_code`; only this module allows it, and each block says why
//! it is sound.

pub(crate) mod zlib;

use std::fs::File;
use std::path::Path;

/// Lowers the calling thread's scheduling priority to the minimum (Linux:
/// nice is per thread), so that compression only takes CPU the decoder and
/// the writer leave: their work bounds the pass; compression is optional.
pub(crate) fn low_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority only read and set this thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Starts writeback of `len` bytes of `file` from `off`, without waiting
/// for it, so that the allocation and submission of about a GiB of dirty
/// cache overlaps the decoding instead of piling up behind it (the publishing
/// rename no longer replaces a file, which made ext4 flush it all at once).
/// Errors are ignored: this is only a hint.
pub(crate) fn start_writeback(file: &File, off: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is valid for the duration of the call.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, off, len);
}

/// Bytes an unprivileged user may still write on the filesystem of `dir`.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is NUL-terminated; st is written by statvfs before it is read.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Bytes the caller may still write on the volume of `dir`.
#[cfg(windows)]
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
    // An empty parent means the current directory, which a null name asks for.
    let wide: Vec<u16> = dir.as_os_str().encode_wide().chain([0]).collect();
    let name = if dir.as_os_str().is_empty() {
        std::ptr::null()
    } else {
        wide.as_ptr()
    };
    let mut avail = 0u64;
    // SAFETY: name is null or a NUL-terminated wide string that outlives the
    // call; the out-pointers are valid or null as the API allows.
    let ok = unsafe {
        GetDiskFreeSpaceExW(name, &mut avail, std::ptr::null_mut(), std::ptr::null_mut())
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(avail)
}
