//! `vma create`: write a VMA archive from config files and disk images.
//!
//! Owns the command line of `create` (Proxmox's `-d format=FMT:NAME=PATH`
//! form and the deprecated positional `[NAME=]PATH` form), the output side
//! (a temporary file renamed into place, stdout, a FIFO or an `exec:` pipe,
//! optionally compressed, the codec defaulting to OUT's suffix) and the copy
//! loop. Sources live in [`source`], compression in [`compress`], signals in
//! [`crate::interrupt`].
//! The archive bytes themselves come from `vma_format::Writer`, which
//! enforces Proxmox's reader rules.

pub(crate) mod compress;
pub(crate) mod source;

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::{anyhow, bail, Context, Result};
use vma_format::{Writer, WriterBuilder};

use crate::sys;
use compress::{Codec, ParallelCompressor};
use source::Source;

/// Bytes per VMA cluster (spec §7).
const CLUSTER: u64 = 65536;
/// Bytes read from a source per read call (a multiple of [`CLUSTER`]).
const READ_CHUNK: usize = 4 << 20;
// One bit per cluster of a read buffer in `Msg::Data::zero`.
const _: () = assert!(READ_CHUNK as u64 / CLUSTER <= 64);
/// Read buffers in flight between the reader thread and the writer: bounds memory.
const READ_BUFFERS: usize = 3;
/// Largest config blob (u16 length prefix, spec §4).
const MAX_CONFIG_LEN: u64 = 65535;
/// Most configs in one archive (spec §11).
const MAX_CONFIGS: usize = 256;

/// Options of `vma create`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Devices: -d format=FMT:[NAME=]PATH, repeatable; NAME defaults to disk<N> (0-based position).
FMT raw (files, block devices) and qcow2 are read directly; any other QEMU format (vmdk, vdi, vpc,
vhdx, qed, ...) is read through a qemu-nbd that vma starts (no temporary copy). PATH may also be
an NBD export with format=raw and a NAME: nbd+unix:///EXPORT?socket=SOCKET or nbd://HOST[:PORT]/EXPORT
(only its allocated extents are read).
The legacy form `vma create OUT [NAME=]PATH...` (no format) still works but is deprecated; like
Proxmox's vma it probes each image's format (qcow2, vmdk, vdi, vhdx, qed, ...; raw otherwise).

Without --compress, OUT's suffix chooses the codec: x.vma.zst is written with zstd, x.vma.gz
with gzip, x.vma.lzo with lzo (a FIFO, `-` and exec: are written plain). An explicit --compress
whose codec the suffix contradicts (e.g. --compress gzip x.vma) is written as asked, with a warning.

OUT must not exist; the archive is written to a hidden temporary file in the same directory,
synced and renamed to OUT when complete, and removed on any failure or on SIGINT/SIGTERM.
Special OUT values: `-` writes to standard output (unlike Proxmox's vma, which would create a
file named `-`); an existing FIFO is written to; `exec:COMMAND` pipes the archive into
`sh -c COMMAND` (as vzdump does, e.g. 'exec:zstd > backup.vma.zst').")]
pub struct CreateArgs {
    /// Archive to create (must not exist); `-` = standard output; `exec:CMD` = pipe into CMD.
    #[arg(value_name = "OUT", allow_hyphen_values = true)]
    pub out: OsString,

    /// Deprecated device form `[NAME=]PATH` (format probed, as Proxmox does); cannot be mixed with -d.
    #[arg(value_name = "[NAME=]PATH")]
    pub legacy_devices: Vec<OsString>,

    /// Add a config file (stored under its basename; at most 65535 bytes, at most 256 configs).
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub configs: Vec<PathBuf>,

    /// Add a device: format=FMT:[NAME=]PATH (repeatable).
    #[arg(short = 'd', long = "device", value_name = "format=FMT:[NAME=]PATH")]
    pub devices: Vec<OsString>,

