//! SIGINT, SIGTERM and SIGHUP, the same way for every command: one
//! `vma: interrupted` line and exit status 130. `mount` and `serve` detach
//! daemons that stop cleanly on these signals themselves; `backup` polls a
//! flag ([`install_flag_only`]) because it must cancel QEMU's jobs first.
//!
//! [`install`] blocks the signals in the calling thread (and so in every
//! thread it spawns later: zstd workers, read-ahead, ...) and starts one
//! thread that waits for them with `sigwait(2)`. On the first signal that
//! thread sets the [`interrupted`] flag, prints the one `vma: interrupted`
//! line, runs the cleanups commands registered with [`on_interrupt`] (remove
//! a temporary output, print the JSON document, say what an extract left)
//! and exits the process with [`crate::EXIT_INTERRUPTED`]. So a main thread
//! blocked in `read(2)` on a pipe, a FIFO or a slow disk does not delay it.
//!
//! Why a thread instead of a handler that only sets a flag: the flag is seen
//! only when the main thread gets to look, and a read that never returns
//! keeps it from looking. Why not `exit` from a handler: cleanups take locks
//! and allocate, which a handler must not.
//!
//! Cleanups and the main thread's own commit steps (creating an output,
//! renaming it into place, printing a JSON document) are serialised by one
//! lock ([`critical`]), so a cleanup sees every file that was created, and
//! never undoes half of a commit. Child processes (`qemu-img`, `exec:`) start
//! with an empty signal mask (std resets it), so they get signals as usual.
//!
//! A second signal while the cleanups run kills the process the default way.
//!
//! Windows has none of these signals: there [`install`] and
//! [`install_flag_only`] do nothing, [`interrupted`] stays false, and Ctrl-C
//! ends the process the default way (an incomplete output may stay behind).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::EXIT_INTERRUPTED;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: std::sync::Once = std::sync::Once::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

type CleanupFn = Box<dyn FnOnce() + Send>;

/// Registered cleanups, in registration order. Also the lock of [`critical`].
static CLEANUPS: Mutex<Vec<(u64, CleanupFn)>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<(u64, CleanupFn)>> {
    // A panicking cleanup must not keep the others from running.
    CLEANUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the signal thread (once per process). Call it before spawning
/// other threads, so that they inherit the blocked mask.
pub fn install() {
    INSTALL.call_once(|| {
        // The signal thread unblocks the signals in itself before this runs,
        // so a second signal takes the default action (terminate).
        crate::sys::on_stop_signal("vma-signals", || exit_interrupted());
    });
}

/// For a command that must unwind by itself on a signal (`backup`: it has to
/// cancel QEMU's jobs and remove the nodes it added, which only its main
/// thread can do over QMP): the signals only set the [`interrupted`] flag,
/// which the command polls; the handler resets itself, so a second signal
/// kills the process the default way. Not with [`install`].
pub fn install_flag_only() {
    crate::sys::flag_on_stop_signals(&INTERRUPTED);
}

/// Prints `vma: interrupted`, runs the registered cleanups (newest first)
/// and exits with [`EXIT_INTERRUPTED`]. The lock is held until the process
/// is gone, so the main thread cannot start a commit meanwhile; if another
/// thread is already exiting, this one waits for the end.
pub fn exit_interrupted() -> ! {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let mut cleanups = lock();
    // stderr is unbuffered: the line is out before any cleanup's message.
    eprintln!("vma: interrupted");
    while let Some((_, f)) = cleanups.pop() {
        f();
    }
    // _exit: no atexit handlers, no flushing of stdout buffers a blocked main
    // thread may hold the lock of; whatever a command must print, its
    // cleanup printed.
    crate::sys::exit_now(i32::from(EXIT_INTERRUPTED))
}

/// Whether a signal asked us to stop (long loops check it so that they stop
/// promptly even when the signal thread waits for a [`critical`] section).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A registered cleanup; dropping it unregisters it (without running it).
#[must_use = "the cleanup is unregistered when this is dropped"]
pub struct Cleanup(u64);

thread_local! {
    /// Cleanups dropped inside [`critical`] on this thread (which holds the
    /// lock already): unregistered when it ends, instead of deadlocking.
    static DROPPED_IN_CRITICAL: std::cell::RefCell<Option<Vec<u64>>> =
        const { std::cell::RefCell::new(None) };
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let deferred = DROPPED_IN_CRITICAL.with(|d| match d.borrow_mut().as_mut() {
            Some(ids) => {
                ids.push(self.0);
                true
            }
            None => false,
        });
        if !deferred {
            lock().retain(|(id, _)| *id != self.0);
        }
    }
}

/// Registers `f` to run when a signal ends the process, until the returned
/// guard is dropped. `f` runs on the signal thread with the [`critical`]
/// lock held, so it must not call [`critical`] or [`on_interrupt`].
pub fn on_interrupt(f: impl FnOnce() + Send + 'static) -> Cleanup {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock().push((id, Box::new(f)));
    Cleanup(id)
}

/// Runs `f` so that no interrupt cleanup runs at the same time: a signal
/// arriving during `f` is handled after it. If a signal already arrived, `f`
/// does not run: the process is exiting, and this thread waits for that.
pub fn critical<R>(f: impl FnOnce() -> R) -> R {
    let mut guard = lock();
    if interrupted() {
        drop(guard);
        park_until_exit();
    }
    DROPPED_IN_CRITICAL.with(|d| *d.borrow_mut() = Some(Vec::new()));
    let r = f();
    let dropped = DROPPED_IN_CRITICAL.with(|d| d.borrow_mut().take().unwrap_or_default());
    guard.retain(|(id, _)| !dropped.contains(id));
    drop(guard);
    r
}

/// For a thread that saw the flag: the signal thread ends the process.
pub fn park_until_exit() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(c: &Cleanup) -> bool {
        lock().iter().any(|(id, _)| *id == c.0)
    }

    #[test]
    fn cleanups_unregister_on_drop_even_inside_critical() {
        let a = on_interrupt(|| {});
        let b = on_interrupt(|| {});
        assert!(registered(&a) && registered(&b));
        let b_id = b.0;
        drop(a);
        assert!(!lock().iter().any(|(id, _)| *id == b_id - 1));
        // Dropped while this thread holds the lock: no deadlock, and it is
        // unregistered when the critical step ends.
        critical(move || drop(b));
        assert!(!lock().iter().any(|(id, _)| *id == b_id));
    }
}
