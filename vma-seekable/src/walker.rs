//! [`VmaWalker`]: follows the VMA structure through the decompressed stream
//! as it passes, for every index build (the streaming passes feed it; the
//! walks of `pin` read only what it asks for).

use vma_format::raw::{ext, hdr, EXTENT_HEADER_SIZE, EXTENT_MAGIC, HEADER_FIXED_SIZE};
use vma_format::raw::{BLOCK_SIZE, MAGIC, MAX_READER_HEADER_SIZE};

use crate::types::Pinned;

/// Follows the VMA structure through the decompressed stream as it passes,
/// keeping the header and every extent header (what `IndexedReader::open`
/// reads). Stops quietly at anything that is not VMA: the indexed reader
/// reports it from the real bytes.
#[derive(Default)]
pub(crate) struct VmaWalker {
    /// Offset of the structure being collected.
    next: u64,
    /// Its length once known (the fixed header part first).
    want: usize,
    partial: Vec<u8>,
    header_done: bool,
    pub stopped: bool,
    pub pinned: Pinned,
}

impl VmaWalker {
    pub fn new() -> Self {
        VmaWalker {
            want: HEADER_FIXED_SIZE,
            ..Default::default()
        }
    }

    /// Feeds the stream bytes `data` found at stream offset `pos` (in order).
    pub fn feed(&mut self, pos: u64, data: &[u8]) {
        let end = pos + data.len() as u64;
        while !self.stopped {
            let need = self.next + self.partial.len() as u64;
            if need >= end || need < pos {
                return;
            }
            let from = (need - pos) as usize;
            let take = (self.want - self.partial.len()).min(data.len() - from);
            self.partial.extend_from_slice(&data[from..from + take]);
            if self.partial.len() < self.want {
                return;
            }
            self.structure_complete();
        }
    }

    /// The stream range the walker needs next, `None` once it stopped.
    pub(crate) fn wants(&self) -> Option<(u64, usize)> {
        (!self.stopped).then(|| {
            (
                self.next + self.partial.len() as u64,
                self.want - self.partial.len(),
            )
        })
    }

    fn structure_complete(&mut self) {
        let b = &self.partial;
        if !self.header_done {
            if b[..4] != MAGIC {
                self.stopped = true;
                return;
            }
            let size =
                u32::from_be_bytes(b[hdr::HEADER_SIZE..][..4].try_into().expect("4")) as usize;
            if size > self.want && size <= MAX_READER_HEADER_SIZE {
                // Still collecting the rest of the header.
                self.want = size;
                return;
            }
            if size != self.want {
                self.stopped = true;
                return;
            }
            self.pinned.push(0, b);
            self.header_done = true;
            self.next = size as u64;
        } else {
            if b[ext::MAGIC..][..4] != EXTENT_MAGIC {
                self.stopped = true;
                return;
            }
            let blocks = u16::from_be_bytes(b[ext::BLOCK_COUNT..][..2].try_into().expect("2"));
            self.pinned.push(self.next, b);
            self.next += (EXTENT_HEADER_SIZE + usize::from(blocks) * BLOCK_SIZE) as u64;
        }
        self.want = EXTENT_HEADER_SIZE;
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walker_follows_header_and_extents_across_chunks() {
        let mut stream = vec![0u8; HEADER_FIXED_SIZE + 100];
        stream[..4].copy_from_slice(&MAGIC);
        let hs = (HEADER_FIXED_SIZE + 100) as u32;
        stream[hdr::HEADER_SIZE..][..4].copy_from_slice(&hs.to_be_bytes());
        for blocks in [2u16, 0, 1] {
            let mut e = vec![0u8; EXTENT_HEADER_SIZE];
            e[..4].copy_from_slice(&EXTENT_MAGIC);
            e[ext::BLOCK_COUNT..][..2].copy_from_slice(&blocks.to_be_bytes());
            e[100] = blocks as u8 + 7;
            stream.extend_from_slice(&e);
            stream.extend(std::iter::repeat_n(0xAA, usize::from(blocks) * BLOCK_SIZE));
        }
        stream.extend_from_slice(&[1, 2, 3]); // a short trailing piece is not pinned
        for chunk in [1usize, 7, 511, 512, 4096, 1 << 20] {
            let mut w = VmaWalker::new();
            let mut pos = 0;
            for c in stream.chunks(chunk) {
                w.feed(pos, c);
                pos += c.len() as u64;
            }
            let offs: Vec<u64> = w.pinned.ranges.iter().map(|r| r.0).collect();
            let e0 = u64::from(hs);
            let e1 = e0 + 512 + 2 * 4096;
            let e2 = e1 + 512;
            assert_eq!(offs, vec![0, e0, e1, e2], "chunk {chunk}");
            for &(off, len, at) in &w.pinned.ranges {
                let at = at as usize;
                assert_eq!(
                    &w.pinned.blob[at..at + len as usize],
                    &stream[off as usize..off as usize + len as usize]
                );
            }
        }
    }

    #[test]
    fn walker_stops_at_non_vma() {
        let mut w = VmaWalker::new();
        w.feed(0, &vec![0x55u8; 20000]);
        assert!(w.pinned.ranges.is_empty());
    }
}
