//! Minimal front end for trying the filesystem without the CLI:
//! `mount [-f] [--allow-incomplete] [--rebuild-index] [-o opts] ARCHIVE MOUNTPOINT` or `mount -u MOUNTPOINT`.

use std::path::PathBuf;

fn main() {
    let mut opts = vma_fuse::MountOptions::default();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut unmount = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-f") => opts.foreground = true,
            Some("-u") => unmount = true,
            Some("--allow-incomplete") => opts.allow_incomplete = true,
            Some("--rebuild-index") => opts.rebuild_index = true,
            Some("-o") => opts
                .options
                .extend(args.next().map(|o| o.to_string_lossy().into_owned())),
            _ => paths.push(a.into()),
        }
    }
    let result = match (unmount, paths.as_slice()) {
        (true, [mp]) => vma_fuse::umount(mp),
        (false, [archive, mp]) => vma_fuse::mount(archive, mp, &opts),
        _ => {
            eprintln!("usage: mount [-f] [--allow-incomplete] [--rebuild-index] [-o opts] ARCHIVE MOUNTPOINT | mount -u MOUNTPOINT");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
