//! The [`ReadAt`] over a table of independently decodable frames.
//!
//! Owns [`Frame`], [`Codec`], [`Pinned`] and [`FrameSource`]: a read finds
//! its frame(s) by binary search, decodes them (zstd frame or lzop block) and
//! keeps the last few decoded frames in an LRU cache bounded in bytes. The
//! pinned ranges (VMA header and extent headers, recorded at index time) are
//! answered from memory, so [`vma_format::IndexedReader::open`] decodes nothing.
//!
//! A zstd frame of at least [`PREFIX_MIN`] bytes is first decoded only up to
//! the end of the read that needs it (rounded up to [`PREFIX_STEP`]),
//! streaming, so a random read decodes half a frame on average; a later read
//! beyond that prefix decodes the whole frame (what sequential readers see).
//! Smaller frames (cache-file frames, lzop blocks) are always decoded whole,
//! which also verifies a cache frame's content checksum.
//!
//! A gzip span ends only at a deflate block boundary, and one block may
//! decode to any length, so a span larger than [`GZIP_PIECE`] is cached as
//! pieces of that size instead of whole: memory stays bounded whatever the
//! archive (see [`GZIP_PIECE`]).

use std::cell::RefCell;
use std::io;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::gzip::{self, SpanError};
use crate::types::{Codec, Frame, Pinned, Points};
use vma_format::compress::LzopBlock;
use vma_format::ReadAt;

/// Largest piece of a gzip span decoded and cached at once.
///
/// Real compressors end a deflate block within 8.1 MiB of output (measured
/// on zeros: gzip -1/-9 8,453,886 bytes, zlib 5.2 MiB, pigz 128 KiB), so
/// with 2 MiB spans no real file has a span above 10.1 MiB and this changes
/// nothing for them. A crafted file can hold one block of GiBs: rather than
/// refusing it (the format allows it), a read in such a span decodes from
/// its checkpoint and drops everything before its piece. That costs time,
/// never memory: a random read there may decode the whole span (as the pass
/// did once); reading piece after piece on one thread resumes where the
/// previous piece stopped, so a sequential read decodes the span once.
pub(crate) const GZIP_PIECE: u64 = 16 << 20;

/// zstd frames at least this large are decoded by prefix first: those of
/// our writer ([`vma_format::compress::ZSTD_FRAME_SIZE`]) and larger.
pub(crate) const PREFIX_MIN: u64 = vma_format::compress::ZSTD_FRAME_SIZE as u64;
/// A prefix decode stops at a multiple of this (a VMA cluster).
const PREFIX_STEP: usize = 64 << 10;
/// Compressed bytes read at a time by a prefix decode.
const PREFIX_READ: usize = 64 << 10;

thread_local! {
    // One decompression context per reading thread, reused across frames.
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // The streaming context of prefix decodes, per reading thread.
    static DSTREAM: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
    // The compressed bytes of the frame being decoded, per reading thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    // The decompressed deflate window of a gzip checkpoint, per reading thread.
    static WINDOW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes one zstd frame of known decoded length into `out` (empty).
fn decode_zstd(data: &[u8], u_len: usize, out: &mut Vec<u8>) -> io::Result<()> {
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = slot.as_mut().expect("just set");
        out.reserve(u_len);
        d.decompress_to_buffer(data, out)?;
        Ok(())
    })
}

/// Random access to a decompressed stream through its frame table.
pub(crate) struct FrameSource {
    /// The compressed data: the archive, or its cache file.
    file: Arc<dyn ReadAt>,
    /// The compressed file, for error messages.
    path: PathBuf,
    codec: Codec,
    pub(super) frames: Vec<Frame>,
    pub(super) size: u64,
    pub(super) pinned: Pinned,
    /// gzip: the checkpoint of each frame.
    pub(super) points: Points,
    /// Frames are decoded and cached in pieces of at most this length
    /// ([`GZIP_PIECE`] for gzip spans; other frames are bounded when the
    /// table is built, and kept whole).
    piece: u64,
    /// Unique among the sources of the process (gzip resumes by span).
    id: u64,
    cache: Mutex<Pieces>,
}

