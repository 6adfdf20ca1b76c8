//! The `vma-nbd` server against real NBD clients (qemu-io, qemu-img, nbdinfo)
//! with an in-memory writable export, over Unix sockets and TCP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vma_nbd::mem::MemoryExport;
use vma_nbd::{Export, Exports, Listener, Running, Server, ServerConfig};
use vma_tests::{run_ok as run, TestRng};

fn start(exports: Exports, listener: Listener, max_connections: usize) -> Running {
    let config = ServerConfig {
        max_connections,
        ..ServerConfig::default()
    };
    Server::new(exports, config).spawn(listener).unwrap()
}

fn uri(sock: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

#[test]
fn qemu_io_writes_and_reads_patterns_over_unix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let mem = Arc::new(MemoryExport::new(16 << 20));
    let mut x = Exports::new();
    x.insert("mem", mem.clone());
    let server = start(x, Listener::unix(&sock).unwrap(), 8);
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", &uri(&sock, "mem")])
        .args([
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 3M 64k",
            "-c",
            "write -z 512k 64k",
            "-c",
            "read -P 0xab 0 512k",
            "-c",
            "read -P 0 512k 64k",
            "-c",
            "read -P 0xcd 3M 64k",
            "-c",
            "flush",
        ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 3, "{out}");
    let c = mem.contents();
    assert!(c[..512 << 10].iter().all(|&b| b == 0xab));
    assert!(c[512 << 10..576 << 10].iter().all(|&b| b == 0));
    assert!(c[576 << 10..1 << 20].iter().all(|&b| b == 0xab));
    assert!(c[3 << 20..(3 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0xcd));
    assert!(c[1 << 20..3 << 20].iter().all(|&b| b == 0));
    // A pattern mismatch is detected (the check above can fail).
    let bad = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&sock, "mem"), "-c", "read -P 0x11 0 4k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("Pattern verification failed"), "{text}");
    server.stop().unwrap();
    assert!(!sock.exists(), "the socket file is removed on stop");
}

#[test]
fn qemu_img_convert_into_the_export_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let size = 8 << 20;
    let mut content = vec![0u8; size];
    let mut rng = TestRng::new(14);
    // Random 64 KiB clusters, the rest zero (sparse).
    for c in 0..size / 65536 {
        if rng.below(3) == 0 {
            rng.fill(&mut content[c * 65536..(c + 1) * 65536]);
        }
    }
    let img = dir.path().join("in.raw");
    std::fs::write(&img, &content).unwrap();
    let mem = Arc::new(MemoryExport::new(size));
    // Garbage first: convert must overwrite (or zero) everything.
    mem.write_at(0, &vec![0x5a; size], false).unwrap();
    let mut x = Exports::new();
    x.insert("disk", mem.clone());
    let server = start(x, Listener::unix(&sock).unwrap(), 8);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&img)
        .arg(uri(&sock, "disk")));
    assert!(mem.contents() == content, "converted content differs");
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(uri(&sock, "disk")));
    assert!(out.contains("Images are identical"), "{out}");
    server.stop().unwrap();
}

#[test]
fn nbdinfo_lists_exports_and_maps_holes_over_tcp() {
    let mut a = vec![0u8; 1 << 20];
    a[256 << 10..320 << 10].fill(7);
    let mut x = Exports::new();
    x.insert("alpha", Arc::new(MemoryExport::from_vec(a, true)));
    x.insert("beta", Arc::new(MemoryExport::new(4096)));
    let listener = Listener::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.tcp_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let server = start(x, listener, 8);
    let list = run(Command::new("nbdinfo").args(["--list", &format!("nbd://{addr}")]));
    assert!(
        list.contains("export=\"alpha\"") || list.contains("alpha"),
        "{list}"
    );
    assert!(list.contains("beta"), "{list}");
    let map = run(Command::new("nbdinfo").args(["--map", &format!("nbd://{addr}/alpha")]));
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[1], r[2])).collect();
    assert_eq!(
        rows,
        vec![
            ("0", "262144", "3"),
            ("262144", "65536", "0"),
            ("327680", "720896", "3")
        ],
        "{map}"
    );
    server.stop().unwrap();
}

/// Reads the 18-byte greeting, sends client flags and GO for `name`, and
/// reads up to the end of the GO replies.
fn handshake(s: &mut UnixStream, name: &str) {
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    let mut m = 3u32.to_be_bytes().to_vec();
    m.extend_from_slice(b"IHAVEOPT");
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&m).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        if u32::from_be_bytes(h[12..16].try_into().unwrap()) == 1 {
            return; // ACK
        }
    }
}

#[test]
fn malformed_request_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let mut x = Exports::new();
    x.insert("m", Arc::new(MemoryExport::new(1 << 20)));
    let server = start(x, Listener::unix(&sock).unwrap(), 8);
    let mut good = UnixStream::connect(&sock).unwrap();
    handshake(&mut good, "m");
    let mut bad = UnixStream::connect(&sock).unwrap();
    handshake(&mut bad, "m");
    bad.write_all(&[0xee; 28]).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    // The server closes: EOF, no reply.
    assert_eq!(bad.read_to_end(&mut rest).unwrap(), 0);
    // The other connection still works: a 4-byte read.
    let req = vma_nbd::proto::Request {
        flags: 0,
        kind: vma_nbd::proto::CMD_READ,
        cookie: 42,
        offset: 0,
        length: 4,
    };
    good.write_all(&req.to_bytes()).unwrap();
    let mut reply = [0u8; 20];
    good.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply[0..4],
        &vma_nbd::proto::SIMPLE_REPLY_MAGIC.to_be_bytes()
    );
    assert_eq!(&reply[4..8], &[0; 4]);
    assert_eq!(&reply[8..16], &42u64.to_be_bytes());
    // And new connections are accepted.
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-r",
        &uri(&sock, "m"),
        "-c",
        "read -P 0 0 4k",
    ]));
    server.stop().unwrap();
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let mut x = Exports::new();
    x.insert("m", Arc::new(MemoryExport::new(4096)));
    let server = start(x, Listener::unix(&sock).unwrap(), 2);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = UnixStream::connect(&sock).unwrap();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).unwrap();
        held.push(s);
    }
    let mut third = UnixStream::connect(&sock).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    assert_eq!(
        third.read_to_end(&mut got).unwrap(),
        0,
        "no greeting beyond the limit"
    );
    drop(held);
    // Slots free up once those connections end.
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = UnixStream::connect(&sock).unwrap();
    let mut greet = [0u8; 18];
    fourth.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    server.stop().unwrap();
}
