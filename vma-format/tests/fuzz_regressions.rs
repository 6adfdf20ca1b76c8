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
