//! Remote archives (`s3://`, `http://`): `list`, `config`, `verify` and
//! `extract` against a real local S3 (moto's server, started here on a free
//! port) and a small HTTP range server written here (it counts requests,
//! injects 5xx answers and replaces the object on demand).
//!
//! Needs `moto_server` (`pip install 'moto[server]'`; tests/run-all.sh does it).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/moto.rs"]
mod moto;
#[path = "support/range_server.rs"]
mod range_server;
use moto::*;
use range_server::RangeServer;
use vma_tests::{sha256_hex, vector, vma_bin};

/// An archive whose header is larger than the first 64 KiB range (two
/// 40 KiB configs), made with `vma create`.
fn big_header_archive(dir: &Path) -> Vec<u8> {
    let mut args = vec![
        "create".to_string(),
        dir.join("big.vma").display().to_string(),
    ];
    for n in ["a.conf", "b.conf"] {
        let p = dir.join(n);
        fs::write(&p, vec![b'x'; 40 << 10]).unwrap();
        args.extend(["-c".into(), p.display().to_string()]);
    }
    let o = Command::new(vma_bin!()).args(&args).output().unwrap();
    ok(&o);
    fs::read(dir.join("big.vma")).unwrap()
}

#[test]
fn s3_list_and_config_read_the_header_in_one_or_two_requests() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    m.put(
        "vma-bkt",
        "two.vma",
        &fs::read(vector("ref-two-disks.vma")).unwrap(),
    );
    let out = ok(&m
        .vma()
        .args(["list", "s3://vma-bkt/two.vma"])
        .output()
        .unwrap());
    assert_eq!(
        out,
        fs::read_to_string(vector("ref-two-disks.list")).unwrap()
    );
    assert_eq!(m.requests("vma-bkt", "two.vma"), 1, "list: one ranged GET");

    let conf = m
        .vma()
        .args(["config", "s3://vma-bkt/two.vma"])
        .output()
        .unwrap();
    assert_eq!(
        ok(&conf).as_bytes(),
        fs::read(vector("inputs/qemu-server.conf")).unwrap()
    );
    assert_eq!(m.requests("vma-bkt", "two.vma"), 2);

    // A header past the first 64 KiB: exactly one more request.
    let tmp = tempfile::tempdir().unwrap();
    let big = big_header_archive(tmp.path());
    m.put("vma-bkt", "big.vma", &big);
    let o = m
        .vma()
        .args(["list", "--json", "s3://vma-bkt/big.vma"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["configs"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(m.requests("vma-bkt", "big.vma"), 2, "big header: 2 GETs");
}

#[test]
fn s3_extract_and_verify_vectors_in_one_streaming_get() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    for (key, file, name) in [
        ("one.vma", "ref-one-disk.vma", "ref-one-disk"),
        ("two.vma", "ref-two-disks.vma", "ref-two-disks"),
        ("two.vma.zst", "ref-two-disks.vma.zst", "ref-two-disks"),
        ("many.vma", "ref-many-clusters.vma", "ref-many-clusters"),
    ] {
        m.put("vma-bkt", key, &fs::read(vector(file)).unwrap());
        let url = format!("s3://vma-bkt/{key}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        ok(&m.vma().arg("extract").arg(&url).arg(&dir).output().unwrap());
        assert_eq!(extracted(&dir), expected_files(name), "{key}");
        assert_eq!(m.requests("vma-bkt", key), 1, "{key}: one GET");

        ok(&m.vma().args(["verify", &url]).output().unwrap());
        assert_eq!(m.requests("vma-bkt", key), 2, "{key}: verify: one GET");
    }
}

#[test]
fn s3_errors_name_the_object_and_never_the_secret() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    for url in ["s3://vma-bkt/missing.vma", "s3://no-such-bucket/x.vma"] {
        for cmd in ["list", "verify"] {
            let o = m.vma().args([cmd, url]).output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{cmd} {url}");
            assert!(err.contains(url), "{cmd} {url}: {err}");
            assert!(!err.contains(SECRET), "{cmd} {url}: secret in: {err}");
        }
    }
    // A damaged request signature (wrong endpoint answers 404 bodies with
    // request details): still no secret, in the error nor in `list --json`'s
    // failure document.
    let o = m
        .vma()
        .args(["list", "--json", "s3://vma-bkt/missing.vma"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let doc = String::from_utf8_lossy(&o.stdout);
    assert!(doc.contains("s3://vma-bkt/missing.vma"), "{doc}");
    assert!(!doc.contains(SECRET), "{doc}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(SECRET));
}

#[test]
fn s3_object_replaced_between_requests_is_refused() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let big = big_header_archive(tmp.path());
    m.put("vma-bkt", "big.vma", &big);
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDTESTING");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", m.port));
    let obj = vma_remote::RemoteObject::open("s3://vma-bkt/big.vma").unwrap();
    assert_eq!(obj.get_range(0..4).unwrap(), b"VMA\0");
    // Same bytes would keep the ETag: change one.
    let mut other = big.clone();
    other[70_000] ^= 1;
    m.put("vma-bkt", "big.vma", &other);
    let e = obj.get_range(65536..70000).unwrap_err().to_string();
    assert!(e.contains("changed while being read"), "{e}");
    assert!(e.contains("s3://vma-bkt/big.vma"), "{e}");
}

fn vma_http() -> Command {
    let mut c = Command::new(vma_bin!());
    c.env("TZ", "UTC")
        .env("VMA_REMOTE_MAX_RETRIES", "3")
        .env("VMA_REMOTE_RETRY_TIMEOUT", "20");
    c
}

#[test]
fn http_list_extract_and_a_503_is_retried() {
    let srv = RangeServer::start(fs::read(vector("ref-two-disks.vma")).unwrap());
    let out = ok(&vma_http().args(["list", &srv.url()]).output().unwrap());
    assert_eq!(
        out,
        fs::read_to_string(vector("ref-two-disks.list")).unwrap()
    );
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1);

    // One 503, then success: retried, 2 requests seen.
    srv.state.lock().unwrap().fail = 1;
    srv.requests.store(0, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    ok(&vma_http()
        .arg("extract")
        .arg(srv.url())
        .arg(&dir)
        .output()
        .unwrap());
    assert_eq!(extracted(&dir), expected_files("ref-two-disks"));
    assert_eq!(srv.requests.load(Ordering::SeqCst), 2, "503, then the GET");
}

#[test]
fn http_object_replaced_between_the_header_requests_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_header_archive(tmp.path());
    let mut other = big.clone();
    other[70_000] ^= 1;
    let srv = RangeServer::start(big);
    srv.state.lock().unwrap().replace_after = Some((1, other));
    let o = vma_http().args(["list", &srv.url()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("changed while being read"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn http_userinfo_never_printed() {
    let srv = RangeServer::start(Vec::new());
    let url = format!("http://bob:{SECRET}@127.0.0.1:{}/d/missing.vma", srv.port);
    let o = vma_http().args(["list", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!err.contains(SECRET), "{err}");
    assert!(err.contains("missing.vma"), "{err}");
}

/// `mib` MiB of random (incompressible) data in `dir/disk.raw`; its sha256.
fn random_disk(dir: &Path, mib: usize, seed: u64) -> (PathBuf, String) {
    let mut content = vec![0u8; mib << 20];
    vma_tests::TestRng::new(seed).fill(&mut content);
    let p = dir.join("disk.raw");
    fs::write(&p, &content).unwrap();
    (p, sha256_hex(&content))
}

#[test]
fn s3_create_is_a_multipart_upload_completed_at_the_end() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let (disk, sum) = random_disk(tmp.path(), 12, 7);
    let url = "s3://vma-bkt/new.vma";
    ok(&m
        .vma_put()
        .args(["create", url, "-d"])
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()
        .unwrap());
    // 12 MiB + header in parts of 5 MiB: 3 parts, one upload, completed.
    assert_eq!(m.logged("POST", "vma-bkt", "new.vma", "uploads"), 1);
    assert_eq!(m.logged("PUT", "vma-bkt", "new.vma", "partNumber="), 3);
    assert_eq!(m.open_uploads("vma-bkt"), 0);
    let out = tmp.path().join("out");
    ok(&m.vma().arg("extract").arg(url).arg(&out).output().unwrap());
    assert_eq!(
        sha256_hex(&fs::read(out.join("disk-drive-scsi0.raw")).unwrap()),
        sum
    );

    // The key now exists: a second create refuses it, before any upload.
    let o = m
        .vma_put()
        .args(["create", url, "-d"])
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("s3://vma-bkt/new.vma already exists; refusing to overwrite it"),
        "{err}"
    );
    assert_eq!(m.logged("POST", "vma-bkt", "new.vma", "uploads"), 1);

    // http(s):// can be read, not written.
    let o = m
        .vma_put()
        .args(["create", "http://127.0.0.1:1/x.vma", "-d"])
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("only s3:// URLs can be written"));
}

#[test]
fn s3_create_interrupted_mid_upload_leaves_no_object_and_no_open_upload() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = random_disk(tmp.path(), 48, 8);
    // gzip -9 on one thread: slow enough to be caught after its first part.
    let mut child = m
        .vma_put()
        .args([
            "create",
            "s3://vma-bkt/cut.vma.gz",
            "--level",
            "9",
            "--threads",
            "1",
            "-d",
        ])
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while m.logged("PUT", "vma-bkt", "cut.vma.gz", "partNumber=") == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "no part was sent");
        assert!(child.try_wait().unwrap().is_none(), "create ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "create ended early");
    vma_tests::kill(&child, libc::SIGTERM);
    let st = vma_tests::wait_timeout(&mut child, "create");
    let err = vma_tests::stderr_text(&mut child);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(!m.exists("vma-bkt", "cut.vma.gz"), "{err}");
    assert_eq!(m.open_uploads("vma-bkt"), 0, "{err}");
}

#[test]
fn s3_upload_dropped_before_complete_is_aborted() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDTESTING");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", m.port));
    std::env::set_var("VMA_S3_PART_SIZE", (5 << 20).to_string());
    let mut up = vma_remote::Upload::create("s3://vma-bkt/half.vma").unwrap();
    up.write_all(&vec![7u8; 11 << 20]).unwrap();
    assert_eq!(m.open_uploads("vma-bkt"), 1);
    // A failure: the caller drops the upload instead of completing it.
    drop(up);
    assert_eq!(m.open_uploads("vma-bkt"), 0);
    assert!(!m.exists("vma-bkt", "half.vma"));
    assert!(m.logged("PUT", "vma-bkt", "half.vma", "partNumber=") >= 1);
}

