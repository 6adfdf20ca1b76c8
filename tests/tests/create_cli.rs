//! `vma create` end to end: archives written by the `vma` binary read back
//! exactly (both library readers, `vma extract`, the real zstd/gzip/lzop
//! tools, and the independent Python reader dissect.archive), from raw,
//! sparse, qcow2 and qemu-img-converted sources; and the refusals (existing
//! OUT, missing source, bad -d, full output device, signals) leave nothing
//! behind.
//!
//! The program is this package's `vma-test-bin` (the `vma` binary's code);
//! `VMA_BIN=/path/to/vma` overrides that.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vma_format::raw::{CLUSTER_SIZE, HEADER_FIXED_SIZE, WRITER_CLUSTERS_PER_EXTENT};
use vma_format::{IndexedReader, StreamReader};
use vma_tests::{vector, TestRng};

const UUID: &str = "0f4bd1c6-7e2a-4c55-9a43-1d2e3f405162";

use vma_tests::vma_bin;

fn vma() -> Command {
    Command::new(vma_bin!())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

#[track_caller]
fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Content of an archive as both library readers see it.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    configs: Vec<(String, Vec<u8>)>,
    /// name -> (size, bytes)
    devices: BTreeMap<String, (u64, Vec<u8>)>,
}

/// Parses with StreamReader and IndexedReader, checks they agree and that the
/// archive obeys Proxmox's reader rules (header size, ≤ 58 clusters per extent,
/// every cluster exactly once).
fn parse(archive: &[u8]) -> Parsed {
    let mut sr = StreamReader::new(archive).expect("StreamReader::new");
    let h = sr.header().clone();
    assert!(
        h.header_size() > HEADER_FIXED_SIZE as u64,
        "header_size {}",
        h.header_size()
    );
    assert_eq!(h.header_size() % 512, 0);
    let configs: Vec<(String, Vec<u8>)> = h
        .configs
        .iter()
        .map(|c| (String::from_utf8(c.name.clone()).unwrap(), c.data.clone()))
        .collect();
    let mut bufs: BTreeMap<u8, Vec<u8>> = h
        .devices
        .iter()
        .map(|d| (d.id, vec![0u8; d.size as usize]))
        .collect();
    let mut seen: BTreeMap<(u8, u32), ()> = BTreeMap::new();
    while let Some(ext) = sr.next_extent().expect("next_extent") {
        let clusters: Vec<_> = ext.clusters().collect();
        assert!(
            clusters.len() <= WRITER_CLUSTERS_PER_EXTENT,
            "extent with {} clusters",
            clusters.len()
        );
        for c in clusters {
            assert!(
                seen.insert((c.dev_id, c.cluster), ()).is_none(),
                "duplicate cluster"
            );
            let mut full = [0u8; CLUSTER_SIZE];
            c.expand(&mut full);
            let buf = bufs.get_mut(&c.dev_id).expect("known dev");
            let off = c.device_offset() as usize;
            let n = (buf.len() - off).min(CLUSTER_SIZE);
            buf[off..off + n].copy_from_slice(&full[..n]);
        }
    }
    sr.completeness()
        .check(|_| true)
        .expect("every cluster present");
    let ir = IndexedReader::open(archive).expect("IndexedReader::open");
    let mut devices = BTreeMap::new();
    for d in &h.devices {
        let mut v = vec![0u8; d.size as usize];
        let mut off = 0;
        while off < v.len() {
            let n = ir
                .read(d.id, off as u64, &mut v[off..])
                .expect("IndexedReader::read");
            assert!(n > 0, "short read at {off}");
            off += n;
        }
        assert_eq!(
            v, bufs[&d.id],
            "StreamReader and IndexedReader disagree on {:?}",
            d.name
        );
        devices.insert(String::from_utf8(d.name.clone()).unwrap(), (d.size, v));
    }
    Parsed { configs, devices }
}

fn inputs() -> PathBuf {
    vector("inputs")
}

fn vector_configs() -> Vec<(String, Vec<u8>)> {
    ["qemu-server.conf", "qemu-server.fw"]
        .iter()
        .map(|n| (n.to_string(), fs::read(inputs().join(n)).unwrap()))
        .collect()
}

