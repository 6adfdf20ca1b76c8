//! A small synchronous NBD client: what `vma create` needs to read a device
//! from an NBD export (pull mode: libvirt's and Proxmox's backup exports,
//! `qemu-nbd`).
//!
//! Owns the URI forms (`nbd+unix:///EXPORT?socket=PATH`,
//! `nbd://HOST[:PORT]/EXPORT`), the fixed newstyle handshake (structured
//! replies and the `base:allocation` meta context when the server has them,
//! OPT_GO with INFO_BLOCK_SIZE) and READ / BLOCK_STATUS, one request at a
//! time. Everything the server says is checked: a malformed or unexpected
//! reply is an error naming what was wrong, never a panic or a huge
//! allocation. Wire constants come from `vma_nbd::proto`.
//!
//! Also [`QemuNbdSource`]: images in formats QEMU reads (vmdk, vdi, vhdx,
//! ...) are read through a `qemu-nbd` that `vma create` starts itself, so
//! they need no temporary raw copy.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use vma_nbd::proto::*;

/// Largest read request we send (also bounded by the server's maximum).
const MAX_READ: u32 = 4 << 20;
/// Largest block status request.
const MAX_STATUS: u64 = 1 << 30;
/// Largest option reply or structured chunk we accept that is not data.
const MAX_REPLY: u32 = 1 << 20;

const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;
const NBD_ERR_BIT: u32 = 1 << 31;

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(String),
    Tcp(String),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub address: Address,
    pub export: String,
}

