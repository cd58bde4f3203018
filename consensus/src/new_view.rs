//! The new primary's choice of pre-prepares for a new view (PBFT §4.4, TOCS §4.5.2),
//! as a pure function of the 2f+1 view-change messages. Backups run the same
//! function and accept the new-view only if its pre-prepares match.

use crate::messages::{Batch, Checkpoint, PreparedCert, ViewChange};
use crate::types::Seq;
use bft_crypto::{Digest, Signed};
use std::collections::BTreeMap;

/// What the new view starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// min-s: the latest stable checkpoint in V.
    pub min_s: Seq,
    /// Its digest and 2f+1 proof (None for the genesis checkpoint at 0).
    pub checkpoint: Option<(Digest, Vec<Signed<Checkpoint>>)>,
    /// One entry for every seq in (min-s, max-s]: the batch prepared in the highest
    /// view at that seq, or the null request (empty batch) if none was.
    pub entries: Vec<(Seq, Digest, Batch)>,
}

/// Compute O from V. `view_changes` must already be validated.
#[must_use]
pub fn plan(view_changes: &[Signed<ViewChange>]) -> NewViewPlan {
    let best_stable = view_changes.iter().max_by_key(|vc| vc.payload.stable_seq);
    let min_s = best_stable.map_or(0, |vc| vc.payload.stable_seq);
    let checkpoint = best_stable
        .filter(|vc| vc.payload.stable_seq > 0)
        .and_then(|vc| {
            let digest = vc.payload.checkpoint_proof.first()?.payload.state_digest;
            Some((digest, vc.payload.checkpoint_proof.clone()))
        });

    // For each seq above min-s, the certificate from the highest view. Two valid
    // certificates from the same view always agree (quorum intersection); the digest
    // tie-break only keeps the choice deterministic.
    let mut chosen: BTreeMap<Seq, &PreparedCert> = BTreeMap::new();
    for vc in view_changes {
        for cert in vc.payload.prepared.iter().filter(|c| c.seq() > min_s) {
            let better = chosen
                .get(&cert.seq())
                .is_none_or(|old| (cert.view(), cert.digest()) > (old.view(), old.digest()));
            if better {
                chosen.insert(cert.seq(), cert);
            }
        }
    }
    let max_s = chosen.keys().next_back().copied().unwrap_or(min_s);
    let entries = (min_s + 1..=max_s)
        .map(|seq| match chosen.get(&seq) {
            Some(cert) => (seq, cert.digest(), cert.batch.clone()),
            None => {
                let null = Batch::default();
                (seq, null.digest(), null)
            }
        })
        .collect();
    NewViewPlan {
        min_s,
        checkpoint,
        entries,
    }
}