/// `vma create` of the vector inputs with -d, configs in order.
fn create_vector_archive(out: &Path, extra: &[&str]) -> Output {
    let i = inputs();
    run(vma()
        .arg("create")
        .arg(out)
        .args(extra)
        .arg("-c")
        .arg(i.join("qemu-server.conf"))
        .arg("-c")
        .arg(i.join("qemu-server.fw"))
        .arg("-d")
        .arg(format!(
            "format=raw:drive-scsi0={}",
            i.join("diskA.raw").display()
        ))
        .arg("-d")
        .arg(format!(
            "format=raw:drive-scsi1={}",
            i.join("diskB.raw").display()
        )))
}

#[test]
fn create_from_vector_inputs_reads_back_with_both_readers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("two.vma");
    ok(&create_vector_archive(&out, &[]));
    let p = parse(&fs::read(&out).unwrap());
    assert_eq!(p.configs, vector_configs());
    let a = fs::read(inputs().join("diskA.raw")).unwrap();
    let b = fs::read(inputs().join("diskB.raw")).unwrap();
    assert_eq!(a.len(), 1_061_376);
    assert_eq!(p.devices["drive-scsi0"], (a.len() as u64, a));
    assert_eq!(p.devices["drive-scsi1"], (b.len() as u64, b));
    // Nothing but the archive is left in the directory.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("two.vma")]);
}

#[test]
fn create_options_after_out_and_default_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.vma");
    let i = inputs();
    // Options before OUT, NAME omitted: disk0, disk1.
    ok(&run(vma()
        .arg("create")
        .arg("-d")
        .arg(format!("format=raw:{}", i.join("diskB.raw").display()))
        .arg(&out)
        .arg("-d")
        .arg(format!(
            "format=raw:{}",
            i.join("diskA.raw").display()
        ))));
    let p = parse(&fs::read(&out).unwrap());
    assert!(p.configs.is_empty());
    assert_eq!(p.devices.keys().collect::<Vec<_>>(), ["disk0", "disk1"]);
    assert_eq!(p.devices["disk0"].1, fs::read(i.join("diskB.raw")).unwrap());
    assert_eq!(p.devices["disk1"].1, fs::read(i.join("diskA.raw")).unwrap());
}

#[test]
fn create_legacy_positional_devices_work_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("legacy.vma");
    let i = inputs();
    let o = run(vma()
        .arg("create")
        .arg(&out)
        .arg("-c")
        .arg(i.join("qemu-server.conf"))
        .arg(i.join("diskA.raw"))
        .arg(format!("second={}", i.join("diskB.raw").display())));
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("Specifying a device without a format is deprecated"));
    let p = parse(&fs::read(&out).unwrap());
    assert_eq!(p.configs.len(), 1);
    assert_eq!(p.devices.keys().collect::<Vec<_>>(), ["disk0", "second"]);
    assert_eq!(p.devices["disk0"].1, fs::read(i.join("diskA.raw")).unwrap());
    assert_eq!(
        p.devices["second"].1,
        fs::read(i.join("diskB.raw")).unwrap()
    );
}

/// A sparse raw image: random data, explicit zero runs, holes, a single byte
/// in an otherwise empty cluster, data at the very end.
fn make_sparse_image(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = TestRng::new(seed);
    let mut content = vec![0u8; size as usize];
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let mut off = 0u64;
    while off < size {
        let len = (1 + rng.below(300_000)).min(size - off);
        let r = &mut content[off as usize..(off + len) as usize];
        match rng.below(4) {
            0 => {
                rng.fill(r);
                f.write_all_at(r, off).unwrap();
            }
            1 => f.write_all_at(r, off).unwrap(), // explicit zeros
            2 => {
                r[len as usize / 2] = 0x5a;
                f.write_all_at(&r[len as usize / 2..len as usize / 2 + 1], off + len / 2)
                    .unwrap();
            }
            _ => {} // hole
        }
        off += len;
    }
    let last = size as usize - 1;
    content[last] = 0xa5;
    f.write_all_at(&[0xa5], last as u64).unwrap();
    content
}

