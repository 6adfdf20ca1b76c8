//! LZO1X for lzop blocks: a bounds-checked decompressor and a fast LZO1X-1
//! compressor ([`compress`], in `lzo1x/encode.rs`).
//!
//! Owns decoding of one LZO1X-1 / LZO1X-999 block, and encoding of one. We do not use
//! `lzokay-native`'s decoder on untrusted input: fuzzing found that crafted
//! back-references make it panic (`fuzz/regressions/stream-lzo-backref-panic.bin`)
//! and that its output is not capped. Here every read, back-reference and
//! write is checked, and output never exceeds the size the lzop block header
//! declared. The instruction set follows the LZO1X format as documented in
//! lzokay and liblzo's `lzo1x_d.ch`.

mod encode;
pub use encode::compress;

/// Why a block does not decode.
pub type DecodeError = &'static str;

struct Input<'a> {
    src: &'a [u8],
    ip: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.src.get(self.ip).ok_or("input overrun")?;
        self.ip += 1;
        Ok(b)
    }
    fn le16(&mut self) -> Result<usize, DecodeError> {
        let lo = self.byte()? as usize;
        Ok(lo | (self.byte()? as usize) << 8)
    }
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .ip
            .checked_add(n)
            .filter(|&e| e <= self.src.len())
            .ok_or("input overrun")?;
        let s = &self.src[self.ip..end];
        self.ip = end;
        Ok(s)
    }
    /// Length extension: a run of zero bytes (255 each) then a non-zero byte.
    fn ext_len(&mut self, base: usize) -> Result<usize, DecodeError> {
        let mut zeros = 0usize;
        let mut b = self.byte()?;
        while b == 0 {
            zeros += 1;
            b = self.byte()?;
        }
        // Bounded by the input length, so this cannot overflow usize.
        Ok(zeros * 255 + base + b as usize)
    }
}

fn literals(
    inp: &mut Input<'_>,
    out: &mut Vec<u8>,
    n: usize,
    max: usize,
) -> Result<(), DecodeError> {
    if out.len() + n > max {
        return Err("output overrun");
    }
    out.extend_from_slice(inp.take(n)?);
    Ok(())
}

/// Decodes one LZO1X block `src` into `out` (cleared first), producing at most `max` bytes.
pub fn decompress(src: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), DecodeError> {
    out.clear();
    out.reserve(max.min(64 << 20));
    let mut inp = Input { src, ip: 0 };
    let mut state = 0usize;
    match src.first() {
        Some(&b) if b >= 22 => {
            inp.ip = 1;
            literals(&mut inp, out, b as usize - 17, max)?;
            state = 4;
        }
        Some(&b) if b >= 18 => {
            inp.ip = 1;
            state = b as usize - 17;
            literals(&mut inp, out, state, max)?;
        }
        _ => {}
    }
    loop {
        let inst = inp.byte()? as usize;
        let (dist, len, next);
        if inst & 0xc0 != 0 {
            // M2: 3..8 bytes within 2 KiB.
            let h = inp.byte()? as usize;
            dist = (h << 3) + ((inst >> 2) & 7) + 1;
            len = (inst >> 5) + 1;
            next = inst & 3;
        } else if inst & 0x20 != 0 {
            // M3: within 16 KiB.
            let l = inst & 0x1f;
            len = if l == 0 { inp.ext_len(31)? } else { l } + 2;
            let v = inp.le16()?;
            dist = (v >> 2) + 1;
            next = v & 3;
        } else if inst & 0x10 != 0 {
            // M4: 16..48 KiB; distance 0 is the end-of-stream marker.
            let l = inst & 7;
            len = if l == 0 { inp.ext_len(7)? } else { l } + 2;
            let v = inp.le16()?;
            let d = ((inst & 8) << 11) + (v >> 2);
            if d == 0 {
                return if len == 3 {
                    Ok(())
                } else {
                    Err("bad end-of-stream marker")
                };
            }
            dist = d + 16384;
            next = v & 3;
        } else if state == 0 {
            // Long literal run.
            let n = if inst == 0 { inp.ext_len(15)? } else { inst } + 3;
            literals(&mut inp, out, n, max)?;
            state = 4;
            continue;
        } else if state != 4 {
            // M1 after 1..3 literals: 2 bytes within 1 KiB.
            let h = inp.byte()? as usize;
            dist = (inst >> 2) + (h << 2) + 1;
            len = 2;
            next = inst & 3;
        } else {
            // M1 after a literal run: 3 bytes at 2..3 KiB.
            let h = inp.byte()? as usize;
            dist = (inst >> 2) + (h << 2) + 2049;
            len = 3;
            next = inst & 3;
        }
        if dist > out.len() {
            return Err("back-reference before the start of the block");
        }
        if out.len() + len > max {
            return Err("output overrun");
        }
        let start = out.len() - dist;
        if dist >= len {
            out.extend_from_within(start..start + len);
        } else {
            // Overlapping copy repeats the pattern byte by byte.
            for i in 0..len {
                let b = out[start + i];
                out.push(b);
            }
        }
        literals(&mut inp, out, next, max)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_lzokay_native_output() {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(format!("{} ", i % 977).as_bytes());
        }
        data.extend(std::iter::repeat_n(0u8, 70_000));
        let c = lzokay_native::compress(&data).unwrap();
        let mut out = Vec::new();
        decompress(&c, &mut out, data.len()).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            decompress(&c, &mut out, data.len() - 1),
            Err("output overrun")
        );
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let mut out = Vec::new();
        for src in [
            &[][..],
            &[0x40, 0xff],
            &[0x11],
            &[0x20, 0, 0, 0],
            &[0x00, 0x00, 0x00],
            &[0x11, 0x00, 0x00],
        ] {
            let _ = decompress(src, &mut out, 1 << 20);
        }
        // A back-reference into nothing.
        assert!(decompress(&[0x15, b'a', b'b', b'c', b'd', 0x4c, 0xff], &mut out, 100).is_err());
        // The end marker alone decodes to nothing.
        assert_eq!(decompress(&[0x11, 0x00, 0x00], &mut out, 0), Ok(()));
    }
}
