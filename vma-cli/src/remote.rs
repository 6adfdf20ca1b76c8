//! Random access to an archive in object storage (`s3://`, `http(s)://`):
//! the one place the commands that read at random offsets (`extract
//! --range`, `extract -d` through an index, `mount`, `serve`, `index`) open
//! a remote object. Streaming commands go through [`crate::input`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use vma_remote::{CachedObject, RemoteObject};
use vma_seekable::{Identity, IndexStore, SeekOptions, Seekable, StreamIndexer};

/// The suffix of the sidecar index beside an archive object.
pub const SIDECAR_SUFFIX: &str = ".vmaidx";

/// `<key>.vmaidx` beside a remote archive, as vma-seekable's sidecar place.
struct BesideObject(Arc<RemoteObject>);

impl vma_seekable::SidecarStore for BesideObject {
    fn name(&self) -> String {
        self.0.beside_display(SIDECAR_SUFFIX)
    }
    fn get(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.0.get_beside(SIDECAR_SUFFIX)
    }
    fn put(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.put_beside(SIDECAR_SUFFIX, bytes)
    }
    fn delete(&self) -> std::io::Result<bool> {
        self.0.delete_beside(SIDECAR_SUFFIX)
    }
}

/// Where the index of `object` is looked up and kept, by this host and
/// others: `<key>.vmaidx` beside the object when the bucket takes it, else
/// in `cache_dir` (`--cache-dir` / `$VMA_CACHE_DIR`), else in the user's
/// cache directory; a cache file (one-frame zstd) only locally.
fn store(cache_dir: Option<PathBuf>, object: &Arc<RemoteObject>) -> IndexStore {
    IndexStore::Remote {
        beside: vma_seekable::Beside(Arc::new(BesideObject(object.clone()))),
        local: cache_dir.or_else(vma_seekable::user_cache_dir),
    }
}

/// The archive's identity for its index: the URL without userinfo, the
/// size and the Last-Modified time.
fn identity(object: &RemoteObject) -> Result<Identity> {
    let size = object.size()?;
    let (modified, _) = object.version()?;
    Ok(Identity::new(object.display(), size, modified, 0))
}

/// An opened remote archive: the random-access source (decompressed if
/// need be) and the object underneath, for [`RemoteObject::suspend`]
/// before a fork and for [`RemoteObject::stats`].
pub struct RemoteSeekable {
    /// The object (shared with the source).
    pub object: Arc<RemoteObject>,
    /// The source, its compression and what its index cost.
    pub seekable: Seekable,
}

/// Opens `url` for random access: a plain archive is read by ranged GETs
/// with read-ahead ([`CachedObject`]); a compressed one through
/// `vma_seekable` (its index found or built as `opts` says, kept as
/// `store` says for `cache_dir`: `opts.store` is ignored).
pub fn open_seekable(
    url: &str,
    opts: &SeekOptions,
    cache_dir: Option<PathBuf>,
) -> Result<RemoteSeekable> {
    let object = Arc::new(RemoteObject::open(url)?);
    Ok(open_object(object, None, opts, cache_dir, true)?.expect("built"))
}

/// [`open_seekable`] of an object already open, whose first bytes the
/// caller may have fetched already (`head`: from offset 0). Without `build`,
/// `None` when no valid index exists (nothing is built).
pub fn open_object(
    object: Arc<RemoteObject>,
    head: Option<Vec<u8>>,
    opts: &SeekOptions,
    cache_dir: Option<PathBuf>,
    build: bool,
) -> Result<Option<RemoteSeekable>> {
    let mut opts = opts.clone();
    opts.store = store(cache_dir, &object);
    let cached = Arc::new(CachedObject::new(object.clone()));
    match head {
        Some(h) => cached.keep(0, h),
        // One GET for the start (format detection, the header's UUID) that
        // also pins size, ETag and time, so the identity costs no HEAD.
        None => cached.prefetch(0..vma_remote::FIRST_RANGE)?,
    }
    let id = identity(&object)?;
    let shown = object.display();
    let opened = if build {
        vma_seekable::open_source(cached, id, &opts).map(Some)
    } else {
        vma_seekable::open_existing(cached, id, &opts)
    };
    let opened = opened.with_context(|| format!("can't open {shown}"))?;
    Ok(opened.map(|seekable| RemoteSeekable { object, seekable }))
}

/// Stores the index a complete streaming read of a plain archive built
/// (`vma extract`), where `vma index` would: beside the object, else in the
/// cache directory. Nothing is stored for an archive not read to its end.
pub fn store_streamed_index(object: &Arc<RemoteObject>, ix: StreamIndexer) -> Result<()> {
    let mut opts = SeekOptions::default();
    opts.store = store(crate::index::cache_dir(None), object);
    if let Some(info) = ix.finish(&identity(object)?, &opts) {
        if info.sidecar.is_none() {
            anyhow::bail!(
                "the index of {} was not stored: {}",
                object.display(),
                info.notes.join("; ")
            );
        }
    }
    Ok(())
}

/// `vma index --remove URL`: deletes `<key>.vmaidx` beside the object (when
/// the bucket allows) and the local sidecar and cache file; what was removed.
pub fn remove_index(url: &str, cache_dir: Option<PathBuf>) -> Result<Vec<PathBuf>> {
    let object = Arc::new(RemoteObject::open(url)?);
    let mut opts = SeekOptions::default();
    opts.store = store(cache_dir, &object);
    let name = PathBuf::from(object.display());
    Ok(vma_seekable::remove_index(&name, &opts)?)
}
