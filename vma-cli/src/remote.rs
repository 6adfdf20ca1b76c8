//! Random access to an archive in object storage (`s3://`, `http(s)://`):
//! the one place the commands that read at random offsets (`extract
//! --range`, `extract -d` through an index, `mount`, `serve`, `index`) open
//! a remote object. Streaming commands go through [`crate::input`].

use std::sync::Arc;

use anyhow::{Context, Result};
use vma_remote::{CachedObject, RemoteObject};
use vma_seekable::{Identity, SeekOptions, Seekable};

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
/// `vma_seekable` (its index found or built as `opts` says).
pub fn open_seekable(url: &str, opts: &SeekOptions) -> Result<RemoteSeekable> {
    let object = Arc::new(RemoteObject::open(url)?);
    let shown = object.display();
    let size = object.size()?;
    let cached = Arc::new(CachedObject::new(object.clone()));
    let seekable =
        vma_seekable::open_source(cached, Identity::new(shown.clone(), size, 0, 0), opts)
            .with_context(|| format!("can't open {shown}"))?;
    Ok(RemoteSeekable { object, seekable })
}
