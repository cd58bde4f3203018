//! Helping a peer that stopped executing (the job the status messages do in Castro
//! and Liskov's BFT library).
//!
//! PBFT never resends by itself: a replica that missed the messages of some sequence
//! numbers (it was down, partitioned, or busy with a state transfer while they were
//! ordered) catches up through the next stable checkpoint. If no further requests
//! come, that checkpoint never comes and the replica stays behind for good. Every
//! heartbeat says where its sender stands; when a peer reports the same position
//! twice in a row, we resend what it may lack:
//! - behind our stable checkpoint: the checkpoint's 2f+1 signed proof, so it can
//!   adopt that checkpoint and fetch the state;
//! - in an older view: the new-view that started ours (it proves itself);
//! - inside our log, in our view: for each slot above what it executed, the
//!   pre-prepare with its batch and our own prepare and commit if we sent them. Every
//!   honest replica does the same, so the peer gathers its quorums from messages
//!   that were already signed; nothing new is signed and no rule of the protocol
//!   changes. Slots we have not committed count too: two laggards can each hold the
//!   commit the other lacks (found by the simulator, seed 798 with f=1).
//!
//! A faulty peer can claim to be behind forever; what it gets is bounded by K slots
//! (one checkpoint interval) per heartbeat interval. An honest laggard further behind
//! than that is brought up by the next K on its next reports, or by state transfer.

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
        if !stuck {
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
        // Every slot above what it executed that we accepted in this view: the
        // pre-prepare, and our own prepare and commit if we sent them. Not only slots
        // we executed: two laggards may each hold the commit the other lacks.
        let me = self.me();
        let Some(first) = at.last_executed.max(self.stable.seq).checked_add(1) else {
            return;
        };
        let mut resend = Vec::new();
        let limit = usize::try_from(self.cfg.checkpoint_interval).unwrap_or(usize::MAX);
        let view = self.view;
        let accepted = self.log.range(first..).filter_map(|(_, slot)| {
            let (pp, batch) = slot.pre_prepare.as_ref()?;
            (pp.payload.view == view).then_some((slot, pp, batch))
        });
        for (slot, pp, batch) in accepted.take(limit) {
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
