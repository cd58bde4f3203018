//! The new primary's choice of pre-prepares for a new view (PBFT §4.4, TOCS §4.5.2),
//! as a pure function of the 2f+1 view-change messages. Backups run the same
//! function and accept the new-view only if its pre-prepares match.
//!
//! View-changes name batches by digest; the batches themselves travel beside the
//! signed messages, once each ([`crate::messages::Bodies`]). The plan picks digests
//! from `V`, then takes each chosen batch from the bodies at hand.

use crate::messages::{Batch, Bodies, Checkpoint, PreparedProof, ViewChange};
use crate::types::Seq;
use bft_crypto::{Digest, Signed};
use std::collections::BTreeMap;

/// Batches by digest, from bodies carried beside messages.
pub type BodyIndex = BTreeMap<Digest, Batch>;

/// Index `bodies` by digest (the validator has checked them; this only hashes).
#[must_use]
pub fn index<'a>(bodies: impl IntoIterator<Item = &'a Batch>) -> BodyIndex {
    bodies
        .into_iter()
        .map(|b| (b.digest(), b.clone()))
        .collect()
}

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

impl NewViewPlan {
    /// The bodies a new-view carries for this plan: each non-null batch once, in
    /// sequence order of first use.
    #[must_use]
    pub fn bodies(&self) -> Bodies {
        let mut seen = std::collections::BTreeSet::new();
        self.entries
            .iter()
            .filter(|(_, d, b)| !b.is_empty() && seen.insert(*d))
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

/// The certificate `plan` chooses at each seq above min-s.
fn choices(view_changes: &[Signed<ViewChange>]) -> (Seq, BTreeMap<Seq, &PreparedProof>) {
    let min_s = view_changes
        .iter()
        .map(|vc| vc.payload.stable_seq)
        .max()
        .unwrap_or(0);
    // For each seq above min-s, the certificate from the highest view. Two valid
    // certificates from the same view always agree (quorum intersection); the digest
    // tie-break only keeps the choice deterministic.
    let mut chosen: BTreeMap<Seq, &PreparedProof> = BTreeMap::new();
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
    (min_s, chosen)
}

/// Compute O from V, taking the chosen batches from `bodies`. `view_changes` must
/// already be validated.
///
/// # Errors
/// The digest of a chosen batch that `bodies` lacks.
pub fn plan(
    view_changes: &[Signed<ViewChange>],
    bodies: &BodyIndex,
) -> Result<NewViewPlan, Digest> {
    let best_stable = view_changes.iter().max_by_key(|vc| vc.payload.stable_seq);
    let checkpoint = best_stable
        .filter(|vc| vc.payload.stable_seq > 0)
        .and_then(|vc| {
            let digest = vc.payload.checkpoint_proof.first()?.payload.snapshot_digest;
            Some((digest, vc.payload.checkpoint_proof.clone()))
        });
    let (min_s, chosen) = choices(view_changes);
    let max_s = chosen.keys().next_back().copied().unwrap_or(min_s);
    let null = Batch::default();
    let null_digest = null.digest();
    let entries = (min_s + 1..=max_s)
        .map(|seq| match chosen.get(&seq) {
            Some(cert) if cert.digest() == null_digest => Ok((seq, null_digest, null.clone())),
            Some(cert) => {
                let batch = bodies.get(&cert.digest()).ok_or(cert.digest())?;
                Ok((seq, cert.digest(), batch.clone()))
            }
            None => Ok((seq, null_digest, null.clone())),
        })
        .collect::<Result<_, _>>()?;
    Ok(NewViewPlan {
        min_s,
        checkpoint,
        entries,
    })
}
