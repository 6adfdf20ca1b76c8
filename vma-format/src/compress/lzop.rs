//! The lzop container, read and written in one place (spec §14).
//!
//! Owns [`LzopReader`] (the streaming reader, also the block walker of
//! `vma-seekable`) and the writer side `vma create --compress lzo` uses:
//! [`file_header`], [`write_block`] and [`END`], producing what lzop 1.04
//! writes for stdin input. The LZO1X blocks themselves are [`crate::lzo1x`].

use std::io::{self, Read};

use super::LZOP_MAGIC;
use crate::error::{Error, Result};

/// Largest lzop block we accept (lzop's own maximum is 64 MiB).
const LZOP_MAX_BLOCK: usize = 64 << 20;

// lzop header flags.
const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;

/// Streams the decompressed content of an lzop file.
pub struct LzopReader<R> {
    inner: R,
    flags: u32,
    /// Compressed-stream offset, for error messages.
    pos: u64,
    block: Vec<u8>,
    at: usize,
    done: bool,
}

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Compressed {
        format: "lzop",
        offset,
        message: message.into(),
    }
}

impl<R: Read> LzopReader<R> {
    /// Parses the lzop file header.
    pub fn new(inner: R) -> Result<Self> {
        let mut r = LzopReader {
            inner,
            flags: 0,
            pos: 0,
            block: Vec::new(),
            at: 0,
            done: false,
        };
        let magic = r.bytes_n(9)?;
        if magic != LZOP_MAGIC {
            return Err(corrupt(0, "not an lzop file"));
        }
        let version = r.u16()?;
        let _lib_version = r.u16()?;
        if version >= 0x0940 {
            let _needed = r.u16()?;
        }
        let method = r.u8()?;
        if !matches!(method, 1..=3) {
            return Err(corrupt(r.pos - 1, format!("unsupported method {method}")));
        }
        if version >= 0x0940 {
            let _level = r.u8()?;
        }
        r.flags = r.u32()?;
        if r.flags & F_H_FILTER != 0 {
            return Err(corrupt(r.pos - 4, "filters are not supported"));
        }
        let _mode = r.u32()?;
        let _mtime_low = r.u32()?;
        if version >= 0x0940 {
            let _mtime_high = r.u32()?;
        }
        let name_len = r.u8()?;
        r.bytes_n(name_len as usize)?;
        let _header_checksum = r.u32()?;
        if r.flags & F_H_EXTRA_FIELD != 0 {
            let len = r.u32()?;
            if len as usize > LZOP_MAX_BLOCK {
                return Err(corrupt(r.pos - 4, "extra field too long"));
            }
            r.bytes_n(len as usize)?;
            let _ = r.u32()?;
        }
        Ok(r)
    }

