//! Random access to an archive in object storage (`s3://`, `http(s)://`):
//! the one place the commands that read at random offsets (`extract
//! --range`, `extract -d` through an index, `mount`, `serve`, `index`) open
//! a remote object. Streaming commands go through [`crate::input`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use vma_remote::{CachedObject, RemoteObject};
use vma_seekable::{Identity, IndexStore, SeekOptions, Seekable};

/// Where the index of a remote archive is looked up and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Nowhere: built in memory by this process (`extract --range`).
    Memory,
    /// Kept for later opens (`mount`, `serve`, `index`): in `cache_dir`
    /// (`--cache-dir` / `$VMA_CACHE_DIR`), else the user's cache directory.
    #[allow(dead_code)] // mount, serve and index (next commits)
    Index {
        /// `--cache-dir` or `$VMA_CACHE_DIR`.
        cache_dir: Option<PathBuf>,
    },
}

/// The [`IndexStore`] for `keep`.
fn store(keep: &Keep) -> IndexStore {
    match keep {
        Keep::Memory => IndexStore::Memory,
        Keep::Index { cache_dir } => {
            match cache_dir.clone().or_else(vma_seekable::user_cache_dir) {
                Some(d) => IndexStore::Dir(d),
                None => IndexStore::Memory,
            }
        }
    }
}

/// An opened remote archive: the random-access source (decompressed if
/// need be) and the object underneath, for [`RemoteObject::suspend`]
/// before a fork and for [`RemoteObject::stats`].
pub struct RemoteSeekable {
    /// The object (shared with the source).
    #[allow(dead_code)] // used by mount, serve and extract -d (next commits)
    pub object: Arc<RemoteObject>,
    /// The source, its compression and what its index cost.
    pub seekable: Seekable,
}

/// Opens `url` for random access: a plain archive is read by ranged GETs
/// with read-ahead ([`CachedObject`]); a compressed one through
/// `vma_seekable` (its index found or built as `opts` says, kept as `keep`
/// says: `opts.store` is ignored).
pub fn open_seekable(url: &str, opts: &SeekOptions, keep: &Keep) -> Result<RemoteSeekable> {
    let mut opts = opts.clone();
    opts.store = store(keep);
    let object = Arc::new(RemoteObject::open(url)?);
    let shown = object.display();
    let size = object.size()?;
    let cached = Arc::new(CachedObject::new(object.clone()));
    let seekable =
        vma_seekable::open_source(cached, Identity::new(shown.clone(), size, 0, 0), &opts)
            .with_context(|| format!("can't open {shown}"))?;
    Ok(RemoteSeekable { object, seekable })
}
