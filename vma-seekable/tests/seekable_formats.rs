//! `vma_seekable`: each compressed form reads like the plain archive,
//! and the sidecar index is created, reused, and rebuilt when it must be.

mod seekable_common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seekable_common::deflate_bits::Bits;
use seekable_common::*;
use vma_format::{Compression, IndexedReader};
use vma_seekable::{self as seekable, IndexKind, IndexStore, SeekOptions};

fn opts(dir: &Path) -> SeekOptions {
    let mut o = SeekOptions::default();
    o.store = IndexStore::BesideArchive {
        fallback: Some(dir.join("xdg-cache")),
    };
    o
}

#[test]
fn every_form_reads_like_the_plain_archive() {
    let dir = tempfile::tempdir().unwrap();
    // ≥ 20 MiB so that the multi-frame form has three 8 MiB frames and the
    // single frame is larger than max_direct_frame (16 MiB).
    let plain = archive(32, 7);
    assert!(plain.len() > 20 << 20);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let plain_path = write(dir.path(), "p.vma", &plain);
    let s = seekable::open_seekable(&plain_path, &opts(dir.path())).unwrap();
    assert_eq!(s.info.kind, IndexKind::Plain);
    assert!(s.info.sidecar.is_none());

    for (name, bytes) in forms(&plain) {
        let path = write(dir.path(), &format!("a.{name}"), &bytes);
        let s = seekable::open_seekable(&path, &opts(dir.path())).unwrap();
        let (kind, comp) = match name {
            "zstd-single" => (IndexKind::CacheFile, Compression::Zstd),
            "zstd-multi" => (IndexKind::ZstdFrames, Compression::Zstd),
            "gzip" => (IndexKind::GzipCheckpoints, Compression::Gzip),
            _ => (IndexKind::LzoBlocks, Compression::Lzo),
        };
        assert_eq!((s.info.kind, s.compression), (kind, comp), "{name}");
        assert!(s.info.rebuilt, "{name}");
        assert_eq!(s.info.decompressed_bytes, plain.len() as u64, "{name}");
        assert_eq!(s.source.size().unwrap(), plain.len() as u64, "{name}");
        if name == "zstd-multi" {
            assert_eq!(s.info.frames, 3, "{name}");
        }
        let sidecar = s.info.sidecar.clone().unwrap();
        assert_eq!(
            sidecar,
            dir.path().join(format!("a.{name}.vmaidx")),
            "{name}"
        );
        if kind == IndexKind::CacheFile {
            let cache = s.info.cache.clone().unwrap();
            assert_eq!(fs::metadata(&cache).unwrap().len(), s.info.cache_bytes);
            // The cache is itself a valid zstd file of the stream.
            let decoded = zstd::decode_all(&fs::read(&cache).unwrap()[..]).unwrap();
            assert!(
                decoded == plain,
                "{name}: cache does not decode to the stream"
            );
        }
        let got = IndexedReader::open(s.source).unwrap();
        assert_same_disks(&got, &want, 99, name);

        // Second open: loaded, not rebuilt; the sidecar is untouched.
        let mtime = fs::metadata(&sidecar).unwrap().modified().unwrap();
        let s2 = seekable::open_seekable(&path, &opts(dir.path())).unwrap();
        assert!(!s2.info.rebuilt, "{name}: {:?}", s2.info.notes);
        assert_eq!(s2.info.sidecar.as_deref(), Some(&*sidecar));
        assert_eq!(fs::metadata(&sidecar).unwrap().modified().unwrap(), mtime);
        let got = IndexedReader::open(s2.source).unwrap();
        assert_same_disks(&got, &want, 5, name);
    }
}

#[test]
fn lzop_with_crc32_and_stored_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(4, 3);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let path = write(dir.path(), "c.vma.lzo", &lzop(&plain, true));
    let (c, src) = seekable::open(&path, &opts(dir.path())).unwrap();
    assert_eq!(c, Compression::Lzo);
    assert_same_disks(&IndexedReader::open(src).unwrap(), &want, 1, "lzo+crc");
}

#[test]
fn parallel_reads_agree() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(12, 11);
    let want = Arc::new(IndexedReader::open(plain.clone()).unwrap());
    let path = write(dir.path(), "m.vma.zst", &zstd_multi(&plain, 1 << 20));
    let o = {
        let mut o = opts(dir.path());
        o.memory = 2 << 20; // two frames: threads keep evicting each other's frames
        o
    };
    let got = Arc::new(IndexedReader::open(seekable::open(&path, &o).unwrap().1).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (got, want) = (Arc::clone(&got), Arc::clone(&want));
            s.spawn(move || assert_same_disks(&*got, &*want, t + 1, "threads"));
        }
    });
}