/// Decoded pieces by (frame, piece number).
type Pieces = LruCache<(usize, u64), Arc<Vec<u8>>>;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// LRU slots for decoded pieces of `frames` within `memory` (at least two).
fn slots(frames: &[Frame], piece: u64, memory: usize) -> NonZeroUsize {
    let largest = frames.iter().map(|f| f.u_len).max().unwrap_or(1);
    let largest = largest.min(piece).max(1);
    let n = (memory as u64 / largest).clamp(2, 4096) as usize;
    NonZeroUsize::new(n).expect("≥ 2")
}

impl FrameSource {
    /// `memory` bounds the decoded frames kept (at least two frames are).
    pub fn new(
        file: Arc<dyn ReadAt>,
        path: PathBuf,
        codec: Codec,
        frames: Vec<Frame>,
        pinned: Pinned,
        memory: usize,
    ) -> Self {
        let size = frames.last().map_or(0, |f| f.u_off + f.u_len);
        let piece = if codec == Codec::Gzip {
            GZIP_PIECE
        } else {
            u64::MAX
        };
        let slots = slots(&frames, piece, memory);
        FrameSource {
            file,
            path,
            codec,
            frames,
            size,
            pinned,
            points: Points::default(),
            piece,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache: Mutex::new(LruCache::new(slots)),
        }
    }

    /// Another gzip piece length (tests: a small one on small files).
    #[cfg(test)]
    pub fn set_piece(&mut self, piece: u64, memory: usize) {
        self.piece = piece.max(1);
        let n = slots(&self.frames, self.piece, memory);
        self.lock().resize(n);
    }

    /// Replaces the pinned ranges (recorded by a walk over this source).
    pub fn set_pinned(&mut self, pinned: Pinned) {
        self.pinned = pinned;
    }

    /// Sets the gzip checkpoints, one per frame ([`Codec::Gzip`]).
    pub fn set_points(&mut self, points: Points) {
        self.points = points;
    }

