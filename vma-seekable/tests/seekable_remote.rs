//! `IndexStore::Remote`: the sidecar of an archive that is not a local file
//! goes beside it (a `SidecarStore`), or into the local directory when that
//! store refuses; a plain archive gets one too, so that reopening reads no
//! extent header from the archive; a cache file never leaves the host.

mod seekable_common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use seekable_common::*;
use vma_format::{IndexedReader, ReadAt};
use vma_seekable::{
    self as seekable, Beside, Identity, IndexKind, IndexStore, SeekOptions, SidecarStore,
};

/// A sidecar object in memory; `writable: false` refuses every put.
#[derive(Default)]
struct MemStore {
    bytes: Mutex<Option<Vec<u8>>>,
    writable: bool,
    puts: AtomicUsize,
}

impl SidecarStore for MemStore {
    fn name(&self) -> String {
        "mem://bucket/a.vma.vmaidx".into()
    }
    fn get(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.bytes.lock().unwrap().clone())
    }
    fn put(&self, bytes: &[u8]) -> io::Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only bucket",
            ));
        }
        *self.bytes.lock().unwrap() = Some(bytes.to_vec());
        Ok(())
    }
    fn delete(&self) -> io::Result<bool> {
        Ok(self.bytes.lock().unwrap().take().is_some())
    }
}

/// The archive's bytes, counting the reads that reach them (the requests a
/// remote object would get).
struct Counted {
    bytes: Vec<u8>,
    reads: AtomicUsize,
}

impl ReadAt for Counted {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        // A read at the end costs no request (the object's size is known).
        if offset < self.bytes.len() as u64 {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        self.bytes.read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
}

fn remote(store: &Arc<MemStore>, local: &Path) -> SeekOptions {
    let mut o = SeekOptions::default();
    o.store = IndexStore::Remote {
        beside: Beside(store.clone()),
        local: Some(local.to_path_buf()),
    };
    o
}

/// Opens `bytes` as a remote archive would be; the source and how many
/// reads reached the archive, including reading every extent header.
fn open(bytes: &[u8], o: &SeekOptions) -> (seekable::Seekable, usize) {
    let src = Arc::new(Counted {
        bytes: bytes.to_vec(),
        reads: AtomicUsize::new(0),
    });
    let id = Identity::new("s3://bucket/a.vma", bytes.len() as u64, 1_700_000_000, 0);
    let s = seekable::open_source(src.clone(), id, o).unwrap();
    let s = seekable::Seekable {
        source: Box::new(IndexedReaderCheck::check(s.source)),
        ..s
    };
    (s, src.reads.load(Ordering::SeqCst))
}

/// Reads the header and every extent header (what `vma mount` does first).
struct IndexedReaderCheck;

impl IndexedReaderCheck {
    fn check(src: Box<dyn ReadAt>) -> Box<dyn ReadAt> {
        let r = IndexedReader::open(src).unwrap();
        assert!(r.extent_count() > 3);
        Box::new(PassThrough(r))
    }
}

struct PassThrough(IndexedReader<Box<dyn ReadAt>>);

impl ReadAt for PassThrough {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.source().read_at_offset(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        self.0.source().size()
    }
}

#[test]
fn a_plain_archive_keeps_its_extent_headers_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 3);
    let store = Arc::new(MemStore {
        writable: true,
        ..Default::default()
    });
    let o = remote(&store, dir.path());
    let (s, built_reads) = open(&plain, &o);
    assert_eq!(s.info.kind, IndexKind::Plain);
    assert!(s.info.rebuilt);
    assert_eq!(
        s.info.sidecar.as_deref(),
        Some(Path::new("mem://bucket/a.vma.vmaidx"))
    );
    assert!(s.info.frames > 3, "extent headers kept: {}", s.info.frames);
    assert!(store.bytes.lock().unwrap().is_some());
    assert!(built_reads > s.info.frames, "{built_reads} reads to build");

    let (again, reads) = open(&plain, &o);
    assert!(!again.info.rebuilt, "{:?}", again.info.notes);
    // Format detection and the UUID; no extent header.
    assert!(reads <= 2, "{reads} reads with the index");
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    for off in [0u64, 5 << 20, plain.len() as u64 - 100] {
        let n = again.source.read_full_at(off, &mut a).unwrap();
        let m = plain[..].read_full_at(off, &mut b).unwrap();
        assert_eq!(a[..n], b[..m]);
    }
    assert_eq!(
        seekable::remove_index(Path::new("s3://bucket/a.vma"), &o).unwrap(),
        vec![PathBuf::from("mem://bucket/a.vma.vmaidx")]
    );
    assert!(store.bytes.lock().unwrap().is_none());
}

