//! Tentative execution (TOCS §5.1.2): a replica executes a batch as soon as it is
//! prepared and everything before it has committed, and replies at once, marking
//! the reply tentative. A client that gets 2f+1 matching tentative replies from one
//! view accepts: 2f+1 replicas prepared the batch there, so at least f+1 correct
//! ones hold its prepared certificate and every later view keeps it at the same
//! sequence number. That saves the commit round's latency.
//!
//! At most one batch is tentative at a time (the one after the last committed), so
//! undoing it is one step: the application and the client table each keep what the
//! batch changed, every change with the value before it, undone newest first
//! (`Application::begin_tentative`,
//! `ClientTable::begin_tentative`). When the slot commits with the same batch, the
//! tentative execution becomes the real one (nothing runs twice and no reply is
//! sent again; a retransmission gets the committed reply). It is rolled back when
//! another batch commits there, when a state transfer replaces the state, and when
//! the replica leaves its view (starts a view change, or enters a new view it never
//! asked for), as in the paper: the client's rule (2f+1 tentative replies from
//! *one* view) and the new primary's choice of what to order (the client table
//! tells it which requests already executed) both need a tentative execution to
//! belong to the current view. Nothing tentative is ever persisted: a restart
//! re-executes only what committed.

use super::normal::Applied;
use super::Replica;
use crate::app::Application;
use crate::io::Output;
use crate::types::Seq;
use bft_crypto::Digest;

/// The batch executed tentatively and what that did.
pub(crate) struct Tentative {
    pub seq: Seq,
    /// The view it was prepared in (the current one: leaving it rolls it back).
    pub view: crate::types::View,
    pub digest: Digest,
    pub applied: Applied,
}

impl<A: Application> Replica<A> {
    /// Execute the next batch tentatively if it is prepared here in this view and
    /// not committed, and reply tentatively.
    pub(super) fn try_tentative(&mut self) {
        if !self.cfg.tentative_execution || self.changing {
            return;
        }
        let seq = self.last_executed + 1;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some((pp, batch)) = slot.pre_prepare.as_ref() else {
            return;
        };
        if !slot.prepared || slot.committed || pp.payload.view != self.view {
            return;
        }
        let (digest, batch) = (pp.payload.digest, batch.clone());
        match &self.tentative {
            Some(t) if t.seq == seq && t.digest == digest => return,
            Some(_) => self.roll_back_tentative(),
            None => {}
        }
        if !self.app.begin_tentative() {
            return;
        }
        self.clients.begin_tentative();
        let mut applied = self.apply(seq, &batch, true);
        self.emit(Output::TentativelyExecuted {
            seq,
            requests: applied.done.len(),
        });
        // Sent now, and never again for this execution: a commit that keeps it
        // replies no more (`execute`), a rollback discards it.
        self.send_replies(std::mem::take(&mut applied.replies));
        self.tentative = Some(Tentative {
            seq,
            view: self.view,
            digest,
            applied,
        });
    }

    /// The committed batch at `seq`, whose digest is `digest`, is about to execute:
    /// if it is the one executed tentatively, keep that execution and return what
    /// it did; otherwise undo any tentative execution first.
    pub(super) fn take_tentative(&mut self, seq: Seq, digest: Digest) -> Option<Applied> {
        let t = self.tentative.as_ref()?;
        if t.seq == seq && t.digest == digest {
            self.app.commit_tentative();
            self.clients.commit_tentative();
            return self.tentative.take().map(|t| t.applied);
        }
        self.roll_back_tentative();
        None
    }

    /// Undo the tentative execution: the state is the last committed one again.
    pub(super) fn roll_back_tentative(&mut self) {
        if let Some(t) = self.tentative.take() {
            self.app.rollback_tentative();
            self.clients.rollback_tentative();
            self.emit(Output::RolledBack { seq: t.seq });
        }
    }

    /// The sequence number executed tentatively, if any (the state includes it).
    #[must_use]
    pub fn tentative_seq(&self) -> Option<Seq> {
        self.tentative.as_ref().map(|t| t.seq)
    }
}