#[test]
fn create_sparse_random_image_extracts_identically() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    // A 512 multiple that is not a 64 KiB multiple, with a 1 MiB hole at the start.
    let size = 9 * 1024 * 1024 + 7 * 512;
    let content = make_sparse_image(&img, size, 7);
    let out = dir.path().join("s.vma");
    ok(&run(vma().arg("create").arg(&out).arg("-d").arg(format!(
        "format=raw:drive-virtio0={}",
        img.display()
    ))));
    let p = parse(&fs::read(&out).unwrap());
    assert_eq!(p.devices["drive-virtio0"], (size, content.clone()));

    let target = dir.path().join("x");
    ok(&run(vma().arg("extract").arg(&out).arg(&target)));
    let extracted = fs::read(target.join("disk-drive-virtio0.raw")).unwrap();
    assert_eq!(
        vma_tests::sha256_hex(&extracted),
        vma_tests::sha256_hex(&content)
    );
}

/// Holes of every shape the reader batches around: a leading hole longer
/// than a read buffer, a few data bytes, a hole crossing a buffer boundary,
/// a data cluster every other cluster (holes inside one buffer), a hole
/// ending mid-cluster, and a trailing hole up to an odd device end.
#[test]
fn create_batches_holes_of_every_shape() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("holes.raw");
    const M: u64 = 1 << 20;
    let size = 14 * M + 3 * 512;
    let mut content = vec![0u8; size as usize];
    let f = fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    let mut rng = TestRng::new(11);
    let mut put = |off: u64, len: u64, content: &mut Vec<u8>| {
        let r = &mut content[off as usize..(off + len) as usize];
        rng.fill(r);
        f.write_all_at(r, off).unwrap();
    };
    put(5 * M + 12_345, 100, &mut content);
    for i in 0..32 {
        put(8 * M + i * 131_072 + 4096 * (i % 16), 4096, &mut content);
    }
    put(11 * M + 70_000, 200_000, &mut content);
    drop(f);
    let out = dir.path().join("h.vma");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", img.display()))));
    let p = parse(&fs::read(&out).unwrap());
    assert!(
        p.devices["drive-scsi0"] == (size, content),
        "archive content differs from the image"
    );
}

#[test]
fn create_rounds_odd_sizes_up_to_512_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("odd.raw");
    let mut content = vec![0u8; 66_236];
    TestRng::new(3).fill(&mut content);
    fs::write(&img, &content).unwrap();
    let out = dir.path().join("odd.vma");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=raw:d={}", img.display()))));
    let p = parse(&fs::read(&out).unwrap());
    let (size, data) = &p.devices["d"];
    assert_eq!(*size, 66_560, "rounded up to 512 like QEMU");
    assert_eq!(&data[..content.len()], &content[..]);
    assert!(data[content.len()..].iter().all(|&b| b == 0));
}

fn qemu_img(args: &[&std::ffi::OsStr]) {
    let o = run(Command::new("qemu-img").args(args));
    ok(&o);
}

#[test]
fn create_reads_qcow2_natively_including_backing_and_compressed_clusters() {
    assert!(
        tool_exists("qemu-img"),
        "qemu-img is required (Debian: qemu-utils)"
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    let content = make_sparse_image(&raw, 5 * 1024 * 1024 + 512, 11);
    let s = |p: &Path| p.as_os_str().to_owned();
    // Plain qcow2 and a compressed one.
    let q = dir.path().join("plain.qcow2");
    let qc = dir.path().join("comp.qcow2");
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        &s(&raw),
        &s(&q),
    ]);
    qemu_img(&[
        "convert".as_ref(),
        "-c".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        &s(&raw),
        &s(&qc),
    ]);
    // An overlay over the raw base with one patched cluster.
    let ov = dir.path().join("overlay.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        &s(&raw),
        "-F".as_ref(),
        "raw".as_ref(),
        &s(&ov),
    ]);
    ok(&run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 1M 64k"])
        .arg(&ov)));
    let mut patched = content.clone();
    patched[1 << 20..(1 << 20) + 65536].fill(0xab);

    let out = dir.path().join("q.vma");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=qcow2:plain={}", q.display()))
        .arg("-d")
        .arg(format!("format=qcow2:comp={}", qc.display()))
        .arg("-d")
        .arg(format!("format=qcow2:overlay={}", ov.display()))));
    let p = parse(&fs::read(&out).unwrap());
    assert_eq!(p.devices["plain"], (content.len() as u64, content.clone()));
    assert_eq!(p.devices["comp"], (content.len() as u64, content.clone()));
    assert_eq!(p.devices["overlay"], (content.len() as u64, patched));

    // format=raw on a qcow2 file archives the file's bytes, as QEMU would.
    let out2 = dir.path().join("asraw.vma");
    ok(&run(vma()
        .arg("create")
        .arg(&out2)
        .arg("-d")
        .arg(format!("format=raw:f={}", q.display()))));
    let file = fs::read(&q).unwrap();
    let p2 = parse(&fs::read(&out2).unwrap());
    let (size, data) = &p2.devices["f"];
    assert_eq!(*size, (file.len() as u64).div_ceil(512) * 512);
    assert_eq!(&data[..file.len()], &file[..]);
}

