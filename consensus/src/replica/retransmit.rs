//! Helping a peer that stopped executing (the job the status messages do in Castro
//! and Liskov's BFT library).
//!
//! PBFT never resends by itself: a replica that missed the messages of some sequence
//! numbers (it was down, partitioned, or busy with a state transfer while they were
//! ordered) catches up through the next stable checkpoint. If no further requests
//! come, that checkpoint never comes and the replica stays behind for good. Every
//! heartbeat says where its sender stands; when a peer reports the same position
//! twice in a row, we resend what it may lack:
//! - a stable checkpoint below ours: the checkpoint's 2f+1 signed proof, so it can
//!   adopt that checkpoint (and fetch the state if it has not executed that far).
//!   Not only when it executed less: an idle peer that executed as far but lost
//!   votes would otherwise keep an older stable checkpoint for good (simulator,
//!   seed 22 of the basic family, f=1: "r2 executed to seq 39 but its stable
//!   checkpoint stayed at 24");
//! - in an older view, or still changing into ours: the new-view that started ours
//!   (it proves itself);
//! - inside our log, in our view: for the first slots above what it executed, the
//!   pre-prepare with its batch and every matching prepare and commit we hold. The
//!   peer gathers its quorums from messages that were already signed (by whoever
//!   sent them: a relayed vote is as good as the original); nothing new is signed
//!   and no rule of the protocol changes. Slots we have not committed count too: two
//!   laggards can each hold the commit the other lacks (simulator, seed 798, f=1).
//!   Relaying all votes, not just our own, matters when the replicas that could
//!   vouch again lost their votes in a crash (seed 63, f=2).
//!
//! Slots we executed through their commit certificates while in a later view (see
//! `left_view`) are offered too, the pre-prepare with its batch and the 2f+1
//! commits, whatever view we are in or changing to: the certificate proves itself,
//! and we may be the only one left holding all of it.
//!
//! A peer that executed as far as we did but whose stable checkpoint stays below
//! ours for two heartbeats in a row (its report was already below ours a beat ago)
//! lost some of the checkpoint votes that made ours stable; with f liars among the
//! voters one lost honest vote is enough. It gets the 2f+1 signed proof, nothing
//! more: it is not stuck, only missing a proof that no later message would carry
//! until the next checkpoint (node test lying_checkpoint_7, on a busy machine).
//! The simulator's liveness judge requires honest stable checkpoints to converge
//! once the workload ends.
//!
//! And a replica that has not moved since its last heartbeat while a peer reports it
//! executed more broadcasts the votes it holds for the slots it is stuck on: the
//! replicas ahead may have executed them in an earlier view and need this view's
//! votes to commit them again before they can vouch for them (seed 487, f=2).
//!
//! A faulty peer can claim to be behind forever; what it gets is bounded by
//! [`RESEND_SLOTS`] settled slots and as many from the log per heartbeat interval
//! (a slot is sent once: the log's copy of a settled slot is skipped).

use super::slot::{matching, Slot};
use super::Replica;
use crate::app::Application;
use crate::fd::Progress;
use crate::io::Output;
use crate::messages::{Batch, Message, PrePrepare};
use crate::request_checks;
use crate::types::{ReplicaId, Seq, View};
use bft_crypto::{Digest, Signed};
use std::collections::BTreeMap;
use std::time::Duration;

/// Slots resent per heartbeat interval: enough for the tail of a log, small enough
/// that a peer lying about being behind gets little (each pre-prepare carries its
/// batch). A laggard further behind gets the next ones on its next reports, or
/// catches up by state transfer once a later checkpoint is stable.
const RESEND_SLOTS: usize = 16;

/// What a peer last told us of its position, and when we last helped it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerProgress {
    reported: Progress,
    /// The report's stable checkpoint was below ours when it came.
    reported_below_our_stable: bool,
    last_help: Option<Duration>,
}

impl<A: Application> Replica<A> {
    /// The position our heartbeats carry.
    pub(super) fn progress(&self) -> Progress {
        Progress {
            view: self.view,
            changing: self.changing,
            last_executed: self.last_executed,
            stable: self.stable.seq,
        }
    }

    /// On our heartbeat timer: if we have not moved since the last beat while some
    /// peer reports it executed more, broadcast every matching prepare and commit we
    /// hold for the slots we are stuck on. The replicas ahead may have executed those
    /// slots in an earlier view and lack this view's votes to commit them again (a
    /// crash loses received votes); only then can they vouch for them to us.
    pub(super) fn rebroadcast_votes_if_stuck(&mut self) {
        let now_at = self.progress();
        let stuck = self.progress_at_last_beat == Some(now_at);
        self.progress_at_last_beat = Some(now_at);
        let behind = self
            .peer_progress
            .values()
            .any(|p| p.reported.last_executed > self.last_executed);
        if !stuck || !behind || self.changing {
            return;
        }
        let Some(first) = self.last_executed.checked_add(1) else {
            return;
        };
        let mut resend = Vec::new();
        for (slot, pp, _) in accepted_in(&self.log, first, self.view) {
            votes_for(slot, self.view, pp.payload.digest, &mut resend);
        }
        for message in resend {
            self.broadcast(message);
        }
    }

