//! `vma-fuse`: a read-only FUSE filesystem exposing each disk of a VMA archive
//! as a sparse file (`<devname>.raw`) and each config blob as a file.
//!
//! PLACEHOLDER API — the implementation is being written; the signatures below
//! are the contract the `vma` CLI uses.

use std::path::{Path, PathBuf};

/// Errors of the mount layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The archive could not be opened or indexed.
    #[allow(missing_docs)]
    #[error("{path}: {source}")]
    Archive { path: PathBuf, source: vma_format::Error },
    /// Anything the OS refused (open, mount, fork).
    #[allow(missing_docs)]
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Not implemented yet.
    #[error("mount is not implemented yet")]
    Unimplemented,
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Stay attached to the terminal instead of detaching once the mount is ready.
    pub foreground: bool,
    /// `-o` options passed through to FUSE (e.g. `allow_other`), split on commas.
    pub options: Vec<String>,
    /// Mount even if the archive lacks clusters (they read as zeros).
    pub allow_incomplete: bool,
}

/// Mounts `archive` at `mountpoint`. Returns once the mount is ready (after
/// detaching into the background unless `foreground`, in which case it
/// returns when the filesystem is unmounted).
pub fn mount(archive: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<(), Error> {
    let _ = (archive, mountpoint, opts);
    Err(Error::Unimplemented)
}

/// Unmounts a mountpoint (`fusermount3 -u`, falling back to umount(2)).
pub fn umount(mountpoint: &Path) -> Result<(), Error> {
    let _ = mountpoint;
    Err(Error::Unimplemented)
}
