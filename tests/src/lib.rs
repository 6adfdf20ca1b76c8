//! Shared helpers for the integration, golden and compatibility tests.
//!
//! The Proxmox-written vectors live in `tests/data/vectors` (a copy of the
//! project's shared vectors, so a clean clone is self-contained).

use std::path::PathBuf;

/// `tests/data/vectors` inside the repository.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join("vectors")
}

/// A file in `tests/data/vectors`.
pub fn vector(name: &str) -> PathBuf {
    vectors_dir().join(name)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a `sha256sum` file into (hash, file name) pairs.
pub fn parse_sha256_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once("  ").map(|(h, n)| (h.to_string(), n.to_string())))
        .collect()
}
