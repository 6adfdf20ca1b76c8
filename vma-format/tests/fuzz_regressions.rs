//! Every input the fuzzers ever crashed on, replayed through the code paths of
//! the target that found it. Inputs live in `fuzz/regressions/<target>-<name>.bin`.

use std::io::Read;
use std::path::PathBuf;

use vma_format::{decompressor, parse_header, IndexedReader, StreamReader};

fn regressions() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Drives every reader over `bytes`; must return (Ok or Err), never panic.
fn exercise(bytes: &[u8]) {
    let _ = parse_header(bytes);
    if let Ok(mut r) = StreamReader::new(bytes) {
        while let Ok(Some(e)) = r.next_extent() {
            for c in e.clusters() {
                for _ in c.runs() {}
            }
        }
        let _ = r.completeness();
    }
    if let Ok((_, mut d)) = decompressor(bytes) {
        // Bounded: a regression input must not decompress without limit.
        let mut plain = Vec::new();
        let _ = (&mut d).take(64 << 20).read_to_end(&mut plain);
        if let Ok(mut r) = StreamReader::new(&plain[..]) {
            while let Ok(Some(_)) = r.next_extent() {}
        }
    }
    if let Ok(ix) = IndexedReader::open(bytes.to_vec()) {
        let mut buf = vec![0u8; 70_000];
        for d in ix.header().devices.clone() {
            let _ = ix.read(d.id, 0, &mut buf);
            let _ = ix.map(d.id, 0);
        }
    }
}

#[test]
fn fuzz_regressions_do_not_panic() {
    let all = regressions();
    assert!(!all.is_empty(), "fuzz/regressions holds the crash corpus");
    for (name, bytes) in all {
        let r = std::panic::catch_unwind(|| exercise(&bytes));
        assert!(r.is_ok(), "{name} panics");
    }
}

#[test]
fn lzo_backref_regression_is_a_clear_error() {
    let (_, bytes) = regressions()
        .into_iter()
        .find(|(n, _)| n.starts_with("stream-lzo"))
        .expect("lzo regression");
    let (_, mut d) = decompressor(&bytes[..]).expect("lzop header parses");
    let err = std::io::copy(&mut d, &mut std::io::sink()).expect_err("corrupt block");
    assert!(err.to_string().contains("lzop stream corrupt"), "{err}");
}

#[test]
fn zero_run_of_a_device_near_2_64_bytes_ends_at_the_device_end() {
    // A device whose size exceeds the largest multiple of 4096 below 2^64:
    // the zero run after the last stored block must end at the size.
    let mut b = vma_format::WriterBuilder::new();
    b.add_device("d", 65536).unwrap();
    let w = b.build(Vec::new()).unwrap();
    w.write_cluster(1, 0, &[1u8; 65536]).unwrap();
    let mut a = w.finish().unwrap().0;
    // Patch the declared size to u64::MAX and fix the header checksum.
    let at = 4096 + 32 + 8;
    a[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    let hs = vma_format::parse_header(&a[..]).map(|_| ()).err();
    assert!(hs.is_some(), "checksum must now fail");
    let h_size = u32::from_be_bytes(a[56..60].try_into().unwrap()) as usize;
    let md5 = vma_format::raw::header_md5(&a[..h_size]);
    a[32..48].copy_from_slice(&md5);
    let ix = IndexedReader::open(a).unwrap();
    let m = ix.map(1, 65536).unwrap().unwrap();
    assert_eq!((m.start, m.end), (65536, u64::MAX));
    assert_eq!(ix.seek_data(1, 65536).unwrap(), None);
    assert_eq!(ix.seek_hole(1, 100).unwrap(), Some(65536));
}
