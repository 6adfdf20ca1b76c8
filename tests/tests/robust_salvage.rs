//! Damaged and truncated archives through `vma verify`, `vma extract` and
//! `vma extract --salvage`: errors name the byte offset and leave no
//! `disk-*` file; salvage recovers every other cluster byte-exactly, keeps
//! incomplete disks as `incomplete-disk-*`, reports the missing ranges and
//! exits 3.

#[path = "robust_common.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::*;
use vma_format::raw::BlockInfo;

/// Three disks, clusters interleaved: 6 extents (59 clusters each), each mixing devices.
fn archive() -> Archive {
    let a = make_archive(&[
        ("drive-scsi0", 9 << 20),
        ("drive-scsi1", (5 << 20) + 1000),
        ("drive-virtio2", 7 << 20),
    ]);
    assert!(a.extents.len() >= 5, "{} extents", a.extents.len());
    a
}

/// The (dev_id, cluster) pairs of `extents`.
fn lost(extents: &[ExtentInfo]) -> BTreeSet<(u8, u32)> {
    extents
        .iter()
        .flat_map(|e| e.clusters.iter().copied())
        .collect()
}

/// Checks a salvaged directory: every cluster not in `lost` equals the
/// source; disks with lost clusters are only under `incomplete-disk-*`.
fn check_salvaged(dir: &Path, a: &Archive, lost: &BTreeSet<(u8, u32)>, stderr: &str) {
    check_salvaged_blocks(dir, a, lost, &BTreeSet::new(), stderr)
}

/// Like [`check_salvaged`], but the blocks in `recovered` (dev_id, cluster,
/// block) of lost clusters must hold the source bytes instead of zeros.
fn check_salvaged_blocks(
    dir: &Path,
    a: &Archive,
    lost: &BTreeSet<(u8, u32)>,
    recovered: &Blocks,
    stderr: &str,
) {
    for (i, d) in a.disks.iter().enumerate() {
        let dev = i as u8 + 1; // our writer numbers devices from 1
        let missing: Vec<u32> = lost
            .iter()
            .filter(|(id, _)| *id == dev)
            .map(|&(_, c)| c)
            .collect();
        let final_path = dir.join(format!("disk-{}.raw", d.name));
        let partial = dir.join(format!("incomplete-disk-{}.raw", d.name));
        let got = if missing.is_empty() {
            assert!(!partial.exists(), "{}", partial.display());
            fs::read(&final_path).unwrap()
        } else {
            assert!(
                !final_path.exists(),
                "{} is incomplete",
                final_path.display()
            );
            // The report names the disk, the count and the first range in
            // clusters and bytes.
            let first = missing[0] as u64;
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("disk {}:", d.name)))
                .unwrap_or_else(|| panic!("no report for {}: {stderr}", d.name));
            assert!(
                line.contains(&format!("{} of ", missing.len())),
                "count: {line}"
            );
            assert!(
                line.contains(&format!("(bytes {}-", first * CLUSTER as u64)),
                "byte offset: {line}"
            );
            assert!(line.contains("incomplete-disk-"), "{line}");
            fs::read(&partial).unwrap()
        };
        assert!(got.len() >= d.data.len());
        for (c, want) in d.data.chunks(CLUSTER).enumerate() {
            let have = &got[c * CLUSTER..c * CLUSTER + want.len()];
            if missing.contains(&(c as u32)) {
                for (b, (h, w)) in have.chunks(4096).zip(want.chunks(4096)).enumerate() {
                    if recovered.contains(&(dev, c as u32, b)) {
                        assert!(h == w, "{} cluster {c} block {b} not recovered", d.name);
                    } else {
                        assert!(
                            h.iter().all(|&b| b == 0),
                            "{} cluster {c} block {b}",
                            d.name
                        );
                    }
                }
            } else {
                assert!(have == want, "{} cluster {c} differs", d.name);
            }
        }
    }
    assert!(!names(dir).iter().any(|n| n.starts_with("tmp-disk-")));
}

fn no_final_disks(dir: &Path) {
    if dir.exists() {
        let n = names(dir);
        assert!(!n.iter().any(|n| n.starts_with("disk-")), "{n:?}");
    }
}

#[test]
fn corrupted_extent_header_fails_without_salvage_and_is_skipped_with_it() {
    let a = archive();
    let m = a.extents.len() / 2;
    let off = a.extents[m].offset;
    let mut bad = a.bytes.clone();
    // A byte of the blockinfo table: the header checksum no longer matches.
    bad[off as usize + 40] ^= 0x5a;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.vma");
    fs::write(&file, &bad).unwrap();

    let o = run(vma().arg("verify").arg(&file));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains(&format!("byte offset {off}")), "{err}");
    assert!(err.contains("extent header checksum"), "{err}");

    let out = tmp.path().join("plain");
    let o = run(vma().arg("extract").arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains(&format!("byte offset {off}")), "{err}");
    no_final_disks(&out);

    let out = tmp.path().join("salvaged");
    let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("skipped damaged data"))
        .unwrap_or_else(|| panic!("no damage report: {err}"));
    assert!(line.contains(&format!("byte offset {off}")), "{line}");
    assert!(line.contains("extent header checksum"), "{line}");
    let lost = lost(&a.extents[m..m + 1]);
    assert!(!lost.is_empty());
    check_salvaged(&out, &a, &lost, &err);
    assert_eq!(
        fs::read(out.join("qemu-server.conf")).unwrap(),
        b"memory: 512\n"
    );
}

