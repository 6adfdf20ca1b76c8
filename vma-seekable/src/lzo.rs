//! The lzop container, as seekable access needs it: the table of its blocks
//! from their headers, seeking over the data ([`vma_format::compress`] owns
//! the container format itself and decodes the blocks).

use std::io::BufReader;

use vma_format::compress::LzopReader;
use vma_format::error::{Error, Result};

use crate::types::{Cursor, Frame};
use vma_format::ReadAt;

/// Walks the lzop blocks of `src` by their headers, seeking over the data.
pub(crate) fn lzo_blocks(
    src: &dyn ReadAt,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<Frame>> {
    let mut r = LzopReader::new(BufReader::with_capacity(4096, Cursor::new(src)))?;
    let mut frames = Vec::new();
    let mut u_off = 0u64;
    while let Some(b) = r.block_header()? {
        if stop() {
            return Err(Error::Cancelled);
        }
        if b.data_at + b.clen as u64 > len {
            return Err(Error::Compressed {
                format: "lzop",
                offset: b.at,
                message: "file ends inside the block".into(),
            });
        }
        frames.push(Frame {
            c_off: b.data_at,
            c_len: b.clen as u64,
            u_off,
            u_len: b.ulen as u64,
            adler: b.d_adler.unwrap_or(0),
            crc: b.d_crc.unwrap_or(0),
            sums: u8::from(b.d_adler.is_some()) | (u8::from(b.d_crc.is_some()) << 1),
        });
        u_off += b.ulen as u64;
        r.skip(b.clen as u64)?;
    }
    debug_assert!(r.position() <= len);
    Ok(frames)
}
