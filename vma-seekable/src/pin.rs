//! Pinning the VMA structures (header and extent headers) of an archive
//! read through a frame table: [`walk`] reads only them through any
//! [`ReadAt`] (a frame table decodes only the frames holding them);
//! [`walk_all_frames`] decodes every frame of a [`FrameSource`] on several
//! threads, for big frames that nearly all hold an extent header.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use std::sync::Arc;

use vma_format::ReadAt;

use crate::source::FrameSource;
use crate::types::Pinned;
use crate::walker::VmaWalker;

/// Follows the VMA structure through a random-access source, reading only
/// the header and the extent headers (for a frame table, only the frames
/// holding them are decoded). `progress` gets each stream offset visited.
pub(crate) fn walk(
    src: &dyn ReadAt,
    progress: &dyn Fn(u64),
    stop: &dyn Fn() -> bool,
) -> io::Result<Pinned> {
    let mut w = VmaWalker::new();
    let mut buf = Vec::new();
    while let Some((at, len)) = w.wants() {
        if stop() {
            return Err(io::Error::other("cancelled"));
        }
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
    stop: &dyn Fn() -> bool,
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
                if stop() {
                    return Err(io::Error::other("cancelled"));
                }
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

/// A plain archive whose VMA structures were pinned ([`walk`]): reads that
/// fall inside a pinned range (the header, an extent header) are answered
/// from memory, the rest by the source. For a remote archive, where each
/// extent header read would be a request.
pub(crate) struct PinnedSource {
    inner: Arc<dyn ReadAt>,
    pinned: Pinned,
}

impl PinnedSource {
    pub(crate) fn new(inner: Arc<dyn ReadAt>, pinned: Pinned) -> PinnedSource {
        PinnedSource { inner, pinned }
    }
}

impl ReadAt for PinnedSource {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self.pinned.read(offset, buf) {
            Some(n) => Ok(n),
            None => self.inner.read_at_offset(offset, buf),
        }
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vma_format::raw::{
        ext, hdr, BLOCK_SIZE, EXTENT_HEADER_SIZE, EXTENT_MAGIC, HEADER_FIXED_SIZE, MAGIC,
    };
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
        let pinned = walk(&stream, &|at| visited.borrow_mut().push(at), &|| false).unwrap();
        assert_eq!(pinned, w.pinned);
        assert_eq!(pinned.ranges.len(), 4);
        // It read the structures only, never the extent data.
        assert_eq!(visited.borrow().len(), 4);
    }
}
