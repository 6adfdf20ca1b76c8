//! A gzip member of one fixed-Huffman deflate block, written bit by bit
//! (RFC 1951 §3.2.6): what no real compressor produces but a crafted file
//! may. Shared by the integration tests and `seekable::gzip`'s unit tests.
#![allow(dead_code)]

/// Bits of a gzip member being written.
pub struct Bits {
    pub bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    /// The gzip header, then the block header: final block, fixed codes.
    pub fn fixed_block() -> Self {
        let mut b = Bits {
            bytes: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3],
            acc: 0,
            n: 0,
        };
        b.put(1, 1); // BFINAL
        b.put(1, 2); // fixed Huffman codes
        b
    }

    /// `len` bits of `v`, least significant first (deflate's order).
    pub fn put(&mut self, v: u32, len: u32) {
        self.acc |= u64::from(v) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, most significant bit first.
    pub fn code(&mut self, c: u32, len: u32) {
        self.put(c.reverse_bits() >> (32 - len), len);
    }

    /// A literal/length symbol of the fixed code.
    pub fn sym(&mut self, s: u32) {
        match s {
            0..=143 => self.code(0x30 + s, 8),
            144..=255 => self.code(0x190 + s - 144, 9),
            256..=279 => self.code(s - 256, 7),
            _ => self.code(0xc0 + s - 280, 8),
        }
    }

    /// End of block, padding to a byte, and the gzip trailer of `plain`.
    pub fn finish(mut self, plain: &[u8]) -> Vec<u8> {
        self.sym(256);
        self.put(0, 7);
        self.bytes
            .extend_from_slice(&crc32fast::hash(plain).to_le_bytes());
        self.bytes
            .extend_from_slice(&(plain.len() as u32).to_le_bytes());
        self.bytes
    }
}
