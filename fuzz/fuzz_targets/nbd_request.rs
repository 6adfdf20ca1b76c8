//! `nbd_request`: arbitrary client bytes through vma-nbd's handshake and
//! request parser (`serve_stream` over an in-memory stream) never panic, never
//! hang, and stay in bounded memory. The first byte selects the mode: odd, a valid
//! handshake (structured replies, base:allocation, GO) is put in front of
//! the rest, so most inputs reach the transmission phase; even, the rest is
//! the raw client stream from the first handshake byte on.
#![no_main]

use std::io::{self, Write};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vma_nbd::mem::MemoryExport;
use vma_nbd::proto::*;
use vma_nbd::{BlockSize, ConnConfig, Export, Exports, Extent};

/// A memory export with a 64 KiB payload limit, so oversized requests are
/// cheap to reach, and a 512-byte minimum block on the second export.
struct Small(MemoryExport, u32);

impl Export for Small {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn block_size(&self) -> BlockSize {
        BlockSize {
            min: self.1,
            preferred: 4096,
            max: 64 << 10,
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.0.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool, fua: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, punch, fua)
    }
    fn fast_zero(&self) -> bool {
        self.1 == 1
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.trim(offset, len)
    }
    fn block_status(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<Extent>> {
        let v = self.0.block_status(offset, len, max)?;
        assert!(v.len() <= max);
        Ok(v)
    }
}

/// Counts what the server writes, and checks it starts with the greeting.
struct Out {
    n: usize,
    head: Vec<u8>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.head.len() < 16 {
            let take = buf.len().min(16 - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        self.n += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn opt(v: &mut Vec<u8>, kind: u32, data: &[u8]) {
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
}

fn handshake(name: &str) -> Vec<u8> {
    let mut v = 3u32.to_be_bytes().to_vec();
    opt(&mut v, OPT_STRUCTURED_REPLY, &[]);
    let mut m = (name.len() as u32).to_be_bytes().to_vec();
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    m.extend_from_slice(BASE_ALLOCATION.as_bytes());
    opt(&mut v, OPT_SET_META_CONTEXT, &m);
    let mut g = (name.len() as u32).to_be_bytes().to_vec();
    g.extend_from_slice(name.as_bytes());
    g.extend_from_slice(&0u16.to_be_bytes());
    opt(&mut v, OPT_GO, &g);
    v
}

fuzz_target!(|data: &[u8]| {
    let mut content = vec![0u8; 256 << 10];
    content[4096..8192].fill(0xa5);
    let mut x = Exports::new();
    x.insert(
        "a",
        Arc::new(Small(MemoryExport::from_vec(content.clone(), false), 1)),
    );
    x.insert(
        "r",
        Arc::new(Small(MemoryExport::from_vec(content, true), 512)),
    );
    let input = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => {
            let mut v = handshake(if b & 2 == 0 { "a" } else { "r" });
            v.extend_from_slice(rest);
            v
        }
        // Even first byte: the rest is the raw client stream.
        _ => data.get(1..).unwrap_or_default().to_vec(),
    };
    let cfg = ConnConfig {
        max_option_len: 4096,
        log: None,
    };
    let mut out = Out {
        n: 0,
        head: Vec::new(),
    };
    // Ok or a protocol/EOF error: both fine; a panic or hang is the bug.
    let _ = vma_nbd::serve_stream(&input[..], &mut out, &x, &cfg);
    assert_eq!(&out.head[..8], b"NBDMAGIC");
    assert_eq!(&out.head[8..16], b"IHAVEOPT");
    // Replies are bounded by the input: no amplification beyond the 64 KiB
    // payload limit per request (28 bytes) or option (16 bytes).
    assert!(out.n <= 18 + (input.len() / 16 + 1) * (64 << 10) + 4096);
});
