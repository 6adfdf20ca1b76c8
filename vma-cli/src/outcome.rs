//! What `vma extract` creates in its target directory, so that a failed or
//! interrupted restore never leaves a half-restored directory behind without
//! a word, and durable, non-clobbering final renames.
//!
//! The rule (documented in `vma extract --help`): extract creates TARGETDIR
//! itself. If it fails or is interrupted, it removes every file it created
//! there (configs, `tmp-disk-*`, `vmstate.bin`, disks already renamed) and
//! the directory, and says so, so that a rerun works. With `--salvage` it
//! keeps everything and lists it. With `-r` the map's targets belong to the
//! caller and are never touched; only TARGETDIR and its configs are removed.
//!
//! Every creation and rename goes through [`Restore`] inside an
//! [`interrupt::critical`] step, so the interrupt cleanup (on the signal
//! thread) knows every file and never races a rename.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, Result};

use crate::input::strerror;
use crate::interrupt;
use crate::sys::{self, rename_noreplace};
use crate::{Exit, EXIT_FATAL};

/// How the restore ends, for the note on stderr.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Interrupted,
    /// Failed; `--salvage` would have got further (a read or format error).
    FailedSalvageHelps,
    Failed,
}

struct State {
    dir: PathBuf,
    /// What we created in `dir`, under its current name.
    files: Vec<PathBuf>,
    /// `--salvage`: keep everything.
    keep: bool,
    /// `-r`: the disks went to the map's targets.
    mapped: bool,
    /// Succeeded or already cleaned up: nothing left to do.
    done: bool,
}

/// The target directory of one extract and what was created in it.
pub struct Restore {
    state: Arc<Mutex<State>>,
    _cleanup: interrupt::Cleanup,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Restore {
    /// Creates `dir` (which must not exist) for a restore.
    pub fn create_dir(dir: &Path, salvage: bool, mapped: bool) -> Result<Restore> {
        let state = Arc::new(Mutex::new(State {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            keep: salvage,
            mapped,
            done: true,
        }));
        let _cleanup = {
            let state = state.clone();
            interrupt::on_interrupt(move || abandon(&mut lock(&state), End::Interrupted))
        };
        // (`_cleanup` must not be dropped inside `critical`: its drop takes the lock.)
        interrupt::critical(|| {
            std::fs::create_dir(dir)?;
            lock(&state).done = false;
            Ok(())
        })
        .map_err(|e: io::Error| {
            anyhow!(
                "unable to create target directory {} - {}",
                dir.display(),
                strerror(&e)
            )
        })?;
        Ok(Restore { state, _cleanup })
    }

    /// Creates the file `path` in the directory with `open` (which must
    /// create it new), and records it.
    pub fn create(&self, path: &Path, open: impl FnOnce() -> io::Result<File>) -> io::Result<File> {
        interrupt::critical(|| {
            let f = open()?;
            lock(&self.state).files.push(path.to_path_buf());
            Ok(f)
        })
    }

    /// Renames `from` (created by us) to `to`, durably and never replacing
    /// an existing `to`. Callers `sync_all` the file and [`sync_dir`] first,
    /// so the final name never points at data that is not on disk.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        interrupt::critical(|| {
            rename_noreplace(from, to).map_err(|e| {
                anyhow!(
                    "restore failed - rename {} to {}: {}",
                    from.display(),
                    to.display(),
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        "the target exists (not overwritten)".to_string()
                    } else {
                        strerror(&e)
                    }
                )
            })?;
            let mut s = lock(&self.state);
            for f in s.files.iter_mut().filter(|f| *f == from) {
                *f = to.to_path_buf();
            }
            Ok(())
        })
    }

    /// Makes the directory's entries durable (Windows: see [`sys::sync_dir`]).
    pub fn sync_dir(&self) -> Result<()> {
        let dir = lock(&self.state).dir.clone();
        sys::sync_dir(&dir)
            .map_err(|e| anyhow!("can't sync directory {} - {}", dir.display(), strerror(&e)))
    }

    /// The restore is complete (or salvaged as far as possible): keep it.
    pub fn succeeded(self) {
        lock(&self.state).done = true;
    }

    /// The restore failed with `e`: prints `vma: <e>`, then removes (or,
    /// with `--salvage`, lists) what it left, and returns the error to
    /// return (already reported: exit status 133).
    pub fn failed(self, e: anyhow::Error) -> anyhow::Error {
        interrupt::critical(|| {
            let mut s = lock(&self.state);
            let salvage_helps = !s.keep
                && !s.mapped
                && e.chain().any(|c| {
                    c.downcast_ref::<RestoreFailed>()
                        .is_some_and(|r| r.salvage_helps)
                        || c.downcast_ref::<vma_format::Error>()
                            .is_some_and(salvage_helps)
                });
            eprintln!("vma: {}", crate::error_text(&e));
            let end = if salvage_helps {
                End::FailedSalvageHelps
            } else {
                End::Failed
            };
            abandon(&mut s, end);
        });
        Exit(EXIT_FATAL).into()
    }
}

