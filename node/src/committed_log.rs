//! `GET /committed`: the sequence numbers and batch digests this replica executed
//! since it started, the newest [`CAPACITY`] of them. Fault drills and operators
//! compare replicas with it: where two honest replicas both list a sequence number
//! they must list the same batch (the committed logs are prefixes of one another).
//!
//! Kept in memory only: a restarted replica lists what it executed since (replayed
//! from its log or executed anew), and a replica that installed a peer's snapshot
//! has a gap where it skipped ahead. Both are fine for the comparison, which looks
//! at the numbers two replicas share.

use bft_crypto::Digest;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Entries kept: at 23 requests per batch about 1.5 million requests' worth, in
/// about 2.5 MiB.
pub const CAPACITY: usize = 1 << 16;
/// Entries one answer carries at most.
pub const MAX_PAGE: usize = 10_000;

/// One executed batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedEntry {
    pub seq: u64,
    /// Hex digest of the batch.
    pub digest: String,
}

/// One answer of `GET /committed?from=S&limit=N`: the entries with `seq >= from`,
/// oldest first, at most `limit` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedPage {
    /// The oldest and newest sequence numbers held (null when none).
    pub oldest: Option<u64>,
    pub newest: Option<u64>,
    pub entries: Vec<CommittedEntry>,
}

/// The bounded record behind the route.
#[derive(Debug, Default)]
pub struct CommittedLog {
    entries: VecDeque<(u64, Digest)>,
}

impl CommittedLog {
    /// Record an executed batch; the oldest entry makes room once [`CAPACITY`]
    /// are held.
    ///
    /// # Panics
    /// If `seq` does not follow the last one recorded: a replica executes in
    /// sequence order, so anything else is a bug.
    pub fn record(&mut self, seq: u64, digest: Digest) {
        if let Some((last, _)) = self.entries.back() {
            assert!(
                seq > *last,
                "executed seq {seq} after seq {last}: execution went backwards"
            );
        }
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back((seq, digest));
    }

    /// The entries from `from` on, at most `limit` (capped at [`MAX_PAGE`]).
    #[must_use]
    pub fn page(&self, from: u64, limit: usize) -> CommittedPage {
        let start = self.entries.partition_point(|(s, _)| *s < from);
        CommittedPage {
            oldest: self.entries.front().map(|(s, _)| *s),
            newest: self.entries.back().map(|(s, _)| *s),
            entries: self
                .entries
                .range(start..)
                .take(limit.min(MAX_PAGE))
                .map(|(seq, d)| CommittedEntry {
                    seq: *seq,
                    digest: d.to_hex(),
                })
                .collect(),
        }
    }
}

/// Where two replicas' pages disagree: the first sequence number both list with
/// different batches, if any.
#[must_use]
pub fn first_divergence(a: &[CommittedEntry], b: &[CommittedEntry]) -> Option<u64> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].seq.cmp(&b[j].seq) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                if a[i].digest != b[j].digest {
                    return Some(a[i].seq);
                }
                i += 1;
                j += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x: u8) -> Digest {
        bft_crypto::sha256(&[x])
    }

    #[test]
    fn pages_start_at_from_and_stop_at_limit() {
        let mut log = CommittedLog::default();
        for s in [1, 2, 3, 7, 8] {
            log.record(s, d(s as u8));
        }
        let p = log.page(3, 2);
        assert_eq!((p.oldest, p.newest), (Some(1), Some(8)));
        let seqs: Vec<u64> = p.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 7]);
        assert_eq!(p.entries[0].digest, d(3).to_hex());
        assert!(log.page(9, 10).entries.is_empty());
        assert_eq!(log.page(4, 10).entries[0].seq, 7);
    }

    #[test]
    fn the_oldest_entry_makes_room_and_pages_are_capped() {
        let mut log = CommittedLog::default();
        for s in 1..=(CAPACITY as u64 + 5) {
            log.record(s, d(0));
        }
        let p = log.page(0, usize::MAX);
        assert_eq!(p.oldest, Some(6));
        assert_eq!(p.entries.len(), MAX_PAGE);
        assert_eq!(p.entries[0].seq, 6);
    }

    #[test]
    #[should_panic(expected = "execution went backwards")]
    fn executing_backwards_is_a_bug() {
        let mut log = CommittedLog::default();
        log.record(5, d(5));
        log.record(5, d(6));
    }

    #[test]
    fn divergence_is_found_only_where_both_list_a_seq() {
        let e = |seq, x| CommittedEntry {
            seq,
            digest: d(x).to_hex(),
        };
        let a = [e(1, 1), e(2, 2), e(4, 4)];
        // A gap (state transfer) and a shorter log are no divergence.
        assert_eq!(first_divergence(&a, &[e(1, 1), e(4, 4), e(5, 5)]), None);
        assert_eq!(first_divergence(&a, &[e(2, 2)]), None);
        assert_eq!(first_divergence(&a, &[e(2, 2), e(4, 9)]), Some(4));
        assert_eq!(first_divergence(&[e(3, 3), e(4, 4)], &a), None);
    }
}