    /// Print progress and per-device statistics on stderr.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// Compress the archive. Default: from OUT's suffix (.zst zstd, .gz gzip, .lzo lzo), else none.
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,

    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6; ignored for lzo).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,

    /// Compression threads (default: number of CPUs, at most 8).
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Use this archive UUID instead of a random one (reproducible archives).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,

    /// Use this creation time (seconds since the epoch) instead of the time of writing.
    #[arg(long, value_name = "SECONDS")]
    pub ctime: Option<i64>,
}

/// The codec a file name's suffix stands for: `Some(None)` = plain (`.vma`),
/// `None` = the suffix says nothing.
fn suffix_codec(out: &OsStr) -> Option<Option<Codec>> {
    let name = sys::bytes(out);
    [
        (&b".zst"[..], Some(Codec::Zstd)),
        (b".zstd", Some(Codec::Zstd)),
        (b".gz", Some(Codec::Gzip)),
        (b".lzo", Some(Codec::Lzo)),
        (b".vma", None),
    ]
    .into_iter()
    .find(|(suffix, _)| name.ends_with(suffix))
    .map(|(_, codec)| codec)
}

fn codec_name(codec: Option<Codec>) -> &'static str {
    match codec {
        None => "no compression",
        Some(Codec::Zstd) => "zstd",
        Some(Codec::Gzip) => "gzip",
        Some(Codec::Lzo) => "lzo",
    }
}

/// The codec to write with: `--compress`, else the one OUT's suffix names
/// (for a regular file OUT only), with a warning when both are given and
/// disagree.
fn choose_codec(
    out: &OsStr,
    explicit: Option<Codec>,
    is_file: bool,
) -> (Option<Codec>, Option<String>) {
    let suffix = suffix_codec(out);
    match (explicit, suffix) {
        (None, Some(c)) if is_file => (c, None),
        (Some(c), Some(s)) if s != Some(c) => (
            Some(c),
            Some(format!(
                "warning: writing {} into {}, whose name suggests {}",
                codec_name(Some(c)),
                Path::new(out).display(),
                codec_name(s)
            )),
        ),
        (c, _) => (c, None),
    }
}

/// One device to archive, as given on the command line.
#[derive(Debug, PartialEq, Eq)]
struct DeviceSpec {
    format: String,
    name: Vec<u8>,
    path: PathBuf,
}

/// Splits `[NAME=]PATH` at the first `=`, as Proxmox's `extract_devname` does.
fn split_name(spec: &[u8], index: usize) -> (Vec<u8>, PathBuf) {
    match spec.iter().position(|&b| b == b'=') {
        Some(i) => (
            spec[..i].to_vec(),
            PathBuf::from(sys::os_string(&spec[i + 1..])),
        ),
        None => (
            format!("disk{index}").into_bytes(),
            PathBuf::from(sys::os_string(spec)),
        ),
    }
}

/// Parses `format=FMT:[NAME=]PATH`.
fn parse_device(spec: &OsStr, index: usize) -> Result<DeviceSpec> {
    let b = sys::bytes(spec);
    let Some(rest) = b.strip_prefix(b"format=") else {
        bail!(
            "No format specified for device: '{}' (expected format=FMT:[NAME=]PATH)",
            spec.to_string_lossy()
        );
    };
    let Some(colon) = rest.iter().position(|&b| b == b':') else {
        bail!(
            "device '{}': missing ':' after the format (expected format=FMT:[NAME=]PATH)",
            spec.to_string_lossy()
        );
    };
    let format = std::str::from_utf8(&rest[..colon])
        .map_err(|_| anyhow!("device '{}': format is not UTF-8", spec.to_string_lossy()))?
        .to_string();
    if format.is_empty() {
        bail!(
            "No format specified for device: '{}'",
            spec.to_string_lossy()
        );
    }
    let (name, path) = split_name(&rest[colon + 1..], index);
    if path.as_os_str().is_empty() {
        bail!("device '{}': no path given", spec.to_string_lossy());
    }
    Ok(DeviceSpec { format, name, path })
}

