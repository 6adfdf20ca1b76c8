//! The archive header: validation on read (spec §11.1) and layout on write (spec §4).
//!
//! Owns [`ArchiveHeader`] (uuid, ctime, configs, devices), the blob buffer
//! walk, and [`build_header`], which lays out blobs exactly as Proxmox's writer
//! does so that our headers are byte-for-byte what `vma create` would produce
//! for the same inputs (apart from uuid and ctime).

use std::borrow::Cow;
use std::io::Read;

use uuid::Uuid;

use crate::error::{Error, Name, Result};
use crate::raw::*;

/// One config blob (spec §5): a file name and its raw content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Header slot (0..256) the config came from.
    pub slot: usize,
    /// File name bytes, without the terminating NUL.
    pub name: Vec<u8>,
    /// Raw content (not NUL-terminated).
    pub data: Vec<u8>,
}

impl Config {
    /// The name as text (lossy for non-UTF-8 names).
    pub fn name_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// One device (disk or vmstate) of the archive (spec §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// dev_id, 1..=254.
    pub id: u8,
    /// Device name bytes, without the terminating NUL.
    pub name: Vec<u8>,
    /// Size in bytes, > 0.
    pub size: u64,
}

impl Device {
    /// The name as text (lossy for non-UTF-8 names).
    pub fn name_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
    /// Number of clusters, `ceil(size / 65536)` (spec §7.5).
    pub fn clusters(&self) -> u64 {
        self.size.div_ceil(CLUSTER_SIZE as u64)
    }
    /// The reserved VM-state stream (spec §5).
    pub fn is_vmstate(&self) -> bool {
        self.name == b"vmstate"
    }
}

/// A parsed and validated archive header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// Archive UUID (spec §3).
    pub uuid: Uuid,
    /// Creation time, Unix seconds.
    pub ctime: i64,
    /// Configs in header-slot order.
    pub configs: Vec<Config>,
    /// Devices in dev_id order.
    pub devices: Vec<Device>,
    /// The fixed part as stored (blob offsets, sizes, md5, pointers).
    pub raw: RawHeader,
}

impl ArchiveHeader {
    /// Total header length; the first extent starts here.
    pub fn header_size(&self) -> u64 {
        u64::from(self.raw.header_size)
    }
    /// The device with this dev_id.
    pub fn device(&self, dev_id: u8) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == dev_id)
    }
    /// The device with this name.
    pub fn device_by_name(&self, name: &[u8]) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }
    /// The first config with this name.
    pub fn config(&self, name: &[u8]) -> Option<&Config> {
        self.configs.iter().find(|c| c.name == name)
    }
}

/// Reads until `buf` is full or EOF and returns the bytes read (fewer only
/// at EOF), retrying on `Interrupted`. `offset` is where `r` stands in the
/// archive, for the offset of an [`Error::Read`].
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: offset + got as u64,
                    source,
                })
            }
        }
    }
    Ok(got)
}

/// Reads and validates a header from a stream, leaving `r` at the first extent.
pub fn read_header<R: Read + ?Sized>(r: &mut R) -> Result<ArchiveHeader> {
    let mut buf = vec![0u8; HEADER_FIXED_SIZE];
    let got = read_full(r, &mut buf, 0)?;
    if got < HEADER_FIXED_SIZE {
        // A small tar file (10240 bytes) is shorter than a VMA header.
        if let Some(e) = tar_error(&buf[..got]) {
            return Err(e);
        }
        return Err(Error::HeaderEof { got: got as u64 });
    }
    let header_size = check_prefix(&buf)?;
    buf.resize(header_size as usize, 0);
    let got = read_full(r, &mut buf[HEADER_FIXED_SIZE..], HEADER_FIXED_SIZE as u64)?;
    if HEADER_FIXED_SIZE + got < header_size as usize {
        return Err(Error::HeaderDataEof {
            header_size,
            got: (HEADER_FIXED_SIZE + got) as u64,
        });
    }
    parse_header(&buf)
}

