//! Random access into gzip by deflate checkpoints (the method of zlib's
//! `zran.c`).
//!
//! Owns the one pass over a gzip file that records checkpoints ([`pass`])
//! and the decoding of one span from its checkpoint ([`decode_span`]), both
//! with the raw inflater of [`crate::inflate`].
//!
//! The pass inflates every member with `Z_BLOCK`, so that inflate stops at
//! each deflate block boundary. At the first boundary at least `span` decoded
//! bytes after the previous checkpoint it records a new one: the compressed
//! byte, the bits of that byte already used by the previous block, and the
//! 32 KiB of decoded data before it (the deflate window; fewer at the start
//! of a member), zstd-compressed. A member start is a checkpoint with no
//! window. Each member's CRC-32 and ISIZE are checked, and each span gets its
//! own CRC-32 (kept in [`Frame::crc`]) so that a random read of a whole span
//! is checked too.
//!
//! A span is then a [`Frame`] of [`crate::source::Codec::Gzip`]: `c_off` is
//! the byte holding its first bit, `c_len` reaches the byte holding its last.
//! A deflate block may decode to any length, so may a span: reads cache a
//! span longer than [`crate::source::GZIP_PIECE`] in pieces, each decoded
//! from the checkpoint, dropping the bytes before it ([`decode_span`]'s
//! `skip`). The pass itself holds only [`OUT`] bytes of output at a time.
//!
//! After the last member, zero bytes (padding) are ignored, as `gzip -d`
//! does; any other byte is an error naming its offset (as in the streaming
//! reader of `crate::compress`).

use std::fs::File;
use std::io;

use crate::inflate::{self as z, Inflater};
use crate::scan::VmaWalker;
use crate::source::{Frame, Pinned};
use vma_format::error::{Error, Result};
use vma_format::ReadAt;

/// The deflate window: the most a back-reference reaches.
pub(crate) const WINDOW: usize = 32 << 10;
/// zstd level of the stored windows.
const WINDOW_LEVEL: i32 = 3;
/// Compressed bytes read at a time.
const READ: usize = 256 << 10;
/// Decoded bytes produced by one pass step (plus the window kept before them).
const OUT: usize = 1 << 20;

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
    fn push(&mut self, bits: u8, window: &[u8]) -> io::Result<()> {
        let at = self.blob.len() as u64;
        if !window.is_empty() {
            let c = zstd::bulk::compress(window, WINDOW_LEVEL)?;
            self.blob.extend_from_slice(&c);
        }
        self.points.push(Point {
            bits,
            window_len: window.len() as u32,
            at,
            len: (self.blob.len() as u64 - at) as u32,
        });
        Ok(())
    }

    /// The compressed window of checkpoint `i` (bounds checked by the sidecar).
    pub fn window(&self, i: usize) -> Option<&[u8]> {
        let p = self.points.get(i)?;
        let at = usize::try_from(p.at).ok()?;
        self.blob.get(at..at.checked_add(p.len as usize)?)
    }
}

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Compressed {
        format: "gzip",
        offset,
        message: message.into(),
    }
}

/// The compressed file read forward through a buffer.
struct Input<'a> {
    file: &'a File,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    pos: usize,
    end: usize,
}

impl Input<'_> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Reads more (keeping what is unread); false at the end of the file.
    fn fill(&mut self) -> Result<bool> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.base += self.pos as u64;
        self.end -= self.pos;
        self.pos = 0;
        let at = self.base + self.end as u64;
        if at >= self.len || self.end == self.buf.len() {
            return Ok(false);
        }
        let want = (self.buf.len() - self.end).min((self.len - at) as usize);
        let got = self
            .file
            .read_full_at(at, &mut self.buf[self.end..self.end + want])
            .map_err(|source| Error::Read { offset: at, source })?;
        self.end += got;
        Ok(got > 0)
    }

    fn byte(&mut self) -> Result<Option<u8>> {
        if self.pos == self.end && !self.fill()? {
            return Ok(None);
        }
        self.pos += 1;
        Ok(Some(self.buf[self.pos - 1]))
    }

    fn need(&mut self, what: &str) -> Result<u8> {
        let at = self.offset();
        self.byte()?
            .ok_or_else(|| corrupt(at, format!("file ends inside the {what}")))
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<()> {
        for _ in 0..n {
            self.need(what)?;
        }
        Ok(())
    }
}

