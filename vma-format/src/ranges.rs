//! Parallel fetch of a list of byte ranges of a [`ReadAt`], read back in
//! order as one stream (spec-independent).
//!
//! Owns [`RangeReader`]: the ranges are coalesced where adjacent and cut
//! into pieces of at most [`RangeOptions::piece`] bytes; worker threads fetch
//! up to [`RangeOptions::workers`] pieces ahead of the consumer, one
//! positional read each (one ranged GET on an object store), and the
//! consumer takes them in order. Memory is bounded by `workers + 1` pieces
//! however many ranges there are. Used by `vma extract -d` of a remote
//! archive: only the extents of the selected disks are fetched.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use crate::indexed::ReadAt;

/// Piece size and parallelism of a [`RangeReader`].
#[derive(Debug, Clone, Copy)]
pub struct RangeOptions {
    /// Largest piece fetched by one read (bytes; at least 1).
    pub piece: u64,
    /// Pieces fetched at once, each on its own thread (at least 1).
    pub workers: usize,
}

impl Default for RangeOptions {
    /// 16 MiB pieces, 4 at once: enough to fill a fast link with object
    /// storage's per-request latency, 80 MiB of memory at most.
    fn default() -> Self {
        RangeOptions {
            piece: 16 << 20,
            workers: 4,
        }
    }
}

/// What the workers and the consumer share.
struct State {
    /// Next piece to hand to a worker.
    next: usize,
    /// Pieces the consumer has taken; workers stay below `taken + workers`.
    taken: usize,
    /// Fetched pieces not taken yet, by number.
    done: BTreeMap<usize, io::Result<Vec<u8>>>,
    /// The consumer is gone or failed: workers end.
    stop: bool,
    /// Workers still running: none left and a piece missing is an error,
    /// not a wait forever (a worker that panicked).
    alive: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Signals both ways: a piece is done, or the window moved / stop.
    cond: Condvar,
}

/// A [`Read`] over byte ranges of a [`ReadAt`], fetched in parallel and
/// yielded in order. Dropping it stops the workers (each after the read it
/// is in, which is not waited for).
pub struct RangeReader {
    shared: Arc<Shared>,
    pieces: usize,
    cur: Vec<u8>,
    pos: usize,
    /// End of stream reached, or an error returned.
    finished: bool,
    /// No worker could be started.
    no_thread: bool,
}

/// The ranges, adjacent ones merged and empty ones dropped, cut into
/// pieces of at most `piece` bytes.
fn pieces(ranges: &[Range<u64>], piece: u64) -> Vec<Range<u64>> {
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in ranges.iter().filter(|r| r.start < r.end) {
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r.clone()),
        }
    }
    let piece = piece.max(1);
    let mut out = Vec::new();
    for r in merged {
        let mut s = r.start;
        while s < r.end {
            let e = r.end.min(s.saturating_add(piece));
            out.push(s..e);
            s = e;
        }
    }
    out
}

/// Counts a worker out when it ends, by return or by panic.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        leave(&self.0);
    }
}

/// One worker fewer; wakes the consumer, which may be waiting for it.
fn leave(shared: &Shared) {
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    st.alive -= 1;
    shared.cond.notify_all();
}

/// A worker: takes the next piece inside the window, fetches it, hands it over.
fn work<S: ReadAt + ?Sized>(shared: &Shared, source: &S, list: &[Range<u64>], window: usize) {
    loop {
        let i = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while !st.stop && st.next < list.len() && st.next >= st.taken + window {
                st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop || st.next >= list.len() {
                return;
            }
            st.next += 1;
            st.next - 1
        };
        let res = fetch(source, &list[i]);
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.stop {
            return;
        }
        st.done.insert(i, res);
        shared.cond.notify_all();
    }
}

/// One piece, whole: a short read (the source ended) is an error too.
fn fetch<S: ReadAt + ?Sized>(src: &S, r: &Range<u64>) -> io::Result<Vec<u8>> {
    let len = usize::try_from(r.end - r.start).map_err(|_| io::Error::other("piece too large"))?;
    let mut buf = vec![0u8; len];
    let at = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("fetching bytes {}..{}: {e}", r.start, r.end),
        )
    };
    let got = src.read_full_at(r.start, &mut buf).map_err(at)?;
    if got < len {
        return Err(at(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the source ends at byte offset {}", r.start + got as u64),
        )));
    }
    Ok(buf)
}

