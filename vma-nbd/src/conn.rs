//! One NBD connection: the fixed newstyle handshake (option haggling) and
//! then the transmission phase, over any byte stream (`Read` + `Write`), so
//! the fuzz target and unit tests drive it without a socket.
//!
//! Requests are handled one at a time, in order. Malformed input that
//! cannot be resynchronised (a wrong magic, an oversized EXPORT_NAME) ends the
//! connection with an error; a bad request that can be skipped (unknown
//! command, out of bounds, too large) gets an NBD error reply and the
//! connection goes on. Memory per connection is bounded by the option limit
//! and the advertised maximum payload.

use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;

use crate::proto::*;
use crate::{errno_of, Export, Exports};

/// Most status descriptors in one BLOCK_STATUS chunk (the protocol's bound).
const MAX_DESCRIPTORS: usize = 1 << 20;

/// A log sink for per-connection messages (errors of the export, protocol errors).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Limits and logging of one connection.
#[derive(Clone)]
pub struct ConnConfig {
    /// Longest option data read into memory; longer options are skipped
    /// (NBD_REP_ERR_TOO_BIG).
    pub max_option_len: u32,
    /// Where export errors (e.g. the reason of an EIO) are reported.
    pub log: Option<Log>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            max_option_len: 64 << 10,
            log: None,
        }
    }
}

impl std::fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnConfig")
            .field("max_option_len", &self.max_option_len)
            .field("log", &self.log.is_some())
            .finish()
    }
}

impl ConnConfig {
    fn log(&self, msg: &str) {
        if let Some(l) = &self.log {
            l(msg);
        }
    }
}

fn protocol(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads exactly `buf`, or nothing at all (a clean end): `Ok(false)` if the
/// stream ends before the first byte.
fn read_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads and drops `n` bytes (a payload we will not keep), in bounded memory.
fn discard<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let got = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if got < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn transmission_flags(e: &dyn Export) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH;
    if e.read_only() {
        // Nothing changes, so every connection sees the same data.
        f |= TF_READ_ONLY | TF_CAN_MULTI_CONN;
    } else {
        f |= TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    f
}

/// Negotiated state of a connection.
#[derive(Default)]
struct State {
    structured: bool,
    no_zeroes: bool,
    /// The export for which `base:allocation` was selected, if any.
    meta_for: Option<String>,
}

/// Serves one connection on `r`/`w` (the two halves of one stream) until the
/// client disconnects. `Ok` for a clean end (ABORT, DISC, EOF between
/// messages); `Err` for I/O errors and protocol errors that close the
/// connection (the message says which).
pub fn serve_stream<R: Read, W: Write>(
    mut r: R,
    w: W,
    exports: &Exports,
    cfg: &ConnConfig,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let mut cf = [0u8; 4];
    if !read_or_eof(&mut r, &mut cf)? {
        return Ok(());
    }
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(protocol(format!(
            "unknown client flags {client_flags:#x} in the handshake"
        )));
    }
    let mut st = State {
        no_zeroes: client_flags & CLIENT_NO_ZEROES != 0,
        ..State::default()
    };
    let Some((name, export)) = negotiate(&mut r, &mut w, exports, cfg, &mut st)? else {
        return Ok(());
    };
    let meta = st.meta_for.as_deref() == Some(name.as_str());
    transmission(&mut r, &mut w, &*export, cfg, st.structured, meta)
}

fn opt_reply<W: Write>(w: &mut W, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 20];
    h[0..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&opt.to_be_bytes());
    h[12..16].copy_from_slice(&kind.to_be_bytes());
    h[16..20].copy_from_slice(&(data.len() as u32).to_be_bytes());
    w.write_all(&h)?;
    w.write_all(data)
}

fn with_len(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn meta_reply<W: Write>(w: &mut W, opt: u32, id: u32) -> io::Result<()> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
    opt_reply(w, opt, REP_META_CONTEXT, &d)
}

