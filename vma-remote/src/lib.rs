//! Sync access to archives in object storage: `s3://bucket/key` and
//! `http(s)://` URLs of servers that answer range requests.
//!
//! Owns the small tokio runtime that drives `object_store` (async) and gives
//! the rest of the workspace three sync views of one remote object:
//! - [`RemoteObject`] implements [`vma_format::ReadAt`]: one ranged GET per call;
//!   [`CachedObject`] adds read-ahead for sequential reads (`extract --range`);
//! - [`RemoteObject::ranged_reader`]: a [`Read`] for the header only
//!   (`list`, `config`): a first GET of 64 KiB, then growing ranges, so a
//!   header of up to 64 KiB costs one request;
//! - [`RemoteObject::stream`]: a [`Read`] over ONE streaming GET of the whole
//!   object (`verify`, `extract`); it never seeks.
//!
//! Consistency: the ETag of the first response is pinned; every later request
//! carries `If-Match` and every response's ETag is compared too, so a replaced
//! object is an error, never a mix of two versions.
//!
//! Secrets: errors go through [`scrub`], which removes the values of the AWS
//! secret variables and any `user:password@` of a URL.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
mod cached;
mod upload;
pub use cached::CachedObject;

pub use upload::{Aborter, Upload};

use object_store::{BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, RetryConfig};

/// Bytes of the first request of a header read: most headers fit.
pub const FIRST_RANGE: u64 = 64 << 10;
/// Largest single range of the header reader.
const MAX_RANGE: u64 = 8 << 20;

/// True if `s` names a remote archive this crate opens.
pub fn is_remote(s: &str) -> bool {
    s.starts_with("s3://") || s.starts_with("http://") || s.starts_with("https://")
}

/// Removes secrets from a message: the values of the AWS secret variables and
/// the userinfo part of any URL (`https://user:pass@host` → `https://***@host`).
pub fn scrub(msg: &str) -> String {
    let mut out = msg.to_string();
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN"] {
        if let Ok(v) = std::env::var(var) {
            if v.len() >= 4 {
                out = out.replace(&v, "***");
            }
        }
    }
    // Userinfo of URLs: "scheme://user:pass@" → "scheme://***@".
    let mut res = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        res.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                res.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    res.push_str(rest);
    res
}

/// Display form of a URL for messages (userinfo removed).
pub fn display_url(url: &str) -> String {
    scrub(url)
}

fn env_bool(name: &str) -> Option<bool> {
    std::env::var(name)
        .ok()
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Retries: object_store's backoff on 5xx, 429 and timeouts. The counts can
/// be lowered for tests with `VMA_REMOTE_MAX_RETRIES`/`VMA_REMOTE_RETRY_TIMEOUT`.
fn retry_config() -> RetryConfig {
    let mut r = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.,
        },
        ..RetryConfig::default()
    };
    if let Some(n) = std::env::var("VMA_REMOTE_MAX_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        r.max_retries = n;
    }
    if let Some(s) = std::env::var("VMA_REMOTE_RETRY_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        r.retry_timeout = Duration::from_secs(s);
    }
    r
}

fn err(url: &str, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(scrub(&format!("{what} {} - {e}", display_url(url))))
}

fn bad_url(url: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("bad archive URL {} - {why}", display_url(url)),
    )
}

/// The S3 client and object path of `url` = `s3://` + `rest`, configured
/// from the AWS environment (see [`RemoteObject::open`]).
fn s3_store(url: &str, rest: &str) -> io::Result<(object_store::aws::AmazonS3, ObjPath)> {
    install_crypto_provider();
    let bad = |why: &str| bad_url(url, why);
    let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    if bucket.is_empty() || key.is_empty() {
        return Err(bad("expected s3://bucket/key"));
    }
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config());
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_default();
    let mut opts = ClientOptions::new();
    if endpoint.starts_with("http://") || env_bool("AWS_ALLOW_HTTP") == Some(true) {
        opts = opts.with_allow_http(true);
    }
    b = b.with_client_options(opts);
    if env_bool("AWS_S3_FORCE_PATH_STYLE") == Some(true) {
        b = b.with_virtual_hosted_style_request(false);
    }
    let s3 = b.build().map_err(|e| err(url, "can't access", e))?;
    let path = ObjPath::parse(key).map_err(|e| bad(&e.to_string()))?;
    Ok((s3, path))
}

