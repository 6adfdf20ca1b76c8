//! `vma mount` / `vma umount`: thin wiring to the `vma-fuse` crate.

use std::path::{Path, PathBuf};
#[cfg(feature = "remote")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "remote")]
use std::sync::Arc;

use anyhow::{bail, Result};

/// Options of `vma mount`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The archive: a plain .vma, or .vma.zst / .vma.gz / .vma.lzo (random
    /// access through a sidecar index, built on first mount); a path, or an
    /// object in storage (s3://bucket/key, http(s)://).
    ///
    /// A compressed archive gets an index `<archive>.vmaidx` next to it (or
    /// in --cache-dir, else ~/.cache/vma-rs/ when that is not writable),
    /// reused by later mounts (for a remote archive: in --cache-dir, else
    /// ~/.cache/vma-rs/). A .vma.zst in one zstd frame (what vzdump
    /// writes) also gets a cache file `<archive>.vmacache`: the whole
    /// decompressed archive, re-compressed as far as spare CPU allows, so
    /// up to the decompressed size. Before writing it, vma says where it
    /// goes and how big it can get, and refuses when that filesystem lacks
    /// the room plus 5 % and 256 MiB. Both files stay after `vma umount`;
    /// `vma index --remove ARCHIVE` deletes them.
    pub archive: PathBuf,
    /// An existing empty directory (see --nonempty), not already a vma mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground until unmounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// FUSE mount options, comma-separated (e.g. allow_other); may be repeated.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Mount even if clusters are missing (they read as zeros).
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Rebuild a compressed archive's sidecar index even if a valid one exists.
    #[arg(long)]
    pub rebuild_index: bool,
    /// Mount over a directory that is not empty (its files are hidden until
    /// `vma umount`); same as -o nonempty.
    #[arg(long)]
    pub nonempty: bool,
    /// Keep the index (.vmaidx) and cache file (.vmacache) of a compressed
    /// archive in DIR instead of next to the archive [env: VMA_CACHE_DIR].
    ///
    /// Later mounts, `vma index` and `vma index --remove` find them there
    /// when given the same DIR.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Options of `vma umount`.
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mountpoint; anything but a `vma mount` is refused.
    pub mountpoint: PathBuf,
}

/// Runs `vma mount`.
pub fn run_mount(a: MountArgs) -> Result<()> {
    if a.archive.as_os_str() == "-" {
        bail!(
            "can't mount '-' (standard input): FUSE reads the archive at random offsets, \
             which needs a seekable file; save the stream to a file first, \
             or restore it with 'vma extract - DIR'"
        );
    }
    let options = a
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
        .map(String::from)
        .collect();
    let opts = vma_fuse::MountOptions {
        foreground: a.foreground,
        options,
        allow_incomplete: a.allow_incomplete,
        rebuild_index: a.rebuild_index,
        nonempty: a.nonempty,
        cache_dir: crate::index::cache_dir(a.cache_dir),
    };
    if let Some(url) = crate::input::remote_url(&a.archive) {
        return mount_remote(url, &a.mountpoint, &opts);
    }
    match vma_fuse::mount(&a.archive, &a.mountpoint, &opts) {
        // A signal stopped the index build, which removed its files: the
        // same line and exit status as every other command.
        Err(vma_fuse::Error::Interrupted) => crate::interrupt::exit_interrupted(),
        r => Ok(r?),
    }
}

/// `vma mount URL MOUNTPOINT`: checks the mountpoint, opens the object
/// (building or reusing its index), then mounts; the object's connection
/// and runtime are dropped just before the daemon forks, and the daemon
/// connects again on its first read.
fn mount_remote(url: &str, mountpoint: &Path, opts: &vma_fuse::MountOptions) -> Result<()> {
    let name = PathBuf::from(shown(url));
    let mounter = vma_fuse::Mounter::new(&name, mountpoint, opts)?;
    let RemoteFs { fs, suspend } = open_remote(url, opts)?;
    Ok(mounter.mount(fs, suspend)?)
}

