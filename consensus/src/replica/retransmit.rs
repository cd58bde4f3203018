//! Helping a peer that stopped executing (the role of status messages in Castro's
//! BFT library, TOCS'02 §5.2 "retransmission").
//!
//! PBFT never resends by itself: a replica that missed the messages of some sequence
//! numbers (it was down, partitioned, or busy with a state transfer while they were
//! ordered) catches up through the next stable checkpoint. If no further requests
//! come, that checkpoint never comes and the replica stays behind for good. Every
//! heartbeat says where its sender stands; when a peer reports the same position
//! twice in a row while we are ahead, we resend what it needs:
//! - behind our stable checkpoint: the checkpoint's 2f+1 signed proof, so it can
//!   adopt that checkpoint and fetch the state;
//! - in an older view: the new-view that started ours (it proves itself);
//! - inside our log, in our view: for each committed slot it has not executed, the
//!   pre-prepare with its batch and our own prepare and commit. Every honest helper
//!   does the same, so the peer gathers its quorums from messages that were already
//!   signed; nothing new is signed and no rule of the protocol changes.
//!
//! A faulty peer can claim to be behind forever; what it gets is bounded by one
//! window of our log per heartbeat interval.

use super::Replica;
use crate::app::Application;
use crate::fd::Progress;
use crate::io::Output;
use crate::messages::Message;
use crate::types::ReplicaId;
use std::time::Duration;

/// What a peer last told us of its position, and when we last helped it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerProgress {
    reported: Progress,
    last_help: Option<Duration>,
}

impl<A: Application> Replica<A> {
    /// The position our heartbeats carry.
    pub(super) fn progress(&self) -> Progress {
        Progress {
            view: self.view,
            last_executed: self.last_executed,
        }
    }

    /// A fresh heartbeat from `peer` reported `now_at`.
    pub(super) fn on_peer_progress(&mut self, peer: ReplicaId, now_at: Progress) {
        let gap = self.cfg.fd.heartbeat_interval;
        let entry = self.peer_progress.entry(peer).or_default();
        let stuck = entry.reported == now_at;
        entry.reported = now_at;
        if !stuck || now_at.last_executed >= self.last_executed {
            return;
        }
        if entry
            .last_help
            .is_some_and(|at| self.now < at.saturating_add(gap))
        {
            return;
        }
        entry.last_help = Some(self.now);
        self.help_catch_up(peer, now_at);
    }

    fn help_catch_up(&mut self, peer: ReplicaId, at: Progress) {
        if at.last_executed < self.stable.seq {
            for c in self.stable.proof.clone() {
                self.emit(Output::Send {
                    to: peer,
                    message: Message::Checkpoint(c),
                });
            }
        }
        if self.changing || at.view > self.view {
            return; // it is ahead of us in views: nothing of ours can help it
        }
        if at.view < self.view {
            // It missed the new-view. That message is self-certifying (2f+1 signed
            // view-changes inside), so relaying it brings the peer into our view; the
            // slots follow on its next report.
            if let Some(nv) = self.last_new_view.clone() {
                self.emit(Output::Send {
                    to: peer,
                    message: Message::NewView(nv),
                });
            }
            return;
        }
        let me = self.me();
        // The stable checkpoint can run ahead of execution (a proven checkpoint
        // installed before its state arrived); then there is nothing of ours to resend.
        let from = at.last_executed.max(self.stable.seq);
        if from >= self.last_executed {
            return;
        }
        let mut resend = Vec::new();
        for (_, slot) in self.log.range(from + 1..=self.last_executed) {
            let Some((pp, batch)) = slot.pre_prepare.as_ref() else {
                continue;
            };
            if !slot.committed || pp.payload.view != self.view {
                continue;
            }
            resend.push(Message::PrePrepare(pp.clone(), batch.clone()));
            let (view, digest) = (pp.payload.view, pp.payload.digest);
            if let Some(p) = slot.prepares.get(&me) {
                if p.payload.view == view && p.payload.digest == digest {
                    resend.push(Message::Prepare(p.clone()));
                }
            }
            if let Some(c) = slot.commits.get(&me) {
                if c.payload.view == view && c.payload.digest == digest {
                    resend.push(Message::Commit(c.clone()));
                }
            }
        }
        for message in resend {
            self.emit(Output::Send { to: peer, message });
        }
    }
}