/// Whether `--salvage` gets past `e`: damage in the archive, not a failing
/// output.
fn salvage_helps(e: &vma_format::Error) -> bool {
    !matches!(e, vma_format::Error::Write { .. })
}

/// `restore failed - <cause>` (Proxmox's wording), remembering whether the
/// cause is damage that `--salvage` reads past.
#[derive(Debug)]
struct RestoreFailed {
    text: String,
    salvage_helps: bool,
}

impl std::fmt::Display for RestoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "restore failed - {}", self.text)
    }
}

impl std::error::Error for RestoreFailed {}

/// Wraps an error of the restore loop as `restore failed - <e>`.
pub fn restore_failed(e: anyhow::Error) -> anyhow::Error {
    let salvage_helps = e.chain().any(|c| {
        c.downcast_ref::<vma_format::Error>()
            .is_some_and(salvage_helps)
    });
    RestoreFailed {
        text: crate::error_text(&e),
        salvage_helps,
    }
    .into()
}

/// Removes (or with `--salvage` lists) what the restore created, and says so
/// on stderr. Runs once: on failure, or on the signal thread.
fn abandon(s: &mut State, end: End) {
    if s.done {
        return;
    }
    s.done = true;
    let dir = s.dir.display().to_string();
    let names = |files: &[PathBuf]| {
        files
            .iter()
            .map(|f| f.file_name().unwrap_or(f.as_os_str()).to_string_lossy())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if s.keep {
        if s.files.is_empty() {
            eprintln!("vma: kept {dir} (empty)");
        } else {
            let partial = s.files.iter().any(|f| {
                f.file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(b"tmp-disk-"))
            });
            eprintln!(
                "vma: kept the incomplete restore in {dir}: {}{}",
                names(&s.files),
                if partial {
                    " (each tmp-disk-* file holds what was written of that disk)"
                } else {
                    ""
                }
            );
        }
        return;
    }
    let mut left = Vec::new();
    for f in &s.files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => left.push(format!("{} ({})", f.display(), strerror(&e))),
        }
    }
    let mut text = if !left.is_empty() {
        format!(
            "could not remove all of the incomplete restore in {dir}: left {}",
            left.join(", ")
        )
    } else {
        match std::fs::remove_dir(&s.dir) {
            Ok(()) => format!("removed the incomplete restore in {dir}"),
            Err(e) => {
                let others = std::fs::read_dir(&s.dir)
                    .map(|r| {
                        r.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                if others.is_empty() {
                    format!(
                        "removed the incomplete restore in {dir}, but not the directory - {}",
                        strerror(&e)
                    )
                } else {
                    format!("removed the incomplete restore in {dir}; the directory stays, it holds files vma did not create: {others}")
                }
            }
        }
    };
    if s.mapped {
        text.push_str("; the map's targets keep what was written to them");
    }
    if end == End::FailedSalvageHelps {
        text.push_str("; --salvage keeps whatever can be read");
    }
    eprintln!("vma: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_never_replaces() {
        let dir = std::env::temp_dir().join(format!("vma-cli-outcome-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
