//! [`Disk`]: one device of an [`IndexedReader`] as a file-like handle.
//!
//! Owns the cursor and the `std::io` adapters; every byte still comes from
//! [`IndexedReader::read`], so zero blocks and absent clusters read as zeros
//! and errors name the archive offset.

use std::io::{self, Read, Seek, SeekFrom};

use super::{IndexedReader, ReadAt};
use crate::error::{Error, Name, Result};

/// One disk of an archive: [`Read`] and [`Seek`] over a cursor, and
/// positional reads ([`Disk::read_at_offset`], [`ReadAt`]) that leave the cursor
/// alone. Made by [`IndexedReader::disk`] or [`IndexedReader::disk_by_name`];
/// handles borrow the reader and any number may be used at once.
#[derive(Clone)]
pub struct Disk<'a, S> {
    reader: &'a IndexedReader<S>,
    id: u8,
    size: u64,
    pos: u64,
}

impl<S: ReadAt> IndexedReader<S> {
    /// The device with this dev_id as a [`Disk`]; [`Error::NoSuchDevice`] if
    /// the archive has none.
    pub fn disk(&self, dev_id: u8) -> Result<Disk<'_, S>> {
        let d = self
            .header()
            .device(dev_id)
            .ok_or(Error::NoSuchDevice { dev_id })?;
        Ok(Disk {
            reader: self,
            id: d.id,
            size: d.size,
            pos: 0,
        })
    }

    /// The device with this name (as in the header, e.g. `drive-scsi0`) as a
    /// [`Disk`]; [`Error::NoSuchDeviceName`] if the archive has none.
    pub fn disk_by_name(&self, name: &str) -> Result<Disk<'_, S>> {
        let d = self
            .header()
            .device_by_name(name.as_bytes())
            .ok_or_else(|| Error::NoSuchDeviceName {
                name: Name(name.as_bytes().to_vec()),
            })?;
        self.disk(d.id)
    }
}

impl<S: ReadAt> Disk<'_, S> {
    /// The device's dev_id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The device's size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Always false: a VMA device has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the device
    /// end, 0 at or past it) without moving the cursor.
    pub fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.reader.read(self.id, offset, buf)
    }
}

impl<S: ReadAt> Read for Disk<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .reader
            .read(self.id, self.pos, buf)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: ReadAt> Seek for Disk<'_, S> {
    /// As for a file: seeking past the end is allowed (reads there return 0),
    /// before the start is an error.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(n) => (n, 0),
            SeekFrom::End(d) => (self.size, d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        Ok(self.pos)
    }
}

impl<S: ReadAt> ReadAt for Disk<'_, S> {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Disk::read_at_offset(self, offset, buf).map_err(io::Error::other)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriterBuilder;

    /// An archive with disk `a` (3 clusters + 100 bytes; cluster 1 stored
    /// with a pattern, the rest zero) and disk `b` (4 KiB of 7s).
    fn archive() -> (Vec<u8>, Vec<u8>) {
        let size_a = 3 * 65536 + 100;
        let mut wb = WriterBuilder::new();
        let a = wb.add_device("a", size_a).unwrap();
        let b = wb.add_device("b", 4096).unwrap();
        let w = wb.build(Vec::new()).unwrap();
        let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
        // Every cluster is written; zero ones are not stored.
        w.write_cluster(a, 0, &[0u8; 65536]).unwrap();
        w.write_cluster(a, 1, &pattern).unwrap();
        w.write_cluster(a, 2, &[0u8; 65536]).unwrap();
        w.write_cluster(a, 3, &[0u8; 100]).unwrap();
        // A device's last cluster holds only what is left of it.
        w.write_cluster(b, 0, &[7u8; 4096]).unwrap();
        let (out, _) = w.finish().unwrap();
        let mut disk_a = vec![0u8; size_a as usize];
        disk_a[65536..131072].copy_from_slice(&pattern);
        (out, disk_a)
    }

    #[test]
    fn read_seek_and_positional_reads_match_the_disk() {
        let (bytes, want) = archive();
        let r = IndexedReader::open(bytes).unwrap();
        let mut d = r.disk_by_name("a").unwrap();
        assert_eq!((d.id(), d.len()), (1, want.len() as u64));
        let mut all = Vec::new();
        d.read_to_end(&mut all).unwrap();
        assert_eq!(all, want);
        // The cursor: from the end, then relative; past the end reads 0.
        assert_eq!(
            d.seek(SeekFrom::End(-150)).unwrap(),
            want.len() as u64 - 150
        );
        let mut b = [0u8; 100];
        d.read_exact(&mut b).unwrap();
        assert_eq!(b[..], want[want.len() - 150..want.len() - 50]);
        assert_eq!(
            d.seek(SeekFrom::Current(10)).unwrap(),
            want.len() as u64 - 40
        );
        assert_eq!(d.read(&mut b).unwrap(), 40);
        assert_eq!(d.seek(SeekFrom::Start(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(d.read(&mut b).unwrap(), 0);
        assert!(d.seek(SeekFrom::Current(1)).is_err());
        assert!(d.seek(SeekFrom::End(-(want.len() as i64) - 1)).is_err());
        // Positional reads leave the cursor alone; across the stored cluster's edge.
        d.seek(SeekFrom::Start(5)).unwrap();
        let mut p = [0u8; 4096];
        assert_eq!(d.read_at_offset(65536 - 2048, &mut p).unwrap(), 4096);
        assert_eq!(p[..], want[65536 - 2048..65536 + 2048]);
        assert_eq!(ReadAt::read_full_at(&d, 131072 - 10, &mut p).unwrap(), 4096);
        assert_eq!(p[..], want[131072 - 10..131072 + 4086]);
        assert_eq!(d.stream_position().unwrap(), 5);
        // The other disk, by id.
        let mut b = Vec::new();
        r.disk(2).unwrap().read_to_end(&mut b).unwrap();
        assert_eq!(b, vec![7u8; 4096]);
    }

    #[test]
    fn unknown_disks_are_errors_naming_them() {
        let (bytes, _) = archive();
        let r = IndexedReader::open(bytes).unwrap();
        let e = r.disk(3).err().unwrap().to_string();
        assert_eq!(e, "no device with dev id 3");
        let e = r.disk_by_name("drive-scsi9").err().unwrap().to_string();
        assert_eq!(e, "no device named 'drive-scsi9'");
    }
}
