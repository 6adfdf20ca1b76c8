//! [`MemoryExport`]: a writable export held in memory, for tests, fuzzing and
//! examples. Block status is derived from content: an all-zero 4 KiB block
//! is reported as a hole that reads as zeros.

use std::io;
use std::sync::RwLock;

use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::{Export, Extent};

const BLOCK: u64 = 4096;

/// A writable in-memory disk.
#[derive(Debug)]
pub struct MemoryExport {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemoryExport {
    /// `size` zero bytes, writable.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size], false)
    }

    /// The given content.
    pub fn from_vec(data: Vec<u8>, read_only: bool) -> Self {
        MemoryExport {
            data: RwLock::new(data),
            read_only,
        }
    }

    /// A copy of the current content.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok((offset as usize, end as usize)),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (s, e) = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read().unwrap_or_else(|e| e.into_inner())[s..e]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let (s, e) = self.range(offset, data.len() as u64)?;
        self.data.write().unwrap_or_else(|e| e.into_inner())[s..e].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _punch: bool, _fua: bool) -> io::Result<()> {
        let (s, e) = self.range(offset, len)?;
        self.data.write().unwrap_or_else(|e| e.into_inner())[s..e].fill(0);
        Ok(())
    }
    fn fast_zero(&self) -> bool {
        true
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true, false)
    }
    fn block_status(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<Extent>> {
        let (s, e) = self.range(offset, len)?;
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = s as u64;
        while pos < e as u64 {
            let end = ((pos / BLOCK + 1) * BLOCK).min(e as u64);
            let zero = data[pos as usize..end as usize].iter().all(|&b| b == 0);
            let flags = if zero { STATE_HOLE | STATE_ZERO } else { 0 };
            let n = out.len();
            match out.last_mut() {
                Some(l) if l.flags == flags => l.length += end - pos,
                _ if n == max => break,
                _ => out.push(Extent {
                    length: end - pos,
                    flags,
                }),
            }
            pos = end;
        }
        Ok(out)
    }
}