#[test]
fn create_qcow2_beyond_imago_falls_back_to_qemu_img_or_refuses() {
    assert!(
        tool_exists("qemu-img"),
        "qemu-img is required (Debian: qemu-utils)"
    );
    let dir = tempfile::tempdir().unwrap();
    let a = inputs().join("diskA.raw");
    // zstd-compressed clusters: imago refuses the feature, qemu-img converts.
    let z = dir.path().join("z.qcow2");
    ok(&run(Command::new("qemu-img")
        .args([
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
        ])
        .arg(&a)
        .arg(&z)));
    let out = dir.path().join("z.vma");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=qcow2:z={}", z.display()))));
    assert_eq!(
        parse(&fs::read(&out).unwrap()).devices["z"].1,
        fs::read(&a).unwrap()
    );
    // Encrypted: refused, never archived as ciphertext.
    let e = dir.path().join("e.qcow2");
    ok(&run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=abc",
        ])
        .args(["-o", "encrypt.format=luks,encrypt.key-secret=s0"])
        .arg(&e)
        .arg("1M")));
    let out = dir.path().join("e.vma");
    fails_with(
        &run(vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("format=qcow2:e={}", e.display()))),
        "encrypted",
    );
    // Not qcow2 at all.
    fails_with(
        &run(vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("format=qcow2:r={}", a.display()))),
        "not a qcow2 image",
    );
    assert!(!out.exists());
}

#[test]
fn create_converts_other_formats_with_qemu_img_and_cleans_up() {
    assert!(
        tool_exists("qemu-img"),
        "qemu-img is required (Debian: qemu-utils)"
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    let content = make_sparse_image(&raw, 3 * 1024 * 1024, 5);
    let vmdk = dir.path().join("d.vmdk");
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "vmdk".as_ref(),
        raw.as_os_str(),
        vmdk.as_os_str(),
    ]);
    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("v.vma");
    ok(&run(vma().arg("create").arg(&out).arg("-d").arg(format!(
        "format=vmdk:drive-sata0={}",
        vmdk.display()
    ))));
    let p = parse(&fs::read(&out).unwrap());
    assert_eq!(p.devices["drive-sata0"], (content.len() as u64, content));
    let left: Vec<_> = fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("v.vma")],
        "temporary conversion files left behind"
    );

    // A file that is not what -d says fails clearly, and leaves nothing.
    let bad = outdir.join("bad.vma");
    let o = run(vma()
        .arg("create")
        .arg(&bad)
        .arg("-d")
        .arg(format!("format=vdi:x={}", raw.display())));
    fails_with(&o, "qemu-img");
    assert!(!bad.exists());
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 1);
}

/// Writes the vector archive with a fixed uuid and ctime (byte-reproducible).
fn fixed_args() -> Vec<&'static str> {
    vec!["--uuid", UUID, "--ctime", "1700000000"]
}

#[test]
fn create_is_reproducible_with_fixed_uuid_and_ctime_and_streams_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vma");
    let b = dir.path().join("b.vma");
    ok(&create_vector_archive(&a, &fixed_args()));
    ok(&create_vector_archive(&b, &fixed_args()));
    let bytes = fs::read(&a).unwrap();
    assert_eq!(bytes, fs::read(&b).unwrap());
    let h = StreamReader::new(&bytes[..]).unwrap().header().clone();
    assert_eq!(h.uuid.to_string(), UUID);
    assert_eq!(h.ctime, 1_700_000_000);

    let stdout = fs::File::create(dir.path().join("c.vma")).unwrap();
    let i = inputs();
    let o = vma()
        .args(["create", "-"])
        .args(fixed_args())
        .arg("-c")
        .arg(i.join("qemu-server.conf"))
        .arg("-c")
        .arg(i.join("qemu-server.fw"))
        .arg("-d")
        .arg(format!(
            "format=raw:drive-scsi0={}",
            i.join("diskA.raw").display()
        ))
        .arg("-d")
        .arg(format!(
            "format=raw:drive-scsi1={}",
            i.join("diskB.raw").display()
        ))
        .stdout(stdout)
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(
        fs::read(dir.path().join("c.vma")).unwrap(),
        bytes,
        "stdout output differs from file output"
    );
}

