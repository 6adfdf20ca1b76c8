//! Writing one object to `s3://bucket/key` with a multipart upload, as a
//! sync [`Write`]: `vma create` and `vma backup` to object storage.
//!
//! All or nothing: the key gets an object only in [`Upload::complete`], which
//! the caller calls once the archive is complete; every other way out (an
//! error, a drop, [`Aborter::abort`] from a signal's cleanup) aborts the
//! upload, so its parts are deleted and no partial object gets the key.
//!
//! Memory is bounded: one part being filled plus at most [`IN_FLIGHT`] parts
//! being sent (on the upload's own two-thread runtime) while the caller keeps
//! writing. Parts all have the same size (some stores, e.g. R2, require it):
//! `VMA_S3_PART_SIZE` bytes (default [`DEFAULT_PART_SIZE`], at least 5 MiB,
//! S3's minimum), so an object holds at most 10000 × that (S3's part limit).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{MultipartId, ObjectStoreExt};
use tokio::task::JoinHandle;

use crate::{display_url, err};

/// Default part size: 32 MiB (objects up to 312 GiB with 10000 parts).
pub const DEFAULT_PART_SIZE: usize = 32 << 20;
/// S3's smallest part (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's most parts per upload.
const MAX_PARTS: usize = 10_000;
/// Parts being sent at once (besides the one being filled).
pub const IN_FLIGHT: usize = 3;

/// What [`Aborter::abort`] needs: shareable with a signal's cleanup.
#[derive(Clone)]
pub struct Aborter {
    store: Arc<AmazonS3>,
    path: ObjPath,
    id: MultipartId,
    rt: tokio::runtime::Handle,
}

impl Aborter {
    /// Aborts the upload (its parts are deleted; the key stays as it was).
    /// Errors are returned for messages; aborting a finished upload fails
    /// harmlessly.
    pub fn abort(&self) -> io::Result<()> {
        let (store, path, id) = (self.store.clone(), self.path.clone(), self.id.clone());
        // A task on the upload's runtime, waited for from outside it (works
        // from any thread that is not one of the runtime's, e.g. the signal thread).
        let task = self
            .rt
            .spawn(async move { store.abort_multipart(&path, &id).await });
        match futures::executor::block_on(task) {
            Ok(r) => r.map_err(io::Error::other),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// A multipart upload in progress; see the module doc.
pub struct Upload {
    url: String,
    store: Arc<AmazonS3>,
    path: ObjPath,
    id: MultipartId,
    rt: tokio::runtime::Runtime,
    part_size: usize,
    buf: Vec<u8>,
    sending: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    parts: Vec<PartId>,
    next_idx: usize,
    /// Completed or aborted: nothing left to do on drop.
    done: bool,
}

fn part_size() -> io::Result<usize> {
    match std::env::var("VMA_S3_PART_SIZE") {
        Err(_) => Ok(DEFAULT_PART_SIZE),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= MIN_PART_SIZE => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "VMA_S3_PART_SIZE={v}: expected a number of bytes, at least {MIN_PART_SIZE}"
                ),
            )),
        },
    }
}

impl Upload {
    /// Starts a multipart upload to `url` (`s3://bucket/key` only); refuses
    /// a key that already holds an object.
    pub fn create(url: &str) -> io::Result<Upload> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "can't write {} - only s3:// URLs can be written",
                    display_url(url)
                ),
            ));
        };
        let part_size = part_size()?;
        let (s3, path) = crate::s3_store(url, rest)?;
        let store = Arc::new(s3);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vma-s3-upload")
            .enable_all()
            .build()?;
        match rt.block_on(store.head(&path)) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists; refusing to overwrite it",
                        display_url(url)
                    ),
                ))
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(url, "can't access", e)),
        }
        let id = rt
            .block_on(store.create_multipart(&path))
            .map_err(|e| err(url, "can't start the upload of", e))?;
        Ok(Upload {
            url: url.to_string(),
            store,
            path,
            id,
            rt,
            part_size,
            buf: Vec::with_capacity(part_size),
            sending: VecDeque::new(),
            parts: Vec::new(),
            next_idx: 0,
            done: false,
        })
    }

    /// A handle that aborts this upload from elsewhere (a signal's cleanup).
    pub fn aborter(&self) -> Aborter {
        Aborter {
            store: self.store.clone(),
            path: self.path.clone(),
            id: self.id.clone(),
            rt: self.rt.handle().clone(),
        }
    }

    /// Waits for the oldest part being sent.
    fn wait_one(&mut self) -> io::Result<()> {
        if let Some(h) = self.sending.pop_front() {
            let part = self
                .rt
                .block_on(h)
                .map_err(io::Error::other)?
                .map_err(|e| err(&self.url, "can't upload a part of", e))?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Sends the filled part (waiting first while [`IN_FLIGHT`] are on their way).
    fn send_part(&mut self) -> io::Result<()> {
        if self.next_idx == MAX_PARTS {
            return Err(io::Error::other(format!(
                "can't write {} - larger than {MAX_PARTS} parts of {} bytes; set VMA_S3_PART_SIZE higher",
                display_url(&self.url),
                self.part_size
            )));
        }
        while self.sending.len() >= IN_FLIGHT {
            self.wait_one()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let (store, path, id, idx) = (
            self.store.clone(),
            self.path.clone(),
            self.id.clone(),
            self.next_idx,
        );
        self.sending.push_back(
            self.rt
                .spawn(async move { store.put_part(&path, &id, idx, data.into()).await }),
        );
        self.next_idx += 1;
        Ok(())
    }

    /// Sends the last part, waits for all, and completes the upload: only
    /// now does the key get the object. On an error the upload is aborted.
    pub fn complete(mut self) -> io::Result<()> {
        // S3 needs at least one part (it may be empty when it is the only one).
        if !self.buf.is_empty() || self.next_idx == 0 {
            self.send_part()?;
        }
        while !self.sending.is_empty() {
            self.wait_one()?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.rt
            .block_on(self.store.complete_multipart(&self.path, &self.id, parts))
            .map_err(|e| err(&self.url, "can't complete the upload of", e))?;
        self.done = true;
        Ok(())
    }

    /// Aborts the upload now (also what a drop without [`Self::complete`] does).
    pub fn abort(mut self) -> io::Result<()> {
        self.abort_now()
    }

    fn abort_now(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        // Parts still being sent would otherwise race with the abort.
        for h in self.sending.drain(..) {
            h.abort();
            let _ = self.rt.block_on(h);
        }
        self.rt
            .block_on(self.store.abort_multipart(&self.path, &self.id))
            .map_err(|e| err(&self.url, "can't abort the upload of", e))
    }
}

impl Write for Upload {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }

    /// Parts are sent whole; nothing to push early.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = self.abort_now();
    }
}