/// Makes ring rustls's process-wide crypto provider (reqwest is built with
/// `rustls-no-provider`, so that aws-lc-rs and its C build stay out). Once;
/// a provider someone else installed first is fine too.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client and runtime for `url` (see [`RemoteObject::open`]).
fn connect(url: &str) -> io::Result<Conn> {
    install_crypto_provider();
    let bad = |why: &str| bad_url(url, why);
    let (store, path): (Arc<dyn ObjectStore>, ObjPath) =
        if let Some(rest) = url.strip_prefix("s3://") {
            let (s3, path) = s3_store(url, rest)?;
            (Arc::new(s3), path)
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let cut = url.rfind('/').filter(|&i| i > url.find("://").unwrap() + 2);
            let cut = cut.ok_or_else(|| bad("no file name"))?;
            let (base, name) = (&url[..cut], &url[cut + 1..]);
            if name.is_empty() {
                return Err(bad("no file name"));
            }
            let opts = ClientOptions::new().with_allow_http(url.starts_with("http://"));
            let http = object_store::http::HttpBuilder::new()
                .with_url(base)
                .with_client_options(opts)
                .with_retry(retry_config())
                .build()
                .map_err(|e| err(url, "can't access", e))?;
            let path = ObjPath::from_url_path(name).map_err(|e| bad(&e.to_string()))?;
            (Arc::new(http), path)
        } else {
            return Err(bad("expected s3:// or http(s)://"));
        };
    // A current-thread runtime: each caller's block_on drives its own
    // request (several threads may call at once); no idle workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(Conn { store, path, rt })
}

/// What the first response told about the object; later responses must match.
#[derive(Clone, Debug)]
struct Pinned {
    size: u64,
    etag: Option<String>,
    /// Last-Modified, seconds since the Unix epoch.
    modified: i64,
}

/// The client of one object and the runtime that drives it.
struct Conn {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    rt: tokio::runtime::Runtime,
}

/// Requests sent and body bytes received, for `-v` lines and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent (GET, ranged GET, HEAD; retries inside object_store
    /// count once).
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// One remote object, read by ranges or streamed. Cheap to share (`&self`).
///
/// The connection (client, connection pool, runtime) is made on demand and
/// can be dropped with [`RemoteObject::suspend`]: a process that forks (the
/// `vma mount` daemon) suspends first, so no runtime thread is running at
/// the fork, and the child makes a fresh connection on its first read. The
/// pinned size and ETag survive a suspend, so the child still refuses a
/// replaced object.
pub struct RemoteObject {
    url: String,
    conn: Mutex<Option<Arc<Conn>>>,
    pinned: Mutex<Option<Pinned>>,
    requests: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject")
            .field("url", &display_url(&self.url))
            .finish()
    }
}

impl RemoteObject {
    /// Prepares access to `url` (no request is sent yet).
    ///
    /// `s3://bucket/key` takes the standard AWS environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, ...). An `http://` endpoint is
    /// allowed when named explicitly (or with `AWS_ALLOW_HTTP=true`);
    /// addressing is path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`
    /// (`AWS_S3_FORCE_PATH_STYLE=true` forces path-style).
    pub fn open(url: &str) -> io::Result<Self> {
        let conn = connect(url)?;
        Ok(RemoteObject {
            url: url.to_string(),
            conn: Mutex::new(Some(Arc::new(conn))),
            pinned: Mutex::new(None),
            requests: Default::default(),
            bytes: Default::default(),
        })
    }

    /// The connection, made again if [`Self::suspend`] dropped it.
    fn conn(&self) -> io::Result<Arc<Conn>> {
        let mut c = self.conn.lock().unwrap();
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let new = Arc::new(connect(&self.url)?);
        *c = Some(new.clone());
        Ok(new)
    }

