//! A dropped background `Writer` joins its output thread before the drop
//! returns (no detached thread keeps writing) and a write error nobody
//! collected surfaces in the log; `Writer::abandon` returns it instead.
//! One test binary of its own: it installs a process-wide logger and counts
//! the process's threads.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vma_format::raw::CLUSTER_SIZE;
use vma_format::{Error, WriterBuilder};

struct Capture(Mutex<Vec<String>>);
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}
static LOG: Capture = Capture(Mutex::new(Vec::new()));

/// Slow output that fails at its `fail_at`-th write and records its drop.
struct Slow {
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    fail_at: usize,
}
impl Write for Slow {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        std::thread::sleep(Duration::from_millis(150));
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(io::Error::other("injected failure"));
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Drop for Slow {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Threads of this process named `vma-writer-out`.
fn output_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|c| c.trim() == "vma-writer-out")
        })
        .count()
}

/// A background writer with the header and two full extents handed over.
fn busy_writer(fail_at: usize) -> (vma_format::Writer<Slow>, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let out = Slow {
        calls: Arc::new(AtomicUsize::new(0)),
        dropped: dropped.clone(),
        fail_at,
    };
    let mut b = WriterBuilder::new();
    b.add_device("drive-scsi0", 200 * CLUSTER_SIZE as u64)
        .unwrap();
    let w = b.build_background(out).unwrap();
    let data = vec![7u8; CLUSTER_SIZE];
    for c in 0..116 {
        w.write_cluster(1, c, &data).unwrap();
    }
    (w, dropped)
}

#[test]
fn dropped_writer_joins_its_thread_and_logs_the_pending_error() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    // Header written, then the first extent fails while the writer is dropped.
    let (w, dropped) = busy_writer(2);
    assert_eq!(output_threads(), 1);
    drop(w);
    assert!(
        dropped.load(Ordering::SeqCst),
        "output still owned by a live thread"
    );
    assert_eq!(
        output_threads(),
        0,
        "a detached output thread outlived the writer"
    );
    let logged = LOG.0.lock().unwrap().clone();
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("ERROR") && l.contains("injected failure")),
        "{logged:?}"
    );

    // abandon() hands the same error to the caller instead.
    LOG.0.lock().unwrap().clear();
    let (w, dropped) = busy_writer(2);
    match w.abandon() {
        Err(Error::Write { offset, source }) => {
            assert_eq!(source.to_string(), "injected failure");
            assert!(offset > 0, "the header was written before the failure");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the write error was lost"),
    }
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(output_threads(), 0);
    assert!(
        LOG.0.lock().unwrap().is_empty(),
        "a collected error is not logged again"
    );

    // Without an error a dropped writer still joins, and logs nothing.
    let (w, dropped) = busy_writer(usize::MAX);
    drop(w);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(output_threads(), 0);
    assert!(LOG.0.lock().unwrap().is_empty());
}
