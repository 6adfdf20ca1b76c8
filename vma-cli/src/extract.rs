//! `vma extract`: restore configs and disks into a new directory, or (with
//! `-r`) into existing targets named by a map.
//!
//! One pass over the stream; every stored run is written with positional,
//! gathered writes ([`crate::writer`]) straight from the extent buffer, so
//! holes stay holes and memory is one extent. Disks go to
//! `tmp-disk-<name>.raw` and are renamed to `disk-<name>.raw` only after the
//! whole archive was read and every cluster of every extracted disk was seen,
//! and after the data and the directory were synced ([`crate::outcome`]
//! renames without replacing anything). On any error or signal, what was
//! created is removed, or listed with `--salvage` ([`crate::outcome`]).
//!
//! `--salvage` reads past damage (vma-format's salvage mode, spec §12): every
//! readable cluster is written, complete disks get their final names and
//! incomplete ones `incomplete-disk-<name>.raw` (`unverified-disk-*` when the
//! input failed after all clusters were read), so partial data is never
//! presented as a restored disk; the damage and the missing ranges are
//! reported on stderr and the exit status is [`crate::EXIT_SALVAGED`].
//!
//! What a disk is written into (raw file, block device, qcow2 image; new or
//! named by the map) is [`target`]'s business; which bytes of a remote
//! archive are fetched (`-d` of some disks: only their extents) is
//! [`remote`]'s.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use vma_format::names::check_name;
use vma_format::raw::MAX_FILE_LEN;
use vma_format::{ArchiveHeader, Device};

use crate::input::{strerror, Reader};
use crate::listing::write_listing;
use crate::outcome::Restore;
use crate::progress::Progress;
use crate::restore_map::{read_map, RestoreMap};
use crate::{Exit, EXIT_SALVAGED};

pub mod range;
mod remote;
pub mod target;
use target::{Disk, Format, Pending};

/// Help text after the options.
pub const AFTER_HELP: &str = "\
TARGETDIR must not exist; it is created. Configs are written into it under
their names; each disk goes to tmp-disk-<devname>.raw (a sparse file, printed
as 'DEVINFO <path> <size>') and is renamed to disk-<devname>.raw only after the
whole archive was read and no cluster is missing. A 'vmstate' stream goes to
vmstate.bin. Disks and the directory are synced before the renames, and an
existing disk-*.raw is never replaced.

If the restore fails or is interrupted (SIGINT, SIGTERM, SIGHUP: exit status
130), it removes everything it created (configs, tmp-disk-* files, TARGETDIR)
and says so, so that the same command can simply be run again; a read error
suggests --salvage. With --salvage, what was written is kept and listed. With
-r, the map's targets are never removed (they keep what was written).