/// Replaces the file's content, keeping its mtime: only size and UUID
/// can then tell that the archive changed.
fn rewrite_keeping_mtime(path: &Path, bytes: &[u8]) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    fs::write(path, bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn touch(path: &Path, by: Duration) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let m = fs::metadata(path).unwrap().modified().unwrap();
    f.set_modified(m + by).unwrap();
}

fn rebuilt_because(path: &Path, o: &SeekOptions, why: &str) -> seekable::Seekable {
    let s = seekable::open_seekable(path, o).unwrap();
    assert!(s.info.rebuilt, "expected a rebuild ({why})");
    assert!(
        s.info.notes.iter().any(|n| n.contains(why)),
        "notes {:?} should say {why}",
        s.info.notes
    );
    s
}

#[test]
fn stale_and_corrupt_sidecars_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let plain = archive(3, 21);
    let other = archive(3, 22); // other UUID, data and size
    assert_ne!(plain.len(), other.len());
    for (name, make) in [
        (
            "x.vma.lzo",
            (|p: &[u8]| lzop(p, false)) as fn(&[u8]) -> Vec<u8>,
        ),
        ("x.vma.gz", |p: &[u8]| gzip(p)),
        ("x.vma.zst", |p: &[u8]| zstd_multi(p, 1 << 20)),
    ] {
        let path = write(dir.path(), name, &make(&plain));
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert!(s.info.rebuilt);
        let sidecar = s.info.sidecar.clone().unwrap();
        drop(s);
        assert!(!seekable::open_seekable(&path, &o).unwrap().info.rebuilt);

        // mtime touched
        touch(&path, Duration::from_secs(3));
        rebuilt_because(&path, &o, "mtime changed");
        assert!(!seekable::open_seekable(&path, &o).unwrap().info.rebuilt);

        // rewritten with other content, mtime kept: the size tells (or,
        // should the compressed sizes happen to agree, the UUID).
        let old_len = fs::metadata(&path).unwrap().len();
        let bytes = make(&other);
        rewrite_keeping_mtime(&path, &bytes);
        let why = if bytes.len() as u64 == old_len {
            "UUID changed"
        } else {
            "size changed"
        };
        rebuilt_because(&path, &o, why);
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert!(!s.info.rebuilt);
        let want = IndexedReader::open(other.clone()).unwrap();
        assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 4, name);

        // a flipped byte in the sidecar
        let mut sc = fs::read(&sidecar).unwrap();
        let i = sc.len() / 2;
        sc[i] ^= 1;
        fs::write(&sidecar, &sc).unwrap();
        rebuilt_because(&path, &o, "checksum mismatch");

        // an empty (e.g. interrupted) sidecar
        fs::write(&sidecar, b"").unwrap();
        rebuilt_because(&path, &o, "too short");
        assert!(!seekable::open_seekable(&path, &o).unwrap().info.rebuilt);
    }
}

#[test]
fn same_size_and_mtime_but_another_uuid_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    // Same data, other UUID; stored gzip keeps the file size identical.
    let a = gzip_level(&archive_with_uuid(3, 1, 1), flate2::Compression::none());
    let b = gzip_level(&archive_with_uuid(3, 1, 2), flate2::Compression::none());
    assert_eq!(a.len(), b.len());
    let path = write(dir.path(), "u.vma.gz", &a);
    assert!(seekable::open_seekable(&path, &o).unwrap().info.rebuilt);
    rewrite_keeping_mtime(&path, &b);
    let s = rebuilt_because(&path, &o, "UUID changed");
    let r = IndexedReader::open(s.source).unwrap();
    assert_eq!(
        r.header().uuid,
        IndexedReader::open(archive_with_uuid(3, 1, 2))
            .unwrap()
            .header()
            .uuid
    );
}

