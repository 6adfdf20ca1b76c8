//! Compressed output for `vma create --compress`: zstd, gzip and lzop.
//!
//! Owns [`ParallelCompressor`], a [`Write`] that cuts its input into chunks,
//! compresses each chunk on a pool of worker threads and writes the results
//! in order. Each chunk becomes a self-contained unit of its container:
//! - zstd: one frame per [`vma_format::compress::ZSTD_FRAME_SIZE`] (512 KiB) of input, each with its
//!   content size and a content checksum (the layout is
//!   [`vma_format::compress::zstd_frames`]'s), so frames can later be found
//!   and decompressed on their own (`vma mount` of the archive decodes at
//!   most 512 KiB per random read). A chunk (the unit of work of a thread)
//!   holds sixteen frames.
//! - gzip: one gzip member per 8 MiB (like `pigz --independent`); `gzip -d`
//!   and every multi-member reader read them as one stream.
//! - lzo: one lzop file header, then 256 KiB lzop blocks (LZO1X-1, adler32 of
//!   the uncompressed data), then the end marker, as `lzop` writes
//!   ([`vma_format::compress::lzop`]).
//!
//! Chunk-level parallelism instead of zstd's own worker threads keeps frames
//! independent and lets all three formats use every core.
//!
//! Also which codec `create` writes with ([`choose_codec`]: `--compress`, else
//! OUT's suffix).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vma_format::compress::lzop;

use crate::sys;

/// Which container to write. The value docs are `vma create --help`'s only
/// description of each codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    /// one frame per 512 KiB of archive, each with a content checksum; `vma mount` reads it fast at random offsets
    Zstd,
    /// one gzip member per 8 MiB (like pigz --independent)
    Gzip,
    /// lzop container, LZO1X-1 in 256 KiB blocks with adler32
    Lzo,
}

/// Uncompressed bytes per work unit of a thread (and per gzip member).
pub const CHUNK: usize = 8 << 20;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// Compresses on worker threads, writes in order to `W`.
pub struct ParallelCompressor<W: Write> {
    out: Option<W>,
    codec: Codec,
    level: i32,
    buf: Vec<u8>,
    next_seq: u64,
    next_out: u64,
    in_flight: usize,
    max_in_flight: usize,
    pending: BTreeMap<u64, Vec<u8>>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> ParallelCompressor<W> {
    /// Starts `threads` workers; writes the container's file header (lzop) at once.
    /// `level`: zstd 1..=19 (default 3), gzip 1..=9 (default 6), ignored for lzo.
    pub fn new(mut out: W, codec: Codec, level: Option<i32>, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let level = level.unwrap_or(match codec {
            Codec::Zstd => 3,
            Codec::Gzip => 6,
            Codec::Lzo => 0,
        });
        if codec == Codec::Lzo {
            let mtime = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out.write_all(&lzop::file_header(mtime))?;
        }
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(threads);
        let (done_tx, done_rx) = sync_channel::<Done>(threads + 2);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&jobs_rx);
                let tx = done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, data)) = job else { return };
                    if tx.send((seq, compress_chunk(codec, level, &data))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Ok(ParallelCompressor {
            out: Some(out),
            codec,
            level,
            buf: Vec::with_capacity(CHUNK),
            next_seq: 0,
            next_out: 0,
            in_flight: 0,
            // Enough to keep every worker busy while results are written; bounds memory.
            max_in_flight: threads + 2,
            pending: BTreeMap::new(),
            jobs: Some(jobs_tx),
            done: done_rx,
            workers,
        })
    }

    /// Sends the buffered chunk to a worker.
    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let tx = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compressor already finished"))?;
        tx.send((self.next_seq, data))
            .map_err(|_| io::Error::other("compression worker died"))?;
        self.next_seq += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one result and writes whatever is now in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (seq, res) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("compression worker died"))?;
        self.in_flight -= 1;
        let data = res.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{:?} compression failed: {e}", self.codec),
            )
        })?;
        self.pending.insert(seq, data);
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("compressor already finished"))?;
        while let Some(data) = self.pending.remove(&self.next_out) {
            out.write_all(&data)?;
            self.next_out += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes the container's end and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit()?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        let mut out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("compressor already finished"))?;
        match self.codec {
            Codec::Lzo => out.write_all(&lzop::END)?,
            // An empty input still makes a valid (empty) compressed file.
            Codec::Zstd | Codec::Gzip if self.next_seq == 0 => {
                out.write_all(&compress_chunk(self.codec, self.level, &[])?)?
            }
            _ => {}
        }
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Drop for ParallelCompressor<W> {
    fn drop(&mut self) {
        // Closing the job channel ends the workers once they see it.
        self.jobs = None;
        while self.in_flight > 0 && self.done.recv().is_ok() {
            self.in_flight -= 1;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<W: Write> Write for ParallelCompressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Output order matters more than latency: data reaches `out` in `finish`.
        Ok(())
    }
}

/// Compresses one chunk into a self-contained piece of the container.
fn compress_chunk(codec: Codec, level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
    match codec {
        Codec::Zstd => vma_format::compress::zstd_frames(level, data),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                flate2::Compression::new(level.clamp(1, 9) as u32),
            );
            e.write_all(data)?;
            e.finish()
        }
        Codec::Lzo => {
            let mut out = Vec::with_capacity(data.len() / 2 + 64);
            for block in data.chunks(lzop::BLOCK_SIZE) {
                lzop::write_block(block, &mut out);
            }
            Ok(out)
        }
    }
}