-r MAP (qemu-server's restore protocol): the listing is printed first, then
lines are read from MAP (a FIFO or a file) until EOF, an empty line or 'done':
  [throttling.bps=N:][throttling.group=G:][cache=MODE:][format=FMT:]{0|1}:<devname>=<path>
  skip=<devname>
0/1 = write zero blocks explicitly. Targets must exist (file or block device)
and be at least the device size and at most 4 MiB larger; every device needs
a line. FMT is raw (the default) or qcow2 (an existing image, as qmrestore
creates it: its virtual size counts; no backing file). As in Proxmox's tool, a
line for a device the archive lacks is ignored and a later line for a device
replaces an earlier one (we print a warning for each). Cache and throttling
are ignored.

--format qcow2 writes each disk as a qcow2 image instead (tmp-disk-<devname>.qcow2,
renamed to disk-<devname>.qcow2; zero clusters stay unallocated), in the same
single pass, from a file or stdin (--salvage names: *-disk-<devname>.qcow2).

--salvage (not with -r) reads past damage instead of stopping: a damaged
extent is skipped (reading resumes at the next valid extent header of this
archive), a truncated archive yields what it holds. Every readable cluster is
written; a complete disk is renamed to disk-<devname>.raw, an incomplete one
to incomplete-disk-<devname>.raw (vmstate: incomplete-vmstate.bin), never to
the final name. If the input fails after the last cluster (e.g. a zstd
checksum mismatch), complete disks are kept as unverified-disk-<devname>.raw.
Each skipped region (byte offset and what was wrong) and each incomplete
disk's missing cluster ranges (with byte offsets) are printed on stderr.
Exit status: 0 if nothing was damaged or missing, 3 if anything was damaged,
missing or unverified, 133 on fatal errors (bad header, write failure, ...).

-d of some of the disks of a remote plain archive (s3://, http(s)://; not with
--salvage) fetches only the extents holding their clusters (ranged GETs), once
the archive has an index <key>.vmaidx (beside the object, else in $VMA_CACHE_DIR
or ~/.cache/vma-rs): `vma index URL` builds it, and so does any complete extract
of a remote plain archive, which reads the object with one streaming GET (as
every other remote extract does). With -v, the requests sent and bytes fetched
are printed on stderr.

--range START:END -d NAME restores one slice of one disk into an existing file
or block device given as TARGETDIR (the same offsets; nothing created, nothing
truncated; zero runs are written as zeros), so several processes or machines
can restore one large disk in parallel, e.g. two halves of a 100 GiB disk:
  vma extract --range 0:50G -d drive-scsi0 s3://bkt/x.vma /dev/vg/disk   # host A
  vma extract --range 50G: -d drive-scsi0 s3://bkt/x.vma /dev/vg/disk    # host B
Offsets may be any byte; 64 KiB multiples avoid two hosts writing one
filesystem block. It reads through the archive's index: a local archive (a
compressed one through its .vmaidx sidecar, as mount) or a remote one (its
index beside the object, <key>.vmaidx, as `vma index URL` stores it, else in
$VMA_CACHE_DIR or ~/.cache/vma-rs; the first process without one builds and
stores it).

Examples:
  vma extract backup.vma /var/tmp/restore
  vma extract --salvage damaged.vma /var/tmp/rescue
  zstd -q -d -c backup.vma.zst | vma extract -v - /var/tmp/restore
  vma extract -d drive-scsi0 backup.vma out
  vma extract --format qcow2 backup.vma /var/tmp/restore
  vma extract -r /var/tmp/map.fifo backup.vma /var/tmp/restore";

/// Options of `vma extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// The archive (`-` = standard input; `s3://bucket/key` or `http(s)://` URL).
    pub file: PathBuf,
    /// The directory to create.
    pub targetdir: PathBuf,
    /// Print the progress and a summary.
    #[arg(short, long)]
    pub verbose: bool,
    /// Restore only these devices (comma-separated names; may be repeated).
    #[arg(short = 'd', long = "drives", value_name = "LIST")]
    pub drives: Vec<String>,
    /// Read the device map from this FIFO or file (see below).
    #[arg(short = 'r', long = "map", value_name = "MAP")]
    pub map: Option<PathBuf>,
    /// Skip damaged extents and write everything readable; incomplete disks
    /// are kept as incomplete-disk-<name>.raw; exit status 3 if anything was
    /// damaged or missing (see below).
    #[arg(long, conflicts_with = "map")]
    pub salvage: bool,
    /// Image format of the disks written: raw (sparse disk-<name>.raw) or
    /// qcow2 (disk-<name>.qcow2, in the same single pass). With -r the map
    /// lines give the format.
    #[arg(long, value_enum, default_value_t, conflicts_with = "map")]
    pub format: Format,
    /// Write only bytes START:END of the one device named by -d into
    /// TARGETDIR, an existing file or block device, at the same offsets (not
    /// truncated); END may be empty (device end); K, M, G, T suffixes. Needs
    /// random access: a local archive or a plain remote one (see below).
    #[arg(long, value_name = "START:END", requires = "drives", conflicts_with_all = ["map", "salvage"])]
    pub range: Option<String>,
}

