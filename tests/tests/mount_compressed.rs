//! Mounting compressed archives (random access through `vma_seekable`):
//! zstd in one frame (what `zstd` and vzdump write), zstd as
//! `vma create --compress zstd` writes it (1 MiB frames), gzip, and lzop as
//! `vma create --compress lzo` writes it. For each: every file of the mount
//! equals the plain archive's extracted file (sha256) and random ranges
//! match; the sidecar index is written next to the archive and reused by the
//! next mount (mtime unchanged, `vma index --json` says not rebuilt); an
//! archive replaced by different content gets a new index and correct data;
//! a cut stream fails `vma mount` before detaching and leaves no index or
//! cache file behind. Also `vma index` on its own. Needs root, /dev/fuse and fusermount3.
//!
//! Every mount is owned by a guard that unmounts on drop (`MountDir` for the
//! CLI's detached daemon, `vma_fuse::MountHandle` in-process), so a failing
//! test leaves nothing mounted.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;
use vma_fuse::{MountOptions, VmaFs};
use vma_tests::{sha256_hex, vma_bin, TestRng};

/// Runs `vma ARGS`; panics with its stderr unless it succeeds.
fn vma_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = Command::new(vma_bin!())
        .args(args)
        .output()
        .expect("run vma");
    assert!(
        out.status.success(),
        "vma {:?}: {}\n{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

use vma_tests::{is_mounted, MountDir};

/// Disk images, the plain archive made from them and its extracted files.
struct Source {
    dir: TempDir,
    disks: Vec<PathBuf>,
    plain: PathBuf,
    /// Mount file name (`<devname>.raw`, config name) -> extracted bytes.
    expected: BTreeMap<String, Vec<u8>>,
}

/// A disk of `size` bytes: zero clusters (holes), random clusters, text-like
/// clusters and clusters with a few random 4 KiB blocks.
fn write_disk(path: &Path, size: u64, rng: &mut TestRng) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(65536) as usize;
        buf.fill(0);
        match rng.below(10) {
            0..=1 => {
                at += n as u64;
                continue;
            }
            2..=5 => rng.fill(&mut buf[..n]),
            6..=8 => {
                let words: [&[u8]; 6] = [b"backup ", b"cluster ", b"vma ", b"\n", b"disk ", b"0"];
                let mut p = 0;
                while p < n {
                    let w = words[rng.below(6) as usize];
                    let k = w.len().min(n - p);
                    buf[p..p + k].copy_from_slice(&w[..k]);
                    p += k;
                }
            }
            _ => {
                let b = rng.below((n / 4096).max(1) as u64) as usize * 4096;
                let e = (b + 4096).min(n);
                rng.fill(&mut buf[b..e]);
            }
        }
        f.write_all_at(&buf[..n], at).unwrap();
        at += n as u64;
    }
}

/// Two disks (`mib` and a quarter of it, plus an odd tail) and a config:
/// the plain archive and what `vma extract` makes of it.
fn source(mib: u64, seed: u64) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(seed);
    let sizes = [mib << 20, ((mib / 4) << 20) + 5 * 4096];
    let disks: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("disk{i}.raw")))
        .collect();
    for (p, s) in disks.iter().zip(sizes) {
        write_disk(p, s, &mut rng);
    }
    let conf = dir.path().join("qemu-server.conf");
    fs::write(&conf, format!("memory: 512\n# seed {seed}\n")).unwrap();
    let plain = dir.path().join("plain.vma");
    vma_ok(&create_args(&dir, &disks, &plain, None));
    let out = dir.path().join("extracted");
    vma_ok(&["extract".as_ref(), plain.as_os_str(), out.as_os_str()]);
    let mut expected = BTreeMap::new();
    for e in fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // Extract writes disk-<devname>.raw; the mount shows <devname>.raw.
        let mounted = name.strip_prefix("disk-").unwrap_or(&name).to_string();
        expected.insert(mounted, fs::read(e.path()).unwrap());
    }
    for (i, d) in disks.iter().enumerate() {
        assert_eq!(
            expected[&format!("drive-scsi{i}.raw")],
            fs::read(d).unwrap(),
            "extract of the plain archive"
        );
    }
    Source {
        dir,
        disks,
        plain,
        expected,
    }
}

fn create_args(
    dir: &TempDir,
    disks: &[PathBuf],
    out: &Path,
    compress: Option<&str>,
) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["create".into(), out.into()];
    if let Some(c) = compress {
        a.extend(["--compress".into(), c.into()]);
    }
    a.extend(["-c".into(), dir.path().join("qemu-server.conf").into()]);
    for (i, d) in disks.iter().enumerate() {
        a.extend([
            "-d".into(),
            format!("format=raw:drive-scsi{i}={}", d.display()).into(),
        ]);
    }
    a
}

/// The compressed forms under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    ZstdOneFrame,
    ZstdVmaCreate,
    Gzip,
    LzoVmaCreate,
}

impl Form {
    const ALL: [Form; 4] = [
        Form::ZstdOneFrame,
        Form::ZstdVmaCreate,
        Form::Gzip,
        Form::LzoVmaCreate,
    ];

