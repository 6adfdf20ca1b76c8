//! Compressed archives: detection by magic bytes and streaming decompression (spec §14).
//!
//! Owns [`Compression`], [`detect`] and [`decompressor`], which wraps any
//! reader so that `.vma.zst`, `.vma.gz` and `.vma.lzo` (whatever their file
//! names) read like a plain `.vma`. The lzop container is parsed here; the
//! LZO1X blocks are decoded by `lzokay-native`.

use std::io::{self, BufRead, BufReader, Read};

use crate::error::{Error, Result};

/// How an archive stream is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain VMA stream.
    None,
    /// zstd (`vzdump --compress zstd`).
    Zstd,
    /// gzip or pigz (`--compress gzip`).
    Gzip,
    /// lzop (`--compress lzo`).
    Lzo,
}

impl Compression {
    /// Lower-case name, as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Lzo => "lzo",
        }
    }
}

/// Magic bytes of an lzop file.
pub const LZOP_MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Detects the wrapping from the first bytes of a stream (9 suffice).
pub fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if prefix.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(&LZOP_MAGIC) {
        Compression::Lzo
    } else {
        Compression::None
    }
}

/// Reads the first bytes of `r`, detects its compression and returns a reader
/// of the plain VMA stream (the peeked bytes are replayed).
pub fn decompressor<'a, R: Read + Send + 'a>(
    mut r: R,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    // The first MiB is read whole, then the rest through MiB buffers: a
    // file's reads stay on MiB boundaries (the kernel's copy runs
    // page-aligned), and detection sees more than the magic.
    let mut first = vec![0u8; FIRST_READ];
    let n = crate::header::read_full(&mut r, &mut first, 0)?;
    first.truncate(n);
    let c = detect(&first);
    let src = io::Cursor::new(first).chain(r);
    Ok(match c {
        // The reader's own large reads go straight to the source.
        Compression::None => (c, Box::new(src)),
        Compression::Zstd => {
            // `with_buffer`: zstd decodes straight out of our buffer.
            let d =
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(FIRST_READ, src))
                    .map_err(|source| Error::Read { offset: 0, source })?;
            (c, Box::new(d))
        }
        Compression::Gzip => (
            c,
            Box::new(GzipReader::new(BufReader::with_capacity(FIRST_READ, src))),
        ),
        Compression::Lzo => (
            c,
            Box::new(LzopReader::new(BufReader::with_capacity(FIRST_READ, src))?),
        ),
    })
}

/// Bytes of the first read and of each later read of a compressed source.
const FIRST_READ: usize = 1 << 20;

/// A buffered reader that counts the bytes consumed: the compressed offset
/// of gzip errors.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.pos += n as u64;
    }
}

/// Streams the members of a gzip file one after another (each checked
/// against its CRC-32 and ISIZE by flate2). After a member, a byte 0x1f
/// starts another one (which must be valid); zero bytes up to the end of the
/// file are padding, ignored as `gzip -d` does; anything else is an error
/// naming its offset (`gzip -d` only warns of "trailing garbage", but the
/// archive is then not what was written). The checkpoint pass of
/// `seekable::gzip` applies the same rule.
struct GzipReader<R> {
    /// The member being read; `None` after the last.
    member: Option<flate2::bufread::GzDecoder<Counted<R>>>,
    /// Offset of its header.
    member_at: u64,
}

fn gzip_corrupt(offset: u64, message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Error::Compressed {
            format: "gzip",
            offset,
            message,
        },
    )
}

impl<R: BufRead> GzipReader<R> {
    fn new(inner: R) -> Self {
        GzipReader {
            member: Some(flate2::bufread::GzDecoder::new(Counted { inner, pos: 0 })),
            member_at: 0,
        }
    }
}

