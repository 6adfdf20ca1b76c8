//! Random access into gzip by deflate checkpoints (the method of zlib's
//! `zran.c`).
//!
//! Owns the one pass over a gzip file that records checkpoints ([`pass`])
//! and the decoding of one span from its checkpoint ([`decode_span`]), both
//! with the raw inflater of [`crate::sys::zlib`].
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

use std::io;

use crate::sys::zlib::{self as z, Inflater};
use crate::types::{Frame, Pinned, Point, Points, WINDOW};
use crate::walker::VmaWalker;
use vma_format::error::{Error, Result};
use vma_format::ReadAt;

/// zstd level of the stored windows.
const WINDOW_LEVEL: i32 = 3;
/// Compressed bytes read at a time.
pub(crate) const READ: usize = 256 << 10;
/// Decoded bytes produced by one pass step (plus the window kept before them).
const OUT: usize = 1 << 20;

impl Points {
    pub(crate) fn push(&mut self, bits: u8, window: &[u8]) -> io::Result<()> {
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
    file: &'a dyn ReadAt,
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
pub(crate) fn pass(
    file: &dyn ReadAt,
    len: u64,
    span: u64,
    progress: &dyn Fn(u64),
    stop: &dyn Fn() -> bool,
) -> Result<PassResult> {
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
            if stop() {
                return Err(Error::Cancelled);
            }
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
    file: &dyn ReadAt,
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