#[test]
fn a_read_only_store_keeps_the_index_locally() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 4);
    let multi = zstd_multi(&plain, 1 << 20);
    let store = Arc::new(MemStore::default());
    let o = remote(&store, dir.path());
    let (s, _) = open(&multi, &o);
    assert_eq!(s.info.kind, IndexKind::ZstdFrames);
    let local = s.info.sidecar.clone().unwrap();
    assert!(local.starts_with(dir.path()), "{local:?}");
    assert!(
        s.info.notes.iter().any(|n| n.contains("read-only bucket")),
        "{:?}",
        s.info.notes
    );
    let (again, _) = open(&multi, &o);
    assert!(!again.info.rebuilt);
    assert_eq!(again.info.sidecar, Some(local));
}

#[test]
fn a_cache_file_and_its_sidecar_stay_local() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 5);
    let single = zstd_single(&plain);
    let store = Arc::new(MemStore {
        writable: true,
        ..Default::default()
    });
    let o = remote(&store, dir.path());
    let (s, _) = open(&single, &o);
    assert_eq!(s.info.kind, IndexKind::CacheFile);
    assert!(s.info.sidecar.as_ref().unwrap().starts_with(dir.path()));
    assert_eq!(store.puts.load(Ordering::SeqCst), 0, "nothing put beside");

    // A cache-file sidecar found beside the archive (another host's) names
    // a file this host does not have: refused, the local one is used.
    let local = std::fs::read(s.info.sidecar.as_ref().unwrap()).unwrap();
    *store.bytes.lock().unwrap() = Some(local);
    let (again, _) = open(&single, &o);
    assert!(!again.info.rebuilt);
    assert!(again.info.sidecar.as_ref().unwrap().starts_with(dir.path()));
    assert!(
        again.info.notes.iter().any(|n| n.contains("must be local")),
        "{:?}",
        again.info.notes
    );
}

#[test]
fn open_existing_never_builds() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 6);
    let multi = zstd_multi(&plain, 1 << 20);
    let store = Arc::new(MemStore {
        writable: true,
        ..Default::default()
    });
    let o = remote(&store, dir.path());
    let id = || Identity::new("s3://bucket/a.vma", multi.len() as u64, 1_700_000_000, 0);
    let src = || -> Arc<dyn ReadAt> { Arc::new(multi.clone()) };
    assert!(seekable::open_existing(src(), id(), &o).unwrap().is_none());
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        0,
        "nothing built, nothing stored"
    );
    seekable::open_source(src(), id(), &o).unwrap();
    let s = seekable::open_existing(src(), id(), &o).unwrap().unwrap();
    assert!(!s.info.rebuilt);
    assert_eq!(s.info.kind, IndexKind::ZstdFrames);
}

#[test]
fn a_streamed_plain_archive_leaves_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 7);
    let store = Arc::new(MemStore {
        writable: true,
        ..Default::default()
    });
    let o = remote(&store, dir.path());
    let id = Identity::new("s3://bucket/a.vma", plain.len() as u64, 1_700_000_000, 0);
    // Cut short: no index.
    let mut ix = seekable::StreamIndexer::new();
    ix.feed(&plain[..plain.len() - 1]);
    assert!(ix.finish(&id, &o).is_none());
    assert_eq!(store.puts.load(Ordering::SeqCst), 0);
    // Whole, in odd pieces: stored, and what an open finds.
    let mut ix = seekable::StreamIndexer::new();
    for piece in plain.chunks(100_003) {
        ix.feed(piece);
    }
    let info = ix.finish(&id, &o).unwrap();
    assert_eq!(
        info.sidecar.as_deref(),
        Some(Path::new("mem://bucket/a.vma.vmaidx"))
    );
    let (s, reads) = open(&plain, &o);
    assert!(!s.info.rebuilt, "{:?}", s.info.notes);
    assert!(reads <= 2, "{reads} reads with the index");
}
