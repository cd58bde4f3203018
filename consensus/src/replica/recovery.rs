//! Restart from what was persisted (DESIGN.md "Persistence"): the stable
//! checkpoint's snapshot, then re-execution of the batches known committed, then the
//! view and the accepted pre-prepares and prepared certificates, so that nothing
//! this replica signed before the crash is contradicted after it.

use super::Replica;
use crate::app::Application;
use crate::client_table::ReplicaSnapshot;
use crate::durable::{DurableState, PersistRecord};
use crate::io::{Output, Timer};
use crate::messages::{request_id, snapshot_digest, Batch, Commit, Message, PrePrepare};
use crate::new_view::{index, plan};
use crate::types::{ReplicaConfig, Seq};
use bft_crypto::{KeyPair, Signed};
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error("persisted snapshot at seq {seq} is unreadable: {reason}")]
    Snapshot { seq: Seq, reason: String },
    #[error("persisted new-view is incomplete: {0}")]
    NewView(String),
    #[error(
        "the store is empty, but this replica wrote to it before: its data directory was \
         lost, and starting afresh could contradict what it signed; restore the directory, \
         or retire this replica and give its place a new key"
    )]
    DataLost,
}

/// How many peers a restarted replica asks for a newer stable checkpoint.
const RECOVERY_FETCH_ATTEMPTS: usize = 3;

impl<A: Application> Replica<A> {
    /// A slot of our view that we had prepared before the crash: its certificate's
    /// prepares, and our commit again (signed before the crash, since the
    /// certificate is persisted before the commit leaves; deterministic, so sending
    /// it again contradicts nothing), so that we can vouch for the slot to a peer
    /// that lacks it. Without this a restart forgot every commit, and a laggard
    /// that missed them waited for the next checkpoint, which with no further load
    /// never came (adversarial family, seed 992, f=1).
    fn restore_commit(&mut self, seq: Seq, durable: &DurableState) {
        let Some((view, digest)) = self.log.get(&seq).and_then(|s| s.accepted()) else {
            return;
        };
        let Some(cert) = durable
            .prepared
            .get(&seq)
            .filter(|c| c.pre_prepare.payload.view == view && c.digest() == digest)
        else {
            return;
        };
        let prepares = cert.prepares.clone();
        let commit = self.sign(Commit {
            view,
            seq,
            digest,
            replica: self.me(),
        });
        let committed = durable.committed.get(&seq) == Some(&(view, digest));
        let slot = self.log.entry(seq).or_default();
        for p in prepares {
            slot.prepares.insert(p.payload.replica, p);
        }
        slot.prepared = true;
        slot.committed = committed;
        slot.commits.insert(commit.payload.replica, commit.clone());
        self.broadcast(Message::Commit(commit));
    }

    /// Before [`Replica::recover`] (or a fresh start): a replica that wrote to its
    /// store before (the node keeps a marker beside its data directory) and finds it
    /// empty has lost what it promised; it must not start and vote again as if new
    /// (it could contradict its own prepares, commits and view-changes).
    ///
    /// # Errors
    /// [`RecoveryError::DataLost`].
    pub fn check_not_wiped(
        durable: &DurableState,
        persisted_before: bool,
    ) -> Result<(), RecoveryError> {
        if persisted_before && *durable == DurableState::default() {
            return Err(RecoveryError::DataLost);
        }
        Ok(())
    }