    /// Drops the connection and its runtime (joining the runtime's
    /// threads, e.g. the DNS resolver's) once no read is using it; the next
    /// read connects again. For a process about to fork.
    pub fn suspend(&self) {
        let conn = self.conn.lock().unwrap().take();
        drop(conn);
    }

    /// Requests sent and bytes received so far.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            requests: self.requests.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }

    fn count(&self, requests: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(requests, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// The URL for messages (userinfo removed).
    pub fn display(&self) -> String {
        display_url(&self.url)
    }

    fn pinned(&self) -> Option<Pinned> {
        self.pinned.lock().unwrap().clone()
    }

    /// Options of a request: `If-Match` once the ETag is pinned.
    fn options(&self, range: Option<GetRange>, head: bool) -> GetOptions {
        GetOptions {
            range,
            head,
            if_match: self.pinned().and_then(|p| p.etag),
            ..GetOptions::default()
        }
    }

    /// Pins the first response's size and ETag; refuses any later different one.
    fn check(&self, meta: &object_store::ObjectMeta) -> io::Result<()> {
        let (size, etag) = (meta.size, meta.e_tag.clone());
        let mut p = self.pinned.lock().unwrap();
        match &*p {
            None => {
                let modified = meta.last_modified.timestamp();
                *p = Some(Pinned {
                    size,
                    etag,
                    modified,
                });
                Ok(())
            }
            Some(old) if old.size == size && old.etag == etag => Ok(()),
            Some(old) => Err(io::Error::other(format!(
                "{} changed while being read (ETag {:?}, size {} became ETag {:?}, size {}): refusing to mix two versions",
                self.display(),
                old.etag.as_deref().unwrap_or("none"),
                old.size,
                etag.as_deref().unwrap_or("none"),
                size
            ))),
        }
    }

    fn map_err(&self, what: &str, e: object_store::Error) -> io::Error {
        match e {
            object_store::Error::Precondition { .. } => io::Error::other(format!(
                "{} changed while being read (ETag no longer matches): refusing to mix two versions",
                self.display()
            )),
            object_store::Error::NotFound { .. } => io::Error::new(
                io::ErrorKind::NotFound,
                format!("can't open {} - not found", self.display()),
            ),
            e => err(&self.url, what, e),
        }
    }

    /// Size of the object (a HEAD unless a response already told it).
    pub fn size(&self) -> io::Result<u64> {
        if let Some(p) = self.pinned() {
            return Ok(p.size);
        }
        let (_, r) = self.get_whole(true)?;
        Ok(r.meta.size)
    }

    /// A GET (or HEAD) of the whole object: its connection and response,
    /// the response's size and ETag checked against the pinned ones.
    fn get_whole(&self, head: bool) -> io::Result<(Arc<Conn>, object_store::GetResult)> {
        let opts = self.options(None, head);
        let c = self.conn()?;
        self.count(1, 0);
        let r =
            c.rt.block_on(c.store.get_opts(&c.path, opts))
                .map_err(|e| self.map_err("can't open", e))?;
        self.check(&r.meta)?;
        Ok((c, r))
    }

    /// The object's Last-Modified time (seconds since the Unix epoch) and
    /// ETag, as pinned by the first response (a HEAD if none came yet).
    pub fn version(&self) -> io::Result<(i64, Option<String>)> {
        self.size()?;
        let p = self.pinned().expect("pinned by size()");
        Ok((p.modified, p.etag))
    }

    /// One ranged GET of `range` (clamped to the object); the bytes returned.
    pub fn get_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        if let Some(p) = self.pinned() {
            if range.start >= p.size {
                return Ok(Vec::new());
            }
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let opts = self.options(Some(GetRange::Bounded(range.clone())), false);
        let c = self.conn()?;
        self.count(1, 0);
        let res = c.rt.block_on(async {
            let r = c.store.get_opts(&c.path, opts).await?;
            let meta = r.meta.clone();
            let got = r.range.clone();
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((meta, got, bytes))
        });
        let (meta, got, bytes) = match res {
            Ok(x) => x,
            // A start at or past the end: EOF, once the size is known.
            Err(e) => {
                let past_end = matches!(&e, object_store::Error::Generic { source, .. }
                    if source.to_string().contains("416") || source.to_string().contains("Range"));
                if past_end && self.size().is_ok_and(|s| range.start >= s) {
                    return Ok(Vec::new());
                }
                return Err(self.map_err(&format!("can't read {range:?} of"), e));
            }
        };
        self.count(0, bytes.len() as u64);
        self.check(&meta)?;
        if got.start != range.start || bytes.len() as u64 != got.end - got.start {
            return Err(io::Error::other(format!(
                "{}: asked for bytes {range:?}, got {got:?}",
                self.display()
            )));
        }
        Ok(bytes.to_vec())
    }

    /// `Read` for the header: 64 KiB first, then ranges that grow (at least
    /// what the caller asks for), so a header up to 64 KiB takes one request
    /// and a larger one usually two.
    pub fn ranged_reader(self: &Arc<Self>) -> RangedReader {
        RangedReader {
            obj: self.clone(),
            pos: 0,
            buf: Vec::new(),
            at: 0,
            next: FIRST_RANGE,
        }
    }

    /// `Read` for `list`/`config`: at most 2 requests for a plain archive's
    /// header (64 KiB, then the rest if `header_size` says more); a compressed
    /// one continues with growing ranges ([`Self::ranged_reader`]).
    pub fn header_reader(self: &Arc<Self>) -> io::Result<Box<dyn Read + Send>> {
        let (first, plain) = self.head()?;
        if plain {
            return Ok(Box::new(io::Cursor::new(first)));
        }
        let mut rest = self.ranged_reader();
        rest.pos = first.len() as u64;
        rest.next = FIRST_RANGE * 2;
        Ok(Box::new(io::Cursor::new(first).chain(rest)))
    }

    /// The first [`FIRST_RANGE`] bytes, and whether they start a plain VMA
    /// archive; if so, extended to its whole header when `header_size` says
    /// it is larger (a second GET). At most 2 requests.
    pub fn head(&self) -> io::Result<(Vec<u8>, bool)> {
        use vma_format::raw::{hdr, HEADER_FIXED_SIZE, MAGIC, MAX_READER_HEADER_SIZE};
        let mut first = self.get_range(0..FIRST_RANGE)?;
        if first.len() < HEADER_FIXED_SIZE || first[..4] != MAGIC {
            return Ok((first, false));
        }
        let got = first.len() as u64;
        let size = u32::from_be_bytes(
            first[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
                .try_into()
                .expect("4 bytes"),
        ) as u64;
        // A hostile size is left to the header parser's error.
        if size > got && size <= MAX_READER_HEADER_SIZE as u64 {
            first.extend(self.get_range(got..size)?);
        }
        Ok((first, true))
    }

    /// `Read` over one streaming GET of the whole object (never seeks;
    /// object_store resumes a broken body with the same ETag only).
    pub fn stream(self: &Arc<Self>) -> io::Result<StreamingReader> {
        let (c, r) = self.get_whole(false)?;
        Ok(StreamingReader {
            obj: self.clone(),
            conn: c,
            stream: Some(r.into_stream()),
            chunk: bytes::Bytes::new(),
        })
    }

    /// The object named like this one plus `suffix` (`<key>.vmaidx`), for
    /// messages.
    pub fn beside_display(&self, suffix: &str) -> String {
        display_url(&format!("{}{suffix}", self.url))
    }

    fn beside_path(c: &Conn, suffix: &str) -> ObjPath {
        ObjPath::from(format!("{}{suffix}", c.path))
    }

    /// The whole object `<key><suffix>` beside this one (a sidecar index),
    /// or `None` if there is none. Not pinned: it is a different object.
    pub fn get_beside(&self, suffix: &str) -> io::Result<Option<Vec<u8>>> {
        let c = self.conn()?;
        let path = Self::beside_path(&c, suffix);
        self.count(1, 0);
        let res = c.rt.block_on(async {
            let r = c.store.get_opts(&path, GetOptions::default()).await?;
            r.bytes().await
        });
        match res {
            Ok(b) => {
                self.count(0, b.len() as u64);
                Ok(Some(b.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(&self.beside_display(suffix), "can't read", e)),
        }
    }

    /// Stores `bytes` as `<key><suffix>` beside this object (one PUT,
    /// replacing any). Only `s3://`: an `http(s)://` server is read-only
    /// here (an error, so the caller keeps its file locally).
    pub fn put_beside(&self, suffix: &str, bytes: &[u8]) -> io::Result<()> {
        let shown = self.beside_display(suffix);
        if !self.url.starts_with("s3://") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{shown}: only s3:// objects are written"),
            ));
        }
        let c = self.conn()?;
        let path = Self::beside_path(&c, suffix);
        self.count(1, 0);
        let payload = object_store::PutPayload::from(bytes.to_vec());
        c.rt.block_on(object_store::ObjectStoreExt::put(&*c.store, &path, payload))
            .map(drop)
            .map_err(|e| err(&shown, "can't write", e))
    }

    /// Deletes `<key><suffix>` beside this object (`s3://` only); `false`
    /// if there was none.
    pub fn delete_beside(&self, suffix: &str) -> io::Result<bool> {
        let shown = self.beside_display(suffix);
        if !self.url.starts_with("s3://") {
            return Ok(false);
        }
        let c = self.conn()?;
        let path = Self::beside_path(&c, suffix);
        self.count(2, 0);
        c.rt.block_on(async {
            match c
                .store
                .get_opts(
                    &path,
                    GetOptions {
                        head: true,
                        ..Default::default()
                    },
                )
                .await
            {
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
                Ok(_) => object_store::ObjectStoreExt::delete(&*c.store, &path)
                    .await
                    .map(|()| true),
            }
        })
        .map_err(|e| err(&shown, "can't delete", e))
    }

    /// Reads at `offset` into `buf`; the body of the [`vma_format::ReadAt`] adapter.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.get_range(offset..offset + buf.len() as u64)?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}

// The thin adapter to vma-format's positional-read trait (one line to rename).
impl vma_format::ReadAt for RemoteObject {
    fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_into(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        RemoteObject::size(self)
    }
}

/// See [`RemoteObject::ranged_reader`].
pub struct RangedReader {
    obj: Arc<RemoteObject>,
    pos: u64,
    buf: Vec<u8>,
    at: usize,
    next: u64,
}

impl Read for RangedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            let len = self.next.max(out.len() as u64);
            self.buf = self.obj.get_range(self.pos..self.pos + len)?;
            self.at = 0;
            self.next = (self.next * 2).min(MAX_RANGE);
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.pos += n as u64;
        Ok(n)
    }
}

/// See [`RemoteObject::stream`].
pub struct StreamingReader {
    obj: Arc<RemoteObject>,
    // The stream's connection, kept even if the object is suspended.
    conn: Arc<Conn>,
    stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    chunk: bytes::Bytes,
}

impl Read for StreamingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(0);
            };
            match self.conn.rt.block_on(stream.next()) {
                Some(Ok(b)) => {
                    self.obj.count(0, b.len() as u64);
                    self.chunk = b
                }
                Some(Err(e)) => {
                    self.stream = None;
                    return Err(self.obj.map_err("can't read", e));
                }
                None => {
                    self.stream = None;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_userinfo() {
        assert_eq!(
            scrub("GET https://bob:hunter2@h.example/a/b failed"),
            "GET https://***@h.example/a/b failed"
        );
        assert_eq!(scrub("s3://bucket/key"), "s3://bucket/key");
        assert_eq!(scrub("no url"), "no url");
    }

    #[test]
    fn remote_names() {
        assert!(is_remote("s3://b/k"));
        assert!(is_remote("https://h/x.vma"));
        assert!(!is_remote("./s3/x.vma"));
        assert!(RemoteObject::open("s3://bucket").is_err());
        assert!(RemoteObject::open("https://host").is_err());
    }
}
