//! A raw-deflate inflater over zlib's C API (`libz-rs-sys`, zlib in Rust):
//! the crate's zlib binding, part of `sys` (the module of its `unsafe` calls).
//!
//! Owns [`Inflater`]: what gzip checkpoints need and flate2 does not expose —
//! `Z_BLOCK` (stop at each deflate block boundary) with `data_type`,
//! `inflatePrime` (start at a bit position) and `inflateSetDictionary` on a
//! raw stream. Every call goes through a safe method; the `z_stream` is boxed
//! (zlib's state points back at it) and never holds pointers into the
//! caller's buffers between calls.

use std::ffi::{c_int, CStr};
use std::io;

use libz_rs_sys as z;
pub(crate) use z::{Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END};

/// What one call of [`Inflater::run`] did.
pub(crate) struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub ret: c_int,
    /// zlib's `data_type`: unused bits of the last input byte (low 3 bits),
    /// 64 in the last block, 128 just after a block ended.
    pub data_type: c_int,
}

/// A raw-deflate inflater (window bits -15) over zlib's C API.
pub(crate) struct Inflater {
    // Boxed: zlib's state points back at the stream, so it must not move.
    strm: Box<z::z_stream>,
}

impl Inflater {
    pub fn new() -> io::Result<Self> {
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a default z_stream (null buffers, the crate's
        // allocator), the version is the library's own, and the size is that
        // of the struct passed: what inflateInit2_ requires.
        let ret = unsafe {
            z::inflateInit2_(
                &mut *strm,
                -15,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if ret != z::Z_OK {
            return Err(io::Error::other(format!("inflateInit2 failed ({ret})")));
        }
        Ok(Inflater { strm })
    }

    fn check(&self, ret: c_int, what: &str) -> io::Result<()> {
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(io::Error::other(format!("{what} failed ({ret})")))
        }
    }

    /// Forgets the stream: ready for a new one.
    pub fn reset(&mut self) -> io::Result<()> {
        // SAFETY: the stream was initialised by `new` and has not moved (boxed).
        let ret = unsafe { z::inflateReset(&mut *self.strm) };
        self.check(ret, "inflateReset")
    }

    /// Inserts the `bits` (1..=7) low bits of `value` before the next input.
    pub fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: as in `reset`; bits ≤ 16 is what inflatePrime accepts.
        let ret =
            unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        self.check(ret, "inflatePrime")
    }

    /// The decoded bytes that back-references may reach before the next input.
    pub fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
        // SAFETY: as in `reset`; `dict` is valid for reads of its length (at
        // most 32 KiB, well within u32), which inflate copies.
        let ret =
            unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        self.check(ret, "inflateSetDictionary")
    }

    /// One call of inflate from `input` into `output` with `flush`.
    pub fn run(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        let s = &mut *self.strm;
        let avail_in = input.len().min(u32::MAX as usize) as u32;
        let avail_out = output.len().min(u32::MAX as usize) as u32;
        s.next_in = input.as_ptr();
        s.avail_in = avail_in;
        s.next_out = output.as_mut_ptr();
        s.avail_out = avail_out;
        // SAFETY: the stream is initialised and unmoved; next_in/avail_in and
        // next_out/avail_out describe live slices that inflate reads and
        // writes only within, and only during this call.
        let ret = unsafe { z::inflate(s, flush) };
        let step = Step {
            consumed: (avail_in - s.avail_in) as usize,
            produced: (avail_out - s.avail_out) as usize,
            ret,
            data_type: s.data_type,
        };
        // No pointers into the caller's buffers outlive the call.
        s.next_in = std::ptr::null();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        step
    }

    /// zlib's message for the last error, or the code.
    pub fn message(&self, ret: c_int) -> String {
        if self.strm.msg.is_null() {
            format!("inflate error {ret}")
        } else {
            // SAFETY: a non-null `msg` points at one of zlib's static,
            // NUL-terminated messages.
            unsafe { CStr::from_ptr(self.strm.msg) }
                .to_string_lossy()
                .into_owned()
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised by `new`, unmoved, ended only here.
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}
