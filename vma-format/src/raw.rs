//! Raw on-disk structures of a VMA archive, apart from any validation.
//!
//! This module owns the byte layout (spec §3, §4, §7): constants, field offsets,
//! and lossless parse/serialize of the fixed header, the device-info entry,
//! the extent header and the blockinfo word. Nothing here decides whether an
//! archive is *valid*; that is [`crate::header`] and [`crate::extent`].
//!
//! The `*Layout` structs mirror Proxmox's C structs (`VmaHeader`,
//! `VmaDeviceInfoHeader`, `VmaExtentHeader`) with byte-array fields only, so
//! they have alignment 1 and no padding. They are never instantiated: they
//! exist so that every field offset below is *derived* with `offset_of!` and
//! the sizes are asserted at compile time.

use core::mem::{offset_of, size_of};

/// `"VMA\0"`, the archive magic (spec §3).
pub const MAGIC: [u8; 4] = *b"VMA\0";
/// `"VMAE"`, the extent magic (spec §7.1).
pub const EXTENT_MAGIC: [u8; 4] = *b"VMAE";
/// The only defined format version (spec §3).
pub const VERSION: u32 = 1;

/// Size of a data block, the unit of zero detection (spec §1).
pub const BLOCK_SIZE: usize = 4096;
/// Size of a cluster, the unit of transfer (spec §1).
pub const CLUSTER_SIZE: usize = 65536;
/// Blocks per cluster; one mask bit each (spec §7.4).
pub const BLOCKS_PER_CLUSTER: usize = CLUSTER_SIZE / BLOCK_SIZE;
/// Size of the fixed part of the header (spec §3).
pub const HEADER_FIXED_SIZE: usize = 12288;
/// Size of an extent header (spec §7.1).
pub const EXTENT_HEADER_SIZE: usize = 512;
/// Blockinfo slots in one extent header (spec §7.1).
pub const BLOCKINFO_SLOTS: usize = 59;
/// Clusters per extent written by Proxmox's writer and ours (spec §7.7).
pub const WRITER_CLUSTERS_PER_EXTENT: usize = 58;
/// Largest extent a reader may meet: header plus 59 full clusters (spec §10).
pub const MAX_EXTENT_SIZE: usize = EXTENT_HEADER_SIZE + BLOCKINFO_SLOTS * CLUSTER_SIZE;
/// Largest `block_count` a valid extent can carry (spec §10).
pub const MAX_EXTENT_BLOCKS: usize = BLOCKINFO_SLOTS * BLOCKS_PER_CLUSTER;
/// Config slots in the header (spec §5).
pub const CONFIG_SLOTS: usize = 256;
/// Device-table slots in the header; slot 0 is never used (spec §5).
pub const DEV_SLOTS: usize = 256;
/// Highest dev_id a writer assigns and `list`/`verify`/`extract` consider (spec §5).
pub const MAX_DEV_ID: u8 = 254;
/// Longest blob: its length prefix is a u16 (spec §4).
pub const MAX_BLOB_LEN: usize = 65535;
/// Largest header a writer may produce (`HEADERBUF_SIZE`, spec §4).
pub const MAX_WRITER_HEADER_SIZE: usize = 512 * 1024;
/// Largest header our readers accept (spec §10, §12): 256 configs and 254
/// devices at the maximal blob length fit with room to spare; anything larger
/// is refused before allocating.
pub const MAX_READER_HEADER_SIZE: usize = 32 * 1024 * 1024;
/// Largest device a cluster number can address: 2^32 clusters (spec §10).
pub const MAX_DEVICE_SIZE: u64 = (1u64 << 32) * CLUSTER_SIZE as u64;
/// The largest length a file can have (`off_t`/`loff_t` are signed 64-bit):
/// a disk declared larger cannot be extracted or shown as a mounted file.
/// (Declared sizes are up to 2^64-1, so readers check against this.)
pub const MAX_FILE_LEN: u64 = i64::MAX as u64;

