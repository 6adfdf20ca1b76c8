//! Compressed archives: detection by magic bytes and streaming decompression (spec §14).
//!
//! Owns [`Compression`], [`detect`] and [`decompressor`], which wraps any
//! reader so that `.vma.zst`, `.vma.gz` and `.vma.lzo` (whatever their file
//! names) read like a plain `.vma`. The lzop container (read and write) is
//! [`lzop`], its LZO1X blocks [`crate::lzo1x`]; the zstd frame layout our
//! writer promises and random access relies on is [`ZSTD_FRAME_SIZE`] and
//! [`zstd_frames`].

use std::io::{self, BufRead, BufReader, Read};

use crate::error::{Error, Result};

pub mod lzop;
pub use lzop::LzopBlock;
pub use lzop::LzopReader;

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

/// Uncompressed bytes per zstd frame of `vma create --compress zstd`.
/// Random access (the `vma-seekable` crate) decodes up to a whole frame per cache
/// miss: at 512 KiB a random 4 KiB read costs a fraction of a millisecond
/// (1 MiB gave ~4000 reads/s through the mount, short of the 5000/s goal),
/// for about 1% in size against 8 MiB frames.
pub const ZSTD_FRAME_SIZE: usize = 512 << 10;

/// Compresses `data` into independent zstd frames of [`ZSTD_FRAME_SIZE`]
/// input bytes each (one empty frame for empty input), the layout our writer
/// promises: each frame records its content size (what the seekable index
/// reads) and a content checksum (XXH64, checked by every zstd decoder; VMA
/// has no data checksum of its own). `zstd -d` reads the concatenation as one
/// stream. `level` is zstd's (1..=19 typical).
pub fn zstd_frames(level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut z = zstd::bulk::Compressor::new(level)?;
    z.include_contentsize(true)?;
    z.include_checksum(true)?;
    if data.is_empty() {
        return z.compress(data);
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    for frame in data.chunks(ZSTD_FRAME_SIZE) {
        out.extend_from_slice(&z.compress(frame)?);
    }
    Ok(out)
}

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
/// `vma-seekable`'s gzip checkpoint pass applies the same rule.
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
/// reader and the checkpoint pass of `vma-seekable`: `buf` was read from
/// offset `at`, the member ended at `end`. `Ok(true)`: another member starts
/// here (0x1f right at `end`); `Ok(false)`: `buf` is zero padding, ignored as
/// `gzip -d` does; otherwise the trailing-garbage error at its first
/// non-zero byte (`gzip -d` only warns, but the archive is then not what was
/// written).
pub fn gzip_after_member(buf: &[u8], at: u64, end: u64) -> Result<bool> {
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
}
