//! The data types every other module shares, and nothing else: the frame
//! table ([`Frame`], [`Codec`]), the VMA structures kept verbatim
//! ([`Pinned`]), the gzip checkpoints ([`Point`], [`Points`]), and a
//! [`Cursor`] that reads any [`ReadAt`] as a stream. First in
//! the crate's order of modules: it depends on no other module of the crate.

use vma_format::ReadAt;

/// How the frames of a table are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Each frame is one complete zstd frame.
    Zstd,
    /// Each frame is the data of one lzop block.
    Lzo,
    /// Each frame is a span of a gzip member, from a deflate checkpoint
    /// ([`crate::gzip`]).
    Gzip,
}

/// One independently decodable piece of the compressed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Offset of the encoded bytes in the compressed file.
    pub c_off: u64,
    /// Length of the encoded bytes.
    pub c_len: u64,
    /// Offset of the decoded bytes in the decompressed stream.
    pub u_off: u64,
    /// Length of the decoded bytes.
    pub u_len: u64,
    /// lzop only: Adler-32 of the decoded bytes (`sums & 1`).
    pub adler: u32,
    /// lzop only: CRC-32 of the decoded bytes (`sums & 2`).
    pub crc: u32,
    /// Which of `adler` / `crc` are present.
    pub sums: u8,
}

/// Byte ranges of the decompressed stream kept verbatim (sorted, disjoint).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Pinned {
    /// `(offset, length, position in blob)`.
    pub ranges: Vec<(u64, u32, u64)>,
    pub blob: Vec<u8>,
}

impl Pinned {
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        self.ranges
            .push((offset, data.len() as u32, self.blob.len() as u64));
        self.blob.extend_from_slice(data);
    }

    /// Serves `buf` entirely from one pinned range, or returns `None`.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let i = self
            .ranges
            .partition_point(|r| r.0 <= offset)
            .checked_sub(1)?;
        let (start, len, pos) = self.ranges[i];
        let end = start + u64::from(len);
        let want_end = offset.checked_add(buf.len() as u64)?;
        if want_end > end {
            return None;
        }
        let from = usize::try_from(pos + (offset - start)).ok()?;
        buf.copy_from_slice(self.blob.get(from..from + buf.len())?);
        Some(buf.len())
    }
}

/// The deflate window: the most a back-reference reaches.
pub(crate) const WINDOW: usize = 32 << 10;

/// Where the decoding of one span starts, besides its frame's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    /// Bits of the byte at the frame's `c_off` that the previous block used
    /// (0: the span starts on that byte's boundary). The span starts with
    /// the byte's `bits` high bits.
    pub bits: u8,
    /// Decoded length of the window (at most [`WINDOW`]; 0 at a member start).
    pub window_len: u32,
    /// The zstd-compressed window: position in [`Points::blob`] and length.
    pub at: u64,
    pub len: u32,
}

/// The checkpoints of a gzip file, one per frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Points {
    pub points: Vec<Point>,
    /// The compressed windows, back to back.
    pub blob: Vec<u8>,
}

impl Points {
    /// The compressed window of checkpoint `i` (bounds checked by the sidecar).
    pub fn window(&self, i: usize) -> Option<&[u8]> {
        let p = self.points.get(i)?;
        let at = usize::try_from(p.at).ok()?;
        self.blob.get(at..at.checked_add(p.len as usize)?)
    }
}

/// Reads a [`ReadAt`] front to back (`Read + Seek`), for the streaming
/// decompressors and the lzop block walk over any source.
pub(crate) struct Cursor<'a> {
    src: &'a dyn ReadAt,
    pos: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a dyn ReadAt) -> Self {
        Cursor { src, pos: 0 }
    }
}

impl std::io::Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.src.read_at_offset(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Cursor<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let (base, delta) = match to {
            std::io::SeekFrom::Start(n) => (n, 0),
            std::io::SeekFrom::Current(d) => (self.pos, d),
            std::io::SeekFrom::End(d) => (self.src.size()?, d),
        };
        self.pos = base
            .checked_add_signed(delta)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// Incompressible bytes from `seed` (xorshift), for the unit tests of the
/// codec and storage layers.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_serves_only_contained_reads() {
        let mut p = Pinned::default();
        p.push(0, b"hello");
        p.push(100, b"world!");
        let mut b = [0u8; 3];
        assert_eq!(p.read(1, &mut b), Some(3));
        assert_eq!(&b, b"ell");
        assert_eq!(p.read(3, &mut b), None); // crosses the end of "hello"
        assert_eq!(p.read(50, &mut b), None);
        assert_eq!(p.read(103, &mut b), Some(3));
        assert_eq!(&b, b"ld!");
        assert_eq!(p.read(104, &mut b), None);
    }
}
