//! moto's S3 server for the remote tests (`mod moto;` through `#[path]`
//! in each test file that needs it): start on a free port, buckets and
//! objects, the server-side request log, and the `vma` command with the
//! AWS environment that points at it.
//!
//! Needs `moto_server` (`pip install 'moto[server]'`; tests/run-all.sh does it).
#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vma_tests::{parse_sha256_file, sha256_hex, vector, vma_bin};

pub const SECRET: &str = "Sup3rS3cretKeyNeverPrinted0123456789abcd";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 request (Connection: close); (status, body). moto
/// refuses requests without an Authorization header after the first few,
/// but does not check the signature.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDTESTING/20261129/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let status = std::str::from_utf8(&resp[9..12]).unwrap().parse().unwrap();
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, resp[at..].to_vec())
}

/// moto's S3 server on a free port; killed on drop. Its request log (one
/// line per request, werkzeug's format) is the server-side request count.
pub struct Moto {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let m = Moto {
            child,
            port,
            log,
            _dir: dir,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn bucket(&self, name: &str) {
        let (st, body) = http(self.port, "PUT", &format!("/{name}"), b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }

    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let (st, body) = http(self.port, "PUT", &format!("/{bucket}/{key}"), data);
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// Reading requests (GET, HEAD) of `/bucket/key` logged so far; waits
    /// until the log stops growing (werkzeug writes the line after the answer).
    pub fn requests(&self, bucket: &str, key: &str) -> usize {
        let gets = [
            format!("\"GET /{bucket}/{key} HTTP/1.1\""),
            format!("\"HEAD /{bucket}/{key} HTTP/1.1\""),
        ];
        let count = || {
            fs::read_to_string(&self.log)
                .unwrap()
                .lines()
                .filter(|l| gets.iter().any(|g| l.contains(g)))
                .count()
        };
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let n = count();
            if n == last {
                return n;
            }
            last = n;
        }
    }

    /// `vma` with the AWS environment of this server (and a cache
    /// directory of its own).
    pub fn vma(&self) -> Command {
        let mut c = Command::new(vma_bin!());
        c.env("TZ", "UTC")
            .env("AWS_ACCESS_KEY_ID", "AKIDTESTING")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            )
            // Indexes of remote archives that do not go beside them stay
            // in this server's temporary directory.
            .env("XDG_CACHE_HOME", self._dir.path().join("cache"))
            .env_remove("VMA_CACHE_DIR")
            .env("VMA_REMOTE_MAX_RETRIES", "2")
            .env("VMA_REMOTE_RETRY_TIMEOUT", "10")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        c
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn expected_files(name: &str) -> Vec<(String, String)> {
    let mut v: Vec<_> =
        parse_sha256_file(&fs::read_to_string(vector(&format!("{name}.sha256"))).unwrap())
            .into_iter()
            .map(|(h, n)| (n, h))
            .collect();
    v.sort();
    v
}

pub fn extracted(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                sha256_hex(&fs::read(e.path()).unwrap()),
            )
        })
        .collect();
    v.sort();
    v
}

impl Moto {
    /// `vma` for writing: small parts, so a few MiB make a multipart upload.
    pub fn vma_put(&self) -> Command {
        let mut c = self.vma();
        c.env("VMA_S3_PART_SIZE", (5 << 20).to_string());
        c
    }

    /// Requests of `method` whose path starts with `/bucket/key?` + `query`.
    pub fn logged(&self, method: &str, bucket: &str, key: &str, query: &str) -> usize {
        let needle = format!("\"{method} /{bucket}/{key}?{query}");
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Multipart uploads still open in `bucket` (ListMultipartUploads).
    pub fn open_uploads(&self, bucket: &str) -> usize {
        let (st, body) = http(self.port, "GET", &format!("/{bucket}?uploads"), b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body).matches("<Upload>").count()
    }

    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        let (st, _) = http(self.port, "HEAD", &format!("/{bucket}/{key}"), b"");
        st == 200
    }
}

/// `vma create ARCHIVE -d format=raw:drive-scsi0=DISK` (compressed as the
/// archive's name says), which must succeed.
pub fn create_one_disk(archive: &Path, disk: &Path) {
    ok(&Command::new(vma_bin!())
        .arg("create")
        .arg(archive)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()
        .unwrap());
}