    /// Rebuild a replica from its durable state. The returned outputs (re-sent
    /// messages, timers) must be performed like any others.
    ///
    /// # Errors
    /// If the persisted snapshot cannot be decoded or restored (disk corruption).
    pub fn recover(
        cfg: ReplicaConfig,
        key: KeyPair,
        app: A,
        durable: &DurableState,
        now: std::time::Duration,
    ) -> Result<(Self, Vec<Output>), RecoveryError> {
        let mut r = Self::new(cfg, key, app);
        r.now = now;
        if let Some(stable) = &durable.stable {
            let err = |reason: String| RecoveryError::Snapshot {
                seq: stable.seq,
                reason,
            };
            // The snapshot (a file of its own on the node) must be the state the
            // checkpoint's 2f+1 proof vouches for; a damaged one is never installed.
            if snapshot_digest(&stable.snapshot) != stable.digest {
                return Err(err(
                    "it does not match the stable checkpoint's digest".into()
                ));
            }
            let snap: ReplicaSnapshot =
                bft_crypto::decode(&stable.snapshot, usize::MAX).map_err(|e| err(e.to_string()))?;
            r.app.restore(&snap.app).map_err(|e| err(e.to_string()))?;
            r.clients = snap.clients;
            r.last_executed = stable.seq;
            r.stable = stable.clone();
        }
        // Re-execute what we know was committed, in order.
        let mut seq = r.last_executed + 1;
        while let Some((view, digest, batch)) = durable.committed_batch(seq) {
            r.execute(seq, view, digest, &batch);
            seq += 1;
        }
        // Replaying our own log says nothing of the current primary.
        r.executed_in_view_at = None;
        r.view = durable.view;
        r.changing = durable.changing;
        r.last_new_view = durable
            .new_view
            .clone()
            .filter(|(nv, _)| nv.payload.view == r.view && !r.changing);
        let mut new_view_slots = Vec::new();
        if let Some((nv, bodies)) = &durable.new_view {
            // The last view entered: its min-s again (proven stable, so it stays the
            // low water mark even if we are changing view now), and its state if we
            // lack it.
            let plan = plan(&nv.payload.view_changes, &index(bodies))
                .map_err(|d| RecoveryError::NewView(format!("batch {d:?} missing")))?;
            r.adopt_new_view_checkpoint(&plan);
            if r.last_new_view.is_some() {
                // And O, as the new-view fixed it, if that is our view: a crash between
                // persisting the new-view and its pre-prepares must not leave those
                // slots empty, or the primary would number new batches from min-s
                // again (simulator, seed 78, f=2).
                let o = plan
                    .entries
                    .into_iter()
                    .zip(nv.payload.pre_prepares.clone());
                new_view_slots = o.map(|((seq, _, batch), pp)| (seq, (pp, batch))).collect();
            }
        }
        r.read_floor = durable
            .committed
            .keys()
            .chain(durable.prepared.keys())
            .copied()
            .max()
            .unwrap_or(0);
        r.certs = durable
            .prepared
            .range(r.stable.seq + 1..)
            .map(|(s, c)| (*s, c.clone()))
            .collect();
        if !r.changing {
            let mut slots: BTreeMap<Seq, (Signed<PrePrepare>, Batch)> = durable
                .accepted
                .range(r.low_watermark() + 1..)
                .filter(|(_, (pp, _))| pp.payload.view == r.view)
                .map(|(s, v)| (*s, v.clone()))
                .collect();
            for (seq, (pp, batch)) in new_view_slots {
                if seq > r.low_watermark() && !slots.contains_key(&seq) {
                    r.emit(Output::Persist(PersistRecord::Accepted {
                        pre_prepare: pp.clone(),
                        batch: batch.clone(),
                    }));
                    slots.insert(seq, (pp, batch));
                }
            }
            for (seq, (pp, batch)) in slots {
                if seq > r.last_executed {
                    r.in_flight.extend(batch.requests.iter().map(request_id));
                }
                r.log.entry(seq).or_default().pre_prepare = Some((pp, batch));
                r.next_seq = r.next_seq.max(seq + 1);
                // Our prepare is deterministic: re-sending it contradicts nothing. But
                // not for a committed slot: it needs no prepare, and the pre-prepare on
                // disk may be one we learned the group committed while we had voted
                // for the primary's other one (`left_view`); a prepare for it would
                // contradict the one we sent (adversarial family, seed 814, f=2).
                let decided = durable.committed.contains_key(&seq);
                if !r.is_primary() && !decided {
                    r.send_prepare(seq);
                }
                r.restore_commit(seq, durable);
            }
            // Never below min-s: backups would refuse those (reviewed: a primary that
            // crashed while fetching min-s's state numbered from its own position).
            r.next_seq = r.next_seq.max(r.last_executed.max(r.low_watermark()) + 1);
        } else {
            match &durable.view_change {
                // Re-send the view-change we persisted (and perhaps sent) for this view.
                Some((vc, bodies)) if vc.payload.new_view == r.view => {
                    r.view_changes.insert(r.me(), (vc.clone(), bodies.clone()));
                    r.broadcast(Message::ViewChange(vc.clone(), bodies.clone()));
                    r.set_timer(Timer::ViewChange, r.cfg.view_change_timeout);
                }
                // We crashed between recording the view and sending its view-change:
                // none left, so sending one now contradicts nothing.
                _ => r.send_view_change(),
            }
        }
        // Ask a few peers whether a newer stable checkpoint exists.
        let peers: Vec<_> = r.cfg.members.ids().collect();
        r.begin_fetch(r.last_executed + 1, peers, Some(RECOVERY_FETCH_ATTEMPTS));
        // Heartbeats resume, and the failure detector watches peers from now.
        let mut out = Vec::new();
        r.start(now, &mut out);
        Ok((r, out))
    }
}
