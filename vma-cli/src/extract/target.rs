//! The disk outputs of `vma extract`: what a device's bytes are written into.
//!
//! Owns [`Disk`] — a raw file or block device (positional gathered writes,
//! [`crate::writer`]) or a qcow2 image (written through imago) — and
//! [`Pending`], the per-extent batch of device-contiguous data that the
//! restore loop fills and flushes into a [`Disk`].
//!
//! qcow2 comes in two ways:
//! - a new image (`extract --format qcow2`): created empty in
//!   `tmp-disk-<name>.qcow2`; clusters are allocated as the archive's
//!   clusters arrive, in any order; zero clusters are never allocated;
//! - an existing image named by a `-r` map line `format=qcow2:…`, as
//!   qmrestore creates it (`qemu-img create -f qcow2`, also with
//!   `preallocation=metadata`). With write-zero `0` zero blocks are left
//!   alone (they read as zero on a fresh image); with `1` they are made to
//!   read as zero (qcow2 zero clusters, or explicit zeros inside a cluster).
//!   Images with a backing file or an external data file are refused: data
//!   the archive leaves out would show through from elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use imago::io_buffers::IoVector;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, FormatDriverBuilder, StorageOpenOptions, SyncFormatAccess};
use vma_format::Device;

use super::{join_name, lossy, Target};
use crate::input::strerror;
use crate::writer::{self, ZEROS};

/// At most this many slices per gathered write (Linux IOV_MAX; imago hands
/// a contiguous run to one `pwritev`).
const MAX_IOV: usize = 1024;

/// Largest virtual size of a new qcow2 (QEMU's limit for 64 KiB clusters:
/// an L1 table of at most 32 MiB). imago refuses larger sizes too; checking
/// first gives a message naming the device.
const MAX_QCOW2_SIZE: u64 = 1 << 51;

/// Image format of the disks `extract` creates (`--format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Sparse raw file `disk-<name>.raw` (Proxmox's output).
    #[default]
    Raw,
    /// qcow2 image `disk-<name>.qcow2`, written in the same single pass.
    Qcow2,
}

type Qcow2Access = SyncFormatAccess<imago::file::File>;

/// A qcow2 image open for writing.
pub struct Qcow2Disk {
    access: Qcow2Access,
    /// Virtual disk size in bytes.
    size: u64,
}

/// Where the bytes of one device go.
pub enum Disk {
    /// Raw file, block device or `vmstate.bin`.
    Raw(File),
    /// qcow2 image.
    Qcow2(Qcow2Disk),
}

