//! qcow2 outputs of `vma extract`: `--format qcow2` (new images, from a file
//! or stdin, final names only on success, `--salvage` names) and `-r` map
//! lines `format=qcow2:…` into images made as qmrestore makes them
//! (`qemu-img create -f qcow2`, also with `preallocation=metadata`).
//!
//! Every image is checked with QEMU itself: `qemu-img check` must be clean
//! and `qemu-img compare` with the original raw input must say identical.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vma_tests::{extract_with_map, vector, vma_bin};

fn vma() -> Command {
    let mut c = Command::new(vma_bin!());
    c.env("TZ", "UTC");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains(needle),
        "stderr lacks {needle:?}: {}",
        text(&o.stderr)
    );
}

fn qemu_img(args: &[&OsStr]) -> Output {
    assert!(
        Command::new("qemu-img").arg("--version").output().is_ok(),
        "qemu-img is required (Debian: qemu-utils)"
    );
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn input(name: &str) -> PathBuf {
    vector("inputs").join(name)
}

/// `qemu-img check` finds nothing wrong (exit 0: no errors, no leaks).
fn assert_check_clean(img: &Path) {
    let o = qemu_img(&[
        "check".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        img.as_os_str(),
    ]);
    ok(&o);
    assert!(
        text(&o.stdout).contains("No errors were found on the image."),
        "{}",
        text(&o.stdout)
    );
}

/// `qemu-img compare` says identical, and the virtual size is the raw size.
fn assert_identical(img: &Path, raw: &Path) {
    assert_eq!(
        info(img)["virtual-size"].as_u64(),
        Some(fs::metadata(raw).unwrap().len())
    );
    let o = qemu_img(&[
        "compare".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        img.as_os_str(),
        raw.as_os_str(),
    ]);
    ok(&o);
    assert!(
        text(&o.stdout).contains("Images are identical."),
        "{}",
        text(&o.stdout)
    );
}

/// Guest bytes that `qemu-img map` reports as data (allocated, not zero).
fn data_bytes(img: &Path) -> u64 {
    let o = qemu_img(&[
        "map".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        img.as_os_str(),
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// `qemu-img info --output=json`.
fn info(img: &Path) -> serde_json::Value {
    let o = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        img.as_os_str(),
    ]);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// (archive, [(device, raw input)]) of the Proxmox-made vectors with disks.
const VECTORS: [(&str, &[(&str, &str)]); 3] = [
    ("ref-one-disk.vma", &[("drive-scsi0", "diskA.raw")]),
    (
        "ref-two-disks.vma",
        &[("drive-scsi0", "diskA.raw"), ("drive-scsi1", "diskB.raw")],
    ),
    ("ref-many-clusters.vma", &[("drive-virtio0", "diskC.raw")]),
];

#[test]
fn format_qcow2_from_a_file_is_clean_and_identical_to_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    for (archive, disks) in VECTORS {
        let out = tmp.path().join(archive);
        let o = vma()
            .args(["extract", "--format", "qcow2"])
            .arg(vector(archive))
            .arg(&out)
            .output()
            .unwrap();
        ok(&o);
        // DEVINFO names the temporary file, as for raw.
        for (dev, raw) in disks {
            let size = fs::metadata(input(raw)).unwrap().len();
            let line = format!("DEVINFO {}/tmp-disk-{dev}.qcow2 {size}\n", out.display());
            assert!(text(&o.stdout).contains(&line), "{}", text(&o.stdout));
            let img = out.join(format!("disk-{dev}.qcow2"));
            assert_check_clean(&img);
            assert_identical(&img, &input(raw));
        }
        // Only final names (no tmp-disk-*, no raw files) besides the configs.
        for n in names(&out) {
            assert!(
                n.starts_with("qemu-server.") || (n.starts_with("disk-") && n.ends_with(".qcow2")),
                "{archive}: unexpected {n}"
            );
        }
        assert_eq!(
            names(&out).iter().filter(|n| n.ends_with(".qcow2")).count(),
            disks.len()
        );
    }
}

#[test]
fn format_qcow2_from_compressed_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let mut child = vma()
        .args(["extract", "--format", "qcow2", "-"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = fs::read(vector("ref-two-disks.vma.zst")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    ok(&o);
    for (dev, raw) in [("drive-scsi0", "diskA.raw"), ("drive-scsi1", "diskB.raw")] {
        let img = out.join(format!("disk-{dev}.qcow2"));
        assert_check_clean(&img);
        assert_identical(&img, &input(raw));
    }
}

/// Zero clusters are never allocated: only the stored clusters hold data,
/// and the file is a small fraction of the disk.
#[test]
fn format_qcow2_keeps_a_sparse_disk_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    // 256 MiB, data in 40 scattered 4 KiB blocks (every 6.25 MiB) and one
    // 1 MiB run between two of them.
    let raw = tmp.path().join("sparse.raw");
    let size: u64 = 256 << 20;
    {
        let f = fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..40u64 {
            let off = (i * 6_553_600 + 12_288) % size / 4096 * 4096;
            f.write_all_at(&[i as u8 + 1; 4096], off).unwrap();
        }
        f.write_all_at(&vec![0x5a; 1 << 20], 102 << 20).unwrap();
    }
    let archive = tmp.path().join("sparse.vma");
    let mut dspec = std::ffi::OsString::from("format=raw:drive-scsi0=");
    dspec.push(&raw);
    ok(&vma()
        .arg("create")
        .arg(&archive)
        .arg("-d")
        .arg(&dspec)
        .output()
        .unwrap());
    let out = tmp.path().join("o");
    ok(&vma()
        .args(["extract", "--format", "qcow2"])
        .arg(&archive)
        .arg(&out)
        .output()
        .unwrap());
    let img = out.join("disk-drive-scsi0.qcow2");
    assert_check_clean(&img);
    assert_identical(&img, &raw);
    // 40 clusters with one block each + 16 full clusters = 56 clusters.
    assert_eq!(data_bytes(&img), 56 * 65536);
    // actual-size: the bytes the image file occupies.
    let actual = info(&img)["actual-size"].as_u64().unwrap();
    assert!(actual < 8 << 20, "actual-size {actual}");
    assert!(fs::metadata(&img).unwrap().len() < 8 << 20);
}

#[test]
fn format_qcow2_nothing_final_until_complete_and_salvage_names() {
    let tmp = tempfile::tempdir().unwrap();
    // ref-two-disks.vma without its second (last) extent: clusters missing.
    let full = fs::read(vector("ref-two-disks.vma")).unwrap();
    let cut = tmp.path().join("cut.vma");
    fs::write(&cut, &full[..287_744]).unwrap();
    let out = tmp.path().join("o");
    let o = vma()
        .args(["extract", "--format", "qcow2"])
        .arg(&cut)
        .arg(&out)
        .output()
        .unwrap();
    fails_with(&o, "restore failed - detected missing cluster");
    // A failed extract removes what it made (the rule of every output form),
    // so no incomplete qcow2 can be mistaken for a restored disk.
    fails_with(&o, "removed the incomplete restore");
    assert!(!out.exists(), "{:?}", names(&out));

    // --salvage keeps what it read: every qcow2 it leaves is a consistent image.
    let out = tmp.path().join("s");
    let o = vma()
        .args(["extract", "--salvage", "--format", "qcow2"])
        .arg(&cut)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let files = names(&out);
    let incomplete: Vec<_> = files
        .iter()
        .filter(|n| n.starts_with("incomplete-disk-"))
        .collect();
    assert!(!incomplete.is_empty(), "{files:?}");
    for n in &files {
        assert!(!n.starts_with("tmp-disk-"), "{files:?}");
        if n.ends_with(".raw") {
            panic!("raw output with --format qcow2: {files:?}");
        }
        if n.ends_with(".qcow2") {
            assert_check_clean(&out.join(n));
        }
    }
    for n in incomplete {
        assert!(n.ends_with(".qcow2"), "{n}");
    }
}

/// qmrestore onto directory storage: `qemu-img create -f qcow2` targets (one
/// plain, one with preallocation=metadata) and `format=qcow2` map lines.
#[test]
fn map_with_qcow2_lines_restores_into_qmrestore_made_images() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("vm-100-disk-0.qcow2");
    let b = tmp.path().join("vm-100-disk-1.qcow2");
    ok(&qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        a.as_os_str(),
        "1061376".as_ref(),
    ]));
    ok(&qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-o".as_ref(),
        "preallocation=metadata".as_ref(),
        b.as_os_str(),
        "4M".as_ref(),
    ]));
    let out = tmp.path().join("out");
    let map = format!(
        "format=qcow2:0:drive-scsi0={}\ncache=none:format=qcow2:0:drive-scsi1={}\ndone\n",
        a.display(),
        b.display()
    );
    let o = extract_with_map(vma(), tmp.path(), &vector("ref-two-disks.vma"), &out, map);
    ok(&o);
    assert_eq!(
        text(&o.stdout),
        fs::read_to_string(vector("ref-two-disks.list")).unwrap()
    );
    assert_eq!(names(&out), ["qemu-server.conf", "qemu-server.fw"]);
    for (img, raw) in [(&a, "diskA.raw"), (&b, "diskB.raw")] {
        assert_check_clean(img);
        assert_identical(img, &input(raw));
    }
    // Write-zero 0 on a fresh image: only the stored clusters are allocated
    // (diskA: clusters 0, 2, 7 and the last one, clipped to the disk end).
    assert_eq!(data_bytes(&a), 3 * 65536 + (1_061_376 - 16 * 65536));
}