/// Option haggling; returns the export chosen by GO / EXPORT_NAME, or `None`
/// if the client aborted or went away.
fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
    cfg: &ConnConfig,
    st: &mut State,
) -> io::Result<Option<(String, Arc<dyn Export>)>> {
    loop {
        w.flush()?;
        let mut h = [0u8; 16];
        if !read_or_eof(r, &mut h)? {
            return Ok(None);
        }
        let magic = u64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
        if magic != IHAVEOPT {
            return Err(protocol(format!(
                "bad option magic {magic:#018x} in the handshake"
            )));
        }
        let opt = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
        if len > cfg.max_option_len {
            if opt == OPT_EXPORT_NAME {
                return Err(protocol(format!(
                    "EXPORT_NAME of {len} bytes (limit {})",
                    cfg.max_option_len
                )));
            }
            discard(r, u64::from(len))?;
            opt_reply(w, opt, REP_ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        if len > 0 && !read_or_eof(r, &mut data)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let invalid = |w: &mut W, msg: &str| opt_reply(w, opt, REP_ERR_INVALID, msg.as_bytes());
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(e) = exports.get(&name).cloned() else {
                    // No way to say "unknown" to EXPORT_NAME: the protocol closes.
                    return Err(protocol(format!("EXPORT_NAME: no export '{name}'")));
                };
                w.write_all(&e.size().to_be_bytes())?;
                w.write_all(&transmission_flags(&*e).to_be_bytes())?;
                if !st.no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(Some((name, e)));
            }
            OPT_ABORT => {
                // The client may already have closed: a failed ACK is no error.
                let _ = opt_reply(w, opt, REP_ACK, &[]).and_then(|()| w.flush());
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    invalid(w, "LIST takes no data")?;
                    continue;
                }
                for name in exports.names() {
                    opt_reply(w, opt, REP_SERVER, &with_len(name))?;
                }
                opt_reply(w, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let req = match parse_info(&data) {
                    Ok(req) => req,
                    Err(e) => {
                        invalid(w, &e.to_string())?;
                        continue;
                    }
                };
                let Some(e) = exports.get(&req.name).cloned() else {
                    let msg = format!("no export '{}'", req.name);
                    opt_reply(w, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&*e).to_be_bytes());
                opt_reply(w, opt, REP_INFO, &info)?;
                if req.requests.contains(&INFO_NAME) {
                    let mut d = INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(req.name.as_bytes());
                    opt_reply(w, opt, REP_INFO, &d)?;
                }
                if let Some(desc) = e
                    .description()
                    .filter(|_| req.requests.contains(&INFO_DESCRIPTION))
                {
                    let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(desc.as_bytes());
                    opt_reply(w, opt, REP_INFO, &d)?;
                }
                let bs = e.block_size();
                if req.requests.contains(&INFO_BLOCK_SIZE) || bs.min > 1 {
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [bs.min, bs.preferred, bs.max] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    opt_reply(w, opt, REP_INFO, &d)?;
                }
                opt_reply(w, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    w.flush()?;
                    return Ok(Some((req.name, e)));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    invalid(w, "STRUCTURED_REPLY takes no data")?;
                    continue;
                }
                st.structured = true;
                opt_reply(w, opt, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                if set {
                    // Replaces the earlier selection, even when it fails.
                    st.meta_for = None;
                    if !st.structured {
                        invalid(w, "SET_META_CONTEXT needs structured replies first")?;
                        continue;
                    }
                }
                let req = match parse_meta(&data) {
                    Ok(req) => req,
                    Err(e) => {
                        invalid(w, &e.to_string())?;
                        continue;
                    }
                };
                if exports.get(&req.name).is_none() {
                    let msg = format!("no export '{}'", req.name);
                    opt_reply(w, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                if set {
                    if req.queries.iter().any(|q| q == BASE_ALLOCATION) {
                        meta_reply(w, opt, BASE_ALLOCATION_ID)?;
                        st.meta_for = Some(req.name);
                    }
                } else if req.queries.is_empty()
                    || req.queries.iter().any(|q| list_query_matches(q))
                {
                    meta_reply(w, opt, 0)?;
                }
                opt_reply(w, opt, REP_ACK, &[])?;
            }
            _ => {
                let msg = format!("option {opt} is not supported");
                opt_reply(w, opt, REP_ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
}

fn simple_reply<W: Write>(w: &mut W, cookie: u64, error: u32) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&h)
}

fn chunk_header<W: Write>(
    w: &mut W,
    flags: u16,
    kind: u16,
    cookie: u64,
    len: u32,
) -> io::Result<()> {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h)
}

fn error_chunk<W: Write>(w: &mut W, cookie: u64, errno: u32, msg: &str) -> io::Result<()> {
    // Keep the message short: the protocol caps it at 4096 bytes.
    let mut end = msg.len().min(1024);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg.as_bytes()[..end];
    chunk_header(
        w,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    )?;
    w.write_all(&errno.to_be_bytes())?;
    w.write_all(&(msg.len() as u16).to_be_bytes())?;
    w.write_all(msg)
}

/// The outcome of one request, before the reply is written.
enum Outcome {
    Ok,
    Err(u32, String),
}

/// Why a modifying command (`what`: "write to", "trim on") is refused before
/// it runs: the request's own fault (`check`), else EPERM on a read-only export.
fn refused(check: Option<Outcome>, read_only: bool, what: &str) -> Option<Outcome> {
    check.or_else(|| read_only.then(|| Outcome::Err(EPERM, format!("{what} a read-only export"))))
}

fn transmission<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    e: &dyn Export,
    cfg: &ConnConfig,
    structured: bool,
    meta: bool,
) -> io::Result<()> {
    const KNOWN_FLAGS: u16 =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    let size = e.size();
    let bs = e.block_size();
    let ro = e.read_only();
    loop {
        w.flush()?;
        let mut h = [0u8; REQUEST_SIZE];
        if !read_or_eof(r, &mut h)? {
            return Ok(());
        }
        let req = Request::parse(&h).map_err(|e| protocol(e.to_string()))?;
        let len = u64::from(req.length);
        let in_bounds = req.offset.checked_add(len).is_some_and(|end| end <= size);
        let aligned =
            bs.min <= 1 || (req.offset % u64::from(bs.min) == 0 && len % u64::from(bs.min) == 0);
        let bad = |what: &str| {
            Outcome::Err(
                EINVAL,
                format!(
                    "{what} (offset {}, length {len}, export size {size})",
                    req.offset
                ),
            )
        };
        let check = if req.flags & !KNOWN_FLAGS != 0 {
            Some(bad(&format!("unknown command flags {:#x}", req.flags)))
        } else if !in_bounds {
            Some(bad("request beyond the end of the export"))
        } else if !aligned {
            Some(bad("request not aligned to the minimum block size"))
        } else {
            None
        };
        let done = |r: Outcome, w: &mut W| match r {
            Outcome::Ok => simple_reply(w, req.cookie, 0),
            Outcome::Err(n, msg) => {
                cfg.log(&format!("request type {} failed: {msg}", req.kind));
                simple_reply(w, req.cookie, n)
            }
        };
        match req.kind {
            CMD_READ => {
                let fail = if req.length > bs.max {
                    // Structured clients can retry smaller reads on EOVERFLOW.
                    let n = if structured { EOVERFLOW } else { EINVAL };
                    Some(Outcome::Err(
                        n,
                        format!("read of {len} bytes exceeds the maximum payload {}", bs.max),
                    ))
                } else {
                    check
                };
                let result = match fail {
                    Some(f) => Err(f),
                    None => {
                        let mut buf = vec![0u8; req.length as usize];
                        match e.read_at(req.offset, &mut buf) {
                            Ok(()) => Ok(buf),
                            Err(err) => Err(Outcome::Err(
                                errno_of(&err),
                                format!("read of {len} bytes at offset {}: {err}", req.offset),
                            )),
                        }
                    }
                };
                match (result, structured) {
                    (Ok(buf), false) => {
                        simple_reply(w, req.cookie, 0)?;
                        w.write_all(&buf)?;
                    }
                    (Ok(buf), true) if buf.is_empty() => {
                        chunk_header(w, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0)?;
                    }
                    (Ok(buf), true) => {
                        chunk_header(
                            w,
                            REPLY_FLAG_DONE,
                            REPLY_TYPE_OFFSET_DATA,
                            req.cookie,
                            8 + req.length,
                        )?;
                        w.write_all(&req.offset.to_be_bytes())?;
                        w.write_all(&buf)?;
                    }
                    (Err(Outcome::Err(n, msg)), true) => {
                        cfg.log(&msg);
                        error_chunk(w, req.cookie, n, &msg)?;
                    }
                    (Err(o), false) => done(o, w)?,
                    (Err(Outcome::Ok), true) => unreachable!("only errors here"),
                }
            }
            CMD_WRITE => {
                if req.length > bs.max {
                    // Skip the payload (bounded memory) so the stream stays in sync.
                    discard(r, len)?;
                    done(
                        Outcome::Err(
                            EINVAL,
                            format!(
                                "write of {len} bytes exceeds the maximum payload {}",
                                bs.max
                            ),
                        ),
                        w,
                    )?;
                    continue;
                }
                let mut buf = vec![0u8; req.length as usize];
                if !read_or_eof(r, &mut buf)? && !buf.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let o = match refused(check, ro, "write to") {
                    Some(o) => o,
                    None => io_outcome(
                        e.write_at(req.offset, &buf, req.flags & CMD_FLAG_FUA != 0),
                        "write",
                        &req,
                    ),
                };
                done(o, w)?;
            }
            CMD_WRITE_ZEROES => {
                let o = match refused(check, ro, "write to") {
                    Some(o) => o,
                    None if req.flags & CMD_FLAG_FAST_ZERO != 0 && !e.fast_zero() => {
                        // Not an error worth logging: the client falls back by design.
                        simple_reply(w, req.cookie, ENOTSUP)?;
                        continue;
                    }
                    None => io_outcome(
                        e.write_zeroes(
                            req.offset,
                            len,
                            req.flags & CMD_FLAG_NO_HOLE == 0,
                            req.flags & CMD_FLAG_FUA != 0,
                        ),
                        "write zeroes",
                        &req,
                    ),
                };
                done(o, w)?;
            }
            CMD_TRIM => {
                let o = match refused(check, ro, "trim on") {
                    Some(o) => o,
                    None => io_outcome(
                        e.trim(req.offset, len).and_then(|()| {
                            if req.flags & CMD_FLAG_FUA != 0 {
                                e.flush()
                            } else {
                                Ok(())
                            }
                        }),
                        "trim",
                        &req,
                    ),
                };
                done(o, w)?;
            }
            CMD_FLUSH => done(io_outcome(e.flush(), "flush", &req), w)?,
            CMD_DISC => {
                // No reply; earlier requests are all answered already.
                let _ = e.flush();
                return Ok(());
            }
            CMD_BLOCK_STATUS => {
                let o = if !structured || !meta {
                    Err(Outcome::Err(
                        EINVAL,
                        "BLOCK_STATUS without base:allocation selected".into(),
                    ))
                } else if len == 0 {
                    Err(bad("BLOCK_STATUS of length 0"))
                } else if let Some(o) = check {
                    Err(o)
                } else {
                    let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                        1
                    } else {
                        MAX_DESCRIPTORS
                    };
                    match e.block_status(req.offset, len, max) {
                        Ok(ext) => clip_extents(&ext, len, max).ok_or_else(|| {
                            Outcome::Err(EIO, "the export returned no block status".into())
                        }),
                        Err(err) => Err(Outcome::Err(
                            errno_of(&err),
                            format!("block status at offset {}: {err}", req.offset),
                        )),
                    }
                };
                match o {
                    Ok(desc) => {
                        chunk_header(
                            w,
                            REPLY_FLAG_DONE,
                            REPLY_TYPE_BLOCK_STATUS,
                            req.cookie,
                            4 + 8 * desc.len() as u32,
                        )?;
                        let mut d = Vec::with_capacity(4 + 8 * desc.len());
                        d.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                        for (l, f) in desc {
                            d.extend_from_slice(&l.to_be_bytes());
                            d.extend_from_slice(&f.to_be_bytes());
                        }
                        w.write_all(&d)?;
                    }
                    Err(Outcome::Err(n, msg)) if structured => {
                        cfg.log(&msg);
                        error_chunk(w, req.cookie, n, &msg)?;
                    }
                    Err(o) => done(o, w)?,
                }
            }
            other => done(
                Outcome::Err(EINVAL, format!("unsupported command type {other}")),
                w,
            )?,
        }
    }
}

fn io_outcome(r: io::Result<()>, what: &str, req: &Request) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Err(
            errno_of(&e),
            format!(
                "{what} of {} bytes at offset {}: {e}",
                req.length, req.offset
            ),
        ),
    }
}