#[test]
fn a_cache_file_that_does_not_match_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let o = {
        let mut o = opts(dir.path());
        o.max_direct_frame = 1 << 20; // the single frame goes through a cache file
        o
    };
    let plain = archive(3, 5);
    let path = write(dir.path(), "s.vma.zst", &zstd_single(&plain));
    let s = seekable::open_seekable(&path, &o).unwrap();
    let cache = s.info.cache.clone().unwrap();
    drop(s);
    // Truncated cache file.
    let c = fs::read(&cache).unwrap();
    fs::write(&cache, &c[..c.len() - 1]).unwrap();
    rebuilt_because(&path, &o, "does not match");
    // Missing cache file.
    fs::remove_file(&cache).unwrap();
    let s = rebuilt_because(&path, &o, "cache file");
    let want = IndexedReader::open(plain.clone()).unwrap();
    assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 8, "zst");
}

#[test]
fn falls_back_to_the_cache_dir_when_the_archive_dir_refuses() {
    // Root writes into read-only directories, so refuse differently: a
    // directory sits where `<archive>.vmaidx` would go.
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let plain = archive(3, 9);
    let want = IndexedReader::open(plain.clone()).unwrap();
    for (name, bytes) in [
        ("f.vma.lzo", lzop(&plain, false)),
        ("f.vma.zst", zstd_single(&plain)),
    ] {
        let path = write(dir.path(), name, &bytes);
        fs::create_dir(dir.path().join(format!("{name}.vmaidx"))).unwrap();
        let o = {
            let mut o = o.clone();
            o.max_direct_frame = 1 << 20; // the single frame goes through a cache file
            o
        };
        let s = seekable::open_seekable(&path, &o).unwrap();
        let sidecar = s.info.sidecar.clone().unwrap();
        assert!(
            sidecar.starts_with(dir.path().join("xdg-cache")),
            "{sidecar:?}"
        );
        if let Some(c) = &s.info.cache {
            assert!(c.starts_with(dir.path().join("xdg-cache")), "{c:?}");
        }
        assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 2, name);
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert!(!s.info.rebuilt, "{:?}", s.info.notes);
        assert_eq!(s.info.sidecar, Some(sidecar));
    }
}

#[test]
fn sidecar_dir_option_keeps_everything_there() {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    fs::create_dir(&side).unwrap();
    let plain = archive(3, 13);
    for (name, bytes) in [
        ("d.vma.gz", gzip(&plain)),
        ("d.vma.zst", zstd_single(&plain)),
    ] {
        let path = write(dir.path(), name, &bytes);
        let o = {
            let mut o = opts(dir.path());
            o.store = IndexStore::Dir(side.clone());
            o.max_direct_frame = 1 << 20; // zstd: a cache file
            o
        };
        let info = seekable::build_index(&path, &o).unwrap();
        assert!(info.rebuilt);
        assert!(info.sidecar.as_ref().unwrap().starts_with(&side));
        if name.ends_with(".zst") {
            assert!(info.cache.as_ref().unwrap().starts_with(&side));
        } else {
            assert_eq!(info.cache, None);
        }
        assert!(!dir.path().join(format!("{name}.vmaidx")).exists());
        assert!(!dir.path().join("xdg-cache").exists());
        assert!(!seekable::build_index(&path, &o).unwrap().rebuilt);
        // `rebuild` forces it.
        let forced = seekable::build_index(&path, &{
            let mut o = o;
            o.rebuild = true;
            o
        })
        .unwrap();
        assert!(forced.rebuilt);
    }
}

#[test]
fn damaged_compressed_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let plain = archive(3, 17);
    // Both carry checksums of the decoded data (zstd: content checksum).
    for (name, bytes) in [
        ("e.vma.lzo", lzop(&plain, false)),
        ("e.vma.zst", zstd_multi_checked(&plain, 1 << 20)),
    ] {
        let path = write(dir.path(), name, &bytes);
        let s = seekable::open_seekable(&path, &o).unwrap();
        let r = IndexedReader::open(s.source).unwrap();
        // Damage the archive after indexing, keeping size and mtime.
        let mut b = bytes.clone();
        let at = b.len() * 2 / 3;
        for x in &mut b[at..at + 64] {
            *x ^= 0x5A;
        }
        rewrite_keeping_mtime(&path, &b);
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert!(!s.info.rebuilt, "size, mtime and UUID still match");
        let r2 = IndexedReader::open(s.source).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut errors = 0;
        for dev in &r.header().devices {
            let mut off = 0;
            while off < dev.size {
                match r2.read(dev.id, off, &mut buf) {
                    Ok(n) => off += n as u64,
                    Err(e) => {
                        errors += 1;
                        let msg = e.to_string();
                        assert!(msg.contains(name), "{msg}");
                        off += 1 << 20;
                    }
                }
            }
        }
        assert!(errors > 0, "{name}: damage went unnoticed");
    }
}