/// One output of the restore.
struct Target {
    dev_id: u8,
    /// For messages.
    path: PathBuf,
    out: Disk,
    /// The declared device size (for the statistics).
    size: u64,
    /// Writes are clipped to this device offset.
    limit: u64,
    write_zero: bool,
    /// `tmp-disk-*` → `disk-*` after success.
    rename_to: Option<PathBuf>,
}

/// `<dir>/<prefix><name><suffix>` built from bytes, as Proxmox's
/// `"%s/tmp-disk-%s.raw"` does (the dir is kept as given).
fn join_name(dir: &Path, prefix: &str, name: &[u8], suffix: &str) -> PathBuf {
    let mut v = dir.as_os_str().to_os_string();
    v.push("/");
    v.push(prefix);
    v.push(crate::sys::os_string(name));
    v.push(suffix);
    PathBuf::from(v)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `vma extract`.
pub fn run(args: ExtractArgs) -> Result<()> {
    if let Some(r) = &args.range {
        return range::run(&args, r);
    }
    let (mut reader, fetched) = remote::open(&args)?;
    reader.set_salvage(args.salvage);
    let header = reader.header().clone();
    let drives = drive_filter(&args.drives, &header)?;
    // Every name that becomes a path is checked before anything is created.
    for c in &header.configs {
        check_name(&c.name)
            .map_err(|why| anyhow!("refusing to extract config '{}': {why}", lossy(&c.name)))?;
    }
    let wanted = |d: &Device| {
        d.id != 255 && (d.is_vmstate() || drives.as_ref().is_none_or(|s| s.contains(&d.name)))
    };
    if args.map.is_none() {
        for d in header.devices.iter().filter(|d| wanted(d)) {
            check_name(&d.name)
                .map_err(|why| anyhow!("refusing to extract device '{}': {why}", lossy(&d.name)))?;
        }
    }
    // So are the sizes of the files we will make (untrusted, up to 2^64-1).
    for d in header.devices.iter().filter(|d| wanted(d)) {
        if args.map.is_none() && !d.is_vmstate() && args.format == Format::Qcow2 {
            target::qcow2_size(d)?;
        } else if args.map.is_none() || d.is_vmstate() {
            file_len(d, output_align(d))?;
        }
    }

    let restore = Restore::create_dir(&args.targetdir, args.salvage, args.map.is_some())?;
    let r = extract_into(&args, &mut reader, &header, &restore, &wanted);
    if r.is_ok() {
        fetched.store_index();
    }
    if args.verbose {
        fetched.report();
    }
    match r {
        Err(e) if e.downcast_ref::<Exit>().is_none() => Err(restore.failed(e)),
        // Done, or a salvage that reported what it kept (exit status 3).
        r => {
            restore.succeeded();
            r
        }
    }
}

/// The restore into the directory `restore` created.
fn extract_into(
    args: &ExtractArgs,
    reader: &mut Reader,
    header: &ArchiveHeader,
    out: &Restore,
    wanted: &dyn Fn(&Device) -> bool,
) -> Result<()> {
    let dir = &args.targetdir;
    for c in &header.configs {
        let path = join_name(dir, "", &c.name, "");
        out.create(&path, || write_new(&path, &c.data))
            .map_err(|e| anyhow!("unable to write file {}: {}", path.display(), strerror(&e)))?;
    }

    let map = match &args.map {
        None => None,
        Some(m) => {
            write_listing(&mut std::io::stdout().lock(), header)?;
            let f = File::open(m)
                .map_err(|e| anyhow!("unable to open fifo {} - {}", m.display(), strerror(&e)))?;
            Some(read_map(BufReader::new(f))?)
        }
    };

    if let Some(map) = &map {
        // Proxmox's tool ignores these lines; we say so.
        for w in &map.warnings {
            eprintln!("vma: warning: {w}");
        }
        let mut unknown: Vec<_> = map
            .targets
            .keys()
            .chain(&map.skip)
            .filter(|name| header.device_by_name(name).is_none())
            .collect();
        unknown.sort();
        for name in unknown {
            eprintln!(
                "vma: warning: map: device '{}' is not in the archive; line ignored",
                lossy(name)
            );
        }
    }

    let mut targets = Vec::new();
    for d in header.devices.iter().filter(|d| wanted(d)) {
        if let Some(t) = open_target(out, dir, d, map.as_ref(), args.format)? {
            targets.push(t);
        }
    }

    let mut progress = Progress::new(
        args.verbose,
        targets
            .iter()
            .filter_map(|t| header.device(t.dev_id))
            .map(|d| d.size),
    );
    let r = restore(reader, &targets, &mut progress, args.salvage)
        .and_then(|end| finish_disks(&targets).map(|()| end));
    progress.finish(r.is_ok());
    let end_error = r.map_err(crate::outcome::restore_failed)?;
    // Shapes Proxmox restores but no correct writer produces: one line per device.
    for (_, line) in vma_format::warning::per_device(reader.warnings()) {
        eprintln!("vma: warning: {line}");
    }
    // Durable before any final name: the data, then the directory entries.
    sync_all(out, &targets)?;
    if args.salvage {
        return finish_salvage(out, reader, header, dir, &targets, end_error);
    }

    // All checks passed: make the disks visible under their final names.
    for t in &targets {
        if let Some(to) = &t.rename_to {
            if to.symlink_metadata().is_ok() {
                bail!("restore failed - {} already exists", to.display());
            }
        }
    }
    for t in &targets {
        if let Some(to) = &t.rename_to {
            out.rename(&t.path, to)?;
        }
    }
    out.sync_dir()
}

/// `fsync`s every output and then the directory (which holds the
/// `tmp-disk-*` entries the final renames move).
fn sync_all(out: &Restore, targets: &[Target]) -> Result<()> {
    for t in targets {
        t.out.sync_all().map_err(|e| {
            anyhow!(
                "restore failed - can't sync {} - {}",
                t.path.display(),
                strerror(&e)
            )
        })?;
    }
    out.sync_dir()
}

/// Writes back what the disk outputs still cache (qcow2 metadata).
fn finish_disks(targets: &[Target]) -> Result<()> {
    for t in targets {
        t.out
            .finish()
            .with_context(|| t.path.display().to_string())?;
    }
    Ok(())
}

/// The `-d` set (None = all devices); unknown names are an error.
fn drive_filter(lists: &[String], header: &ArchiveHeader) -> Result<Option<HashSet<Vec<u8>>>> {
    if lists.is_empty() {
        return Ok(None);
    }
    let mut set = HashSet::new();
    for name in lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|n| !n.is_empty())
    {
        if header.device_by_name(name.as_bytes()).is_none() {
            let have: Vec<String> = header.devices.iter().map(|d| lossy(&d.name)).collect();
            bail!(
                "-d: no device named '{name}' (the archive has: {})",
                if have.is_empty() {
                    "no devices".to_string()
                } else {
                    have.join(", ")
                }
            );
        }
        set.insert(name.as_bytes().to_vec());
    }
    Ok(Some(set))
}

