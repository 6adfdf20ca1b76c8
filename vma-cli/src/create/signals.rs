//! SIGINT/SIGTERM/SIGHUP handling for `vma create`.
//!
//! The handler only sets a flag; the copy loop checks it and unwinds through
//! the normal error path, so the temporary output file is removed and no
//! partial archive is left behind. The handler resets itself (SA_RESETHAND),
//! so a second signal kills the process the default way.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    crate::sys::on_signals_once(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], on_signal);
}

/// Whether a signal asked us to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