/// Reads one member header (RFC 1952); false at the end of the file.
fn member_header(inp: &mut Input<'_>) -> Result<bool> {
    let start = inp.offset();
    let Some(id1) = inp.byte()? else {
        return Ok(false);
    };
    let id2 = inp.need("gzip header")?;
    let cm = inp.need("gzip header")?;
    if [id1, id2] != [0x1f, 0x8b] {
        return Err(corrupt(start, "no gzip member header (bad magic)"));
    }
    if cm != 8 {
        return Err(corrupt(
            start,
            format!("compression method {cm}, not deflate"),
        ));
    }
    let flg = inp.need("gzip header")?;
    if flg & 0xe0 != 0 {
        return Err(corrupt(start, "reserved gzip header flags set"));
    }
    inp.skip(6, "gzip header")?; // MTIME, XFL, OS
    if flg & 4 != 0 {
        let xlen = u16::from_le_bytes([inp.need("gzip header")?, inp.need("gzip header")?]);
        inp.skip(usize::from(xlen), "gzip extra field")?;
    }
    for (bit, what) in [(8, "gzip file name"), (16, "gzip comment")] {
        if flg & bit != 0 {
            while inp.need(what)? != 0 {}
        }
    }
    if flg & 2 != 0 {
        inp.skip(2, "gzip header")?;
    }
    Ok(true)
}

/// What follows a member: true if another member, false at the end of the
/// file, after zero padding or not (the rule of
/// [`vma_format::compress::gzip_after_member`], shared with the streaming reader).
fn more_members(inp: &mut Input<'_>) -> Result<bool> {
    let end = inp.offset();
    loop {
        let at = inp.offset();
        let Some(b) = inp.byte()? else {
            return Ok(false);
        };
        if vma_format::compress::gzip_after_member(&[b], at, end)? {
            // Unread it (`byte` leaves it in the buffer): the header's.
            inp.pos -= 1;
            return Ok(true);
        }
    }
}

/// What the checkpointing pass learnt.
pub(crate) struct PassResult {
    pub size: u64,
    pub pinned: Pinned,
    pub frames: Vec<Frame>,
    pub points: Points,
}

/// The span being decoded by the pass.
struct Open {
    c_off: u64,
    u_off: u64,
    crc: crc32fast::Hasher,
}

