//! The tests of `gzip` (checkpoint pass, span decoding), which read through
//! a [`crate::source::FrameSource`]: here, below `source`, so that `gzip`
//! itself depends on nothing above it.

/// The crafted-block writer the integration tests use too.
#[path = "../tests/seekable_common/deflate_bits.rs"]
mod deflate_bits;

mod tests {
    use super::deflate_bits::Bits;
    use crate::gzip::*;
    use crate::source::{FrameSource, GZIP_PIECE};
    use crate::types::{Codec, Pinned};
    use std::io::Write;
    use vma_format::ReadAt;

    /// Mixed data: runs, text, pseudo-random bytes (so blocks of all kinds).
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 1000 + (x % 20_000) as usize;
            match x % 4 {
                0 => v.extend(std::iter::repeat_n((x >> 8) as u8, n)),
                1 => {
                    for i in 0..n / 30 {
                        v.extend_from_slice(format!("line {i} of a block {x:x}\n").as_bytes());
                    }
                }
                _ => {
                    let mut y = x;
                    for _ in 0..n {
                        y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                        v.push((y >> 33) as u8);
                    }
                }
            }
        }
        v.truncate(len);
        v
    }

    fn gz(plain: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    fn source(bytes: &[u8], span: u64) -> (tempfile::NamedTempFile, FrameSource, PassResult) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = t.reopen().unwrap();
        let r = pass(&f, bytes.len() as u64, span, &|_| {}, &|| false).unwrap();
        let mut src = FrameSource::new(
            std::sync::Arc::new(f),
            t.path().into(),
            Codec::Gzip,
            r.frames.clone(),
            Pinned::default(),
            1 << 20,
        );
        src.set_points(r.points.clone());
        (t, src, r)
    }

    fn check_reads(src: &FrameSource, plain: &[u8], seed: u64) {
        assert_eq!(src.size().unwrap(), plain.len() as u64);
        let mut x = seed | 1;
        let mut buf = vec![0u8; 300_000];
        for k in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % plain.len() as u64) as usize;
            let len = if k % 3 == 0 {
                4096
            } else {
                1 + (x >> 20) as usize % buf.len()
            };
            let n = src.read_at_offset(off as u64, &mut buf[..len]).unwrap();
            let end = (off + len).min(plain.len());
            assert_eq!(n, end - off);
            assert!(buf[..n] == plain[off..end], "differs at {off}+{len}");
        }
        // Reads that straddle every span boundary.
        for f in &src.frames[1..] {
            let off = f.u_off - 100;
            let n = src.read_at_offset(off, &mut buf[..200]).unwrap();
            assert_eq!(n, 200);
            assert!(buf[..200] == plain[off as usize..off as usize + 200]);
        }
    }

    #[test]
    fn small_spans_give_many_checkpoints_at_bit_offsets() {
        let plain = data(3 << 20, 7);
        // Not level 1: flate2 runs on zlib-rs, whose level 1 (deflate_quick)
        // ends a deflate block only every MiB or more (2 checkpoints here);
        // 64 KiB spans need the smaller blocks of the other levels.
        for level in [2, 6, 9] {
            let bytes = gz(&plain, level);
            let (_t, src, r) = source(&bytes, 64 << 10);
            assert_eq!(r.size, plain.len() as u64);
            assert_eq!(r.frames.len(), r.points.points.len());
            assert!(r.frames.len() >= 20, "level {level}: {}", r.frames.len());
            let odd = r.points.points.iter().filter(|p| p.bits != 0).count();
            assert!(
                odd >= r.frames.len() / 2,
                "level {level}: {odd} at bit offsets"
            );
            // Spans are at least the span long (but the last) and contiguous.
            for w in r.frames.windows(2) {
                assert!(w[0].u_len >= 64 << 10);
                assert_eq!(w[0].u_off + w[0].u_len, w[1].u_off);
            }
            check_reads(&src, &plain, level.into());
        }
        // Stored blocks (level 0) end on a byte boundary.
        let bytes = gz(&plain, 0);
        let (_t, src, r) = source(&bytes, 64 << 10);
        assert!(r.frames.len() >= 20);
        check_reads(&src, &plain, 5);
    }

    #[test]
    fn concatenated_members_restart_without_a_window() {
        let plain = data(2 << 20, 9);
        let cut = 700_001;
        let mut bytes = gz(&plain[..cut], 6);
        bytes.extend_from_slice(&gz(&[], 6)); // an empty member
        bytes.extend_from_slice(&gz(&plain[cut..], 1));
        let (_t, src, r) = source(&bytes, 256 << 10);
        let starts: Vec<_> = r
            .frames
            .iter()
            .zip(&r.points.points)
            .filter(|(_, p)| p.window_len == 0)
            .map(|(f, _)| f.u_off)
            .collect();
        assert_eq!(starts, vec![0, cut as u64]);
        check_reads(&src, &plain, 3);
    }

    #[test]
    fn bad_trailers_and_cut_files_are_errors() {
        let plain = data(300_000, 11);
        let bytes = gz(&plain, 6);
        let run = |b: &[u8]| {
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(b).unwrap();
            pass(
                &t.reopen().unwrap(),
                b.len() as u64,
                1 << 16,
                &|_| {},
                &|| false,
            )
            .err()
            .map(|e| e.to_string())
        };
        assert_eq!(run(&bytes), None);
        let n = bytes.len();
        let mut b = bytes.clone();
        b[n - 8] ^= 1;
        assert!(run(&b).unwrap().contains("CRC-32"));
        let mut b = bytes.clone();
        b[n - 2] ^= 1;
        assert!(run(&b).unwrap().contains("ISIZE"));
        for cut in [1, 5, 11, n / 2, n - 3] {
            let e = run(&bytes[..cut]).unwrap();
            assert!(e.contains("file ends inside"), "cut {cut}: {e}");
        }
        let mut b = bytes.clone();
        b.extend_from_slice(b"\x1f\x8c\x08\0\0\0\0\0\0\x03");
        assert!(run(&b).unwrap().contains("bad magic"));
    }

    #[test]
    fn zero_padding_is_ignored_and_trailing_garbage_is_an_error() {
        let plain = data(300_000, 19);
        let mut bytes = gz(&plain[..100_000], 6);
        bytes.extend_from_slice(&gz(&plain[100_000..], 6));
        let end = bytes.len();
        // Zero padding (as gzip -d accepts): the same spans, the same bytes.
        let (_t, _, want) = source(&bytes, 1 << 16);
        for pad in [1, 8, READ + 5] {
            let mut b = bytes.clone();
            b.resize(end + pad, 0);
            let (_t, src, r) = source(&b, 1 << 16);
            assert_eq!(r.frames, want.frames, "{pad} zero bytes");
            check_reads(&src, &plain, pad as u64);
        }
        // Anything else: an error at the first byte that is not padding.
        for (tail, at) in [(&b"garbage"[..], end), (&b"\0\0\0x"[..], end + 3)] {
            let mut b = bytes.clone();
            b.extend_from_slice(tail);
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(&b).unwrap();
            let e = pass(
                &t.reopen().unwrap(),
                b.len() as u64,
                1 << 16,
                &|_| {},
                &|| false,
            )
            .err()
            .expect("garbage accepted")
            .to_string();
            assert!(
                e.contains(&format!("compressed byte offset {at}: trailing garbage")),
                "{tail:?}: {e}"
            );
            assert!(e.contains(&format!("ends at byte {end}")), "{e}");
        }
    }

    #[test]
    fn damaged_or_cut_files_never_panic() {
        // Whatever the pass accepts must then read without panicking (the
        // bytes may be wrong where the damage hides from every checksum).
        let plain = data(200_000, 17);
        let mut bytes = gz(&plain[..90_000], 6);
        bytes.extend_from_slice(&gz(&plain[90_000..], 1));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for k in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = bytes.clone();
            if k % 3 == 0 {
                b.truncate((x % b.len() as u64) as usize);
            } else {
                for j in 0..1 + k % 4 {
                    let at = ((x >> (8 * j)) % b.len() as u64) as usize;
                    b[at] ^= 1 << ((x >> 40) % 8);
                }
            }
            let mut t = tempfile::NamedTempFile::new().unwrap();
            t.write_all(&b).unwrap();
            let f = t.reopen().unwrap();
            let Ok(r) = pass(&f, b.len() as u64, 16 << 10, &|_| {}, &|| false) else {
                continue;
            };
            let mut src = FrameSource::new(
                std::sync::Arc::new(f),
                t.path().into(),
                Codec::Gzip,
                r.frames,
                Pinned::default(),
                1 << 20,
            );
            src.set_points(r.points);
            let mut buf = vec![0u8; 70_000];
            let mut off = 0;
            while off < r.size {
                let _ = src.read_at_offset(off, &mut buf);
                off += buf.len() as u64;
            }
        }
    }

    /// A gzip member of one fixed-Huffman deflate block decoding to `n`
    /// bytes: the 7-byte period 1..=7, then back-references of 258 bytes at
    /// distance 7 (13 bits each). No real compressor writes such a block; a
    /// crafted file may.
    fn one_block(n: usize) -> (Vec<u8>, u32) {
        let mut b = Bits::fixed_block();
        let mut plain = Vec::with_capacity(n);
        for x in 1..=7u8 {
            b.sym(u32::from(x)); // literal
            plain.push(x);
        }
        while plain.len() + 258 <= n {
            b.sym(285); // length 258
            b.code(5, 5); // distance code 5: 7-8
            b.put(0, 1); // + 0: 7
            for _ in 0..258 {
                plain.push(plain[plain.len() - 7]);
            }
        }
        while plain.len() < n {
            let x = plain[plain.len() - 7];
            b.sym(u32::from(x));
            plain.push(x);
        }
        let crc = crc32fast::hash(&plain);
        (b.finish(&plain), crc)
    }

    #[test]
    fn a_huge_deflate_block_is_read_in_bounded_pieces() {
        let n = 2 * GZIP_PIECE as usize + 5_000_000;
        let (bytes, _) = one_block(n);
        let byte = |at: usize| (at % 7) as u8 + 1;
        let (_t, src, r) = source(&bytes, 1 << 20);
        assert_eq!(r.size, n as u64);
        assert_eq!(r.frames.len(), 1, "one block, one span");
        let mut buf = vec![0u8; 300_000];
        let check = |off: u64, buf: &mut [u8]| {
            let got = src.read_at_offset(off, buf).unwrap();
            assert_eq!(got as u64, buf.len().min(n - off as usize) as u64);
            let bad = buf[..got]
                .iter()
                .enumerate()
                .position(|(j, &x)| x != byte(off as usize + j));
            assert_eq!(bad, None, "read at {off}");
        };
        // Reads straddling the pieces, at random, then the end of the span
        // (its CRC-32 checked).
        for off in [
            GZIP_PIECE - 1000,
            7_777_777,
            2 * GZIP_PIECE - 150_000,
            100,
            n as u64 - 1000,
        ] {
            check(off, &mut buf);
        }
        assert!(src.largest_cached() <= GZIP_PIECE as usize);
        // All of it, sequentially, on a fresh source: each piece resumes
        // where the previous one stopped, so the span is decoded about once
        // (not once per piece, from its checkpoint).
        let (_t, src, _) = source(&bytes, 1 << 20);
        INFLATED.with(|c| c.set(0));
        let mut off = 0;
        while off < n as u64 {
            let got = src.read_at_offset(off, &mut buf).unwrap();
            assert_eq!(got, buf.len().min(n - off as usize));
            let bad = buf[..got]
                .iter()
                .enumerate()
                .position(|(j, &x)| x != byte(off as usize + j));
            assert_eq!(bad, None, "read at {off}");
            off += buf.len() as u64;
        }
        let inflated = INFLATED.with(|c| c.get());
        assert!(
            inflated < n as u64 + (n as u64 >> 3),
            "{inflated} bytes inflated for {n}"
        );
        assert!(src.largest_cached() <= GZIP_PIECE as usize);
        assert!(src.cache_slots() >= 2);
    }

    #[test]
    fn a_huge_block_read_whole_is_checked_against_its_crc() {
        // Small pieces on a smaller block: the same code paths, quicker.
        let n = 5_000_000;
        let (bytes, _) = one_block(n);
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&bytes).unwrap();
        let f = t.reopen().unwrap();
        let r = pass(&f, bytes.len() as u64, 1 << 16, &|_| {}, &|| false).unwrap();
        let mut frames = r.frames.clone();
        assert_eq!(frames.len(), 1);
        // The index says another CRC-32: only a read of the span's end sees it.
        frames[0].crc ^= 1;
        let mut src = FrameSource::new(
            std::sync::Arc::new(f),
            t.path().into(),
            Codec::Gzip,
            frames,
            Pinned::default(),
            1 << 20,
        );
        src.set_points(r.points);
        src.set_piece(300_000, 1 << 20);
        let mut buf = vec![0u8; 100_000];
        for off in [0u64, 299_990, 1_234_567, 4_500_000] {
            src.read_at_offset(off, &mut buf).unwrap();
            assert_eq!(buf[0], (off % 7) as u8 + 1);
        }
        assert!(src.largest_cached() <= 300_000);
        let e = src
            .read_at_offset(n as u64 - 10, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRC-32 of the decoded span"), "{e}");
    }

    #[test]
    fn a_damaged_span_is_an_error_with_its_offset() {
        let plain = data(1 << 20, 13);
        let bytes = gz(&plain, 6);
        let (t, src, r) = source(&bytes, 128 << 10);
        let f = r.frames[2];
        let mut b = bytes.clone();
        let mid = (f.c_off + f.c_len / 2) as usize;
        b[mid] ^= 0x10;
        std::fs::write(t.path(), &b).unwrap();
        let mut buf = vec![0u8; f.u_len as usize];
        let e = src
            .read_at_offset(f.u_off, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("compressed byte offset {}", f.c_off)),
            "{e}"
        );
    }
}
