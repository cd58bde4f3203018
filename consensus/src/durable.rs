//! What a replica must not forget across a crash, and how it is folded into the
//! state a restarted replica starts from.
//!
//! The replica emits [`PersistRecord`]s; a driver makes each durable before the
//! next message leaves, and on restart hands back the [`DurableState`] obtained by
//! applying them in order. The simulator keeps one in memory; the node keeps one in
//! RocksDB. Either way the replica recovers through [`crate::Replica::recover`].

use crate::messages::{Batch, Bodies, Checkpoint, NewView, PrePrepare, PreparedCert, ViewChange};
use crate::types::{Seq, View};
use bft_crypto::{Digest, Signed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A stable checkpoint: the state after `seq`, its digest, and the 2f+1 signed
/// checkpoint messages that prove it (§4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableCheckpoint {
    pub seq: Seq,
    pub digest: Digest,
    pub proof: Vec<Signed<Checkpoint>>,
    /// The encoded replica state (application + client table) at `seq`: shared by
    /// the replica, its durable records and the state it serves, never copied (a
    /// snapshot is megabytes; issue 13 found six copies of it per checkpoint).
    #[serde(with = "bft_crypto::bytes::shared")]
    pub snapshot: Arc<Vec<u8>>,
}

/// One thing to make durable before the next send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistRecord {
    /// The view the replica is in (or changing to). Never decreases.
    View { view: View, changing: bool },
    /// A pre-prepare this replica accepted (and will prepare) or, as primary, issued.
    /// After a restart it must not accept or issue another digest for (view, seq).
    Accepted {
        pre_prepare: Signed<PrePrepare>,
        batch: Batch,
    },
    /// This replica is prepared (it is about to send a commit); a later view change
    /// must carry this certificate.
    Prepared(PreparedCert),
    /// (seq, digest) is committed-local; the batch is in `Accepted`/`Prepared`.
    /// Lets a restarted replica re-execute without asking its peers.
    Committed {
        seq: Seq,
        view: View,
        digest: Digest,
    },
    /// The view-change message this replica sent, with the batches beside it.
    ViewChangeSent(Signed<ViewChange>, Bodies),
    /// The new-view that started the view this replica entered. Kept so that after a
    /// restart it can still relay it to a replica that missed it (see
    /// `replica::retransmit`): the primary that signed it may have moved on.
    NewViewEntered(Signed<NewView>, Bodies),
    /// A new stable checkpoint; everything at or below `seq` may be discarded.
    Stable(StableCheckpoint),
}

/// The folded form of every record persisted so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    pub view: View,
    pub changing: bool,
    pub stable: Option<StableCheckpoint>,
    pub accepted: BTreeMap<Seq, (Signed<PrePrepare>, Batch)>,
    pub prepared: BTreeMap<Seq, PreparedCert>,
    pub committed: BTreeMap<Seq, (View, Digest)>,
    pub view_change: Option<(Signed<ViewChange>, Bodies)>,
    pub new_view: Option<(Signed<NewView>, Bodies)>,
}

impl DurableState {
    fn stable_seq(&self) -> Seq {
        self.stable.as_ref().map_or(0, |s| s.seq)
    }

    /// Fold one record in. Idempotent and order-tolerant where it can be: a record
    /// for an older view never overwrites one for a newer view.
    pub fn apply(&mut self, record: &PersistRecord) {
        match record {
            PersistRecord::View { view, changing } => {
                if *view > self.view || (*view == self.view && !changing) {
                    self.view = *view;
                    self.changing = *changing;
                }
            }
            PersistRecord::Accepted { pre_prepare, batch } => {
                let seq = pre_prepare.payload.seq;
                if seq > self.stable_seq() {
                    let newer = self
                        .accepted
                        .get(&seq)
                        .is_none_or(|(pp, _)| pp.payload.view <= pre_prepare.payload.view);
                    if newer {
                        self.accepted
                            .insert(seq, (pre_prepare.clone(), batch.clone()));
                    }
                }
            }
            PersistRecord::Prepared(cert) => {
                if cert.seq() > self.stable_seq()
                    && self
                        .prepared
                        .get(&cert.seq())
                        .is_none_or(|c| c.view() <= cert.view())
                {
                    self.prepared.insert(cert.seq(), cert.clone());
                }
            }
            PersistRecord::Committed { seq, view, digest } => {
                if *seq > self.stable_seq() {
                    self.committed.insert(*seq, (*view, *digest));
                }
            }
            PersistRecord::ViewChangeSent(vc, bodies) => {
                if self
                    .view_change
                    .as_ref()
                    .is_none_or(|(old, _)| old.payload.new_view <= vc.payload.new_view)
                {
                    self.view_change = Some((vc.clone(), bodies.clone()));
                }
            }
            PersistRecord::NewViewEntered(nv, bodies) => {
                if self
                    .new_view
                    .as_ref()
                    .is_none_or(|(old, _)| old.payload.view <= nv.payload.view)
                {
                    self.new_view = Some((nv.clone(), bodies.clone()));
                }
            }
            PersistRecord::Stable(cp) => {
                if cp.seq > self.stable_seq() {
                    let seq = cp.seq;
                    self.stable = Some(cp.clone());
                    self.accepted.retain(|s, _| *s > seq);
                    self.prepared.retain(|s, _| *s > seq);
                    self.committed.retain(|s, _| *s > seq);
                }
            }
        }
    }

    /// The batch committed at `seq`, if this state knows both the decision and the batch.
    #[must_use]
    pub fn committed_batch(&self, seq: Seq) -> Option<(View, Digest, Batch)> {
        let (view, digest) = *self.committed.get(&seq)?;
        if let Some((pp, batch)) = self.accepted.get(&seq) {
            if pp.payload.digest == digest {
                return Some((view, digest, batch.clone()));
            }
        }
        let cert = self.prepared.get(&seq)?;
        (cert.digest() == digest).then(|| (view, digest, cert.batch.clone()))
    }
}
