//! Positional, gathered writes of device data.
//!
//! A [`Pending`] collects byte slices that are contiguous on the target
//! device (runs of stored blocks, possibly from several clusters of one
//! extent, plus explicit zeros for `write-zero` targets) and writes them with
//! one `pwritev(2)`: no per-block syscalls and no copy out of the extent
//! buffer. Non-contiguous data starts a new run.

use std::fs::File;
use std::io::{self, IoSlice};

use crate::sys::pwritev_all;

/// At most this many slices per `pwritev` (Linux IOV_MAX).
const MAX_IOV: usize = crate::sys::MAX_IOV;

/// 64 KiB of zeros for explicit zero writes.
pub static ZEROS: [u8; 65536] = [0; 65536];

/// One run of device-contiguous data waiting to be written.
#[derive(Default)]
pub struct Pending<'a> {
    start: u64,
    len: u64,
    bufs: Vec<IoSlice<'a>>,
}

impl<'a> Pending<'a> {
    /// Queues `data` for device offset `offset`; writes the queued run first
    /// when `data` does not continue it.
    pub fn push(&mut self, file: &File, offset: u64, data: &'a [u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.bufs.is_empty() && (offset != self.start + self.len || self.bufs.len() == MAX_IOV)
        {
            self.flush(file)?;
        }
        if self.bufs.is_empty() {
            self.start = offset;
        }
        self.len += data.len() as u64;
        self.bufs.push(IoSlice::new(data));
        Ok(())
    }

    /// Writes the queued run.
    pub fn flush(&mut self, file: &File) -> io::Result<()> {
        if self.bufs.is_empty() {
            return Ok(());
        }
        let r = pwritev_all(file, &mut self.bufs, self.start).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "write of {} bytes at offset {} failed: {e}",
                    self.len, self.start
                ),
            )
        });
        self.bufs.clear();
        self.len = 0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn coalesces_and_splits() {
        let mut f = tempfile_in_target();
        let a = vec![1u8; 4096];
        let b = vec![2u8; 8192];
        let c = vec![3u8; 100];
        {
            let mut p = Pending::default();
            p.push(&f, 0, &a).unwrap();
            p.push(&f, 4096, &b).unwrap();
            p.push(&f, 20000, &c).unwrap();
            p.push(&f, 20100, &ZEROS[..10]).unwrap();
            p.flush(&f).unwrap();
        }
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 20110);
        assert!(got[..4096].iter().all(|&x| x == 1));
        assert!(got[4096..12288].iter().all(|&x| x == 2));
        assert!(got[12288..20000].iter().all(|&x| x == 0));
        assert!(got[20000..20100].iter().all(|&x| x == 3));
    }

    fn tempfile_in_target() -> File {
        let dir = std::env::temp_dir().join(format!("vma-cli-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f
    }
}
