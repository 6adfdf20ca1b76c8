//! The zstd container, as seekable access needs it: the walk over the
//! frame and block headers of a file (seeking over the data, decoding
//! nothing), the decoded size of a frame whose header lacks it, and frames of
//! raw blocks with their XXH64 content checksum (the cache file's frames when
//! compression does not pay).

use std::fs::File;
use std::io::{self, Read, Write};

use vma_format::error::{Error, Result};
use vma_format::ReadAt;
use xxhash_rust::xxh64::xxh64;

use crate::types::Frame;

pub(crate) const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames: magic 0x184D2A50..=0x184D2A5F.
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
pub(crate) const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

pub(crate) fn zcorrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Compressed {
        format: "zstd",
        offset,
        message: message.into(),
    }
}

fn pread(file: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<usize> {
    file.read_full_at(offset, buf)
        .map_err(|source| Error::Read { offset, source })
}

/// A zstd frame whose decoded size the header does not give.
pub(crate) struct UnknownSize;

/// Walks the zstd frames of `file` (`len` bytes) by their frame and block
/// headers. Frames without Frame_Content_Size get `u_len == u64::MAX`;
/// skippable frames are left out. `u_off` is not filled in.
pub(crate) fn zstd_frames(file: &dyn ReadAt, len: u64) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut off = 0u64;
    let mut b = [0u8; 18];
    while off < len {
        let got = pread(file, off, &mut b)?;
        if got < 8 {
            return Err(zcorrupt(off, "truncated frame header"));
        }
        let magic = u32::from_le_bytes(b[..4].try_into().expect("4"));
        if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE {
            let size = u32::from_le_bytes(b[4..8].try_into().expect("4"));
            off += 8 + u64::from(size);
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(zcorrupt(
                off,
                format!("no zstd frame magic (found {magic:#010x})"),
            ));
        }
        let fhd = b[4];
        if fhd & 0x08 != 0 {
            return Err(zcorrupt(off + 4, "reserved frame header bit set"));
        }
        let single = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_len = match fhd >> 6 {
            0 => usize::from(single),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let mut p = 5 + usize::from(!single) + dict_len;
        if got < p + fcs_len {
            return Err(zcorrupt(off, "truncated frame header"));
        }
        let mut fcs = [0u8; 8];
        fcs[..fcs_len].copy_from_slice(&b[p..p + fcs_len]);
        let u_len = match fcs_len {
            0 => u64::MAX,
            2 => u64::from_le_bytes(fcs) + 256,
            _ => u64::from_le_bytes(fcs),
        };
        p += fcs_len;
        let mut at = off + p as u64;
        loop {
            let mut h = [0u8; 3];
            if pread(file, at, &mut h)? < 3 {
                return Err(zcorrupt(
                    at,
                    "truncated block header (file ends inside a frame)",
                ));
            }
            let h = u32::from_le_bytes([h[0], h[1], h[2], 0]);
            let size = u64::from(h >> 3);
            at += 3 + match (h >> 1) & 3 {
                0 | 2 => size,
                1 => 1,
                _ => return Err(zcorrupt(at, "reserved block type")),
            };
            if h & 1 != 0 {
                break;
            }
        }
        if checksum {
            at += 4;
        }
        if at > len {
            return Err(zcorrupt(off, "file ends inside the frame"));
        }
        frames.push(Frame {
            c_off: off,
            c_len: at - off,
            u_off: 0,
            u_len,
            adler: 0,
            crc: 0,
            sums: 0,
        });
        off = at;
    }
    Ok(frames)
}

/// Decodes the frame to learn its size; `Err(UnknownSize)` once it exceeds `limit`.
pub(crate) fn zstd_frame_size(
    file: &dyn ReadAt,
    f: &Frame,
    limit: u64,
) -> Result<std::result::Result<u64, UnknownSize>> {
    let mut data =
        vec![0u8; usize::try_from(f.c_len).map_err(|_| zcorrupt(f.c_off, "frame too large"))?];
    pread(file, f.c_off, &mut data)?;
    let mut d = zstd::stream::read::Decoder::with_buffer(&data[..])
        .map_err(|source| Error::Read {
            offset: f.c_off,
            source,
        })?
        .single_frame();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = d
            .read(&mut buf)
            .map_err(|e| zcorrupt(f.c_off, format!("frame does not decode: {e}")))?;
        if n == 0 {
            return Ok(Ok(total));
        }
        total += n as u64;
        if total > limit {
            return Ok(Err(UnknownSize));
        }
    }
}

