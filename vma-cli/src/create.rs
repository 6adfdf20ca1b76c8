//! `vma create`: write a VMA archive from config files and disk images.
//!
//! This file is the orchestrator: it parses the devices and configs
//! ([`args`]), chooses the codec ([`compress`]), opens the sources
//! ([`source`]) and the output ([`output`]), runs the copy ([`pipeline`])
//! and publishes the archive. Signals are handled by [`crate::interrupt`].
//! The archive bytes themselves come from `vma_format::Writer`, which
//! enforces Proxmox's reader rules.

pub(crate) mod args;
pub(crate) mod compress;
pub(crate) mod output;
mod pipeline;
pub(crate) mod source;

use std::io;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use vma_format::WriterBuilder;

pub use args::CreateArgs;

use crate::sys;
use output::Target;
use pipeline::{write_archive, Input, Written};

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
    let specs = args::device_specs(&args)?;
    let is_file = args.out != "-"
        && !sys::bytes(&args.out).starts_with(b"exec:")
        && !std::fs::symlink_metadata(&args.out).is_ok_and(|m| sys::is_fifo(&m.file_type()));
    let (codec, note) = compress::choose_codec(&args.out, args.compress, is_file);
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
    args::read_configs(&mut builder, &args.configs)?;

    // Refuse an existing OUT before any conversion work (a remote one: when
    // the upload starts, see Target::open).
    let out_path = Path::new(&args.out);
    if args.out != "-"
        && !sys::bytes(&args.out).starts_with(b"exec:")
        && output::remote_out(&args.out).is_none()
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