/// Creates `path` (which must not exist) with `data`, durably.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<File> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(f)
}

/// The length of device `d`'s output file (`size` rounded up to `align`),
/// or the error naming the device, its declared size and the limit.
fn file_len(d: &Device, align: u64) -> Result<u64> {
    match d.size.checked_next_multiple_of(align) {
        Some(len) if len <= MAX_FILE_LEN => Ok(len),
        _ => bail!(
            "can't restore device {}: declared size {} bytes exceeds the largest possible file size ({MAX_FILE_LEN} bytes)",
            lossy(&d.name),
            d.size
        ),
    }
}

/// Disks are rounded up to 512 bytes as QEMU creates them; vmstate is not.
fn output_align(d: &Device) -> u64 {
    if d.is_vmstate() {
        1
    } else {
        512
    }
}

/// Makes the new sparse output of device `d` `len` bytes long. When the file
/// system refuses the length as too large (EFBIG, e.g. ext4's 16 TiB), the
/// error names its limit, found by probing lengths on this (empty) file.
fn set_file_len(file: &File, path: &Path, d: &Device, len: u64) -> Result<()> {
    // Windows: unwritten ranges become holes only in a file marked sparse.
    crate::sys::make_sparse(file);
    let Err(e) = file.set_len(len) else {
        return Ok(());
    };
    if e.raw_os_error() != Some(libc::EFBIG) {
        bail!(
            "can't make {} {len} bytes long - {}",
            path.display(),
            strerror(&e)
        );
    }
    // Largest accepted length by bisection: ~50 ftruncate calls, no data.
    let (mut ok, mut too_big) = (0u64, len);
    while too_big - ok > 1 {
        let mid = ok + (too_big - ok) / 2;
        match file.set_len(mid) {
            Ok(()) => ok = mid,
            Err(e) if e.raw_os_error() == Some(libc::EFBIG) => too_big = mid,
            Err(_) => break,
        }
    }
    let _ = file.set_len(0);
    bail!(
        "can't make {} {len} bytes long for device {} (declared size {} bytes): the file system's largest file size is {ok} bytes - {}",
        path.display(),
        lossy(&d.name),
        d.size,
        strerror(&e)
    )
}