/// The devices of the command line, either all `-d` or all positional.
fn device_specs(args: &CreateArgs) -> Result<Vec<DeviceSpec>> {
    if !args.legacy_devices.is_empty() && !args.devices.is_empty() {
        bail!("mixing positional device arguments with -d is not allowed; use only -d format=FMT:[NAME=]PATH");
    }
    if !args.legacy_devices.is_empty() {
        eprintln!("vma: Specifying a device without a format is deprecated, use -d format=raw:[NAME=]PATH");
        return Ok(args
            .legacy_devices
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (name, path) = split_name(sys::bytes(s), i);
                // Proxmox opens these without a format, so QEMU probes it: a
                // qcow2 file is archived as its guest disk, not as its bytes.
                let format = match source::probe_format(&path) {
                    Some(fmt) => {
                        eprintln!(
                            "vma: {} is a {fmt} image (probed, as Proxmox's vma does); \
                             archiving the disk it holds (say -d format={fmt}:... to be explicit)",
                            path.display()
                        );
                        fmt
                    }
                    None => "raw",
                };
                DeviceSpec {
                    format: format.into(),
                    name,
                    path,
                }
            })
            .collect());
    }
    let specs: Vec<DeviceSpec> = args
        .devices
        .iter()
        .enumerate()
        .map(|(i, s)| parse_device(s, i))
        .collect::<Result<_>>()?;
    for spec in specs.iter().filter(|s| s.format == "raw") {
        // Honoured as asked (it is what Proxmox's vma does too), but a
        // restore would give back the container, not the guest disk.
        if let Some(fmt) = source::probe_format(&spec.path) {
            eprintln!(
                "vma: warning: {} looks like a {fmt} image, but format=raw archives its bytes \
                 as they are; use -d format={fmt}:... to archive the disk it holds",
                spec.path.display()
            );
        }
    }
    Ok(specs)
}