/// Mirror of `VmaHeader` (spec §3). Used only for offsets and size.
#[repr(C)]
#[allow(dead_code)]
struct HeaderLayout {
    magic: [u8; 4],
    version: [u8; 4],
    uuid: [u8; 16],
    ctime: [u8; 8],
    md5sum: [u8; 16],
    blob_buffer_offset: [u8; 4],
    blob_buffer_size: [u8; 4],
    header_size: [u8; 4],
    reserved: [u8; 1984],
    config_names: [[u8; 4]; CONFIG_SLOTS],
    config_data: [[u8; 4]; CONFIG_SLOTS],
    reserved1: [u8; 4],
    dev_info: [DevInfoLayout; DEV_SLOTS],
}

/// Mirror of `VmaDeviceInfoHeader` (spec §3, device table).
#[repr(C)]
#[allow(dead_code)]
struct DevInfoLayout {
    devname_ptr: [u8; 4],
    reserved0: [u8; 4],
    size: [u8; 8],
    reserved1: [u8; 16],
}

/// Mirror of `VmaExtentHeader` (spec §7.1).
#[repr(C)]
#[allow(dead_code)]
struct ExtentLayout {
    magic: [u8; 4],
    reserved1: [u8; 2],
    block_count: [u8; 2],
    uuid: [u8; 16],
    md5sum: [u8; 16],
    blockinfo: [[u8; 8]; BLOCKINFO_SLOTS],
}

/// Byte offsets of header fields (spec §3).
#[allow(missing_docs)] // each constant is named after its field
pub mod hdr {
    use super::*;
    pub const MAGIC: usize = offset_of!(HeaderLayout, magic);
    pub const VERSION: usize = offset_of!(HeaderLayout, version);
    pub const UUID: usize = offset_of!(HeaderLayout, uuid);
    pub const CTIME: usize = offset_of!(HeaderLayout, ctime);
    pub const MD5: usize = offset_of!(HeaderLayout, md5sum);
    pub const BLOB_BUFFER_OFFSET: usize = offset_of!(HeaderLayout, blob_buffer_offset);
    pub const BLOB_BUFFER_SIZE: usize = offset_of!(HeaderLayout, blob_buffer_size);
    pub const HEADER_SIZE: usize = offset_of!(HeaderLayout, header_size);
    pub const CONFIG_NAMES: usize = offset_of!(HeaderLayout, config_names);
    pub const CONFIG_DATA: usize = offset_of!(HeaderLayout, config_data);
    pub const DEV_INFO: usize = offset_of!(HeaderLayout, dev_info);
    /// Size of one device-info entry.
    pub const DEV_INFO_SIZE: usize = size_of::<DevInfoLayout>();
    /// Offsets inside a device-info entry.
    pub const DEV_NAME_PTR: usize = offset_of!(DevInfoLayout, devname_ptr);
    pub const DEV_SIZE: usize = offset_of!(DevInfoLayout, size);
}

/// Byte offsets of extent header fields (spec §7.1).
#[allow(missing_docs)] // each constant is named after its field
pub mod ext {
    use super::*;
    pub const MAGIC: usize = offset_of!(ExtentLayout, magic);
    pub const RESERVED: usize = offset_of!(ExtentLayout, reserved1);
    pub const BLOCK_COUNT: usize = offset_of!(ExtentLayout, block_count);
    pub const UUID: usize = offset_of!(ExtentLayout, uuid);
    pub const MD5: usize = offset_of!(ExtentLayout, md5sum);
    pub const BLOCKINFO: usize = offset_of!(ExtentLayout, blockinfo);
}

// The sizes and offsets Proxmox's writer asserts (spec §3, §7.1).
const _: () = assert!(size_of::<HeaderLayout>() == HEADER_FIXED_SIZE);
const _: () = assert!(size_of::<DevInfoLayout>() == 32);
const _: () = assert!(size_of::<ExtentLayout>() == EXTENT_HEADER_SIZE);
const _: () = assert!(hdr::CONFIG_NAMES == 2044);
const _: () = assert!(hdr::CONFIG_DATA == 3068);
const _: () = assert!(hdr::DEV_INFO == 4096);
const _: () = assert!(ext::BLOCKINFO == 40);

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

