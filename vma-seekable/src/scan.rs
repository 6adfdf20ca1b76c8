//! Index building: the frame/block tables and the one decoding pass.
//!
//! Owns the walk over zstd frame headers and lzop block headers (seeking over
//! the compressed data, decoding nothing), the streaming pass that records
//! the pinned VMA structures ([`VmaWalker`]) and, for single-frame zstd,
//! writes the re-compressed cache file with worker threads. (gzip has its
//! own pass, with checkpoints instead of a cache file: `gzip.rs`.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use crate::source::{Frame, FrameSource, Pinned};
use vma_format::compress::LzopReader;
use vma_format::error::{Error, Result};
use vma_format::raw::{ext, hdr, EXTENT_HEADER_SIZE, EXTENT_MAGIC, HEADER_FIXED_SIZE};
use vma_format::raw::{BLOCK_SIZE, MAGIC, MAX_READER_HEADER_SIZE};
use vma_format::ReadAt;
use xxhash_rust::xxh64::xxh64;

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

fn pread(file: &File, offset: u64, buf: &mut [u8]) -> Result<usize> {
    file.read_full_at(offset, buf)
        .map_err(|source| Error::Read { offset, source })
}

/// A zstd frame whose decoded size the header does not give.
pub(crate) struct UnknownSize;