#[test]
fn not_a_vma_inside_the_compression() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "n.zst", &zstd_single(&[7u8; 100_000]));
    let err = seekable::open(&path, &opts(dir.path())).err().unwrap();
    assert!(matches!(err, vma_format::Error::BadMagic { .. }), "{err}");
}

#[test]
fn damage_found_while_indexing_big_frames_is_reported() {
    // With frames of several MiB every frame is decoded (on several threads)
    // while indexing: damage anywhere must stop the build with an error.
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(24, 31);
    let mut bytes = zstd_multi_checked(&plain, 3 << 20);
    let at = bytes.len() / 2;
    for x in &mut bytes[at..at + 64] {
        *x ^= 0xA5;
    }
    let path = write(dir.path(), "g.vma.zst", &bytes);
    for threads in [1, 3] {
        let o = {
            let mut o = opts(dir.path());
            o.threads = threads;
            o
        };
        let err = seekable::open(&path, &o).err().expect("damage detected");
        assert!(err.to_string().contains("g.vma.zst"), "{err}");
    }
    assert!(!dir.path().join("g.vma.zst.vmaidx").exists());
}

#[test]
fn reopening_decodes_no_frame_for_the_index() {
    // After indexing, damage every frame but the first (which the UUID check
    // decodes) keeping size and mtime: reopening and IndexedReader::open still
    // work — the header and extent headers come from the sidecar — while
    // reading disk data reports the damage.
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let plain = archive(6, 41);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let frame = 1 << 20;
    let bytes = zstd_multi_checked(&plain, frame);
    let path = write(dir.path(), "h.vma.zst", &bytes);
    let s = seekable::open_seekable(&path, &o).unwrap();
    assert_eq!(s.info.frames, plain.len().div_ceil(frame));
    drop(s);
    let mut damaged = Vec::new();
    for (k, c) in plain.chunks(frame).enumerate() {
        let mut z = zstd_multi_checked(c, frame);
        if k > 0 {
            let mid = z.len() / 2;
            z[mid] ^= 0xFF;
        }
        damaged.extend_from_slice(&z);
    }
    assert_eq!(damaged.len(), bytes.len());
    rewrite_keeping_mtime(&path, &damaged);
    let s = seekable::open_seekable(&path, &o).unwrap();
    assert!(!s.info.rebuilt);
    let r = IndexedReader::open(s.source).unwrap();
    assert_eq!(r.header(), want.header());
    let dev = &want.header().devices[0];
    let mut buf = vec![0u8; 65536];
    let errors = (0..dev.size / 65536)
        .filter(|c| r.read(dev.id, c * 65536, &mut buf).is_err())
        .count();
    assert!(errors > 0);
}

#[test]
fn progress_reaches_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(3, 43);
    for (name, bytes) in [
        ("p.vma.gz", gzip(&plain)),
        ("p.vma.zst", zstd_multi(&plain, 4 << 20)),
    ] {
        let path = write(dir.path(), name, &bytes);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let o = {
            let mut o = opts(dir.path());
            o.progress = Some(Arc::new(move |done, total| {
                s2.lock().unwrap().push((done, total))
            }));
            o
        };
        seekable::build_index(&path, &o).unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "{name}");
        assert!(
            seen.iter().all(|&(d, t)| d <= t && t == bytes.len() as u64),
            "{name}"
        );
        assert_eq!(seen.last().unwrap().0, bytes.len() as u64, "{name}");
    }
}

#[test]
fn a_damaged_gzip_fails_the_index_build_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(3, 47);
    let mut bytes = gzip(&plain);
    let n = bytes.len();
    bytes[n - 6] ^= 1; // the CRC-32 trailer
    let path = write(dir.path(), "k.vma.gz", &bytes);
    let err = seekable::open(&path, &opts(dir.path()))
        .err()
        .expect("damage detected");
    assert!(err.to_string().starts_with("gzip stream corrupt"), "{err}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "k.vma.gz")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `tool args` as a filter: `input` on stdin, stdout returned.
fn filter(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} (tests/run-all.sh installs it): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input).unwrap());
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "{tool} {args:?}");
    out.stdout
}

