//! The `extract -r` device map (qemu-server writes it into a FIFO):
//!
//! `[throttling.bps=N:][throttling.group=G:][cache=MODE:][format=FMT:]{0|1}:<devname>=<path>`
//! or `skip=<devname>`, one per line, until EOF, an empty line or `done`.
//! The `key=value:` options come in any order, each at most once.
//!
//! Like Proxmox's tool (its map is a hash table keyed by device name), a
//! later line for a device replaces an earlier one, and lines for devices the
//! archive lacks are ignored; we say so in a warning ([`RestoreMap::warnings`]).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// Where one device goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapTarget {
    /// Target path (an existing file or block device).
    pub path: PathBuf,
    /// `1:` — write zero blocks explicitly.
    pub write_zero: bool,
    /// `format=`: `raw` (also when absent) or `qcow2` (an existing image, as
    /// qmrestore creates it on directory storage); others are refused.
    pub format: Option<String>,
    /// `cache=` (accepted, ignored: we write with plain pwrite).
    pub cache: Option<String>,
    /// `throttling.bps=` (accepted, ignored).
    pub bps: Option<u64>,
    /// `throttling.group=` (accepted, ignored).
    pub group: Option<String>,
}

/// A parsed map: mapped and skipped devices (each name in at most one).
#[derive(Debug, Default)]
pub struct RestoreMap {
    /// Device name → target.
    pub targets: HashMap<Vec<u8>, MapTarget>,
    /// `skip=` device names.
    pub skip: Vec<Vec<u8>>,
    /// What was tolerated (a device given again), for the caller to print.
    pub warnings: Vec<String>,
}

impl RestoreMap {
    /// Drops an earlier line for `name`, with a warning naming `line`.
    fn replace(&mut self, name: &[u8], line: &[u8]) {
        let before = self.skip.len();
        self.skip.retain(|n| n != name);
        if self.targets.remove(name).is_some() || self.skip.len() != before {
            self.warnings.push(format!(
                "map: device '{}' given again; using the later line '{}'",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(line)
            ));
        }
    }
}

const KEYS: [&str; 4] = ["throttling.bps", "throttling.group", "cache", "format"];

fn parse_err(line: &[u8], why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "read map failed - {why} ('{}')",
        String::from_utf8_lossy(line)
    )
}

/// Parses one non-empty map line into `map`.
pub fn parse_line(map: &mut RestoreMap, line: &[u8]) -> Result<()> {
    if let Some(name) = line.strip_prefix(b"skip=") {
        if name.is_empty() {
            return Err(parse_err(line, "no dev name specified"));
        }
        map.replace(name, line);
        map.skip.push(name.to_vec());
        return Ok(());
    }
    let mut rest = line;
    let mut opts: [Option<String>; 4] = Default::default();
    'opts: loop {
        for (i, key) in KEYS.iter().enumerate() {
            let Some(after) = rest
                .strip_prefix(key.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            else {
                continue;
            };
            let Some(colon) = after.iter().position(|&b| b == b':') else {
                return Err(parse_err(line, &format!("missing ':' after {key}=")));
            };
            if opts[i].is_some() {
                return Err(parse_err(line, &format!("option {key} given twice")));
            }
            opts[i] = Some(String::from_utf8_lossy(&after[..colon]).into_owned());
            rest = &after[colon + 1..];
            continue 'opts;
        }
        break;
    }
    let write_zero = if let Some(r) = rest.strip_prefix(b"0:") {
        rest = r;
        false
    } else if let Some(r) = rest.strip_prefix(b"1:") {
        rest = r;
        true
    } else {
        return Err(parse_err(line, "parse error"));
    };
    let Some(eq) = rest.iter().position(|&b| b == b'=') else {
        return Err(parse_err(line, "no '=' between device name and path"));
    };
    let (name, path) = (&rest[..eq], &rest[eq + 1..]);
    if name.is_empty() {
        return Err(parse_err(line, "no dev name specified"));
    }
    if path.is_empty() {
        return Err(parse_err(line, "no path specified"));
    }
    let bps = match &opts[0] {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| parse_err(line, "invalid throttling.bps"))?,
        ),
    };
    let [_, group, cache, format] = opts;
    let target = MapTarget {
        path: PathBuf::from(crate::sys::os_string(path)),
        write_zero,
        format,
        cache,
        bps,
        group,
    };
    map.replace(name, line);
    map.targets.insert(name.to_vec(), target);
    Ok(())
}