/// A self-signed certificate for 127.0.0.1 (openssl CLI): (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // A server certificate (webpki refuses a CA certificate as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    (cert, key)
}

#[test]
fn https_extract_through_rustls_with_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path());
    let port = free_port();
    // Python's file server wrapped in TLS; a whole-object GET is all extract needs.
    let script = format!(
        "import http.server, ssl, functools\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
         s = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain({cert:?}, {key:?})\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        dir = vma_tests::vectors_dir().display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let mut server = Command::new("python3")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "https server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/ref-two-disks.vma");
    let dir = tmp.path().join("out");
    // Trusted through SSL_CERT_FILE: TLS really runs (rustls, ring provider).
    let o = vma_http()
        .env("SSL_CERT_FILE", &cert)
        .arg("extract")
        .arg(&url)
        .arg(&dir)
        .output()
        .unwrap();
    // Not trusted with only the system's roots: the certificate is really checked.
    let empty = tmp.path().join("no-certs");
    fs::create_dir(&empty).unwrap();
    let untrusted = vma_http()
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .env("SSL_CERT_DIR", &empty)
        .arg("extract")
        .arg(&url)
        .arg(tmp.path().join("out2"))
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    ok(&o);
    assert_eq!(extracted(&dir), expected_files("ref-two-disks"));
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success(), "{err}");
    assert!(err.contains(&url), "{err}");
}

