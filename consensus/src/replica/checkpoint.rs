//! Checkpoints and garbage collection (OSDI'99 §4.3).

use super::{encode_snapshot_into, Replica};
use crate::app::Application;
use crate::durable::{PersistRecord, StableCheckpoint};
use crate::io::Output;
use crate::messages::{snapshot_digest, Checkpoint, Message};
use crate::types::Seq;
use bft_crypto::{Digest, Signed, Verified};
use std::collections::BTreeMap;

impl<A: Application> Replica<A> {
    /// After executing a multiple of K: snapshot the state, multicast its digest.
    pub(super) fn take_checkpoint(&mut self, seq: Seq) {
        // The retired buffer if it is ours alone by now; else a fresh one.
        let buf = self
            .retired_snapshot
            .take()
            .and_then(std::sync::Arc::into_inner)
            .unwrap_or_default();
        let snapshot = encode_snapshot_into(&self.app, &self.clients, buf);
        let digest = snapshot_digest(&snapshot);
        self.own_checkpoints
            .insert(seq, (digest, std::sync::Arc::new(snapshot)));
        let cp = self.sign(Checkpoint {
            seq,
            snapshot_digest: digest,
            replica: self.me(),
        });
        self.record_checkpoint_vote(cp.clone());
        self.broadcast(Message::Checkpoint(cp));
        self.check_stable(seq);
    }

    pub(super) fn on_checkpoint(&mut self, c: Verified<Checkpoint>) {
        let seq = c.seq;
        if seq <= self.stable.seq {
            return;
        }
        self.record_checkpoint_vote(c.into_signed());
        self.check_stable(seq);
    }

    /// Keep each replica's checkpoint votes above the low water mark, at most enough
    /// to cover one window (so a lagging replica still sees checkpoints beyond its
    /// high water mark, and a faulty one cannot grow our memory).
    fn record_checkpoint_vote(&mut self, c: Signed<Checkpoint>) {
        let replica = c.payload.replica;
        let limit = (self.cfg.params.window / self.cfg.params.checkpoint_interval) as usize + 2;
        self.checkpoint_votes
            .entry(c.payload.seq)
            .or_default()
            .insert(replica, c);
        let mine: Vec<Seq> = self
            .checkpoint_votes
            .iter()
            .filter(|(_, v)| v.contains_key(&replica))
            .map(|(s, _)| *s)
            .collect();
        if mine.len() > limit {
            let oldest = mine[0];
            if let Some(votes) = self.checkpoint_votes.get_mut(&oldest) {
                votes.remove(&replica);
            }
        }
    }

    /// A checkpoint is stable once 2f+1 replicas signed the same digest for it.
    fn check_stable(&mut self, seq: Seq) {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: BTreeMap<Digest, Vec<Signed<Checkpoint>>> = BTreeMap::new();
        for v in votes.values() {
            by_digest
                .entry(v.payload.snapshot_digest)
                .or_default()
                .push(v.clone());
        }
        let quorum = self.quorum();
        if let Some((digest, proof)) = by_digest.into_iter().find(|(_, p)| p.len() >= quorum) {
            self.adopt_stable(seq, digest, proof.into_iter().take(quorum).collect());
        }
    }

    /// A proven checkpoint at `seq`. If our own state there matches, it becomes our
    /// stable checkpoint; otherwise we are behind (or diverged) and fetch the state.
    pub(super) fn adopt_stable(
        &mut self,
        seq: Seq,
        digest: Digest,
        proof: Vec<Signed<Checkpoint>>,
    ) {
        if seq <= self.stable.seq {
            return;
        }
        match self.own_checkpoints.get(&seq) {
            Some((own, snapshot)) if *own == digest => {
                let snapshot = snapshot.clone();
                let cp = StableCheckpoint {
                    seq,
                    digest,
                    proof,
                    snapshot,
                };
                self.install_stable(cp, Written::Apart);
            }
            _ => self.start_fetch(seq, proof.iter().map(|c| c.payload.replica).collect()),
        }
    }

    /// Make `cp` the stable checkpoint: persist it, then discard everything at or
    /// below it and move the window.
    pub(super) fn install_stable(&mut self, cp: StableCheckpoint, written: Written) {
        let (seq, digest) = (cp.seq, cp.digest);
        // Invariants: the stable checkpoint only moves forward, and our state is at
        // least there (we executed up to it, or just installed its snapshot).
        assert!(
            seq > self.stable.seq,
            "stable checkpoint {seq} does not move past {}",
            self.stable.seq
        );
        assert!(
            self.last_executed >= seq,
            "stable checkpoint {seq} above our execution at {}",
            self.last_executed
        );
        let record = PersistRecord::Stable(cp.clone());
        self.emit(match written {
            Written::Apart => Output::PersistApart(record),
            Written::BeforeNextSend => Output::Persist(record),
        });
        self.emit(Output::CheckpointStable { seq, digest });
        let replaced = std::mem::replace(&mut self.stable, cp);
        self.retired_snapshot = Some(replaced.snapshot);
        // The state reply served for the replaced checkpoint is never sent again
        // (it is served only for the stable one), and it would keep the retired
        // buffer from being taken back.
        self.signed_state = None;
        self.log.retain(|s, _| *s > seq);
        self.certs.retain(|s, _| *s > seq);
        self.checkpoint_votes.retain(|s, _| *s > seq);
        self.own_checkpoints.retain(|s, _| *s > seq);
        self.forget_left_views_upto(seq);
        self.settled.retain(|s, _| *s > seq);
        self.next_seq = self.next_seq.max(seq + 1);
        self.try_propose(false);
    }
}

/// How a new stable checkpoint must reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// Our own state at a checkpoint we executed up to: every committed batch below it
    /// is on disk until the checkpoint lands, so a crash before then restarts from
    /// the older one and re-executes to where we were. It may be written apart (its
    /// snapshot is the whole state; no message should wait for it).
    Apart,
    /// State fetched from a peer: the log below it was never on disk, so a crash
    /// before it lands would restart us behind what we have since executed and
    /// signed (issue 11, defect 4). It is durable before anything we send next.
    BeforeNextSend,
}
