//! `vma mount` and `vma serve` of archives in object storage (moto's S3
//! server): detached (the daemon forks after the object's runtime was
//! suspended, and connects again on its first read), every file equal to
//! the vector, no secret in /proc/mounts or on stderr, and an object
//! replaced while mounted fails reads with EIO instead of mixing versions.
//!
//! Needs root, /dev/fuse, fusermount3, qemu-img and `moto_server`.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support/moto.rs"]
mod moto;
#[path = "support/range_server.rs"]
mod range_server;
use moto::*;
use range_server::RangeServer;
use vma_tests::{
    is_mounted, processes_mentioning, sha256_hex, vector, vma_bin, wait_until, MountDir,
};

const BUCKET: &str = "vma-mnt";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The /proc/mounts line of `mp`.
fn mounts_line(mp: &Path) -> String {
    let mp = mp.canonicalize().unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*mp.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} not in /proc/mounts", mp.display()))
        .to_string()
}

/// `vma` against moto named `localhost`: a name, so the object's runtime
/// resolves it on a thread of its blocking pool, which lingers after the
/// request; detaching then works only because the CLI suspends the object
/// (dropping its runtime joins that thread) before the fork.
fn vma_localhost(m: &Moto) -> Command {
    let mut c = m.vma();
    c.env("AWS_ENDPOINT_URL", format!("http://localhost:{}", m.port));
    c
}

/// `vma mount URL MP --cache-dir CACHE` (detached), checked: live when it
/// returns, served by one daemon, shown as `vma:<url>` without the secret.
fn mount(m: &Moto, url: &str, mp: &MountDir, cache: &Path) {
    let o = vma_localhost(m)
        .arg("mount")
        .arg(url)
        .arg(mp.path())
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "vma mount {url}: {}", stderr(&o));
    assert!(!stderr(&o).contains(SECRET), "{}", stderr(&o));
    assert!(is_mounted(mp.path()), "{url}");
    assert_eq!(processes_mentioning(mp.path()).len(), 1, "one daemon");
    let line = mounts_line(mp.path());
    assert!(
        line.starts_with(&format!("vma:{url} ")),
        "fsname is the URL: {line}"
    );
    assert!(!line.contains(SECRET), "{line}");
}

fn umount(mp: &MountDir) {
    let o = Command::new(vma_bin!())
        .arg("umount")
        .arg(mp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "vma umount: {}", stderr(&o));
    wait_until("the daemon to exit", || {
        processes_mentioning(mp.path()).is_empty()
    });
}

/// Every file of the mount has the sha256 `want` gives.
fn assert_files(mp: &Path, what: &str, want: &[(String, String)]) {
    assert!(!want.is_empty());
    for (file, hash) in want {
        let got = fs::read(mp.join(file)).unwrap_or_else(|e| panic!("{what}: {file}: {e}"));
        assert_eq!(&sha256_hex(&got), hash, "{what}: {file}");
    }
}

/// The two-disk vector's files as a mount names them (no `disk-` prefix).
fn vector_files(name: &str) -> Vec<(String, String)> {
    expected_files(name)
        .into_iter()
        .map(|(f, h)| (f.strip_prefix("disk-").unwrap_or(&f).to_string(), h))
        .collect()
}

/// File names of a mount and their sha256.
type Files = Vec<(String, String)>;

