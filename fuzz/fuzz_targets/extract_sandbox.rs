//! `extract_sandbox`: an archive's config and device names can only create
//! files directly inside the extraction directory.
//!
//! `vma extract` lives in the `vma-cli` binary crate and cannot be linked
//! here, so this target runs a small extraction routine with the same name
//! handling and output layout (configs by name; `tmp-disk-<dev>.raw` renamed
//! to `disk-<dev>.raw`; `vmstate.bin`): every name from the archive becomes a
//! path only after `vma_format::names::check_name` accepted it, the same
//! function the CLI calls. Afterwards the sandbox is walked: the target
//! directory is the only thing next to it, it holds only regular files (no
//! symlinks, no directories) with the expected names, and nothing else
//! appeared in the sandbox.
#![no_main]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vma_format::names::check_name;
use vma_format::StreamReader;

/// Device bytes beyond this are read but not written, to keep runs fast.
const MAX_WRITE: u64 = 8 << 20;

fn sandbox() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| vma_fuzz::scratch_dir("vma-fuzz-extract-"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let outer = sandbox();
    let jail = outer.join("jail");
    let target = jail.join("inner");
    for data in vma_fuzz::variants(data) {
        fs::create_dir(&jail).expect("create jail");
        let created = extract(&data, &target);
        check_layout(outer, &jail, &target, &created);
        fs::remove_dir_all(&jail).expect("clean up");
    }
});

/// Output file name for a device, as `vma extract` names it.
fn device_file(name: &[u8], tmp: bool) -> Vec<u8> {
    if name == b"vmstate" {
        return b"vmstate.bin".to_vec();
    }
    let mut f = if tmp {
        b"tmp-disk-".to_vec()
    } else {
        b"disk-".to_vec()
    };
    f.extend_from_slice(name);
    f.extend_from_slice(b".raw");
    f
}

fn path_in(dir: &Path, name: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    dir.join(std::ffi::OsStr::from_bytes(name))
}

/// Extracts `data` into `target` (created here, as `vma extract` does); returns
/// every path it created. Errors just stop it, like the CLI.
fn extract(data: &[u8], target: &Path) -> Vec<PathBuf> {
    let mut created = Vec::new();
    let _ = extract_inner(data, target, &mut created);
    created
}

fn extract_inner(data: &[u8], target: &Path, created: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut r = StreamReader::new(data).map_err(|e| e.to_string())?;
    let header = r.header().clone();
    // Names are checked before anything is created.
    for c in &header.configs {
        check_name(&c.name)?;
    }
    for d in &header.devices {
        check_name(&d.name)?;
    }
    fs::create_dir(target).map_err(|e| e.to_string())?;
    created.push(target.to_path_buf());
    for c in &header.configs {
        let p = path_in(target, &c.name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| e.to_string())?;
        created.push(p);
        f.write_all(&c.data).map_err(|e| e.to_string())?;
    }
    let mut files: Vec<Option<fs::File>> = (0..256).map(|_| None).collect();
    for d in &header.devices {
        let p = path_in(target, &device_file(&d.name, true));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| e.to_string())?;
        created.push(p);
        if d.size <= MAX_WRITE {
            f.set_len(d.size).map_err(|e| e.to_string())?;
        }
        files[d.id as usize] = Some(f);
    }
    while let Some(x) = r.next_extent().map_err(|e| e.to_string())? {
        for c in x.clusters() {
            let f = files[c.dev_id as usize]
                .as_ref()
                .expect("reader only yields declared devices");
            for (b, bytes) in c.runs() {
                let off = c.device_offset() + (b * 4096) as u64;
                if off + bytes.len() as u64 <= MAX_WRITE {
                    f.write_all_at(bytes, off).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    r.completeness()
        .check(|_| true)
        .map_err(|e| e.to_string())?;
    for d in &header.devices {
        let (from, to) = (
            path_in(target, &device_file(&d.name, true)),
            path_in(target, &device_file(&d.name, false)),
        );
        if from != to {
            if fs::symlink_metadata(&to).is_ok() {
                return Err("output exists".into());
            }
            fs::rename(&from, &to).map_err(|e| e.to_string())?;
            created.push(to);
        }
    }
    Ok(())
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    v.sort();
    v
}

fn check_layout(outer: &Path, jail: &Path, target: &Path, created: &[PathBuf]) {
    use std::os::unix::ffi::OsStrExt;
    assert_eq!(
        names(outer),
        vec![std::ffi::OsString::from("jail")],
        "something appeared next to the jail"
    );
    let in_jail = names(jail);
    assert!(
        in_jail.is_empty() || in_jail == vec![std::ffi::OsString::from("inner")],
        "escaped into the jail: {in_jail:?}"
    );
    for p in created {
        assert!(
            p == target || p.parent() == Some(target),
            "created outside the target: {p:?}"
        );
    }
    if in_jail.is_empty() {
        return;
    }
    let meta = fs::symlink_metadata(target).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    for name in names(target) {
        let p = target.join(&name);
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(
            m.file_type().is_file(),
            "not a regular file: {p:?} ({:?})",
            m.file_type()
        );
        let n = name.as_bytes();
        let dev = n.strip_suffix(b".raw").and_then(|n| {
            n.strip_prefix(b"tmp-disk-")
                .or_else(|| n.strip_prefix(b"disk-"))
        });
        assert!(
            check_name(n).is_ok() || dev.is_some_and(|d| check_name(d).is_ok()),
            "unchecked name reached the disk: {name:?}"
        );
        assert!(created.contains(&p), "unexpected file {p:?}");
    }
}