fn decompress_with(tool: &str, args: &[&str], file: &Path) -> Vec<u8> {
    assert!(tool_exists(tool), "{tool} is required for this test");
    let o = run(Command::new(tool).args(args).arg(file));
    ok(&o);
    o.stdout
}

#[test]
fn create_compressed_archives_decompress_with_the_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("p.vma");
    ok(&create_vector_archive(&plain, &fixed_args()));
    let plain_bytes = fs::read(&plain).unwrap();
    for (codec, tool, args) in [
        ("zstd", "zstd", &["-q", "-d", "-c"][..]),
        ("gzip", "gzip", &["-d", "-c"][..]),
        ("lzo", "lzop", &["-d", "-c"][..]),
    ] {
        let out = dir.path().join(format!("c.vma.{codec}"));
        let mut extra = fixed_args();
        extra.extend(["--compress", codec]);
        ok(&create_vector_archive(&out, &extra));
        let compressed = fs::read(&out).unwrap();
        assert_ne!(compressed, plain_bytes);
        assert_eq!(
            decompress_with(tool, args, &out),
            plain_bytes,
            "{tool} -d output differs from the plain archive"
        );
        let (_, mut r) = vma_format::decompressor(&compressed[..]).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, plain_bytes, "library decompressor, {codec}");
    }
}

#[test]
fn create_zstd_writes_several_independent_frames() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.raw");
    let mut content = vec![0u8; 20 << 20];
    TestRng::new(99).fill(&mut content);
    fs::write(&img, &content).unwrap();
    let out = dir.path().join("big.vma.zst");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .args(["--compress", "zstd"])
        .arg("-d")
        .arg(format!("format=raw:big={}", img.display()))));
    let z = fs::read(&out).unwrap();
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < z.len() {
        let n =
            zstd::zstd_safe::find_frame_compressed_size(&z[pos..]).expect("a complete zstd frame");
        frames.push(&z[pos..pos + n]);
        pos += n;
    }
    assert!(frames.len() >= 3, "{} frames for > 16 MiB", frames.len());
    // Every frame decompresses on its own, and they concatenate to the archive.
    let mut all = Vec::new();
    for f in &frames {
        all.extend(zstd::decode_all(*f).expect("independent frame"));
    }
    let p = parse(&all);
    assert_eq!(p.devices["big"].1, content);
    assert_eq!(decompress_with("zstd", &["-q", "-d", "-c"], &out), all);
}

#[test]
fn create_verbose_prints_progress_and_per_image_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.vma");
    let o = create_vector_archive(&out, &["-v"]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let total = 1_061_376u64 + 4_194_304;
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("progress ")).collect();
    assert!(!progress.is_empty(), "{err}");
    let last = progress.last().unwrap();
    assert!(
        last.starts_with(&format!("progress 100% {total}/{total} ")),
        "{last}"
    );
    let images: Vec<&str> = err.lines().filter(|l| l.starts_with("image ")).collect();
    assert_eq!(images.len(), 2, "{err}");
    for (line, (name, size)) in images
        .iter()
        .zip([("drive-scsi0", 1_061_376u64), ("drive-scsi1", 4_194_304)])
    {
        let rest = line
            .strip_prefix(&format!("image {name}: size={size} zeros="))
            .unwrap_or_else(|| panic!("{line}"));
        let (zeros, saved) = rest.split_once(" saved=").unwrap();
        let (zeros, saved): (u64, u64) = (zeros.parse().unwrap(), saved.parse().unwrap());
        assert_eq!(zeros + saved, size, "{line}");
        assert!(zeros > 0 && saved > 0, "{line}");
    }
}

