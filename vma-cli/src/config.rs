//! `vma config`: one config blob, raw, to standard output.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::input::{open_archive_for, Access};
use crate::{Exit, EXIT_NO_CONFIG};

/// Options of `vma config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The archive (`-` = standard input; `s3://bucket/key` or `http(s)://` URL).
    pub file: PathBuf,
    /// Name of the config blob.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "NAME",
        default_value = "qemu-server.conf"
    )]
    pub config: String,
}

/// Runs `vma config`.
pub fn run(args: ConfigArgs) -> Result<()> {
    let (_, reader) = open_archive_for(&args.file, Access::Header)?;
    let Some(c) = reader.header().config(args.config.as_bytes()) else {
        // Proxmox's wording and status (no "vma: " prefix, exit -1).
        eprintln!("unable to find configuration data '{}'", args.config);
        return Err(Exit(EXIT_NO_CONFIG).into());
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&c.data)?;
    out.flush()?;
    Ok(())
}