    fn corrupt(&self, f: &Frame, message: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: frame at compressed byte offset {} (decompressed {}): {message}",
                self.path.display(),
                f.c_off,
                f.u_off
            ),
        )
    }

    /// Piece `k` of frame `i` (the whole frame but for large gzip spans,
    /// [`GZIP_PIECE`]) decoded at least up to byte `need` of the piece, from
    /// the cache or decoded now: a prefix on the first touch of a large zstd
    /// frame or gzip piece, else the whole piece.
    fn frame(&self, i: usize, k: u64, need: usize) -> io::Result<Arc<Vec<u8>>> {
        let f = &self.frames[i];
        let skip = k * self.piece;
        let len = (f.u_len - skip).min(self.piece);
        let mut upto = None;
        match self.lock().get(&(i, k)) {
            Some(d) if d.len() >= need => return Ok(Arc::clone(d)),
            // Read again beyond its prefix: likely sequential, decode it all.
            Some(_) => {}
            // (Not for a later piece of a gzip span: decoding up to it costs
            // more than the piece, so decode it once, whole.)
            None if self.codec != Codec::Lzo && len >= PREFIX_MIN && k == 0 => {
                let end = need.div_ceil(PREFIX_STEP).saturating_mul(PREFIX_STEP);
                if (end as u64) < len {
                    upto = Some(end);
                }
            }
            None => {}
        }
        // Reuse the memory of the frame about to be evicted (when no reader
        // still holds it): no fresh allocation, zeroing and page faults.
        let mut out = {
            let mut c = self.lock();
            if c.len() >= c.cap().get() {
                c.pop_lru().and_then(|(_, old)| Arc::try_unwrap(old).ok())
            } else {
                None
            }
        }
        .unwrap_or_default();
        // Decode outside the lock: other threads keep reading meanwhile (two
        // threads may decode the same frame at once; both results are equal).
        SCRATCH.with(|s| {
            let s = &mut s.borrow_mut();
            match upto {
                _ if self.codec == Codec::Gzip => {
                    // `len` ≤ the piece: fits in memory.
                    let end = upto.unwrap_or(len as usize);
                    self.decode_gzip(i, skip, end, &mut out, s)
                }
                Some(end) => self.decode_prefix_into(i, end, &mut out, s),
                None => self.decode_into(i, &mut out, s),
            }
        })?;
        let decoded = Arc::new(out);
        self.lock().put((i, k), Arc::clone(&decoded));
        Ok(decoded)
    }

    /// Decodes frame `i` into `out`, reusing the buffers' memory (`scratch`
    /// holds the compressed bytes): no zeroing or page faults per frame.
    pub fn decode_into(
        &self,
        i: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let f = &self.frames[i];
        let c_len = usize::try_from(f.c_len).map_err(|_| self.corrupt(f, "frame too large"))?;
        let u_len = usize::try_from(f.u_len).map_err(|_| self.corrupt(f, "frame too large"))?;
        if self.codec == Codec::Gzip {
            if f.u_len > self.piece {
                return Err(self.corrupt(f, "gzip span too large to decode whole"));
            }
            return self.decode_gzip(i, 0, u_len, out, scratch);
        }
        if scratch.len() < c_len {
            scratch.resize(c_len, 0);
        }
        let data = &mut scratch[..c_len];
        let got = self.file.read_full_at(f.c_off, data)?;
        if got != c_len {
            return Err(self.corrupt(f, "compressed file is shorter than its index says"));
        }
        out.clear();
        match self.codec {
            Codec::Zstd => decode_zstd(data, u_len, out).map_err(|e| self.corrupt(f, e))?,
            Codec::Lzo => {
                *out = LzopBlock {
                    at: f.c_off,
                    data_at: f.c_off,
                    ulen: u_len,
                    clen: c_len,
                    d_adler: (f.sums & 1 != 0).then_some(f.adler),
                    d_crc: (f.sums & 2 != 0).then_some(f.crc),
                }
                .decode(data.to_vec())
                .map_err(|e| self.corrupt(f, e))?
            }
            Codec::Gzip => unreachable!("decoded above"),
        }
        if out.len() != u_len {
            return Err(self.corrupt(
                f,
                format!("decodes to {} bytes, index says {u_len}", out.len()),
            ));
        }
        Ok(())
    }

    /// Decodes the first `end` bytes (less than the whole) of zstd frame `i`
    /// into `out`, reading the compressed bytes only as far as needed.
    fn decode_prefix_into(
        &self,
        i: usize,
        end: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        use zstd::zstd_safe::{get_error_name, DCtx, InBuffer, OutBuffer, ResetDirective};
        let f = &self.frames[i];
        let c_len = usize::try_from(f.c_len).map_err(|_| self.corrupt(f, "frame too large"))?;
        let zerr = |code| self.corrupt(f, get_error_name(code));
        // Overwrite what `out` holds (a reused frame) instead of zeroing it.
        if out.len() > end {
            out.truncate(end);
        } else {
            out.resize(end, 0);
        }
        if scratch.len() < PREFIX_READ {
            scratch.resize(PREFIX_READ, 0);
        }
        DSTREAM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = slot.get_or_insert_with(DCtx::create);
            d.reset(ResetDirective::SessionOnly).map_err(zerr)?;
            let mut output = OutBuffer::around(&mut out[..]);
            let (mut read, mut pos, mut len) = (0usize, 0usize, 0usize);
            while output.pos() < end {
                if pos == len && read < c_len {
                    len = (c_len - read).min(PREFIX_READ);
                    let got = self
                        .file
                        .read_full_at(f.c_off + read as u64, &mut scratch[..len])?;
                    if got != len {
                        return Err(
                            self.corrupt(f, "compressed file is shorter than its index says")
                        );
                    }
                    read += len;
                    pos = 0;
                }
                let before = (output.pos(), pos);
                let mut input = InBuffer::around(&scratch[pos..len]);
                let left = d.decompress_stream(&mut output, &mut input).map_err(zerr)?;
                pos += input.pos();
                // No progress and no more input to give: truncated or corrupt.
                let stuck = (output.pos(), pos) == before && !(pos == len && read < c_len);
                if left == 0 || stuck {
                    break;
                }
            }
            if output.pos() < end {
                return Err(self.corrupt(
                    f,
                    format!("decodes to fewer than {end} bytes, index says {}", f.u_len),
                ));
            }
            Ok(())
        })
    }

    /// Decodes bytes `skip..skip + end` of gzip span `i` from its checkpoint.
    fn decode_gzip(
        &self,
        i: usize,
        skip: u64,
        end: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let f = &self.frames[i];
        let (Some(p), Some(zw)) = (self.points.points.get(i), self.points.window(i)) else {
            return Err(self.corrupt(f, "no checkpoint for this span"));
        };
        WINDOW.with(|w| {
            let mut window = w.borrow_mut();
            window.clear();
            if p.window_len > 0 {
                decode_zstd(zw, p.window_len as usize, &mut window)
                    .map_err(|e| self.corrupt(f, format!("checkpoint window: {e}")))?;
            }
            if window.len() != p.window_len as usize {
                return Err(self.corrupt(f, "checkpoint window has the wrong length"));
            }
            let span = (self.id, i);
            gzip::decode_span(&*self.file, span, f, p, &window, skip, end, out, scratch).map_err(
                |e| match e {
                    SpanError::Io(e) => e,
                    SpanError::Corrupt(m) => self.corrupt(f, m),
                },
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pieces> {
        // A panic while holding the lock leaves a consistent cache: recover it.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub fn cache_slots(&self) -> usize {
        self.lock().cap().get()
    }

    /// The longest decoded piece in the cache.
    #[cfg(test)]
    pub fn largest_cached(&self) -> usize {
        self.lock().iter().map(|(_, d)| d.len()).max().unwrap_or(0)
    }
}

impl ReadAt for FrameSource {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.size - offset).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        if let Some(n) = self.pinned.read(offset, buf) {
            return Ok(n);
        }
        // Fill as much of `buf` as the stream has, frame by frame.
        let mut i = self.frames.partition_point(|f| f.u_off + f.u_len <= offset);
        let mut done = 0;
        while done < buf.len() && i < self.frames.len() {
            let f = self.frames[i];
            let at = offset + done as u64 - f.u_off;
            // The piece of the frame holding `at` (the frame but for huge
            // gzip spans).
            let k = at / self.piece;
            let start = k * self.piece;
            let len = (f.u_len - start).min(self.piece);
            let at = (at - start) as usize;
            let need = usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(at + (buf.len() - done));
            let data = self.frame(i, k, need)?;
            let n = (buf.len() - done).min(data.len() - at);
            buf[done..done + n].copy_from_slice(&data[at..at + n]);
            done += n;
            if start + len == f.u_len && at + n == len as usize {
                i += 1;
            }
        }
        Ok(done)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
}

#[cfg(test)]
#[path = "gzip_tests.rs"]
mod gzip_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A source over `n` zstd frames of `len` bytes each (byte i of the stream is i*7 mod 251).
    fn frames(n: u64, len: u64, memory: usize) -> (tempfile::NamedTempFile, FrameSource, Vec<u8>) {
        let stream: Vec<u8> = (0..n * len).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = Vec::new();
        let mut table = Vec::new();
        for (k, c) in stream.chunks(len as usize).enumerate() {
            let z = zstd::bulk::compress(c, 1).unwrap();
            table.push(Frame {
                c_off: file.len() as u64,
                c_len: z.len() as u64,
                u_off: k as u64 * len,
                u_len: c.len() as u64,
                adler: 0,
                crc: 0,
                sums: 0,
            });
            file.extend_from_slice(&z);
        }
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, &file).unwrap();
        let f = t.reopen().unwrap();
        let src = FrameSource::new(
            Arc::new(f),
            t.path().into(),
            Codec::Zstd,
            table,
            Pinned::default(),
            memory,
        );
        (t, src, stream)
    }

    #[test]
    fn reads_cross_frames_and_stop_at_the_end() {
        let (_t, src, stream) = frames(5, 1000, 1 << 20);
        assert_eq!(src.size().unwrap(), 5000);
        for (off, len) in [
            (0usize, 5000usize),
            (999, 2),
            (1500, 2600),
            (4990, 100),
            (5000, 10),
        ] {
            let mut buf = vec![0u8; len];
            let n = src.read_at_offset(off as u64, &mut buf).unwrap();
            let end = (off + len).min(5000);
            assert_eq!(n, end.saturating_sub(off), "{off}+{len}");
            assert_eq!(&buf[..n], &stream[off.min(5000)..end]);
        }
    }

    #[test]
    fn decoded_frames_are_bounded_by_memory() {
        let (_t, src, _) = frames(8, 100_000, 250_000);
        assert_eq!(src.cache_slots(), 2);
        let mut b = [0u8; 10];
        for i in 0..8 {
            src.read_at_offset(i * 100_000, &mut b).unwrap();
        }
        assert_eq!(src.lock().len(), 2);
        let (_t, src, _) = frames(2, 100_000, 1);
        assert_eq!(src.cache_slots(), 2, "never fewer than two");
    }

    #[test]
    fn large_zstd_frames_are_decoded_by_prefix_then_whole() {
        let len = PREFIX_MIN * 2;
        let (_t, src, stream) = frames(3, len, 64 << 20);
        let cached = |i: usize| src.lock().peek(&(i, 0)).map(|d| d.len());
        let mut b = [0u8; 4096];
        // A read in the first quarter of frame 1 decodes up to the next 64 KiB.
        let off = len + 100_000;
        src.read_at_offset(off, &mut b).unwrap();
        assert_eq!(&b[..], &stream[off as usize..off as usize + 4096]);
        let prefix = 104_096usize.div_ceil(PREFIX_STEP) * PREFIX_STEP;
        assert_eq!(cached(1), Some(prefix));
        // Within the prefix: served as is.
        src.read_at_offset(len + 10, &mut b).unwrap();
        assert_eq!(&b[..], &stream[len as usize + 10..len as usize + 4106]);
        assert_eq!(cached(1), Some(prefix));
        // Beyond it: the whole frame, once.
        let off = 2 * len - 4096;
        src.read_at_offset(off, &mut b).unwrap();
        assert_eq!(&b[..], &stream[off as usize..off as usize + 4096]);
        assert_eq!(cached(1), Some(len as usize));
        // A read across frames 1 and 2 takes a prefix of frame 2.
        let mut big = vec![0u8; 300_000];
        let off = 2 * len - 1000;
        src.read_at_offset(off, &mut big).unwrap();
        assert_eq!(big, &stream[off as usize..off as usize + 300_000]);
        assert!(cached(2).unwrap() < len as usize);
        // Reused buffers (eviction) keep giving the right bytes.
        let (_t, src, stream) = frames(6, len, 1);
        for k in [5u64, 0, 3, 1, 4, 2, 5, 0] {
            let off = k * len + (k * 77_777) % (len - 4096);
            src.read_at_offset(off, &mut b).unwrap();
            assert_eq!(&b[..], &stream[off as usize..off as usize + 4096], "{k}");
        }
    }

    #[test]
    fn a_truncated_large_frame_fails_its_prefix_decode_with_the_offset() {
        let len = PREFIX_MIN * 2;
        let (t, src, _) = frames(2, len, 64 << 20);
        let f = src.frames[0];
        let mut bytes = std::fs::read(t.path()).unwrap();
        // Cut the first frame short and zero its remainder.
        for b in &mut bytes[f.c_off as usize + 100..(f.c_off + f.c_len) as usize] {
            *b = 0;
        }
        std::fs::write(t.path(), &bytes).unwrap();
        let mut b = [0u8; 4096];
        let e = src
            .read_at_offset(len - 8192, &mut b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("compressed byte offset 0"), "{e}");
    }

    #[test]
    fn a_frame_that_does_not_decode_names_the_file_and_offset() {
        let (t, src, _) = frames(3, 1000, 1 << 20);
        let f = src.frames[1];
        let mut bytes = std::fs::read(t.path()).unwrap();
        bytes.truncate(f.c_off as usize + 3);
        std::fs::write(t.path(), &bytes).unwrap();
        let mut b = [0u8; 10];
        let e = src.read_at_offset(1500, &mut b).unwrap_err().to_string();
        assert!(
            e.contains(&format!("compressed byte offset {}", f.c_off)),
            "{e}"
        );
        assert!(e.contains(&t.path().display().to_string()), "{e}");
    }
}
