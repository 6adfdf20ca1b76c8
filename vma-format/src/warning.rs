//! Warnings: shapes no correct writer produces but Proxmox's reader restores.
//!
//! Owns [`Warning`], what both readers record when they accept such a shape
//! (spec §12 c, d) instead of refusing an archive `qmrestore` would restore,
//! and [`per_device`], the one line per device a command prints for them.

use std::fmt;

use crate::error::Name;

/// What was tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// A mask-0 cluster at or past `ceil(size / 65536)` but inside Proxmox's
    /// cluster bitmap (spec §11.3): it describes zeros past the device end,
    /// which are not restored.
    ClusterPastEnd {
        /// The cluster number.
        cluster: u32,
    },
    /// The final partial cluster stored with mask `0xFFFF`: `blocks` of its
    /// 4 KiB blocks start at or past the device end; their bytes are read
    /// over and never restored.
    BlocksPastEnd {
        /// The cluster number.
        cluster: u32,
        /// How many stored blocks lie wholly past the end.
        blocks: u32,
    },
}

/// One tolerated oddity, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The device concerned.
    pub dev_id: u8,
    /// Its name.
    pub name: Name,
    /// What was tolerated.
    pub kind: WarningKind,
    /// Absolute archive byte offset of the blockinfo entry (spec §12 f).
    pub offset: u64,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WarningKind::ClusterPastEnd { cluster } => write!(
                f,
                "zero cluster {cluster} lies past the end of {} (blockinfo at byte offset {}); ignored",
                self.name, self.offset
            ),
            WarningKind::BlocksPastEnd { cluster, blocks } => write!(
                f,
                "final cluster {cluster} of {} stores {blocks} block(s) past the device end (blockinfo at byte offset {}); only bytes up to the device size are used",
                self.name, self.offset
            ),
        }
    }
}

impl Warning {
    /// A short machine-readable kind: `cluster_past_end` or `blocks_past_end`.
    pub fn kind_str(&self) -> &'static str {
        match self.kind {
            WarningKind::ClusterPastEnd { .. } => "cluster_past_end",
            WarningKind::BlocksPastEnd { .. } => "blocks_past_end",
        }
    }

    /// The cluster concerned.
    pub fn cluster(&self) -> u32 {
        match self.kind {
            WarningKind::ClusterPastEnd { cluster }
            | WarningKind::BlocksPastEnd { cluster, .. } => cluster,
        }
    }
}

/// One line per device summarizing its warnings, in dev_id order: `(dev_id,
/// "NAME: …")`. Commands print each as `vma: warning: <line>`.
pub fn per_device(warnings: &[Warning]) -> Vec<(u8, String)> {
    let mut ids: Vec<u8> = warnings.iter().map(|w| w.dev_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let mine: Vec<&Warning> = warnings.iter().filter(|w| w.dev_id == id).collect();
            let mut parts = Vec::new();
            let past: Vec<&&Warning> = mine
                .iter()
                .filter(|w| matches!(w.kind, WarningKind::ClusterPastEnd { .. }))
                .collect();
            if let Some(first) = past.first() {
                parts.push(format!(
                    "{} zero cluster(s) past the device end ignored (first: cluster {}, blockinfo at byte offset {})",
                    past.len(),
                    first.cluster(),
                    first.offset
                ));
            }
            for w in &mine {
                if let WarningKind::BlocksPastEnd { cluster, blocks } = w.kind {
                    parts.push(format!(
                        "final cluster {cluster} stores {blocks} block(s) past the device end, not restored (blockinfo at byte offset {})",
                        w.offset
                    ));
                }
            }
            (
                id,
                format!(
                    "{}: {} (no correct writer produces this; Proxmox restores it the same way)",
                    mine[0].name,
                    parts.join("; ")
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_device() {
        let w = |dev_id: u8, kind, offset| Warning {
            dev_id,
            name: Name(format!("d{dev_id}").into_bytes()),
            kind,
            offset,
        };
        let lines = per_device(&[
            w(2, WarningKind::ClusterPastEnd { cluster: 5 }, 100),
            w(
                1,
                WarningKind::BlocksPastEnd {
                    cluster: 3,
                    blocks: 15,
                },
                50,
            ),
            w(2, WarningKind::ClusterPastEnd { cluster: 6 }, 108),
        ]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0, 1);
        assert!(
            lines[0]
                .1
                .starts_with("d1: final cluster 3 stores 15 block(s)"),
            "{}",
            lines[0].1
        );
        assert!(
            lines[1].1.starts_with(
                "d2: 2 zero cluster(s) past the device end ignored (first: cluster 5, blockinfo at byte offset 100)"
            ),
            "{}",
            lines[1].1
        );
    }
}
