//! Opening an archive for reading: a path, `-` (stdin) or a remote URL
//! (`s3://bucket/key`, `http(s)://`, feature `remote`), any compression
//! (detected by magic via `vma_format::decompressor`), then the header.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{anyhow, Result};
use vma_format::{Compression, StreamReader};

/// The archive reader every reading command uses.
pub type Reader = StreamReader<Box<dyn Read + Send>>;

/// `strerror`-style text of an I/O error (without Rust's "(os error N)").
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Opens `path` (`-` = stdin) as a raw byte stream.
fn open_raw(path: &Path) -> Result<File> {
    if path.as_os_str() == "-" {
        // A dup of fd 0 as a File: unbuffered, so the reader's own large
        // reads go straight to the kernel (no 8 KiB StdinLock buffer, no copy).
        let f =
            crate::sys::dup_stdin().map_err(|e| anyhow!("can't open stdin - {}", strerror(&e)))?;
        // A larger pipe buffer (64 KiB by default) lets one read return up
        // to 1 MiB: fewer syscalls per 3.7 MiB extent. Not a pipe, or the
        // limit reached: irrelevant.
        crate::sys::set_pipe_size(&f, 1 << 20);
        Ok(f)
    } else {
        File::open(path)
            .map_err(|e| anyhow!("can't open file {} - {}", path.display(), strerror(&e)))
    }
}

/// How a command reads a remote archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only the header (`list`, `config`): ranged GETs, at most 2 for a plain archive.
    Header,
    /// Everything, in order (`verify`, `extract`): one streaming GET.
    Stream,
}

/// The remote URL `path` names, if any.
pub fn remote_url(path: &Path) -> Option<&str> {
    path.to_str()
        .filter(|s| s.starts_with("s3://") || s.starts_with("http://") || s.starts_with("https://"))
}

/// Opens a remote archive as a byte stream.
#[cfg(feature = "remote")]
fn open_remote(url: &str, access: Access) -> Result<Box<dyn Read + Send>> {
    let obj = std::sync::Arc::new(vma_remote::RemoteObject::open(url)?);
    Ok(match access {
        Access::Header => obj.header_reader()?,
        Access::Stream => Box::new(obj.stream()?),
    })
}

#[cfg(not(feature = "remote"))]
fn open_remote(url: &str, _: Access) -> Result<Box<dyn Read + Send>> {
    Err(anyhow!(
        "can't open {url} - this vma was built without remote archive support (feature `remote`)"
    ))
}

/// Opens an archive and reads its header.
pub fn open_archive(path: &Path) -> Result<(Compression, Reader)> {
    open_archive_for(path, Access::Stream)
}

/// Opens an archive for `access` and reads its header.
pub fn open_archive_for(path: &Path, access: Access) -> Result<(Compression, Reader)> {
    let remote = remote_url(path);
    let raw: Box<dyn Read + Send> = match remote {
        Some(url) => open_remote(url, access)?,
        None => Box::new(open_raw(path)?),
    };
    reader_from(raw, remote.is_some())
}

/// The archive reader over the bytes of an archive (any compression);
/// `network`: they arrive over a connection.
pub fn reader_from(raw: Box<dyn Read + Send>, network: bool) -> Result<(Compression, Reader)> {
    // Typed errors (not their text): `--json` reports their byte offset.
    let (compression, stream) = vma_format::decompressor(raw)?;
    // Decompression, or receiving from the network, runs on its own thread,
    // overlapping the consumer's hashing and writing (4 × 4 MiB in flight
    // bounds the memory). A local plain stream is read directly: a second
    // thread would only add a copy.
    let stream: Box<dyn Read + Send> = match compression {
        Compression::None if !network => stream,
        _ => Box::new(vma_format::ReadAhead::new(stream, 4 << 20, 4)),
    };
    let reader = StreamReader::new(stream)?;
    Ok((compression, reader))
}