/// Walks the zstd frames of `file` (`len` bytes) by their frame and block
/// headers. Frames without Frame_Content_Size get `u_len == u64::MAX`;
/// skippable frames are left out. `u_off` is not filled in.
pub(crate) fn zstd_frames(file: &File, len: u64) -> Result<Vec<Frame>> {
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
    file: &File,
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

/// Walks the lzop blocks of `path` by their headers, seeking over the data.
pub(crate) fn lzo_blocks(path: &Path, len: u64) -> Result<Vec<Frame>> {
    let file = File::open(path).map_err(|source| Error::Read { offset: 0, source })?;
    let mut r = LzopReader::new(BufReader::with_capacity(4096, file))?;
    let mut frames = Vec::new();
    let mut u_off = 0u64;
    while let Some(b) = r.block_header()? {
        if b.data_at + b.clen as u64 > len {
            return Err(Error::Compressed {
                format: "lzop",
                offset: b.at,
                message: "file ends inside the block".into(),
            });
        }
        frames.push(Frame {
            c_off: b.data_at,
            c_len: b.clen as u64,
            u_off,
            u_len: b.ulen as u64,
            adler: b.d_adler.unwrap_or(0),
            crc: b.d_crc.unwrap_or(0),
            sums: u8::from(b.d_adler.is_some()) | (u8::from(b.d_crc.is_some()) << 1),
        });
        u_off += b.ulen as u64;
        r.skip(b.clen as u64)?;
    }
    debug_assert!(r.position() <= len);
    Ok(frames)
}

/// Follows the VMA structure through the decompressed stream as it passes,
/// keeping the header and every extent header (what `IndexedReader::open`
/// reads). Stops quietly at anything that is not VMA: the indexed reader
/// reports it from the real bytes.
#[derive(Default)]
pub(crate) struct VmaWalker {
    /// Offset of the structure being collected.
    next: u64,
    /// Its length once known (the fixed header part first).
    want: usize,
    partial: Vec<u8>,
    header_done: bool,
    stopped: bool,
    pub pinned: Pinned,
}

impl VmaWalker {
    pub fn new() -> Self {
        VmaWalker {
            want: HEADER_FIXED_SIZE,
            ..Default::default()
        }
    }

    /// Feeds the stream bytes `data` found at stream offset `pos` (in order).
    pub fn feed(&mut self, pos: u64, data: &[u8]) {
        let end = pos + data.len() as u64;
        while !self.stopped {
            let need = self.next + self.partial.len() as u64;
            if need >= end || need < pos {
                return;
            }
            let from = (need - pos) as usize;
            let take = (self.want - self.partial.len()).min(data.len() - from);
            self.partial.extend_from_slice(&data[from..from + take]);
            if self.partial.len() < self.want {
                return;
            }
            self.structure_complete();
        }
    }

    /// The stream range the walker needs next, `None` once it stopped.
    fn wants(&self) -> Option<(u64, usize)> {
        (!self.stopped).then(|| {
            (
                self.next + self.partial.len() as u64,
                self.want - self.partial.len(),
            )
        })
    }

    fn structure_complete(&mut self) {
        let b = &self.partial;
        if !self.header_done {
            if b[..4] != MAGIC {
                self.stopped = true;
                return;
            }
            let size =
                u32::from_be_bytes(b[hdr::HEADER_SIZE..][..4].try_into().expect("4")) as usize;
            if size > self.want && size <= MAX_READER_HEADER_SIZE {
                // Still collecting the rest of the header.
                self.want = size;
                return;
            }
            if size != self.want {
                self.stopped = true;
                return;
            }
            self.pinned.push(0, b);
            self.header_done = true;
            self.next = size as u64;
        } else {
            if b[ext::MAGIC..][..4] != EXTENT_MAGIC {
                self.stopped = true;
                return;
            }
            let blocks = u16::from_be_bytes(b[ext::BLOCK_COUNT..][..2].try_into().expect("2"));
            self.pinned.push(self.next, b);
            self.next += (EXTENT_HEADER_SIZE + usize::from(blocks) * BLOCK_SIZE) as u64;
        }
        self.want = EXTENT_HEADER_SIZE;
        self.partial.clear();
    }
}

/// Follows the VMA structure through a random-access source, reading only
/// the header and the extent headers (for a frame table, only the frames
/// holding them are decoded). `progress` gets each stream offset visited.
pub(crate) fn walk(src: &dyn ReadAt, progress: &dyn Fn(u64)) -> io::Result<Pinned> {
    let mut w = VmaWalker::new();
    let mut buf = Vec::new();
    while let Some((at, len)) = w.wants() {
        buf.resize(len, 0);
        let got = src.read_full_at(at, &mut buf)?;
        if got == 0 {
            break;
        }
        w.feed(at, &buf[..got]);
        progress(at);
        if got < len {
            break;
        }
    }
    Ok(w.pinned)
}

/// Like [`walk`], but decodes every frame of `src`, in order, on `threads`
/// threads (for big frames, where nearly every frame holds an extent header).
/// At most `2 * threads` decoded frames wait for the walker at any time.
pub(crate) fn walk_all_frames(
    src: &FrameSource,
    threads: usize,
    progress: &dyn Fn(u64),
) -> io::Result<Pinned> {
    let n = src.frames.len();
    let threads = threads.clamp(1, n.max(1));
    let window = 2 * threads;
    let next = AtomicUsize::new(0);
    let gate = (Mutex::new((0usize, false)), Condvar::new()); // (consumed, abort)
    let (tx, rx) = mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
    // Decoded-frame buffers are reused (at most `window + threads` exist).
    let pool = Mutex::new(Vec::<Vec<u8>>::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (tx, next, gate, pool) = (tx.clone(), &next, &gate, &pool);
            s.spawn(move || {
                let mut scratch = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    {
                        let mut g = gate.0.lock().unwrap_or_else(|e| e.into_inner());
                        while !g.1 && i >= g.0 + window {
                            g = gate.1.wait(g).unwrap_or_else(|e| e.into_inner());
                        }
                        if g.1 {
                            return;
                        }
                    }
                    let mut out = pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop()
                        .unwrap_or_default();
                    let res = src.decode_into(i, &mut out, &mut scratch).map(|()| out);
                    if tx.send((i, res)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut walker = VmaWalker::new();
        let mut pending = BTreeMap::new();
        let res = (|| {
            for i in 0..n {
                let data = loop {
                    if let Some(d) = pending.remove(&i) {
                        break d;
                    }
                    let Ok((j, d)) = rx.recv() else {
                        return Err(io::Error::other("frame decoder thread ended early"));
                    };
                    pending.insert(j, d);
                };
                let f = &src.frames[i];
                let data = data?;
                walker.feed(f.u_off, &data);
                pool.lock().unwrap_or_else(|e| e.into_inner()).push(data);
                progress(f.c_off + f.c_len);
                let mut g = gate.0.lock().unwrap_or_else(|e| e.into_inner());
                g.0 = i + 1;
                gate.1.notify_all();
                if walker.stopped {
                    break;
                }
            }
            Ok(())
        })();
        let mut g = gate.0.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        gate.1.notify_all();
        drop(g);
        drop(rx);
        res.map(|()| walker.pinned)
    })
}

/// Counts the compressed bytes consumed, for progress.
pub(crate) struct Counting<R> {
    pub inner: R,
    pub count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Where the re-compressed cache goes during the pass.
pub(crate) struct CacheSpec<'a> {
    pub out: &'a mut File,
    /// Bytes already written (the leading skippable frame).
    pub start: u64,
    pub frame_size: usize,
    pub level: i32,
    pub threads: usize,
    /// Most bytes of stream to take: the pass fails past it (the space for
    /// the cache was checked for this much).
    pub limit: u64,
}

/// What the pass learnt.
pub(crate) struct PassResult {
    pub size: u64,
    pub pinned: Pinned,
    /// Frames of the cache file.
    pub frames: Vec<Frame>,
}

/// One chunk of the stream on its way to the cache file.
enum Piece {
    /// A zstd frame made by the compressor.
    Zstd { frame: Vec<u8>, u_len: u64 },
    /// Bytes to store as a frame of raw blocks ([`raw_frame_head`]).
    Raw(Vec<u8>),
}

/// A pool of buffers handed back and forth between the pipeline's threads,
/// so that no chunk allocates, zeroes and page-faults fresh memory.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }
    fn give(&self, b: Vec<u8>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(b);
    }
}

/// Decodes the whole archive once (with the crate's streaming decompressor),
/// recording the pinned structures and writing the stream as independent
/// zstd frames of `frame_size` bytes, each with a content checksum.
///
/// The pass must cost little more than the decompression itself, so nothing
/// waits for compression: the decoding thread hands each chunk to an idle
/// compressing worker if there is one, and otherwise to the writer as is,
/// stored as a frame of raw zstd blocks (as are chunks that look random,
/// where compression gains nothing). The workers run at the lowest priority,
/// and the writer does not wait long for them either ([`write_frames`]). How
/// much of the cache ends up compressed depends on the spare CPU; its
/// content never does.
pub(crate) fn pass(path: &Path, spec: CacheSpec<'_>, progress: &dyn Fn(u64)) -> Result<PassResult> {
    let file = File::open(path).map_err(|source| Error::Read { offset: 0, source })?;
    let count = Arc::new(AtomicU64::new(0));
    let (compression, mut r) = vma_format::compress::decompressor(Counting {
        inner: file,
        count: Arc::clone(&count),
    })?;
    // Raw frames carry a 4-byte Frame_Content_Size.
    let chunk = spec.frame_size.clamp(4096, u32::MAX as usize);
    let mut walker = VmaWalker::new();
    let mut pos = 0u64;
    let chunks = Pool::default();
    let frames_pool = Pool::default();
    let mut read_chunk = |pos: u64| -> Result<Vec<u8>> {
        let mut buf = chunks.take();
        buf.resize(chunk, 0);
        let mut got = 0;
        while got < chunk {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Compressed {
                        format: compression.name(),
                        offset: count.load(Ordering::Relaxed),
                        message: format!("at decompressed byte offset {}: {e}", pos + got as u64),
                    })
                }
            }
        }
        buf.truncate(got);
        progress(count.load(Ordering::Relaxed));
        Ok(buf)
    };
    // Pipeline: this thread decodes; `workers` threads compress; the writer
    // puts frames in order into the cache file. One core is the decoder's. Every
    // channel is bounded, so at most about `6 * workers + 6` chunks exist.
    let workers = spec.threads.saturating_sub(1).max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<Done>(4 * workers + 4);
    let level = spec.level;
    let limit = spec.limit;
    let out = spec.out;
    let start = spec.start;
    std::thread::scope(|s| -> Result<PassResult> {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (job_rx, chunks, frames_pool) = (&job_rx, &chunks, &frames_pool);
            s.spawn(move || {
                crate::sys::low_priority();
                // A content checksum per frame: damage to the cache is an
                // error, not wrong data.
                let mut c = zstd::bulk::Compressor::new(level).and_then(|mut c| {
                    c.include_checksum(true)?;
                    Ok(c)
                });
                loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(Job { i, u_off, data }) = job else {
                        return;
                    };
                    let res = make_piece(&mut c, data, chunks, frames_pool);
                    if done_tx.send(Done { i, u_off, res }).is_err() {
                        return;
                    }
                }
            });
        }
        let raw_tx = done_tx.clone();
        drop(done_tx);
        let (chunks_w, frames_w) = (&chunks, &frames_pool);
        // A chunk in compression holds up the writer for at most this many.
        let patience = 2 * workers + 2;
        let writer =
            s.spawn(move || write_frames(out, start, chunk, patience, done_rx, chunks_w, frames_w));
        let mut i = 0;
        let decoded = loop {
            let buf = match read_chunk(pos) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            if buf.is_empty() {
                break Ok(());
            }
            if pos.saturating_add(buf.len() as u64) > limit {
                break Err(Error::Write {
                    offset: pos,
                    source: io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!(
                            "the decompressed stream is longer than the {limit} bytes the \
                             cache file was given room for (the VMA header's devices \
                             allow no more); stopped writing the cache"
                        ),
                    ),
                });
            }
            walker.feed(pos, &buf);
            let job = Job {
                i,
                u_off: pos,
                data: buf,
            };
            pos += job.data.len() as u64;
            let sent = match job_tx.try_send(job) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(Job { i, u_off, data })) => raw_tx
                    .send(Done {
                        i,
                        u_off,
                        res: Ok(Piece::Raw(data)),
                    })
                    .is_ok(),
                Err(mpsc::TrySendError::Disconnected(_)) => false,
            };
            if !sent {
                break Ok(()); // the writer failed; its error is reported below
            }
            i += 1;
        };
        drop(job_tx);
        drop(raw_tx);
        let frames = writer.join().unwrap_or_else(|_| {
            Err(Error::Write {
                offset: 0,
                source: io::Error::other("cache writer panicked"),
            })
        })?;
        decoded?;
        if frames.len() != i {
            return Err(Error::Write {
                offset: 0,
                source: io::Error::other("cache frames lost"),
            });
        }
        Ok(PassResult {
            size: pos,
            pinned: std::mem::take(&mut walker.pinned),
            frames,
        })
    })
}

