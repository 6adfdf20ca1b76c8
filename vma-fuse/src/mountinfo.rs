//! Which filesystem is mounted where, from `/proc/self/mountinfo`: how
//! `vma umount` knows a `vma mount` from any other mount, and how `vma mount`
//! refuses to stack a second one on the first.
//!
//! A `vma mount` is a FUSE mount whose source (fsname) is `vma` or starts
//! with `vma:` (`fuser_config` always makes it so). Its type is `fuse` when
//! mounted by mount(2) as root (fuser passes no subtype then) and `fuse.vma`
//! when mounted through fusermount3.

use std::io;
use std::path::Path;

/// One line of mountinfo: what is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Filesystem type (`tmpfs`, `fuse`, `fuse.vma`, ...).
    pub fstype: String,
    /// Mount source (for FUSE: the fsname).
    pub source: String,
}

impl Mount {
    /// Mounted by this crate.
    pub fn is_vma(&self) -> bool {
        matches!(self.fstype.as_str(), "fuse" | "fuse.vma")
            && (self.source == "vma" || self.source.starts_with("vma:"))
    }
}

/// The topmost mount at `path` (an absolute, canonical path), if any.
pub(crate) fn top_at(path: &Path) -> io::Result<Option<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(top_in(&text, path))
}

/// [`top_at`] over the text of a mountinfo file: later lines are mounted on
/// top of earlier ones.
fn top_in(text: &str, path: &Path) -> Option<Mount> {
    use std::os::unix::ffi::OsStrExt;
    let want = path.as_os_str().as_bytes();
    text.lines()
        .rev()
        .filter_map(parse)
        .find(|(mp, _)| mp == want)
        .map(|(_, m)| m)
}

/// `(mount point, mount)` of one line: `id parent major:minor root mountpoint
/// options [optional fields...] - fstype source superoptions`.
fn parse(line: &str) -> Option<(Vec<u8>, Mount)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mp = unescape(fields.get(4)?);
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let fstype = fields.get(sep + 1)?;
    let source = fields.get(sep + 2)?;
    Some((
        mp,
        Mount {
            fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
        },
    ))
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                let v = o.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw
40 22 0:36 / /mnt/a\\040b rw,relatime shared:9 - tmpfs tmpfs rw,size=1024k
41 40 0:37 / /mnt/a\\040b ro,nosuid,nodev,relatime - fuse vma:/b/x.vma ro,user_id=0
42 1 0:38 / /mnt/c ro,nosuid - fuse.vma vma rw,user_id=1000
43 1 0:39 / /mnt/d rw - fuse.sshfs host:/d rw
44 1 0:40 / /mnt/e rw master:1 - fuse vmaxyz rw
";

    #[test]
    fn finds_the_topmost_mount_and_knows_ours() {
        let top = |p: &str| top_in(SAMPLE, Path::new(p));
        let ab = top("/mnt/a b").unwrap();
        assert_eq!(ab.source, "vma:/b/x.vma");
        assert!(ab.is_vma());
        assert!(top("/mnt/c").unwrap().is_vma());
        let proc = top("/proc").unwrap();
        assert_eq!((proc.fstype.as_str(), proc.is_vma()), ("proc", false));
        assert!(!top("/mnt/d").unwrap().is_vma());
        assert!(!top("/mnt/e").unwrap().is_vma(), "vmaxyz is not vma:");
        assert_eq!(top("/mnt"), None);
        assert_eq!(top("/mnt/a"), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c\\01"), b"a b\\c\\01");
    }
}
