//! Device sources for `vma create`: what a `-d format=FMT:NAME=PATH` opens.
//!
//! Owns the [`Source`] trait and its three kinds: raw files and block devices
//! (holes found with `SEEK_DATA`/`SEEK_HOLE`), qcow2 read natively through
//! imago, and any other format QEMU knows, read through a `qemu-nbd` that
//! vma starts itself (`crate::nbd_client::QemuNbdSource`: no temporary
//! copy). NBD URIs (pull mode) are read with `crate::nbd_client` too.
//! Also [`probe_format`], QEMU's format probe for the legacy `[NAME=]PATH` form.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where the data of a device comes from.
pub trait Source: Send {
    /// Size in bytes as the source reports it (before rounding up to 512).
    fn size(&self) -> u64;

    /// From `pos` (< size), whether the bytes up to the returned end are data
    /// (`true`) or known to read as zero (`false`). The end is > `pos`.
    fn region(&mut self, pos: u64) -> io::Result<(bool, u64)>;

    /// Fills `buf` from `pos`; `pos + buf.len()` never exceeds [`Source::size`].
    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()>;
}

/// A raw image file or block device.
pub struct RawSource {
    file: File,
    size: u64,
    /// [`crate::sys::data_region`] works here (false once the file system
    /// refused it).
    seek_data: bool,
}

impl RawSource {
    /// Opens a regular file or block device read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path)
            .with_context(|| format!("can't open device source {}", path.display()))?;
        let ft = file
            .metadata()
            .with_context(|| format!("can't stat {}", path.display()))?
            .file_type();
        if !(ft.is_file() || crate::sys::is_block_device(&ft)) {
            bail!(
                "{} is neither a regular file nor a block device",
                path.display()
            );
        }
        // Seeking to the end gives a block device's size too (as BLKGETSIZE64 would).
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("can't get the size of {}", path.display()))?;
        Ok(RawSource {
            file,
            size,
            // Until the file system says it cannot tell (Windows: always),
            // then every byte is read (zeros are still left out of the
            // archive, found by content).
            seek_data: ft.is_file(),
        })
    }
}

impl Source for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn region(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        if self.seek_data {
            match crate::sys::data_region(&self.file, pos, self.size)? {
                Some(r) => return Ok(r),
                None => self.seek_data = false,
            }
        }
        Ok((true, self.size))
    }

    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        crate::sys::read_exact_at(&self.file, buf, pos).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!(
                        "source ended early (shrunk while reading?) before offset {}",
                        pos + buf.len() as u64
                    ),
                )
            } else {
                e
            }
        })
    }
}

type Qcow2Access = imago::SyncFormatAccess<imago::file::File>;

/// A qcow2 image, read with imago (backing files are followed, as QEMU does).
pub struct Qcow2Source {
    access: Qcow2Access,
    size: u64,
}

impl Qcow2Source {
    /// Opens a qcow2 image read-only.
    pub fn open(path: &Path) -> Result<Self> {
        use imago::FormatDriverBuilder;
        let q = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
            .write(false)
            .open_sync(imago::PermissiveImplicitOpenGate::default())
            .with_context(|| format!("can't open {} as qcow2", path.display()))?;
        let access = imago::SyncFormatAccess::new(q)
            .with_context(|| format!("can't open {} as qcow2", path.display()))?;
        let size = access.size();
        Ok(Qcow2Source { access, size })
    }
}

impl Source for Qcow2Source {
    fn size(&self) -> u64 {
        self.size
    }

    fn region(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        let (mapping, len) = self.access.get_mapping_sync(pos, self.size - pos)?;
        let end = (pos + len).clamp(pos + 1, self.size);
        Ok(match mapping {
            imago::Mapping::Zero { .. } => (false, end),
            imago::Mapping::Eof { .. } => (false, self.size),
            _ => (true, end),
        })
    }

    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.access.read(buf, pos)
    }
}

/// Whether `fmt` is a plausible QEMU driver name (it goes on qemu-img's command line).
fn valid_format_name(fmt: &str) -> bool {
    !fmt.is_empty()
        && fmt.len() <= 32
        && fmt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !fmt.starts_with('-')
}

/// Whether `qemu-img` can be run.
fn qemu_img_available() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Refuses encrypted qcow2 images (header field crypt_method at byte 32):
/// without the key there is nothing meaningful to archive.
fn refuse_encrypted_qcow2(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("can't open {}", path.display()))?;
    let mut h = [0u8; 36];
    crate::sys::read_exact_at(&f, &mut h, 0)
        .with_context(|| format!("{} is too short for a qcow2 header", path.display()))?;
    if h[..4] != *b"QFI\xfb" {
        bail!("{} is not a qcow2 image (bad magic)", path.display());
    }
    if u32::from_be_bytes([h[32], h[33], h[34], h[35]]) != 0 {
        bail!(
            "{} is an encrypted qcow2 image; decrypt it first (qemu-img convert with --object secret)",
            path.display()
        );
    }
    Ok(())
}