/// Offset of the POSIX tar magic `ustar` in a tar header block.
const TAR_MAGIC_OFFSET: usize = 257;

/// [`Error::TarArchive`] if `prefix` (the first bytes of the stream) is a
/// tar header block rather than a VMA header.
fn tar_error(prefix: &[u8]) -> Option<Error> {
    let magic = prefix.get(TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + 5)?;
    (magic == b"ustar" && prefix[..4] != MAGIC).then(|| Error::TarArchive {
        found: prefix[..4].try_into().expect("4 bytes"),
    })
}

/// Checks magic and header_size on the fixed part; returns header_size.
fn check_prefix(fixed: &[u8]) -> Result<u32> {
    let magic: [u8; 4] = fixed[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(tar_error(fixed).unwrap_or(Error::BadMagic { found: magic }));
    }
    let size = u32::from_be_bytes(
        fixed[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .expect("4"),
    );
    // Proxmox requires > 12288 (spec §4); we also cap it so a hostile header
    // cannot make us allocate gigabytes (spec §12).
    if size as usize <= HEADER_FIXED_SIZE || size as usize > MAX_READER_HEADER_SIZE {
        return Err(Error::HeaderSize { size });
    }
    Ok(size)
}

/// Validates a complete header (`[0, header_size)`) in Proxmox's order (spec §11.1).
///
/// `bytes` may be longer than the header; the rest is ignored.
pub fn parse_header(bytes: &[u8]) -> Result<ArchiveHeader> {
    if bytes.len() < HEADER_FIXED_SIZE {
        return Err(tar_error(bytes).unwrap_or(Error::HeaderEof {
            got: bytes.len() as u64,
        }));
    }
    let header_size = check_prefix(bytes)?;
    if bytes.len() < header_size as usize {
        return Err(Error::HeaderDataEof {
            header_size,
            got: bytes.len() as u64,
        });
    }
    let bytes = &bytes[..header_size as usize];
    let raw = RawHeader::parse(bytes[..HEADER_FIXED_SIZE].try_into().expect("fixed part"));
    if header_md5(bytes) != raw.md5 {
        return Err(Error::HeaderChecksum);
    }
    if raw.version != VERSION {
        return Err(Error::Version {
            version: raw.version,
        });
    }
    if (raw.blob_buffer_offset as usize) < HEADER_FIXED_SIZE {
        return Err(Error::BlobBufferOffset {
            blob_offset: raw.blob_buffer_offset,
        });
    }
    let blob_end = u64::from(raw.blob_buffer_offset) + u64::from(raw.blob_buffer_size);
    if blob_end > u64::from(header_size) {
        return Err(Error::BlobBufferSize {
            blob_offset: raw.blob_buffer_offset,
            blob_size: raw.blob_buffer_size,
            header_size,
        });
    }
    let blobs = Blobs::walk(&bytes[raw.blob_buffer_offset as usize..blob_end as usize]);

    let mut configs = Vec::new();
    for slot in 0..CONFIG_SLOTS {
        let (np, dp) = (raw.config_names[slot], raw.config_data[slot]);
        // A slot with either pointer 0 is unused (spec §11.1).
        if np == 0 || dp == 0 {
            continue;
        }
        // The offset names the bad pointer field (spec §12 f).
        let bad = |table: usize| Error::InvalidDataPointers {
            slot,
            field_offset: (table + 4 * slot) as u64,
        };
        let name = blobs.string(np).ok_or_else(|| bad(hdr::CONFIG_NAMES))?;
        let data = blobs.get(dp).ok_or_else(|| bad(hdr::CONFIG_DATA))?;
        configs.push(Config {
            slot,
            name: name.to_vec(),
            data: data.to_vec(),
        });
    }

    let mut devices = Vec::new();
    for id in 1..=MAX_DEV_ID {
        let d = raw.dev_info[id as usize];
        // Size 0 or an invalid name: the slot is unused (spec §11.1).
        if d.size == 0 {
            continue;
        }
        if let Some(name) = blobs.string(d.devname_ptr) {
            devices.push(Device {
                id,
                name: name.to_vec(),
                size: d.size,
            });
        }
    }

    Ok(ArchiveHeader {
        uuid: Uuid::from_bytes(raw.uuid),
        ctime: raw.ctime,
        configs,
        devices,
        raw,
    })
}

/// The blobs of a blob buffer, keyed by pointer (spec §4).
struct Blobs<'a> {
    area: &'a [u8],
    /// Sorted pointers of blobs that fit completely.
    starts: Vec<u32>,
}

