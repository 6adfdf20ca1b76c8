//! `vma list`: the header listing (or its JSON form).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::input::open_archive;
use crate::listing::{header_json, write_listing};

/// Options of `vma list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The archive (`-` = standard input).
    pub file: PathBuf,
    /// Print JSON instead: uuid, ctime (RFC 3339, UTC), configs and disks.
    #[arg(long)]
    pub json: bool,
}

/// Runs `vma list`.
pub fn run(args: ListArgs) -> Result<()> {
    let (compression, reader) = open_archive(&args.file)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::Value::Object(header_json(reader.header(), compression));
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        out.flush()?;
    } else {
        write_listing(&mut out, reader.header())?;
    }
    Ok(())
}