/// Opens or creates the output of device `d`; `None` when the map skips it.
fn open_target(
    out: &Restore,
    dir: &Path,
    d: &Device,
    map: Option<&RestoreMap>,
    format: Format,
) -> Result<Option<Target>> {
    let name = lossy(&d.name);
    if d.is_vmstate() {
        let len = file_len(d, output_align(d))?;
        let path = dir.join("vmstate.bin");
        let file = out
            .create(&path, || {
                OpenOptions::new().write(true).create_new(true).open(&path)
            })
            .map_err(|e| anyhow!("unable to create {} - {}", path.display(), strerror(&e)))?;
        // Zero blocks stay holes, so the declared size must be set explicitly.
        set_file_len(&file, &path, d, len)?;
        return Ok(Some(Target {
            dev_id: d.id,
            path,
            out: Disk::Raw(file),
            size: d.size,
            limit: u64::MAX,
            write_zero: false,
            rename_to: None,
        }));
    }
    let Some(map) = map else {
        if format == Format::Qcow2 {
            return target::new_qcow2_target(out, dir, d).map(Some);
        }
        // Sparse file of the size QEMU would create (rounded up to 512).
        let len = file_len(d, output_align(d))?;
        let path = join_name(dir, "tmp-disk-", &d.name, ".raw");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "DEVINFO {} {}", path.display(), d.size)?;
        stdout.flush()?;
        let file = out
            .create(&path, || {
                OpenOptions::new().write(true).create_new(true).open(&path)
            })
            .map_err(|e| anyhow!("can't create file {} - {}", path.display(), strerror(&e)))?;
        set_file_len(&file, &path, d, len)?;
        let rename_to = Some(join_name(dir, "disk-", &d.name, ".raw"));
        return Ok(Some(Target {
            dev_id: d.id,
            path,
            out: Disk::Raw(file),
            size: d.size,
            limit: d.size,
            write_zero: false,
            rename_to,
        }));
    };
    if map.skip.contains(&d.name) {
        return Ok(None);
    }
    let Some(m) = map.targets.get(&d.name) else {
        bail!("no device name mapping for {name}");
    };
    let path = m.path.clone();
    let (out, tsize) = match m.format.as_deref() {
        None | Some("raw") => Disk::open_raw(&path, &name)?,
        Some("qcow2") => Disk::open_qcow2(&path, &name)?,
        Some(f) => bail!("device {name}: format '{f}' is not supported (only raw and qcow2)"),
    };
    if tsize < d.size {
        bail!(
            "target {} for {name} is too small ({tsize} < {} bytes)",
            path.display(),
            d.size
        );
    }
    if tsize > d.size.saturating_add(4 << 20) {
        bail!(
            "target {} for {name} is too large ({tsize} > {} + 4 MiB)",
            path.display(),
            d.size
        );
    }
    Ok(Some(Target {
        dev_id: d.id,
        path,
        out,
        size: d.size,
        limit: d.size,
        write_zero: m.write_zero,
        rename_to: None,
    }))
}

