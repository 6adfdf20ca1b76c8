//! The cache file of a one-frame zstd archive: the one decoding pass that
//! records the pinned VMA structures and writes the stream as independent
//! zstd frames, compressed by worker threads when the CPU has room
//! ([`pass`]). Where the file goes and when it is trusted is `lib.rs`'s and
//! `sidecar`'s.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vma_format::error::{Error, Result};
use vma_format::ReadAt;

use crate::types::{Cursor, Frame, Pinned};
use crate::walker::VmaWalker;
use crate::zstd_frame::{raw_frame_len, write_raw_frame, ZSTD_SKIPPABLE};

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
    /// Polled once per chunk: true stops the pass ([`Error::Cancelled`]).
    pub stop: &'a dyn Fn() -> bool,
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
pub(crate) fn pass(
    src: &dyn ReadAt,
    spec: CacheSpec<'_>,
    progress: &dyn Fn(u64),
) -> Result<PassResult> {
    let file = Cursor::new(src);
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
    let stop = spec.stop;
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
            if stop() {
                // The workers and the writer end as the channels close.
                break Err(Error::Cancelled);
            }
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
        });
        // The decoder's error first: a cancelled pass leaves the writer
        // with missing chunks, which is not the cause.
        decoded?;
        let frames = frames?;
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

/// Bytes of cache between two [`start_writeback`] calls.
const FLUSH_EVERY: u64 = 16 << 20;

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

    use crate::types::noise;

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
                stop: &|| false,
            };
            let data = std::fs::File::open(&archive).unwrap();
            let res = pass(&data, spec, &|_| {}).unwrap();
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
}
