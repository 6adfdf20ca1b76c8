//! Wire constants of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd)
//! and the parsers of what a client sends: option payloads and the 28-byte
//! transmission request header. Pure functions over byte slices, so they are
//! unit-tested and fuzzed without a socket.

/// "NBDMAGIC", the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": follows NBDMAGIC, and starts every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server omits the 124 zero bytes after EXPORT_NAME if the client agrees.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags we understand.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client agrees to NO_ZEROES.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
#[allow(missing_docs)]
pub const OPT_ABORT: u32 = 2;
#[allow(missing_docs)]
pub const OPT_LIST: u32 = 3;
#[allow(missing_docs)]
pub const OPT_STARTTLS: u32 = 5;
#[allow(missing_docs)]
pub const OPT_INFO: u32 = 6;
#[allow(missing_docs)]
pub const OPT_GO: u32 = 7;
#[allow(missing_docs)]
pub const OPT_STRUCTURED_REPLY: u32 = 8;
#[allow(missing_docs)]
pub const OPT_LIST_META_CONTEXT: u32 = 9;
#[allow(missing_docs)]
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// QEMU 10 asks for it first; we answer ERR_UNSUP.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types.
pub const REP_ACK: u32 = 1;
#[allow(missing_docs)]
pub const REP_SERVER: u32 = 2;
#[allow(missing_docs)]
pub const REP_INFO: u32 = 3;
#[allow(missing_docs)]
pub const REP_META_CONTEXT: u32 = 4;
const ERR: u32 = 1 << 31;
#[allow(missing_docs)]
pub const REP_ERR_UNSUP: u32 = ERR | 1;
#[allow(missing_docs)]
pub const REP_ERR_INVALID: u32 = ERR | 3;
#[allow(missing_docs)]
pub const REP_ERR_UNKNOWN: u32 = ERR | 6;
#[allow(missing_docs)]
pub const REP_ERR_TOO_BIG: u32 = ERR | 9;

/// Info types (NBD_OPT_INFO / NBD_OPT_GO).
pub const INFO_EXPORT: u16 = 0;
#[allow(missing_docs)]
pub const INFO_NAME: u16 = 1;
#[allow(missing_docs)]
pub const INFO_DESCRIPTION: u16 = 2;
#[allow(missing_docs)]
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
#[allow(missing_docs)]
pub const TF_READ_ONLY: u16 = 1 << 1;
#[allow(missing_docs)]
pub const TF_SEND_FLUSH: u16 = 1 << 2;
#[allow(missing_docs)]
pub const TF_SEND_FUA: u16 = 1 << 3;
#[allow(missing_docs)]
pub const TF_SEND_TRIM: u16 = 1 << 5;
#[allow(missing_docs)]
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
#[allow(missing_docs)]
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
#[allow(missing_docs)]
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
#[allow(missing_docs)]
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
#[allow(missing_docs)]
pub const CMD_FLAG_DF: u16 = 1 << 2;
#[allow(missing_docs)]
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
#[allow(missing_docs)]
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Command types.
pub const CMD_READ: u16 = 0;
#[allow(missing_docs)]
pub const CMD_WRITE: u16 = 1;
#[allow(missing_docs)]
pub const CMD_DISC: u16 = 2;
#[allow(missing_docs)]
pub const CMD_FLUSH: u16 = 3;
#[allow(missing_docs)]
pub const CMD_TRIM: u16 = 4;
#[allow(missing_docs)]
pub const CMD_WRITE_ZEROES: u16 = 6;
#[allow(missing_docs)]
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply chunk flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
#[allow(missing_docs)]
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
#[allow(missing_docs)]
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
#[allow(missing_docs)]
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// `base:allocation` status flags.
pub const STATE_HOLE: u32 = 1 << 0;
#[allow(missing_docs)]
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context we serve.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id in SET_META_CONTEXT replies and BLOCK_STATUS chunks.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// NBD error numbers (the Linux values).
pub const EPERM: u32 = 1;
#[allow(missing_docs)]
pub const EIO: u32 = 5;
#[allow(missing_docs)]
pub const ENOMEM: u32 = 12;
#[allow(missing_docs)]
pub const EINVAL: u32 = 22;
#[allow(missing_docs)]
pub const ENOSPC: u32 = 28;
#[allow(missing_docs)]
pub const EOVERFLOW: u32 = 75;
#[allow(missing_docs)]
pub const ENOTSUP: u32 = 95;
#[allow(missing_docs)]
pub const ESHUTDOWN: u32 = 108;