/// The image format of `path` as QEMU's probe would name it (what Proxmox's
/// `vma create OUT [NAME=]PATH` gets, since it opens the image without a
/// format): `None` for raw, i.e. no known magic, or when the file cannot
/// be read (opening it then reports the error).
///
/// The magics are those of QEMU's `bdrv_probe` drivers for the formats
/// `qemu-img` writes: qcow/qcow2, qed, vmdk (sparse extent or text
/// descriptor), vdi, vhdx, vpc (VHD with its footer copy at the start),
/// parallels and LUKS.
pub fn probe_format(path: &Path) -> Option<&'static str> {
    let f = File::open(path).ok()?;
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match (&f).read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    probe_bytes(&head[..n])
}

/// [`probe_format`] on the first bytes (up to 512) of an image.
fn probe_bytes(h: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| h.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        // Header version 1 is the old qcow format, 2 and 3 qcow2.
        let version = h
            .get(4..8)
            .map(|v| u32::from_be_bytes(v.try_into().expect("4")));
        return Some(if version == Some(1) { "qcow" } else { "qcow2" });
    }
    if at(0, b"QED\0") {
        return Some("qed");
    }
    if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        return Some("vmdk");
    }
    if at(64, &0xbeda_107fu32.to_le_bytes()) {
        return Some("vdi");
    }
    if at(0, b"vhdxfile") {
        return Some("vhdx");
    }
    if at(0, b"conectix") {
        return Some("vpc");
    }
    if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        return Some("parallels");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("luks");
    }
    None
}

/// Opens `path` as format `fmt`. Formats other than raw and qcow2 are read
/// through qemu-nbd. (`_tmp_dir` is no longer needed: nothing is converted.)
pub fn open(fmt: &str, path: &Path, _tmp_dir: &Path, verbose: bool) -> Result<Box<dyn Source>> {
    // Pull mode: an NBD export (libvirt, Proxmox's backup provider, qemu-nbd).
    #[cfg(unix)]
    if let Some(uri) = path.to_str().filter(|p| crate::nbd_client::Uri::is_nbd(p)) {
        if fmt != "raw" {
            bail!("an NBD export is read as raw data: use format=raw (the server decodes the image format)");
        }
        return Ok(Box::new(crate::nbd_client::NbdSource::open(uri)?));
    }
    if !path.exists() {
        bail!(
            "can't open device source {} - No such file or directory",
            path.display()
        );
    }
    match fmt {
        "raw" => Ok(Box::new(RawSource::open(path)?)),
        "qcow2" => {
            refuse_encrypted_qcow2(path)?;
            match Qcow2Source::open(path) {
                Ok(q) => Ok(Box::new(q)),
                // Features imago lacks (zstd compression, ...) are QEMU's job then.
                Err(e) if qemu_img_available() => {
                    eprintln!(
                        "vma: note: {}; reading it through qemu-nbd instead",
                        crate::error_text(&e)
                    );
                    qemu_nbd(fmt, path, verbose)
                }
                Err(e) => Err(e.context("(installing qemu-img would let vma convert it instead)")),
            }
        }
        _ if !valid_format_name(fmt) => bail!("invalid format name '{fmt}'"),
        _ => qemu_nbd(fmt, path, verbose),
    }
}

/// `path` read through a `qemu-nbd` that vma starts.
#[cfg(unix)]
fn qemu_nbd(fmt: &str, path: &Path, verbose: bool) -> Result<Box<dyn Source>> {
    Ok(Box::new(crate::nbd_client::QemuNbdSource::start(
        fmt, path, verbose,
    )?))
}

/// qemu-nbd serves on a Unix socket, which this Windows build does not use.
#[cfg(not(unix))]
fn qemu_nbd(fmt: &str, path: &Path, _verbose: bool) -> Result<Box<dyn Source>> {
    bail!(
        "device source {}: format '{fmt}' is read through qemu-nbd, which \
         this Windows build does not run (only raw and qcow2 are read here)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_knows_qemus_magics_and_defaults_to_raw() {
        let with = |off: usize, magic: &[u8]| {
            let mut h = vec![0u8; 512];
            h[off..off + magic.len()].copy_from_slice(magic);
            probe_bytes(&h)
        };
        assert_eq!(with(0, b"QFI\xfb\0\0\0\x03"), Some("qcow2"));
        assert_eq!(with(0, b"QFI\xfb\0\0\0\x02"), Some("qcow2"));
        assert_eq!(with(0, b"QFI\xfb\0\0\0\x01"), Some("qcow"));
        assert_eq!(with(0, b"QED\0"), Some("qed"));
        assert_eq!(with(0, b"KDMV"), Some("vmdk"));
        assert_eq!(with(0, b"# Disk DescriptorFile\n"), Some("vmdk"));
        assert_eq!(with(64, &[0x7f, 0x10, 0xda, 0xbe]), Some("vdi"));
        assert_eq!(with(0, b"vhdxfile"), Some("vhdx"));
        assert_eq!(with(0, b"conectix"), Some("vpc"));
        assert_eq!(with(0, b"LUKS\xba\xbe"), Some("luks"));
        assert_eq!(with(0, b"\xeb\x63\x90"), None, "an MBR boot sector is raw");
        assert_eq!(probe_bytes(&[]), None);
        assert_eq!(probe_bytes(b"QF"), None);
    }
}