/// The archives of every compression a remote mount reads, with the files
/// (and their sha256) a mount of each shows: the plain vector, the vector
/// compressed by the zstd (one frame), gzip and lzop tools, and a .vma.zst
/// of several frames (512 KiB each) written by `vma create`.
fn archives(dir: &Path) -> Vec<(&'static str, Vec<u8>, Files)> {
    let plain = fs::read(vector("ref-two-disks.vma")).unwrap();
    let tool = |cmd: &str, args: &[&str]| {
        let o = Command::new(cmd)
            .args(args)
            .arg(vector("ref-two-disks.vma"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        o.stdout
    };
    let two = vector_files("ref-two-disks");
    let mut disk = vec![0u8; 3 << 20];
    vma_tests::TestRng::new(7).fill(&mut disk);
    let raw = dir.join("multi.raw");
    fs::write(&raw, &disk).unwrap();
    let multi = dir.join("multi.vma.zst");
    create_one_disk(&multi, &raw);
    let multi = fs::read(&multi).unwrap();
    assert!(
        zstd::zstd_safe::find_frame_compressed_size(&multi).unwrap() < multi.len(),
        "several frames"
    );
    vec![
        ("two.vma", plain, two.clone()),
        ("two.vma.zst", tool("zstd", &["-c"]), two.clone()),
        ("two.vma.gz", tool("gzip", &["-c"]), two.clone()),
        ("two.vma.lzo", tool("lzop", &["-c"]), two),
        (
            "multi.vma.zst",
            multi,
            vec![("drive-scsi0.raw".into(), sha256_hex(&disk))],
        ),
    ]
}

#[test]
fn s3_mount_detached_of_each_compression_every_file_matches() {
    let m = Moto::start();
    m.bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let all = archives(tmp.path());
    for (key, bytes, want) in &all {
        let (key, want) = (*key, want.clone());
        m.put(BUCKET, key, bytes);
        let url = format!("s3://{BUCKET}/{key}");
        let mp = MountDir::new();
        mount(&m, &url, &mp, &cache);
        assert_files(mp.path(), key, &want);
        umount(&mp);
        assert!(!is_mounted(mp.path()));
    }
    // Every index went beside its object, for later mounts on any host
    // (none of these needs a local cache file): none in --cache-dir.
    for (key, _, _) in &all {
        assert!(m.exists(BUCKET, &format!("{key}.vmaidx")), "{key}");
    }
    let kept = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".vmaidx"))
        .count();
    assert_eq!(kept, 0, "indexes in the cache directory");
}