impl Disk {
    /// The file name suffix of this kind of output (`.raw`, `.qcow2`).
    pub fn suffix(&self) -> &'static str {
        match self {
            Disk::Raw(_) => ".raw",
            Disk::Qcow2(_) => ".qcow2",
        }
    }

    /// Writes back what is still cached (qcow2 tables and refcounts); after
    /// this the file on disk is a consistent image. A no-op for raw.
    pub fn finish(&self) -> io::Result<()> {
        match self {
            Disk::Raw(_) => Ok(()),
            Disk::Qcow2(q) => q.access.flush(),
        }
    }

    /// [`Disk::finish`], then `fsync`: what a durable rename needs first.
    pub fn sync_all(&self) -> io::Result<()> {
        match self {
            Disk::Raw(f) => f.sync_all(),
            Disk::Qcow2(q) => {
                q.access.flush()?;
                q.access.sync()
            }
        }
    }

    /// Creates a new, empty qcow2 image of `size` bytes at `path`, which must
    /// not exist (64 KiB clusters, 16-bit refcounts, version 3: what
    /// `qemu-img create -f qcow2` makes).
    /// The file is created through `restore`, which removes it again if
    /// the extract fails or is interrupted.
    pub fn create_qcow2(restore: &crate::outcome::Restore, path: &Path, size: u64) -> Result<Disk> {
        let file = restore
            .create(path, || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
            })
            .map_err(|e| anyhow!("can't create file {} - {}", path.display(), strerror(&e)))?;
        let fail = |e: io::Error| {
            anyhow!(
                "can't create qcow2 image {} ({size} bytes) - {}",
                path.display(),
                strerror(&e)
            )
        };
        let storage = storage(file, path).map_err(fail)?;
        // imago's create is async only; its file storage never waits, so a
        // current-thread runtime just drives it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(fail)?;
        let q = rt
            .block_on(
                Qcow2::<imago::file::File>::create_builder(storage)
                    .size(size)
                    .create_open(imago::DenyImplicitOpenGate::default(), |image| {
                        Ok(Qcow2::<imago::file::File>::builder(image).write(true))
                    }),
            )
            .map_err(fail)?;
        let access = SyncFormatAccess::new(q).map_err(fail)?;
        Ok(Disk::Qcow2(Qcow2Disk { access, size }))
    }

    /// Opens the existing raw file or block device `path` (a `-r` target of
    /// device `name`) for writing; returns it and its size.
    pub fn open_raw(path: &Path, name: &str) -> Result<(Disk, u64)> {
        let mut file = OpenOptions::new().write(true).open(path).map_err(|e| {
            anyhow!(
                "can't open target {} for {name} - {}",
                path.display(),
                strerror(&e)
            )
        })?;
        let meta = file.metadata()?;
        let tsize = if meta.is_file() {
            meta.len()
        } else if crate::sys::is_block_device(&meta.file_type()) {
            file.seek(SeekFrom::End(0))?
        } else {
            bail!(
                "target {} for {name} is not a regular file or block device",
                path.display()
            );
        };
        Ok((Disk::Raw(file), tsize))
    }

    /// Opens the existing qcow2 image `path` (a `-r` target of device
    /// `name`) for writing; returns it and its virtual size.
    pub fn open_qcow2(path: &Path, name: &str) -> Result<(Disk, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                anyhow!(
                    "can't open target {} for {name} - {}",
                    path.display(),
                    strerror(&e)
                )
            })?;
        let bad = |e: io::Error| {
            anyhow!(
                "target {} for {name} is not a usable qcow2 image - {}",
                path.display(),
                strerror(&e)
            )
        };
        let storage = storage(file, path).map_err(bad)?;
        let mut q = Qcow2::<imago::file::File>::open_image_sync(storage, true).map_err(bad)?;
        if let Some(backing) = q.implicit_backing_file() {
            bail!(
                "target {} for {name} has a backing file ({backing}); refusing to restore into it (blocks the archive leaves out would read from the backing file)",
                path.display()
            );
        }
        if q.requires_external_data_file() {
            bail!(
                "target {} for {name} uses an external data file; restoring into such an image is not supported",
                path.display()
            );
        }
        q.set_backing(None);
        q.set_data_file(None);
        let access = SyncFormatAccess::new(q).map_err(bad)?;
        let size = access.size();
        Ok((Disk::Qcow2(Qcow2Disk { access, size }), size))
    }
}

/// `file` as imago's file storage.
fn storage(file: File, path: &Path) -> io::Result<imago::file::File> {
    imago::file::File::from_open_file(file, StorageOpenOptions::new().write(true).filename(path))
}

/// The virtual size of device `d`'s qcow2 image, as QEMU would give it
/// (rounded up to 512, as raw), or an error naming the device when qcow2
/// cannot hold it (checked before anything is created).
pub(super) fn qcow2_size(d: &Device) -> Result<u64> {
    d.size
        .checked_next_multiple_of(512)
        .filter(|&s| s <= MAX_QCOW2_SIZE)
        .ok_or_else(|| {
            anyhow!(
                "can't restore device {} as qcow2: declared size {} bytes exceeds the largest qcow2 image ({MAX_QCOW2_SIZE} bytes)",
                lossy(&d.name),
                d.size
            )
        })
}

/// The output of device `d` for `extract --format qcow2`:
/// `<dir>/tmp-disk-<name>.qcow2`, renamed to `disk-<name>.qcow2` on success.
pub(super) fn new_qcow2_target(
    restore: &crate::outcome::Restore,
    dir: &Path,
    d: &Device,
) -> Result<Target> {
    let size = qcow2_size(d)?;
    let path = join_name(dir, "tmp-disk-", &d.name, ".qcow2");
    let mut out = io::stdout().lock();
    writeln!(out, "DEVINFO {} {}", path.display(), d.size)?;
    out.flush()?;
    let disk = Disk::create_qcow2(restore, &path, size)?;
    Ok(Target {
        dev_id: d.id,
        path,
        out: disk,
        size: d.size,
        limit: d.size,
        write_zero: false,
        rename_to: Some(join_name(dir, "disk-", &d.name, ".qcow2")),
    })
}

/// Device-contiguous data waiting to be written into one [`Disk`]: the
/// slices borrow the extent buffer, so nothing is copied.
#[derive(Default)]
pub struct Pending<'a> {
    raw: writer::Pending<'a>,
    start: u64,
    len: u64,
    bufs: Vec<&'a [u8]>,
}