/// Size of a transmission request header.
pub const REQUEST_SIZE: usize = 28;

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length (of the payload for WRITE, of the effect otherwise).
    pub length: u32,
}

/// Why a request or option cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Request {
    /// Parses a request header; a wrong magic is a protocol error (the
    /// stream cannot be resynchronised: the connection must close).
    pub fn parse(b: &[u8; REQUEST_SIZE]) -> Result<Request, ParseError> {
        if be32(&b[0..]) != REQUEST_MAGIC {
            return Err(ParseError("bad request magic"));
        }
        Ok(Request {
            flags: be16(&b[4..]),
            kind: be16(&b[6..]),
            cookie: be64(&b[8..]),
            offset: be64(&b[16..]),
            length: be32(&b[24..]),
        })
    }

    /// The header bytes (used by tests and clients).
    pub fn to_bytes(&self) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A cursor over option data that fails instead of panicking.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if self.0.len() < n {
            return Err(ParseError(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        self.take(2, what).map(be16)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        self.take(4, what).map(be32)
    }
    fn string(&mut self, what: &'static str) -> Result<String, ParseError> {
        let n = self.u32(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| ParseError("string is not UTF-8"))
    }
    fn end(&self) -> Result<(), ParseError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ParseError("trailing bytes in option data"))
        }
    }
}

/// The data of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name.
    pub name: String,
    /// Information types the client asked for.
    pub requests: Vec<u16>,
}

/// Parses NBD_OPT_INFO / NBD_OPT_GO data.
pub fn parse_info(data: &[u8]) -> Result<InfoRequest, ParseError> {
    let mut c = Cur(data);
    let name = c.string("export name length exceeds the option data")?;
    let n = c.u16("missing number of information requests")?;
    let mut requests = Vec::with_capacity(usize::from(n).min(data.len() / 2));
    for _ in 0..n {
        requests.push(c.u16("information requests exceed the option data")?);
    }
    c.end()?;
    Ok(InfoRequest { name, requests })
}

/// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export name.
    pub name: String,
    /// Queries (each `namespace:leaf`).
    pub queries: Vec<String>,
}

/// Parses meta context option data.
pub fn parse_meta(data: &[u8]) -> Result<MetaRequest, ParseError> {
    let mut c = Cur(data);
    let name = c.string("export name length exceeds the option data")?;
    let n = c.u32("missing number of queries")?;
    let mut queries = Vec::with_capacity((n as usize).min(data.len() / 4));
    for _ in 0..n {
        queries.push(c.string("query length exceeds the option data")?);
    }
    c.end()?;
    Ok(MetaRequest { name, queries })
}

/// Whether a LIST_META_CONTEXT query (or an empty query list) selects
/// `base:allocation`.
pub fn list_query_matches(query: &str) -> bool {
    query == "base:" || query == BASE_ALLOCATION
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        let mut b = r.to_bytes();
        assert_eq!(Request::parse(&b), Ok(r));
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        b[0] ^= 1;
        assert_eq!(Request::parse(&b), Err(ParseError("bad request magic")));
    }

    #[test]
    fn info_parses_and_rejects_short_or_long_data() {
        let mut d = string("drive-scsi0");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        assert_eq!(
            parse_info(&d).unwrap(),
            InfoRequest {
                name: "drive-scsi0".into(),
                requests: vec![INFO_BLOCK_SIZE, INFO_NAME]
            }
        );
        assert!(parse_info(&d[..d.len() - 1]).is_err(), "short request list");
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info(&long).is_err(), "trailing byte");
        // A name length beyond the data, and a huge request count, fail without allocating.
        assert!(parse_info(&[0xff, 0xff, 0xff, 0xff, 0]).is_err());
        let mut many = string("");
        many.extend_from_slice(&0xffffu16.to_be_bytes());
        assert!(parse_info(&many).is_err());
        assert!(parse_info(&[0, 0, 0, 1, 0xff, 0, 0]).is_err(), "not UTF-8");
    }

    #[test]
    fn meta_parses_queries() {
        let mut d = string("x");
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend(string("base:allocation"));
        d.extend(string("qemu:dirty-bitmap:a"));
        let m = parse_meta(&d).unwrap();
        assert_eq!(m.name, "x");
        assert_eq!(m.queries, vec!["base:allocation", "qemu:dirty-bitmap:a"]);
        let mut bad = string("x");
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta(&bad).is_err());
        assert!(list_query_matches("base:"));
        assert!(list_query_matches("base:allocation"));
        assert!(!list_query_matches("qemu:"));
    }
}