    /// How `vma index --json` must say reads are served.
    fn kind(self) -> &'static str {
        match self {
            // One frame larger than max_direct_frame: a cache file.
            Form::ZstdOneFrame => "cache-file",
            Form::Gzip => "gzip-checkpoints",
            Form::ZstdVmaCreate => "zstd-frames",
            Form::LzoVmaCreate => "lzo-blocks",
        }
    }

    /// What [`VmaFs::summary`] calls the pieces of its index.
    fn unit(self) -> &'static str {
        match self {
            Form::ZstdOneFrame | Form::ZstdVmaCreate => "zstd frames",
            Form::Gzip => "gzip spans",
            Form::LzoVmaCreate => "lzop blocks",
        }
    }

    /// Writes `src` in this form at `path`.
    fn make(self, src: &Source, path: &Path) {
        let plain = || fs::read(&src.plain).unwrap();
        match self {
            Form::ZstdOneFrame => {
                fs::write(path, zstd::encode_all(&plain()[..], 3).unwrap()).unwrap()
            }
            Form::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    File::create(path).unwrap(),
                    flate2::Compression::fast(),
                );
                e.write_all(&plain()).unwrap();
                e.finish().unwrap();
            }
            Form::ZstdVmaCreate | Form::LzoVmaCreate => {
                let codec = if self == Form::LzoVmaCreate {
                    "lzo"
                } else {
                    "zstd"
                };
                vma_ok(&create_args(&src.dir, &src.disks, path, Some(codec)));
            }
        }
    }
}

/// Every file of the mount equals the extracted one: names, sha256, and
/// reads of random ranges (across frame boundaries, up to 300 KiB).
fn check_content(mp: &Path, src: &Source, seed: u64) {
    let mut names: Vec<String> = fs::read_dir(mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, src.expected.keys().cloned().collect::<Vec<_>>());
    let mut rng = TestRng::new(seed);
    for (name, want) in &src.expected {
        let got = fs::read(mp.join(name)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(want), "{name}");
        let f = File::open(mp.join(name)).unwrap();
        for _ in 0..40 {
            let off = rng.below(want.len() as u64 + 1) as usize;
            let len = rng.below(300 << 10) as usize;
            let end = (off + len).min(want.len());
            let mut buf = vec![0u8; len];
            let mut n = 0;
            while n < len {
                match f.read_at(&mut buf[n..], (off + n) as u64).unwrap() {
                    0 => break,
                    k => n += k,
                }
            }
            assert_eq!(n, end - off, "{name}: read {len} at {off}");
            assert!(
                buf[..n] == want[off..end],
                "{name}: bytes {off}..{end} differ"
            );
        }
    }
}