/// The rule for the bytes after a gzip member, shared by this streaming
/// reader and the checkpoint pass of `seekable::gzip`: `buf` was read from
/// offset `at`, the member ended at `end`. `Ok(true)`: another member starts
/// here (0x1f right at `end`); `Ok(false)`: `buf` is zero padding, ignored as
/// `gzip -d` does; otherwise the trailing-garbage error at its first
/// non-zero byte (`gzip -d` only warns, but the archive is then not what was
/// written).
pub(crate) fn gzip_after_member(buf: &[u8], at: u64, end: u64) -> Result<bool> {
    if at == end && buf.first() == Some(&0x1f) {
        return Ok(true);
    }
    match buf.iter().position(|&b| b != 0) {
        None => Ok(false),
        Some(k) => Err(Error::Compressed {
            format: "gzip",
            offset: at + k as u64,
            message: format!(
                "trailing garbage after the last gzip member (which ends at byte {end})"
            ),
        }),
    }
}

/// What follows a gzip member: true if another member, false at the end of
/// the file, after zero padding or not ([`gzip_after_member`]).
fn gzip_more<R: BufRead>(r: &mut Counted<R>) -> io::Result<bool> {
    let end = r.pos;
    loop {
        let pos = r.pos;
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        if gzip_after_member(buf, pos, end)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            return Ok(true);
        }
        let n = buf.len();
        r.consume(n);
    }
}

impl<R: BufRead> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(d) = &mut self.member {
            match d.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData
                            | io::ErrorKind::InvalidInput
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Err(gzip_corrupt(
                        d.get_ref().pos,
                        format!("in the member starting at byte {}: {e}", self.member_at),
                    ))
                }
                Err(e) => return Err(e),
            }
            // The member ended, its trailer checked.
            let mut inner = self.member.take().expect("matched").into_inner();
            if gzip_more(&mut inner)? {
                self.member_at = inner.pos;
                self.member = Some(flate2::bufread::GzDecoder::new(inner));
            }
        }
        Ok(0)
    }
}

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
    pub(crate) fn block_header(&mut self) -> Result<Option<LzopBlock>> {
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
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }
}

impl<R: io::Read + io::Seek> LzopReader<R> {
    /// Skips `n` bytes (a block's data) without reading them.
    pub(crate) fn skip(&mut self, n: u64) -> Result<()> {
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
pub(crate) struct LzopBlock {
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
    pub(crate) fn decode(&self, data: Vec<u8>) -> Result<Vec<u8>> {
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
            if adler32(&block) != want {
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

/// Adler-32 as lzop uses it (RFC 1950 §8.2) for headers and blocks.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(b"VMA\0\0\0\0\x01"), Compression::None);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&LZOP_MAGIC), Compression::Lzo);
    }

    fn gz(plain: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let (c, mut r) = decompressor(bytes).unwrap();
        assert_eq!(c, Compression::Gzip);
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn gzip_members_then_zero_padding_decode() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut bytes = gz(&plain[..100_000]);
        bytes.extend_from_slice(&gz(&plain[100_000..]));
        assert_eq!(gunzip(&bytes).unwrap(), plain);
        // Zero padding (as a tape or a block device leaves): ignored, as by gzip -d.
        for pad in [1, 7, 3 << 20] {
            let mut b = bytes.clone();
            b.resize(b.len() + pad, 0);
            assert_eq!(gunzip(&b).unwrap(), plain, "{pad} zero bytes");
        }
    }

    #[test]
    fn gzip_trailing_garbage_is_an_error_with_its_offset() {
        let plain = vec![5u8; 100_000];
        let bytes = gz(&plain);
        let end = bytes.len();
        for (tail, at) in [(&b"garbage"[..], end), (&b"\0\0\0x"[..], end + 3)] {
            let mut b = bytes.clone();
            b.extend_from_slice(tail);
            let e = gunzip(&b).unwrap_err().to_string();
            assert!(
                e.contains(&format!("compressed byte offset {at}: trailing garbage")),
                "{tail:?}: {e}"
            );
            assert!(e.contains(&format!("ends at byte {end}")), "{e}");
        }
        // A byte 0x1f starts another member, which must be one.
        let mut b = bytes.clone();
        b.extend_from_slice(b"\x1f\x8bjunk");
        let e = gunzip(&b).unwrap_err().to_string();
        assert!(e.contains(&format!("member starting at byte {end}")), "{e}");
    }

    #[test]
    fn adler32_known_value() {
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }
}
