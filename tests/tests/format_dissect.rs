//! Cross-implementation check: an archive written by our writer is read by
//! an independent reader, `dissect.archive` (Python), and must give the same
//! device bytes and configs.
//!
//! Needs `python3` with `dissect.archive` (`pip install dissect.archive`).
//! A missing module fails the test: it is a required part of CI, not optional.

use std::process::Command;

use vma_format::WriterBuilder;
use vma_tests::{sha256_hex, TestRng};

const SCRIPT: &str = r#"
import hashlib, json, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], "rb") as fh:
    vma = VMA(fh)
    out = {
        "uuid": str(vma.uuid),
        "ctime": vma.header.ctime,
        "configs": {name: hashlib.sha256(data).hexdigest() for name, data in vma.configs().items()},
        "devices": [],
    }
    for dev in vma.devices():
        data = vma.device(dev.id).open().read()
        out["devices"].append({"id": dev.id, "name": dev.name, "size": dev.size, "len": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()})
    print(json.dumps(out))
"#;

/// Random content with zero 4 KiB blocks and zero clusters.
fn content(size: usize, rng: &mut TestRng) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for block in v.chunks_mut(4096) {
        match rng.below(3) {
            0 => {}
            1 => rng.fill(block),
            _ => block[rng.below(block.len() as u64) as usize] = 0x77,
        }
    }
    // A run of whole zero clusters.
    v[3 * 65536..6 * 65536].fill(0);
    v
}

#[test]
fn dissect_archive_reads_our_archive() {
    let mut rng = TestRng::new(2026);
    let disks = [
        ("drive-scsi0", content(1_000_003, &mut rng)),
        ("drive-virtio1", content(459_777, &mut rng)),
    ];
    let configs = [
        (
            "qemu-server.conf",
            b"boot: order=scsi0\ncores: 2\nmemory: 2048\n".to_vec(),
        ),
        ("qemu-server.fw", b"[OPTIONS]\nenable: 1\n".to_vec()),
    ];

    let mut b = WriterBuilder::new();
    for (n, d) in &configs {
        b.add_config(n, d.clone()).unwrap();
    }
    for (n, d) in &disks {
        b.add_device(n, d.len() as u64).unwrap();
    }
    b.ctime(1_795_675_754);
    let w = b.build(Vec::new()).unwrap();
    // Out of order and interleaved across the two disks.
    let mut order: Vec<(u8, u32)> = disks
        .iter()
        .enumerate()
        .flat_map(|(i, (_, d))| (0..d.len().div_ceil(65536) as u32).map(move |c| (i as u8 + 1, c)))
        .collect();
    rng.shuffle(&mut order);
    for (dev, c) in order {
        let d = &disks[dev as usize - 1].1;
        let s = c as usize * 65536;
        w.write_cluster(dev, c, &d[s..(s + 65536).min(d.len())])
            .unwrap();
    }
    let (bytes, summary) = w.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.vma");
    std::fs::write(&path, &bytes).unwrap();

    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&path)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "dissect.archive failed (install it with `python3 -m pip install dissect.archive`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");

    assert_eq!(v["uuid"], summary.uuid.to_string());
    assert_eq!(v["ctime"], 1_795_675_754);
    let cfgs = v["configs"].as_object().unwrap();
    assert_eq!(cfgs.len(), configs.len());
    for (n, d) in &configs {
        assert_eq!(cfgs[*n], sha256_hex(d), "config {n}");
    }
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), disks.len());
    for (i, (dv, (n, d))) in devs.iter().zip(&disks).enumerate() {
        assert_eq!(dv["id"], i + 1);
        assert_eq!(dv["name"], *n);
        assert_eq!(dv["size"], d.len());
        assert_eq!(dv["len"], d.len(), "dissect returns size bytes");
        assert_eq!(dv["sha256"], sha256_hex(d), "device {n} read by dissect");
    }
}