/// `vma index --json ARCHIVE`, parsed.
fn index_json(archive: &Path) -> serde_json::Value {
    let out = vma_ok(&["index".as_ref(), "--json".as_ref(), archive.as_os_str()]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

fn sidecar(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".vmaidx");
    s.into()
}

/// Mounts through the CLI (detached daemon), checks, unmounts.
fn cli_mount_and_check(archive: &Path, src: &Source, seed: u64) {
    let mp = MountDir::new();
    vma_ok(&["mount".as_ref(), archive.as_os_str(), mp.path().as_os_str()]);
    assert!(is_mounted(mp.path()));
    check_content(mp.path(), src, seed);
    vma_ok(&["umount".as_ref(), mp.path().as_os_str()]);
    assert!(!is_mounted(mp.path()));
}

#[test]
fn mount_each_compressed_form_builds_then_reuses_its_sidecar() {
    let src = source(20, 11);
    for (i, form) in Form::ALL.into_iter().enumerate() {
        let archive = src.dir.path().join(format!("a{i}.vma.x"));
        form.make(&src, &archive);
        let sc = sidecar(&archive);
        assert!(!sc.exists());

        // First mount: the index is built before `vma mount` returns.
        cli_mount_and_check(&archive, &src, 100 + i as u64);
        assert!(sc.is_file(), "{form:?}: no sidecar {}", sc.display());
        let built = mtime(&sc);

        // `vma index` finds it valid; its JSON describes it.
        let j = index_json(&archive);
        assert_eq!(j["rebuilt"], false, "{form:?}: {j}");
        assert_eq!(j["kind"], form.kind(), "{form:?}: {j}");
        assert_eq!(j["sidecar"], sc.to_string_lossy().as_ref(), "{form:?}");
        assert_eq!(j["sidecar_bytes"], fs::metadata(&sc).unwrap().len());
        assert_eq!(j["archive_bytes"], fs::metadata(&archive).unwrap().len());
        assert_eq!(
            j["decompressed_bytes"],
            fs::metadata(&src.plain).unwrap().len()
        );
        let frames = j["frames"].as_u64().unwrap();
        assert!(frames > 1, "{form:?}: {j}");
        if form == Form::ZstdVmaCreate {
            // 1 MiB frames (`vma create`'s ZSTD_FRAME).
            let plain = fs::metadata(&src.plain).unwrap().len();
            assert!(frames >= plain >> 20, "{j}");
        }
        if form.kind() == "cache-file" {
            let cache = PathBuf::from(j["cache"].as_str().unwrap());
            assert_eq!(j["cache_bytes"], fs::metadata(&cache).unwrap().len());
        } else {
            assert!(j["cache"].is_null(), "{j}");
        }

        // Second mount: the sidecar is reused, not rewritten.
        cli_mount_and_check(&archive, &src, 200 + i as u64);
        assert_eq!(mtime(&sc), built, "{form:?}: sidecar rewritten");
    }
}

#[test]
fn mount_rebuilds_a_stale_index_after_the_archive_is_replaced() {
    let old = source(20, 21);
    let new = source(22, 22);
    for (i, form) in [Form::ZstdOneFrame, Form::LzoVmaCreate, Form::Gzip]
        .into_iter()
        .enumerate()
    {
        let archive = old.dir.path().join(format!("s{i}.vma.x"));
        form.make(&old, &archive);
        vma_ok(&["index".as_ref(), archive.as_os_str()]);
        assert!(sidecar(&archive).is_file());

        // Replaced by other content (another size and mtime), as a new
        // backup under the same name would be.
        let tmp = old.dir.path().join("replacement");
        form.make(&new, &tmp);
        fs::rename(&tmp, &archive).unwrap();

        let fs = VmaFs::open_seek(&archive, false, &MountOptions::default().seek_options())
            .unwrap_or_else(|e| panic!("{form:?}: {e}"));
        let info = fs.index_info();
        assert!(info.rebuilt, "{form:?}: stale index reused");
        // The log line names what the index is made of.
        let summary = fs.summary();
        let unit = format!("{} {}", info.frames, form.unit());
        assert!(summary.contains(&unit), "{form:?}: {summary}");
        assert!(
            info.notes.iter().any(|n| n.contains("stale")),
            "{form:?}: {:?}",
            info.notes
        );
        let dir = tempfile::tempdir().unwrap();
        let handle = vma_fuse::spawn_mount(fs, dir.path(), &MountOptions::default()).unwrap();
        check_content(handle.mountpoint(), &new, 300 + i as u64);
        handle.unmount().unwrap();
        assert_eq!(index_json(&archive)["rebuilt"], false, "{form:?}");
    }
}

#[test]
fn vma_index_builds_rebuilds_and_explains_a_plain_archive() {
    let src = source(4, 31);
    let archive = src.dir.path().join("b.vma.lzo");
    Form::LzoVmaCreate.make(&src, &archive);

    let text = String::from_utf8(vma_ok(&["index".as_ref(), archive.as_os_str()]).stdout).unwrap();
    let sc = sidecar(&archive);
    assert!(text.contains("built"), "{text}");
    assert!(text.contains(&sc.display().to_string()), "{text}");
    let j = index_json(&archive);
    assert_eq!(j["rebuilt"], false);
    assert_eq!(j["compression"], "lzo");

    let out = vma_ok(&[
        "index".as_ref(),
        "--rebuild".as_ref(),
        "--json".as_ref(),
        archive.as_os_str(),
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["rebuilt"], true, "{j}");
    assert!(j["seconds"].as_f64().unwrap() >= 0.0);

    // A plain archive needs no index, and none is written.
    let text =
        String::from_utf8(vma_ok(&["index".as_ref(), src.plain.as_os_str()]).stdout).unwrap();
    assert!(text.contains("needs no index"), "{text}");
    assert_eq!(index_json(&src.plain)["kind"], "plain");
    assert!(!sidecar(&src.plain).exists());

    // Not an archive: a clear error, exit 133.
    let junk = src.dir.path().join("junk");
    fs::write(&junk, b"not a vma at all").unwrap();
    let out = Command::new(vma_bin!())
        .args(["index".as_ref(), junk.as_os_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(133));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&junk.display().to_string()), "{err}");
}

#[test]
fn mount_of_a_cut_stream_fails_before_detaching_and_leaves_no_index() {
    let src = source(20, 41);
    for (i, form) in [Form::ZstdOneFrame, Form::Gzip].into_iter().enumerate() {
        let archive = src.dir.path().join(format!("c{i}.vma.x"));
        form.make(&src, &archive);
        // Cut the stream at 60 %: the VMA header decodes, only the decoding
        // pass of the index build (the cache file) can notice. (Flipped
        // bytes could land in a stored block and decode without error.)
        let bytes = fs::read(&archive).unwrap();
        fs::write(&archive, &bytes[..bytes.len() * 3 / 5]).unwrap();
        let mp = MountDir::new();
        let out = Command::new(vma_bin!())
            .arg("mount")
            .arg(&archive)
            .arg(mp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(133), "{form:?}: {err}");
        assert!(err.contains(&archive.display().to_string()), "{err}");
        assert!(!is_mounted(mp.path()), "{form:?}");
        assert!(!sidecar(&archive).exists(), "{form:?}: index left behind");
        let mut cache = archive.as_os_str().to_owned();
        cache.push(".vmacache");
        assert!(!Path::new(&cache).exists(), "{form:?}: cache left behind");
    }
}