/// A disk of random data with zero runs (holes in the archive) and the
/// archive of it, made with `vma create` (compressed if `out` says so).
fn disk_with_holes(dir: &Path, out: &str) -> (Vec<u8>, PathBuf) {
    let mut content = vec![0u8; 3 << 20];
    vma_tests::TestRng::new(11).fill(&mut content);
    content[100_000..700_000].fill(0);
    content[2_000_000..2_300_000].fill(0);
    let disk = dir.join("holes.raw");
    fs::write(&disk, &content).unwrap();
    let archive = dir.join(out);
    create_one_disk(&archive, &disk);
    (content, archive)
}

/// Two `extract --range` processes at once, the halves of one disk (cut at
/// an odd offset), into one shared file that held other bytes: together
/// byte-identical to the disk.
fn restore_halves(cmd: impl Fn() -> Command, archive: &str, content: &[u8], dir: &Path) {
    let shared = dir.join("shared.raw");
    fs::write(&shared, vec![0xAAu8; content.len()]).unwrap();
    let cut = content.len() / 2 + 12_345;
    let spawn = |range: String| {
        cmd()
            .args(["extract", "--range", &range, "-d", "drive-scsi0", archive])
            .arg(&shared)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(format!("0:{cut}"));
    let b = spawn(format!("{cut}:"));
    for (what, c) in [("first half", a), ("second half", b)] {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let got = fs::read(&shared).unwrap();
    assert_eq!(got.len(), content.len());
    assert_eq!(sha256_hex(&got), sha256_hex(content));
}

#[test]
fn s3_extract_range_two_processes_restore_one_disk() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let (content, archive) = disk_with_holes(tmp.path(), "holes.vma");
    m.put("vma-bkt", "holes.vma", &fs::read(&archive).unwrap());
    restore_halves(|| m.vma(), "s3://vma-bkt/holes.vma", &content, tmp.path());
    // Ranged reads only: no whole-object GET. (Each process: a size, the
    // header, the extent headers and its half's data runs.)
    // Read-ahead (vma_remote::CachedObject) makes the data reads a few
    // growing windows instead of one GET per 64 KiB cluster (45 before).
    let n = m.requests("vma-bkt", "holes.vma");
    assert!((4..=20).contains(&n), "{n}");
    eprintln!("extract --range, two halves of a 3 MiB disk: {n} requests");

    // A compressed remote archive: its index is built in memory from ranged
    // reads of the object (vma-seekable over the remote ReadAt).
    let (content, zst) = disk_with_holes(tmp.path(), "holes.vma.zst");
    m.put("vma-bkt", "holes.vma.zst", &fs::read(&zst).unwrap());
    let sub = tmp.path().join("zst");
    fs::create_dir(&sub).unwrap();
    restore_halves(|| m.vma(), "s3://vma-bkt/holes.vma.zst", &content, &sub);
}

#[test]
fn local_extract_range_two_processes_restore_one_disk_plain_and_zst() {
    for name in ["holes.vma", "holes.vma.zst"] {
        let tmp = tempfile::tempdir().unwrap();
        let (content, archive) = disk_with_holes(tmp.path(), name);
        restore_halves(
            || Command::new(vma_bin!()),
            archive.to_str().unwrap(),
            &content,
            tmp.path(),
        );
    }
    // OUT must exist: --range never creates it.
    let tmp = tempfile::tempdir().unwrap();
    let (_, archive) = disk_with_holes(tmp.path(), "h.vma");
    let o = Command::new(vma_bin!())
        .args(["extract", "--range", "0:4096", "-d", "drive-scsi0"])
        .arg(&archive)
        .arg(tmp.path().join("absent.raw"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!tmp.path().join("absent.raw").exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("existing file or block device"));
}

/// `vma index --json` of `url`, parsed.
fn index_json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&ok(&cmd.output().unwrap())).unwrap()
}