/// One device-table entry (`VmaDeviceInfoHeader`, spec §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawDevInfo {
    /// +0, u32 BE: blob pointer to the NUL-terminated device name; 0 = none.
    pub devname_ptr: u32,
    /// +8, u64 BE: device size in bytes; 0 = slot unused.
    pub size: u64,
}

/// The fixed 12288-byte header (`VmaHeader`, spec §3), as stored.
///
/// Reserved fields are not kept: they parse as ignored and serialize as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// @0, 4 bytes: `"VMA\0"`.
    pub magic: [u8; 4],
    /// @4, u32 BE: format version, must be 1.
    pub version: u32,
    /// @8, 16 bytes: archive UUID, repeated in every extent header.
    pub uuid: [u8; 16],
    /// @24, i64 BE: creation time, Unix seconds.
    pub ctime: i64,
    /// @32, 16 bytes: MD5 of `[0, header_size)` with this field zeroed (spec §6.1).
    pub md5: [u8; 16],
    /// @48, u32 BE: absolute offset of the blob buffer (writer: 12288).
    pub blob_buffer_offset: u32,
    /// @52, u32 BE: used bytes of the blob buffer, including unused byte 0.
    pub blob_buffer_size: u32,
    /// @56, u32 BE: total header length; the first extent starts here.
    pub header_size: u32,
    /// @2044, 256 × u32 BE: blob pointers of config names (0 = unused).
    pub config_names: [u32; CONFIG_SLOTS],
    /// @3068, 256 × u32 BE: blob pointers of config data (0 = unused).
    pub config_data: [u32; CONFIG_SLOTS],
    /// @4096, 256 × 32 bytes: device table indexed by dev_id.
    pub dev_info: [RawDevInfo; DEV_SLOTS],
}

impl Default for RawHeader {
    fn default() -> Self {
        RawHeader {
            magic: MAGIC,
            version: VERSION,
            uuid: [0; 16],
            ctime: 0,
            md5: [0; 16],
            blob_buffer_offset: HEADER_FIXED_SIZE as u32,
            blob_buffer_size: 0,
            header_size: HEADER_FIXED_SIZE as u32,
            config_names: [0; CONFIG_SLOTS],
            config_data: [0; CONFIG_SLOTS],
            dev_info: [RawDevInfo::default(); DEV_SLOTS],
        }
    }
}

impl RawHeader {
    /// Parses the fixed part. Never fails: every bit pattern is a `RawHeader`.
    pub fn parse(b: &[u8; HEADER_FIXED_SIZE]) -> Self {
        let mut h = RawHeader {
            magic: b[hdr::MAGIC..hdr::MAGIC + 4].try_into().expect("4 bytes"),
            version: be_u32(b, hdr::VERSION),
            uuid: arr16(b, hdr::UUID),
            ctime: be_u64(b, hdr::CTIME) as i64,
            md5: arr16(b, hdr::MD5),
            blob_buffer_offset: be_u32(b, hdr::BLOB_BUFFER_OFFSET),
            blob_buffer_size: be_u32(b, hdr::BLOB_BUFFER_SIZE),
            header_size: be_u32(b, hdr::HEADER_SIZE),
            ..RawHeader::default()
        };
        for i in 0..CONFIG_SLOTS {
            h.config_names[i] = be_u32(b, hdr::CONFIG_NAMES + 4 * i);
            h.config_data[i] = be_u32(b, hdr::CONFIG_DATA + 4 * i);
        }
        for (i, d) in h.dev_info.iter_mut().enumerate() {
            let at = hdr::DEV_INFO + hdr::DEV_INFO_SIZE * i;
            d.devname_ptr = be_u32(b, at + hdr::DEV_NAME_PTR);
            d.size = be_u64(b, at + hdr::DEV_SIZE);
        }
        h
    }