/// Decodes the whole gzip file once, checking every member's trailer,
/// recording the pinned VMA structures and a checkpoint at each member start
/// and at the first block boundary `span` decoded bytes after the previous.
pub(crate) fn pass(file: &File, len: u64, span: u64, progress: &dyn Fn(u64)) -> Result<PassResult> {
    let mut inp = Input {
        file,
        len,
        buf: vec![0; READ],
        base: 0,
        pos: 0,
        end: 0,
    };
    let mut inf = Inflater::new().map_err(|source| Error::Read { offset: 0, source })?;
    let mut out = vec![0u8; WINDOW + OUT];
    let mut walker = VmaWalker::new();
    let mut res = PassResult {
        size: 0,
        pinned: Pinned::default(),
        frames: Vec::new(),
        points: Points::default(),
    };
    let mut u_pos = 0u64;
    let span = span.max(1);
    let mut members = 0u64;
    let close = |res: &mut PassResult, open: Open, c_end: u64, u_end: u64| {
        if u_end > open.u_off {
            res.frames.push(Frame {
                c_off: open.c_off,
                c_len: c_end - open.c_off,
                u_off: open.u_off,
                u_len: u_end - open.u_off,
                adler: 0,
                crc: open.crc.finalize(),
                sums: 2,
            });
        } else {
            // An empty span (an empty member): no frame, no checkpoint.
            res.points.points.pop();
        }
    };
    loop {
        let member_at = inp.offset();
        if members > 0 && !more_members(&mut inp)? {
            break;
        }
        if !member_header(&mut inp)? {
            if members == 0 {
                return Err(corrupt(0, "empty file"));
            }
            break;
        }
        members += 1;
        inf.reset().map_err(|source| Error::Read {
            offset: member_at,
            source,
        })?;
        let member_u = u_pos;
        let mut crc = crc32fast::Hasher::new();
        let mut open = Open {
            c_off: inp.offset(),
            u_off: u_pos,
            crc: crc32fast::Hasher::new(),
        };
        res.points.push(0, &[]).map_err(|source| Error::Read {
            offset: member_at,
            source,
        })?;
        // Decoded bytes in `out`: the window (up to WINDOW) then new ones.
        let mut olen = 0usize;
        loop {
            if olen == out.len() {
                out.copy_within(olen - WINDOW..olen, 0);
                olen = WINDOW;
            }
            if inp.pos == inp.end {
                inp.fill()?;
                progress(inp.base + inp.end as u64);
            }
            let at = inp.offset();
            let step = inf.run(&inp.buf[inp.pos..inp.end], &mut out[olen..], z::Z_BLOCK);
            inp.pos += step.consumed;
            let new = &out[olen..olen + step.produced];
            walker.feed(u_pos, new);
            crc.update(new);
            open.crc.update(new);
            olen += step.produced;
            u_pos += step.produced as u64;
            match step.ret {
                z::Z_STREAM_END => break,
                z::Z_OK | z::Z_BUF_ERROR => {}
                r => return Err(corrupt(at, inf.message(r))),
            }
            if step.consumed == 0 && step.produced == 0 {
                if inp.pos < inp.end {
                    return Err(corrupt(inp.offset(), "inflate makes no progress"));
                }
                if !inp.fill()? {
                    return Err(corrupt(inp.offset(), "file ends inside the deflate stream"));
                }
            }
            let dt = step.data_type;
            // (zlib keeps fewer than 8 bits at a block end; anything else is
            // no place to start.)
            if dt & 128 != 0 && dt & (64 | 0x38) == 0 && u_pos - open.u_off >= span {
                // A block boundary: the next block starts `bits` bits before
                // the end of the consumed input.
                let bits = (dt & 7) as u8;
                let c_end = inp.offset();
                let c_off = c_end - u64::from(bits > 0);
                let wlen = (u_pos - member_u).min(WINDOW as u64) as usize;
                res.points
                    .push(bits, &out[olen - wlen..olen])
                    .map_err(|source| Error::Read {
                        offset: c_off,
                        source,
                    })?;
                let next = Open {
                    c_off,
                    u_off: u_pos,
                    crc: crc32fast::Hasher::new(),
                };
                close(&mut res, std::mem::replace(&mut open, next), c_end, u_pos);
            }
        }
        close(&mut res, open, inp.offset(), u_pos);
        let trailer_at = inp.offset();
        let mut t = [0u8; 8];
        for b in &mut t {
            *b = inp.need("gzip trailer")?;
        }
        let want_crc = u32::from_le_bytes(t[..4].try_into().expect("4"));
        let want_len = u32::from_le_bytes(t[4..].try_into().expect("4"));
        if crc.finalize() != want_crc {
            return Err(corrupt(trailer_at, "CRC-32 of the member does not match"));
        }
        if (u_pos - member_u) as u32 != want_len {
            return Err(corrupt(
                trailer_at + 4,
                "ISIZE of the member does not match",
            ));
        }
        progress(inp.offset());
    }
    res.size = u_pos;
    res.pinned = std::mem::take(&mut walker.pinned);
    Ok(res)
}

