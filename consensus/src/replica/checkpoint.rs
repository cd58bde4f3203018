//! Checkpoints and garbage collection (OSDI'99 §4.3).

use super::Replica;
use crate::app::Application;
use crate::durable::{PersistRecord, StableCheckpoint};
use crate::io::Output;
use crate::messages::{Checkpoint, Message};
use crate::snapshot_job::{SnapshotJob, SnapshotTaken};
use crate::types::Seq;
use bft_crypto::{Digest, Signed, Verified};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One of our own checkpoints above the stable one.
#[derive(Debug)]
pub(crate) enum OwnCheckpoint {
    /// Its state is captured and its job is with the driver: we have not signed
    /// it yet. A proof of it that arrived meanwhile waits here (the first one:
    /// every valid proof of a sequence number has one digest, as 2f+1 signers
    /// include an honest one).
    Pending {
        proof: Option<(Digest, Vec<Signed<Checkpoint>>)>,
    },
    /// Encoded and hashed, and our vote for it sent.
    Taken {
        digest: Digest,
        snapshot: Arc<Vec<u8>>,
    },
}

impl<A: Application> Replica<A> {
    /// After executing a multiple of K: capture the state and hand the driver the
    /// job that encodes and hashes it (see [`crate::snapshot_job`]); the digest is
    /// multicast when the job's result comes back ([`Replica::on_snapshot_taken`]).
    pub(super) fn take_checkpoint(&mut self, seq: Seq) {
        let mut clients = Vec::with_capacity(self.clients.encoded_bound());
        bft_crypto::encode_into(&self.clients, &mut clients).expect("the client table encodes");
        let job = SnapshotJob::new(
            seq,
            self.app.capture(),
            clients,
            self.retired_snapshot.take(),
        );
        self.own_checkpoints
            .insert(seq, OwnCheckpoint::Pending { proof: None });
        self.emit(Output::TakeSnapshot(job));
    }

    /// A checkpoint's job finished: sign and multicast its digest, and adopt it if
    /// it is stable already. A result for a checkpoint we no longer wait for (it
    /// fell below the stable checkpoint meanwhile, or came from before a restart)
    /// is dropped.
    pub(super) fn on_snapshot_taken(&mut self, taken: SnapshotTaken) {
        let SnapshotTaken {
            seq,
            digest,
            snapshot,
        } = taken;
        let Some(own) = self.own_checkpoints.get_mut(&seq) else {
            return;
        };
        let OwnCheckpoint::Pending { proof } = own else {
            return; // taken already: a driver delivered it twice
        };
        let deferred = proof.take();
        *own = OwnCheckpoint::Taken { digest, snapshot };
        let cp = self.sign(Checkpoint {
            seq,
            snapshot_digest: digest,
            replica: self.me(),
        });
        self.record_checkpoint_vote(cp.clone());
        self.broadcast(Message::Checkpoint(cp));
        match deferred {
            Some((proven, proof)) => self.adopt_stable(seq, proven, proof),
            None => self.check_stable(seq),
        }
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
        match self.own_checkpoints.get_mut(&seq) {
            Some(OwnCheckpoint::Taken {
                digest: own,
                snapshot,
            }) if *own == digest => {
                let snapshot = snapshot.clone();
                let cp = StableCheckpoint {
                    seq,
                    digest,
                    proof,
                    snapshot,
                };
                self.install_stable(cp, Written::Apart);
            }
            // Our own state there is being encoded: whether it matches is known
            // when its job is done, and fetching it meanwhile would be waste.
            Some(OwnCheckpoint::Pending { proof: deferred }) => {
                deferred.get_or_insert((digest, proof));
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
