//! The one rule for names that become paths (spec §13).
//!
//! Config and device names come from untrusted archives. Extract, mount and
//! our own writer all call [`check_name`], so a name we write is a name we
//! can extract, and nothing ever lands outside the target directory.
//! On Windows, [`check_name`] also applies [`check_windows_name`]: a name
//! Windows would read as a device, a drive or stream (`:`), another
//! directory (`\\`) or a different file (trailing dot or space) is refused.

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
    #[cfg(windows)]
    check_windows_name(name)?;
    Ok(())
}

/// The rules Windows adds for a file name (checked on every platform by the
/// tests; applied by [`check_name`] on Windows): none of `\ : * ? " < > |`,
/// no trailing dot or space, and not a DOS device name (`CON`, `aux.conf`,
/// `COM1`, ...: Windows opens the device whatever the directory or suffix).
pub fn check_windows_name(name: &[u8]) -> Result<(), &'static str> {
    if name.iter().any(|b| br#"\:*?"<>|"#.contains(b)) {
        return Err(r#"name contains one of \ : * ? " < > | (not allowed on Windows)"#);
    }
    if matches!(name.last(), Some(b'.' | b' ')) {
        return Err("name ends with a dot or space (Windows drops them)");
    }
    // Windows compares the part before the first dot, trailing spaces
    // removed, case-insensitively.
    let stem = name.split(|&b| b == b'.').next().unwrap_or(name);
    let stem = stem.trim_ascii_end().to_ascii_uppercase();
    let reserved = match stem.as_slice() {
        b"CON" | b"PRN" | b"AUX" | b"NUL" | b"CONIN$" | b"CONOUT$" => true,
        [b'C', b'O', b'M', d] | [b'L', b'P', b'T', d] => d.is_ascii_digit(),
        // COM¹ ... LPT³: superscript digits are device names too.
        [b'C', b'O', b'M', 0xc2, d] | [b'L', b'P', b'T', 0xc2, d] => {
            matches!(d, 0xb9 | 0xb2 | 0xb3)
        }
        _ => false,
    };
    if reserved {
        return Err("name is a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9)");
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

    #[test]
    fn windows_rules() {
        for n in [
            "drive-scsi0",
            "qemu-server.conf",
            "console.conf",
            "com10",
            "lpt",
            "nul-device",
            "a.con",
            "ü.conf",
        ] {
            assert_eq!(check_windows_name(n.as_bytes()), Ok(()), "{n}");
        }
        for n in [
            "CON",
            "con",
            "aux",
            "Aux.conf",
            "nul.txt",
            "PRN",
            "COM1",
            "lpt9",
            "com0",
            "CONIN$",
            "conout$.x",
            "COM\u{b9}",
            "lpt\u{b3}.fw",
            "con .conf",
            "a:b",
            "C:",
            "x::$DATA",
            "a*",
            "a?",
            "a\"b",
            "<a>",
            "a|b",
            "a\\b",
            "..\\x",
            "trail.",
            "trail ",
            "qemu-server.conf.",
        ] {
            assert!(check_windows_name(n.as_bytes()).is_err(), "{n:?}");
        }
        // On Windows, check_name itself refuses them; elsewhere they are
        // ordinary names (Proxmox's tool accepts them).
        assert_eq!(check_name(b"aux").is_err(), cfg!(windows));
        assert_eq!(check_name(b"a:b").is_err(), cfg!(windows));
    }
}