    /// Serializes the fixed part; reserved bytes are zero.
    pub fn serialize(&self) -> [u8; HEADER_FIXED_SIZE] {
        let mut b = [0u8; HEADER_FIXED_SIZE];
        b[hdr::MAGIC..hdr::MAGIC + 4].copy_from_slice(&self.magic);
        b[hdr::VERSION..hdr::VERSION + 4].copy_from_slice(&self.version.to_be_bytes());
        b[hdr::UUID..hdr::UUID + 16].copy_from_slice(&self.uuid);
        b[hdr::CTIME..hdr::CTIME + 8].copy_from_slice(&self.ctime.to_be_bytes());
        b[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&self.md5);
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, hdr::BLOB_BUFFER_OFFSET, self.blob_buffer_offset);
        put32(&mut b, hdr::BLOB_BUFFER_SIZE, self.blob_buffer_size);
        put32(&mut b, hdr::HEADER_SIZE, self.header_size);
        for i in 0..CONFIG_SLOTS {
            put32(&mut b, hdr::CONFIG_NAMES + 4 * i, self.config_names[i]);
            put32(&mut b, hdr::CONFIG_DATA + 4 * i, self.config_data[i]);
        }
        for (i, d) in self.dev_info.iter().enumerate() {
            let at = hdr::DEV_INFO + hdr::DEV_INFO_SIZE * i;
            put32(&mut b, at + hdr::DEV_NAME_PTR, d.devname_ptr);
            b[at + hdr::DEV_SIZE..at + hdr::DEV_SIZE + 8].copy_from_slice(&d.size.to_be_bytes());
        }
        b
    }
}

/// One blockinfo word (spec §7.2): `mask:16 | reserved:8 | dev_id:8 | cluster:32`, u64 BE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BlockInfo {
    /// Bits 63..48: bit i set ⇔ 4 KiB block i of the cluster is stored.
    pub mask: u16,
    /// Bits 47..40: reserved, written 0, not checked.
    pub reserved: u8,
    /// Bits 39..32: device id; 0 = empty slot.
    pub dev_id: u8,
    /// Bits 31..0: cluster number within the device.
    pub cluster: u32,
}

impl BlockInfo {
    /// Decodes a blockinfo word.
    pub fn from_u64(v: u64) -> Self {
        BlockInfo {
            mask: (v >> 48) as u16,
            reserved: (v >> 40) as u8,
            dev_id: (v >> 32) as u8,
            cluster: v as u32,
        }
    }
    /// Encodes a blockinfo word.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.mask) << 48)
            | (u64::from(self.reserved) << 40)
            | (u64::from(self.dev_id) << 32)
            | u64::from(self.cluster)
    }
    /// Number of stored 4 KiB blocks.
    pub fn stored_blocks(self) -> u32 {
        self.mask.count_ones()
    }
}

/// The 512-byte extent header (`VmaExtentHeader`, spec §7.1), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExtentHeader {
    /// @0, 4 bytes: `"VMAE"`.
    pub magic: [u8; 4],
    /// @4, u16 BE: reserved, must be 0 (a reader treats ≠ 0 as bad magic).
    pub reserved: u16,
    /// @6, u16 BE: number of 4 KiB data blocks after this header.
    pub block_count: u16,
    /// @8, 16 bytes: must equal the archive UUID.
    pub uuid: [u8; 16],
    /// @24, 16 bytes: MD5 of this header with this field zeroed (spec §6.2).
    pub md5: [u8; 16],
    /// @40, 59 × u64 BE: one blockinfo per cluster slot.
    pub blockinfo: [BlockInfo; BLOCKINFO_SLOTS],
}

impl Default for RawExtentHeader {
    fn default() -> Self {
        RawExtentHeader {
            magic: EXTENT_MAGIC,
            reserved: 0,
            block_count: 0,
            uuid: [0; 16],
            md5: [0; 16],
            blockinfo: [BlockInfo::default(); BLOCKINFO_SLOTS],
        }
    }
}