/// Length of the raw frame of `len` bytes ([`write_raw_frame`]).
pub(crate) fn raw_frame_len(len: usize) -> u64 {
    (9 + 3 * len.div_ceil(ZSTD_BLOCK_MAX) + len + 4) as u64
}

/// Largest zstd block (Block_Maximum_Size, RFC 8878 §3.1.1.2.4).
const ZSTD_BLOCK_MAX: usize = 128 << 10;

/// Frame header of a frame of raw blocks holding `len` (≤ 4 GiB) bytes:
/// single segment, 4-byte Frame_Content_Size, content checksum.
pub(crate) fn raw_frame_head(len: usize) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[..4].copy_from_slice(&ZSTD_MAGIC.to_le_bytes());
    // Frame_Header_Descriptor: FCS field 4 bytes (0b10), single segment,
    // content checksum, no dictionary.
    h[4] = 0b1010_0100;
    h[5..].copy_from_slice(&u32::try_from(len).expect("chunk ≤ 4 GiB").to_le_bytes());
    h
}

/// Writes `data` (not empty, ≤ 4 GiB) as one zstd frame of raw blocks with
/// its content checksum, without copying it; returns the frame's length.
pub(crate) fn write_raw_frame(out: &mut File, data: &[u8]) -> io::Result<u64> {
    let head = raw_frame_head(data.len());
    // XXH64 with seed 0: the checksum zstd frames carry (its low 32 bits).
    let sum = (xxh64(data, 0) as u32).to_le_bytes();
    let n = data.len().div_ceil(ZSTD_BLOCK_MAX);
    let heads: Vec<[u8; 3]> = data
        .chunks(ZSTD_BLOCK_MAX)
        .enumerate()
        .map(|(k, b)| {
            // Last_Block, Block_Type 0 (raw), Block_Size.
            let h = ((b.len() as u32) << 3) | u32::from(k + 1 == n);
            let h = h.to_le_bytes();
            [h[0], h[1], h[2]]
        })
        .collect();
    let mut slices = Vec::with_capacity(2 * n + 2);
    slices.push(io::IoSlice::new(&head));
    for (h, b) in heads.iter().zip(data.chunks(ZSTD_BLOCK_MAX)) {
        slices.push(io::IoSlice::new(h));
        slices.push(io::IoSlice::new(b));
    }
    slices.push(io::IoSlice::new(&sum));
    let total = head.len() + 3 * n + data.len() + sum.len();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => io::IoSlice::advance_slices(&mut slices, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::types::noise;

    #[test]
    fn xxh64_known_values() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn raw_frames_decode_with_zstd_and_their_checksum_is_checked() {
        let data = noise(300 << 10, 7);
        // Every tail path of the hash and 1..3 blocks, the last one short or full.
        for len in [
            1,
            3,
            4,
            7,
            8,
            31,
            32,
            33,
            100,
            128 << 10,
            (128 << 10) + 1,
            256 << 10,
            300 << 10,
        ] {
            let mut f = tempfile::tempfile().unwrap();
            let n = write_raw_frame(&mut f, &data[..len]).unwrap();
            let mut frame = Vec::new();
            std::io::Seek::rewind(&mut f).unwrap();
            f.read_to_end(&mut frame).unwrap();
            assert_eq!(frame.len() as u64, n, "len {len}");
            let got = zstd::bulk::decompress(&frame, len).unwrap();
            assert_eq!(got, &data[..len], "len {len}");
            let mut bad = frame.clone();
            bad[9 + 3] ^= 1; // first data byte
            assert!(
                zstd::bulk::decompress(&bad, len).is_err(),
                "len {len}: checksum not checked"
            );
        }
    }
}