/// The "index beside the object": `vma index` stores `<key>.vmaidx`
/// in the bucket (for a plain archive too: its extent headers), later opens
/// load it with two requests (the first 64 KiB, the sidecar) and read no
/// extent header from the archive, `extract --range` of a whole disk then
/// costs only its data reads, and `--remove` deletes it.
#[test]
fn s3_index_is_kept_beside_the_object_and_reused() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    // 12 MiB of data: 4 extents, so the extent headers cost requests.
    let disk = random_disk(tmp.path(), 12, 5).0;
    let archive = tmp.path().join("big.vma");
    create_one_disk(&archive, &disk);
    m.put("vma-bkt", "big.vma", &fs::read(&archive).unwrap());
    let url = "s3://vma-bkt/big.vma";

    let built = index_json(m.vma().args(["index", "--json", url]));
    assert_eq!(built["kind"], "plain");
    assert_eq!(built["rebuilt"], true);
    assert_eq!(built["frames"], 4, "extent headers kept: {built}");
    assert_eq!(built["sidecar"], "s3://vma-bkt/big.vma.vmaidx");
    assert!(m.exists("vma-bkt", "big.vma.vmaidx"));
    let first = m.requests("vma-bkt", "big.vma");

    let reused = index_json(m.vma().args(["index", "--json", url]));
    assert_eq!(reused["rebuilt"], false, "{reused}");
    assert_eq!(reused["requests"], 2, "the first 64 KiB and the sidecar");
    assert_eq!(m.requests("vma-bkt", "big.vma") - first, 1);

    // Reading the whole disk through the index: the first 64 KiB, then the
    // data in read-ahead windows that double up to 8 MiB; no header reads.
    let before = m.requests("vma-bkt", "big.vma");
    let content = fs::read(&disk).unwrap();
    let out = tmp.path().join("out.raw");
    fs::write(&out, vec![0xAAu8; content.len()]).unwrap();
    ok(&m
        .vma()
        .args(["extract", "--range", "0:", "-d", "drive-scsi0", url])
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(sha256_hex(&fs::read(&out).unwrap()), sha256_hex(&content));
    let reads = m.requests("vma-bkt", "big.vma") - before;
    eprintln!("extract --range of a 12 MiB disk through the index: {reads} requests");
    assert!(reads <= 8, "{reads} requests");

    let o = m.vma().args(["index", "--remove", url]).output().unwrap();
    assert_eq!(ok(&o).trim(), "removed s3://vma-bkt/big.vma.vmaidx");
    assert!(!m.exists("vma-bkt", "big.vma.vmaidx"));
    assert!(m.exists("vma-bkt", "big.vma"), "never the archive");
}