/// Write-zero 1 into images that hold old data: the archive's zero blocks
/// must read as zero afterwards (zero clusters, or zeros inside a cluster);
/// with write-zero 0 the old data stays, as with Proxmox's tool.
#[test]
fn map_qcow2_write_zero_flag_decides_about_old_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut imgs = Vec::new();
    for (i, prealloc) in ["off", "metadata"].iter().enumerate() {
        let img = tmp.path().join(format!("t{i}.qcow2"));
        ok(&qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-o".as_ref(),
            format!("preallocation={prealloc}").as_ref(),
            img.as_os_str(),
            "1061376".as_ref(),
        ]));
        // Old content: 0xff everywhere.
        let o = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xff 0 1061376"])
            .arg(&img)
            .output()
            .expect("qemu-io is required (Debian: qemu-utils)");
        ok(&o);
        imgs.push(img);
    }
    let map = format!("format=qcow2:1:drive-scsi0={}\n", imgs[0].display(),);
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &vector("ref-one-disk.vma"),
        &tmp.path().join("o1"),
        map,
    );
    ok(&o);
    assert_check_clean(&imgs[0]);
    assert_identical(&imgs[0], &input("diskA.raw"));
    let map = format!("format=qcow2:1:drive-scsi0={}\n", imgs[1].display());
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &vector("ref-one-disk.vma"),
        &tmp.path().join("o2"),
        map,
    );
    ok(&o);
    assert_check_clean(&imgs[1]);
    assert_identical(&imgs[1], &input("diskA.raw"));

    // Write-zero 0 into an image with old data: zero blocks keep the old bytes.
    let c = tmp.path().join("c.qcow2");
    ok(&qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        c.as_os_str(),
        "1061376".as_ref(),
    ]));
    ok(&Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xff 65536 65536"])
        .arg(&c)
        .output()
        .unwrap());
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &vector("ref-one-disk.vma"),
        &tmp.path().join("o3"),
        format!("format=qcow2:0:drive-scsi0={}\n", c.display()),
    );
    ok(&o);
    assert_check_clean(&c);
    let o = qemu_img(&[
        "compare".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        c.as_os_str(),
        input("diskA.raw").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("Content mismatch at offset 65536"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn map_qcow2_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = vector("ref-one-disk.vma");
    let create = |name: &str, extra: &[&str], size: &str| {
        let p = tmp.path().join(name);
        let mut args: Vec<&OsStr> = vec![
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        args.push(p.as_os_str());
        args.push(size.as_ref());
        ok(&qemu_img(&args));
        p
    };
    // A backing file would show through where the archive has zeros.
    let base = create("base.qcow2", &[], "1061376");
    let overlay = create(
        "overlay.qcow2",
        &["-b", base.to_str().unwrap(), "-F", "qcow2"],
        "1061376",
    );
    let before = fs::read(&overlay).unwrap();
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &archive,
        &tmp.path().join("o1"),
        format!("format=qcow2:0:drive-scsi0={}\n", overlay.display()),
    );
    fails_with(&o, "has a backing file");
    assert_eq!(fs::read(&overlay).unwrap(), before, "overlay was modified");
    // Too small / too large, by the virtual size.
    let small = create("small.qcow2", &[], "1M");
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &archive,
        &tmp.path().join("o2"),
        format!("format=qcow2:0:drive-scsi0={}\n", small.display()),
    );
    fails_with(&o, "is too small (1048576 < 1061376 bytes)");
    let big = create("big.qcow2", &[], "6M");
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &archive,
        &tmp.path().join("o3"),
        format!("format=qcow2:0:drive-scsi0={}\n", big.display()),
    );
    fails_with(&o, "is too large");
    // A raw file named as qcow2.
    let raw = tmp.path().join("plain.raw");
    fs::File::create(&raw).unwrap().set_len(1061376).unwrap();
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &archive,
        &tmp.path().join("o4"),
        format!("format=qcow2:0:drive-scsi0={}\n", raw.display()),
    );
    fails_with(&o, "is not a usable qcow2 image");
    assert_eq!(fs::metadata(&raw).unwrap().len(), 1061376);
    // Formats we do not write.
    let o = extract_with_map(
        vma(),
        tmp.path(),
        &archive,
        &tmp.path().join("o5"),
        format!("format=vmdk:0:drive-scsi0={}\n", raw.display()),
    );
    fails_with(&o, "format 'vmdk' is not supported (only raw and qcow2)");
    // --format applies to new disks only; with -r the map decides.
    let o = vma()
        .args(["extract", "--format", "qcow2", "-r", "/nonexistent"])
        .arg(&archive)
        .arg(tmp.path().join("o6"))
        .output()
        .unwrap();
    fails_with(&o, "'--format <FORMAT>' cannot be used with '--map <MAP>'");
    assert!(!tmp.path().join("o6").exists());
}

