//! An eventually perfect failure detector (◇P, Chandra & Toueg 1996) built from
//! heartbeats and adaptive timeouts.
//!
//! A peer is suspected once nothing was heard from it for longer than its timeout.
//! When a suspected peer is heard from again the suspicion was false: it is
//! withdrawn and that peer's timeout grows. Once the network is stable (message
//! delays bounded, if unknown), each correct peer's timeout eventually exceeds the
//! real bound and false suspicions stop for good, while a crashed peer stays
//! suspected forever: strong completeness and eventual strong accuracy.

use crate::types::ReplicaId;
use std::collections::BTreeMap;
use std::time::Duration;

/// A change in what the detector believes about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Suspected(ReplicaId),
    Trusted(ReplicaId),
}

#[derive(Clone, Debug)]
struct Peer {
    /// When the peer was last heard from (or when watching began).
    last_heard: Duration,
    timeout: Duration,
    suspected: bool,
    false_suspicions: u32,
}

/// Per-peer timeouts that only grow on a false suspicion.
#[derive(Clone, Debug)]
pub struct EventuallyPerfect {
    peers: BTreeMap<ReplicaId, Peer>,
    /// Added to a peer's timeout each time it is found falsely suspected.
    increment: Duration,
    max_timeout: Duration,
}

impl EventuallyPerfect {
    /// Watch `peers` from `now`, each with `initial` as its timeout.
    #[must_use]
    pub fn new(
        peers: impl IntoIterator<Item = ReplicaId>,
        now: Duration,
        initial: Duration,
        increment: Duration,
        max_timeout: Duration,
    ) -> Self {
        let peers = peers
            .into_iter()
            .map(|p| {
                (
                    p,
                    Peer {
                        last_heard: now,
                        timeout: initial,
                        suspected: false,
                        false_suspicions: 0,
                    },
                )
            })
            .collect();
        Self {
            peers,
            increment,
            max_timeout: max_timeout.max(initial),
        }
    }

    /// `peer` is alive at `now`. Withdraws a suspicion (and lengthens its timeout).
    pub fn heard(&mut self, peer: ReplicaId, now: Duration) -> Option<Verdict> {
        let max = self.max_timeout;
        let increment = self.increment;
        let p = self.peers.get_mut(&peer)?;
        p.last_heard = p.last_heard.max(now);
        if !p.suspected {
            return None;
        }
        p.suspected = false;
        p.false_suspicions = p.false_suspicions.saturating_add(1);
        p.timeout = (p.timeout + increment).min(max);
        Some(Verdict::Trusted(peer))
    }

    /// Suspect every peer silent for longer than its timeout.
    pub fn check(&mut self, now: Duration) -> Vec<Verdict> {
        let mut out = Vec::new();
        for (id, p) in &mut self.peers {
            if !p.suspected && now.saturating_sub(p.last_heard) > p.timeout {
                p.suspected = true;
                out.push(Verdict::Suspected(*id));
            }
        }
        out
    }

    #[must_use]
    pub fn is_suspected(&self, peer: ReplicaId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.suspected)
    }

    pub fn suspected(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.suspected)
            .map(|(id, _)| *id)
    }

    #[must_use]
    pub fn timeout(&self, peer: ReplicaId) -> Option<Duration> {
        self.peers.get(&peer).map(|p| p.timeout)
    }

    /// The largest timeout over all peers: a bound that held for every peer so far.
    #[must_use]
    pub fn max_timeout(&self) -> Duration {
        self.peers
            .values()
            .map(|p| p.timeout)
            .max()
            .unwrap_or_default()
    }

    /// How often `peer` was suspected and then heard from again.
    #[must_use]
    pub fn false_suspicions(&self, peer: ReplicaId) -> u32 {
        self.peers.get(&peer).map_or(0, |p| p.false_suspicions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detector() -> EventuallyPerfect {
        EventuallyPerfect::new([1, 2], Duration::ZERO, 100 * MS, 50 * MS, 1000 * MS)
    }

    #[test]
    fn silence_longer_than_the_timeout_is_suspected() {
        let mut d = detector();
        assert!(
            d.check(100 * MS).is_empty(),
            "exactly the timeout is not late"
        );
        d.heard(2, 90 * MS);
        assert_eq!(d.check(101 * MS), vec![Verdict::Suspected(1)]);
        assert!(d.check(150 * MS).is_empty(), "suspected once, not again");
        assert!(d.is_suspected(1) && !d.is_suspected(2));
    }

    #[test]
    fn a_false_suspicion_is_withdrawn_and_the_timeout_grows() {
        let mut d = detector();
        d.check(150 * MS);
        assert_eq!(d.heard(1, 160 * MS), Some(Verdict::Trusted(1)));
        assert_eq!(d.timeout(1), Some(150 * MS));
        assert_eq!(d.false_suspicions(1), 1);
        assert_eq!(d.heard(1, 170 * MS), None, "only a withdrawal is reported");
        // The longer timeout now tolerates a 140 ms gap.
        assert!(d
            .check(310 * MS)
            .iter()
            .all(|v| *v != Verdict::Suspected(1)));
    }

    #[test]
    fn timeouts_are_capped() {
        let mut d = detector();
        let mut now = Duration::ZERO;
        for _ in 0..100 {
            now += 2000 * MS;
            d.check(now);
            d.heard(1, now);
        }
        assert_eq!(d.timeout(1), Some(1000 * MS));
        assert_eq!(d.max_timeout(), 1000 * MS);
    }

    #[test]
    fn unknown_peers_are_ignored() {
        let mut d = detector();
        assert_eq!(d.heard(9, MS), None);
        assert_eq!(d.timeout(9), None);
    }
}
