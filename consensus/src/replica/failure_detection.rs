//! The replica's side of failure detection: it sends heartbeats, feeds the
//! [`FailureDetector`](crate::fd::FailureDetector) with its peers', reports who is
//! suspected, and acts on a suspicion of the primary only while requests wait
//! (progress-based: heartbeats alone never change the view).

use super::Replica;
use crate::app::Application;
use crate::fd::{FailureDetector, Heartbeat};
use crate::io::{Output, Timer};
use crate::messages::Message;
use crate::types::ReplicaId;
use bft_crypto::Verified;
use std::time::Duration;

impl<A: Application> Replica<A> {
    /// Begin running at `now`: the first heartbeat leaves and the heartbeat timer
    /// starts. Call once after [`Replica::new`] ([`Replica::recover`] does it itself).
    pub fn start(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.now = now;
        self.fd = FailureDetector::new(
            self.cfg.fd.clone(),
            self.me(),
            self.cfg.members.ids(),
            self.cfg.incarnation,
            now,
        );
        self.on_heartbeat_timer();
        out.append(&mut self.out);
    }

    pub(super) fn on_heartbeat_timer(&mut self) {
        let hb = self.fd.next_heartbeat(self.progress());
        let signed = self.sign(hb);
        self.broadcast(Message::Heartbeat(signed));
        self.rebroadcast_votes_if_stuck();
        let newly = self.fd.check(self.now);
        if newly.contains(&self.primary()) {
            self.on_primary_timed_out();
        }
        self.report_suspicions();
        self.set_timer(Timer::Heartbeat, self.cfg.fd.heartbeat_interval);
    }

    pub(super) fn on_heartbeat(&mut self, hb: &Verified<Heartbeat>) {
        if self.fd.on_heartbeat(hb, self.now) {
            self.report_suspicions();
            self.on_peer_progress(hb.replica, hb.progress);
        }
    }

    /// The primary has been silent past its ◇P timeout. If requests are waiting it
    /// cannot be ordering them: stop waiting for the request timer and change view
    /// now. With nothing pending this is no reason to disturb the group, and neither
    /// is a primary whose requests executed here within the request timer's period:
    /// it is ordering, only its heartbeats are late (under overload they queue
    /// behind its batches; issue 13 saw 4,096 clients turn into a view change every
    /// few seconds). The request timer, restarted on each execution, still replaces
    /// a primary that stops ordering.
    fn on_primary_timed_out(&mut self) {
        if self.changing || self.is_primary() || self.waiting.is_empty() {
            return;
        }
        let ordering = self
            .executed_in_view_at
            .is_some_and(|at| self.now.saturating_sub(at) < self.vc_timeout);
        if ordering {
            return;
        }
        self.start_view_change_for_no_progress();
    }

    /// The request timer fired (or the primary timed out with requests pending):
    /// suspect the primary for lack of progress and move to the next view.
    pub(super) fn start_view_change_for_no_progress(&mut self) {
        let primary = self.primary();
        self.fd.suspect_no_progress(primary);
        self.report_suspicions();
        self.start_view_change(self.view + 1);
    }

    /// Requests ordered by `primary` executed: it is making progress.
    pub(super) fn primary_made_progress(&mut self, primary: ReplicaId) {
        if self.fd.progress_by(primary) {
            self.report_suspicions();
        }
    }

    /// Emit [`Output::Suspected`] when who is suspected, or why, changed.
    pub(super) fn report_suspicions(&mut self) {
        let now = self.fd.suspicions();
        if now != self.reported_reasons {
            self.reported_suspects = now.keys().copied().collect();
            self.reported_reasons = now;
            self.emit(Output::Suspected(self.reported_suspects.clone()));
        }
    }

    /// The failure detector, for `/status` and metrics (φ per peer, timeouts).
    #[must_use]
    pub fn failure_detector(&self) -> &FailureDetector {
        &self.fd
    }

    /// Replicas suspected now, for any reason.
    #[must_use]
    pub fn suspected(&self) -> &[ReplicaId] {
        &self.reported_suspects
    }
}