#[test]
fn create_refuses_an_existing_out_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exists.vma");
    fs::write(&out, b"precious").unwrap();
    fails_with(&create_vector_archive(&out, &[]), "already exists");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn create_refuses_bad_device_arguments_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.vma");
    let i = inputs();
    let missing = dir.path().join("nope.raw");
    fails_with(
        &run(vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("format=raw:x={}", missing.display()))),
        "No such file",
    );
    fails_with(
        &run(vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("drive-scsi0={}", i.join("diskA.raw").display()))),
        "No format specified for device",
    );
    fails_with(
        &run(vma()
            .arg("create")
            .arg(&out)
            .arg(i.join("diskA.raw"))
            .arg("-d")
            .arg(format!("format=raw:{}", i.join("diskB.raw").display()))),
        "mixing",
    );
    let big = dir.path().join("big.conf");
    fs::write(&big, vec![b'x'; 65536]).unwrap();
    fails_with(
        &run(vma().arg("create").arg(&out).arg("-c").arg(&big)),
        "too large",
    );
    fails_with(
        &run(vma().arg("create").arg(&out).arg("-d").arg(format!(
            "format=raw:bad/name={}",
            i.join("diskA.raw").display()
        ))),
        "bad/name",
    );
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("big.conf")],
        "a failed create left files behind"
    );
}

#[test]
fn create_to_stdout_on_a_full_device_fails() {
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let i = inputs();
    let o = vma()
        .args(["create", "-"])
        .arg("-d")
        .arg(format!("format=raw:d={}", i.join("diskB.raw").display()))
        .stdout(full)
        .output()
        .unwrap();
    fails_with(&o, "No space left on device");
}

#[test]
fn create_to_a_closed_pipe_fails() {
    // The archive (~150 KB) does not fit in the pipe buffer, so vma meets EPIPE.
    let i = inputs();
    let mut child = vma()
        .args(["create", "-"])
        .arg("-d")
        .arg(format!("format=raw:d={}", i.join("diskB.raw").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    fails_with(&o, "Broken pipe");
}

#[test]
fn create_interrupted_by_sigterm_leaves_no_files() {
    vma_tests::create_interrupted_leaves_no_files(&vma_bin!(), libc::SIGTERM, 96, 5);
}

/// Cross-check with Fox-IT's dissect.archive, an independent Python reader.
/// Needs `python3 -m pip install dissect.archive` (tests/run-all.sh does it).
#[test]
fn create_archive_reads_back_in_dissect_archive() {
    let probe = Command::new("python3")
        .args(["-c", "import dissect.archive.vma"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with dissect.archive is required: python3 -m pip install dissect.archive"
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.raw");
    let sparse = make_sparse_image(&img, 3 * 1024 * 1024 + 1536, 21);
    let out = dir.path().join("d.vma");
    let i = inputs();
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .arg("-c")
        .arg(i.join("qemu-server.conf"))
        .arg("-c")
        .arg(i.join("qemu-server.fw"))
        .arg("-d")
        .arg(format!(
            "format=raw:drive-scsi0={}",
            i.join("diskA.raw").display()
        ))
        .arg("-d")
        .arg(format!("format=raw:drive-scsi1={}", img.display()))));
    let script = r#"
import hashlib, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], "rb") as fh:
    vma = VMA(fh)
    for name, data in vma.configs().items():
        print("CFG", name, hashlib.sha256(data).hexdigest())
    for dev in vma.devices():
        s = dev.open()
        data = s.read(dev.size)
        print("DEV", dev.id, dev.name, dev.size, hashlib.sha256(data[:dev.size]).hexdigest())
"#;
    let o = run(Command::new("python3").args(["-c", script]).arg(&out));
    ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    let a = fs::read(i.join("diskA.raw")).unwrap();
    let mut expected = String::new();
    for (n, d) in vector_configs() {
        expected += &format!("CFG {n} {}\n", vma_tests::sha256_hex(&d));
    }
    expected += &format!(
        "DEV 1 drive-scsi0 {} {}\n",
        a.len(),
        vma_tests::sha256_hex(&a)
    );
    expected += &format!(
        "DEV 2 drive-scsi1 {} {}\n",
        sparse.len(),
        vma_tests::sha256_hex(&sparse)
    );
    assert_eq!(text, expected);
}

#[test]
fn create_writes_into_an_existing_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("p.vma");
    ok(&create_vector_archive(&plain, &fixed_args()));
    let fifo = dir.path().join("fifo");
    ok(&run(Command::new("mkfifo").arg(&fifo)));
    let copy = dir.path().join("copy.vma");
    let reader = Command::new("cp").arg(&fifo).arg(&copy).spawn().unwrap();
    ok(&create_vector_archive(&fifo, &fixed_args()));
    ok(&reader.wait_with_output().unwrap());
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&plain).unwrap());
}

