//! View changes (OSDI'99 §4.4, TOCS'02 §4.5): view-change messages carrying the
//! stable checkpoint proof and prepared certificates, the new primary's new-view,
//! and the liveness rules (exponential back-off, join once f+1 others have).

use super::{backoff, Replica};
use crate::app::Application;
use crate::durable::PersistRecord;
use crate::io::{Output, Timer};
use crate::messages::{Message, NewView, PrePrepare, ViewChange};
use crate::new_view::{plan, NewViewPlan};
use crate::types::View;
use bft_crypto::{Signed, Verified};

impl<A: Application> Replica<A> {
    /// The timer expired: waiting for a request (normal) or for a new-view (changing).
    pub(super) fn on_view_change_timeout(&mut self) {
        self.start_view_change(self.view + 1);
    }

    /// Move to view `target` and multicast <VIEW-CHANGE, target, n, C, P, i>.
    pub(super) fn start_view_change(&mut self, target: View) {
        if target < self.view || (target == self.view && self.changing) {
            return;
        }
        self.view = target;
        self.changing = true;
        self.deadlines.remove(&Timer::Batch);
        self.queue.clear();
        self.emit(Output::Persist(PersistRecord::View { view: target, changing: true }));
        let high = self.high_watermark();
        let vc = self.sign(ViewChange {
            new_view: target,
            stable_seq: self.stable.seq,
            checkpoint_proof: self.stable.proof.clone(),
            prepared: self.certs.range(self.stable.seq + 1..=high).map(|(_, c)| c.clone()).collect(),
            replica: self.me(),
        });
        self.emit(Output::Persist(PersistRecord::ViewChangeSent(vc.clone())));
        self.view_changes.insert(self.me(), vc.clone());
        self.broadcast(Message::ViewChange(vc));
        self.emit(Output::ViewChangeStarted { view: target });
        // Wait T for the new view; the next attempt waits 2T (§4.5.2).
        self.set_timer(Timer::ViewChange, self.vc_timeout);
        self.vc_timeout = backoff(self.vc_timeout, self.cfg.view_change_timeout);
        self.try_new_view();
    }

    pub(super) fn on_view_change(&mut self, vc: Verified<ViewChange>) {
        let (from, target) = (vc.replica, vc.new_view);
        if target < self.view || (target == self.view && !self.changing) {
            // A laggard still asking for a view we are in: re-send its new-view.
            if target == self.view && self.is_primary() {
                if let Some(nv) = self.last_new_view.clone() {
                    self.emit(Output::Send { to: from, message: Message::NewView(nv) });
                }
            }
            return;
        }
        if self.view_changes.get(&from).is_some_and(|old| old.payload.new_view >= target) {
            return;
        }
        self.view_changes.insert(from, vc.into_signed());
        self.join_if_f_plus_1_moved();
        self.try_new_view();
    }

    /// §4.5.2: f+1 view-changes for views above ours mean at least one correct replica
    /// gave up on our view; join the smallest such view rather than wait for a timer.
    fn join_if_f_plus_1_moved(&mut self) {
        let me = self.me();
        let view = self.view;
        let mut higher: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(r, vc)| **r != me && vc.payload.new_view > view)
            .map(|(_, vc)| vc.payload.new_view)
            .collect();
        if higher.len() >= self.cfg.members.weak_quorum() {
            higher.sort_unstable();
            self.start_view_change(higher[0]);
        }
    }

    /// New primary: with 2f+1 view-changes for our view, compute O and multicast the new-view.
    fn try_new_view(&mut self) {
        if !self.changing || !self.is_primary() {
            return;
        }
        let view = self.view;
        let vcs: Vec<Signed<ViewChange>> =
            self.view_changes.values().filter(|vc| vc.payload.new_view == view).take(self.quorum()).cloned().collect();
        if vcs.len() < self.quorum() {
            return;
        }
        let plan = plan(&vcs);
        let pre_prepares: Vec<_> = plan
            .entries
            .iter()
            .map(|(seq, digest, _)| self.sign(PrePrepare { view, seq: *seq, digest: *digest, replica: self.me() }))
            .collect();
        let nv = self.sign(NewView { view, view_changes: vcs, pre_prepares, replica: self.me() });
        // Enter first: the pre-prepares are persisted before the new-view leaves.
        self.enter_new_view(nv.clone(), plan);
        self.broadcast(Message::NewView(nv));
    }

    pub(super) fn on_new_view(&mut self, nv: Verified<NewView>, plan: NewViewPlan) {
        if nv.view < self.view || (nv.view == self.view && !self.changing) {
            return;
        }
        self.enter_new_view(nv.into_signed(), plan);
    }

    /// Install the new view: adopt V's latest stable checkpoint, accept O's
    /// pre-prepares (backups prepare them), and resume normal operation.
    fn enter_new_view(&mut self, nv: Signed<NewView>, plan: NewViewPlan) {
        let view = nv.payload.view;
        self.view = view;
        self.changing = false;
        self.emit(Output::Persist(PersistRecord::View { view, changing: false }));
        if let Some((digest, proof)) = plan.checkpoint.clone() {
            self.adopt_stable(plan.min_s, digest, proof);
        }
        for slot in self.log.values_mut() {
            slot.reset_for_new_view();
        }
        self.in_flight.clear();
        self.queue.clear();
        let primary = self.is_primary();
        let mut max_seq = plan.min_s;
        for ((seq, _, batch), pp) in plan.entries.into_iter().zip(nv.payload.pre_prepares.iter()) {
            max_seq = seq;
            if seq <= self.low_watermark() {
                continue;
            }
            self.accept_pre_prepare(pp.clone(), batch);
            if !primary {
                self.send_prepare(seq);
            }
        }
        self.next_seq = max_seq.max(self.last_executed).max(self.stable.seq) + 1;
        self.view_changes.retain(|_, vc| vc.payload.new_view > view);
        self.last_new_view = Some(nv);
        self.deadlines.remove(&Timer::ViewChange);
        self.emit(Output::ViewEntered { view, primary: self.primary() });
        let seqs: Vec<_> = self.log.keys().copied().collect();
        for seq in seqs {
            self.check_prepared(seq);
        }
        if primary {
            let queue: Vec<_> = self.waiting.values().cloned().collect();
            self.queue.extend(queue);
            self.try_propose(false);
        }
    }
}
