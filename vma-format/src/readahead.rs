//! Read-ahead on a thread, so that reading (or decompressing) the archive
//! overlaps with whatever the consumer does with the bytes (spec-independent).
//!
//! Owns [`ReadAhead`]: a producer thread fills fixed-size buffers from the
//! inner reader and hands them over through a bounded channel; used buffers go
//! back through a second channel, so memory is `depth × chunk` whatever the
//! archive size. A pipe or a zstd decoder then runs on the second core while
//! `vma extract` writes.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// A [`Read`] whose inner reader runs on its own thread.
pub struct ReadAhead {
    full: Receiver<io::Result<Vec<u8>>>,
    empty: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts reading `inner` ahead in `depth` buffers of `chunk` bytes.
    pub fn new<R: Read + Send + 'static>(mut inner: R, chunk: usize, depth: usize) -> ReadAhead {
        let depth = depth.max(1);
        let (full_tx, full) = mpsc::sync_channel::<io::Result<Vec<u8>>>(depth);
        let (empty, empty_rx) = mpsc::sync_channel::<Vec<u8>>(depth + 1);
        for _ in 0..depth {
            // Cannot fail: the channel has room for all of them.
            let _ = empty.try_send(Vec::with_capacity(chunk));
        }
        let thread = std::thread::Builder::new()
            .name("vma-readahead".into())
            .spawn(move || {
                // Ends when the consumer is gone (either channel closed) or at EOF/error.
                while let Ok(mut buf) = empty_rx.recv() {
                    buf.resize(chunk, 0);
                    let mut got = 0;
                    let res = loop {
                        match inner.read(&mut buf[got..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                got += n;
                                if got == chunk {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(got);
                    let eof = got == 0;
                    match res {
                        Err(e) => {
                            if got > 0 {
                                let _ = full_tx.send(Ok(buf));
                            }
                            let _ = full_tx.send(Err(e));
                            return;
                        }
                        Ok(()) => {
                            if full_tx.send(Ok(buf)).is_err() || eof {
                                return;
                            }
                        }
                    }
                }
            })
            .ok();
        let mut ra = ReadAhead {
            full,
            empty,
            cur: Vec::new(),
            pos: 0,
            done: false,
            thread,
        };
        if ra.thread.is_none() {
            // No thread could be started: report it on the first read.
            ra.done = true;
        }
        ra
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            if self.done {
                return if self.thread.is_none() {
                    Err(io::Error::other("could not start the read-ahead thread"))
                } else {
                    Ok(0)
                };
            }
            let used = std::mem::take(&mut self.cur);
            self.pos = 0;
            if used.capacity() > 0 {
                let _ = self.empty.try_send(used);
            }
            match self.full.recv() {
                Ok(Ok(buf)) if buf.is_empty() => {
                    self.done = true;
                    return Ok(0);
                }
                Ok(Ok(buf)) => {
                    self.cur = buf;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing our ends stops the producer at its next send or recv; a
        // producer blocked inside the inner read (a pipe) is left to finish
        // on its own rather than hanging the consumer.
        let (_, dummy) = mpsc::sync_channel(0);
        self.full = dummy;
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_bytes_through_in_order() {
        let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = ReadAhead::new(io::Cursor::new(data.clone()), 1 << 20, 3);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(r.read(&mut [0u8; 10]).unwrap(), 0);
    }

    #[test]
    fn forwards_errors_after_the_data() {
        struct Fails(usize);
        impl Read for Fails {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = b.len().min(self.0);
                b[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut r = ReadAhead::new(Fails(5000), 4096, 2);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        assert_eq!(out.len(), 5000);
    }

    #[test]
    fn dropping_early_does_not_hang() {
        let r = ReadAhead::new(io::repeat(1), 1 << 16, 2);
        drop(r);
    }
}