#[test]
fn create_exec_target_pipes_into_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("p.vma");
    ok(&create_vector_archive(&plain, &fixed_args()));
    let piped = dir.path().join("piped.vma");
    let target = format!("exec:cat > '{}'", piped.display());
    ok(&create_vector_archive(Path::new(&target), &fixed_args()));
    assert_eq!(fs::read(&piped).unwrap(), fs::read(&plain).unwrap());
    // A failing command fails create.
    fails_with(
        &create_vector_archive(Path::new("exec:exit 3"), &[]),
        "exited early (exit status: 3)",
    );
}

/// Offsets of the zstd frames of `z` (start, compressed length).
fn zstd_frames(z: &[u8]) -> Vec<(usize, usize)> {
    let (mut pos, mut frames) = (0, Vec::new());
    while pos < z.len() {
        let n =
            zstd::zstd_safe::find_frame_compressed_size(&z[pos..]).expect("a complete zstd frame");
        frames.push((pos, n));
        pos += n;
    }
    frames
}

#[test]
fn create_zstd_frames_carry_checksums_that_catch_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rand.raw");
    // Random data: zstd stores it as raw blocks, so a flipped byte decodes
    // "fine" and only the frame's content checksum can catch it.
    let mut content = vec![0u8; 3 << 20];
    TestRng::new(7).fill(&mut content);
    fs::write(&img, &content).unwrap();
    let out = dir.path().join("c.vma.zst");
    ok(&run(vma()
        .arg("create")
        .arg(&out)
        .args(["--compress", "zstd"])
        .arg("-d")
        .arg(format!("format=raw:rand={}", img.display()))));
    let mut z = fs::read(&out).unwrap();
    let frames = zstd_frames(&z);
    assert!(frames.len() >= 4, "{} frames", frames.len());
    for &(pos, _) in &frames {
        // Frame_Header_Descriptor bit 2: Content_Checksum_flag.
        assert_ne!(z[pos + 4] & 0x04, 0, "frame at {pos} has no checksum");
    }
    ok(&run(vma().arg("verify").arg(&out)));

    // Flip one byte in the middle of the third frame's data.
    let (pos, len) = frames[2];
    let at = pos + len / 2;
    z[at] ^= 0x40;
    let bad = dir.path().join("bad.vma.zst");
    fs::write(&bad, &z).unwrap();
    for args in [vec!["verify"], vec!["extract"]] {
        let mut cmd = vma();
        cmd.args(&args).arg(&bad);
        if args[0] == "extract" {
            cmd.arg(dir.path().join("x"));
        }
        let o = run(&mut cmd);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{args:?}: {err}");
        assert!(
            err.contains("checksum"),
            "{args:?} names no checksum: {err}"
        );
        assert!(err.contains("offset"), "{args:?} names no offset: {err}");
    }

    // The mount's random-access reader checks the frame too: reading the
    // damaged part fails (EIO) instead of returning the flipped byte.
    let mp = vma_tests::MountDir::new();
    ok(&run(vma().arg("mount").arg(&bad).arg(mp.path())));
    let r = fs::read(mp.path().join("rand.raw"));
    let e = r.expect_err("read through the mount returned damaged data");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    ok(&run(vma().arg("umount").arg(mp.path())));
}

#[test]
fn create_infers_the_codec_from_the_suffix_and_warns_when_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("p.vma");
    ok(&create_vector_archive(&plain, &fixed_args()));
    let plain_bytes = fs::read(&plain).unwrap();
    for (name, magic) in [
        ("a.vma.zst", &[0x28, 0xb5, 0x2f, 0xfd][..]),
        ("a.vma.gz", &[0x1f, 0x8b]),
        ("a.vma.lzo", &[0x89, b'L', b'Z', b'O']),
    ] {
        let out = dir.path().join(name);
        let o = create_vector_archive(&out, &fixed_args());
        ok(&o);
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("warning"),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = fs::read(&out).unwrap();
        assert!(bytes.starts_with(magic), "{name} is not compressed");
        let (_, mut r) = vma_format::decompressor(&bytes[..]).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, plain_bytes, "{name}");
    }
    // --level without --compress is fine when the suffix names the codec.
    let out = dir.path().join("l.vma.gz");
    let mut extra = fixed_args();
    extra.extend(["--level", "1"]);
    ok(&create_vector_archive(&out, &extra));
    assert!(fs::read(&out).unwrap().starts_with(&[0x1f, 0x8b]));
    // ... and refused when nothing does.
    let out = dir.path().join("l.vma");
    fails_with(&create_vector_archive(&out, &extra), "need --compress");
    assert!(!out.exists());

    // An explicit codec wins, with a warning naming both.
    let out = dir.path().join("g.vma");
    let mut extra = fixed_args();
    extra.extend(["--compress", "gzip"]);
    let o = create_vector_archive(&out, &extra);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "vma: warning: writing gzip into {}, whose name suggests no compression",
            out.display()
        )),
        "{err}"
    );
    assert!(fs::read(&out).unwrap().starts_with(&[0x1f, 0x8b]));
}

