//! `vma extract -d` of a remote archive fetches only the selected disks'
//! extents (moto's S3 server on a free port): the same bytes as a local
//! extract, far fewer bytes fetched, damage and truncation still caught
//! with the same messages as a local extract.
//!
//! Needs `moto_server` (`pip install 'moto[server]'`; tests/run-all.sh does it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support/moto.rs"]
mod moto;
use moto::*;
use vma_format::{ArchivePart, IndexedReader, WriterBuilder};
use vma_tests::{sha256_hex, vma_bin, TestRng};

const CLUSTERS: u32 = 192; // 12 MiB per disk

/// Three 12 MiB disks of random data written in runs of 87 clusters, a, b,
/// c in turn, so that extents (58 clusters) hold one disk or two; every
/// fifth cluster of b is zero (mask 0), and so are c's clusters 87..174.
/// The archive bytes, and each disk's content.
fn interleaved() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut b = WriterBuilder::new();
    b.add_config("qemu-server.conf", b"memory: 512\n".to_vec())
        .unwrap();
    let size = u64::from(CLUSTERS) * 65536;
    let ids = ["drive-scsi0", "drive-scsi1", "drive-scsi2"].map(|n| b.add_device(n, size).unwrap());
    let mut disks = vec![vec![0u8; size as usize]; 3];
    let mut rng = TestRng::new(15);
    let w = b.build(Vec::new()).unwrap();
    for run in 0..CLUSTERS.div_ceil(87) {
        for (k, &id) in ids.iter().enumerate() {
            for c in (run * 87..(run + 1) * 87).filter(|&c| c < CLUSTERS) {
                let zero = (k == 1 && c % 5 == 0) || (k == 2 && (87..174).contains(&c));
                if zero {
                    w.write_zero_cluster(id, c).unwrap();
                } else {
                    let at = c as usize * 65536;
                    let data = &mut disks[k][at..at + 65536];
                    rng.fill(data);
                    w.write_cluster(id, c, data).unwrap();
                }
            }
        }
    }
    (w.finish().unwrap().0, disks)
}

/// The parts of `archive` a restore of `dev_id` needs.
fn parts_of(archive: &[u8], dev_id: u8) -> Vec<ArchivePart> {
    IndexedReader::open(archive).unwrap().extents_for(&[dev_id])
}

fn extract(cmd: Command, archive: &str, dir: &Path, drive: &str) -> Output {
    let mut cmd = cmd;
    cmd.args(["extract", "-v", "-d", drive, archive])
        .arg(dir)
        .output()
        .unwrap()
}

/// The `-v` line's (bytes, requests).
fn fetched(o: &Output) -> (u64, usize) {
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("vma: fetched "))
        .unwrap_or_else(|| panic!("no fetched line in: {err}"));
    let w: Vec<&str> = line.split(' ').collect();
    (w[2].parse().unwrap(), w[5].parse().unwrap())
}

/// The lines of stderr that say what is wrong with the archive (the
/// cleanup lines name the directory, which differs).
fn complaint(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("vma extent") || l.contains("missing cluster"))
        .map(str::to_string)
        .collect()
}

struct Setup {
    m: Moto,
    tmp: tempfile::TempDir,
    archive: Vec<u8>,
    disks: Vec<Vec<u8>>,
}

fn setup() -> Setup {
    let m = Moto::start();
    m.bucket("bkt");
    let (archive, disks) = interleaved();
    m.put("bkt", "three.vma", &archive);
    Setup {
        m,
        tmp: tempfile::tempdir().unwrap(),
        archive,
        disks,
    }
}

impl Setup {
    /// Uploads `bytes` as `key` and also writes them to a local file.
    fn both(&self, key: &str, bytes: &[u8]) -> (String, PathBuf) {
        self.m.put("bkt", key, bytes);
        let p = self.tmp.path().join(key);
        fs::write(&p, bytes).unwrap();
        (format!("s3://bkt/{key}"), p)
    }
}