/// Streams the archive into the targets, then checks completeness.
///
/// In salvage mode a read error that ends the stream (I/O, corrupt
/// compression) is returned as `Ok(Some(error))`, and completeness is left
/// to the caller; write errors are fatal either way.
fn restore(
    reader: &mut Reader,
    targets: &[Target],
    progress: &mut Progress,
    salvage: bool,
) -> Result<Option<vma_format::Error>> {
    let mut by_dev = [usize::MAX; 256];
    for (i, t) in targets.iter().enumerate() {
        by_dev[t.dev_id as usize] = i;
    }
    loop {
        let ext = match reader.next_extent() {
            Ok(Some(ext)) => ext,
            Ok(None) => break,
            Err(e) if salvage => return Ok(Some(e)),
            Err(e) => return Err(e.into()),
        };
        // Device-contiguous data per target, written when a run breaks or
        // at the end of the extent (the data borrows the extent buffer).
        let mut pend: Vec<Pending<'_>> = targets.iter().map(|_| Pending::default()).collect();
        for c in ext.clusters() {
            let i = by_dev[c.dev_id as usize];
            let Some(t) = targets.get(i) else { continue };
            progress.cluster(c.mask, c.device_offset(), t.size);
            let p = &mut pend[i];
            let base = c.device_offset();
            let mut next = 0usize; // first block not yet queued
            for (b, bytes) in c.runs() {
                if t.write_zero && b > next {
                    zeros_clipped(p, t, base + (next * 4096) as u64, (b - next) * 4096)?;
                }
                push_clipped(p, t, base + (b * 4096) as u64, bytes)?;
                next = b + bytes.len() / 4096;
            }
            if t.write_zero && next < 16 {
                zeros_clipped(p, t, base + (next * 4096) as u64, (16 - next) * 4096)?;
            }
        }
        for (p, t) in pend.iter_mut().zip(targets) {
            p.flush(&t.out)
                .with_context(|| t.path.display().to_string())?;
        }
        progress.tick();
    }
    if !salvage {
        reader
            .completeness()
            .check(|id| by_dev[id as usize] != usize::MAX)?;
    }
    Ok(None)
}

/// `clusters a-b (bytes x-y), …` for missing cluster ranges of a device of `size` bytes.
fn missing_text(ranges: &[std::ops::Range<u64>], more: bool, size: u64) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .map(|r| {
            // r.end * 65536 is 2^64 for the last range of a 2^64-1 byte device.
            let first = r.start.saturating_mul(65536);
            let last = r.end.saturating_mul(65536).min(size).saturating_sub(1);
            if r.end - r.start == 1 {
                format!("cluster {} (bytes {first}-{last})", r.start)
            } else {
                format!("clusters {}-{} (bytes {first}-{last})", r.start, r.end - 1)
            }
        })
        .collect();
    if more {
        parts.push("…".into());
    }
    parts.join(", ")
}

/// `: <error>`, with ` at byte offset N` first unless the message names
/// an offset itself (vma-format's messages do).
fn located(e: &vma_format::Error, fallback: Option<u64>) -> String {
    let text = e.to_string();
    match e.offset().or(fallback) {
        Some(off) if !text.contains("byte offset") => format!(" at byte offset {off}: {text}"),
        _ => format!(": {text}"),
    }
}