thread_local! {
    // One inflater per reading thread, reset for each span (or resumed).
    static INFLATER: std::cell::RefCell<Option<Inflater>> = const { std::cell::RefCell::new(None) };
    // Where that inflater stopped, if it may resume there.
    static RESUME: std::cell::RefCell<Option<Resume>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    // Bytes inflated by decode_span on this thread.
    pub(crate) static INFLATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Where this thread's inflater stopped inside a span: the next piece of
/// the same span continues from there instead of decoding again from the
/// checkpoint, so reading a huge span piece after piece costs one decode of
/// it, not one per piece.
struct Resume {
    /// (the `FrameSource`'s id, frame index).
    span: (u64, usize),
    /// Compressed bytes of the span the inflater consumed.
    consumed: usize,
    /// Bytes of the span decoded.
    decoded: u64,
    /// CRC-32 of those bytes.
    crc: crc32fast::Hasher,
}

/// Why a span did not decode: the file could not be read, or its bytes are wrong.
pub(crate) enum SpanError {
    Io(io::Error),
    Corrupt(String),
}

impl From<io::Error> for SpanError {
    fn from(e: io::Error) -> Self {
        SpanError::Io(e)
    }
}

/// Decoded bytes before a piece's start are dropped through at most this
/// much of the output buffer at a time.
const DISCARD: usize = 256 << 10;

/// Decodes bytes `skip..skip + end` of the span of frame `f` (checkpoint
/// `p`, its decompressed `window`; `span` identifies it, for resuming) into
/// `out`, reading compressed bytes only as far as needed. The bytes before
/// `skip` are decoded and dropped (a piece of a span too large to keep
/// whole, see `source::GZIP_PIECE`) unless this thread's last decode of the
/// span stopped at or before `skip`: then it resumes there. `out` never
/// holds more than `end` bytes (or [`DISCARD`] while skipping). A decode that
/// reaches the end of the span is checked against its CRC-32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_span(
    file: &File,
    span: (u64, usize),
    f: &Frame,
    p: &Point,
    window: &[u8],
    skip: u64,
    end: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> std::result::Result<(), SpanError> {
    let c_len =
        usize::try_from(f.c_len).map_err(|_| SpanError::Corrupt("span too large".into()))?;
    // Overwrite what `out` holds (a reused buffer) instead of zeroing it.
    let len = if skip > 0 { end.max(DISCARD) } else { end };
    if out.len() > len {
        out.truncate(len);
    } else {
        out.resize(len, 0);
    }
    if scratch.len() < READ {
        scratch.resize(READ, 0);
    }
    // Taken: an error below leaves nothing to resume.
    let resume = RESUME
        .with(|r| r.borrow_mut().take())
        .filter(|r| r.span == span && r.decoded > 0 && r.decoded <= skip);
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Inflater::new()?);
        }
        let inf = slot.as_mut().expect("just set");
        // `read`: compressed bytes of the span given to the inflater (or in
        // scratch[pos..len]); `at`: decoded bytes of the span.
        let (mut read, mut at, mut crc) = match resume {
            Some(r) => (r.consumed, r.decoded, r.crc),
            None => {
                inf.reset()?;
                let mut read = 0usize;
                if p.bits > 0 {
                    let mut b = [0u8];
                    if c_len == 0 || file.read_full_at(f.c_off, &mut b)? != 1 {
                        return Err(SpanError::Corrupt(
                            "compressed file is shorter than its index says".into(),
                        ));
                    }
                    inf.prime(p.bits, b[0] >> (8 - p.bits))?;
                    read = 1;
                }
                if !window.is_empty() {
                    inf.set_dictionary(window)?;
                }
                (read, 0, crc32fast::Hasher::new())
            }
        };
        let want = skip + end as u64;
        let (mut pos, mut len, mut ended) = (0usize, 0usize, false);
        while at < want {
            if pos == len && read < c_len {
                len = (c_len - read).min(READ);
                let got = file.read_full_at(f.c_off + read as u64, &mut scratch[..len])?;
                if got != len {
                    return Err(SpanError::Corrupt(
                        "compressed file is shorter than its index says".into(),
                    ));
                }
                read += len;
                pos = 0;
            }
            // Before `skip`: through the start of `out`, dropped.
            let from = if at < skip { 0 } else { (at - skip) as usize };
            let to = if at < skip {
                (skip - at).min(out.len() as u64) as usize
            } else {
                end
            };
            let step = inf.run(&scratch[pos..len], &mut out[from..to], z::Z_NO_FLUSH);
            pos += step.consumed;
            crc.update(&out[from..from + step.produced]);
            at += step.produced as u64;
            #[cfg(test)]
            INFLATED.with(|n| n.set(n.get() + step.produced as u64));
            match step.ret {
                z::Z_OK | z::Z_BUF_ERROR => {}
                z::Z_STREAM_END => {
                    ended = true;
                    break;
                }
                r => return Err(SpanError::Corrupt(inf.message(r))),
            }
            if step.consumed == 0 && step.produced == 0 && pos == len && read == c_len {
                break;
            }
        }
        if at < want {
            return Err(SpanError::Corrupt(format!(
                "decodes to {at} bytes, fewer than {want} (index says {})",
                f.u_len
            )));
        }
        out.truncate(end);
        if at == f.u_len {
            if f.sums & 2 != 0 && crc.finalize() != f.crc {
                return Err(SpanError::Corrupt(
                    "CRC-32 of the decoded span does not match the index".into(),
                ));
            }
        } else if !ended {
            RESUME.with(|r| {
                *r.borrow_mut() = Some(Resume {
                    span,
                    consumed: read - (len - pos),
                    decoded: at,
                    crc,
                })
            });
        }
        Ok(())
    })
}