/// Reads the config files, with the checks Proxmox's writer makes.
pub(crate) fn read_configs(builder: &mut WriterBuilder, configs: &[PathBuf]) -> Result<()> {
    if configs.len() > MAX_CONFIGS {
        bail!(
            "too many config files ({}, at most {MAX_CONFIGS})",
            configs.len()
        );
    }
    for path in configs {
        let file = File::open(path)
            .with_context(|| format!("can't open config file {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("can't stat config file {}", path.display()))?
            .len();
        if len > MAX_CONFIG_LEN {
            bail!("config file {} is too large ({len} bytes; a config can hold at most {MAX_CONFIG_LEN} bytes)", path.display());
        }
        let data = std::fs::read(path)
            .with_context(|| format!("can't read config file {}", path.display()))?;
        if data.len() as u64 > MAX_CONFIG_LEN {
            bail!(
                "config file {} is too large ({} bytes; at most {MAX_CONFIG_LEN})",
                path.display(),
                data.len()
            );
        }
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("config path {} has no file name", path.display()))?;
        builder
            .add_config(sys::bytes(name), data)
            .with_context(|| format!("can't add config file {}", path.display()))?;
    }
    Ok(())
}

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
        #[cfg(unix)]
        let pipe = File::from(std::os::fd::OwnedFd::from(wr));
        #[cfg(windows)]
        let pipe = File::from(std::os::windows::io::OwnedHandle::from(wr));
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
    fn describe(&self, out: &OsStr) -> String {
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
    fn scratch_dir(out: &OsStr) -> PathBuf {
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
fn remote_out(out: &OsStr) -> Option<&str> {
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

/// What the reader thread hands to the writer.
enum Msg {
    /// `len` bytes of device data starting at cluster `first`; bit i of
    /// `zero` set: cluster `first + i` lies in a hole and was not read.
    Data {
        dev: u8,
        first: u64,
        buf: Vec<u8>,
        len: usize,
        zero: u64,
    },
    /// `count` clusters known to be zero, starting at `first`.
    Zero {
        dev: u8,
        first: u64,
        count: u64,
    },
    Err(anyhow::Error),
}

/// A device being archived.
struct Input {
    dev_id: u8,
    name: String,
    path: PathBuf,
    /// Device size recorded in the archive: the source size rounded up to 512.
    size: u64,
    source: Box<dyn Source>,
}

/// Reads every device in order, sequentially, in [`READ_CHUNK`] pieces.
fn reader_thread(inputs: Vec<Input>, tx: SyncSender<Msg>, pool: Receiver<Vec<u8>>) {
    for mut input in inputs {
        if let Err(e) = read_device(&mut input, &tx, &pool) {
            let _ = tx.send(Msg::Err(e));
            return;
        }
    }
}

/// Sends one device's clusters; returns Ok early if the writer went away.
///
/// Whole clusters inside a hole are announced as [`Msg::Zero`] without being
/// read. Everything else goes out in buffers of up to [`READ_CHUNK`] bytes,
/// however the data is fragmented: holes smaller than the rest of the buffer
/// are zero-filled in place (the writer's zero detection drops them again).
/// One message per buffer, not per data region, keeps the thread hand-offs
/// (futex wake-ups) rare on images whose data is scattered in 4 KiB pieces.
fn read_device(input: &mut Input, tx: &SyncSender<Msg>, pool: &Receiver<Vec<u8>>) -> Result<()> {
    let (dev, dev_size) = (input.dev_id, input.size);
    let src_size = input.source.size();
    let path = input.path.clone();
    let ctx = |pos: u64| format!("reading {} at offset {pos}", path.display());
    // (data?, end) from `p`; beyond the source the device reads as zero.
    let region = |source: &mut Box<dyn Source>, p: u64| -> Result<(bool, u64)> {
        if p >= src_size {
            return Ok((false, dev_size));
        }
        let (data, e) = source.region(p).with_context(|| ctx(p))?;
        let e = e.max(p + 1);
        Ok(match (data, e >= src_size) {
            (true, _) => (true, e.min(src_size)),
            (false, true) => (false, dev_size),
            (false, false) => (false, e),
        })
    };
    let mut pos = 0u64; // always on a cluster boundary
    while pos < dev_size {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let (data, e) = region(&mut input.source, pos)?;
        if !data {
            let first = pos / CLUSTER;
            let last = if e >= dev_size {
                dev_size.div_ceil(CLUSTER)
            } else {
                e / CLUSTER
            };
            if last > first {
                if tx
                    .send(Msg::Zero {
                        dev,
                        first,
                        count: last - first,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                pos = last * CLUSTER;
                continue;
            }
        }
        let Ok(mut buf) = pool.recv() else {
            return Ok(());
        };
        let mut end = (pos + READ_CHUNK as u64).min(dev_size);
        let (mut p, mut reg) = (pos, (data, e));
        let mut zero = 0u64;
        while p < end {
            let (data, e) = reg;
            let stop = if data {
                let stop = e.min(end);
                input
                    .source
                    .read_at(&mut buf[(p - pos) as usize..(stop - pos) as usize], p)
                    .with_context(|| ctx(p))?;
                stop
            } else {
                let next = p.next_multiple_of(CLUSTER);
                // A hole running past this buffer ends it at a cluster
                // boundary; the next round announces the hole without reading.
                if e > end && p > pos {
                    end = next.min(end);
                }
                let stop = e.min(end);
                // Whole clusters of the hole are flagged, not zero-filled.
                let full_end = if stop == dev_size {
                    stop.next_multiple_of(CLUSTER)
                } else {
                    stop / CLUSTER * CLUSTER
                };
                if full_end > next {
                    for c in (next - pos) / CLUSTER..(full_end - pos) / CLUSTER {
                        zero |= 1 << c;
                    }
                    buf[(p - pos) as usize..(next - pos) as usize].fill(0);
                    let tail = full_end.min(stop);
                    buf[(tail - pos) as usize..(stop - pos) as usize].fill(0);
                } else {
                    buf[(p - pos) as usize..(stop - pos) as usize].fill(0);
                }
                stop
            };
            p = stop;
            if p < end {
                reg = region(&mut input.source, p)?;
            }
        }
        let len = (end - pos) as usize;
        if tx
            .send(Msg::Data {
                dev,
                first: pos / CLUSTER,
                buf,
                len,
                zero,
            })
            .is_err()
        {
            return Ok(());
        }
        pos = end;
    }
    Ok(())
}

/// `-v` output: Proxmox's progress lines, or a bar on a terminal.
struct Progress {
    verbose: bool,
    total: u64,
    transferred: u64,
    zeros: u64,
    last_percent: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(verbose: bool, total: u64) -> Self {
        let bar = (verbose && total > 0 && io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            verbose,
            total,
            transferred: 0,
            zeros: 0,
            last_percent: None,
            bar,
        }
    }

    fn add(&mut self, bytes: u64, zeros: u64) {
        self.transferred += bytes;
        self.zeros += zeros;
        if !self.verbose || self.total == 0 {
            return;
        }
        if let Some(b) = &self.bar {
            b.set_position(self.transferred);
            return;
        }
        let percent = self.transferred * 100 / self.total;
        if self.last_percent != Some(percent) {
            self.last_percent = Some(percent);
            eprintln!(
                "progress {percent}% {}/{} {}",
                self.transferred, self.total, self.zeros
            );
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Zero bytes of `cluster` counted as the writer counts them (a stored
/// partial last block counts as 4096 stored bytes); only computed for `-v`.
fn zero_bytes(cluster: &[u8]) -> u64 {
    let stored = cluster
        .chunks(4096)
        .filter(|b| !vma_format::is_zero_block(b))
        .count() as u64
        * 4096;
    (cluster.len() as u64).saturating_sub(stored)
}

/// Feeds the writer from the reader thread's messages.
fn copy_loop(
    writer: &Writer<Sink>,
    rx: Receiver<Msg>,
    pool: SyncSender<Vec<u8>>,
    inputs: &[(String, u64)],
    progress: &mut Progress,
) -> Result<()> {
    for msg in rx {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        match msg {
            Msg::Data {
                dev,
                first,
                buf,
                len,
                zero,
            } => {
                let name = &inputs[usize::from(dev) - 1].0;
                for (i, c) in buf[..len].chunks(CLUSTER as usize).enumerate() {
                    let cluster = first + i as u64;
                    let hole = zero & (1 << i) != 0;
                    if hole {
                        writer.write_zero_cluster(dev, cluster as u32)
                    } else {
                        writer.write_cluster(dev, cluster as u32, c)
                    }
                    .with_context(|| format!("writing cluster {cluster} of device {name}"))?;
                    let z = match (hole, progress.verbose) {
                        (true, _) => c.len() as u64,
                        (false, true) => zero_bytes(c),
                        (false, false) => 0,
                    };
                    progress.add(c.len() as u64, z);
                }
                // The reader may already be gone; then the buffer is simply dropped.
                let _ = pool.try_send(buf);
            }
            Msg::Zero { dev, first, count } => {
                let (name, size) = &inputs[usize::from(dev) - 1];
                for cluster in first..first + count {
                    let len = (size - cluster * CLUSTER).min(CLUSTER);
                    writer
                        .write_zero_cluster(dev, cluster as u32)
                        .with_context(|| format!("writing cluster {cluster} of device {name}"))?;
                    progress.add(len, len);
                }
            }
            Msg::Err(e) => return Err(e),
        }
    }
    if crate::interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A finished archive, not yet committed.
struct Written {
    file: File,
    summary: vma_format::WriteSummary,
    /// Device names and sizes, in dev_id order.
    names: Vec<(String, u64)>,
}

/// Writes the whole archive into `target`; returns the output file, the
/// writer's statistics and the device names and sizes.
fn write_archive(
    target: &mut Target,
    args: &CreateArgs,
    builder: WriterBuilder,
    inputs: Vec<Input>,
) -> Result<Written> {
    let file = target.file()?;
    let sink = match args.compress {
        None => Sink::Plain(file),
        Some(codec) => {
            let threads = args.threads.map_or_else(
                // More than 8 threads rarely pays and costs 16 MiB each.
                || std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                |n| n.get(),
            );
            Sink::Compressed(
                ParallelCompressor::new(file, codec, args.level, threads)
                    .context("can't start the compressor")?,
            )
        }
    };
    // Extents are written on the writer's own thread: the output's system
    // calls overlap the reader's and the zero detection.
    let writer = builder
        .build_background(sink)
        .context("can't start the archive")?;

    let names: Vec<(String, u64)> = inputs.iter().map(|i| (i.name.clone(), i.size)).collect();
    let total = names.iter().map(|(_, s)| s).sum();
    let mut progress = Progress::new(args.verbose, total);
    let (tx, rx) = sync_channel::<Msg>(READ_BUFFERS);
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(READ_BUFFERS);
    for _ in 0..READ_BUFFERS {
        pool_tx
            .send(vec![0u8; READ_CHUNK])
            .map_err(|_| anyhow!("internal: buffer pool closed"))?;
    }
    let reader = std::thread::Builder::new()
        .name("vma-create-reader".into())
        .spawn(move || reader_thread(inputs, tx, pool_rx))
        .context("can't start the reader thread")?;
    let copied = copy_loop(&writer, rx, pool_tx, &names, &mut progress);
    // copy_loop dropped its channel ends, so the reader stops if it still runs.
    let joined = reader.join();
    progress.done();
    copied?;
    joined.map_err(|_| anyhow!("the reader thread panicked"))?;

    let (sink, summary) = writer.finish().context("can't finish the archive")?;
    let out_file = sink
        .finish()
        .with_context(|| format!("can't write {}", target.describe(&args.out)))?;
    Ok(Written {
        file: out_file,
        summary,
        names,
    })
}

/// Runs `vma create`.
pub fn run(args: CreateArgs) -> Result<()> {
    create(args).map_err(|e| {
        // A broken pipe while writing leaves an incomplete archive: that is a
        // failure of `create` (unlike a reader's `vma config - | head`), so
        // the error is flattened to text and not mistaken for a closed reader.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            anyhow!("{}", crate::error_text(&e))
        } else {
            e
        }
    })
}

fn create(mut args: CreateArgs) -> Result<()> {
    let specs = device_specs(&args)?;
    let is_file = args.out != "-"
        && !sys::bytes(&args.out).starts_with(b"exec:")
        && !std::fs::symlink_metadata(&args.out).is_ok_and(|m| sys::is_fifo(&m.file_type()));
    let (codec, note) = choose_codec(&args.out, args.compress, is_file);
    if let Some(note) = note {
        eprintln!("vma: {note}");
    }
    args.compress = codec;
    if args.compress.is_none() && (args.level.is_some() || args.threads.is_some()) {
        bail!("--level and --threads need --compress (or an OUT ending in .zst, .gz or .lzo)");
    }
    let mut builder = WriterBuilder::new();
    if let Some(u) = &args.uuid {
        builder
            .uuid(vma_format::Uuid::parse_str(u).with_context(|| format!("invalid --uuid '{u}'"))?);
    }
    if let Some(t) = args.ctime {
        builder.ctime(t);
    }
    read_configs(&mut builder, &args.configs)?;

    // Refuse an existing OUT before any conversion work (a remote one: when
    // the upload starts, see Target::open).
    let out_path = Path::new(&args.out);
    if args.out != "-"
        && !sys::bytes(&args.out).starts_with(b"exec:")
        && remote_out(&args.out).is_none()
    {
        if let Ok(m) = std::fs::symlink_metadata(out_path) {
            if !sys::is_fifo(&m.file_type()) {
                bail!(
                    "{} already exists; refusing to overwrite it",
                    out_path.display()
                );
            }
        }
    }

    let scratch = Target::scratch_dir(&args.out);
    let mut inputs = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = String::from_utf8_lossy(&spec.name).into_owned();
        let source = source::open(&spec.format, &spec.path, &scratch, args.verbose)
            // Every source error names the path already.
            .with_context(|| format!("device {name}"))?;
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let src_size = source.size();
        if src_size == 0 {
            bail!(
                "device {name}: {} is empty (size 0); a VMA device needs at least one byte",
                spec.path.display()
            );
        }
        // Proxmox's reader ignores data in a final partial sector, so round up like QEMU.
        let size = src_size
            .div_ceil(512)
            .checked_mul(512)
            .ok_or_else(|| anyhow!("device {name}: size overflows"))?;
        let dev_id = builder
            .add_device(&spec.name, size)
            .with_context(|| format!("can't add device {name} ({})", spec.path.display()))?;
        inputs.push(Input {
            dev_id,
            name,
            path: spec.path,
            size,
            source,
        });
    }

    let mut target = Target::open(&args.out)?;
    let Written {
        file: out_file,
        summary,
        names,
    } = match write_archive(&mut target, &args, builder, inputs) {
        Ok(r) => r,
        Err(e) => return Err(target.explain(e)),
    };
    target.commit(out_file)?;

    if args.verbose {
        for ((name, size), st) in names.iter().zip(&summary.devices) {
            eprintln!(
                "image {name}: size={size} zeros={} saved={}",
                st.zero_bytes,
                size.saturating_sub(st.zero_bytes)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_follows_the_suffix_unless_given_and_warns_on_disagreement() {
        let c = |out: &str, explicit, file| choose_codec(OsStr::new(out), explicit, file);
        assert_eq!(c("x.vma.zst", None, true), (Some(Codec::Zstd), None));
        assert_eq!(c("x.vma.gz", None, true), (Some(Codec::Gzip), None));
        assert_eq!(c("x.vma.lzo", None, true), (Some(Codec::Lzo), None));
        assert_eq!(c("x.vma", None, true), (None, None));
        assert_eq!(c("backup", None, true), (None, None));
        // Not a file (FIFO, stdout): the name chooses nothing.
        assert_eq!(c("fifo.zst", None, false), (None, None));
        assert_eq!(
            c("x.vma.zst", Some(Codec::Zstd), true),
            (Some(Codec::Zstd), None)
        );
        let (codec, warn) = c("x.vma", Some(Codec::Gzip), true);
        assert_eq!(codec, Some(Codec::Gzip));
        let warn = warn.expect("a warning");
        assert!(warn.contains("gzip") && warn.contains("x.vma"), "{warn}");
        let (codec, warn) = c("x.vma.zst", Some(Codec::Lzo), true);
        assert_eq!(codec, Some(Codec::Lzo));
        assert!(warn.expect("a warning").contains("suggests zstd"));
        assert_eq!(c("out", Some(Codec::Lzo), true), (Some(Codec::Lzo), None));
    }

    #[test]
    fn parses_device_specs() {
        let d = parse_device(OsStr::new("format=raw:drive-scsi0=/tmp/a=b"), 3).unwrap();
        assert_eq!(
            d,
            DeviceSpec {
                format: "raw".into(),
                name: b"drive-scsi0".to_vec(),
                path: "/tmp/a=b".into()
            }
        );
        let d = parse_device(OsStr::new("format=qcow2:/x/y.qcow2"), 2).unwrap();
        assert_eq!(
            d,
            DeviceSpec {
                format: "qcow2".into(),
                name: b"disk2".to_vec(),
                path: "/x/y.qcow2".into()
            }
        );
        let e = parse_device(OsStr::new("drive-scsi0=/tmp/a"), 0).unwrap_err();
        assert!(
            e.to_string().contains("No format specified for device"),
            "{e}"
        );
        assert!(parse_device(OsStr::new("format=raw"), 0).is_err());
        assert!(parse_device(OsStr::new("format=:x"), 0).is_err());
        assert!(parse_device(OsStr::new("format=raw:n="), 0).is_err());
    }
}
