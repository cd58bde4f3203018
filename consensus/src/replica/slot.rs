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

/// Keep the newest vote per replica. Two different digests from one replica in one
/// view is equivocation: refused and reported.
pub(crate) fn insert_vote<T: Vote + Clone>(
    votes: &mut BTreeMap<ReplicaId, Signed<T>>,
    vote: Signed<T>,
    seq: u64,
) -> Result<bool, Rejection> {
    let p = &vote.payload;
    match votes.get(&p.replica()) {
        Some(old) if old.payload.view() > p.view() => Ok(false),
        Some(old) if old.payload.view() == p.view() => {
            if old.payload.digest() == p.digest() {
                Ok(false)
            } else {
                Err(Rejection::Equivocation {
                    replica: p.replica(),
                    view: p.view(),
                    seq,
                })
            }
        }
        _ => {
            votes.insert(p.replica(), vote);
            Ok(true)
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
        self.committed = false;
    }

    /// (view, digest) of the accepted pre-prepare.
    pub fn accepted(&self) -> Option<(View, Digest)> {
        self.pre_prepare
            .as_ref()
            .map(|(pp, _)| (pp.payload.view, pp.payload.digest))
    }
}
