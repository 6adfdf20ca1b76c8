//! Where `vma create` writes: a hidden temporary file next to OUT, synced
//! and published under OUT only when complete (never replacing a file that
//! appeared meanwhile) and removed on failure or signal; standard output; an
//! existing FIFO; or an `exec:` pipe. [`Sink`] is the archive's byte stream
//! on top, plain or compressed.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::compress::ParallelCompressor;
use crate::sys;

/// The byte sink under the archive (before any compression).
pub(crate) enum Target {
    /// A temporary file, renamed to `final_path` on success, removed otherwise.
    Temp {
        file: File,
        tmp: PathBuf,
        final_path: PathBuf,
        committed: bool,
        /// Removes `tmp` when a signal ends the process.
        _cleanup: crate::interrupt::Cleanup,
    },
    /// Standard output or an existing FIFO: nothing to rename or remove.
    Stream(File),
    /// `exec:`: the shell's stdin.
    Exec {
        stdin: Option<File>,
        child: Child,
        command: String,
    },
    /// `s3://bucket/key`: a multipart upload, fed through a pipe (the archive
    /// writer and the compressor write to a `File`) by a thread; completed in
    /// [`Target::commit`] only, aborted otherwise (drop, signal).
    #[cfg(feature = "remote")]
    Remote(RemoteOut),
}

/// The remote case of [`Target`].
#[cfg(feature = "remote")]
pub(crate) struct RemoteOut {
    url: String,
    /// The pipe's write end (None once closed).
    pipe: Option<File>,
    /// Copies the pipe into the upload; gives the upload back at EOF.
    feeder: Option<std::thread::JoinHandle<io::Result<vma_remote::Upload>>>,
    committed: bool,
    /// Aborts the upload when a signal ends the process.
    _cleanup: crate::interrupt::Cleanup,
}

#[cfg(feature = "remote")]
impl RemoteOut {
    fn open(url: &str) -> Result<RemoteOut> {
        let mut upload = vma_remote::Upload::create(url)?;
        let aborter = upload.aborter();
        let _cleanup = crate::interrupt::on_interrupt(move || {
            let _ = aborter.abort();
        });
        let (mut rd, wr) = io::pipe().context("can't create a pipe")?;
        let pipe = sys::pipe_writer_file(wr);
        let feeder = std::thread::Builder::new()
            .name("vma-s3-feeder".into())
            .spawn(move || {
                io::copy(&mut rd, &mut upload)?;
                Ok(upload)
            })
            .context("can't start the upload thread")?;
        Ok(RemoteOut {
            url: url.to_string(),
            pipe: Some(pipe),
            feeder: Some(feeder),
            committed: false,
            _cleanup,
        })
    }

    /// Closes the pipe and waits for the feeder: the upload with every byte
    /// written, or why it failed (its upload is aborted by its drop).
    fn drain(&mut self) -> Result<Option<vma_remote::Upload>> {
        drop(self.pipe.take());
        match self.feeder.take().map(|h| h.join()) {
            None => Ok(None),
            Some(Ok(Ok(u))) => Ok(Some(u)),
            Some(Ok(Err(e))) => Err(anyhow::Error::from(e)),
            Some(Err(_)) => bail!("the upload thread panicked"),
        }
    }

    fn commit(&mut self, written: File) -> Result<()> {
        drop(written);
        let Some(upload) = self.drain()? else {
            bail!("internal: the upload of {} was already ended", self.url);
        };
        // Not while a signal's cleanup aborts the upload: all or nothing.
        crate::interrupt::critical(|| upload.complete())?;
        self.committed = true;
        Ok(())
    }
}

