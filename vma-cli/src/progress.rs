//! Progress reporting and restore statistics for `extract` and `verify`.
//!
//! With `-v` and a non-terminal stderr (qemu-server's case) we print
//! Proxmox's lines on stdout, byte for byte (tests/data/vectors/*-v.txt):
//! `progress N% (read B bytes, duration S sec)` whenever the whole percentage
//! changes (starting from 0, so never `progress 0%`), and the two summary
//! lines. When stderr is a terminal an indicatif bar on stderr replaces the
//! progress lines.
//!
//! Proxmox's statistics: `sparse bytes` counts every 4 KiB block left out of
//! a cluster (mask bit clear), clipped to the device end, whether the cluster
//! stores other blocks or none; `space reduction due to 4K zero blocks` is
//! the share of the partly-stored clusters' left-out blocks in the rest.
//!
//! Deliberate differences from Proxmox's `-v` output: with a terminal on
//! stderr the bar replaces the `progress` lines; and where we fail and
//! Proxmox does not (spec §12, e.g. `verify` of an archive with missing
//! clusters), there is no summary, as Proxmox prints none on failure.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const CLUSTER: u64 = vma_format::raw::CLUSTER_SIZE as u64;
const BLOCK: u64 = vma_format::raw::BLOCK_SIZE as u64;

/// Counts clusters and zero data; prints progress.
pub struct Progress {
    verbose: bool,
    bar: Option<ProgressBar>,
    /// Proxmox's denominator: sum of floor(size / 64 KiB) of the restored devices.
    cluster_count: u64,
    clusters_read: u64,
    /// Starts at 0, as in Proxmox: the first line printed is `progress 1%`.
    last_percent: u64,
    /// Left-out block bytes within the device, of all clusters.
    zero_cluster_data: u64,
    /// Of those, the ones of clusters that store at least one block.
    partial_zero_cluster_data: u64,
    start: Instant,
}

impl Progress {
    /// `sizes`: sizes of the devices whose clusters will be counted.
    pub fn new(verbose: bool, sizes: impl Iterator<Item = u64>) -> Self {
        let sizes: Vec<u64> = sizes.collect();
        // Sizes are untrusted: saturate rather than overflow (2^64-1 is valid).
        let cluster_count = sizes
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s / CLUSTER));
        let bar = std::io::stderr().is_terminal().then(|| {
            let total = sizes.iter().fold(0u64, |n, s| {
                n.saturating_add(s.div_ceil(CLUSTER).saturating_mul(CLUSTER))
            });
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            verbose,
            bar,
            cluster_count,
            clusters_read: 0,
            last_percent: 0,
            zero_cluster_data: 0,
            partial_zero_cluster_data: 0,
            start: Instant::now(),
        }
    }

    /// Accounts one cluster with this mask, at byte `offset` of a device of
    /// `size` bytes.
    pub fn cluster(&mut self, mask: u16, offset: u64, size: u64) {
        self.clusters_read += 1;
        let left_out = left_out_bytes(mask, offset, size);
        // Sums of at most 64 KiB per cluster read: cannot reach 2^64.
        self.zero_cluster_data = self.zero_cluster_data.saturating_add(left_out);
        if mask != 0 {
            self.partial_zero_cluster_data =
                self.partial_zero_cluster_data.saturating_add(left_out);
        }
        if self.verbose && self.bar.is_none() && self.cluster_count > 0 {
            let percent = self.clusters_read.saturating_mul(100) / self.cluster_count;
            if self.last_percent != percent {
                self.last_percent = percent;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "progress {percent}% (read {} bytes, duration {} sec)",
                    self.clusters_read.saturating_mul(CLUSTER),
                    self.start.elapsed().as_secs()
                );
                let _ = out.flush();
            }
        }
    }

    /// Updates the bar (call once per extent).
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.clusters_read.saturating_mul(CLUSTER));
        }
    }

    /// Removes the bar; with `-v` prints the summary lines (on success only, like Proxmox).
    pub fn finish(&self, success: bool) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !(self.verbose && success) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.clusters_read > 0 {
            let total = self.clusters_read.saturating_mul(CLUSTER);
            let _ = writeln!(
                out,
                "total bytes read {total}, sparse bytes {} ({}%)",
                self.zero_cluster_data,
                fmt_g3(100.0 * self.zero_cluster_data as f64 / total as f64)
            );
            let datasize = total.saturating_sub(self.zero_cluster_data);
            if datasize > 0 {
                let _ = writeln!(
                    out,
                    "space reduction due to 4K zero blocks {}%",
                    fmt_g3(100.0 * self.partial_zero_cluster_data as f64 / datasize as f64)
                );
            }
        } else {
            let _ = writeln!(out, "vma archive contains no image data");
        }
        let _ = out.flush();
    }
}

/// Bytes of the blocks that `mask` leaves out, counted up to the device end
/// (a block straddling it counts up to the end).
fn left_out_bytes(mask: u16, offset: u64, size: u64) -> u64 {
    (0..16u64)
        .filter(|b| mask & (1 << b) == 0)
        .map(|b| {
            size.saturating_sub(offset.saturating_add(b * BLOCK))
                .min(BLOCK)
        })
        .sum()
}

/// C's `%.3g`: 3 significant digits, trailing zeros removed, exponent form
/// below 1e-4 or from 1e3.
pub fn fmt_g3(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x == 0.0 { "0".into() } else { x.to_string() };
    }
    let sci = format!("{x:.2e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant), exp.abs())
    } else {
        let decimals = (2 - exp) as usize;
        trim(&format!("{x:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{fmt_g3, left_out_bytes};

    #[test]
    fn left_out_blocks_are_clipped_to_the_device_end() {
        assert_eq!(left_out_bytes(0, 0, 1 << 20), 65536);
        assert_eq!(left_out_bytes(0xffff, 0, 1 << 20), 0);
        assert_eq!(left_out_bytes(0x0022, 131072, 1 << 20), 14 * 4096);
        // ref-one-disk's last cluster: 12800 bytes of device, block 3 stored.
        assert_eq!(
            left_out_bytes(0x0008, 16 * 65536, 16 * 65536 + 12800),
            3 * 4096
        );
        // A mask-0 cluster past the end, and one at the top of the u64 range.
        assert_eq!(left_out_bytes(0, 1 << 30, 1 << 20), 0);
        assert_eq!(left_out_bytes(0, u64::MAX - 65535, u64::MAX), 65535);
    }

    #[test]
    fn g3_matches_printf() {
        for (x, s) in [
            (73.1234, "73.1"),
            (2.95, "2.95"),
            (0.818, "0.818"),
            (100.0, "100"),
            (98.46, "98.5"),
            (5.0, "5"),
            (0.00012345, "0.000123"),
            (0.000012345, "1.23e-05"),
            (99.96, "100"),
            (1234.0, "1.23e+03"),
        ] {
            assert_eq!(fmt_g3(x), s, "{x}");
        }
    }
}