impl RangeReader {
    /// Starts fetching `ranges` (ascending, not overlapping) of `source`.
    pub fn new<S: ReadAt + 'static>(
        source: S,
        ranges: &[Range<u64>],
        opts: RangeOptions,
    ) -> RangeReader {
        let list = Arc::new(pieces(ranges, opts.piece));
        let window = opts.workers.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next: 0,
                taken: 0,
                done: BTreeMap::new(),
                stop: false,
                alive: 0,
            }),
            cond: Condvar::new(),
        });
        let source = Arc::new(source);
        let mut started = 0;
        for _ in 0..window.min(list.len()) {
            let (sh, src, ls) = (shared.clone(), source.clone(), list.clone());
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).alive += 1;
            let worker = move || {
                let _alive = Alive(sh.clone());
                work(&sh, &*src, &ls, window)
            };
            if std::thread::Builder::new()
                .name("vma-ranges".into())
                .spawn(worker)
                .is_ok()
            {
                started += 1;
            } else {
                leave(&shared);
            }
        }
        RangeReader {
            shared,
            pieces: list.len(),
            cur: Vec::new(),
            pos: 0,
            finished: false,
            no_thread: started == 0 && !list.is_empty(),
        }
    }

    /// Ends the workers: at their next look at the shared state.
    fn stop(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.stop = true;
        st.done.clear();
        self.shared.cond.notify_all();
    }
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            if self.no_thread {
                self.no_thread = false;
                self.finished = true;
                return Err(io::Error::other("could not start a range-fetching thread"));
            }
            if self.finished {
                return Ok(0);
            }
            let res = {
                let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.taken == self.pieces {
                    self.finished = true;
                    return Ok(0);
                }
                let i = st.taken;
                loop {
                    if let Some(r) = st.done.remove(&i) {
                        break r;
                    }
                    if st.alive == 0 {
                        break Err(io::Error::other(
                            "the range-fetching threads ended before the data was read",
                        ));
                    }
                    st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            // Free the old piece before the window lets a worker make a new one.
            self.cur = Vec::new();
            self.pos = 0;
            match res {
                Ok(buf) => {
                    let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.taken += 1;
                    self.shared.cond.notify_all();
                    drop(st);
                    self.cur = buf;
                }
                Err(e) => {
                    self.finished = true;
                    self.stop();
                    return Err(e);
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
// One range is the common case of these tests.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    /// A byte source that counts reads and the pieces alive at once, and
    /// can fail at one offset or be slow.
    struct Probe {
        data: Vec<u8>,
        reads: AtomicUsize,
        bytes: AtomicU64,
        fail_at: Option<u64>,
        delay: Duration,
    }

    impl Probe {
        fn new(len: usize) -> Probe {
            Probe {
                data: (0..len).map(|i| (i % 251) as u8).collect(),
                reads: AtomicUsize::new(0),
                bytes: AtomicU64::new(0),
                fail_at: None,
                delay: Duration::ZERO,
            }
        }
    }

    impl ReadAt for Probe {
        fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.fetch_add(1, SeqCst);
            std::thread::sleep(self.delay);
            if self
                .fail_at
                .is_some_and(|f| (offset..offset + buf.len() as u64).contains(&f))
            {
                return Err(io::Error::other("503 slow down"));
            }
            let n = self.data.read_at_offset(offset, buf)?;
            self.bytes.fetch_add(n as u64, SeqCst);
            Ok(n)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.data.len() as u64)
        }
    }

    fn expected(p: &Probe, ranges: &[Range<u64>]) -> Vec<u8> {
        ranges
            .iter()
            .flat_map(|r| p.data[r.start as usize..r.end as usize].iter().copied())
            .collect()
    }

    #[test]
    fn pieces_coalesce_adjacent_ranges_and_split_large_ones() {
        assert_eq!(
            pieces(&[0..10, 10..20, 20..20, 30..55, 55..60, 70..71], 16),
            vec![0..16, 16..20, 30..46, 46..60, 70..71]
        );
        assert_eq!(pieces(&[], 16), Vec::<Range<u64>>::new());
    }

    #[test]
    fn yields_the_ranges_in_order_with_one_read_per_piece() {
        let p = Arc::new(Probe::new(1 << 20));
        // Slow reads, so that later pieces tend to finish first.
        let mut slow = Probe::new(1 << 20);
        slow.delay = Duration::from_millis(2);
        let ranges = [
            0..1000,
            1000..5000,
            9000..70_000,
            100_000..100_001,
            200_000..1 << 20,
        ];
        for (src, workers) in [(p.clone(), 1), (p.clone(), 4), (Arc::new(slow), 7)] {
            let before = src.reads.load(SeqCst);
            let opts = RangeOptions {
                piece: 4096,
                workers,
            };
            let mut r = RangeReader::new(src.clone(), &ranges, opts);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, expected(&src, &ranges), "{workers} workers");
            assert_eq!(r.read(&mut [0u8; 8]).unwrap(), 0);
            assert_eq!(
                src.reads.load(SeqCst) - before,
                pieces(&ranges, 4096).len(),
                "one read per piece"
            );
        }
    }

    #[test]
    fn an_error_names_the_piece_and_ends_the_stream() {
        let mut p = Probe::new(100_000);
        p.fail_at = Some(50_000);
        let ranges = [0..100_000];
        let mut r = RangeReader::new(
            p,
            &ranges,
            RangeOptions {
                piece: 10_000,
                workers: 3,
            },
        );
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), 50_000, "every byte before the bad piece");
        assert_eq!(e.to_string(), "fetching bytes 50000..60000: 503 slow down");
        assert_eq!(r.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn a_source_shorter_than_the_ranges_is_an_error() {
        let p = Probe::new(1000);
        let mut r = RangeReader::new(p, &[0..1500], RangeOptions::default());
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            e.to_string()
                .contains("fetching bytes 0..1500: the source ends at byte offset 1000"),
            "{e}"
        );
    }

    #[test]
    fn fetches_at_most_workers_pieces_ahead() {
        let p = Arc::new(Probe::new(1 << 20));
        let opts = RangeOptions {
            piece: 1000,
            workers: 3,
        };
        let mut r = RangeReader::new(p.clone(), &[0..1 << 20], opts);
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        // Piece 0 is taken; the workers may fetch pieces 1..=3, no more.
        let t = Instant::now();
        while p.reads.load(SeqCst) < 4 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(p.reads.load(SeqCst), 4, "the taken piece + 3 ahead");
        // Reading one more piece lets exactly one more be fetched.
        let mut rest = vec![0u8; 1000];
        r.read_exact(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(p.reads.load(SeqCst), 5);
    }

    #[test]
    fn workers_that_panic_are_an_error_not_a_hang() {
        struct Panics;
        impl ReadAt for Panics {
            fn read_at_offset(&self, _: u64, _: &mut [u8]) -> io::Result<usize> {
                panic!("a bug in the source");
            }
            fn size(&self) -> io::Result<u64> {
                Ok(1 << 20)
            }
        }
        let opts = RangeOptions {
            piece: 10_000,
            workers: 2,
        };
        let mut r = RangeReader::new(Panics, &[0..100_000], opts);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("threads ended before"), "{e}");
    }

    #[test]
    fn dropping_mid_way_stops_the_workers() {
        let mut slow = Probe::new(1 << 20);
        slow.delay = Duration::from_millis(5);
        let p = Arc::new(slow);
        let opts = RangeOptions {
            piece: 1000,
            workers: 4,
        };
        let mut r = RangeReader::new(p.clone(), &[0..1 << 20], opts);
        let mut b = vec![0u8; 5000];
        r.read_exact(&mut b).unwrap();
        drop(r);
        // Every worker ends and drops its handle on the source.
        let t = Instant::now();
        while Arc::strong_count(&p) > 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "workers still alive");
            std::thread::sleep(Duration::from_millis(5));
        }
        let reads = p.reads.load(SeqCst);
        assert!(reads <= 5 + 4 + 4, "{reads} reads of 1049 pieces");
    }
}