/// gzip as the tools write it: `gzip`, `pigz --rsyncable` (byte-aligned
/// flush points), and two members (`cat a.gz b.gz`) of one VMA cut in two.
fn gzip_tool_forms(plain: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let cut = plain.len() * 2 / 5 + 12345;
    let mut two = filter("gzip", &["-c", "-6"], &plain[..cut]);
    two.extend_from_slice(&filter("gzip", &["-c", "-1"], &plain[cut..]));
    vec![
        ("gzip", filter("gzip", &["-c", "-6"], plain)),
        (
            "pigz-rsyncable",
            filter("pigz", &["-c", "--rsyncable", "-p", "2"], plain),
        ),
        ("two-members", two),
    ]
}

/// Every file under `dir` whose name ends with `ext`.
fn files_ending(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(files_ending(&p, ext));
        } else if p.to_string_lossy().ends_with(ext) {
            v.push(p);
        }
    }
    v
}

/// Random reads of the decompressed stream (short ones, and long ones that
/// cross checkpoints) equal the plain bytes.
fn assert_random_reads(src: &dyn vma_format::ReadAt, plain: &[u8], seed: u64, what: &str) {
    assert_eq!(src.size().unwrap(), plain.len() as u64, "{what}");
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 3 << 20];
    for k in 0..400 {
        let off = rng.below(plain.len() as u64) as usize;
        let len = match k % 4 {
            0 => 4096,
            1 => 1 + rng.below(512) as usize,
            2 => 1 + rng.below(200_000) as usize,
            _ => (1 << 20) + rng.below(2 << 20) as usize, // crosses a 1 MiB span
        };
        let n = src.read_at_offset(off as u64, &mut buf[..len]).unwrap();
        let end = (off + len).min(plain.len());
        assert_eq!(n, end - off, "{what}: {off}+{len}");
        assert!(
            buf[..n] == plain[off..end],
            "{what}: differs at {off}+{len}"
        );
    }
}