    /// A fresh heartbeat from `peer` reported `now_at`.
    pub(super) fn on_peer_progress(&mut self, peer: ReplicaId, now_at: Progress) {
        let gap = self.cfg.fd.heartbeat_interval;
        let below_now = now_at.stable < self.stable.seq;
        let entry = self.peer_progress.entry(peer).or_default();
        let stuck = entry.reported == now_at;
        let proof_lost =
            entry.reported_below_our_stable && entry.reported.stable == now_at.stable && below_now;
        entry.reported = now_at;
        entry.reported_below_our_stable = below_now;
        if !stuck && !proof_lost {
            return;
        }
        if entry
            .last_help
            .is_some_and(|at| self.now < at.saturating_add(gap))
        {
            return;
        }
        entry.last_help = Some(self.now);
        if stuck {
            self.help_catch_up(peer, now_at);
        } else {
            self.send_stable_proof(peer);
        }
    }

    /// The 2f+1 signed checkpoints that make ours stable (each as its signer sent
    /// it: relaying them is as good as theirs).
    fn send_stable_proof(&mut self, peer: ReplicaId) {
        for c in self.stable.proof.clone() {
            self.emit(Output::Send {
                to: peer,
                message: Message::Checkpoint(c),
            });
        }
    }

    fn help_catch_up(&mut self, peer: ReplicaId, at: Progress) {
        if at.stable < self.stable.seq {
            self.send_stable_proof(peer);
        }
        // Slots we executed through their commit certificates: settled whatever
        // view we are in or changing to (the certificate proves itself).
        let first_missing = at.last_executed.max(self.stable.seq).saturating_add(1);
        let settled: Vec<Message> = self
            .settled
            .range(first_missing..)
            .take(RESEND_SLOTS)
            .flat_map(|(_, (pp, batch, commits))| {
                std::iter::once(Message::PrePrepare(pp.clone(), batch.clone()))
                    .chain(commits.iter().cloned().map(Message::Commit))
            })
            .collect();
        for message in settled {
            self.emit(Output::Send { to: peer, message });
        }
        if self.changing {
            return; // we are between views ourselves: nothing else settled to offer
        }
        if at.view < self.view || (at.view == self.view && at.changing) {
            // It missed the new-view. That message is self-certifying (2f+1 signed
            // view-changes inside), so relaying it brings the peer into our view; the
            // slots follow on its next report.
            self.relay_new_view(peer);
            return;
        }
        // In our view, or alone in a higher one (it executes what it can prove
        // committed, see `left_view`): every slot above what it executed that we
        // accepted in this view, the pre-prepare and every matching prepare and
        // commit we hold (each signed by its sender, so relaying them is as good as
        // theirs). Not only slots we executed: two laggards may each hold the commit
        // the other lacks.
        let Some(first) = at.last_executed.max(self.stable.seq).checked_add(1) else {
            return;
        };
        let not_settled: Vec<Seq> = accepted_in(&self.log, first, self.view)
            .map(|(_, pp, _)| pp.payload.seq)
            .filter(|seq| !self.settled.contains_key(seq))
            .collect();
        self.resend_slots(peer, not_settled);
    }

    /// For each of `seqs`, the pre-prepare we accepted there with its batch (if we
    /// may relay it) and every matching prepare and commit we hold, to `peer`.
    fn resend_slots(&mut self, peer: ReplicaId, seqs: Vec<Seq>) {
        let mut resend = Vec::new();
        for seq in seqs {
            let relayable = self.batch_relayable(seq);
            let Some((slot, pp, batch)) = self
                .log
                .get(&seq)
                .and_then(|s| s.pre_prepare.as_ref().map(|(pp, b)| (s, pp, b)))
            else {
                continue;
            };
            if relayable {
                resend.push(Message::PrePrepare(pp.clone(), batch.clone()));
            }
            votes_for(slot, pp.payload.view, pp.payload.digest, &mut resend);
        }
        for message in resend {
            self.emit(Output::Send { to: peer, message });
        }
    }

    /// Whether the batch accepted at `seq` may go to a peer: every replica that
    /// checks it must find it valid, or this replica would be sending what an honest
    /// replica refuses. A batch whose requests this replica took unchecked
    /// (`request_checks`) qualifies once prepared (a quorum holds a correct replica
    /// that checked the very same bytes, which its digest binds) or once checked
    /// here, on the spot: catching a peer up is rare, and the answer is kept.
    fn batch_relayable(&mut self, seq: Seq) -> bool {
        let me = self.me();
        let members = &self.cfg.members;
        let skippers = self.cfg.request_check_skippers;
        let Some(slot) = self.log.get_mut(&seq) else {
            return false;
        };
        let Some((pp, batch)) = &slot.pre_prepare else {
            return false;
        };
        let unchecked = request_checks::skips(members, skippers, pp.payload.view, seq, me);
        if slot.prepared || !unchecked {
            return true;
        }
        *slot
            .requests_valid
            .get_or_insert_with(|| bft_crypto::all_valid(&batch.requests))
    }
}

/// The first [`RESEND_SLOTS`] slots from `first` on with a pre-prepare accepted in `view`.
fn accepted_in(
    log: &BTreeMap<Seq, Slot>,
    first: Seq,
    view: View,
) -> impl Iterator<Item = (&Slot, &Signed<PrePrepare>, &Batch)> {
    log.range(first..)
        .filter_map(move |(_, slot)| {
            let (pp, batch) = slot.pre_prepare.as_ref()?;
            (pp.payload.view == view).then_some((slot, pp, batch))
        })
        .take(RESEND_SLOTS)
}

/// Every prepare and commit in `slot` for (view, digest), whoever signed it.
fn votes_for(slot: &Slot, view: View, digest: Digest, out: &mut Vec<Message>) {
    let prepares = matching(&slot.prepares, view, digest, None);
    let commits = matching(&slot.commits, view, digest, None);
    out.extend(prepares.into_iter().map(Message::Prepare));
    out.extend(commits.into_iter().map(Message::Commit));
}