/// A remote archive opened as a filesystem, and what drops its connection
/// and runtime (joining their threads) so that the process can fork; the
/// next read connects again.
pub(crate) struct RemoteFs {
    /// The filesystem (named by the URL's display form).
    pub fs: vma_fuse::VmaFs,
    /// Run just before forking a daemon.
    pub suspend: Box<dyn FnOnce()>,
}

/// Opens the archive at `url` for `vma mount` and `vma serve`: its index
/// kept in `opts.cache_dir` (else the user's cache directory), SIGINT,
/// SIGTERM and SIGHUP during the open cancel it (`vma: interrupted`, exit
/// status 130), as for a local archive.
#[cfg(feature = "remote")]
pub(crate) fn open_remote(url: &str, opts: &vma_fuse::MountOptions) -> Result<RemoteFs> {
    let opened = vma_fuse::interruptible(&opts.seek_options(), |seek| {
        let mut r = crate::remote::open_seekable(url, seek, opts.cache_dir.clone())?;
        let name = PathBuf::from(r.object.display());
        let scanning = Arc::new(AtomicBool::new(true));
        r.seekable.source = Box::new(StopScan {
            inner: r.seekable.source,
            cancel: seek.cancel.clone(),
            scanning: scanning.clone(),
        });
        let fs = vma_fuse::VmaFs::from_seekable(name, r.seekable, opts.allow_incomplete);
        scanning.store(false, Ordering::Relaxed);
        anyhow::Ok((fs?, r.object))
    });
    let (mut fs, object) = match opened {
        Ok(o) => o,
        Err(e) if matches!(e.downcast_ref(), Some(vma_fuse::Error::Interrupted)) => {
            crate::interrupt::exit_interrupted()
        }
        Err(e) => return Err(e),
    };
    // Re-reading each extent header on every read (what catches a local
    // file changed while mounted) would add a request per read here, and
    // break the sequential runs the read-ahead grows its windows on; the
    // object is pinned by its ETag (every request carries If-Match), so a
    // replaced object already fails every read.
    fs.set_verify_reads(false);
    Ok(RemoteFs {
        fs,
        suspend: Box::new(move || object.suspend()),
    })
}

/// The archive's source while [`vma_fuse::VmaFs::from_seekable`] scans its
/// extent headers (one ranged GET each: thousands for a large archive, which
/// no index build's cancel covers): a read fails once the open is
/// cancelled, so Ctrl-C does not wait for the scan to end. Once `scanning`
/// is cleared, reads go straight through.
#[cfg(feature = "remote")]
struct StopScan {
    inner: Box<dyn vma_format::ReadAt>,
    cancel: Option<vma_seekable::Cancel>,
    scanning: Arc<AtomicBool>,
}

#[cfg(feature = "remote")]
impl vma_format::ReadAt for StopScan {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.scanning.load(Ordering::Relaxed)
            && self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
        {
            // Not ErrorKind::Interrupted: read_full_at would retry that.
            return Err(std::io::Error::other("interrupted"));
        }
        self.inner.read_at_offset(offset, buf)
    }

    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

#[cfg(not(feature = "remote"))]
pub(crate) fn open_remote(url: &str, _: &vma_fuse::MountOptions) -> Result<RemoteFs> {
    bail!("can't open {url} - this vma was built without remote archive support (feature `remote`)")
}

/// The URL for messages and the fsname (no userinfo).
pub(crate) fn shown(url: &str) -> String {
    #[cfg(feature = "remote")]
    return vma_remote::display_url(url);
    #[cfg(not(feature = "remote"))]
    url.to_string()
}

/// Runs `vma umount`: vma-fuse refuses a directory that is not mounted or
/// not a vma mount, with a message of its own.
pub fn run_umount(a: UmountArgs) -> Result<()> {
    vma_fuse::umount(&a.mountpoint)?;
    Ok(())
}