#[cfg(feature = "remote")]
impl Drop for RemoteOut {
    fn drop(&mut self) {
        if !self.committed {
            // Dropping the upload aborts it.
            let _ = self.drain();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        match self {
            Target::Temp {
                tmp,
                committed: false,
                ..
            } => {
                let _ = std::fs::remove_file(tmp);
            }
            Target::Exec { stdin, child, .. } => {
                // On failure: close the pipe and reap the child.
                drop(stdin.take());
                let _ = child.wait();
            }
            _ => {}
        }
    }
}

impl Target {
    pub(crate) fn open(out: &OsStr) -> Result<Target> {
        if let Some(url) = remote_out(out) {
            #[cfg(feature = "remote")]
            return Ok(Target::Remote(RemoteOut::open(url)?));
            #[cfg(not(feature = "remote"))]
            bail!("can't write {url} - this vma was built without remote archive support (feature `remote`)");
        }
        if out == "-" {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write an archive to a terminal; redirect standard output or give a file name");
            }
            let f = sys::dup_stdout().context("can't duplicate standard output")?;
            return Ok(Target::Stream(f));
        }
        if let Some(cmd) = sys::bytes(out).strip_prefix(b"exec:") {
            let command = String::from_utf8_lossy(cmd).into_owned();
            let mut child = sys::shell(&sys::os_string(cmd))
                .stdin(Stdio::piped())
                .spawn()
                .with_context(|| format!("can't run '{command}'"))?;
            let stdin = child.stdin.take().map(sys::child_stdin_file);
            return Ok(Target::Exec {
                stdin,
                child,
                command,
            });
        }
        let path = PathBuf::from(out);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if sys::is_fifo(&m.file_type()) => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("can't open FIFO {}", path.display()))?;
                return Ok(Target::Stream(f));
            }
            Ok(_) => bail!(
                "{} already exists; refusing to overwrite it",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("can't check {}", path.display())),
        }
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = sys::create_new(&tmp)
            // Errors name OUT, what the user typed, not our hidden temporary file.
            .with_context(|| format!("can't create {}", path.display()))?;
        let _cleanup = {
            let tmp = tmp.clone();
            crate::interrupt::on_interrupt(move || {
                let _ = std::fs::remove_file(tmp);
            })
        };
        Ok(Target::Temp {
            file,
            tmp,
            final_path: path,
            committed: false,
            _cleanup,
        })
    }

    /// OUT as the user knows it, for messages (never the temporary file).
    pub(super) fn describe(&self, out: &OsStr) -> String {
        match self {
            Target::Temp { final_path, .. } => final_path.display().to_string(),
            Target::Stream(_) if out == "-" => "standard output".into(),
            Target::Stream(_) => Path::new(out).display().to_string(),
            Target::Exec { command, .. } => format!("the pipe to '{command}'"),
            #[cfg(feature = "remote")]
            Target::Remote(r) => vma_remote::display_url(&r.url),
        }
    }

    /// Where temporary converted images go: next to OUT, else the temp dir.
    pub(super) fn scratch_dir(out: &OsStr) -> PathBuf {
        let p = Path::new(out);
        if out == "-" || sys::bytes(out).starts_with(b"exec:") || remote_out(out).is_some() {
            return std::env::temp_dir();
        }
        match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub(crate) fn file(&mut self) -> Result<File> {
        let f = match self {
            Target::Temp { file, .. } | Target::Stream(file) => file,
            Target::Exec { stdin, .. } => stdin
                .as_mut()
                .ok_or_else(|| anyhow!("pipe already closed"))?,
            #[cfg(feature = "remote")]
            Target::Remote(r) => r
                .pipe
                .as_mut()
                .ok_or_else(|| anyhow!("pipe already closed"))?,
        };
        f.try_clone()
            .context("can't duplicate the output descriptor")
    }

    /// Adds what an `exec:` command said to a write failure (usually EPIPE
    /// because the command exited early), and names OUT when writing the
    /// file failed (ENOSPC, EIO: the temporary file is removed on drop).
    pub(crate) fn explain(&mut self, e: anyhow::Error) -> anyhow::Error {
        // A write to the pipe failed because the upload did: its error says why.
        #[cfg(feature = "remote")]
        if let Target::Remote(r) = self {
            return match r.drain() {
                Err(up) => up.context(format!("can't write {}", vma_remote::display_url(&r.url))),
                Ok(_) => e,
            };
        }
        if let Target::Temp { final_path, .. } = self {
            let write_failed = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<vma_format::Error>(),
                    Some(vma_format::Error::Write { .. })
                )
            });
            if write_failed {
                return e.context(format!("can't write {}", final_path.display()));
            }
        }
        if let Target::Exec {
            stdin,
            child,
            command,
        } = self
        {
            drop(stdin.take());
            if let Ok(st) = child.wait() {
                if !st.success() {
                    return e.context(format!("'{command}' exited early ({st})"));
                }
            }
        }
        e
    }

    /// Makes the archive durable and visible under its final name.
    pub(crate) fn commit(mut self, written: File) -> Result<()> {
        match &mut self {
            Target::Temp {
                file,
                tmp,
                final_path,
                committed,
                ..
            } => {
                drop(written);
                file.sync_all()
                    .with_context(|| format!("can't write {}", final_path.display()))?;
                // link() fails if OUT appeared meanwhile: never replace someone's file.
                // Not while a signal's cleanup removes tmp: all or nothing.
                match crate::interrupt::critical(|| std::fs::hard_link(&*tmp, &*final_path)) {
                    Ok(()) => {
                        *committed = true;
                        // The one error that must name the temporary file: the user removes it.
                        std::fs::remove_file(&*tmp).with_context(|| {
                            format!(
                                "{} is complete, but its temporary link {} can't be removed",
                                final_path.display(),
                                tmp.display()
                            )
                        })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        bail!(
                            "{} appeared while writing; refusing to overwrite it",
                            final_path.display()
                        )
                    }
                    Err(_) => {
                        // Filesystems without hard links.
                        if final_path.symlink_metadata().is_ok() {
                            bail!(
                                "{} appeared while writing; refusing to overwrite it",
                                final_path.display()
                            );
                        }
                        std::fs::rename(&*tmp, &*final_path)
                            .with_context(|| format!("can't create {}", final_path.display()))?;
                        *committed = true;
                    }
                }
                if let Some(dir) = final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok(())
            }
            Target::Stream(_) => Ok(()),
            #[cfg(feature = "remote")]
            Target::Remote(r) => r.commit(written),
            Target::Exec {
                stdin,
                child,
                command,
            } => {
                drop(written);
                drop(stdin.take());
                let st = child
                    .wait()
                    .with_context(|| format!("waiting for '{command}'"))?;
                if !st.success() {
                    bail!("'{command}' failed ({st})");
                }
                Ok(())
            }
        }
    }
}

/// The `s3://` or `http(s)://` URL that `out` names, if any (http(s) is
/// refused by the upload with a clear message).
pub(super) fn remote_out(out: &OsStr) -> Option<&str> {
    out.to_str()
        .filter(|s| crate::input::remote_url(std::path::Path::new(s)).is_some())
}

/// The archive's byte stream: plain or compressed.
pub(crate) enum Sink {
    Plain(File),
    Compressed(ParallelCompressor<File>),
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(b),
            Sink::Compressed(c) => c.write(b),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.write_all(b),
            Sink::Compressed(c) => c.write_all(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Compressed(c) => c.flush(),
        }
    }
}

impl Sink {
    pub(crate) fn finish(self) -> io::Result<File> {
        match self {
            Sink::Plain(f) => Ok(f),
            Sink::Compressed(c) => c.finish(),
        }
    }
}
