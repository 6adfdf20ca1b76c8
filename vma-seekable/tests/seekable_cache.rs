//! `vma_seekable`'s cache file (one big zstd frame): a cache a crash
//! left unwritten is rebuilt, the user is told where the cache goes and how
//! big it can get before it is written, the pass never writes more than was
//! checked for, and `remove_index` removes what was written. With
//! the default store ([`IndexStore::Memory`]) nothing at all is left on
//! disk, and a cancelled build removes what it started writing.

mod seekable_common;

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use seekable_common::*;
use vma_format::IndexedReader;
use vma_seekable::{self as seekable, IndexKind, IndexStore, SeekOptions};

/// Options that send a 3 MiB archive through a cache file, and collect the notices.
fn opts(dir: &Path) -> (SeekOptions, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let n = notices.clone();
    let o = {
        let mut o = SeekOptions::default();
        o.store = IndexStore::BesideArchive {
            fallback: Some(dir.join("xdg-cache")),
        };
        o.max_direct_frame = 1 << 20;
        o.notice = Some(Arc::new(move |m: &str| n.lock().unwrap().push(m.into())));
        o
    };
    (o, notices)
}

#[test]
fn a_cache_of_the_right_length_but_unwritten_data_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(dir.path());
    let plain = archive(3, 41);
    let path = write(dir.path(), "z.vma.zst", &zstd_single(&plain));
    let s = seekable::open_seekable(&path, &o).unwrap();
    assert_eq!(s.info.kind, IndexKind::CacheFile);
    let cache = s.info.cache.clone().unwrap();
    drop(s);
    // What a crash before the data reached the disk leaves: the length and
    // the id frame (written first) are right, the frames are zeros.
    let mut c = fs::read(&cache).unwrap();
    let len = c.len();
    c[32..].fill(0);
    assert_eq!(c.len(), len);
    fs::write(&cache, &c).unwrap();
    let s = seekable::open_seekable(&path, &o).unwrap();
    assert!(s.info.rebuilt, "an unwritten cache was trusted");
    assert!(
        s.info
            .notes
            .iter()
            .any(|n| n.contains("is not a zstd frame")),
        "{:?}",
        s.info.notes
    );
    let want = IndexedReader::open(plain.clone()).unwrap();
    assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 8, "zst");
    // And the rebuilt one is trusted again.
    assert!(!seekable::build_index(&path, &o).unwrap().rebuilt);
}

#[test]
fn the_cache_place_and_size_are_announced_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (o, notices) = opts(dir.path());
    let plain = archive(3, 42);
    // No Frame_Content_Size (streamed, as vzdump writes): bounded by the devices.
    let path = write(dir.path(), "u.vma.zst", &zstd_single(&plain));
    let info = seekable::build_index(&path, &o).unwrap();
    let cache = info.cache.unwrap();
    let got = std::mem::take(&mut *notices.lock().unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains(&cache.display().to_string()), "{got:?}");
    assert!(
        got[0].contains("bounded by the devices' total size"),
        "{got:?}"
    );
    assert!(got[0].contains("free there"), "{got:?}");

    // With Frame_Content_Size (what `zstd FILE` writes): the exact size.
    let path = write(
        dir.path(),
        "k.vma.zst",
        &zstd::bulk::compress(&plain, 3).unwrap(),
    );
    seekable::build_index(&path, &o).unwrap();
    let got = std::mem::take(&mut *notices.lock().unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    let mib = format!("{:.1} MiB", plain.len() as f64 / (1 << 20) as f64);
    assert!(
        got[0].contains(&format!("the decompressed archive is {mib}")),
        "{got:?}"
    );

    // A reused index writes nothing and says nothing.
    seekable::build_index(&path, &o).unwrap();
    assert!(notices.lock().unwrap().is_empty());
}

#[test]
fn the_pass_never_writes_more_than_the_devices_allow() {
    // A valid archive followed by copies of its extents: more stream than
    // the header's devices can hold (no correct writer makes this).
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(dir.path());
    let plain = archive(2, 43);
    let h = vma_format::read_header(&mut &plain[..]).unwrap();
    let extents = &plain[h.header_size() as usize..];
    let mut long = plain.clone();
    for _ in 0..8 {
        long.extend_from_slice(extents);
    }
    let path = write(dir.path(), "l.vma.zst", &zstd_single(&long));
    let err = seekable::open_seekable(&path, &o).unwrap_err().to_string();
    assert!(err.contains("longer than"), "{err}");
    // Nothing left behind.
    for e in fs::read_dir(dir.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".vmacache") && !name.contains(".vmaidx"),
            "{name}"
        );
    }
}

