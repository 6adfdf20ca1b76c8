//! `vma verify`: stream the whole archive through every check, without
//! writing, and (unlike Proxmox's tool) fail when clusters are missing.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use vma_format::raw::{CLUSTER_SIZE, DEV_SLOTS};

use crate::input::open_archive;
use crate::listing::{header_json, write_listing};
use crate::progress::Progress;
use crate::{Exit, EXIT_FATAL};

/// Options of `vma verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The archive (`-` = standard input; `s3://bucket/key` or `http(s)://` URL).
    pub file: PathBuf,
    /// Print the listing, progress and statistics.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print a JSON report instead: the `list --json` fields plus, per disk,
    /// `stored_bytes`, `zero_bytes`, `missing_clusters` and `missing_ranges`
    /// (`[first, end)` cluster ranges, at most 16, `missing_ranges_truncated`
    /// if there are more), `warnings` (shapes Proxmox accepts but no correct
    /// writer produces, each with dev_id, name, kind, cluster, offset and
    /// message), and `ok`/`error`. The exit status still tells the result.
    #[arg(long)]
    pub json: bool,
}

/// Per-device byte counts.
#[derive(Default, Clone, Copy)]
struct DevStats {
    /// Device bytes covered by clusters seen.
    covered: u64,
    /// Of those, bytes stored as data.
    stored: u64,
}

/// Runs `vma verify`.
pub fn run(args: VerifyArgs) -> Result<()> {
    let (compression, mut reader) = open_archive(&args.file)?;
    // No data bytes are checked (VMA has no data checksum), but all are read.
    reader.set_discard_data(true);
    let header = reader.header().clone();
    let verbose = args.verbose && !args.json;
    if verbose {
        write_listing(&mut std::io::stdout().lock(), &header)?;
    }
    let mut sizes = [0u64; DEV_SLOTS];
    for d in &header.devices {
        sizes[d.id as usize] = d.size;
    }
    let mut stats = [DevStats::default(); DEV_SLOTS];
    let mut progress = Progress::new(verbose, header.devices.iter().map(|d| d.size));
    let mut error = None;
    loop {
        match reader.next_extent() {
            Ok(Some(ext)) => {
                for c in ext.slots() {
                    let size = sizes[c.dev_id as usize];
                    progress.cluster(c.mask, c.device_offset(), size);
                    let s = &mut stats[c.dev_id as usize];
                    let off = c.device_offset();
                    s.covered += size.saturating_sub(off).min(CLUSTER_SIZE as u64);
                    s.stored += c.stored_bytes_within(size);
                }
                progress.tick();
            }
            Ok(None) => break,
            Err(e) => {
                error = Some((e.to_string(), e.offset()));
                break;
            }
        }
    }
    let completeness = reader.completeness();
    if error.is_none() {
        if let Err(e) = completeness.check(|_| true) {
            error = Some((e.to_string(), e.offset()));
        }
    }
    progress.finish(error.is_none());
    // Shapes Proxmox accepts but no correct writer produces: one line per device.
    for (_, line) in vma_format::warning::per_device(reader.warnings()) {
        eprintln!("vma: warning: {line}");
    }

    if args.json {
        let mut m = header_json(&header, compression);
        let disks: Vec<Value> = header
            .devices
            .iter()
            .map(|d| {
                let s = stats[d.id as usize];
                let c = completeness.devices.iter().find(|c| c.dev_id == d.id);
                json!({
                    "dev_id": d.id,
                    "name": d.name_str(),
                    "size": d.size,
                    "vmstate": d.is_vmstate(),
                    "stored_bytes": s.stored,
                    "zero_bytes": s.covered - s.stored,
                    "missing_clusters": c.map_or(0, |c| c.missing),
                    "missing_ranges": c.map_or(vec![], |c| c.ranges.iter().map(|r| json!([r.start, r.end])).collect()),
                    "missing_ranges_truncated": c.is_some_and(|c| c.more),
                })
            })
            .collect();
        m.insert("disks".into(), Value::Array(disks));
        m.insert("archive_bytes".into(), json!(reader.offset()));
        m.insert("extents".into(), json!(reader.extents_read()));
        let warnings: Vec<Value> = reader
            .warnings()
            .iter()
            .map(|w| {
                json!({"dev_id": w.dev_id, "name": w.name.to_string(), "kind": w.kind_str(),
                       "cluster": w.cluster(), "offset": w.offset, "message": w.to_string()})
            })
            .collect();
        m.insert("warnings".into(), Value::Array(warnings));
        crate::json_doc::set_result(&mut m, error.as_ref().map(|(e, off)| (e.as_str(), *off)));
        crate::json_doc::emit(&Value::Object(m))?;
        if let Some((e, _)) = error {
            eprintln!("vma: verify failed - {e}");
            return Err(Exit(EXIT_FATAL).into());
        }
        return Ok(());
    }
    match error {
        None => Ok(()),
        Some((e, _)) => Err(anyhow!("verify failed - {e}")),
    }
}
