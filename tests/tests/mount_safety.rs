//! `vma mount` / `vma umount` refuse what would cost data or disk space, and
//! the seek cache is durable: `vma umount` leaves anything but a vma mount
//! alone (a tmpfs survives), a second mount on the same directory and a
//! mount over a non-empty one are refused (`--nonempty` allows the latter),
//! `vma_fuse::mount` does not fork a multi-threaded process, a one-frame
//! `.vma.zst`'s cache file is announced (place, size) before it is written,
//! goes to `--cache-dir` / `$VMA_CACHE_DIR` when asked, is refused with the
//! numbers when it does not fit, is rebuilt when cut short, and `vma index
//! --remove` deletes it. Needs root (tmpfs), /dev/fuse and fusermount3.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;
use vma_fuse::MountOptions;
use vma_tests::{is_mounted, processes_mentioning, sha256_hex, vector, vma_bin, MountDir};

fn vma<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(vma_bin!())
        .args(args)
        .env_remove("VMA_CACHE_DIR")
        .output()
        .expect("run vma")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}: {}", o.status, stderr(&o));
    o
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        Tmpfs(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        while is_mounted(self.path()) {
            if !Command::new("umount")
                .arg(self.path())
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(self.path()).status();
                break;
            }
        }
    }
}

/// The topmost mount's (fstype, source) at `path`, from mountinfo.
fn mount_of(path: &Path) -> Option<(String, String)> {
    let want = path.canonicalize().unwrap().to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(&want))
        .map(|l| {
            let rest = l.split(" - ").nth(1).unwrap();
            let mut f = rest.split(' ');
            (f.next().unwrap().into(), f.next().unwrap().into())
        })
}

/// A one-disk archive whose decompressed stream is larger than
/// `max_direct_frame` (16 MiB), so that its one-frame `.vma.zst` needs a
/// cache file; the disk is compressible and has no zero block.
struct Big {
    dir: TempDir,
    disk: Vec<u8>,
    plain: PathBuf,
}

fn big() -> Big {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = vec![0u8; 18 << 20];
    for (i, b) in disk.chunks_mut(4096).enumerate() {
        let s = format!("block {i} of the disk; ");
        for (j, x) in b.iter_mut().enumerate() {
            *x = s.as_bytes()[j % s.len()];
        }
    }
    let raw = dir.path().join("disk.raw");
    fs::write(&raw, &disk).unwrap();
    let plain = dir.path().join("plain.vma");
    ok(vma(&[
        "create".as_ref(),
        plain.as_os_str(),
        "-d".as_ref(),
        format!("format=raw:drive-scsi0={}", raw.display()).as_ref(),
    ]));
    fs::remove_file(&raw).unwrap();
    Big { dir, disk, plain }
}

impl Big {
    /// The archive as `zstd` writes it from a pipe (vzdump): one frame,
    /// no content size in its header.
    fn zst_streamed(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let plain = fs::read(&self.plain).unwrap();
        fs::write(&p, zstd::encode_all(&plain[..], 1).unwrap()).unwrap();
        p
    }
    /// The archive as `zstd FILE` writes it: one frame with its content size.
    fn zst_tool(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let st = Command::new("zstd")
            .args(["-q", "-1", "-f", "-o"])
            .arg(&p)
            .arg(&self.plain)
            .status()
            .expect("zstd");
        assert!(st.success());
        p
    }
}