/// A declared size no qcow2 can have (ref-one-disk.vma with drive-scsi0's
/// size patched, header MD5 fixed) is an error naming the device and the
/// limit, not a panic or a huge allocation; no disk-* file appears.
#[test]
fn format_qcow2_refuses_sizes_beyond_qcow2() {
    let tmp = tempfile::tempdir().unwrap();
    for size in [u64::MAX, u64::MAX - 511, (1u64 << 51) + 1] {
        let mut b = fs::read(vector("ref-one-disk.vma")).unwrap();
        // dev_info[1].size at 4096 + 32 + 8, big-endian.
        b[4136..4144].copy_from_slice(&size.to_be_bytes());
        let hs = u32::from_be_bytes(b[56..60].try_into().unwrap()) as usize;
        let md5 = vma_format::raw::header_md5(&b[..hs]);
        b[32..48].copy_from_slice(&md5);
        let archive = tmp.path().join(format!("{size}.vma"));
        fs::write(&archive, &b).unwrap();
        let out = tmp.path().join(format!("o{size}"));
        let o = vma()
            .args(["extract", "--format", "qcow2"])
            .arg(&archive)
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(133), "{}", text(&o.stderr));
        fails_with(
            &o,
            &format!(
                "can't restore device drive-scsi0 as qcow2: declared size {size} bytes exceeds the largest qcow2 image (2251799813685248 bytes)"
            ),
        );
        // Sizes are checked before anything is created, not even the directory.
        assert!(!out.exists(), "{:?}", names(&out));
    }
}