/// (dev_id, cluster, block) triples.
type Blocks = BTreeSet<(u8, u32, usize)>;

/// For a cut `present` data bytes into extent `m`: the clusters lost (those
/// of extent `m` not wholly before the cut, and all later ones) and the
/// blocks of extent `m` wholly before the cut, which salvage must recover.
fn cut_inside(a: &Archive, m: usize, present: usize) -> (BTreeSet<(u8, u32)>, Blocks) {
    let mut lost = lost(&a.extents[m + 1..]);
    let mut recovered = BTreeSet::new();
    let mut r = vma_format::StreamReader::new(&a.bytes[..]).unwrap();
    for _ in 0..m {
        r.next_extent().unwrap();
    }
    let e = r.next_extent().unwrap().unwrap();
    let mut pos = 0;
    for c in e.clusters() {
        for (first, bytes) in c.runs() {
            for k in 0..bytes.len() / 4096 {
                pos += 4096;
                if pos <= present {
                    recovered.insert((c.dev_id, c.cluster, first + k));
                } else {
                    lost.insert((c.dev_id, c.cluster));
                }
            }
        }
    }
    (lost, recovered)
}

#[test]
fn truncated_archive_salvages_what_it_holds() {
    let a = archive();
    let m = a.extents.len() / 2;
    let off = a.extents[m].offset;
    let next = a.extents[m + 1].offset;
    let tmp = tempfile::tempdir().unwrap();
    // Inside an extent header, then at several places inside the data.
    for cut in [
        off + 100,
        off + 512 + 1,
        off + 512 + 3 * 4096 + 5,
        off + 512 + 70_000,
        (off + next) / 2,
        next - 1,
    ] {
        let file = tmp.path().join(format!("cut-{cut}.vma"));
        fs::write(&file, &a.bytes[..cut as usize]).unwrap();

        let o = run(vma().arg("verify").arg(&file));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{err}");
        assert!(err.contains(&format!("byte offset {off}")), "{err}");

        let out = tmp.path().join(format!("plain-{cut}"));
        let o = run(vma().arg("extract").arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{err}");
        assert!(err.contains(&format!("byte offset {off}")), "{err}");
        no_final_disks(&out);

        let out = tmp.path().join(format!("salvaged-{cut}"));
        let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains(&format!("byte offset {off}")), "{err}");
        let (lost_now, recovered) = if cut < off + 512 {
            (lost(&a.extents[m..]), BTreeSet::new())
        } else {
            cut_inside(&a, m, (cut - off - 512) as usize)
        };
        if cut >= off + 512 + 4096 {
            assert!(!recovered.is_empty(), "cut {cut}: nothing to recover?");
        }
        check_salvaged_blocks(&out, &a, &lost_now, &recovered, &err);
    }
}

#[test]
fn truncated_at_extent_boundary_names_the_missing_clusters() {
    let a = archive();
    let m = a.extents.len() - 3;
    let end = a.extents[m].offset;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cut.vma");
    fs::write(&file, &a.bytes[..end as usize]).unwrap();
    let o = run(vma().arg("verify").arg(&file));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains("missing cluster"), "{err}");
    assert!(
        err.contains(&format!("archive ends at byte offset {end}")),
        "{err}"
    );
    let out = tmp.path().join("plain");
    let o = run(vma().arg("extract").arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains(&format!("byte offset {end}")), "{err}");
    no_final_disks(&out);
    let out = tmp.path().join("salvaged");
    let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    check_salvaged(&out, &a, &lost(&a.extents[m..]), &err);
}

#[test]
fn salvage_of_an_intact_archive_is_a_normal_extract() {
    let a = archive();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ok.vma");
    fs::write(&file, &a.bytes).unwrap();
    let out = tmp.path().join("out");
    let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
    assert!(o.status.success(), "{}", text(&o.stderr));
    check_salvaged(&out, &a, &BTreeSet::new(), &text(&o.stderr));
    let mut want: Vec<String> = a
        .disks
        .iter()
        .map(|d| format!("disk-{}.raw", d.name))
        .collect();
    want.push("qemu-server.conf".into());
    want.sort();
    assert_eq!(names(&out), want);
}

#[test]
fn salvage_skips_trailing_garbage_and_reports_it() {
    let a = archive();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("garbage.vma");
    let mut bytes = a.bytes.clone();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0xabu8; 4000]);
    fs::write(&file, &bytes).unwrap();
    let o = run(vma().arg("verify").arg(&file));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    assert!(err.contains(&format!("byte offset {end}")), "{err}");
    let out = tmp.path().join("out");
    let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("byte offset {end}")), "{err}");
    // All disks are complete: their final names, byte-exact.
    check_salvaged(&out, &a, &BTreeSet::new(), &err);
}

