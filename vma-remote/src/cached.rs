//! Random reads of a remote object with read-ahead: [`CachedObject`].
//!
//! IndexedReader reads a disk cluster by cluster (one positional read per
//! stored run), which against object storage would be one GET per 64 KiB.
//! Here a read that continues where the previous one ended (or inside the
//! last window) is sequential: each such miss fetches a window that doubles
//! up to [`MAX_WINDOW`], so reading a disk costs about one GET per 8 MiB of
//! archive. A read elsewhere (the extent headers of an index scan, 3.7 MiB
//! apart) fetches just what it asks for, so indexing does not download the
//! archive. The last few windows are kept (bounded memory). A fetch runs
//! outside the lock, so concurrent readers elsewhere (FUSE workers, NBD
//! requests) fetch in parallel, while a read that falls inside a fetch in
//! flight waits for it.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use crate::RemoteObject;

/// First read-ahead window of a sequential run.
pub const FIRST_WINDOW: u64 = 256 << 10;
/// Largest window.
pub const MAX_WINDOW: u64 = 8 << 20;
/// Windows kept.
const KEPT: usize = 4;

struct State {
    windows: VecDeque<(u64, Vec<u8>)>,
    /// Where a sequential read would start.
    next: u64,
    window: u64,
    /// Fetches in flight: a read inside one waits for it rather than
    /// sending a GET of its own (the kernel's read-ahead sends the next
    /// FUSE reads while the window holding them is still on its way).
    pending: Vec<Range<u64>>,
}

/// A [`RemoteObject`] with read-ahead; implements vma-format's `ReadAt`.
pub struct CachedObject {
    obj: Arc<RemoteObject>,
    state: Mutex<State>,
    fetched: Condvar,
}

impl CachedObject {
    /// Wraps `obj`.
    pub fn new(obj: Arc<RemoteObject>) -> CachedObject {
        CachedObject {
            obj,
            state: Mutex::new(State {
                windows: VecDeque::new(),
                next: u64::MAX,
                window: 0,
                pending: Vec::new(),
            }),
            fetched: Condvar::new(),
        }
    }

    /// The object underneath.
    pub fn object(&self) -> &RemoteObject {
        &self.obj
    }

    /// Fetches `range` now (one GET) and keeps it: the start of the object
    /// for an open, whose first response also pins size, ETag and time.
    pub fn prefetch(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        let data = self.obj.get_range(range.clone())?;
        self.keep(range.start, data);
        Ok(())
    }

    /// Keeps `data`, the object's bytes at `start` that the caller already
    /// fetched, as a window.
    pub fn keep(&self, start: u64, data: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        if s.windows.len() == KEPT {
            s.windows.pop_front();
        }
        s.windows.push_back((start, data));
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        let want = loop {
            let hit = s
                .windows
                .iter()
                .position(|(start, w)| offset >= *start && offset < start + w.len() as u64);
            if let Some(i) = hit {
                let (start, w) = &s.windows[i];
                let at = (offset - start) as usize;
                let n = buf.len().min(w.len() - at);
                buf[..n].copy_from_slice(&w[at..at + n]);
                s.next = offset + n as u64;
                return Ok(n);
            }
            if s.pending.iter().any(|r| r.contains(&offset)) {
                s = self.fetched.wait(s).unwrap();
                continue;
            }
            let sequential = offset == s.next;
            s.window = if sequential {
                (s.window * 2).clamp(FIRST_WINDOW, MAX_WINDOW)
            } else {
                0
            };
            break (buf.len() as u64).max(s.window);
        };
        let range = offset..offset.saturating_add(want);
        s.pending.push(range.clone());
        drop(s);
        // Not under the lock: reads elsewhere (other FUSE workers, NBD
        // requests) go out in parallel instead of waiting for this GET.
        let got = self.obj.get_range(range.clone());
        let mut s = self.state.lock().unwrap();
        if let Some(i) = s.pending.iter().position(|r| *r == range) {
            s.pending.swap_remove(i);
        }
        let data = match got {
            Ok(d) => d,
            Err(e) => {
                self.fetched.notify_all();
                return Err(e);
            }
        };
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        s.next = offset + n as u64;
        if data.len() > n {
            if s.windows.len() == KEPT {
                s.windows.pop_front();
            }
            s.windows.push_back((offset, data));
        }
        self.fetched.notify_all();
        Ok(n)
    }
}

impl vma_format::ReadAt for CachedObject {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        self.obj.size()
    }
}