/// The codec a file name's suffix stands for: `Some(None)` = plain (`.vma`),
/// `None` = the suffix says nothing.
fn suffix_codec(out: &OsStr) -> Option<Option<Codec>> {
    let name = sys::bytes(out);
    [
        (&b".zst"[..], Some(Codec::Zstd)),
        (b".zstd", Some(Codec::Zstd)),
        (b".gz", Some(Codec::Gzip)),
        (b".lzo", Some(Codec::Lzo)),
        (b".vma", None),
    ]
    .into_iter()
    .find(|(suffix, _)| name.ends_with(suffix))
    .map(|(_, codec)| codec)
}

fn codec_name(codec: Option<Codec>) -> &'static str {
    match codec {
        None => "no compression",
        Some(Codec::Zstd) => "zstd",
        Some(Codec::Gzip) => "gzip",
        Some(Codec::Lzo) => "lzo",
    }
}

/// The codec to write with: `--compress`, else the one OUT's suffix names
/// (for a regular file OUT only), with a warning when both are given and
/// disagree.
pub(super) fn choose_codec(
    out: &OsStr,
    explicit: Option<Codec>,
    is_file: bool,
) -> (Option<Codec>, Option<String>) {
    let suffix = suffix_codec(out);
    match (explicit, suffix) {
        (None, Some(c)) if is_file => (c, None),
        (Some(c), Some(s)) if s != Some(c) => (
            Some(c),
            Some(format!(
                "warning: writing {} into {}, whose name suggests {}",
                codec_name(Some(c)),
                Path::new(out).display(),
                codec_name(s)
            )),
        ),
        (c, _) => (c, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_follows_the_suffix_unless_given_and_warns_on_disagreement() {
        let c = |out: &str, explicit, file| choose_codec(OsStr::new(out), explicit, file);
        assert_eq!(c("x.vma.zst", None, true), (Some(Codec::Zstd), None));
        assert_eq!(c("x.vma.gz", None, true), (Some(Codec::Gzip), None));
        assert_eq!(c("x.vma.lzo", None, true), (Some(Codec::Lzo), None));
        assert_eq!(c("x.vma", None, true), (None, None));
        assert_eq!(c("backup", None, true), (None, None));
        // Not a file (FIFO, stdout): the name chooses nothing.
        assert_eq!(c("fifo.zst", None, false), (None, None));
        assert_eq!(
            c("x.vma.zst", Some(Codec::Zstd), true),
            (Some(Codec::Zstd), None)
        );
        let (codec, warn) = c("x.vma", Some(Codec::Gzip), true);
        assert_eq!(codec, Some(Codec::Gzip));
        let warn = warn.expect("a warning");
        assert!(warn.contains("gzip") && warn.contains("x.vma"), "{warn}");
        let (codec, warn) = c("x.vma.zst", Some(Codec::Lzo), true);
        assert_eq!(codec, Some(Codec::Lzo));
        assert!(warn.expect("a warning").contains("suggests zstd"));
        assert_eq!(c("out", Some(Codec::Lzo), true), (Some(Codec::Lzo), None));
    }
    use std::io::Read;
    use vma_format::compress::ZSTD_FRAME_SIZE as ZSTD_FRAME;

    fn roundtrip(codec: Codec, input: &[u8]) -> Vec<u8> {
        let mut c = ParallelCompressor::new(Vec::new(), codec, None, 2).unwrap();
        for piece in input.chunks(3_000_001) {
            c.write_all(piece).unwrap();
        }
        let out = c.finish().unwrap();
        let (_, mut r) = vma_format::decompressor(&out[..]).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        back
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678u32;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if (i / 100_000) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn all_codecs_round_trip_through_the_library_decompressor() {
        let input = sample(CHUNK * 2 + 12_345);
        for codec in [Codec::Zstd, Codec::Gzip, Codec::Lzo] {
            assert_eq!(roundtrip(codec, &input), input, "{codec:?}");
            assert_eq!(roundtrip(codec, &[]), Vec::<u8>::new(), "{codec:?} empty");
        }
    }

    #[test]
    fn zstd_writes_one_frame_per_512_kib_with_content_size_and_checksum() {
        let input = sample(CHUNK * 2 + ZSTD_FRAME / 2 + 1);
        let mut c = ParallelCompressor::new(Vec::new(), Codec::Zstd, None, 2).unwrap();
        c.write_all(&input).unwrap();
        let out = c.finish().unwrap();
        let (mut pos, mut sizes) = (0, Vec::new());
        while pos < out.len() {
            let len = zstd::zstd_safe::find_frame_compressed_size(&out[pos..]).unwrap();
            let size = zstd::zstd_safe::get_frame_content_size(&out[pos..pos + len]).unwrap();
            // Frame_Header_Descriptor bit 2: Content_Checksum_flag.
            assert_ne!(out[pos + 4] & 0x04, 0, "frame at {pos} has no checksum");
            sizes.push(size.expect("frame content size recorded"));
            pos += len;
        }
        let frame = ZSTD_FRAME as u64;
        let mut want = vec![frame; 2 * CHUNK / ZSTD_FRAME];
        want.push(frame / 2 + 1);
        assert_eq!(sizes, want);
    }
}
