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
use moto::*;
use vma_tests::{is_mounted, processes_mentioning, sha256_hex, vector, vma_bin, MountDir};

const BUCKET: &str = "vma-mnt";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Every file of the mount has the sha256 the vector's list gives.
fn assert_vector_files(mp: &Path, vector_name: &str) {
    let want = expected_files(vector_name);
    assert!(!want.is_empty());
    for (name, hash) in want {
        let file = name.strip_prefix("disk-").unwrap_or(&name);
        let got = fs::read(mp.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(sha256_hex(&got), hash, "{vector_name}: {file}");
    }
}

#[test]
fn s3_mount_detached_plain_and_zst_every_file_matches() {
    let m = Moto::start();
    m.bucket(BUCKET);
    let cache = tempfile::tempdir().unwrap();
    for (key, file) in [
        ("two.vma", "ref-two-disks.vma"),
        ("two.vma.zst", "ref-two-disks.vma.zst"),
    ] {
        m.put(BUCKET, key, &fs::read(vector(file)).unwrap());
        let url = format!("s3://{BUCKET}/{key}");
        let mp = MountDir::new();
        mount(&m, &url, &mp, cache.path());
        assert_vector_files(mp.path(), "ref-two-disks");
        umount(&mp);
        assert!(!is_mounted(mp.path()));
    }
    // The .zst's index was kept in --cache-dir, for later mounts.
    assert!(
        fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".vmaidx")),
        "no index in the cache directory"
    );
}

/// A disk of `mib` MiB of random data as a plain archive made by `vma create`.
fn random_archive(dir: &Path, mib: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut content = vec![0u8; mib << 20];
    vma_tests::TestRng::new(seed).fill(&mut content);
    let disk = dir.join(format!("disk{seed}.raw"));
    fs::write(&disk, &content).unwrap();
    let archive = dir.join(format!("a{seed}.vma"));
    ok(&Command::new(vma_bin!())
        .arg("create")
        .arg(&archive)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()
        .unwrap());
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

/// A minimal HTTP/1.1 server of one object (any path): HEAD, GET with
/// `Range: bytes=A-B`, ETag, `If-Match` (412). Runs until the test ends.
fn range_server(data: Vec<u8>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let data = std::sync::Arc::new(data);
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let data = data.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut c = c;
                let mut r = BufReader::new(c.try_clone()?);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    let head = line.starts_with("HEAD");
                    let (mut range, mut stale) = (None, false);
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h)?;
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("range: bytes=") {
                            let (a, b) = v.split_once('-').unwrap();
                            let b = b
                                .parse()
                                .map_or(data.len() - 1, |b: usize| b.min(data.len() - 1));
                            range = Some((a.parse::<usize>().unwrap(), b));
                        }
                        stale |= h.starts_with("if-match:") && !h.ends_with("\"v1\"");
                    }
                    let (status, body, extra) = match range {
                        _ if stale => ("412 Precondition Failed", &[][..], String::new()),
                        Some((a, b)) => (
                            "206 Partial Content",
                            &data[a..=b],
                            format!("Content-Range: bytes {a}-{b}/{}\r\n", data.len()),
                        ),
                        None => ("200 OK", &data[..], String::new()),
                    };
                    write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\
                         Accept-Ranges: bytes\r\n{extra}\r\n",
                        body.len()
                    )?;
                    if !head {
                        c.write_all(body)?;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn http_userinfo_never_in_proc_mounts_or_stderr() {
    let port = range_server(fs::read(vector("ref-one-disk.vma")).unwrap());
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
    assert_vector_files(mp.path(), "ref-one-disk");
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
