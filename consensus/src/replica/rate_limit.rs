//! Answers that cost much (a whole state snapshot, a new-view with its batches) at
//! most once per peer per interval, however often the peer asks. A faulty replica
//! replaying its fetch-state or view-change would otherwise turn each small signed
//! message of its own into megabytes from us (issue 11, defect 7).

use crate::types::ReplicaId;
use std::collections::BTreeMap;
use std::time::Duration;

/// What each peer was last answered (which checkpoint, which view) and when; one
/// entry per replica of the group at most.
#[derive(Clone, Debug, Default)]
pub(crate) struct PerPeer {
    last: BTreeMap<ReplicaId, (u64, Duration)>,
}

impl PerPeer {
    /// Whether `peer` may be sent `what` at `now`: something newer than it was last
    /// sent goes at once, the same again only after `gap`. If so, it is counted.
    pub fn allow(&mut self, peer: ReplicaId, what: u64, now: Duration, gap: Duration) -> bool {
        if self
            .last
            .get(&peer)
            .is_some_and(|(sent, at)| what <= *sent && now < at.saturating_add(gap))
        {
            return false;
        }
        self.last.insert(peer, (what, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_answer_once_per_gap_per_peer_and_a_newer_one_at_once() {
        let mut p = PerPeer::default();
        let gap = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert!(p.allow(1, 8, ms(0), gap));
        assert!(!p.allow(1, 8, ms(99), gap));
        assert!(
            p.allow(2, 8, ms(99), gap),
            "another peer has its own budget"
        );
        assert!(
            p.allow(1, 16, ms(99), gap),
            "a newer checkpoint goes at once"
        );
        assert!(!p.allow(1, 16, ms(150), gap));
        assert!(p.allow(1, 16, ms(199), gap));
    }
}
