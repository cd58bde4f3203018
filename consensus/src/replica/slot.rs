//! One sequence number's entry in the message log, with the paper's predicates
//! `prepared(m, v, n, i)` and `committed-local(m, v, n, i)` (OSDI'99 §4.2).

use crate::messages::{Batch, Commit, PrePrepare, Prepare};
use crate::rejection::Rejection;
use crate::types::{ReplicaId, View};
use bft_crypto::{Digest, Signed};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    /// The pre-prepare accepted in the current view, with its batch.
    pub pre_prepare: Option<(Signed<PrePrepare>, Batch)>,
    /// The latest prepare from each replica (any view at or above ours: prepares for
    /// a view we have not entered yet are kept, not dropped).
    pub prepares: BTreeMap<ReplicaId, Signed<Prepare>>,
    pub commits: BTreeMap<ReplicaId, Signed<Commit>>,
    /// Commit sent for the accepted pre-prepare (`prepared` became true).
    pub prepared: bool,
    /// `committed-local` became true for the accepted pre-prepare.
    pub committed: bool,
    /// Whether the accepted batch's client signatures proved valid when checked
    /// here before relaying it (only for a batch taken unchecked, see
    /// `retransmit`); None until then.
    pub requests_valid: Option<bool>,
}

/// A vote that carries (view, digest, replica), so prepares and commits share code.
pub(crate) trait Vote {
    fn view(&self) -> View;
    fn digest(&self) -> Digest;
    fn replica(&self) -> ReplicaId;
}

macro_rules! vote {
    ($t:ty) => {
        impl Vote for $t {
            fn view(&self) -> View {
                self.view
            }
            fn digest(&self) -> Digest {
                self.digest
            }
            fn replica(&self) -> ReplicaId {
                self.replica
            }
        }
    };
}
vote!(Prepare);
vote!(Commit);

/// What storing a vote did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The votes changed: the quorum it counts towards may now be complete.
    pub changed: bool,
    /// The voter signed two digests in one view: to report.
    pub equivocation: Option<Rejection>,
}

/// Keep the newest vote per replica. Two different digests from one replica in one
/// view is equivocation, reported; of the two, the one for `accepted` (the digest
/// of the pre-prepare this replica accepted in that view, if any) is kept, else the
/// first. A faulty replica's signature counts in a certificate however many others
/// it signed (quorums intersect in a correct replica all the same), and the vote
/// for what we accepted is the one that can complete ours: keeping the first
/// instead, the one for another digest, could leave us one vote short for good
/// (adversarial seed 746, f=1, `--byzantine 0=wrong-digest`: two correct replicas
/// each held the faulty primary's commit for a random digest, refused the one for
/// the committed batch that a third replica relayed, and never committed seq 45).
pub(crate) fn insert_vote<T: Vote + Clone>(
    votes: &mut BTreeMap<ReplicaId, Signed<T>>,
    vote: Signed<T>,
    seq: u64,
    accepted: Option<(View, Digest)>,
) -> Stored {
    let p = &vote.payload;
    let stored = |changed| Stored {
        changed,
        equivocation: None,
    };
    match votes.get(&p.replica()) {
        Some(old) if old.payload.view() > p.view() => stored(false),
        Some(old) if old.payload.view() == p.view() => {
            if old.payload.digest() == p.digest() {
                return stored(false);
            }
            let equivocation = Some(Rejection::Equivocation {
                replica: p.replica(),
                view: p.view(),
                seq,
            });
            let wanted = accepted == Some((p.view(), p.digest()));
            if wanted {
                votes.insert(p.replica(), vote);
            }
            Stored {
                changed: wanted,
                equivocation,
            }
        }
        _ => {
            votes.insert(p.replica(), vote);
            stored(true)
        }
    }
}

/// Votes matching (view, digest), excluding `exclude` (the primary, for prepares).
pub(crate) fn matching<T: Vote + Clone>(
    votes: &BTreeMap<ReplicaId, Signed<T>>,
    view: View,
    digest: Digest,
    exclude: Option<ReplicaId>,
) -> Vec<Signed<T>> {
    votes
        .values()
        .filter(|v| {
            v.payload.view() == view
                && v.payload.digest() == digest
                && Some(v.payload.replica()) != exclude
        })
        .cloned()
        .collect()
}

impl Slot {
    /// Forget the previous view's decision; keep buffered votes.
    pub fn reset_for_new_view(&mut self) {
        self.pre_prepare = None;
        self.prepared = false;
        self.requests_valid = None;
        self.committed = false;
    }

    /// (view, digest) of the accepted pre-prepare.
    pub fn accepted(&self) -> Option<(View, Digest)> {
        self.pre_prepare
            .as_ref()
            .map(|(pp, _)| (pp.payload.view, pp.payload.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_crypto::KeyPair;

    fn commit(digest: u8) -> Signed<Commit> {
        let key = KeyPair::from_seed([7; 32]);
        Signed::sign(
            Commit {
                view: 0,
                seq: 45,
                digest: Digest([digest; 32]),
                replica: 0,
            },
            &key,
        )
    }

    #[test]
    fn of_two_votes_from_one_replica_the_one_for_the_accepted_digest_is_kept() {
        let accepted = Some((0, Digest([1; 32])));
        let mut votes = BTreeMap::new();
        assert!(insert_vote(&mut votes, commit(9), 45, accepted).changed);
        // The second, for the batch we accepted, replaces the first and is reported.
        let second = insert_vote(&mut votes, commit(1), 45, accepted);
        assert!(second.changed);
        assert!(matches!(
            second.equivocation,
            Some(Rejection::Equivocation {
                replica: 0,
                view: 0,
                seq: 45
            })
        ));
        assert_eq!(matching(&votes, 0, Digest([1; 32]), None).len(), 1);
        // A third, for yet another digest, is reported and changes nothing.
        let third = insert_vote(&mut votes, commit(5), 45, accepted);
        assert!(!third.changed && third.equivocation.is_some());
        assert_eq!(matching(&votes, 0, Digest([1; 32]), None).len(), 1);
    }

    #[test]
    fn with_nothing_accepted_the_first_vote_stays() {
        let mut votes = BTreeMap::new();
        assert!(insert_vote(&mut votes, commit(9), 45, None).changed);
        let second = insert_vote(&mut votes, commit(1), 45, None);
        assert!(!second.changed && second.equivocation.is_some());
        assert_eq!(matching(&votes, 0, Digest([9; 32]), None).len(), 1);
        assert!(!insert_vote(&mut votes, commit(9), 45, None).changed);
    }
}