/// Decodes `%XX` escapes.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Uri {
    /// Whether `s` looks like an NBD URI (so it is not a file name).
    pub fn is_nbd(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://")
    }

    /// Parses `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]/EXPORT`.
    pub fn parse(s: &str) -> Result<Uri, String> {
        let bad = |why: &str| format!("invalid NBD URI '{s}': {why}");
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| bad("no ?socket=PATH"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad(
                    "a Unix socket URI has no host (nbd+unix:///EXPORT?socket=PATH)",
                ));
            }
            let export = unescape(path.strip_prefix('/').unwrap_or(""))
                .ok_or_else(|| bad("bad %-escape"))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("no socket= parameter"))?;
            let socket = unescape(socket).ok_or_else(|| bad("bad %-escape"))?;
            if socket.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Uri {
                address: Address::Unix(socket),
                export,
            });
        }
        if let Some(rest) = s.strip_prefix("nbd://") {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() {
                return Err(bad("no host"));
            }
            let host = if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !host.ends_with(']')
            {
                host.to_string()
            } else {
                format!("{host}:10809")
            };
            let export = unescape(path).ok_or_else(|| bad("bad %-escape"))?;
            return Ok(Uri {
                address: Address::Tcp(host),
                export,
            });
        }
        Err(bad("expected nbd:// or nbd+unix://"))
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A connected export.
pub struct Client {
    r: BufReader<Stream>,
    w: BufWriter<Stream>,
    name: String,
    size: u64,
    structured: bool,
    /// Our `base:allocation` context id, if the server granted it.
    alloc: Option<u32>,
    max_read: u32,
    cookie: u64,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Client {
    /// Connects to `uri` and negotiates.
    pub fn connect(uri: &Uri) -> io::Result<Client> {
        let (a, b) = match &uri.address {
            Address::Unix(p) => {
                let s = UnixStream::connect(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("NBD socket {p}: {e}")))?;
                (Stream::Unix(s.try_clone()?), Stream::Unix(s))
            }
            Address::Tcp(h) => {
                let s = TcpStream::connect(h)
                    .map_err(|e| io::Error::new(e.kind(), format!("NBD server {h}: {e}")))?;
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s.try_clone()?), Stream::Tcp(s))
            }
        };
        let mut c = Client {
            r: BufReader::new(a),
            w: BufWriter::new(b),
            name: uri.export.clone(),
            size: 0,
            structured: false,
            alloc: None,
            max_read: MAX_READ,
            cookie: 0,
        };
        c.handshake()?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), "the NBD server closed the connection")
            } else {
                e
            }
        })
    }

    fn read_vec(&mut self, len: u32, what: &str) -> io::Result<Vec<u8>> {
        if len > MAX_REPLY {
            return Err(proto_err(format!(
                "NBD server sent a {len}-byte {what} (at most {MAX_REPLY})"
            )));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        self.w.write_all(&IHAVEOPT.to_be_bytes())?;
        self.w.write_all(&opt.to_be_bytes())?;
        self.w.write_all(&(data.len() as u32).to_be_bytes())?;
        self.w.write_all(data)?;
        self.w.flush()
    }

    /// One option reply: (type, data).
    fn option_reply(&mut self, opt: u32) -> io::Result<(u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        self.read_exact(&mut h)?;
        if be_u64(&h) != REPLY_MAGIC {
            return Err(proto_err("NBD server: bad option reply magic"));
        }
        if be_u32(&h[8..]) != opt {
            return Err(proto_err(format!(
                "NBD server answered option {} to option {opt}",
                be_u32(&h[8..])
            )));
        }
        let typ = be_u32(&h[12..]);
        let data = self.read_vec(be_u32(&h[16..]), "option reply")?;
        Ok((typ, data))
    }

    fn handshake(&mut self) -> io::Result<()> {
        let mut h = [0u8; 18];
        self.read_exact(&mut h)?;
        if be_u64(&h) != NBDMAGIC || be_u64(&h[8..]) != IHAVEOPT {
            return Err(proto_err(
                "not an NBD server speaking the newstyle handshake (bad magic)",
            ));
        }
        let flags = be_u16(&h[16..]);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto_err("NBD server lacks the fixed newstyle handshake"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let mut cf = CLIENT_FIXED_NEWSTYLE;
        if no_zeroes {
            cf |= CLIENT_NO_ZEROES;
        }
        self.w.write_all(&cf.to_be_bytes())?;

        self.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (typ, _) = self.option_reply(OPT_STRUCTURED_REPLY)?;
        self.structured = typ == REP_ACK;

        if self.structured {
            let mut d = Vec::new();
            d.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
            d.extend_from_slice(self.name.as_bytes());
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.send_option(OPT_SET_META_CONTEXT, &d)?;
            loop {
                let (typ, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
                match typ {
                    REP_META_CONTEXT if data.len() >= 4 => {
                        if &data[4..] == BASE_ALLOCATION.as_bytes() {
                            self.alloc = Some(be_u32(&data));
                        }
                    }
                    REP_ACK => break,
                    // Not supported: read everything as data.
                    t if t & NBD_ERR_BIT != 0 => break,
                    t => {
                        return Err(proto_err(format!(
                            "NBD server: unexpected reply {t} to SET_META_CONTEXT"
                        )))
                    }
                }
            }
        }

        let mut d = Vec::new();
        d.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        d.extend_from_slice(self.name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(OPT_GO, &d)?;
        let mut got_size = false;
        loop {
            let (typ, data) = self.option_reply(OPT_GO)?;
            match typ {
                REP_INFO if data.len() >= 2 => match be_u16(&data) {
                    INFO_EXPORT if data.len() >= 12 => {
                        self.size = be_u64(&data[2..]);
                        got_size = true;
                    }
                    INFO_BLOCK_SIZE if data.len() >= 14 => {
                        let max = be_u32(&data[10..]);
                        if max > 0 {
                            self.max_read = self.max_read.min(max);
                        }
                    }
                    _ => {}
                },
                REP_INFO => {}
                REP_ACK => break,
                t if t & NBD_ERR_BIT != 0 => {
                    let msg = String::from_utf8_lossy(&data).into_owned();
                    let what = if t == REP_ERR_UNKNOWN {
                        "no such export".to_string()
                    } else {
                        format!("refused (error {t:#x})")
                    };
                    let said = if msg.is_empty() {
                        String::new()
                    } else {
                        format!(" (the server says: {msg})")
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("NBD export '{}': {what}{said}", self.name),
                    ));
                }
                t => return Err(proto_err(format!("NBD server: unexpected reply {t} to GO"))),
            }
        }
        if !got_size {
            return Err(proto_err(
                "NBD server: GO succeeded without the export size",
            ));
        }
        // A 4 KiB-aligned read limit keeps our chunks whole blocks.
        self.max_read = (self.max_read & !4095).max(4096);
        Ok(())
    }

    fn request(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> io::Result<u64> {
        self.cookie += 1;
        let mut b = [0u8; REQUEST_SIZE];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        self.w.write_all(&b)?;
        self.w.flush()?;
        Ok(self.cookie)
    }

    fn error_reply(&self, what: &str, offset: u64, errno: u32, msg: &str) -> io::Error {
        let kind = io::Error::from_raw_os_error(errno as i32);
        io::Error::new(
            kind.kind(),
            format!(
                "NBD export '{}': {what} at offset {offset} failed: {kind}{}{msg}",
                self.name,
                if msg.is_empty() { "" } else { ": " }
            ),
        )
    }

    /// Reads one structured chunk header: (flags, type, length).
    fn chunk(&mut self, cookie: u64) -> io::Result<(u16, u16, u32)> {
        let mut h = [0u8; 20];
        self.read_exact(&mut h)?;
        if be_u32(&h) != STRUCTURED_REPLY_MAGIC {
            return Err(proto_err(format!(
                "NBD server: bad structured reply magic {:#x}",
                be_u32(&h)
            )));
        }
        if be_u64(&h[8..]) != cookie {
            return Err(proto_err("NBD server: reply to a request we did not send"));
        }
        Ok((be_u16(&h[4..]), be_u16(&h[6..]), be_u32(&h[16..])))
    }

    fn chunk_error(&mut self, what: &str, offset: u64, len: u32) -> io::Error {
        match self.read_vec(len, "error chunk") {
            Ok(d) if d.len() >= 6 => {
                let errno = be_u32(&d);
                let mlen = (be_u16(&d[4..]) as usize).min(d.len() - 6);
                let msg = String::from_utf8_lossy(&d[6..6 + mlen]).into_owned();
                self.error_reply(what, offset, errno, &msg)
            }
            Ok(_) => proto_err("NBD server: short error chunk"),
            Err(e) => e,
        }
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_read as usize);
            let pos = offset + done as u64;
            self.read_one(&mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn read_one(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cookie = self.request(CMD_READ, 0, offset, buf.len() as u32)?;
        if !self.structured {
            let mut h = [0u8; 16];
            self.read_exact(&mut h)?;
            if be_u32(&h) != SIMPLE_REPLY_MAGIC || be_u64(&h[8..]) != cookie {
                return Err(proto_err("NBD server: bad simple reply"));
            }
            let errno = be_u32(&h[4..]);
            if errno != 0 {
                return Err(self.error_reply("read", offset, errno, ""));
            }
            return self.read_exact(buf);
        }
        let end = offset + buf.len() as u64;
        // Chunks must not overlap (proto.md), so their lengths add up to ours.
        let mut covered = 0u64;
        loop {
            let (flags, typ, len) = self.chunk(cookie)?;
            match typ {
                REPLY_TYPE_OFFSET_DATA => {
                    let mut o = [0u8; 8];
                    if len < 8 {
                        return Err(proto_err("NBD server: short data chunk"));
                    }
                    self.read_exact(&mut o)?;
                    let at = be_u64(&o);
                    let n = u64::from(len - 8);
                    if at < offset || at.checked_add(n).is_none_or(|e| e > end) {
                        return Err(proto_err(format!(
                            "NBD server: data chunk at {at} (+{n}) outside the read of {offset}..{end}"
                        )));
                    }
                    let s = (at - offset) as usize;
                    self.read_exact(&mut buf[s..s + n as usize])?;
                    covered += n;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let d = self.read_vec(len, "hole chunk")?;
                    if d.len() != 12 {
                        return Err(proto_err("NBD server: bad hole chunk"));
                    }
                    let (at, n) = (be_u64(&d), u64::from(be_u32(&d[8..])));
                    if at < offset || at.checked_add(n).is_none_or(|e| e > end) {
                        return Err(proto_err("NBD server: hole chunk outside the read"));
                    }
                    let s = (at - offset) as usize;
                    buf[s..s + n as usize].fill(0);
                    covered += n;
                }
                REPLY_TYPE_NONE => {}
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    // The read failed: so does the device (no retry).
                    return Err(self.chunk_error("read", offset, len));
                }
                t => {
                    return Err(proto_err(format!(
                        "NBD server: unexpected chunk type {t} for a read"
                    )))
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                if covered != buf.len() as u64 {
                    return Err(proto_err(format!(
                        "NBD server: read of {} bytes at offset {offset} answered with {covered} bytes",
                        buf.len()
                    )));
                }
                return Ok(());
            }
        }
    }

    /// From `offset` (< size): whether the following bytes are data, and
    /// where that run ends (> offset). Without `base:allocation`, all data.
    pub fn region(&mut self, offset: u64) -> io::Result<(bool, u64)> {
        let Some(ctx) = self.alloc else {
            return Ok((true, self.size));
        };
        let len = (self.size - offset).min(MAX_STATUS) as u32;
        let cookie = self.request(CMD_BLOCK_STATUS, 0, offset, len)?;
        let mut result: Option<(bool, u64)> = None;
        loop {
            let (flags, typ, clen) = self.chunk(cookie)?;
            match typ {
                REPLY_TYPE_BLOCK_STATUS => {
                    let d = self.read_vec(clen, "block status chunk")?;
                    if d.len() < 12 || (d.len() - 4) % 8 != 0 {
                        return Err(proto_err("NBD server: malformed block status chunk"));
                    }
                    if be_u32(&d) == ctx && result.is_none() {
                        let mut pos = offset;
                        let mut state = None;
                        for e in d[4..].chunks(8) {
                            let (l, f) = (u64::from(be_u32(e)), be_u32(&e[4..]));
                            let data = f & STATE_ZERO == 0;
                            if l == 0 || state.is_some_and(|s| s != data) {
                                break;
                            }
                            state = Some(data);
                            pos += l;
                        }
                        if let Some(s) = state {
                            result = Some((s, pos.min(self.size).max(offset + 1)));
                        }
                    }
                }
                REPLY_TYPE_NONE => {}
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    return Err(self.chunk_error("block status", offset, clen));
                }
                t => {
                    return Err(proto_err(format!(
                        "NBD server: unexpected chunk type {t} for block status"
                    )))
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        result.ok_or_else(|| proto_err("NBD server: block status without base:allocation"))
    }
}

/// A `vma create` device read from an NBD export.
pub struct NbdSource(Client);

impl NbdSource {
    /// Connects to the export at `uri`.
    pub fn open(uri: &str) -> anyhow::Result<NbdSource> {
        let u = Uri::parse(uri).map_err(anyhow::Error::msg)?;
        Ok(NbdSource(Client::connect(&u)?))
    }
}

impl crate::create::source::Source for NbdSource {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn region(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        self.0.region(pos)
    }
    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.0.read_at(buf, pos)
    }
}

/// A device in a format only QEMU reads, served by a private `qemu-nbd`.
pub struct QemuNbdSource {
    client: Option<Client>,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl QemuNbdSource {
    /// Starts `qemu-nbd` (read-only, format `fmt`) on `path` and connects.
    pub fn start(fmt: &str, path: &std::path::Path, verbose: bool) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        use std::process::{Command, Stdio};
        let missing = |e: io::Error, tool: &str| {
            if e.kind() == io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "format '{fmt}' of {} needs {tool}, which is not installed (Debian: apt-get \
                     install qemu-utils); raw and qcow2 are read without it",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("can't run {tool}"))
            }
        };
        // qemu-img's clear word when the file is not in that format.
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "-f", fmt])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| missing(e, "qemu-img"))?;
        if !info.status.success() {
            bail!(
                "qemu-img info -f {fmt} {} failed ({}): {}",
                path.display(),
                info.status,
                String::from_utf8_lossy(&info.stderr).trim()
            );
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("vma-create-{}-{nanos:x}", std::process::id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("can't create {}", dir.display()))?;
        }
        let sock = dir.join("nbd.sock");
        if verbose {
            eprintln!("reading {} ({fmt}) through qemu-nbd", path.display());
        }
        let child = Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--format",
                fmt,
                "--export-name",
                "img",
                "--socket",
            ])
            .arg(&sock)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(missing(e, "qemu-nbd"));
            }
        };
        // From here on, drop stops qemu-nbd and removes the directory.
        let mut me = QemuNbdSource {
            client: None,
            child,
            dir,
        };
        let uri = Uri {
            address: Address::Unix(sock.to_string_lossy().into_owned()),
            export: "img".into(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(st) = me.child.try_wait().context("waiting for qemu-nbd")? {
                let mut err = String::new();
                if let Some(mut e) = me.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "qemu-nbd -f {fmt} {} exited ({st}): {}",
                    path.display(),
                    err.trim()
                );
            }
            if sock.exists() {
                match Client::connect(&uri) {
                    Ok(c) => {
                        me.client = Some(c);
                        return Ok(me);
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(anyhow::Error::new(e).context("qemu-nbd")),
                }
            }
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
            if std::time::Instant::now() > deadline {
                bail!("qemu-nbd did not start listening within 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn client(&mut self) -> io::Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| io::Error::other("qemu-nbd is not connected"))
    }
}

impl crate::create::source::Source for QemuNbdSource {
    fn size(&self) -> u64 {
        self.client.as_ref().map_or(0, Client::size)
    }
    fn region(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        self.client()?.region(pos)
    }
    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.client()?.read_at(buf, pos)
    }
}

impl Drop for QemuNbdSource {
    fn drop(&mut self) {
        // Our disconnect ends a qemu-nbd without --persistent; be sure anyway.
        drop(self.client.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A polite goodbye; errors do not matter any more.
        if self.request(CMD_DISC, 0, 0, 0).is_ok() {
            let _ = self.w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    /// A socket path of its own, removed on drop.
    struct SockPath(PathBuf);

    impl SockPath {
        fn new() -> SockPath {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            SockPath(std::env::temp_dir().join(format!(
                "vma-nbd-client-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )))
        }
    }

    impl Drop for SockPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A scripted server: a proper handshake (structured replies and
    /// base:allocation granted, size 1 MiB), then `reply` answers the first
    /// request with raw bytes (the cookie of our first request is 1).
    fn fake_server(reply: Vec<u8>) -> (SockPath, Uri) {
        let dir = SockPath::new();
        let path = dir.0.clone();
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut w = Vec::new();
            w.extend_from_slice(&NBDMAGIC.to_be_bytes());
            w.extend_from_slice(&IHAVEOPT.to_be_bytes());
            w.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            s.write_all(&w).unwrap();
            let mut cf = [0u8; 4];
            s.read_exact(&mut cf).unwrap();
            let rep = |s: &mut UnixStream, opt: u32, typ: u32, data: &[u8]| {
                let mut b = Vec::new();
                b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
                b.extend_from_slice(&opt.to_be_bytes());
                b.extend_from_slice(&typ.to_be_bytes());
                b.extend_from_slice(&(data.len() as u32).to_be_bytes());
                b.extend_from_slice(data);
                s.write_all(&b).unwrap();
            };
            loop {
                let mut h = [0u8; 16];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let opt = be_u32(&h[8..]);
                let mut d = vec![0u8; be_u32(&h[12..]) as usize];
                s.read_exact(&mut d).unwrap();
                match opt {
                    OPT_SET_META_CONTEXT => {
                        let mut m = 1u32.to_be_bytes().to_vec();
                        m.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        rep(&mut s, opt, REP_META_CONTEXT, &m);
                        rep(&mut s, opt, REP_ACK, &[]);
                    }
                    OPT_GO => {
                        let mut i = INFO_EXPORT.to_be_bytes().to_vec();
                        i.extend_from_slice(&(1u64 << 20).to_be_bytes());
                        i.extend_from_slice(&TF_HAS_FLAGS.to_be_bytes());
                        rep(&mut s, opt, REP_INFO, &i);
                        rep(&mut s, opt, REP_ACK, &[]);
                        break;
                    }
                    _ => rep(&mut s, opt, REP_ACK, &[]),
                }
            }
            let mut req = [0u8; REQUEST_SIZE];
            if s.read_exact(&mut req).is_ok() {
                let _ = s.write_all(&reply);
            }
            // Hold the connection until the client is done.
            let _ = s.read(&mut [0u8; 64]);
        });
        let uri = Uri {
            address: Address::Unix(path.to_string_lossy().into_owned()),
            export: "x".into(),
        };
        (dir, uri)
    }

    fn chunk(flags: u16, typ: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&typ.to_be_bytes());
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 8]);
        let mut short = 0u64.to_be_bytes().to_vec();
        short.extend_from_slice(&[1u8; 100]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // Data at an offset that overflows.
            (
                chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, &huge),
                "outside the read",
            ),
            // Done after 100 of 4096 bytes.
            (
                chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, &short),
                "answered with 100 bytes",
            ),
            // A chunk type a read never gets.
            (
                chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &[0; 12]),
                "unexpected chunk type",
            ),
            // An error chunk.
            (
                chunk(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_ERROR,
                    &[0, 0, 0, 5, 0, 2, b'n', b'o'],
                ),
                "at offset 0 failed",
            ),
            // Garbage.
            (vec![0xff; 20], "bad structured reply magic"),
        ];
        for (reply, want) in cases {
            let (_dir, uri) = fake_server(reply);
            let mut c = Client::connect(&uri).unwrap();
            assert_eq!(c.size(), 1 << 20);
            let mut buf = vec![0u8; 4096];
            let e = c.read_at(&mut buf, 0).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        // A block status without descriptors.
        let (_dir, uri) = fake_server(chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &[0; 4]));
        let e = Client::connect(&uri).unwrap().region(0).unwrap_err();
        assert!(e.to_string().contains("malformed block status"), "{e}");
    }

    #[test]
    fn not_an_nbd_server_is_a_clear_error() {
        let dir = SockPath::new();
        let path = dir.0.clone();
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let uri = Uri {
            address: Address::Unix(path.to_string_lossy().into_owned()),
            export: String::new(),
        };
        let e = Client::connect(&uri).err().unwrap();
        assert!(e.to_string().contains("not an NBD server"), "{e}");
    }

    #[test]
    fn parses_uris() {
        assert_eq!(
            Uri::parse("nbd+unix:///drive-scsi0?socket=/run/x.sock").unwrap(),
            Uri {
                address: Address::Unix("/run/x.sock".into()),
                export: "drive-scsi0".into()
            }
        );
        assert_eq!(
            Uri::parse("nbd://localhost/e%20x").unwrap(),
            Uri {
                address: Address::Tcp("localhost:10809".into()),
                export: "e x".into()
            }
        );
        assert_eq!(
            Uri::parse("nbd://127.0.0.1:1234/").unwrap().address,
            Address::Tcp("127.0.0.1:1234".into())
        );
        for bad in [
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd:///x",
            "http://x",
            "nbd+unix:///x?socket=",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