#[test]
fn gzip_from_the_tools_reads_randomly_through_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(12, 51);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let o = {
        let mut o = opts(dir.path());
        o.gzip_span = 1 << 20;
        o.memory = 3 << 20; // few spans kept: reads keep decoding from checkpoints
        o
    };
    for (name, bytes) in gzip_tool_forms(&plain) {
        let path = write(dir.path(), &format!("t.{name}.vma.gz"), &bytes);
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert_eq!(s.compression, Compression::Gzip, "{name}");
        assert_eq!(s.info.kind, IndexKind::GzipCheckpoints, "{name}");
        assert!(s.info.rebuilt, "{name}");
        assert_eq!(s.info.decompressed_bytes, plain.len() as u64, "{name}");
        // 1 MiB spans (at least), and a member start is one more.
        let min = plain.len() >> 20;
        assert!(
            (min / 2..=min + 2).contains(&s.info.frames),
            "{name}: {} spans",
            s.info.frames
        );
        assert_eq!(
            (s.info.cache.clone(), s.info.cache_bytes),
            (None, 0),
            "{name}"
        );
        let sidecar = s.info.sidecar.clone().unwrap();
        // The windows are the bulk of the sidecar: at most 32 KiB per span.
        assert!(
            s.info.sidecar_bytes < (s.info.frames as u64 + 4) * (33 << 10) + (64 << 10),
            "{name}: sidecar {} bytes",
            s.info.sidecar_bytes
        );
        assert_random_reads(&*s.source, &plain, 3, name);
        let got = IndexedReader::open(s.source).unwrap();
        assert_same_disks(&got, &want, 17, name);

        // Reopened: the sidecar is used as it is.
        let mtime = fs::metadata(&sidecar).unwrap().modified().unwrap();
        let s = seekable::open_seekable(&path, &o).unwrap();
        assert!(!s.info.rebuilt, "{name}: {:?}", s.info.notes);
        assert_eq!(fs::metadata(&sidecar).unwrap().modified().unwrap(), mtime);
        assert_random_reads(&*s.source, &plain, 4, name);

        // Stale (touched): rebuilt.
        touch(&path, Duration::from_secs(5));
        rebuilt_because(&path, &o, "mtime changed");
        assert!(!seekable::open_seekable(&path, &o).unwrap().info.rebuilt);

        // A flipped byte anywhere in the sidecar (here: in the windows, at
        // the end, where nothing but the checksum can tell): rebuilt.
        let mut sc = fs::read(&sidecar).unwrap();
        let i = sc.len() - 100;
        sc[i] ^= 0x20;
        fs::write(&sidecar, &sc).unwrap();
        let s = rebuilt_because(&path, &o, "checksum mismatch");
        assert_random_reads(&*s.source, &plain, 5, name);
    }
    // gzip never writes a cache file.
    assert_eq!(
        files_ending(dir.path(), ".vmacache"),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn reopening_a_gzip_decodes_nothing_for_the_index() {
    // After indexing, damage the archive beyond its first span keeping size
    // and mtime: reopening and IndexedReader::open still work (header and
    // extent headers come from the sidecar), reading the data reports the
    // damage (inflate error or the span's CRC-32).
    let dir = tempfile::tempdir().unwrap();
    let o = {
        let mut o = opts(dir.path());
        o.gzip_span = 1 << 20;
        o
    };
    let plain = archive(8, 53);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let bytes = gzip(&plain);
    let path = write(dir.path(), "r.vma.gz", &bytes);
    assert!(seekable::open_seekable(&path, &o).unwrap().info.rebuilt);
    let mut damaged = bytes.clone();
    for at in (bytes.len() / 4..bytes.len() - 8).step_by(50_000) {
        damaged[at] ^= 0x5A;
    }
    rewrite_keeping_mtime(&path, &damaged);
    let s = seekable::open_seekable(&path, &o).unwrap();
    assert!(!s.info.rebuilt);
    let r = IndexedReader::open(s.source).unwrap();
    assert_eq!(r.header(), want.header());
    let mut buf = vec![0u8; 1 << 20];
    let mut errors = 0;
    for dev in &want.header().devices {
        let mut off = 0;
        while off < dev.size {
            match r.read(dev.id, off, &mut buf) {
                Ok(n) => off += n as u64,
                Err(e) => {
                    errors += 1;
                    assert!(e.to_string().contains("r.vma.gz"), "{e}");
                    off += 1 << 20;
                }
            }
        }
    }
    assert!(errors > 0, "damage went unnoticed");
}

#[test]
fn a_version_1_sidecar_is_rebuilt() {
    // Sidecars of the previous format (gzip through a cache file) are never
    // trusted: the version is checked before anything else is read.
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let plain = archive(3, 55);
    let path = write(dir.path(), "v.vma.gz", &gzip(&plain));
    let sidecar = seekable::open_seekable(&path, &o)
        .unwrap()
        .info
        .sidecar
        .unwrap();
    let mut sc = fs::read(&sidecar).unwrap();
    sc[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = sc.len() - 4;
    let crc = crc32fast::hash(&sc[..n]);
    sc[n..].copy_from_slice(&crc.to_le_bytes());
    fs::write(&sidecar, &sc).unwrap();
    let s = rebuilt_because(&path, &o, "version 1");
    let want = IndexedReader::open(plain).unwrap();
    assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 6, "v1");
}

#[test]
fn gzip_zero_padding_is_ignored_and_trailing_garbage_refused_by_both_paths() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(3, 53);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let gz = gzip(&plain);
    let end = gz.len();
    // The streaming path (`vma extract`) and the checkpoint pass (`vma mount`).
    let stream = |bytes: &[u8]| {
        let (c, mut r) = vma_format::decompressor(bytes).unwrap();
        assert_eq!(c, Compression::Gzip);
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    };
    let mut padded = gz.clone();
    padded.resize(end + 4096, 0);
    assert!(stream(&padded).unwrap() == plain, "streamed");
    let path = write(dir.path(), "pad.vma.gz", &padded);
    let (_, src) = seekable::open(&path, &opts(dir.path())).unwrap();
    assert_same_disks(&IndexedReader::open(src).unwrap(), &want, 3, "padded");

    let mut junk = padded.clone();
    junk[end + 100] = b'x';
    let at = format!(
        "compressed byte offset {}: trailing garbage after the last gzip member (which ends at byte {end})",
        end + 100
    );
    let e = stream(&junk).unwrap_err().to_string();
    assert!(e.contains(&at), "streamed: {e}");
    let path = write(dir.path(), "junk.vma.gz", &junk);
    let e = seekable::open(&path, &opts(dir.path()))
        .err()
        .expect("garbage accepted")
        .to_string();
    assert!(e.contains(&at), "indexed: {e}");
}

