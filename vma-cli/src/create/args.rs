//! The command line of `vma create`: its options, Proxmox's
//! `-d format=FMT:[NAME=]PATH` device form and the deprecated positional
//! `[NAME=]PATH` form (format probed), and the config files with the checks
//! Proxmox's writer makes.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use vma_format::raw::{CONFIG_SLOTS, MAX_BLOB_LEN};
use vma_format::WriterBuilder;

use super::compress::Codec;
use super::source;
use crate::sys;

/// Largest config blob (u16 length prefix, spec §4).
const MAX_CONFIG_LEN: u64 = MAX_BLOB_LEN as u64;
/// Most configs in one archive (spec §11).
const MAX_CONFIGS: usize = CONFIG_SLOTS;

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

/// One device to archive, as given on the command line.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DeviceSpec {
    pub(super) format: String,
    pub(super) name: Vec<u8>,
    pub(super) path: PathBuf,
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
pub(super) fn device_specs(args: &CreateArgs) -> Result<Vec<DeviceSpec>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