/// After a salvaging restore: reports the damage on stderr, renames complete
/// outputs to their final names and incomplete ones to `incomplete-*`.
fn finish_salvage(
    out: &Restore,
    reader: &Reader,
    header: &ArchiveHeader,
    dir: &Path,
    targets: &[Target],
    end_error: Option<vma_format::Error>,
) -> Result<()> {
    let mut damaged = 0usize;
    for e in reader.damage() {
        damaged += 1;
        eprintln!("vma: salvage: skipped damaged data{}", located(e, None));
    }
    if let Some(e) = &end_error {
        damaged += 1;
        eprintln!(
            "vma: salvage: stopped reading{}",
            located(e, Some(reader.offset()))
        );
    }
    let completeness = reader.completeness();
    let mut incomplete = 0usize;
    let mut renames = Vec::new();
    for t in targets {
        let Some(d) = header.device(t.dev_id) else {
            continue;
        };
        let name = vma_format::error::Name(d.name.clone());
        let prefixed = |prefix: &str| {
            if d.is_vmstate() {
                dir.join(format!("{prefix}vmstate.bin"))
            } else {
                join_name(dir, &format!("{prefix}disk-"), &d.name, t.out.suffix())
            }
        };
        let c = completeness.devices.iter().find(|c| c.dev_id == t.dev_id);
        match c.filter(|c| c.missing > 0) {
            None if end_error.is_none() => {
                let to = t.rename_to.clone().unwrap_or_else(|| t.path.clone());
                eprintln!("vma: salvage: disk {name}: complete ({})", to.display());
                renames.push((&t.path, to));
            }
            // Every cluster arrived, but the input failed afterwards (e.g. a
            // zstd checksum mismatch at the end of a frame): the data read
            // may be corrupt, so it does not get the final name either.
            None => {
                incomplete += 1;
                let to = prefixed("unverified-");
                eprintln!(
                    "vma: salvage: disk {name}: all clusters read, but the input failed afterwards; data kept unverified in {}",
                    to.display()
                );
                renames.push((&t.path, to));
            }
            Some(c) => {
                incomplete += 1;
                let to = prefixed("incomplete-");
                eprintln!(
                    "vma: salvage: disk {name}: {} of {} clusters missing: {}; partial data kept in {}",
                    c.missing,
                    c.total,
                    missing_text(&c.ranges, c.more, d.size),
                    to.display()
                );
                renames.push((&t.path, to));
            }
        }
    }
    for (from, to) in &renames {
        if *from == to {
            continue;
        }
        if to.symlink_metadata().is_ok() {
            bail!("restore failed - {} already exists", to.display());
        }
        out.rename(from, to)?;
    }
    out.sync_dir()?;
    if damaged > 0 || incomplete > 0 {
        eprintln!(
            "vma: salvage: restore incomplete - {damaged} damaged region(s) skipped, {incomplete} of {} disk(s) incomplete or unverified",
            targets.len()
        );
        return Err(Exit(EXIT_SALVAGED).into());
    }
    Ok(())
}

/// Queues `data` at device offset `off`, clipped to the target's limit.
fn push_clipped<'a>(p: &mut Pending<'a>, t: &Target, off: u64, data: &'a [u8]) -> Result<()> {
    if off < t.limit {
        let n = data
            .len()
            .min(usize::try_from(t.limit - off).unwrap_or(usize::MAX));
        p.push(&t.out, off, &data[..n])
            .with_context(|| t.path.display().to_string())?;
    }
    Ok(())
}

/// Queues `len` zero bytes at device offset `off`, clipped to the target's limit.
fn zeros_clipped(p: &mut Pending<'_>, t: &Target, off: u64, len: usize) -> Result<()> {
    if off < t.limit {
        let n = (len as u64).min(t.limit - off);
        p.push_zeros(&t.out, off, n)
            .with_context(|| t.path.display().to_string())?;
    }
    Ok(())
}