    fn bytes_n(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.inner.read_exact(&mut v).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt(self.pos, "unexpected end of lzop stream")
            } else {
                Error::Read {
                    offset: self.pos,
                    source: e,
                }
            }
        })?;
        self.pos += n as u64;
        Ok(v)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes_n(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes_n(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes_n(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Decodes the next block into `self.block`; false at the end marker.
    fn next_block(&mut self) -> Result<bool> {
        let Some(h) = self.block_header()? else {
            return Ok(false);
        };
        let data = self.bytes_n(h.clen)?;
        self.block = h.decode(data)?;
        self.at = 0;
        Ok(true)
    }

    /// Reads the next block header; `None` at the end marker. The stream is
    /// then positioned at the block's `clen` data bytes.
    pub fn block_header(&mut self) -> Result<Option<LzopBlock>> {
        let at = self.pos;
        let ulen = self.u32()? as usize;
        if ulen == 0 {
            return Ok(None);
        }
        let clen = self.u32()? as usize;
        if ulen > LZOP_MAX_BLOCK || clen > ulen {
            return Err(corrupt(
                at,
                format!("bad block sizes (uncompressed {ulen}, compressed {clen})"),
            ));
        }
        let d_adler = (self.flags & F_ADLER32_D != 0)
            .then(|| self.u32())
            .transpose()?;
        let d_crc = (self.flags & F_CRC32_D != 0)
            .then(|| self.u32())
            .transpose()?;
        if clen < ulen {
            if self.flags & F_ADLER32_C != 0 {
                self.u32()?;
            }
            if self.flags & F_CRC32_C != 0 {
                self.u32()?;
            }
        }
        Ok(Some(LzopBlock {
            at,
            data_at: self.pos,
            ulen,
            clen,
            d_adler,
            d_crc,
        }))
    }

    /// Offset in the compressed stream of the next byte to be read.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl<R: io::Read + io::Seek> LzopReader<R> {
    /// Skips `n` bytes (a block's data) without reading them.
    pub fn skip(&mut self, n: u64) -> Result<()> {
        let delta = i64::try_from(n).map_err(|_| corrupt(self.pos, "block too long"))?;
        self.inner
            .seek(io::SeekFrom::Current(delta))
            .map_err(|source| Error::Read {
                offset: self.pos,
                source,
            })?;
        self.pos += n;
        Ok(())
    }
}

/// One lzop block header: where it is and what its data decodes to.
#[derive(Debug, Clone, Copy)]
pub struct LzopBlock {
    /// Offset of the block header in the compressed stream.
    pub at: u64,
    /// Offset of the block's data.
    pub data_at: u64,
    /// Uncompressed length.
    pub ulen: usize,
    /// Stored length (equal to `ulen` for a block stored uncompressed).
    pub clen: usize,
    /// Adler-32 of the uncompressed data, if the file has them.
    pub d_adler: Option<u32>,
    /// CRC-32 of the uncompressed data, if the file has them.
    pub d_crc: Option<u32>,
}

impl LzopBlock {
    /// Decodes the block's `clen` stored bytes and checks its checksums.
    pub fn decode(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let (at, ulen, clen) = (self.at, self.ulen, self.clen);
        let block = if clen == ulen {
            data
        } else {
            // Our own bounds-checked decoder, capped at the declared size (see lzo1x.rs).
            let mut out = Vec::new();
            crate::lzo1x::decompress(&data, &mut out, ulen)
                .map_err(|e| corrupt(at, format!("LZO1X block does not decode: {e}")))?;
            if out.len() != ulen {
                return Err(corrupt(
                    at,
                    format!("block decodes to {} bytes, header says {ulen}", out.len()),
                ));
            }
            out
        };
        if let Some(want) = self.d_adler {
            if adler2::adler32_slice(&block) != want {
                return Err(corrupt(at, "block adler32 mismatch"));
            }
        }
        if let Some(want) = self.d_crc {
            if crc32fast::hash(&block) != want {
                return Err(corrupt(at, "block crc32 mismatch"));
            }
        }
        Ok(block)
    }
}

impl<R: Read> Read for LzopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if self.done {
                return Ok(0);
            }
            match self.next_block() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return Ok(0);
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Uncompressed bytes per block our writer emits (lzop's default).
pub const BLOCK_SIZE: usize = 256 << 10;

/// The end marker: a block header whose uncompressed length is 0.
pub const END: [u8; 4] = [0; 4];

/// The lzop file header, as lzop 1.04 writes it for stdin input: version
/// 0x1040, LZO1X-1 method (decoded by lzop's one LZO1X decompressor), adler32
/// of the uncompressed data per block, Unix, no file name; `mtime` in seconds
/// since the epoch.
pub fn file_header(mtime: u64) -> Vec<u8> {
    const F_OS_UNIX: u32 = 0x0300_0000;
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&0x1040u16.to_be_bytes()); // version
    h.extend_from_slice(&0x20a0u16.to_be_bytes()); // LZO library version
    h.extend_from_slice(&0x0940u16.to_be_bytes()); // version needed to extract
    h.push(1); // method M_LZO1X_1
    h.push(5); // level (lzop's default -3 writes 5)
    h.extend_from_slice(&(F_ADLER32_D | F_OS_UNIX).to_be_bytes());
    h.extend_from_slice(&0o100644u32.to_be_bytes()); // mode
    h.extend_from_slice(&(mtime as u32).to_be_bytes());
    h.extend_from_slice(&((mtime >> 32) as u32).to_be_bytes());
    h.push(0); // no file name
    let sum = adler2::adler32_slice(&h);
    let mut out = LZOP_MAGIC.to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

/// Appends one lzop block of `block` (at most 64 MiB, lzop's limit; in
/// practice [`BLOCK_SIZE`]) to `out`: LZO1X-1 compressed, or stored as is when
/// compression does not shrink it (as lzop does), with the adler32 of the
/// uncompressed data that [`file_header`] announces.
pub fn write_block(block: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!block.is_empty() && block.len() <= LZOP_MAX_BLOCK);
    let c = crate::lzo1x::compress(block);
    let stored: &[u8] = if c.len() < block.len() { &c } else { block };
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
    out.extend_from_slice(&adler2::adler32_slice(block).to_be_bytes());
    out.extend_from_slice(stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole file from the writer side reads back through [`LzopReader`],
    /// compressible and incompressible (stored) blocks alike.
    #[test]
    fn written_file_reads_back() {
        let mut x = 7u32;
        let mut plain: Vec<u8> = (0..BLOCK_SIZE * 2).map(|i| (i % 97) as u8).collect();
        plain.extend((0..BLOCK_SIZE + 5).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        let mut file = file_header(1_700_000_000);
        for b in plain.chunks(BLOCK_SIZE) {
            write_block(b, &mut file);
        }
        file.extend_from_slice(&END);
        let mut back = Vec::new();
        LzopReader::new(&file[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        // A flipped data byte is caught by the block's adler32 or the decoder.
        let n = file.len();
        file[n - 10] ^= 1;
        assert!(LzopReader::new(&file[..])
            .unwrap()
            .read_to_end(&mut Vec::new())
            .is_err());
    }

    #[test]
    fn header_checksum_is_adler32() {
        // lzop checks the header's adler32; the known value pins the crate's result.
        assert_eq!(adler2::adler32_slice(b"Wikipedia"), 0x11E6_0398);
        let h = file_header(0);
        let body = &h[LZOP_MAGIC.len()..h.len() - 4];
        assert_eq!(h[h.len() - 4..], adler2::adler32_slice(body).to_be_bytes());
    }
}
