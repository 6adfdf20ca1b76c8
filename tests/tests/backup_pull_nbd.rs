//! Pull mode: `vma create -d format=raw:NAME=nbd+unix:///EXPORT?socket=PATH`
//! reads a device from an NBD export, only its allocated extents.
//!
//! One test uses `qemu-nbd` (qemu-utils) as the server of a qcow2 image;
//! another an in-process vma-nbd server whose export counts the bytes read,
//! to show that holes are never read.

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vma_nbd::{proto, Export, Exports, Extent, Listener, Server, ServerConfig};
use vma_tests::{vma_bin, TestRng};

fn vma(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(vma_bin!()).args(args).output().unwrap()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_reads_a_qemu_nbd_export_of_a_qcow2_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    let raw = dir.path().join("d.raw");
    let run = |args: &[&str]| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("qemu-utils must be installed");
        assert!(o.status.success(), "{args:?}: {o:?}");
    };
    let img_s = img.to_str().unwrap();
    // Data, a run of allocated zeros, data in the last cluster; the rest holes.
    // The size is not a multiple of 64 KiB.
    run(&["qemu-img", "create", "-q", "-f", "qcow2", img_s, "5248k"]);
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 1M 192k",
        "-c",
        "write -z 3M 64k",
        "-c",
        "write -P 7 5244k 4k",
        img_s,
    ]);
    run(&[
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        img_s,
        raw.to_str().unwrap(),
    ]);
    let sock = dir.path().join("nbd.sock");
    let pid = dir.path().join("pid");
    run(&[
        "qemu-nbd",
        "-t",
        "-r",
        "-f",
        "qcow2",
        "-x",
        "drive-scsi0",
        "-k",
        sock.to_str().unwrap(),
        "--fork",
        "--pid-file",
        pid.to_str().unwrap(),
        img_s,
    ]);
    wait_for(&pid);
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the qemu-nbd we started.
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let _k = Kill(
        std::fs::read_to_string(&pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    );

    let out = dir.path().join("pull.vma");
    let dev = format!(
        "format=raw:drive-scsi0=nbd+unix:///drive-scsi0?socket={}",
        sock.display()
    );
    let o = vma(&[
        "create".as_ref(),
        "-v".as_ref(),
        out.as_os_str(),
        "-d".as_ref(),
        dev.as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // 192 KiB + 4 KiB of data; the rest (holes and allocated zeros) is zero.
    assert!(
        stderr.contains("image drive-scsi0: size=5373952 zeros=5173248 saved=200704"),
        "{stderr}"
    );
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(ex.join("disk-drive-scsi0.raw")).unwrap() == std::fs::read(&raw).unwrap()
    );

    // Wrong export name, wrong format: clear errors naming the device.
    let bad = format!("format=raw:a=nbd+unix:///nope?socket={}", sock.display());
    let o = vma(&[
        "create".as_ref(),
        dir.path().join("x.vma").as_os_str(),
        "-d".as_ref(),
        bad.as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("NBD export 'nope': no such export"),
        "{stderr}"
    );
    let bad = dev.replace("format=raw", "format=qcow2");
    let o = vma(&[
        "create".as_ref(),
        dir.path().join("x.vma").as_os_str(),
        "-d".as_ref(),
        bad.as_ref(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("use format=raw"));
    assert!(!dir.path().join("x.vma").exists());
}

/// A sparse export: data in `data` ranges, holes elsewhere; counts reads.
struct Sparse {
    content: Vec<u8>,
    data: Vec<(u64, u64)>,
    read: AtomicU64,
}

impl Export for Sparse {
    fn size(&self) -> u64 {
        self.content.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::SeqCst);
        buf.copy_from_slice(&self.content[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64, _max: usize) -> io::Result<Vec<Extent>> {
        let end = offset + len;
        let inside = self.data.iter().find(|(s, e)| *s <= offset && offset < *e);
        Ok(vec![match inside {
            Some((_, e)) => Extent {
                length: e.min(&end) - offset,
                flags: 0,
            },
            None => {
                let next = self
                    .data
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|s| *s > offset)
                    .min()
                    .unwrap_or(end);
                Extent {
                    length: next.min(end) - offset,
                    flags: proto::STATE_HOLE | proto::STATE_ZERO,
                }
            }
        }])
    }
}

#[test]
fn create_reads_only_the_allocated_extents_of_an_nbd_export() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 << 20;
    let data = vec![(1 << 20, (1 << 20) + 65536), (9 << 20, 10 << 20)];
    let mut content = vec![0u8; size];
    let mut rng = TestRng::new(9);
    for (s, e) in &data {
        rng.fill(&mut content[*s as usize..*e as usize]);
    }
    let export = Arc::new(Sparse {
        content: content.clone(),
        data: data.clone(),
        read: AtomicU64::new(0),
    });
    let mut exports = Exports::new();
    exports.insert("disk", export.clone());
    let sock = dir.path().join("s.sock");
    let server = Server::new(exports, ServerConfig::default())
        .spawn(Listener::unix(&sock).unwrap())
        .unwrap();
    let out = dir.path().join("o.vma");
    let dev = format!(
        "format=raw:drive-virtio0=nbd+unix:///disk?socket={}",
        sock.display()
    );
    let o = vma(&[
        "create".as_ref(),
        out.as_os_str(),
        "-d".as_ref(),
        dev.as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    server.stop().unwrap();
    let allocated: u64 = data.iter().map(|(s, e)| e - s).sum();
    assert_eq!(
        export.read.load(Ordering::SeqCst),
        allocated,
        "holes were read"
    );
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success());
    assert!(std::fs::read(ex.join("disk-drive-virtio0.raw")).unwrap() == content);
}

#[test]
fn create_reads_other_formats_through_qemu_nbd_without_a_temporary_copy() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB of compressible, non-zero data: a raw copy would not fit the
    // 2 MiB filesystem that holds the (zstd) archive.
    let content: Vec<u8> = (0..8 << 20).map(|i| (i / 4096 % 7 + 1) as u8).collect();
    let raw = dir.path().join("d.raw");
    std::fs::write(&raw, &content).unwrap();
    let vmdk = dir.path().join("d.vmdk");
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(&raw)
        .arg(&vmdk)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(o.status.success(), "{o:?}");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success());
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    let out = small.join("a.vma.zst");
    let child = Command::new(vma_bin!())
        .args(["create", "-v", "--compress", "zstd"])
        .arg(&out)
        .arg("-d")
        .arg(format!("format=vmdk:drive-sata0={}", vmdk.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("through qemu-nbd"), "{stderr}");
    // Its private socket directory is gone.
    let prefix = format!("vma-create-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ex = dir.path().join("ex");
    let o = vma(&["extract".as_ref(), out.as_os_str(), ex.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(ex.join("disk-drive-sata0.raw")).unwrap() == content);
}