/// Descriptors `(length, flags)` covering at most `len` bytes from the
/// request's offset: zero-length ones dropped, the last one clipped, at most
/// `max`. `None` if nothing is left (the export returned no usable status).
fn clip_extents(ext: &[crate::Extent], len: u64, max: usize) -> Option<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    let mut covered = 0u64;
    for x in ext {
        if covered >= len || out.len() >= max {
            break;
        }
        if x.length == 0 {
            continue;
        }
        // len fits in u32 (a request length), so the clipped length does too.
        let l = x.length.min(len - covered);
        out.push((l as u32, x.flags));
        covered += l;
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemoryExport;
    use crate::Extent;

    /// A scripted client: the bytes it sends, and what the server answered.
    fn run(exports: &Exports, input: &[u8]) -> (io::Result<()>, Vec<u8>) {
        let mut out = Vec::new();
        let res = serve_stream(input, &mut out, exports, &ConnConfig::default());
        (res, out)
    }

    fn exports() -> Exports {
        let mut x = Exports::new();
        let m = MemoryExport::new(1 << 20);
        m.write_at(4096, b"hello", false).unwrap();
        x.insert("mem", Arc::new(m));
        x
    }

    fn opt(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn go(name: &str) -> Vec<u8> {
        let mut d = with_len(name);
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        opt(OPT_GO, &d)
    }

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Vec<u8> {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
        .to_bytes()
        .to_vec()
    }

    /// Option replies in `out` after the 18-byte greeting: (opt, type, data).
    fn replies(out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut p = 18;
        while p + 20 <= out.len() && out[p..p + 8] == REPLY_MAGIC.to_be_bytes() {
            let o = u32::from_be_bytes(out[p + 8..p + 12].try_into().unwrap());
            let t = u32::from_be_bytes(out[p + 12..p + 16].try_into().unwrap());
            let l = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            v.push((o, t, out[p + 20..p + 20 + l].to_vec()));
            p += 20 + l;
        }
        v
    }

    #[test]
    fn greeting_then_unknown_options_get_unsup_and_list_works() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(opt(OPT_EXTENDED_HEADERS, &[]));
        input.extend(opt(OPT_STARTTLS, &[]));
        input.extend(opt(OPT_LIST, &[]));
        input.extend(opt(OPT_ABORT, &[]));
        let (res, out) = run(&exports(), &input);
        res.unwrap();
        assert_eq!(&out[..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        assert_eq!(&out[16..18], &3u16.to_be_bytes());
        let r = replies(&out);
        assert_eq!(r[0].0, OPT_EXTENDED_HEADERS);
        assert_eq!(r[0].1, REP_ERR_UNSUP);
        assert_eq!(r[1].1, REP_ERR_UNSUP);
        assert_eq!((r[2].1, &r[2].2[4..]), (REP_SERVER, &b"mem"[..]));
        assert_eq!(r[3].1, REP_ACK);
        assert_eq!((r[4].0, r[4].1), (OPT_ABORT, REP_ACK));
    }

    #[test]
    fn unknown_client_flags_and_bad_option_magic_close() {
        let (res, _) = run(&exports(), &8u32.to_be_bytes());
        assert!(res.unwrap_err().to_string().contains("client flags"));
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend_from_slice(&[0u8; 16]);
        let (res, _) = run(&exports(), &input);
        assert!(res.unwrap_err().to_string().contains("bad option magic"));
    }

    #[test]
    fn oversized_option_is_skipped_not_buffered() {
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(opt(OPT_LIST, &vec![0u8; 70 << 10]));
        input.extend(opt(OPT_LIST, &[]));
        let (res, out) = run(&exports(), &input);
        res.unwrap();
        let r = replies(&out);
        assert_eq!(r[0].1, REP_ERR_TOO_BIG);
        assert_eq!(r[1].1, REP_SERVER);
        // A huge declared length with no data: EOF while skipping, an error, no allocation.
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(run(&exports(), &input).0.is_err());
    }

    #[test]
    fn go_unknown_export_and_set_meta_without_structured() {
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(go("nope"));
        let mut m = with_len("mem");
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend(with_len(BASE_ALLOCATION));
        input.extend(opt(OPT_SET_META_CONTEXT, &m));
        input.extend(opt(OPT_LIST_META_CONTEXT, &m));
        let (res, out) = run(&exports(), &input);
        res.unwrap();
        let r = replies(&out);
        assert_eq!(r[0].1, REP_ERR_UNKNOWN);
        assert_eq!(r[1].1, REP_ERR_INVALID);
        assert_eq!(r[2].1, REP_META_CONTEXT);
        assert_eq!(&r[2].2[4..], BASE_ALLOCATION.as_bytes());
    }

    /// Handshake to transmission with structured replies and base:allocation.
    fn structured_prefix() -> Vec<u8> {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        let mut m = with_len("mem");
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend(with_len(BASE_ALLOCATION));
        input.extend(opt(OPT_SET_META_CONTEXT, &m));
        input.extend(go("mem"));
        input
    }

    /// Offset just after the ACK of GO.
    fn after_go(out: &[u8]) -> usize {
        let mut p = 18;
        loop {
            let o = u32::from_be_bytes(out[p + 8..p + 12].try_into().unwrap());
            let t = u32::from_be_bytes(out[p + 12..p + 16].try_into().unwrap());
            let l = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            p += 20 + l;
            if o == OPT_GO && t == REP_ACK {
                return p;
            }
        }
    }

    #[test]
    fn go_reports_size_flags_and_block_size() {
        let input = structured_prefix();
        let (res, out) = run(&exports(), &input);
        res.unwrap();
        let r = replies(&out);
        let info: Vec<_> = r.iter().filter(|x| x.1 == REP_INFO).collect();
        assert_eq!(&info[0].2[..2], &INFO_EXPORT.to_be_bytes());
        assert_eq!(&info[0].2[2..10], &(1u64 << 20).to_be_bytes());
        let flags = u16::from_be_bytes(info[0].2[10..12].try_into().unwrap());
        assert_ne!(flags & TF_SEND_WRITE_ZEROES, 0);
        assert_eq!(flags & TF_READ_ONLY, 0);
        assert_eq!(&info[1].2[..2], &INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(&info[1].2[10..14], &DEFAULT_MAX_PAYLOAD_BE);
    }
    const DEFAULT_MAX_PAYLOAD_BE: [u8; 4] = crate::DEFAULT_MAX_PAYLOAD.to_be_bytes();

    #[test]
    fn structured_read_block_status_and_errors_keep_the_connection() {
        let mut input = structured_prefix();
        input.extend(req(CMD_READ, 0, 4096, 8));
        input.extend(req(CMD_READ, 0, (1 << 20) - 4, 8)); // beyond the end
        input.extend(req(CMD_READ, 0, 0, 64 << 20)); // too large
        input.extend(req(CMD_BLOCK_STATUS, 0, 0, 3 << 12));
        input.extend(req(99, 0, 0, 0)); // unknown command
        input.extend(req(CMD_WRITE, 0, 0, 64 << 20)); // too large: payload skipped
        input.extend(vec![0xaa; 64 << 20]);
        input.extend(req(CMD_WRITE, 0, 0, 2));
        input.extend_from_slice(b"ok");
        input.extend(req(CMD_READ, 0, 0, 2));
        input.extend(req(CMD_DISC, 0, 0, 0));
        let (res, out) = run(&exports(), &input);
        res.unwrap();
        let mut p = after_go(&out);
        let mut chunk = || {
            let magic = u32::from_be_bytes(out[p..p + 4].try_into().unwrap());
            if magic == SIMPLE_REPLY_MAGIC {
                let err = u32::from_be_bytes(out[p + 4..p + 8].try_into().unwrap());
                p += 16;
                return (0xffff, err, Vec::new());
            }
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
            let t = u16::from_be_bytes(out[p + 6..p + 8].try_into().unwrap());
            let l = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            let d = out[p + 20..p + 20 + l].to_vec();
            p += 20 + l;
            (t, 0, d)
        };
        let (t, _, d) = chunk();
        assert_eq!(t, REPLY_TYPE_OFFSET_DATA);
        assert_eq!(&d[..8], &4096u64.to_be_bytes());
        assert_eq!(&d[8..], b"hello\0\0\0");
        let (t, _, d) = chunk();
        assert_eq!(t, REPLY_TYPE_ERROR);
        assert_eq!(&d[..4], &EINVAL.to_be_bytes());
        let (t, _, d) = chunk();
        assert_eq!(t, REPLY_TYPE_ERROR);
        assert_eq!(&d[..4], &EOVERFLOW.to_be_bytes());
        let (t, _, d) = chunk();
        assert_eq!(t, REPLY_TYPE_BLOCK_STATUS);
        // hole+zero, data (the 4 KiB block holding "hello"), hole+zero.
        let words: Vec<u32> = d
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            words,
            vec![
                BASE_ALLOCATION_ID,
                4096,
                STATE_HOLE | STATE_ZERO,
                4096,
                0,
                4096,
                STATE_HOLE | STATE_ZERO
            ]
        );
        assert_eq!(chunk().1, EINVAL, "unknown command");
        assert_eq!(chunk().1, EINVAL, "oversized write");
        assert_eq!(chunk().1, 0, "small write");
        let (t, _, d) = chunk();
        assert_eq!(t, REPLY_TYPE_OFFSET_DATA);
        assert_eq!(&d[8..], b"ok");
        assert_eq!(p, out.len(), "nothing after DISC");
    }

    #[test]
    fn simple_mode_read_and_bad_magic_closes() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(go("mem"));
        input.extend(req(CMD_READ, 0, 4096, 5));
        input.extend(req(CMD_BLOCK_STATUS, 0, 0, 4096)); // not negotiated
        let mut bad = req(CMD_READ, 0, 0, 1);
        bad[0] = 0;
        input.extend(bad);
        let (res, out) = run(&exports(), &input);
        assert!(res.unwrap_err().to_string().contains("bad request magic"));
        let p = after_go(&out);
        assert_eq!(&out[p..p + 4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[p + 4..p + 8], &[0; 4]);
        assert_eq!(&out[p + 16..p + 21], b"hello");
        assert_eq!(&out[p + 21 + 4..p + 21 + 8], &EINVAL.to_be_bytes());
    }

    #[test]
    fn write_zeroes_fast_zero_and_read_only() {
        struct Ro;
        impl Export for Ro {
            fn size(&self) -> u64 {
                4096
            }
            fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
                buf.fill(1);
                Ok(())
            }
        }
        let mut x = exports();
        x.insert("ro", Arc::new(Ro));
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(go("ro"));
        input.extend(req(CMD_WRITE, 0, 0, 1));
        input.push(0);
        input.extend(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 4096));
        input.extend(req(CMD_TRIM, 0, 0, 4096));
        input.extend(req(CMD_FLUSH, 0, 0, 0));
        let (res, out) = run(&x, &input);
        res.unwrap();
        let p = after_go(&out);
        let errs: Vec<u32> = out[p..]
            .chunks(16)
            .map(|c| u32::from_be_bytes(c[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(errs, vec![EPERM, EPERM, EPERM, 0]);
    }

    /// What the fuzz target does, without libFuzzer: mutated valid sessions
    /// (byte flips, truncation, splices of request headers) always end,
    /// without a panic, and produce bounded output.
    #[test]
    fn mutated_sessions_never_panic_or_hang() {
        let mut base = structured_prefix();
        for (k, f, o, l) in [
            (CMD_READ, 0, 0, 4096),
            (CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 65536),
            (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 8192, 4096),
            (CMD_TRIM, CMD_FLAG_FUA, 0, 512),
            (CMD_FLUSH, 0, 0, 0),
        ] {
            base.extend(req(k, f, o, l));
        }
        base.extend(req(CMD_WRITE, 0, 100, 3));
        base.extend_from_slice(b"xyz");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let cfg = ConnConfig {
            max_option_len: 4096,
            log: None,
        };
        for _ in 0..3000 {
            let mut input = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % input.len();
                match next() % 4 {
                    0 => input[i] ^= 1 << (next() % 8),
                    1 => input[i] = next() as u8,
                    2 => input.truncate(i),
                    _ => {
                        // A large length field: sizes near the limits.
                        let at = i.min(input.len().saturating_sub(4));
                        let v = [0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00];
                        let n = (input.len() - at).min(4);
                        let o = (next() % 5) as usize;
                        input[at..at + n].copy_from_slice(&v[o..o + n]);
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            let mut out = Vec::new();
            let _ = serve_stream(&input[..], &mut out, &exports(), &cfg);
            assert!(out.len() <= 18 + input.len() * 64 + (64 << 20));
        }
    }

    #[test]
    fn write_zeroes_flags_reach_the_export() {
        use std::sync::Mutex;
        /// Records (offset, len, punch_hole, fua) of each write_zeroes.
        struct Rec(Mutex<Vec<(u64, u64, bool, bool)>>, bool);
        impl Export for Rec {
            fn size(&self) -> u64 {
                1 << 20
            }
            fn read_only(&self) -> bool {
                false
            }
            fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
                buf.fill(0);
                Ok(())
            }
            fn write_zeroes(&self, o: u64, l: u64, punch: bool, fua: bool) -> io::Result<()> {
                self.0.lock().unwrap().push((o, l, punch, fua));
                Ok(())
            }
            fn fast_zero(&self) -> bool {
                self.1
            }
        }
        for fast in [false, true] {
            let rec = Arc::new(Rec(Mutex::new(Vec::new()), fast));
            let mut x = Exports::new();
            x.insert("z", rec.clone());
            let mut input = 3u32.to_be_bytes().to_vec();
            input.extend(go("z"));
            input.extend(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 4096));
            input.extend(req(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 4096, 8192));
            input.extend(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 65536, 4096));
            let (res, out) = run(&x, &input);
            res.unwrap();
            let p = after_go(&out);
            let errs: Vec<u32> = out[p..]
                .chunks(16)
                .map(|c| u32::from_be_bytes(c[4..8].try_into().unwrap()))
                .collect();
            let mut want = vec![(0, 4096, false, false), (4096, 8192, true, true)];
            if fast {
                assert_eq!(errs, vec![0, 0, 0]);
                want.push((65536, 4096, true, false));
            } else {
                // Not fast: refused at once, and the export is not called.
                assert_eq!(errs, vec![0, 0, ENOTSUP]);
            }
            assert_eq!(*rec.0.lock().unwrap(), want);
        }
    }

    #[test]
    fn clip_extents_bounds_and_drops_empty() {
        let e = |length, flags| Extent { length, flags };
        assert_eq!(
            clip_extents(&[e(0, 1), e(10, 3), e(100, 0)], 50, 10),
            Some(vec![(10, 3), (40, 0)])
        );
        assert_eq!(
            clip_extents(&[e(10, 3), e(100, 0)], 50, 1),
            Some(vec![(10, 3)])
        );
        assert_eq!(clip_extents(&[e(0, 0)], 50, 1), None);
        assert_eq!(
            clip_extents(&[e(1 << 40, 3)], 1 << 20, 9),
            Some(vec![(1 << 20, 3)])
        );
    }
}