#[test]
fn remove_index_removes_sidecar_and_cache_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(dir.path());
    let plain = archive(3, 44);
    let path = write(dir.path(), "r.vma.zst", &zstd_single(&plain));
    let info = seekable::build_index(&path, &o).unwrap();
    let (sc, cache) = (info.sidecar.unwrap(), info.cache.unwrap());
    assert!(sc.is_file() && cache.is_file());
    let removed = seekable::remove_index(&path, &o).unwrap();
    assert_eq!(removed, vec![cache.clone(), sc.clone()]);
    assert!(!sc.exists() && !cache.exists());
    assert!(path.is_file());
    assert!(seekable::remove_index(&path, &o).unwrap().is_empty());

    // In a chosen directory (`IndexStore::Dir`): removed there.
    let side = dir.path().join("side");
    let o = {
        let mut o = o;
        o.store = IndexStore::Dir(side.clone());
        o
    };
    let info = seekable::build_index(&path, &o).unwrap();
    assert!(info.cache.as_ref().unwrap().starts_with(&side));
    assert_eq!(seekable::remove_index(&path, &o).unwrap().len(), 2);
    assert_eq!(fs::read_dir(&side).unwrap().count(), 0);
}

#[test]
fn the_default_store_leaves_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (o, notices) = opts(dir.path());
    let scratch = dir.path().join("scratch");
    let o = {
        let mut o = o;
        // The library's default: nothing kept.
        o.store = SeekOptions::default().store;
        assert_eq!(o.store, IndexStore::Memory);
        o.temp_dir = Some(scratch.clone());
        o
    };
    let plain = archive(3, 45);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let forms = [
        ("n.vma.zst", zstd_single(&plain), IndexKind::CacheFile),
        ("n.vma.gz", gzip(&plain), IndexKind::GzipCheckpoints),
        ("n.vma.lzo", lzop(&plain, false), IndexKind::LzoBlocks),
    ];
    for (name, bytes, kind) in forms {
        let path = write(dir.path(), name, &bytes);
        for round in 0..2 {
            let s = seekable::open_seekable(&path, &o).unwrap();
            assert_eq!(s.info.kind, kind, "{name}");
            assert!(s.info.rebuilt, "{name} round {round}: nothing to reuse");
            assert_eq!((&s.info.sidecar, &s.info.cache), (&None, &None), "{name}");
            let r = IndexedReader::open(s.source).unwrap();
            assert_same_disks(&r, &want, 4, name);
            // While the source is open its cache has no name either.
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "scratch" && !n.starts_with("n.vma."))
                .collect();
            assert!(names.is_empty(), "{name}: {names:?}");
            if scratch.exists() {
                assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "{name}");
            }
        }
        assert!(!dir.path().join("xdg-cache").exists());
    }
    let got = notices.lock().unwrap();
    assert!(
        got.iter().any(|n| n.contains("unnamed seek cache")
            && n.contains(&scratch.display().to_string())),
        "{got:?}"
    );
}

/// Every build that writes files (the cache file of one big zstd frame, in
/// each store; gzip and lzop sidecars), cancelled from the progress
/// callback: `Error::Cancelled`, and no file of the build is left, not even
/// a temporary one.
#[test]
fn a_cancelled_build_stops_and_leaves_no_file() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let plain = archive(6, 47);
    for (name, bytes) in [
        ("c.vma.zst", zstd_single(&plain)),
        ("c.vma.gz", gzip(&plain)),
        ("c.vma.lzo", lzop(&plain, false)),
    ] {
        for store in ["beside", "dir", "memory"] {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), name, &bytes);
            let flag = Arc::new(AtomicBool::new(false));
            let calls = Arc::new(AtomicUsize::new(0));
            let (f, c) = (flag.clone(), calls.clone());
            let o = {
                let (mut o, _) = opts(dir.path());
                o.cache_frame_size = 64 << 10;
                o.threads = 2;
                o.store = match store {
                    "beside" => IndexStore::BesideArchive {
                        fallback: Some(dir.path().join("xdg-cache")),
                    },
                    "dir" => IndexStore::Dir(dir.path().join("side")),
                    _ => IndexStore::Memory,
                };
                o.temp_dir = Some(dir.path().join("tmp"));
                // Cancelled after the first progress report: mid-pass.
                o.progress = Some(Arc::new(move |_, _| {
                    if c.fetch_add(1, Ordering::SeqCst) == 1 {
                        f.store(true, Ordering::SeqCst);
                    }
                }));
                o.cancel = Some(seekable::Cancel::flag(flag.clone()));
                o
            };
            let err = seekable::open_seekable(&path, &o).unwrap_err();
            assert!(
                matches!(err, vma_format::Error::Cancelled),
                "{name} {store}: {err}"
            );
            assert!(flag.load(Ordering::SeqCst));
            // Stopped promptly: far fewer reports than a whole pass makes.
            let n = calls.load(Ordering::SeqCst);
            assert!(
                n <= 4,
                "{name} {store}: {n} progress reports after the cancel"
            );
            let mut left = Vec::new();
            for d in [
                dir.path().to_path_buf(),
                dir.path().join("side"),
                dir.path().join("xdg-cache"),
                dir.path().join("tmp"),
            ] {
                if let Ok(rd) = fs::read_dir(&d) {
                    left.extend(
                        rd.map(|e| e.unwrap().path())
                            .filter(|p| *p != path && !p.is_dir()),
                    );
                }
            }
            assert!(left.is_empty(), "{name} {store}: left {left:?}");
        }
    }
}
