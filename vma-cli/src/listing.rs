//! The archive listing shared by `list`, `extract -r` and `verify -v`
//! (Proxmox's `print_content`), the ctime(3) rendering, and the JSON
//! description of a header.

use std::io::{self, Write};

use vma_format::{ArchiveHeader, Compression};

/// `ctime(3)` of `t` in local time, without the newline:
/// `Thu Nov 26 06:49:14 2026`. The zone is `TZ`'s (Unix) or the system's
/// (Windows). `(null)` when the time is out of range, as glibc's printf
/// shows a NULL ctime.
pub fn ctime_string(t: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(tm) = crate::sys::local_time(t) else {
        return "(null)".into();
    };
    let (Some(day), Some(mon)) = (DAYS.get(tm.weekday), MONTHS.get(tm.month)) else {
        return "(null)".into();
    };
    // asctime's format: "%.3s %.3s%3d %.2d:%.2d:%.2d %d".
    format!(
        "{day} {mon}{:3} {:02}:{:02}:{:02} {}",
        tm.day, tm.hour, tm.minute, tm.second, tm.year
    )
}

/// RFC 3339 (UTC) of a Unix time, or `None` when out of range.
pub fn rfc3339(t: i64) -> Option<String> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t).ok()?;
    dt.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Writes the `CFG:`/`DEV:`/`VMSTATE:`/`CTIME:` lines, byte-identical to Proxmox's.
pub fn write_listing(out: &mut impl Write, h: &ArchiveHeader) -> io::Result<()> {
    for c in &h.configs {
        out.write_all(format!("CFG: size: {} name: ", c.data.len()).as_bytes())?;
        out.write_all(&c.name)?;
        out.write_all(b"\n")?;
    }
    for d in &h.devices {
        // Proxmox lists dev_ids 1..254 only.
        if d.id == 255 {
            continue;
        }
        if d.is_vmstate() {
            writeln!(out, "VMSTATE: dev_id={} memory: {}", d.id, d.size)?;
        } else {
            out.write_all(format!("DEV: dev_id={} size: {} devname: ", d.id, d.size).as_bytes())?;
            out.write_all(&d.name)?;
            out.write_all(b"\n")?;
        }
    }
    writeln!(out, "CTIME: {}", ctime_string(h.ctime))?;
    out.flush()
}

/// The JSON description of a header shared by `list --json` and `verify --json`.
pub fn header_json(
    h: &ArchiveHeader,
    compression: Compression,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{json, Value};
    let mut m = serde_json::Map::new();
    m.insert("uuid".into(), json!(h.uuid.to_string()));
    m.insert(
        "ctime".into(),
        rfc3339(h.ctime).map_or(Value::Null, Value::from),
    );
    m.insert("ctime_unix".into(), json!(h.ctime));
    m.insert("compression".into(), json!(compression.name()));
    m.insert(
        "configs".into(),
        h.configs
            .iter()
            .map(|c| json!({"name": c.name_str(), "size": c.data.len()}))
            .collect::<Value>(),
    );
    m.insert(
        "disks".into(),
        h.devices
            .iter()
            .map(|d| json!({"dev_id": d.id, "name": d.name_str(), "size": d.size, "vmstate": d.is_vmstate()}))
            .collect::<Value>(),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_pads_the_day_with_a_space() {
        // TZ is process-wide; both assertions need UTC.
        std::env::set_var("TZ", "UTC");
        assert_eq!(ctime_string(1_795_675_754), "Thu Nov 26 06:49:14 2026");
        assert_eq!(ctime_string(1_706_973_031), "Sat Feb  3 15:10:31 2024");
        assert_eq!(
            rfc3339(1_795_675_754).as_deref(),
            Some("2026-11-26T06:49:14Z")
        );
    }
}