/// Compressed archives: a frame table goes beside the object; a one-frame
/// zstd, whose index needs a local cache file, keeps both locally; a
/// replaced object makes the sidecar stale (rebuilt, with a note).
#[test]
fn s3_index_of_compressed_archives_and_a_replaced_object() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let (_, frames) = disk_with_holes(tmp.path(), "holes.vma.zst");
    m.put("vma-bkt", "frames.vma.zst", &fs::read(&frames).unwrap());
    let v = index_json(
        m.vma()
            .args(["index", "--json", "s3://vma-bkt/frames.vma.zst"]),
    );
    assert_eq!(v["kind"], "zstd-frames", "{v}");
    assert_eq!(v["sidecar"], "s3://vma-bkt/frames.vma.zst.vmaidx");
    assert!(m.exists("vma-bkt", "frames.vma.zst.vmaidx"));

    // One zstd frame that decodes to more than the 16 MiB read directly:
    // 20 MiB of non-zero blocks, compressible.
    let mut content = vec![0u8; 20 << 20];
    for (i, b) in content.chunks_mut(4096).enumerate() {
        b.fill(1);
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    let disk = tmp.path().join("d20.raw");
    fs::write(&disk, &content).unwrap();
    let big = tmp.path().join("d20.vma");
    create_one_disk(&big, &disk);
    let plain = fs::read(&big).unwrap();
    let one_frame = zstd::encode_all(&plain[..], 1).unwrap();
    m.put("vma-bkt", "one.vma.zst", &one_frame);
    let cache = tmp.path().join("cache");
    let v = index_json(
        m.vma()
            .args(["index", "--json", "--cache-dir"])
            .arg(&cache)
            .arg("s3://vma-bkt/one.vma.zst"),
    );
    assert_eq!(v["kind"], "cache-file", "{v}");
    let sidecar = v["sidecar"].as_str().unwrap();
    assert!(sidecar.starts_with(cache.to_str().unwrap()), "{v}");
    assert!(Path::new(sidecar).exists());
    assert!(
        !m.exists("vma-bkt", "one.vma.zst.vmaidx"),
        "cache files stay local"
    );
    let again = index_json(
        m.vma()
            .args(["index", "--json", "--cache-dir"])
            .arg(&cache)
            .arg("s3://vma-bkt/one.vma.zst"),
    );
    assert_eq!(again["rebuilt"], false, "{again}");

    // Another archive under the same key: the sidecar's stamp no longer
    // matches (size, time, UUID), so it is rebuilt and says why.
    m.put(
        "vma-bkt",
        "frames.vma.zst",
        &zstd::encode_all(&plain[..], 3).unwrap(),
    );
    let v = index_json(
        m.vma()
            .args(["index", "--json", "s3://vma-bkt/frames.vma.zst"]),
    );
    assert_eq!(v["rebuilt"], true, "{v}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("stale"), "{v}");
}

/// An `http(s)://` server is read-only to vma: the index goes to the cache
/// directory, and the next open uses it.
#[test]
fn http_index_goes_to_the_cache_directory() {
    let srv = RangeServer::start(fs::read(vector("ref-many-clusters.vma")).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let index = || {
        let mut c = vma_http();
        c.args(["index", "--json", "--cache-dir"])
            .arg(cache.path())
            .arg(srv.url());
        index_json(&mut c)
    };
    let v = index();
    assert_eq!(v["rebuilt"], true, "{v}");
    let sidecar = v["sidecar"].as_str().unwrap().to_string();
    assert!(sidecar.starts_with(cache.path().to_str().unwrap()), "{v}");
    srv.requests.store(0, Ordering::SeqCst);
    let v = index();
    assert_eq!(v["rebuilt"], false, "{v}");
    assert_eq!(v["sidecar"], sidecar.as_str());
    // The first 64 KiB and a look for x.vma.vmaidx beside it (404).
    assert_eq!(srv.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn http_server_dying_mid_read_fails_extract_cleanly() {
    let srv = RangeServer::start(fs::read(vector("ref-many-clusters.vma")).unwrap());
    let extract = |dir: &Path| {
        vma_http()
            .env("VMA_REMOTE_MAX_RETRIES", "1")
            .arg("extract")
            .arg(srv.url())
            .arg(dir)
            .output()
            .unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    // One broken body (after 200 KiB of 286 KiB): resumed from there with a
    // ranged GET (same ETag), the result is right.
    srv.state.lock().unwrap().cut = Some(200 << 10);
    let dir = tmp.path().join("resumed");
    ok(&extract(&dir));
    assert_eq!(extracted(&dir), expected_files("ref-many-clusters"));
    assert_eq!(
        srv.requests.load(Ordering::SeqCst),
        2,
        "the GET and one resume"
    );

    // Every answer breaks after 16 KiB: the retries run out, a clear error.
    srv.state.lock().unwrap().cut = Some(16 << 10);
    let dir = tmp.path().join("out");
    let o = extract(&dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(&srv.url()), "{err}");
    // No partial output: extract removed what it had created.
    assert!(!dir.exists(), "{err}");
}

/// A TCP proxy in front of moto that "kills the server" once it has passed
/// `cut` bytes of answers: every connection is reset and the port refuses
/// new ones, as when the S3 server dies mid-read.
struct KillingProxy {
    port: u16,
    killed: Arc<std::sync::atomic::AtomicBool>,
}

impl KillingProxy {
    fn start(upstream: u16, cut: usize) -> KillingProxy {
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let killed = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(AtomicUsize::new(0));
        let k = killed.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            while !k.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                        conns.push(client.try_clone().unwrap());
                        conns.push(server.try_clone().unwrap());
                        let (mut c1, mut s1) =
                            (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || std::io::copy(&mut c1, &mut s1));
                        let (mut c2, mut s2) = (client, server);
                        let (k2, passed) = (k.clone(), passed.clone());
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 << 10];
                            loop {
                                let n = match s2.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if passed.fetch_add(n, Ordering::SeqCst) + n >= cut {
                                    k2.store(true, Ordering::SeqCst);
                                    break;
                                }
                                if c2.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dead: every open connection reset, the listener closed.
            for c in conns {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        });
        KillingProxy { port, killed }
    }
}

/// The S3 server dies mid-read (streaming extract, and `extract --range`
/// through the index): a clear error naming the object, a non-zero exit,
/// and no partial output presented as complete.
#[test]
fn s3_server_killed_mid_read_fails_cleanly() {
    let m = Moto::start();
    m.bucket("vma-bkt");
    let tmp = tempfile::tempdir().unwrap();
    let disk = random_disk(tmp.path(), 8, 9).0;
    let archive = tmp.path().join("k.vma");
    create_one_disk(&archive, &disk);
    m.put("vma-bkt", "k.vma", &fs::read(&archive).unwrap());
    ok(&m
        .vma()
        .args(["index", "s3://vma-bkt/k.vma"])
        .output()
        .unwrap());

    let through = |proxy: &KillingProxy| {
        let mut c = m.vma();
        c.env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .env("VMA_REMOTE_MAX_RETRIES", "1")
        .env("VMA_REMOTE_RETRY_TIMEOUT", "3");
        c
    };
    // Cut, failed, and said which object.
    let failed = |proxy: &KillingProxy, o: &Output| -> String {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            proxy.killed.load(Ordering::SeqCst),
            "the proxy was never cut"
        );
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("s3://vma-bkt/k.vma"), "{err}");
        err
    };
    let proxy = KillingProxy::start(m.port, 3 << 20);
    let dir = tmp.path().join("out");
    let o = through(&proxy)
        .arg("extract")
        .arg("s3://vma-bkt/k.vma")
        .arg(&dir)
        .output()
        .unwrap();
    let err = failed(&proxy, &o);
    assert!(!err.contains(SECRET), "{err}");
    assert!(!dir.exists(), "partial output left: {err}");

    let proxy = KillingProxy::start(m.port, 3 << 20);
    let out = tmp.path().join("range.raw");
    fs::write(&out, b"").unwrap();
    let o = through(&proxy)
        .args([
            "extract",
            "--range",
            "0:",
            "-d",
            "drive-scsi0",
            "s3://vma-bkt/k.vma",
        ])
        .arg(&out)
        .output()
        .unwrap();
    failed(&proxy, &o);
}
