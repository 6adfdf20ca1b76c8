//! The one JSON document of a `--json` command (`list`, `verify`, `index`).
//!
//! Scripts parse stdout, so it carries exactly one document whatever
//! happens: the command's own (through [`emit`]), or, when the command fails
//! before printing it, however early, `{"ok": false, "error": ..., "offset":
//! ...}` ([`failure`], printed by `lib.rs`), or the same with `"error":
//! "interrupted"` when a signal ends the process ([`on_interrupt`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Map, Value};

use crate::interrupt;

/// Whether the document was printed (or is being printed).
static EMITTED: AtomicBool = AtomicBool::new(false);

/// Whether the document was printed.
pub fn emitted() -> bool {
    EMITTED.load(Ordering::SeqCst)
}

/// Prints `v` as the document. Runs as one [`interrupt::critical`] step: a
/// signal cannot add a second document, nor cut this one short.
pub fn emit(v: &Value) -> anyhow::Result<()> {
    interrupt::critical(|| {
        EMITTED.store(true, Ordering::SeqCst);
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    })
}

/// The byte offset in the archive an error names, if any.
pub fn error_offset(e: &anyhow::Error) -> Option<u64> {
    e.chain()
        .find_map(|c| c.downcast_ref::<vma_format::Error>())
        .and_then(vma_format::Error::offset)
}

/// Adds `"ok"`, `"error"` and (when known) `"offset"` to `m`.
pub fn set_result(m: &mut Map<String, Value>, error: Option<(&str, Option<u64>)>) {
    m.insert("ok".into(), json!(error.is_none()));
    m.insert("error".into(), error.map_or(Value::Null, |(e, _)| e.into()));
    if let Some((_, Some(off))) = error {
        m.insert("offset".into(), json!(off));
    }
}

/// The document of a command that failed before it could print its own.
pub fn failure(e: &anyhow::Error) -> Value {
    let mut m = Map::new();
    set_result(&mut m, Some((&crate::error_text(e), error_offset(e))));
    Value::Object(m)
}

/// Prints `{"ok": false, "error": "interrupted"}` if a signal ends the
/// process before the document was printed.
pub fn on_interrupt() -> interrupt::Cleanup {
    interrupt::on_interrupt(|| {
        if !EMITTED.swap(true, Ordering::SeqCst) {
            let mut m = Map::new();
            set_result(&mut m, Some(("interrupted", None)));
            // Straight to fd 1: the main thread may hold the stdout lock.
            crate::sys::write_stdout_raw(format!("{:#}\n", Value::Object(m)).as_bytes());
        }
    })
}
