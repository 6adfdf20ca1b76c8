//! A fast LZO1X-1 compressor (the algorithm of liblzo's `lzo1x_1_compress`
//! and Linux's `lib/lzo/lzo1x_compress.c`, without run-length extensions),
//! in safe Rust.
//!
//! lzokay-native's compressor searches exhaustively (LZO1X-999 style) and
//! manages about 20 MB/s; `lzop`'s default LZO1X-1 is a greedy single-probe
//! hash search that runs at hundreds of MB/s. The output is plain LZO1X,
//! decoded by any LZO1X decompressor (lzop, lzokay, liblzo).

const D_BITS: u32 = 14;
const D_MASK: usize = (1 << D_BITS) - 1;
const M2_MAX_LEN: usize = 8;
const M2_MAX_OFFSET: usize = 0x0800;
const M3_MAX_LEN: usize = 33;
const M3_MAX_OFFSET: usize = 0x4000;
const M4_MAX_LEN: usize = 9;
const M4_MAX_OFFSET: usize = 0xbfff;
const M3_MARKER: u8 = 32;
const M4_MARKER: u8 = 16;

fn le32(src: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]])
}

/// Appends a literal run length of `t` (> 0) in LZO1X's encoding, after a match
/// or at the start (`first`: nothing emitted yet).
fn literal_len(out: &mut Vec<u8>, t: usize) {
    if t <= 3 {
        // The two low bits of the previous match's offset byte hold short runs.
        let n = out.len();
        out[n - 2] |= t as u8;
    } else if t <= 18 {
        out.push((t - 3) as u8);
    } else {
        let mut tt = t - 18;
        out.push(0);
        while tt > 255 {
            tt -= 255;
            out.push(0);
        }
        out.push(tt as u8);
    }
}

/// Compresses `src[base..base + len]` (len > 20, ≤ 49152) with `ti` literals
/// pending before `base`; returns the literals pending at the end.
fn do_compress(
    src: &[u8],
    base: usize,
    len: usize,
    out: &mut Vec<u8>,
    ti: usize,
    dict: &mut [u16],
) -> usize {
    let in_end = base + len;
    let ip_end = in_end - 20;
    let mut ti = ti;
    let mut ii = base;
    let mut ip = base + 4usize.saturating_sub(ti);
    let mut after_match = false;
    loop {
        if !after_match {
            ip += 1 + ((ip - ii) >> 5);
        }
        after_match = false;
        if ip >= ip_end {
            break;
        }
        let dv = le32(src, ip);
        let h = ((dv.wrapping_mul(0x1824_429d) >> (32 - D_BITS)) as usize) & D_MASK;
        let m_pos = base + usize::from(dict[h]);
        dict[h] = (ip - base) as u16;
        if dv != le32(src, m_pos) {
            continue;
        }
        ii -= ti;
        ti = 0;
        let t = ip - ii;
        if t != 0 {
            literal_len(out, t);
            out.extend_from_slice(&src[ii..ip]);
        }
        let mut m_len = 4;
        while ip + m_len < ip_end && src[ip + m_len] == src[m_pos + m_len] {
            m_len += 1;
        }
        let mut m_off = ip - m_pos;
        ip += m_len;
        ii = ip;
        if m_len <= M2_MAX_LEN && m_off <= M2_MAX_OFFSET {
            m_off -= 1;
            out.push((((m_len - 1) << 5) | ((m_off & 7) << 2)) as u8);
            out.push((m_off >> 3) as u8);
        } else {
            let (marker, max_len) = if m_off <= M3_MAX_OFFSET {
                m_off -= 1;
                (M3_MARKER, M3_MAX_LEN)
            } else {
                m_off -= 0x4000;
                (M4_MARKER | ((m_off >> 11) & 8) as u8, M4_MAX_LEN)
            };
            if m_len <= max_len {
                out.push(marker | (m_len - 2) as u8);
            } else {
                let mut rest = m_len - max_len;
                out.push(marker);
                while rest > 255 {
                    rest -= 255;
                    out.push(0);
                }
                out.push(rest as u8);
            }
            out.push((m_off << 2) as u8);
            out.push((m_off >> 6) as u8);
        }
        after_match = true;
    }
    (in_end - ii) + ti
}

/// Compresses `src` into one LZO1X stream (with its end marker).
pub fn compress(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + src.len() / 16 + 64 + 3);
    let mut dict = vec![0u16; 1 << D_BITS];
    let mut pos = 0;
    let mut left = src.len();
    let mut t = 0;
    while left > 20 {
        // Windows of at most M4_MAX_OFFSET + 1 bytes keep offsets encodable and u16.
        let ll = left.min(M4_MAX_OFFSET + 1);
        dict.fill(0);
        t = do_compress(src, pos, ll, &mut out, t, &mut dict);
        pos += ll;
        left -= ll;
    }
    t += left;
    if t > 0 {
        let ii = src.len() - t;
        if out.is_empty() && t <= 238 {
            out.push((17 + t) as u8);
        } else {
            literal_len(&mut out, t);
        }
        out.extend_from_slice(&src[ii..]);
    }
    out.extend_from_slice(&[M4_MARKER | 1, 0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our decoder (capped at the exact length) and lzokay-native's, as an
    /// independent reference, both give `data` back.
    fn check(data: &[u8]) {
        let c = compress(data);
        let d = lzokay_native::decompress_all(&c, Some(data.len())).expect("decodes");
        assert_eq!(d, data, "len {}", data.len());
        let mut ours = Vec::new();
        crate::lzo1x::decompress(&c, &mut ours, data.len()).expect("our decoder decodes");
        assert_eq!(ours, data, "len {}", data.len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any input, and inputs made of few symbols (long and far matches).
        #[test]
        fn round_trips_any_input(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70_000),
            few in proptest::collection::vec(0u8..3, 0..120_000),
        ) {
            check(&data);
            check(&few);
        }
    }

    #[test]
    fn round_trips_through_an_independent_decoder() {
        let mut x = 0x9e37_79b9u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for len in [
            0usize, 1, 3, 4, 17, 18, 19, 20, 21, 22, 238, 239, 300, 4096, 49_151, 49_152, 49_153,
            100_000, 262_144,
        ] {
            check(&vec![0u8; len]);
            let r: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            check(&r);
            // Text-like, with short and long repeats at near and far offsets.
            let mut m = Vec::with_capacity(len);
            while m.len() < len {
                match rnd() % 5 {
                    0 => m.extend((0..rnd() % 40).map(|_| b'a' + (rnd() % 6) as u8)),
                    1 if m.len() > 20_000 => {
                        let s = m.len() - 16_385 - (rnd() % 3000) as usize;
                        let n = (rnd() % 400) as usize;
                        for k in 0..n {
                            m.push(m[s + k]);
                        }
                    }
                    2 if !m.is_empty() => {
                        let s = (rnd() as usize) % m.len();
                        let n = (rnd() % 70) as usize;
                        for k in 0..n {
                            m.push(m[s + k % (m.len() - s)]);
                        }
                    }
                    _ => m.extend(std::iter::repeat_n(
                        (rnd() % 3) as u8,
                        (rnd() % 700) as usize,
                    )),
                }
            }
            m.truncate(len);
            check(&m);
        }
    }

    #[test]
    fn compresses_zeros_well() {
        assert!(compress(&[0u8; 262_144]).len() < 2000);
    }
}