/// `vma index --json ARCHIVE`, parsed.
fn index_json(archive: &Path) -> serde_json::Value {
    let out = ok(vma(&[
        "index".as_ref(),
        "--json".as_ref(),
        archive.as_os_str(),
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ext);
    s.into()
}

/// `vma mount ARCHIVE MP [extra]`, checks the disk, `vma umount`; the stderr of the mount.
fn mount_check(archive: &Path, extra: &[&std::ffi::OsStr], disk: &[u8]) -> String {
    let mp = MountDir::new();
    let mut args = vec!["mount".as_ref(), archive.as_os_str(), mp.path().as_os_str()];
    args.extend_from_slice(extra);
    let out = ok(vma(&args));
    let got = fs::read(mp.path().join("drive-scsi0.raw")).unwrap();
    assert!(got == disk, "mounted disk differs from the raw disk");
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert!(!is_mounted(mp.path()));
    stderr(&out)
}

#[test]
fn umount_refuses_a_tmpfs_and_a_plain_directory() {
    let t = Tmpfs::new("1m");
    fs::write(t.path().join("precious"), b"data").unwrap();
    let out = vma(&["umount".as_ref(), t.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(133), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not a vma mount") && err.contains("tmpfs"),
        "{err}"
    );
    assert!(is_mounted(t.path()), "the tmpfs went away");
    assert_eq!(fs::read(t.path().join("precious")).unwrap(), b"data");

    let d = tempfile::tempdir().unwrap();
    let out = vma(&["umount".as_ref(), d.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(133));
    assert!(stderr(&out).contains("not mounted"), "{}", stderr(&out));
}

#[test]
fn a_vma_mount_is_marked_and_umount_takes_it() {
    let mp = MountDir::new();
    let archive = vector("ref-one-disk.vma");
    ok(vma(&[
        "mount".as_ref(),
        archive.as_os_str(),
        mp.path().as_os_str(),
    ]));
    let (fstype, source) = mount_of(mp.path()).expect("mounted");
    assert!(fstype == "fuse" || fstype == "fuse.vma", "{fstype}");
    let want = format!("vma:{}", archive.canonicalize().unwrap().display());
    assert_eq!(source, want);
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert!(!is_mounted(mp.path()));
}

#[test]
fn umount_takes_a_vma_mount_whose_daemon_died() {
    let mp = MountDir::new();
    ok(vma(&[
        "mount".as_ref(),
        vector("ref-one-disk.vma").as_os_str(),
        mp.path().as_os_str(),
    ]));
    let pids = processes_mentioning(mp.path());
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let start = std::time::Instant::now();
    while !processes_mentioning(mp.path()).is_empty() {
        assert!(start.elapsed().as_secs() < 10, "daemon still alive");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The mountpoint now fails with ENOTCONN (it cannot be canonicalized),
    // and is still recognised as a vma mount.
    assert!(fs::metadata(mp.path()).is_err());
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert!(!is_mounted(mp.path()));
}

#[test]
fn a_second_mount_on_the_same_directory_is_refused_even_with_nonempty() {
    let mp = MountDir::new();
    let archive = vector("ref-one-disk.vma");
    let two = vector("ref-two-disks.vma");
    ok(vma(&[
        "mount".as_ref(),
        archive.as_os_str(),
        mp.path().as_os_str(),
    ]));
    let lines = |p: &Path| {
        let want = p.canonicalize().unwrap().to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(&want))
            .count()
    };
    for extra in [None, Some("--nonempty")] {
        let mut args = vec!["mount".as_ref(), two.as_os_str(), mp.path().as_os_str()];
        args.extend(extra.map(std::ffi::OsStr::new));
        let out = vma(&args);
        assert_eq!(out.status.code(), Some(133), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("already a vma mount"),
            "{}",
            stderr(&out)
        );
        assert_eq!(lines(mp.path()), 1, "{extra:?}: a second mount stacked");
    }
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert!(!is_mounted(mp.path()));
}

#[test]
fn a_non_empty_directory_needs_nonempty() {
    let mp = MountDir::new();
    fs::write(mp.path().join("mine.txt"), b"keep me").unwrap();
    let archive = vector("ref-one-disk.vma");
    let out = vma(&["mount".as_ref(), archive.as_os_str(), mp.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(133), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not empty") && err.contains("--nonempty") && err.contains("mine.txt"),
        "{err}"
    );
    assert!(!is_mounted(mp.path()));

    for opt in ["--nonempty", "-ononempty"] {
        ok(vma(&[
            "mount".as_ref(),
            opt.as_ref(),
            archive.as_os_str(),
            mp.path().as_os_str(),
        ]));
        assert!(mp.path().join("qemu-server.conf").is_file(), "{opt}");
        assert!(
            !mp.path().join("mine.txt").exists(),
            "{opt}: hidden while mounted"
        );
        ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
        assert_eq!(fs::read(mp.path().join("mine.txt")).unwrap(), b"keep me");
    }
}

#[test]
fn the_library_mount_refuses_to_fork_a_threaded_process() {
    // One more thread than the test harness's, alive during the call.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let mp = MountDir::new();
    let err = vma_fuse::mount(
        &vector("ref-one-disk.vma"),
        mp.path(),
        &MountOptions::default(),
    )
    .unwrap_err();
    drop(tx);
    t.join().unwrap();
    assert!(
        matches!(err, vma_fuse::Error::Threaded { threads } if threads >= 2),
        "{err:?}"
    );
    assert!(err.to_string().contains("fork"), "{err}");
    assert!(!is_mounted(mp.path()));
}

#[test]
fn a_truncated_cache_is_rebuilt_and_the_data_is_right() {
    let b = big();
    let archive = b.zst_streamed("t.vma.zst");
    let (sc, cache) = (
        with_ext(&archive, ".vmaidx"),
        with_ext(&archive, ".vmacache"),
    );
    mount_check(&archive, &[], &b.disk);
    let full = fs::metadata(&cache).unwrap().len();
    assert!(sc.is_file() && full > 0);

    // Cut short, as a crash before the data reached the disk could leave it.
    fs::File::options()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_len(full / 2)
        .unwrap();
    let err = mount_check(&archive, &[], &b.disk);
    assert!(err.contains("writing the seek cache"), "not rebuilt: {err}");
    // (Its length depends on how much spare CPU compressed.)
    let j = index_json(&archive);
    assert_eq!(j["rebuilt"], false, "{j}");
    assert_eq!(j["cache_bytes"], fs::metadata(&cache).unwrap().len());
    let full = fs::metadata(&cache).unwrap().len();

    // Frames zeroed at the same length (pages never written): rebuilt too.
    let f = fs::File::options().write(true).open(&cache).unwrap();
    f.write_all_at(&vec![0u8; (full - 32) as usize], 32)
        .unwrap();
    drop(f);
    let err = mount_check(&archive, &[], &b.disk);
    assert!(err.contains("writing the seek cache"), "not rebuilt: {err}");

    // A valid cache is reused: nothing written, nothing said about it.
    let err = mount_check(&archive, &[], &b.disk);
    assert!(!err.contains("seek cache"), "{err}");
}

#[test]
fn the_cache_is_announced_and_goes_where_the_user_says() {
    let b = big();
    // No content size in the frame header: the bound from the devices.
    let archive = b.zst_streamed("a.vma.zst");
    let err = mount_check(&archive, &[], &b.disk);
    let cache = with_ext(&archive, ".vmacache");
    assert!(err.contains(&cache.display().to_string()), "{err}");
    assert!(err.contains("bounded by the devices' total size"), "{err}");
    assert!(cache.is_file());

    // `zstd FILE` records the size: said exactly.
    let archive = b.zst_tool("k.vma.zst");
    let err = mount_check(&archive, &[], &b.disk);
    let mib = fs::metadata(&b.plain).unwrap().len() as f64 / f64::from(1 << 20);
    assert!(
        err.contains(&format!("the decompressed archive is {mib:.1} MiB")),
        "{err}"
    );

    // --cache-dir: index and cache there, nothing next to the archive.
    let archive = b.zst_streamed("c.vma.zst");
    let side = tempfile::tempdir().unwrap();
    let err = mount_check(
        &archive,
        &["--cache-dir".as_ref(), side.path().as_os_str()],
        &b.disk,
    );
    let in_side = |ext: &str| {
        fs::read_dir(side.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect::<Vec<_>>()
    };
    let (caches, idx) = (in_side(".vmacache"), in_side(".vmaidx"));
    assert_eq!((caches.len(), idx.len()), (1, 1), "{err}");
    assert!(err.contains(&caches[0].display().to_string()), "{err}");
    assert!(!with_ext(&archive, ".vmacache").exists());
    assert!(!with_ext(&archive, ".vmaidx").exists());

    // $VMA_CACHE_DIR does the same.
    let archive = b.zst_streamed("e.vma.zst");
    let env_dir = tempfile::tempdir().unwrap();
    let mp = MountDir::new();
    let out = Command::new(vma_bin!())
        .args(["mount".as_ref(), archive.as_os_str(), mp.path().as_os_str()])
        .env("VMA_CACHE_DIR", env_dir.path())
        .output()
        .unwrap();
    ok(out);
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert_eq!(fs::read_dir(env_dir.path()).unwrap().count(), 2);
    assert!(!with_ext(&archive, ".vmacache").exists());

    // `vma index --remove` deletes them, and only them.
    let archive = with_ext(&b.dir.path().join("a"), ".vma.zst");
    let out = ok(vma(&[
        "index".as_ref(),
        "--remove".as_ref(),
        archive.as_os_str(),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&cache.display().to_string()), "{text}");
    assert!(!cache.exists() && !with_ext(&archive, ".vmaidx").exists());
    assert!(archive.is_file());
    let out = ok(vma(&[
        "index".as_ref(),
        "--remove".as_ref(),
        "--cache-dir".as_ref(),
        side.path().as_os_str(),
        b.dir.path().join("c.vma.zst").as_os_str(),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert_eq!(fs::read_dir(side.path()).unwrap().count(), 0);
}

#[test]
fn a_cache_that_does_not_fit_is_refused_with_the_numbers() {
    let b = big();
    let archive = b.zst_streamed("f.vma.zst");
    // 64 MiB: room for the cache itself (~19 MiB), not for the 256 MiB margin.
    let t = Tmpfs::new("64m");
    let mp = MountDir::new();
    let out = vma(&[
        "mount".as_ref(),
        "--cache-dir".as_ref(),
        t.path().as_os_str(),
        archive.as_os_str(),
        mp.path().as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(133), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not fit"), "{err}");
    assert!(err.contains("bytes) are free there"), "{err}");
    assert!(err.contains("256.0 MiB"), "{err}");
    assert!(err.contains("bounded by the devices' total size"), "{err}");
    assert!(!is_mounted(mp.path()));
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0, "left files");

    // `vma index` refuses the same way.
    let out = vma(&[
        "index".as_ref(),
        "--cache-dir".as_ref(),
        t.path().as_os_str(),
        archive.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(133));
    assert!(stderr(&out).contains("does not fit"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn when_only_the_devices_bound_does_not_fit_the_real_size_is_measured() {
    // A 1 GiB disk holding 18 MiB of data: the header's bound (1 GiB) does
    // not fit in 300 MiB with the margin, the real cache (~18 MiB) does.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let data = big().disk;
    let f = fs::File::create(&raw).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&data, 256 << 20).unwrap();
    drop(f);
    let plain = dir.path().join("sparse.vma");
    ok(vma(&[
        "create".as_ref(),
        plain.as_os_str(),
        "-d".as_ref(),
        format!("format=raw:drive-scsi0={}", raw.display()).as_ref(),
    ]));
    fs::remove_file(&raw).unwrap();
    let archive = dir.path().join("sparse.vma.zst");
    let bytes = zstd::encode_all(&fs::read(&plain).unwrap()[..], 1).unwrap();
    fs::write(&archive, bytes).unwrap();

    let t = Tmpfs::new("300m");
    let mp = MountDir::new();
    let out = ok(vma(&[
        "mount".as_ref(),
        "--cache-dir".as_ref(),
        t.path().as_os_str(),
        archive.as_os_str(),
        mp.path().as_os_str(),
    ]));
    let err = stderr(&out);
    assert!(err.contains("measuring the decompressed size"), "{err}");
    assert!(err.contains("the decompressed archive is"), "{err}");
    let got = fs::File::open(mp.path().join("drive-scsi0.raw")).unwrap();
    let mut buf = vec![0u8; data.len()];
    got.read_exact_at(&mut buf, 256 << 20).unwrap();
    assert!(buf == data, "mounted data differs");
    drop(got);
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
}

/// The expected sha256 of a vector's mounted files.
fn hashes(name: &str) -> Vec<(String, String)> {
    let text = fs::read_to_string(vector(&format!("{name}.sha256"))).unwrap();
    vma_tests::parse_sha256_file(&text)
        .into_iter()
        .map(|(h, n)| (h, n.strip_prefix("disk-").unwrap_or(&n).to_string()))
        .collect()
}

#[test]
fn a_small_zst_from_the_zstd_tool_mounts_without_a_cache() {
    // ref-two-disks.vma.zst is `zstd` of the vector: one small frame, read
    // directly (no .vmacache), with the same files as the plain archive.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ref-two-disks.vma.zst");
    fs::copy(vector("ref-two-disks.vma.zst"), &archive).unwrap();
    let mp = MountDir::new();
    let out = ok(vma(&[
        "mount".as_ref(),
        archive.as_os_str(),
        mp.path().as_os_str(),
    ]));
    assert!(!stderr(&out).contains("seek cache"), "{}", stderr(&out));
    for (hash, name) in hashes("ref-two-disks") {
        assert_eq!(
            sha256_hex(&fs::read(mp.path().join(&name)).unwrap()),
            hash,
            "{name}"
        );
    }
    ok(vma(&["umount".as_ref(), mp.path().as_os_str()]));
    assert!(!with_ext(&archive, ".vmacache").exists());
}