#[test]
fn create_errors_name_out_not_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no-such-dir").join("x.vma");
    let o = create_vector_archive(&out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(133), "{err}");
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    let enoent = enoent.split(" (os error").next().unwrap();
    assert_eq!(
        err.trim_end(),
        format!("vma: can't create {} - {enoent}", out.display())
    );
}

#[test]
fn create_legacy_form_probes_the_image_format_as_proxmox_does() {
    assert!(
        tool_exists("qemu-img"),
        "qemu-img is required (Debian: qemu-utils)"
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("guest.raw");
    let content = make_sparse_image(&raw, 2 * 1024 * 1024, 11);
    let mut images = Vec::new();
    for fmt in ["qcow2", "vmdk"] {
        let img = dir.path().join(format!("guest.{fmt}"));
        qemu_img(&[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            fmt.as_ref(),
            raw.as_os_str(),
            img.as_os_str(),
        ]);
        assert_ne!(fs::read(&img).unwrap(), content);
        images.push((fmt, img));
    }
    let out = dir.path().join("legacy.vma");
    let o = run(vma()
        .arg("create")
        .arg(&out)
        .arg(format!("drive-scsi0={}", images[0].1.display()))
        .arg(&images[1].1)
        .arg(format!("plain={}", raw.display())));
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    for (fmt, img) in &images {
        assert!(
            err.contains(&format!("{} is a {fmt} image", img.display())),
            "{err}"
        );
    }
    assert!(!err.contains("guest.raw is a"), "{err}");
    let p = parse(&fs::read(&out).unwrap());
    // The guest disk, not the container's bytes.
    for name in ["drive-scsi0", "disk1", "plain"] {
        assert_eq!(
            p.devices[name],
            (content.len() as u64, content.clone()),
            "{name}"
        );
    }

    // An explicit format=raw is honoured (the container's bytes), with a warning.
    let out = dir.path().join("explicit.vma");
    let o = run(vma()
        .arg("create")
        .arg(&out)
        .arg("-d")
        .arg(format!("format=raw:d={}", images[0].1.display())));
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "warning: {} looks like a qcow2 image, but format=raw",
            images[0].1.display()
        )),
        "{err}"
    );
    let qcow2 = fs::read(&images[0].1).unwrap();
    assert_eq!(
        parse(&fs::read(&out).unwrap()).devices["d"].1[..qcow2.len()],
        qcow2[..]
    );
}

/// A 1 MiB tmpfs, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn create_on_a_full_filesystem_names_out_and_leaves_nothing() {
    let fs_dir = SmallFs(tempfile::tempdir().unwrap());
    let o = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(fs_dir.0.path()));
    assert!(
        o.status.success(),
        "this test mounts a small tmpfs and needs root: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rand.raw");
    let mut content = vec![0u8; 3 << 20];
    TestRng::new(3).fill(&mut content);
    fs::write(&img, &content).unwrap();
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    let enospc = enospc.split(" (os error").next().unwrap();
    for name in ["x.vma", "x.vma.zst"] {
        let out = fs_dir.0.path().join(name);
        let o = run(vma()
            .arg("create")
            .arg(&out)
            .arg("-d")
            .arg(format!("format=raw:r={}", img.display())));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(133), "{name}: {err}");
        assert!(
            err.starts_with(&format!("vma: can't write {}", out.display())),
            "{name}: {err}"
        );
        assert!(
            err.trim_end().ends_with(&format!(" - {enospc}")),
            "{name}: {err}"
        );
        assert!(!err.contains(".tmp-"), "{name}: {err}");
        assert_eq!(fs::read_dir(fs_dir.0.path()).unwrap().count(), 0, "{name}");
    }
}