/// The crafted-block writer the integration tests use too.
#[cfg(test)]
#[path = "../tests/seekable_common/deflate_bits.rs"]
mod deflate_bits;

#[cfg(test)]
mod tests {
    use super::deflate_bits::Bits;
    use super::*;
    use crate::source::{Codec, FrameSource, GZIP_PIECE};
    use std::io::Write;

    /// Mixed data: runs, text, pseudo-random bytes (so blocks of all kinds).
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 1000 + (x % 20_000) as usize;
            match x % 4 {
                0 => v.extend(std::iter::repeat_n((x >> 8) as u8, n)),
                1 => {
                    for i in 0..n / 30 {
                        v.extend_from_slice(format!("line {i} of a block {x:x}\n").as_bytes());
                    }
                }
                _ => {
                    let mut y = x;
                    for _ in 0..n {
                        y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                        v.push((y >> 33) as u8);
                    }
                }
            }
        }
        v.truncate(len);
        v
    }

    fn gz(plain: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    fn source(bytes: &[u8], span: u64) -> (tempfile::NamedTempFile, FrameSource, PassResult) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = t.reopen().unwrap();
        let r = pass(&f, bytes.len() as u64, span, &|_| {}).unwrap();
        let mut src = FrameSource::new(
            f,
            t.path().into(),
            Codec::Gzip,
            r.frames.clone(),
            Pinned::default(),
            1 << 20,
        );
        src.set_points(r.points.clone());
        (t, src, r)
    }

    fn check_reads(src: &FrameSource, plain: &[u8], seed: u64) {
        assert_eq!(src.size().unwrap(), plain.len() as u64);
        let mut x = seed | 1;
        let mut buf = vec![0u8; 300_000];
        for k in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % plain.len() as u64) as usize;
            let len = if k % 3 == 0 {
                4096
            } else {
                1 + (x >> 20) as usize % buf.len()
            };
            let n = src.read_at_offset(off as u64, &mut buf[..len]).unwrap();
            let end = (off + len).min(plain.len());
            assert_eq!(n, end - off);
            assert!(buf[..n] == plain[off..end], "differs at {off}+{len}");
        }
        // Reads that straddle every span boundary.
        for f in &src.frames[1..] {
            let off = f.u_off - 100;
            let n = src.read_at_offset(off, &mut buf[..200]).unwrap();
            assert_eq!(n, 200);
            assert!(buf[..200] == plain[off as usize..off as usize + 200]);
        }
    }

    #[test]
    fn small_spans_give_many_checkpoints_at_bit_offsets() {
        let plain = data(3 << 20, 7);
        // Not level 1: flate2 runs on zlib-rs, whose level 1 (deflate_quick)
        // ends a deflate block only every MiB or more (2 checkpoints here);
        // 64 KiB spans need the smaller blocks of the other levels.
        for level in [2, 6, 9] {
            let bytes = gz(&plain, level);
            let (_t, src, r) = source(&bytes, 64 << 10);
            assert_eq!(r.size, plain.len() as u64);
            assert_eq!(r.frames.len(), r.points.points.len());
            assert!(r.frames.len() >= 20, "level {level}: {}", r.frames.len());
            let odd = r.points.points.iter().filter(|p| p.bits != 0).count();
            assert!(
                odd >= r.frames.len() / 2,
                "level {level}: {odd} at bit offsets"
            );
            // Spans are at least the span long (but the last) and contiguous.
            for w in r.frames.windows(2) {
                assert!(w[0].u_len >= 64 << 10);
                assert_eq!(w[0].u_off + w[0].u_len, w[1].u_off);
            }
            check_reads(&src, &plain, level.into());
        }
        // Stored blocks (level 0) end on a byte boundary.
        let bytes = gz(&plain, 0);
        let (_t, src, r) = source(&bytes, 64 << 10);
        assert!(r.frames.len() >= 20);
        check_reads(&src, &plain, 5);
    }

    #[test]
    fn concatenated_members_restart_without_a_window() {
        let plain = data(2 << 20, 9);
        let cut = 700_001;
        let mut bytes = gz(&plain[..cut], 6);
        bytes.extend_from_slice(&gz(&[], 6)); // an empty member
        bytes.extend_from_slice(&gz(&plain[cut..], 1));
        let (_t, src, r) = source(&bytes, 256 << 10);
        let starts: Vec<_> = r
            .frames
            .iter()
            .zip(&r.points.points)
            .filter(|(_, p)| p.window_len == 0)
            .map(|(f, _)| f.u_off)
            .collect();
        assert_eq!(starts, vec![0, cut as u64]);
        check_reads(&src, &plain, 3);
    }

    #[test]
    fn bad_trailers_and_cut_files_are_errors() {
        let plain = data(300_000, 11);
        let bytes = gz(&plain, 6);
        let run = |b: &[u8]| {
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(b).unwrap();
            pass(&t.reopen().unwrap(), b.len() as u64, 1 << 16, &|_| {})
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(run(&bytes), None);
        let n = bytes.len();
        let mut b = bytes.clone();
        b[n - 8] ^= 1;
        assert!(run(&b).unwrap().contains("CRC-32"));
        let mut b = bytes.clone();
        b[n - 2] ^= 1;
        assert!(run(&b).unwrap().contains("ISIZE"));
        for cut in [1, 5, 11, n / 2, n - 3] {
            let e = run(&bytes[..cut]).unwrap();
            assert!(e.contains("file ends inside"), "cut {cut}: {e}");
        }
        let mut b = bytes.clone();
        b.extend_from_slice(b"\x1f\x8c\x08\0\0\0\0\0\0\x03");
        assert!(run(&b).unwrap().contains("bad magic"));
    }

    #[test]
    fn zero_padding_is_ignored_and_trailing_garbage_is_an_error() {
        let plain = data(300_000, 19);
        let mut bytes = gz(&plain[..100_000], 6);
        bytes.extend_from_slice(&gz(&plain[100_000..], 6));
        let end = bytes.len();
        // Zero padding (as gzip -d accepts): the same spans, the same bytes.
        let (_t, _, want) = source(&bytes, 1 << 16);
        for pad in [1, 8, READ + 5] {
            let mut b = bytes.clone();
            b.resize(end + pad, 0);
            let (_t, src, r) = source(&b, 1 << 16);
            assert_eq!(r.frames, want.frames, "{pad} zero bytes");
            check_reads(&src, &plain, pad as u64);
        }
        // Anything else: an error at the first byte that is not padding.
        for (tail, at) in [(&b"garbage"[..], end), (&b"\0\0\0x"[..], end + 3)] {
            let mut b = bytes.clone();
            b.extend_from_slice(tail);
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(&b).unwrap();
            let e = pass(&t.reopen().unwrap(), b.len() as u64, 1 << 16, &|_| {})
                .err()
                .expect("garbage accepted")
                .to_string();
            assert!(
                e.contains(&format!("compressed byte offset {at}: trailing garbage")),
                "{tail:?}: {e}"
            );
            assert!(e.contains(&format!("ends at byte {end}")), "{e}");
        }
    }

    #[test]
    fn damaged_or_cut_files_never_panic() {
        // Whatever the pass accepts must then read without panicking (the
        // bytes may be wrong where the damage hides from every checksum).
        let plain = data(200_000, 17);
        let mut bytes = gz(&plain[..90_000], 6);
        bytes.extend_from_slice(&gz(&plain[90_000..], 1));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for k in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = bytes.clone();
            if k % 3 == 0 {
                b.truncate((x % b.len() as u64) as usize);
            } else {
                for j in 0..1 + k % 4 {
                    let at = ((x >> (8 * j)) % b.len() as u64) as usize;
                    b[at] ^= 1 << ((x >> 40) % 8);
                }
            }
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(&b).unwrap();
            let f = t.reopen().unwrap();
            let Ok(r) = pass(&f, b.len() as u64, 16 << 10, &|_| {}) else {
                continue;
            };
            let mut src = FrameSource::new(
                f,
                t.path().into(),
                Codec::Gzip,
                r.frames,
                Pinned::default(),
                1 << 20,
            );
            src.set_points(r.points);
            let mut buf = vec![0u8; 70_000];
            let mut off = 0;
            while off < r.size {
                let _ = src.read_at_offset(off, &mut buf);
                off += buf.len() as u64;
            }
        }
    }

    /// A gzip member of one fixed-Huffman deflate block decoding to `n`
    /// bytes: the 7-byte period 1..=7, then back-references of 258 bytes at
    /// distance 7 (13 bits each). No real compressor writes such a block; a
    /// crafted file may.
    fn one_block(n: usize) -> (Vec<u8>, u32) {
        let mut b = Bits::fixed_block();
        let mut plain = Vec::with_capacity(n);
        for x in 1..=7u8 {
            b.sym(u32::from(x)); // literal
            plain.push(x);
        }
        while plain.len() + 258 <= n {
            b.sym(285); // length 258
            b.code(5, 5); // distance code 5: 7-8
            b.put(0, 1); // + 0: 7
            for _ in 0..258 {
                plain.push(plain[plain.len() - 7]);
            }
        }
        while plain.len() < n {
            let x = plain[plain.len() - 7];
            b.sym(u32::from(x));
            plain.push(x);
        }
        let crc = crc32fast::hash(&plain);
        (b.finish(&plain), crc)
    }

    #[test]
    fn a_huge_deflate_block_is_read_in_bounded_pieces() {
        let n = 2 * GZIP_PIECE as usize + 5_000_000;
        let (bytes, _) = one_block(n);
        let byte = |at: usize| (at % 7) as u8 + 1;
        let (_t, src, r) = source(&bytes, 1 << 20);
        assert_eq!(r.size, n as u64);
        assert_eq!(r.frames.len(), 1, "one block, one span");
        let mut buf = vec![0u8; 300_000];
        let check = |off: u64, buf: &mut [u8]| {
            let got = src.read_at_offset(off, buf).unwrap();
            assert_eq!(got as u64, buf.len().min(n - off as usize) as u64);
            let bad = buf[..got]
                .iter()
                .enumerate()
                .position(|(j, &x)| x != byte(off as usize + j));
            assert_eq!(bad, None, "read at {off}");
        };
        // Reads straddling the pieces, at random, then the end of the span
        // (its CRC-32 checked).
        for off in [
            GZIP_PIECE - 1000,
            7_777_777,
            2 * GZIP_PIECE - 150_000,
            100,
            n as u64 - 1000,
        ] {
            check(off, &mut buf);
        }
        assert!(src.largest_cached() <= GZIP_PIECE as usize);
        // All of it, sequentially, on a fresh source: each piece resumes
        // where the previous one stopped, so the span is decoded about once
        // (not once per piece, from its checkpoint).
        let (_t, src, _) = source(&bytes, 1 << 20);
        INFLATED.with(|c| c.set(0));
        let mut off = 0;
        while off < n as u64 {
            let got = src.read_at_offset(off, &mut buf).unwrap();
            assert_eq!(got, buf.len().min(n - off as usize));
            let bad = buf[..got]
                .iter()
                .enumerate()
                .position(|(j, &x)| x != byte(off as usize + j));
            assert_eq!(bad, None, "read at {off}");
            off += buf.len() as u64;
        }
        let inflated = INFLATED.with(|c| c.get());
        assert!(
            inflated < n as u64 + (n as u64 >> 3),
            "{inflated} bytes inflated for {n}"
        );
        assert!(src.largest_cached() <= GZIP_PIECE as usize);
        assert!(src.cache_slots() >= 2);
    }

    #[test]
    fn a_huge_block_read_whole_is_checked_against_its_crc() {
        // Small pieces on a smaller block: the same code paths, quicker.
        let n = 5_000_000;
        let (bytes, _) = one_block(n);
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&bytes).unwrap();
        let f = t.reopen().unwrap();
        let r = pass(&f, bytes.len() as u64, 1 << 16, &|_| {}).unwrap();
        let mut frames = r.frames.clone();
        assert_eq!(frames.len(), 1);
        // The index says another CRC-32: only a read of the span's end sees it.
        frames[0].crc ^= 1;
        let mut src = FrameSource::new(
            f,
            t.path().into(),
            Codec::Gzip,
            frames,
            Pinned::default(),
            1 << 20,
        );
        src.set_points(r.points);
        src.set_piece(300_000, 1 << 20);
        let mut buf = vec![0u8; 100_000];
        for off in [0u64, 299_990, 1_234_567, 4_500_000] {
            src.read_at_offset(off, &mut buf).unwrap();
            assert_eq!(buf[0], (off % 7) as u8 + 1);
        }
        assert!(src.largest_cached() <= 300_000);
        let e = src
            .read_at_offset(n as u64 - 10, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRC-32 of the decoded span"), "{e}");
    }

    #[test]
    fn a_damaged_span_is_an_error_with_its_offset() {
        let plain = data(1 << 20, 13);
        let bytes = gz(&plain, 6);
        let (t, src, r) = source(&bytes, 128 << 10);
        let f = r.frames[2];
        let mut b = bytes.clone();
        let mid = (f.c_off + f.c_len / 2) as usize;
        b[mid] ^= 0x10;
        std::fs::write(t.path(), &b).unwrap();
        let mut buf = vec![0u8; f.u_len as usize];
        let e = src
            .read_at_offset(f.u_off, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("compressed byte offset {}", f.c_off)),
            "{e}"
        );
    }
}