impl<'a> Pending<'a> {
    /// Queues `data` for device offset `offset`; writes the queued run first
    /// when `data` does not continue it.
    pub fn push(&mut self, disk: &Disk, offset: u64, data: &'a [u8]) -> io::Result<()> {
        let q = match disk {
            Disk::Raw(f) => return self.raw.push(f, offset, data),
            Disk::Qcow2(q) => q,
        };
        if data.is_empty() {
            return Ok(());
        }
        if !self.bufs.is_empty() && (offset != self.start + self.len || self.bufs.len() == MAX_IOV)
        {
            self.flush_qcow2(q)?;
        }
        if self.bufs.is_empty() {
            self.start = offset;
        }
        self.len += data.len() as u64;
        self.bufs.push(data);
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zero. Raw: explicit zeros
    /// (a block device or a reused file may hold old data). qcow2: whole
    /// clusters become zero clusters (no data written), partial ones are
    /// zeroed in place unless they already read as zero (imago's
    /// `write_zeroes`).
    pub fn push_zeros(&mut self, disk: &Disk, mut offset: u64, mut len: u64) -> io::Result<()> {
        match disk {
            Disk::Raw(f) => {
                while len > 0 {
                    let n = len.min(ZEROS.len() as u64);
                    self.raw.push(f, offset, &ZEROS[..n as usize])?;
                    offset += n;
                    len -= n;
                }
                Ok(())
            }
            // The range never overlaps queued data, so order does not matter.
            Disk::Qcow2(q) => q.access.write_zeroes(offset, len).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing zeros to {len} bytes at offset {offset} failed: {e}"),
                )
            }),
        }
    }

    /// Writes the queued run.
    pub fn flush(&mut self, disk: &Disk) -> io::Result<()> {
        match disk {
            Disk::Raw(f) => self.raw.flush(f),
            Disk::Qcow2(q) => self.flush_qcow2(q),
        }
    }

    fn flush_qcow2(&mut self, q: &Qcow2Disk) -> io::Result<()> {
        if self.bufs.is_empty() {
            return Ok(());
        }
        let mut v = IoVector::with_capacity(self.bufs.len());
        for b in self.bufs.drain(..) {
            v.push(b);
        }
        let (start, len) = (self.start, std::mem::take(&mut self.len));
        q.access.writev(v, start).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "write of {len} bytes at offset {start} failed: {e} (image size {})",
                    q.size
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("vma-cli-target-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn read_qcow2(path: &Path, len: usize) -> Vec<u8> {
        let q = Qcow2::<imago::file::File>::builder_path(path)
            .write(false)
            .open_sync(imago::PermissiveImplicitOpenGate::default())
            .unwrap();
        let a = SyncFormatAccess::new(q).unwrap();
        let mut buf = vec![0u8; len];
        a.read(&mut buf[..], 0).unwrap();
        buf
    }

    /// Runs written in reverse order, a zeroed cluster and a partial zero
    /// range read back as written; the untouched cluster reads as zero.
    #[test]
    fn qcow2_accepts_any_order_and_zeros() {
        let dir = tmpdir("order");
        let restore = crate::outcome::Restore::create_dir(&dir.join("o"), false, false).unwrap();
        let path = dir.join("o").join("t.qcow2");
        let size = 5 * 65536 + 512;
        let disk = Disk::create_qcow2(&restore, &path, size).unwrap();
        assert_eq!(disk.suffix(), ".qcow2");
        let a = vec![0xaau8; 65536];
        let b = vec![0xbbu8; 8192];
        let tail = vec![0xccu8; 512];
        let mut p = Pending::default();
        p.push(&disk, 5 * 65536, &tail).unwrap();
        p.flush(&disk).unwrap();
        p.push(&disk, 3 * 65536 + 4096, &b).unwrap();
        p.push(&disk, 0, &a).unwrap(); // not contiguous: flushes b first
        p.push(&disk, 65536, &a).unwrap();
        p.flush(&disk).unwrap();
        // Zeros over a whole data cluster and over one block of another.
        p.push_zeros(&disk, 65536, 65536).unwrap();
        p.push_zeros(&disk, 3 * 65536 + 8192, 4096).unwrap();
        disk.sync_all().unwrap();
        drop(disk);
        restore.succeeded();
        let got = read_qcow2(&path, size as usize);
        let mut want = vec![0u8; size as usize];
        want[..65536].fill(0xaa);
        want[3 * 65536 + 4096..3 * 65536 + 8192].fill(0xbb);
        want[5 * 65536..].fill(0xcc);
        assert!(got == want, "content differs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_refuses_an_existing_file_and_open_refuses_non_qcow2() {
        let dir = tmpdir("refuse");
        let restore = crate::outcome::Restore::create_dir(&dir.join("o"), false, false).unwrap();
        let path = dir.join("o").join("x");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let e = Disk::create_qcow2(&restore, &path, 65536)
            .err()
            .unwrap()
            .to_string();
        restore.succeeded();
        assert!(e.starts_with("can't create file"), "{e}");
        let e = Disk::open_qcow2(&path, "drive-scsi0")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not a usable qcow2 image"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