impl RawExtentHeader {
    /// Parses an extent header. Never fails.
    pub fn parse(b: &[u8; EXTENT_HEADER_SIZE]) -> Self {
        let mut h = RawExtentHeader {
            magic: b[ext::MAGIC..ext::MAGIC + 4].try_into().expect("4 bytes"),
            reserved: be_u16(b, ext::RESERVED),
            block_count: be_u16(b, ext::BLOCK_COUNT),
            uuid: arr16(b, ext::UUID),
            md5: arr16(b, ext::MD5),
            blockinfo: [BlockInfo::default(); BLOCKINFO_SLOTS],
        };
        for (i, bi) in h.blockinfo.iter_mut().enumerate() {
            *bi = BlockInfo::from_u64(be_u64(b, ext::BLOCKINFO + 8 * i));
        }
        h
    }

    /// Serializes an extent header.
    pub fn serialize(&self) -> [u8; EXTENT_HEADER_SIZE] {
        let mut b = [0u8; EXTENT_HEADER_SIZE];
        b[ext::MAGIC..ext::MAGIC + 4].copy_from_slice(&self.magic);
        b[ext::RESERVED..ext::RESERVED + 2].copy_from_slice(&self.reserved.to_be_bytes());
        b[ext::BLOCK_COUNT..ext::BLOCK_COUNT + 2].copy_from_slice(&self.block_count.to_be_bytes());
        b[ext::UUID..ext::UUID + 16].copy_from_slice(&self.uuid);
        b[ext::MD5..ext::MD5 + 16].copy_from_slice(&self.md5);
        for (i, bi) in self.blockinfo.iter().enumerate() {
            let at = ext::BLOCKINFO + 8 * i;
            b[at..at + 8].copy_from_slice(&bi.to_u64().to_be_bytes());
        }
        b
    }
}

/// MD5 over `bytes` with `bytes[field..field+16]` taken as zero (spec §6).
fn md5_with_zeroed_field(bytes: &[u8], field: usize) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(&bytes[..field]);
    h.update([0u8; 16]);
    h.update(&bytes[field + 16..]);
    h.finalize().into()
}

/// Header checksum over the whole stored header `[0, header_size)` (spec §6.1).
pub fn header_md5(header: &[u8]) -> [u8; 16] {
    md5_with_zeroed_field(header, hdr::MD5)
}

/// Extent header checksum (spec §6.2).
pub fn extent_md5(ext_header: &[u8; EXTENT_HEADER_SIZE]) -> [u8; 16] {
    md5_with_zeroed_field(ext_header, ext::MD5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockinfo_bit_layout() {
        let bi = BlockInfo {
            mask: 0x0022,
            reserved: 0,
            dev_id: 2,
            cluster: 7,
        };
        assert_eq!(bi.to_u64().to_be_bytes(), [0x00, 0x22, 0, 2, 0, 0, 0, 7]);
        assert_eq!(BlockInfo::from_u64(bi.to_u64()), bi);
        assert_eq!(bi.stored_blocks(), 2);
    }

    #[test]
    fn header_roundtrip() {
        let mut h = RawHeader {
            uuid: [7; 16],
            ctime: -5,
            header_size: 12800,
            ..Default::default()
        };
        h.config_names[3] = 1;
        h.config_data[255] = 0xdead_beef;
        h.dev_info[1] = RawDevInfo {
            devname_ptr: 20,
            size: 1 << 40,
        };
        let b = h.serialize();
        assert_eq!(&b[..4], b"VMA\0");
        assert_eq!(RawHeader::parse(&b), h);
        assert_eq!(RawHeader::parse(&b).serialize(), b);
    }

    #[test]
    fn extent_roundtrip() {
        let mut e = RawExtentHeader {
            block_count: 944,
            uuid: [9; 16],
            ..Default::default()
        };
        e.blockinfo[58] = BlockInfo {
            mask: 0xffff,
            reserved: 3,
            dev_id: 254,
            cluster: u32::MAX,
        };
        let b = e.serialize();
        assert_eq!(&b[..4], b"VMAE");
        assert_eq!(RawExtentHeader::parse(&b), e);
    }
}
