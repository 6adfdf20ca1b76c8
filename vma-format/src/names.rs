//! The one rule for names that become paths (spec §13).
//!
//! Config and device names come from untrusted archives. Extract, mount and
//! our own writer all call [`check_name`], so a name we write is a name we
//! can extract, and nothing ever lands outside the target directory.

/// Longest accepted name in bytes (spec §13).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a config or device name; `Err` says why it is refused.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name is longer than 200 bytes");
    }
    if name == b"." || name == b".." {
        return Err("name is '.' or '..'");
    }
    if name.contains(&b'/') {
        return Err("name contains '/'");
    }
    if name.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("name contains a control character or NUL");
    }
    if name[0] == b'-' {
        return Err("name starts with '-'");
    }
    if std::str::from_utf8(name).is_err() {
        return Err("name is not valid UTF-8");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "drive-scsi0",
            "qemu-server.conf",
            "qemu-server.fw",
            "vmstate",
            "drive-tpmstate0-backup",
            "ü.conf",
        ] {
            assert_eq!(check_name(n.as_bytes()), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        let long = vec![b'a'; 201];
        for n in [
            &b""[..],
            b".",
            b"..",
            b"../x",
            b"a/b",
            b"/etc/passwd",
            b"a\0b",
            b"a\nb",
            b"\x7f",
            b"-rf",
            b"\xff\xfe",
            &long,
        ] {
            assert!(check_name(n).is_err(), "{:?}", String::from_utf8_lossy(n));
        }
        assert!(check_name(&[b'a'; 200]).is_ok());
    }
}
