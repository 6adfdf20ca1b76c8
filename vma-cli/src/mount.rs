//! `vma mount` / `vma umount`: thin wiring to the `vma-fuse` crate.

use std::path::PathBuf;

use anyhow::Result;

/// Options of `vma mount`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The archive: a plain .vma, or .vma.zst / .vma.gz / .vma.lzo (random
    /// access through a sidecar index `<archive>.vmaidx`, built on first mount).
    pub archive: PathBuf,
    /// An existing empty directory.
    pub mountpoint: PathBuf,
    /// Stay in the foreground until unmounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// FUSE mount options, comma-separated (e.g. allow_other); may be repeated.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Mount even if clusters are missing (they read as zeros).
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Rebuild a compressed archive's sidecar index even if a valid one exists.
    #[arg(long)]
    pub rebuild_index: bool,
}

/// Options of `vma umount`.
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
}

/// Runs `vma mount`.
pub fn run_mount(a: MountArgs) -> Result<()> {
    let options = a
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
        .map(String::from)
        .collect();
    let opts = vma_fuse::MountOptions {
        foreground: a.foreground,
        options,
        allow_incomplete: a.allow_incomplete,
        rebuild_index: a.rebuild_index,
    };
    vma_fuse::mount(&a.archive, &a.mountpoint, &opts)?;
    Ok(())
}

/// Runs `vma umount`.
pub fn run_umount(a: UmountArgs) -> Result<()> {
    vma_fuse::umount(&a.mountpoint)?;
    Ok(())
}