/// Reads map lines until EOF, an empty line or `done`.
pub fn read_map(mut r: impl BufRead) -> Result<RestoreMap> {
    let mut map = RestoreMap::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.is_empty() || line == b"done" {
            break;
        }
        if line.len() > 65536 {
            bail!("read map failed - line too long");
        }
        parse_line(&mut map, &line)?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_server_lines() {
        let text = b"format=raw:0:drive-scsi0=/dev/zvol/a\n\
            cache=none:throttling.bps=1000:format=raw:throttling.group=g:1:drive-scsi1=/tmp/b=c\n\
            skip=drive-efidisk0\ndone\nignored\n";
        let m = read_map(&text[..]).unwrap();
        let a = &m.targets[&b"drive-scsi0".to_vec()];
        assert_eq!(a.path, PathBuf::from("/dev/zvol/a"));
        assert!(!a.write_zero);
        assert_eq!(a.format.as_deref(), Some("raw"));
        let b = &m.targets[&b"drive-scsi1".to_vec()];
        assert_eq!(b.path, PathBuf::from("/tmp/b=c"));
        assert!(b.write_zero);
        assert_eq!(
            (b.bps, b.group.as_deref(), b.cache.as_deref()),
            (Some(1000), Some("g"), Some("none"))
        );
        assert_eq!(m.skip, vec![b"drive-efidisk0".to_vec()]);
        assert_eq!(m.targets.len(), 2);
    }

    #[test]
    fn a_later_line_for_a_device_replaces_the_earlier_one_with_a_warning() {
        let m = read_map(&b"0:a=/x\n1:a=/y\nskip=b\n0:b=/z\n0:c=/w\nskip=c\nskip=c\n"[..]).unwrap();
        assert_eq!(m.targets.len(), 2);
        assert_eq!(m.targets[&b"a".to_vec()].path, PathBuf::from("/y"));
        assert!(m.targets[&b"a".to_vec()].write_zero);
        assert_eq!(m.targets[&b"b".to_vec()].path, PathBuf::from("/z"));
        assert_eq!(m.skip, vec![b"c".to_vec()]);
        assert_eq!(
            m.warnings,
            [
                "map: device 'a' given again; using the later line '1:a=/y'",
                "map: device 'b' given again; using the later line '0:b=/z'",
                "map: device 'c' given again; using the later line 'skip=c'",
                "map: device 'c' given again; using the later line 'skip=c'",
            ]
        );
    }

    #[test]
    fn stops_at_empty_line_and_rejects_garbage() {
        let m = read_map(&b"0:a=/x\n\n1:b=/y\n"[..]).unwrap();
        assert_eq!(m.targets.len(), 1);
        for bad in [
            &b"2:a=/x"[..],
            b"0:a",
            b"0:=/x",
            b"format=raw:format=raw:0:a=/x",
            b"format=raw",
            b"0:a=",
        ] {
            let mut m = RestoreMap::default();
            assert!(
                parse_line(&mut m, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_qmrestore_qcow2_lines() {
        let m = read_map(
            &b"format=qcow2:0:drive-scsi0=/mnt/pve/nfs/images/100/vm-100-disk-0.qcow2\n\
              cache=none:format=qcow2:1:drive-virtio1=/var/lib/vz/images/100/vm-100-disk-1.qcow2\ndone\n"[..],
        )
        .unwrap();
        let a = &m.targets[&b"drive-scsi0".to_vec()];
        assert_eq!(a.format.as_deref(), Some("qcow2"));
        assert!(!a.write_zero);
        assert_eq!(
            a.path,
            PathBuf::from("/mnt/pve/nfs/images/100/vm-100-disk-0.qcow2")
        );
        let b = &m.targets[&b"drive-virtio1".to_vec()];
        assert_eq!(b.format.as_deref(), Some("qcow2"));
        assert!(b.write_zero);
    }
}
