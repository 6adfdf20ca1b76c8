//! Listening and connection threads: [`Listener`] (a Unix socket or a TCP
//! address), [`Server`] (one thread per connection, a bounded number of
//! them) and [`StopHandle`] (ends the accept loop, closes every connection,
//! removes the socket file).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::conn::{serve_stream, ConnConfig};
use crate::Exports;

enum Kind {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, SocketAddr),
}

/// A bound, listening socket.
pub struct Listener {
    kind: Kind,
    stop: StopHandle,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Stops a [`Server::serve`] loop from another thread (or a signal thread).
#[derive(Clone, Debug)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopped: AtomicBool,
    wake: Wake,
}

#[derive(Debug)]
enum Wake {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl StopHandle {
    /// Asks the server to stop: no new connections, open ones are closed.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        // accept() blocks: a connection of our own wakes it up.
        let _ = match &self.inner.wake {
            Wake::Unix(p) => UnixStream::connect(p).map(drop),
            Wake::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(match a {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                TcpStream::connect(a).map(drop)
            }
        };
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

impl Listener {
    /// Listens on a Unix socket at `path`. A stale socket file (nobody
    /// listening) is replaced; a live one is an "address in use" error.
    pub fn unix(path: &Path) -> io::Result<Listener> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                match UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{}: a server is already listening there", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)?;
                    }
                    Err(_) => {}
                }
            }
        }
        let l = UnixListener::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Listener {
            kind: Kind::Unix(l, path.to_path_buf()),
            stop: StopHandle::new(Wake::Unix(path.to_path_buf())),
        })
    }

    /// Listens on a TCP address (port 0: any free port, see [`Listener::tcp_addr`]).
    pub fn tcp(addr: SocketAddr) -> io::Result<Listener> {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
        let addr = l.local_addr()?;
        Ok(Listener {
            kind: Kind::Tcp(l, addr),
            stop: StopHandle::new(Wake::Tcp(addr)),
        })
    }

    /// The handle that stops a server serving this listener.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            Kind::Tcp(_, a) => Some(*a),
            Kind::Unix(..) => None,
        }
    }

    /// `unix:PATH` or `tcp:ADDR:PORT`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Unix(_, p) => format!("unix:{}", p.display()),
            Kind::Tcp(_, a) => format!("tcp:{a}"),
        }
    }

    /// The NBD URI of export `name` on this listener.
    pub fn uri(&self, name: &str) -> String {
        match &self.kind {
            Kind::Unix(_, p) => format!("nbd+unix:///{name}?socket={}", p.display()),
            Kind::Tcp(_, a) => format!("nbd://{a}/{name}"),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match &self.kind {
            Kind::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Kind::Tcp(l, _) => l.accept().map(|(s, _)| {
                // Small replies (write acks, block status) must not wait for Nagle.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

impl StopHandle {
    fn new(wake: Wake) -> StopHandle {
        StopHandle {
            inner: Arc::new(StopInner {
                stopped: AtomicBool::new(false),
                wake,
            }),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// Per-connection limits and the log.
    pub conn: ConnConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 64,
            conn: ConnConfig::default(),
        }
    }
}

/// An NBD server over a set of exports.
#[derive(Debug, Clone)]
pub struct Server {
    exports: Arc<Exports>,
    config: ServerConfig,
}

/// A server running on its own thread (see [`Server::spawn`]).
#[derive(Debug)]
pub struct Running {
    stop: StopHandle,
    thread: JoinHandle<io::Result<()>>,
}

impl Running {
    /// Stops the server and waits for it.
    pub fn stop(self) -> io::Result<()> {
        self.stop.stop();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

impl Server {
    /// A server for `exports`.
    pub fn new(exports: Exports, config: ServerConfig) -> Server {
        Server {
            exports: Arc::new(exports),
            config,
        }
    }

    fn log(&self, msg: &str) {
        self.config.conn.log.as_ref().inspect(|l| l(msg));
    }

    /// Serves `listener` on a new thread.
    pub fn spawn(self, listener: Listener) -> io::Result<Running> {
        let stop = listener.stop_handle();
        let thread = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || self.serve(listener))?;
        Ok(Running { stop, thread })
    }

    /// Accepts and serves connections (a thread each) until the listener's
    /// [`StopHandle`] is used; then closes every connection, waits for their
    /// threads and removes a Unix socket file.
    pub fn serve(&self, listener: Listener) -> io::Result<()> {
        let stop = listener.stop_handle();
        let active = Arc::new(AtomicUsize::new(0));
        let open: Arc<Mutex<HashMap<u64, Stream>>> = Arc::default();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        let result = loop {
            let stream = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_transient(&e) => {
                    self.log(&format!("accept: {e}"));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(e) => break Err(e),
            };
            if stop.is_stopped() {
                break Ok(());
            }
            threads.retain(|t| !t.is_finished());
            if active.load(Ordering::SeqCst) >= self.config.max_connections {
                self.log(&format!(
                    "refusing a connection: {} already open (the limit)",
                    self.config.max_connections
                ));
                continue;
            }
            next_id += 1;
            let id = next_id;
            let (reader, registered) = match (stream.try_clone(), stream.try_clone()) {
                (Ok(r), Ok(c)) => (r, c),
                (Err(e), _) | (_, Err(e)) => {
                    self.log(&format!("connection {id}: {e}"));
                    continue;
                }
            };
            open.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, registered);
            active.fetch_add(1, Ordering::SeqCst);
            let exports = self.exports.clone();
            let conn_cfg = self.config.conn.clone();
            let (active2, open2) = (active.clone(), open.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-conn-{id}"))
                .spawn(move || {
                    if let Err(e) = serve_stream(reader, stream, &exports, &conn_cfg) {
                        if !is_hangup(&e) {
                            if let Some(l) = &conn_cfg.log {
                                l(&format!("connection {id} closed: {e}"));
                            }
                        }
                    }
                    open2.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    active2.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.log(&format!("connection {id}: no thread: {e}"));
                    open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        };
        for s in open.lock().unwrap_or_else(|e| e.into_inner()).values() {
            s.shutdown();
        }
        for t in threads {
            let _ = t.join();
        }
        if let Kind::Unix(_, path) = &listener.kind {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

/// Errors of accept() that concern one connection or a passing shortage.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc_errno::ECONNABORTED
                | libc_errno::EMFILE
                | libc_errno::ENFILE
                | libc_errno::ENOBUFS
                | libc_errno::ENOMEM
        )
    )
}

/// A peer that went away is not worth a log line.
fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// The Linux errno values used above (no libc dependency for five numbers).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
    pub const ECONNABORTED: i32 = 103;
}