/// `vma mount --foreground` of a .vma.gz, twice: the first builds the index
/// (kept in the cache directory), the second reuses it; each serves until
/// SIGTERM, which unmounts.
#[test]
fn s3_mount_foreground_serves_until_sigterm_and_reuses_the_index() {
    let m = Moto::start();
    m.bucket(BUCKET);
    let o = Command::new("gzip")
        .arg("-c")
        .arg(vector("ref-two-disks.vma"))
        .output()
        .unwrap();
    m.put(BUCKET, "two.vma.gz", &o.stdout);
    let cache = tempfile::tempdir().unwrap();
    for index in ["index built", "index reused"] {
        let mp = MountDir::new();
        let mut child = m
            .vma()
            .env("VMA_CACHE_DIR", cache.path())
            .args([
                "mount",
                "--foreground",
                &format!("s3://{BUCKET}/two.vma.gz"),
            ])
            .arg(mp.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the mount", || is_mounted(mp.path()));
        assert_files(mp.path(), "foreground", &vector_files("ref-two-disks"));
        vma_tests::kill(&child, libc::SIGTERM);
        let status = vma_tests::wait_timeout(&mut child, "vma mount --foreground");
        let err = vma_tests::stderr_text(&mut child);
        assert!(status.success(), "{status:?}: {err}");
        assert!(!is_mounted(mp.path()));
        assert!(err.contains("s3://vma-mnt/two.vma.gz: indexed"), "{err}");
        assert!(err.contains(index), "{index}: {err}");
        assert!(!err.contains(SECRET), "{err}");
    }
}

/// A disk of `mib` MiB of random data as a plain archive made by `vma create`.
fn random_archive(dir: &Path, mib: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut content = vec![0u8; mib << 20];
    vma_tests::TestRng::new(seed).fill(&mut content);
    let disk = dir.join(format!("disk{seed}.raw"));
    fs::write(&disk, &content).unwrap();
    let archive = dir.join(format!("a{seed}.vma"));
    create_one_disk(&archive, &disk);
    let bytes = fs::read(&archive).unwrap();
    fs::remove_file(&disk).unwrap();
    fs::remove_file(&archive).unwrap();
    (content, bytes)
}

#[test]
fn s3_object_replaced_while_mounted_fails_reads_with_eio() {
    let m = Moto::start();
    m.bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    // Two archives of one layout and size: only the data (and so the ETag) differ.
    let (old, old_archive) = random_archive(tmp.path(), 8, 1);
    let (_, new_archive) = random_archive(tmp.path(), 8, 2);
    assert_eq!(old_archive.len(), new_archive.len());
    m.put(BUCKET, "r.vma", &old_archive);
    let url = format!("s3://{BUCKET}/r.vma");
    let mp = MountDir::new();
    mount(&m, &url, &mp, tmp.path());
    let disk = fs::File::open(mp.path().join("drive-scsi0.raw")).unwrap();
    // Read through the daemon's fresh connection: the old object's bytes.
    let mut buf = vec![0u8; 64 << 10];
    disk.read_exact_at(&mut buf, 1 << 20).unwrap();
    assert!(buf == old[1 << 20..(1 << 20) + buf.len()]);

    m.put(BUCKET, "r.vma", &new_archive);
    // Each read is the old object's bytes (kernel or read-ahead caches) or
    // EIO: never the new object's. The part never read fails.
    let mut failed = 0;
    for at in (0..old.len()).step_by(1 << 20) {
        match disk.read_exact_at(&mut buf, at as u64) {
            Ok(()) => assert!(buf == old[at..at + buf.len()], "mixed data at {at}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "at {at}: {e}");
                failed += 1;
            }
        }
    }
    let mut tail = vec![0u8; 4096];
    let e = disk
        .read_exact_at(&mut tail, (old.len() - 4096) as u64)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(failed > 0);
    drop(disk);
    umount(&mp);
}

#[test]
fn s3_serve_detached_zst_is_identical_to_the_disks() {
    let m = Moto::start();
    m.bucket(BUCKET);
    m.put(
        BUCKET,
        "two.vma.zst",
        &fs::read(vector("ref-two-disks.vma.zst")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let pid = dir.path().join("pid");
    let o = vma_localhost(&m)
        .env("VMA_CACHE_DIR", dir.path())
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--pidfile")
        .arg(&pid)
        .arg(format!("s3://{BUCKET}/two.vma.zst"))
        .output()
        .unwrap();
    assert!(o.status.success(), "vma serve: {}", stderr(&o));
    assert!(!stderr(&o).contains(SECRET), "{}", stderr(&o));
    let n: libc::pid_t = fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    for (dev, raw) in [("drive-scsi0", "diskA.raw"), ("drive-scsi1", "diskB.raw")] {
        let cmp = vma_tests::run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(format!("nbd+unix:///{dev}?socket={}", sock.display()))
                .arg(vector("inputs").join(raw)),
        );
        assert!(cmp.contains("identical"), "{dev}: {cmp}");
    }
    // SAFETY: kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(n, libc::SIGTERM) }, 0);
    wait_until("the server to stop", || !sock.exists() && !pid.exists());
}

/// The port of a [`RangeServer`] of `data` at `path`, answering each
/// request after `delay`; it runs until the test ends.
fn range_server(data: Vec<u8>, path: &str, delay: Duration) -> u16 {
    let srv = RangeServer::start_at(data, path);
    srv.state.lock().unwrap().delay = delay;
    srv.port
}

#[test]
fn http_userinfo_never_in_proc_mounts_or_stderr() {
    let port = range_server(
        fs::read(vector("ref-one-disk.vma")).unwrap(),
        "/d/one.vma",
        Duration::ZERO,
    );
    let url = format!("http://bob:{SECRET}@127.0.0.1:{port}/d/one.vma");
    let mp = MountDir::new();
    let o = Command::new(vma_bin!())
        .arg("mount")
        .arg(&url)
        .arg(mp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "vma mount: {}", stderr(&o));
    assert!(!stderr(&o).contains(SECRET), "{}", stderr(&o));
    let line = mounts_line(mp.path());
    assert!(!line.contains(SECRET), "{line}");
    assert!(
        line.starts_with(&format!("vma:http://***@127.0.0.1:{port}/d/one.vma ")),
        "{line}"
    );
    assert_files(mp.path(), "http", &vector_files("ref-one-disk"));
    umount(&mp);

    // An error names the object, never the secret.
    let url = format!("http://bob:{SECRET}@127.0.0.1:1/d/one.vma");
    for args in [
        vec!["mount", &url, mp.path().to_str().unwrap()],
        vec!["serve", &url],
    ] {
        let o = Command::new(vma_bin!())
            .env("VMA_REMOTE_MAX_RETRIES", "0")
            .args(&args)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("/d/one.vma"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
    }
}

/// SIGINT while a remote .vma.gz is being indexed (a slow server: 300 ms
/// per request) stops the build as for a local archive: `vma: interrupted`,
/// exit status 130, nothing mounted, nothing left in the cache directory.
#[test]
fn sigint_during_a_remote_index_build_is_a_clean_interrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, archive) = random_archive(tmp.path(), 3, 3);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &archive).unwrap();
    let port = range_server(
        gz.finish().unwrap(),
        "/d/slow.vma.gz",
        Duration::from_millis(300),
    );
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mp = MountDir::new();
    let mut child = Command::new(vma_bin!())
        .arg("mount")
        .arg(format!("http://127.0.0.1:{port}/d/slow.vma.gz"))
        .arg(mp.path())
        .arg("--cache-dir")
        .arg(&cache)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(child.try_wait().unwrap().is_none(), "still indexing");
    vma_tests::kill(&child, libc::SIGINT);
    let status = vma_tests::wait_timeout(&mut child, "vma mount");
    let err = vma_tests::stderr_text(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.ends_with("vma: interrupted\n"), "{err}");
    assert!(!is_mounted(mp.path()));
    let left: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Reads of a remote mount do not re-read an extent header each (the ETag
/// pin guards the object instead), so sequential reads keep the read-ahead
/// windows growing: an 8 MiB disk read whole costs a handful of GETs, not
/// one per FUSE read plus one per header.
#[test]
fn s3_mount_reads_a_disk_in_few_requests() {
    let m = Moto::start();
    m.bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let (content, archive) = random_archive(tmp.path(), 8, 4);
    m.put(BUCKET, "r.vma", &archive);
    let mp = MountDir::new();
    mount(&m, &format!("s3://{BUCKET}/r.vma"), &mp, tmp.path());
    let opened = m.requests(BUCKET, "r.vma");
    let got = fs::read(mp.path().join("drive-scsi0.raw")).unwrap();
    assert!(got == content);
    let reads = m.requests(BUCKET, "r.vma") - opened;
    eprintln!("mount: {opened} requests; reading 8 MiB: {reads} requests");
    assert!(reads <= 12, "{reads} requests to read 8 MiB");
    umount(&mp);
}

/// SIGINT while a plain remote archive's extent headers are scanned (one
/// GET each, 500 ms apart here) ends the command at once (`vma: interrupted`,
/// exit status 130), not after the rest of the scan.
#[test]
fn sigint_during_a_remote_extent_scan_does_not_wait_for_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    // 32 MiB of random data: 9 extents, 4.5 s of scanning at 500 ms a request.
    let (_, archive) = random_archive(tmp.path(), 32, 5);
    let port = range_server(archive, "/d/slow.vma", Duration::from_millis(500));
    let mp = MountDir::new();
    let mut child = Command::new(vma_bin!())
        .arg("mount")
        .arg(format!("http://127.0.0.1:{port}/d/slow.vma"))
        .arg(mp.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(child.try_wait().unwrap().is_none(), "still scanning");
    let signalled = Instant::now();
    vma_tests::kill(&child, libc::SIGINT);
    let status = vma_tests::wait_timeout(&mut child, "vma mount");
    let took = signalled.elapsed();
    let err = vma_tests::stderr_text(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.ends_with("vma: interrupted\n"), "{err}");
    assert!(
        took < Duration::from_millis(1500),
        "exited {took:?} after SIGINT"
    );
    assert!(!is_mounted(mp.path()));
}