impl<'a> Blobs<'a> {
    fn walk(area: &'a [u8]) -> Self {
        let mut starts = Vec::new();
        let mut pos = 1usize; // byte 0 is unused, so pointer 0 means "none"
        while pos + 2 <= area.len() {
            let len = u16::from_le_bytes([area[pos], area[pos + 1]]) as usize;
            if pos + 2 + len <= area.len() {
                starts.push(pos as u32);
            }
            pos += 2 + len;
        }
        Blobs { area, starts }
    }

    /// The data of the blob whose length prefix is at `ptr`.
    fn get(&self, ptr: u32) -> Option<&'a [u8]> {
        self.starts.binary_search(&ptr).ok()?;
        let p = ptr as usize;
        let len = u16::from_le_bytes([self.area[p], self.area[p + 1]]) as usize;
        Some(&self.area[p + 2..p + 2 + len])
    }

    /// A NUL-terminated string blob, returned up to its first NUL.
    fn string(&self, ptr: u32) -> Option<&'a [u8]> {
        let data = self.get(ptr)?;
        if data.last() != Some(&0) {
            return None;
        }
        let end = data.iter().position(|&b| b == 0).expect("has NUL");
        Some(&data[..end])
    }
}

/// Lays out a complete header as Proxmox's writer does (spec §4) and returns its bytes.
///
/// `configs` are (name, data) in call order; `devices` are (name, size) for
/// dev_id 1, 2, …. Names are not validated (tests build hostile ones), but
/// every limit of the layout is: more than 256 configs ([`Error::TooManyConfigs`]),
/// more than 254 devices ([`Error::TooManyDevices`]), a blob over 65535
/// bytes including a name's NUL ([`Error::BlobTooLarge`]) and a header over
/// 512 KiB ([`Error::WriterHeaderTooLarge`]) are errors, found before the
/// blob area is allocated. The result is never exactly 12288 bytes (spec §12 e).
pub fn build_header(
    uuid: Uuid,
    ctime: i64,
    configs: &[(Vec<u8>, Vec<u8>)],
    devices: &[(Vec<u8>, u64)],
) -> Result<Vec<u8>> {
    if configs.len() > CONFIG_SLOTS {
        return Err(Error::TooManyConfigs);
    }
    if devices.len() > MAX_DEV_ID as usize {
        return Err(Error::TooManyDevices);
    }
    // Blobs in Proxmox's order (spec §4): (what, bytes, stored with a NUL).
    let blobs = configs
        .iter()
        .flat_map(|(n, d)| [("config name", n, true), ("config", d, false)])
        .chain(devices.iter().map(|(n, _)| ("device name", n, true)));
    // Lay out sizes first: Proxmox grows its table by roundup512(len + 2)
    // whenever the blob does not fit, rather than to the minimal multiple.
    let mut cap = 0usize;
    let mut used = 1usize; // byte 0 unused, so pointer 0 means "none"
    for (i, (what, data, nul)) in blobs.clone().enumerate() {
        let len = data.len() + usize::from(nul);
        if len > MAX_BLOB_LEN {
            let name: &Vec<u8> = match what {
                "config" => &configs[i / 2].0,
                _ => data,
            };
            return Err(Error::BlobTooLarge {
                what,
                name: Name(name.clone()),
                len,
            });
        }
        if used + len + 2 > cap {
            cap += (len + 2).div_ceil(512) * 512;
        }
        used += len + 2;
        if HEADER_FIXED_SIZE + cap > MAX_WRITER_HEADER_SIZE {
            return Err(Error::WriterHeaderTooLarge {
                size: HEADER_FIXED_SIZE + cap,
            });
        }
    }
    let header_size = HEADER_FIXED_SIZE + cap.max(512);
    let mut raw = RawHeader {
        uuid: *uuid.as_bytes(),
        ctime,
        ..RawHeader::default()
    };
    let mut area: Vec<u8> = Vec::with_capacity(used);
    area.push(0);
    let mut ptrs = Vec::with_capacity(configs.len() * 2 + devices.len());
    for (_, data, nul) in blobs {
        let len = data.len() + usize::from(nul);
        ptrs.push(area.len() as u32);
        // Checked above: len ≤ 65535.
        area.extend_from_slice(&(len as u16).to_le_bytes());
        area.extend_from_slice(data);
        if nul {
            area.push(0);
        }
    }
    for i in 0..configs.len() {
        raw.config_names[i] = ptrs[2 * i];
        raw.config_data[i] = ptrs[2 * i + 1];
    }
    for (i, (_, size)) in devices.iter().enumerate() {
        raw.dev_info[i + 1] = RawDevInfo {
            devname_ptr: ptrs[2 * configs.len() + i],
            size: *size,
        };
    }
    raw.blob_buffer_offset = HEADER_FIXED_SIZE as u32;
    raw.blob_buffer_size = area.len() as u32;
    raw.header_size = header_size as u32;
    let mut out = Vec::with_capacity(header_size);
    out.extend_from_slice(&raw.serialize());
    out.extend_from_slice(&area);
    out.resize(header_size, 0);
    let md5 = header_md5(&out);
    out[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_header(
            Uuid::from_bytes([1; 16]),
            1_700_000_000,
            &[(b"qemu-server.conf".to_vec(), b"memory: 512\n".to_vec())],
            &[(b"drive-scsi0".to_vec(), 1 << 20)],
        )
        .unwrap()
    }

    #[test]
    fn a_tar_file_is_named_as_such_short_or_long() {
        for len in [10240, 20480] {
            let mut tar = vec![0u8; len];
            tar[..6].copy_from_slice(b"./etc/");
            tar[257..263].copy_from_slice(b"ustar\0");
            for e in [
                read_header(&mut &tar[..]).unwrap_err(),
                parse_header(&tar).unwrap_err(),
            ] {
                assert!(matches!(e, Error::TarArchive { .. }), "{len}: {e:?}");
                assert!(e.to_string().contains("looks like a tar archive"), "{e}");
            }
        }
        // Without the tar magic it stays Proxmox's wrong magic / EOF error.
        let other = vec![b'x'; 20480];
        assert!(matches!(
            parse_header(&other).unwrap_err(),
            Error::BadMagic { .. }
        ));
        assert!(matches!(
            read_header(&mut &other[..300]).unwrap_err(),
            Error::HeaderEof { .. }
        ));
    }

    #[test]
    fn build_then_parse() {
        let b = sample();
        assert_eq!(b.len(), 12800);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.configs[0].name, b"qemu-server.conf");
        assert_eq!(h.configs[0].data, b"memory: 512\n");
        assert_eq!(
            h.devices,
            vec![Device {
                id: 1,
                name: b"drive-scsi0".to_vec(),
                size: 1 << 20
            }]
        );
        assert_eq!(h.raw.config_names[0], 1);
        assert_eq!(h.raw.config_data[0], 1 + 2 + 17);
    }

    #[test]
    fn never_12288() {
        let b = build_header(Uuid::nil(), 0, &[], &[]).unwrap();
        assert_eq!(b.len(), 12800);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.raw.blob_buffer_size, 1);
        assert!(h.configs.is_empty() && h.devices.is_empty());
    }

    #[test]
    fn growth_rule_is_not_minimal() {
        // 400 used, then a 600-byte blob: Proxmox grows 512 → 512 + 1024.
        let b = build_header(Uuid::nil(), 0, &[(vec![b'a'; 395], vec![b'x'; 598])], &[]).unwrap();
        assert_eq!(b.len(), HEADER_FIXED_SIZE + 1536);
    }

    #[test]
    fn pointer_into_blob_middle_is_invalid() {
        let mut b = sample();
        b[hdr::CONFIG_NAMES..hdr::CONFIG_NAMES + 4].copy_from_slice(&2u32.to_be_bytes());
        let md5 = header_md5(&b);
        b[32..48].copy_from_slice(&md5);
        assert!(matches!(
            parse_header(&b),
            Err(Error::InvalidDataPointers {
                slot: 0,
                field_offset: 2044
            })
        ));
    }

    fn err(configs: &[(Vec<u8>, Vec<u8>)], devices: &[(Vec<u8>, u64)]) -> Error {
        build_header(Uuid::nil(), 0, configs, devices).unwrap_err()
    }

    #[test]
    fn too_many_configs_or_devices_is_an_error() {
        let c = |i: usize| (format!("c{i}").into_bytes(), vec![b'x']);
        let d = |i: usize| (format!("d{i}").into_bytes(), 4096u64);
        let configs: Vec<_> = (0..256).map(c).collect();
        let devices: Vec<_> = (0..254).map(d).collect();
        // The maxima themselves fit and read back.
        let h = parse_header(&build_header(Uuid::nil(), 0, &configs, &devices).unwrap()).unwrap();
        assert_eq!((h.configs.len(), h.devices.len()), (256, 254));
        assert_eq!(h.devices[253].id, 254);
        let configs: Vec<_> = (0..257).map(c).collect();
        assert!(matches!(err(&configs, &[]), Error::TooManyConfigs));
        for n in [255, 256, 300] {
            let devices: Vec<_> = (0..n).map(d).collect();
            assert!(matches!(err(&[], &devices), Error::TooManyDevices), "{n}");
        }
    }

    #[test]
    fn blob_over_65535_bytes_is_an_error_not_truncated() {
        // Data may be 65535 bytes; a name 65535 bytes long needs 65536 with its NUL.
        let ok = build_header(Uuid::nil(), 0, &[(b"a".to_vec(), vec![1; 65535])], &[]).unwrap();
        assert_eq!(parse_header(&ok).unwrap().configs[0].data.len(), 65535);
        match err(&[(b"big".to_vec(), vec![1; 65536])], &[]) {
            Error::BlobTooLarge {
                what: "config",
                name,
                len: 65536,
            } => assert_eq!(name.0, b"big"),
            e => panic!("{e:?}"),
        }
        match err(&[(vec![b'n'; 65535], vec![])], &[]) {
            Error::BlobTooLarge {
                what: "config name",
                len: 65536,
                ..
            } => {}
            e => panic!("{e:?}"),
        }
        match err(&[], &[(vec![b'd'; 70000], 512)]) {
            Error::BlobTooLarge {
                what: "device name",
                len: 70001,
                ..
            } => {}
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn blob_area_over_512_kib_is_an_error() {
        // Eight 65535-byte configs need more than 512 KiB - 12 KiB.
        let configs: Vec<_> = (0..8)
            .map(|i| (format!("c{i}").into_bytes(), vec![1; 65535]))
            .collect();
        match err(&configs, &[]) {
            Error::WriterHeaderTooLarge { size } => assert!(size > MAX_WRITER_HEADER_SIZE),
            e => panic!("{e:?}"),
        }
        // Seven fit.
        let h = build_header(Uuid::nil(), 0, &configs[..7], &[]).unwrap();
        assert!(h.len() <= MAX_WRITER_HEADER_SIZE);
        assert_eq!(parse_header(&h).unwrap().configs.len(), 7);
    }
}