/// Targets with other cluster sizes than the archive's 64 KiB (4 KiB: one
/// archive cluster spans 16; 2 MiB: partial zeroing inside a cluster), both
/// write-zero flags, over old data for `1`.
#[test]
fn map_qcow2_other_cluster_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let size = fs::metadata(input("diskC.raw")).unwrap().len().to_string();
    for cs in ["4k", "2M"] {
        for wz in [0, 1] {
            let img = tmp.path().join(format!("t-{cs}-{wz}.qcow2"));
            ok(&qemu_img(&[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-o".as_ref(),
                format!("cluster_size={cs}").as_ref(),
                img.as_os_str(),
                size.as_ref(),
            ]));
            if wz == 1 {
                ok(&Command::new("qemu-io")
                    .args(["-f", "qcow2", "-c", &format!("write -P 0xff 0 {size}")])
                    .arg(&img)
                    .output()
                    .expect("qemu-io is required (Debian: qemu-utils)"));
            }
            let o = extract_with_map(
                vma(),
                tmp.path(),
                &vector("ref-many-clusters.vma"),
                &tmp.path().join(format!("o-{cs}-{wz}")),
                format!("format=qcow2:{wz}:drive-virtio0={}\n", img.display()),
            );
            ok(&o);
            assert_check_clean(&img);
            assert_identical(&img, &input("diskC.raw"));
        }
    }
}
