//! `vma list`: the header listing (or its JSON form).

use std::path::PathBuf;

use anyhow::Result;

use crate::input::{open_archive_for, Access};
use crate::listing::{header_json, write_listing};

/// Options of `vma list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The archive (`-` = standard input; `s3://bucket/key` or `http(s)://` URL).
    pub file: PathBuf,
    /// Print JSON instead: uuid, ctime (RFC 3339, UTC), configs and disks.
    #[arg(long)]
    pub json: bool,
}

/// Runs `vma list`.
pub fn run(args: ListArgs) -> Result<()> {
    let (compression, reader) = open_archive_for(&args.file, Access::Header)?;
    if args.json {
        let mut m = header_json(reader.header(), compression);
        crate::json_doc::set_result(&mut m, None);
        crate::json_doc::emit(&serde_json::Value::Object(m))?;
    } else {
        write_listing(&mut std::io::stdout().lock(), reader.header())?;
    }
    Ok(())
}