#[test]
fn extract_of_one_disk_fetches_only_its_extents() {
    let s = setup();
    let size = s.archive.len() as u64;
    let (url, local) = s.both("three.vma", &s.archive);
    // No index yet: one streaming GET does the work (after the header GET
    // and a look for the index), and leaves the index beside the object.
    let o = extract(s.m.vma(), &url, &s.tmp.path().join("first"), "drive-scsi1");
    ok(&o);
    assert_eq!(
        fetched(&o),
        (size + (64 << 10), 4),
        "header, index lookup, stream, index PUT"
    );
    assert!(s.m.exists("bkt", "three.vma.vmaidx"));
    for (k, drive) in ["drive-scsi0", "drive-scsi1", "drive-scsi2"]
        .iter()
        .enumerate()
    {
        let remote_dir = s.tmp.path().join(format!("r{k}"));
        let before = s.m.requests("bkt", "three.vma");
        let sidecar_before = s.m.requests("bkt", "three.vma.vmaidx");
        let o = extract(s.m.vma(), &url, &remote_dir, drive);
        let stdout = ok(&o);
        let local_dir = s.tmp.path().join(format!("l{k}"));
        let lo = extract(
            Command::new(vma_bin!()),
            local.to_str().unwrap(),
            &local_dir,
            drive,
        );
        ok(&lo);
        assert_eq!(extracted(&remote_dir), extracted(&local_dir), "{drive}");
        let disk = fs::read(remote_dir.join(format!("disk-{drive}.raw"))).unwrap();
        assert_eq!(sha256_hex(&disk), sha256_hex(&s.disks[k]), "{drive}");
        // Proxmox's lines on stdout are the local extract's (the progress
        // lines carry a duration, so the summary lines are compared).
        let tail = |t: &str| {
            t.lines()
                .rev()
                .take(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(tail(&stdout), tail(&String::from_utf8_lossy(&lo.stdout)));

        let needed: u64 = parts_of(&s.archive, k as u8 + 1)
            .iter()
            .map(|p| p.range.end - p.range.start)
            .sum();
        let (bytes, requests) = fetched(&o);
        // The needed parts, the 64 KiB header range and the index (the
        // header, 512 bytes per extent header, its head and tables).
        let extents = IndexedReader::open(&s.archive[..]).unwrap().extent_count() as u64;
        assert!(
            bytes >= needed && bytes <= needed + (128 << 10) + (512 + 64) * extents,
            "{drive}: {bytes}"
        );
        // One disk of three, interleaved: well under the whole object.
        assert!(
            bytes < size * 2 / 3,
            "{drive}: fetched {bytes} of {size} bytes"
        );
        // Every request is in moto's log: of the archive, and of its index.
        assert_eq!(
            s.m.requests("bkt", "three.vma") - before
                + (s.m.requests("bkt", "three.vma.vmaidx") - sidecar_before),
            requests,
            "{drive}: moto's log"
        );
        assert!(requests <= 5, "{drive}: {requests} requests");
        eprintln!("{drive}: {bytes} of {size} bytes in {requests} requests ({extents} extents)");
    }

    // Two disks of three: still a subset; all three: the streaming GET.
    let dir = s.tmp.path().join("two");
    let o = extract(s.m.vma(), &url, &dir, "drive-scsi0,drive-scsi2");
    ok(&o);
    assert_eq!(
        fs::read(dir.join("disk-drive-scsi2.raw")).unwrap(),
        s.disks[2]
    );
    assert!(fetched(&o).0 < size, "{:?}", fetched(&o));
    let o = extract(
        s.m.vma(),
        &url,
        &s.tmp.path().join("all"),
        "drive-scsi0,drive-scsi1,drive-scsi2",
    );
    ok(&o);
    // The header range that showed every disk is wanted, then the stream
    // (and the index it built, stored again: a PUT).
    assert_eq!(fetched(&o), (size + (64 << 10), 3));
    let o =
        s.m.vma()
            .args(["extract", "-v", &url])
            .arg(s.tmp.path().join("whole"))
            .output()
            .unwrap();
    ok(&o);
    assert_eq!(
        fetched(&o),
        (size, 2),
        "whole archive: one streaming GET (and the index PUT)"
    );

    // extract --range says what it fetched too.
    let out = s.tmp.path().join("range.raw");
    fs::write(&out, vec![0u8; 1 << 20]).unwrap();
    let before = s.m.requests("bkt", "three.vma");
    let sidecar_before = s.m.requests("bkt", "three.vma.vmaidx");
    let o =
        s.m.vma()
            .args([
                "extract",
                "-v",
                "--range",
                "0:1M",
                "-d",
                "drive-scsi1",
                &url,
            ])
            .arg(&out)
            .output()
            .unwrap();
    ok(&o);
    assert_eq!(fs::read(&out).unwrap(), s.disks[1][..1 << 20]);
    // Through the index the first extract stored: the first 64 KiB, the
    // index, and the range's data (a fifth of its clusters are zero).
    let (bytes, requests) = fetched(&o);
    assert!((512 << 10..2 << 20).contains(&bytes), "{bytes}");
    assert_eq!(
        s.m.requests("bkt", "three.vma") - before
            + (s.m.requests("bkt", "three.vma.vmaidx") - sidecar_before),
        requests
    );
}

#[test]
fn damage_and_truncation_of_the_selected_disk_are_caught_as_locally() {
    let s = setup();
    let parts = parts_of(&s.archive, 2);
    // An extent of drive-scsi1 after a gap (its header at a part's start).
    let ext = parts[1].range.start as usize;

    let check = |key: &str, bytes: &[u8], want: &str| {
        let (url, local) = s.both(key, bytes);
        let rdir = s.tmp.path().join(format!("{key}-r"));
        let ldir = s.tmp.path().join(format!("{key}-l"));
        let ro = extract(s.m.vma(), &url, &rdir, "drive-scsi1");
        let lo = extract(
            Command::new(vma_bin!()),
            local.to_str().unwrap(),
            &ldir,
            "drive-scsi1",
        );
        assert!(!ro.status.success() && !lo.status.success(), "{key}");
        let (rc, lc) = (complaint(&ro), complaint(&lo));
        assert!(rc.iter().any(|l| l.contains(want)), "{key}: {rc:?}");
        assert_eq!(rc, lc, "{key}: the local extract's message");
        assert!(!rdir.exists(), "{key}: the failed restore is removed");
    };

    // A flipped bit in a blockinfo of the extent header: its MD5 no longer matches.
    let mut bad = s.archive.clone();
    bad[ext + 100] ^= 0x10;
    let index = parts[1].first_extent;
    check(
        "md5.vma",
        &bad,
        &format!("wrong vma extent header checksum (extent {index} at byte offset {ext})"),
    );

    // Cut inside that extent's data.
    check(
        "cut-inside.vma",
        &s.archive[..ext + 4096],
        "short vma extent (have 4096 < need",
    );

    // Cut on that extent's boundary: the index is fine, the selected
    // stream ends early and drive-scsi1 lacks clusters.
    check(
        "cut-boundary.vma",
        &s.archive[..ext],
        &format!("archive ends at byte offset {ext})"),
    );
}