#[test]
fn salvage_conflicts_with_map() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(vma()
        .args(["extract", "--salvage", "-r", "/nonexistent", "x.vma"])
        .arg(tmp.path().join("out")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(!tmp.path().join("out").exists());
}

/// Rewrites the blockinfo entry holding (dev, cluster) in the extent at
/// `off` with `f`, and fixes the extent header checksum so only the slot
/// check can object.
fn patch_slot(bytes: &mut [u8], off: usize, dev: u8, cluster: u32, f: impl Fn(&mut BlockInfo)) {
    use vma_format::raw::{ext, extent_md5, EXTENT_HEADER_SIZE};
    let slot = (0..59)
        .find(|s| {
            let at = off + ext::BLOCKINFO + 8 * s;
            let b = BlockInfo::from_u64(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()));
            b.dev_id == dev && b.cluster == cluster
        })
        .expect("slot of the cluster");
    let at = off + ext::BLOCKINFO + 8 * slot;
    let mut b = BlockInfo::from_u64(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()));
    f(&mut b);
    bytes[at..at + 8].copy_from_slice(&b.to_u64().to_be_bytes());
    let head: [u8; EXTENT_HEADER_SIZE] = bytes[off..off + EXTENT_HEADER_SIZE].try_into().unwrap();
    let md5 = extent_md5(&head);
    bytes[off + ext::MD5..off + ext::MD5 + 16].copy_from_slice(&md5);
}

#[test]
fn bad_slots_fail_verify_and_salvage_drops_only_that_cluster() {
    let a = archive();
    let m = a.extents.len() / 2;
    let off = a.extents[m].offset;
    let (dev, cluster) = a.extents[m].clusters[2];
    let earlier = a.extents[0]
        .clusters
        .iter()
        .find(|(d, _)| *d == dev)
        .unwrap()
        .1;
    type Patch = Box<dyn Fn(&mut BlockInfo)>;
    let cases: [(&str, &str, Patch); 3] = [
        (
            "unknown-dev",
            "wrong dev id 200",
            Box::new(|b| b.dev_id = 200),
        ),
        (
            "duplicate",
            "duplicated cluster",
            Box::new(move |b| b.cluster = earlier),
        ),
        (
            "beyond-end",
            "write beyond end",
            Box::new(|b| b.cluster = 0x00ff_ffff),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, want, f) in cases {
        let mut bytes = a.bytes.clone();
        patch_slot(&mut bytes, off as usize, dev, cluster, f);
        let file = tmp.path().join(format!("{name}.vma"));
        fs::write(&file, &bytes).unwrap();

        let o = run(vma().arg("verify").arg(&file));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains(&format!("byte offset {off}")), "{name}: {err}");

        let out = tmp.path().join(format!("plain-{name}"));
        let o = run(vma().arg("extract").arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        no_final_disks(&out);

        let out = tmp.path().join(format!("salvaged-{name}"));
        let o = run(vma().args(["extract", "--salvage"]).arg(&file).arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        check_salvaged(&out, &a, &BTreeSet::from([(dev, cluster)]), &err);
    }
}

#[test]
fn corrupted_header_fields_are_fatal_even_with_salvage() {
    use vma_format::raw::{hdr, header_md5};
    let a = archive();
    let hs = u32::from_be_bytes(
        a.bytes[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    let fix_md5 = |b: &mut Vec<u8>| {
        let md5 = header_md5(&b[..hs]);
        b[hdr::MD5..hdr::MD5 + 16].copy_from_slice(&md5);
    };
    let mut checksum = a.bytes.clone();
    checksum[hs - 10] ^= 1; // inside the blob area
    let mut version = a.bytes.clone();
    version[hdr::VERSION + 3] = 2;
    fix_md5(&mut version);
    let mut size = a.bytes.clone();
    size[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut magic = a.bytes.clone();
    magic[0] = b'X';
    let cases = [
        ("checksum", checksum, "checksum (MD5 at byte offset 32)"),
        ("version", version, "version 2 (field at byte offset 4)"),
        (
            "header-size",
            size,
            "header size 4294967295 (field at byte offset 56)",
        ),
        ("magic", magic, "wrong magic number"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, want) in cases {
        let file = tmp.path().join(format!("{name}.vma"));
        fs::write(&file, &bytes).unwrap();
        for salvage in [false, true] {
            let out = tmp.path().join(format!("out-{name}-{salvage}"));
            let mut cmd = vma();
            cmd.arg("extract");
            if salvage {
                cmd.arg("--salvage");
            }
            let o = run(cmd.arg(&file).arg(&out));
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(133), "{name}: {err}");
            assert!(err.contains(want), "{name}: {err}");
            assert!(!out.exists(), "{name}: target created");
        }
        let o = run(vma().arg("verify").arg(&file));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}
