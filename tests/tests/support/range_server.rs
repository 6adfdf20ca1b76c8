//! A small HTTP/1.1 range server written for the tests (`mod range_server;`
//! through `#[path]`): one object, request counting, and injected
//! misbehaviour (5xx answers, a replaced object, a body cut short, a delay
//! before every answer).
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the HTTP range server serves and how it misbehaves.
pub struct HttpState {
    pub data: Vec<u8>,
    pub etag: String,
    /// Answer this many requests with 503 first.
    pub fail: usize,
    /// After this many successful GETs, replace the object (new bytes, new ETag).
    pub replace_after: Option<(usize, Vec<u8>)>,
    pub gets: usize,
    /// Send at most this many body bytes of a GET, then drop the connection
    /// (a server that dies mid-read).
    pub cut: Option<usize>,
    /// Answer each request after this long (a slow server).
    pub delay: Duration,
    /// The object's path; anything else is 404.
    path: String,
}

/// A small HTTP/1.1 server for one object (at `/d/x.vma` unless told): HEAD, GET with
/// `Range: bytes=A-B`, `If-Match` (412), ETag. Counts every request.
pub struct RangeServer {
    pub port: u16,
    pub state: Arc<Mutex<HttpState>>,
    pub requests: Arc<AtomicUsize>,
}

impl RangeServer {
    pub fn start(data: Vec<u8>) -> RangeServer {
        RangeServer::start_at(data, "/d/x.vma")
    }

    /// [`RangeServer::start`] of an object at `path`.
    pub fn start_at(data: Vec<u8>, path: &str) -> RangeServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(HttpState {
            data,
            etag: "\"v1\"".into(),
            fail: 0,
            replace_after: None,
            gets: 0,
            cut: None,
            delay: Duration::ZERO,
            path: path.into(),
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (st, rq) = (state.clone(), requests.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let (st, rq) = (st.clone(), rq.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(c, &st, &rq);
                });
            }
        });
        RangeServer {
            port,
            state,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}{}",
            self.port,
            self.state.lock().unwrap().path
        )
    }
}

fn serve_one(mut c: TcpStream, st: &Mutex<HttpState>, rq: &AtomicUsize) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let (mut range, mut if_match) = (None, None);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-match" => if_match = Some(v.trim().to_string()),
                _ => {}
            }
        }
        rq.fetch_add(1, Ordering::SeqCst);
        let delay = st.lock().unwrap().delay;
        std::thread::sleep(delay);
        let mut s = st.lock().unwrap();
        let reply = |c: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
            write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            )?;
            if method != "HEAD" {
                c.write_all(body)?;
            }
            c.flush()
        };
        if s.fail > 0 {
            s.fail -= 1;
            reply(&mut c, "503 Service Unavailable", "", b"busy")?;
            continue;
        }
        if path != s.path {
            reply(&mut c, "404 Not Found", "", b"no")?;
            continue;
        }
        if let Some(m) = &if_match {
            if *m != s.etag {
                reply(&mut c, "412 Precondition Failed", "", b"")?;
                continue;
            }
        }
        let len = s.data.len();
        let etag = s.etag.clone();
        let (status, body, extra) = match range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
        {
            Some((a, b)) => {
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    len - 1
                } else {
                    b.parse::<usize>().unwrap().min(len - 1)
                };
                if a >= len {
                    reply(
                        &mut c,
                        "416 Range Not Satisfiable",
                        &format!("Content-Range: bytes */{len}\r\n"),
                        b"",
                    )?;
                    continue;
                }
                (
                    "206 Partial Content",
                    s.data[a..=b].to_vec(),
                    format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
                )
            }
            None => ("200 OK", s.data.clone(), String::new()),
        };
        if method == "GET" {
            s.gets += 1;
            if let Some((n, _)) = &s.replace_after {
                if s.gets >= *n {
                    let (_, new) = s.replace_after.take().unwrap();
                    s.data = new;
                    s.etag = "\"v2\"".into();
                }
            }
        }
        let cut = s.cut.filter(|_| method == "GET");
        drop(s);
        if let Some(n) = cut {
            write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n{extra}\r\n",
                body.len()
            )?;
            c.write_all(&body[..n.min(body.len())])?;
            return Ok(());
        }
        reply(
            &mut c,
            status,
            &format!("ETag: {etag}\r\nAccept-Ranges: bytes\r\n{extra}"),
            &body,
        )?;
    }
}