/// `plain` as one gzip member of a single fixed-Huffman deflate block,
/// whatever its length: literals, and runs of a byte as back-references at
/// distance 1. No real compressor ends a block this late (gzip: within
/// 8.1 MiB); the format allows it, so a crafted file may.
fn gzip_one_block(plain: &[u8]) -> Vec<u8> {
    const BASE: [u32; 28] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227,
    ];
    let mut b = Bits::fixed_block();
    let mut i = 0;
    while i < plain.len() {
        let run = if i == 0 {
            0
        } else {
            plain[i..]
                .iter()
                .take(258)
                .take_while(|&&x| x == plain[i - 1])
                .count()
        };
        if run < 3 {
            b.sym(u32::from(plain[i]));
            i += 1;
            continue;
        }
        let len = run as u32;
        if len == 258 {
            b.sym(285);
        } else {
            let k = BASE.iter().rposition(|&x| x <= len).unwrap();
            let extra = match k {
                0..=7 => 0,
                _ => (k as u32 - 4) / 4,
            };
            b.sym(257 + k as u32);
            b.put(len - BASE[k], extra);
        }
        b.code(0, 5); // distance 1
        i += run;
    }
    b.finish(plain)
}

/// A 40 MiB span: read in pieces of `GZIP_PIECE` (16 MiB), sequentially
/// (resuming) and at random (from the checkpoint). The memory bound itself is
/// checked by the unit tests of `seekable::gzip`.
#[test]
fn a_gzip_of_one_huge_deflate_block_reads_like_the_plain_archive() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(40, 59);
    let want = IndexedReader::open(plain.clone()).unwrap();
    let gz = gzip_one_block(&plain);
    let path = write(dir.path(), "huge.vma.gz", &gz);
    // flate2 agrees that it is a valid gzip of the archive.
    let mut check = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut check).unwrap();
    assert!(check == plain);
    let s = seekable::open_seekable(&path, &opts(dir.path())).unwrap();
    assert_eq!(s.info.kind, IndexKind::GzipCheckpoints);
    assert_eq!(s.info.frames, 1, "one block, one span");
    let got = IndexedReader::open(s.source).unwrap();
    assert_same_disks(&got, &want, 61, "one block");
}

/// `open_source`: any `ReadAt` (here bytes in memory, as a remote range
/// reader would be) opens like a file. In memory by default (nothing
/// written, not even for the one-frame zstd's cache beyond an unlinked
/// temporary file); with a directory store, the sidecar is keyed by the
/// identity given: reused for the same one, rebuilt when its time changes.
#[test]
fn any_read_at_source_opens_like_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = archive(3, 23);
    let want = IndexedReader::open(plain.clone()).unwrap();
    for (name, bytes) in forms(&plain) {
        let len = bytes.len() as u64;
        let src: Arc<dyn vma_format::ReadAt> = Arc::new(bytes);
        let id = seekable::Identity::new(format!("s3://bucket/a.{name}"), len, 1_700_000_000, 5);
        let mut o = SeekOptions::default();
        o.max_direct_frame = 1 << 20; // the single frame goes through a cache file
        o.temp_dir = Some(dir.path().join("tmp"));
        let s = seekable::open_source(src.clone(), id.clone(), &o).unwrap();
        assert!(s.info.rebuilt && s.info.sidecar.is_none(), "{name}");
        assert_eq!(s.info.archive_bytes, len, "{name}");
        assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 3, name);

        let side = dir.path().join(format!("side-{name}"));
        o.store = IndexStore::Dir(side.clone());
        let s = seekable::open_source(src.clone(), id.clone(), &o).unwrap();
        let sidecar = s.info.sidecar.clone().unwrap();
        assert!(sidecar.starts_with(&side), "{name}: {sidecar:?}");
        assert!(sidecar
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("a.{name}-")));
        let s = seekable::open_source(src.clone(), id.clone(), &o).unwrap();
        assert!(!s.info.rebuilt, "{name}: {:?}", s.info.notes);
        assert_same_disks(&IndexedReader::open(s.source).unwrap(), &want, 4, name);
        let newer = seekable::Identity::new(id.name.clone(), len, id.mtime + 1, 0);
        let s = seekable::open_source(src, newer, &o).unwrap();
        assert!(s.info.rebuilt, "{name}");
        assert!(
            s.info
                .notes
                .iter()
                .any(|n| n.contains("stale: archive mtime changed")),
            "{name}: {:?}",
            s.info.notes
        );
    }
    // Only the chosen directories were written to, and the temporary
    // directory holds nothing once the sources are gone.
    let tmp: Vec<_> = fs::read_dir(dir.path().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "{tmp:?}");
}