/// A worker's work on one chunk: a compressed frame, or the chunk back for
/// a raw frame when it looks random or does not shrink.
fn make_piece(
    c: &mut io::Result<zstd::bulk::Compressor<'static>>,
    data: Vec<u8>,
    chunks: &Pool,
    frames_pool: &Pool,
) -> io::Result<Piece> {
    match c {
        // Without a compressor, every job reports why (the decoding thread
        // must never wait on a dead pool).
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        Ok(_) if looks_random(&data) => Ok(Piece::Raw(data)),
        Ok(c) => {
            let mut frame = frames_pool.take();
            frame.clear();
            frame.reserve(zstd::zstd_safe::compress_bound(data.len()));
            match c.compress_to_buffer(&data[..], &mut frame) {
                // No gain: the raw frame is as small and faster to read.
                Ok(n) if n >= data.len() => {
                    frames_pool.give(frame);
                    Ok(Piece::Raw(data))
                }
                Ok(_) => {
                    let u_len = data.len() as u64;
                    chunks.give(data);
                    Ok(Piece::Zstd { frame, u_len })
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Chunk `i` of the stream, at stream offset `u_off`, for a worker.
struct Job {
    i: usize,
    u_off: u64,
    data: Vec<u8>,
}

/// Chunk `i` ready for the writer.
struct Done {
    i: usize,
    u_off: u64,
    res: io::Result<Piece>,
}

/// The writer of [`pass`]: puts the frames into `out` from byte `start`, in
/// stream order, and returns their table.
///
/// It never waits long for a chunk a worker is still compressing: once
/// `patience` later chunks are ready, the missing one gets a reserved place
/// the size of its raw frame (every chunk but the last has `chunk` bytes)
/// and the writer goes on. The chunk fills its place when it comes, the
/// rest of the place becoming a skippable frame (left a hole): the file
/// stays a multi-frame zstd file of the stream, in order.
fn write_frames(
    out: &mut File,
    start: u64,
    chunk: usize,
    patience: usize,
    done_rx: mpsc::Receiver<Done>,
    chunks: &Pool,
    frames_pool: &Pool,
) -> Result<Vec<Frame>> {
    let mut table: Vec<Option<Frame>> = Vec::new();
    let mut pending: BTreeMap<usize, Done> = BTreeMap::new();
    // Reserved places: index -> (offset, length).
    let mut reserved: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let place = raw_frame_len(chunk);
    let mut next = 0usize;
    let mut end = start;
    let mut flushed = 0;
    let mut put = |out: &mut File, d: Done, at: u64, room: Option<u64>| -> Result<u64> {
        let err = |source| Error::Write { offset: at, source };
        let piece = d.res.map_err(err)?;
        out.seek(io::SeekFrom::Start(at)).map_err(err)?;
        let (c_len, u_len) = match piece {
            Piece::Zstd { frame, u_len } => {
                out.write_all(&frame).map_err(err)?;
                let c_len = frame.len() as u64;
                frames_pool.give(frame);
                (c_len, u_len)
            }
            Piece::Raw(data) => {
                let c_len = write_raw_frame(out, &data).map_err(err)?;
                let u_len = data.len() as u64;
                chunks.give(data);
                (c_len, u_len)
            }
        };
        if let Some(room) = room {
            // A raw frame fills its place exactly; a compressed one is
            // smaller than the chunk (see `make_piece`), leaving more than
            // the 13 bytes of raw frame overhead.
            let rest = room.checked_sub(c_len).filter(|&r| r == 0 || r >= 8);
            let rest =
                rest.ok_or_else(|| err(io::Error::other("cache frame does not fit its place")))?;
            if rest > 0 {
                // The skippable frame's content stays unwritten (a hole).
                let size = u32::try_from(rest - 8)
                    .map_err(|_| err(io::Error::other("place too large")))?;
                let mut h = [0u8; 8];
                h[..4].copy_from_slice(&ZSTD_SKIPPABLE.to_le_bytes());
                h[4..].copy_from_slice(&size.to_le_bytes());
                out.write_all(&h).map_err(err)?;
            }
        }
        if table.len() <= d.i {
            table.resize(d.i + 1, None);
        }
        table[d.i] = Some(Frame {
            c_off: at,
            c_len,
            u_off: d.u_off,
            u_len,
            adler: 0,
            crc: 0,
            sums: 0,
        });
        Ok(c_len)
    };
    for d in done_rx {
        if let Some((at, room)) = reserved.remove(&d.i) {
            put(out, d, at, Some(room))?;
            continue;
        }
        pending.insert(d.i, d);
        loop {
            if let Some(d) = pending.remove(&next) {
                end += put(out, d, end, None)?;
            } else if pending.len() >= patience {
                reserved.insert(next, (end, place));
                end += place;
            } else {
                break;
            }
            next += 1;
        }
        if end >= flushed + FLUSH_EVERY {
            crate::sys::start_writeback(out, flushed, end - flushed);
            flushed = end;
        }
    }
    if !pending.is_empty() || !reserved.is_empty() {
        return Err(Error::Write {
            offset: end,
            source: io::Error::other("cache frames lost"),
        });
    }
    table
        .into_iter()
        .collect::<Option<Vec<Frame>>>()
        .ok_or_else(|| Error::Write {
            offset: end,
            source: io::Error::other("cache frames lost"),
        })
}

/// Length of the raw frame of `len` bytes ([`write_raw_frame`]).
pub(crate) fn raw_frame_len(len: usize) -> u64 {
    (9 + 3 * len.div_ceil(ZSTD_BLOCK_MAX) + len + 4) as u64
}

/// Bytes of cache between two [`start_writeback`] calls.
const FLUSH_EVERY: u64 = 16 << 20;

/// Largest zstd block (Block_Maximum_Size, RFC 8878 §3.1.1.2.4).
const ZSTD_BLOCK_MAX: usize = 128 << 10;

/// Frame header of a frame of raw blocks holding `len` (≤ 4 GiB) bytes:
/// single segment, 4-byte Frame_Content_Size, content checksum.
fn raw_frame_head(len: usize) -> [u8; 9] {
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
fn write_raw_frame(out: &mut File, data: &[u8]) -> io::Result<u64> {
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

/// Whether `data` looks like random bytes, from the byte histogram of 16
/// samples of 512 bytes: an order-0 entropy above 7.5 bits per byte (text
/// and zero-rich data are far below; compressed or encrypted data at ~8).
/// Compressing such data costs CPU and gains nothing.
fn looks_random(data: &[u8]) -> bool {
    const SAMPLES: usize = 16;
    const LEN: usize = 512;
    if data.len() < SAMPLES * LEN * 2 {
        return false;
    }
    let step = data.len() / SAMPLES;
    let mut hist = [0u32; 256];
    for k in 0..SAMPLES {
        for &b in &data[k * step..k * step + LEN] {
            hist[usize::from(b)] += 1;
        }
    }
    let n = (SAMPLES * LEN) as f64;
    let bits: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > 7.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walker_follows_header_and_extents_across_chunks() {
        let mut stream = vec![0u8; HEADER_FIXED_SIZE + 100];
        stream[..4].copy_from_slice(&MAGIC);
        let hs = (HEADER_FIXED_SIZE + 100) as u32;
        stream[hdr::HEADER_SIZE..][..4].copy_from_slice(&hs.to_be_bytes());
        for blocks in [2u16, 0, 1] {
            let mut e = vec![0u8; EXTENT_HEADER_SIZE];
            e[..4].copy_from_slice(&EXTENT_MAGIC);
            e[ext::BLOCK_COUNT..][..2].copy_from_slice(&blocks.to_be_bytes());
            e[100] = blocks as u8 + 7;
            stream.extend_from_slice(&e);
            stream.extend(std::iter::repeat_n(0xAA, usize::from(blocks) * BLOCK_SIZE));
        }
        stream.extend_from_slice(&[1, 2, 3]); // a short trailing piece is not pinned
        for chunk in [1usize, 7, 511, 512, 4096, 1 << 20] {
            let mut w = VmaWalker::new();
            let mut pos = 0;
            for c in stream.chunks(chunk) {
                w.feed(pos, c);
                pos += c.len() as u64;
            }
            let offs: Vec<u64> = w.pinned.ranges.iter().map(|r| r.0).collect();
            let e0 = u64::from(hs);
            let e1 = e0 + 512 + 2 * 4096;
            let e2 = e1 + 512;
            assert_eq!(offs, vec![0, e0, e1, e2], "chunk {chunk}");
            for &(off, len, at) in &w.pinned.ranges {
                let at = at as usize;
                assert_eq!(
                    &w.pinned.blob[at..at + len as usize],
                    &stream[off as usize..off as usize + len as usize]
                );
            }
        }
    }

    #[test]
    fn walk_over_random_access_matches_the_stream_pass() {
        let mut stream = vec![0u8; HEADER_FIXED_SIZE];
        stream[..4].copy_from_slice(&MAGIC);
        stream[hdr::HEADER_SIZE..][..4].copy_from_slice(&(HEADER_FIXED_SIZE as u32).to_be_bytes());
        for blocks in [5u16, 0, 3] {
            let mut e = vec![0u8; EXTENT_HEADER_SIZE];
            e[..4].copy_from_slice(&EXTENT_MAGIC);
            e[ext::BLOCK_COUNT..][..2].copy_from_slice(&blocks.to_be_bytes());
            stream.extend_from_slice(&e);
            stream.extend(std::iter::repeat_n(0xAA, usize::from(blocks) * BLOCK_SIZE));
        }
        let mut w = VmaWalker::new();
        w.feed(0, &stream);
        let visited = std::cell::RefCell::new(Vec::new());
        let pinned = walk(&stream, &|at| visited.borrow_mut().push(at)).unwrap();
        assert_eq!(pinned, w.pinned);
        assert_eq!(pinned.ranges.len(), 4);
        // It read the structures only, never the extent data.
        assert_eq!(visited.borrow().len(), 4);
    }

    #[test]
    fn xxh64_known_values() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
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

    fn text(len: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 6] = [
            b"backup ",
            b"the ",
            b"cluster\n",
            b"disk ",
            b"of ",
            b"2026 ",
        ];
        let r = noise(len, seed);
        let mut v = Vec::with_capacity(len + 8);
        let mut k = 0;
        while v.len() < len {
            v.extend_from_slice(words[usize::from(r[k % len]) % words.len()]);
            k += 1;
        }
        v.truncate(len);
        v
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

    #[test]
    fn random_looking_data_is_told_from_text_and_zeros() {
        assert!(looks_random(&noise(256 << 10, 3)));
        assert!(!looks_random(&text(256 << 10, 3)));
        assert!(!looks_random(&vec![0u8; 256 << 10]));
        let mut half = noise(128 << 10, 5);
        half.extend(text(128 << 10, 5));
        assert!(!looks_random(&half), "half text still compresses");
        assert!(!looks_random(&noise(4096, 3)), "too short to judge");
    }

    /// Checks a cache file against its frame table: frames in stream order,
    /// each decoding to its range, only skippable frames between them, the
    /// last one ending the file, and the whole file decoding to the stream.
    fn check_cache(cache: &[u8], head: usize, frames: &[Frame], stream: &[u8], what: &str) {
        assert_eq!(zstd::stream::decode_all(cache).unwrap(), stream, "{what}");
        let (mut u, mut c) = (0, head as u64);
        for f in frames {
            assert_eq!(f.u_off, u, "{what}");
            if f.c_off != c {
                let gap = &cache[c as usize..f.c_off as usize];
                let magic = u32::from_le_bytes(gap[..4].try_into().unwrap());
                let size = u32::from_le_bytes(gap[4..8].try_into().unwrap());
                assert_eq!(magic, ZSTD_SKIPPABLE, "{what}");
                assert_eq!(u64::from(size) + 8, f.c_off - c, "{what}");
            }
            let bytes = &cache[f.c_off as usize..][..f.c_len as usize];
            let got = zstd::bulk::decompress(bytes, f.u_len as usize).unwrap();
            assert_eq!(got, &stream[u as usize..][..f.u_len as usize], "{what}");
            u += f.u_len;
            c = f.c_off + f.c_len;
            // A skippable frame may follow (a reserved place's rest).
            if let Some(h) = cache.get(c as usize..c as usize + 8) {
                if u32::from_le_bytes(h[..4].try_into().unwrap()) == ZSTD_SKIPPABLE {
                    c += 8 + u64::from(u32::from_le_bytes(h[4..].try_into().unwrap()));
                }
            }
        }
        assert_eq!(u, stream.len() as u64, "{what}");
        assert_eq!(c, cache.len() as u64, "{what}");
    }

    #[test]
    fn a_late_chunk_fills_its_reserved_place() {
        let chunk = 200_000;
        let t = text(chunk, 1);
        let stream: Vec<u8> = [
            noise(chunk, 1),
            t.clone(),
            noise(chunk, 2),
            t,
            noise(5000, 3),
        ]
        .concat();
        let mut c = zstd::bulk::Compressor::new(1).and_then(|mut c| {
            c.include_checksum(true)?;
            Ok(c)
        });
        let (chunks, frames_pool) = (Pool::default(), Pool::default());
        let piece = |i: usize| Done {
            i,
            u_off: (i * chunk) as u64,
            res: Ok(Piece::Raw(
                stream[i * chunk..((i + 1) * chunk).min(stream.len())].to_vec(),
            )),
        };
        // Chunk 1 (text, compressed) and chunk 2 (raw) come late.
        let mut late = piece(1);
        late.res = make_piece(
            &mut c,
            stream[chunk..2 * chunk].to_vec(),
            &chunks,
            &frames_pool,
        );
        assert!(matches!(late.res, Ok(Piece::Zstd { .. })));
        let (tx, rx) = mpsc::sync_channel(8);
        for d in [piece(0), piece(3), piece(4), late, piece(2)] {
            tx.send(d).unwrap();
        }
        drop(tx);
        let mut out = tempfile::tempfile().unwrap();
        out.write_all(&[0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0])
            .unwrap();
        let frames = write_frames(&mut out, 8, chunk, 1, rx, &chunks, &frames_pool).unwrap();
        let mut cache = Vec::new();
        std::io::Seek::rewind(&mut out).unwrap();
        out.read_to_end(&mut cache).unwrap();
        check_cache(&cache, 8, &frames, &stream, "late chunks");
        // Both took a reserved place: raw frames fill it, compressed leave a skippable rest.
        assert_eq!(frames[2].c_len, raw_frame_len(chunk));
        assert!(frames[1].c_len < raw_frame_len(chunk) / 2);
        assert_eq!(frames[2].c_off - frames[1].c_off, raw_frame_len(chunk));
    }

    /// The cache the pass writes decodes to the stream, whatever mix of
    /// compressed, raw and late frames the timing produced.
    #[test]
    fn pass_cache_decodes_to_the_stream() {
        let mut stream = Vec::new();
        for k in 0..12u64 {
            match k % 3 {
                0 => stream.extend(noise(200_000 + k as usize * 777, k)),
                1 => stream.extend(text(150_000, k)),
                _ => stream.extend(vec![0u8; 90_000]),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.zst");
        std::fs::write(&archive, zstd::bulk::compress(&stream, 3).unwrap()).unwrap();
        for (threads, frame_size) in [(1, 4096), (1, 256 << 10), (2, 100_000), (4, 1 << 20)] {
            let mut out = tempfile::tempfile().unwrap();
            let head = [0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]; // an empty skippable frame
            out.write_all(&head).unwrap();
            let spec = CacheSpec {
                out: &mut out,
                start: head.len() as u64,
                frame_size,
                level: 1,
                threads,
                limit: u64::MAX,
            };
            let res = pass(&archive, spec, &|_| {}).unwrap();
            let what = format!("threads {threads}, frame size {frame_size}");
            assert_eq!(res.size, stream.len() as u64, "{what}");
            let mut cache = Vec::new();
            std::io::Seek::rewind(&mut out).unwrap();
            out.read_to_end(&mut cache).unwrap();
            check_cache(&cache, head.len(), &res.frames, &stream, &what);
            assert!(res
                .frames
                .iter()
                .all(|f| f.u_len <= frame_size.max(4096) as u64));
        }
    }

    #[test]
    fn workers_compress_text_and_store_random_chunks_raw() {
        let mut c = zstd::bulk::Compressor::new(1).and_then(|mut c| {
            c.include_checksum(true)?;
            Ok(c)
        });
        let (chunks, frames) = (Pool::default(), Pool::default());
        let t = text(256 << 10, 9);
        match make_piece(&mut c, t.clone(), &chunks, &frames).unwrap() {
            Piece::Zstd { frame, u_len } => {
                assert_eq!(u_len, t.len() as u64);
                assert!(frame.len() < t.len() / 2);
                assert_eq!(zstd::bulk::decompress(&frame, t.len()).unwrap(), t);
                let mut bad = frame.clone();
                let n = bad.len();
                bad[n - 1] ^= 1; // the checksum
                assert!(zstd::bulk::decompress(&bad, t.len()).is_err());
            }
            Piece::Raw(_) => panic!("text stored raw"),
        }
        let r = noise(256 << 10, 9);
        assert!(matches!(
            make_piece(&mut c, r, &chunks, &frames).unwrap(),
            Piece::Raw(_)
        ));
        // Small random data is not judged by the sample but does not shrink.
        let r = noise(5000, 9);
        assert!(matches!(
            make_piece(&mut c, r, &chunks, &frames).unwrap(),
            Piece::Raw(_)
        ));
        let mut dead = Err(io::Error::other("no compressor"));
        assert!(make_piece(&mut dead, t, &chunks, &frames).is_err());
    }

    #[test]
    fn walker_stops_at_non_vma() {
        let mut w = VmaWalker::new();
        w.feed(0, &vec![0x55u8; 20000]);
        assert!(w.pinned.ranges.is_empty());
    }
}
