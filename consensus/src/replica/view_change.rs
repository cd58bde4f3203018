//! View changes (OSDI'99 §4.4, TOCS'02 §4.5): view-change messages carrying the
//! stable checkpoint proof and prepared certificates, the new primary's new-view,
//! and the liveness rules (exponential back-off, join once f+1 others have, follow a
//! primary that left its view).

use super::{backoff, Replica};
use crate::app::Application;
use crate::durable::PersistRecord;
use crate::io::{Output, Timer};
use crate::messages::{Bodies, Message, NewView, PrePrepare, PreparedCert, ViewChange};
use crate::new_view::{index, plan, NewViewPlan};
use crate::types::{ReplicaId, View};
use bft_crypto::{Signed, Verified};
use std::collections::BTreeSet;

impl<A: Application> Replica<A> {
    /// The timer expired: waiting for a request (normal) or for a new-view (changing).
    /// Before 2f+1 view-changes are in, the timer only re-sends ours (messages get
    /// lost); once they are in, it means the new primary failed us: try the next view.
    pub(super) fn on_view_change_timeout(&mut self) {
        if self.changing && !self.new_view_timer_armed {
            if let Some((vc, bodies)) = self.view_changes.get(&self.me()).cloned() {
                self.broadcast(Message::ViewChange(vc, bodies));
            }
            self.set_timer(Timer::ViewChange, self.cfg.view_change_timeout);
            return;
        }
        self.start_view_change_for_no_progress();
    }

    /// Move to view `target` and multicast <VIEW-CHANGE, target, n, C, P, i>.
    pub(super) fn start_view_change(&mut self, target: View) {
        if target < self.view || (target == self.view && self.changing) {
            return;
        }
        // A tentative execution belongs to the view it was prepared in (TOCS
        // §5.1.2): undo it before anything of the next view reads the state.
        self.roll_back_tentative();
        self.settle_executed_slots();
        self.view = target;
        self.changing = true;
        self.executed_in_view_at = None;
        self.deadlines.remove(&Timer::Batch);
        self.queue.clear();
        self.emit(Output::Persist(PersistRecord::View {
            view: target,
            changing: true,
        }));
        self.send_view_change();
        self.try_new_view();
        self.follow_a_primary_that_left();
    }

    /// Build, persist and multicast our view-change for the view we are changing to,
    /// and start re-sending it until 2f+1 are in.
    pub(super) fn send_view_change(&mut self) {
        let high = self.high_watermark();
        let certs: Vec<&PreparedCert> = self
            .certs
            .range(self.stable.seq + 1..=high)
            .map(|(_, c)| c)
            .collect();
        // Each batch once beside the signed view-change; the null request needs none.
        let mut named = BTreeSet::new();
        let bodies: Bodies = certs
            .iter()
            .filter(|c| !c.batch.is_empty() && named.insert(c.digest()))
            .map(|c| c.batch.clone())
            .collect();
        let vc = self.sign(ViewChange {
            new_view: self.view,
            stable_seq: self.stable.seq,
            checkpoint_proof: self.stable.proof.clone(),
            prepared: certs.iter().map(|c| c.proof()).collect(),
            replica: self.me(),
        });
        self.emit(Output::Persist(PersistRecord::ViewChangeSent(
            vc.clone(),
            bodies.clone(),
        )));
        self.view_changes
            .insert(self.me(), (vc.clone(), bodies.clone()));
        self.broadcast(Message::ViewChange(vc, bodies));
        self.emit(Output::ViewChangeStarted { view: self.view });
        self.new_view_timer_armed = false;
        self.set_timer(Timer::ViewChange, self.cfg.view_change_timeout);
        self.arm_new_view_timer();
    }

    /// §4.5.2: the new-view timer starts only once 2f+1 view-changes for our target
    /// view (or later ones) are in. A replica that alone gave up on a view therefore waits for the
    /// others instead of racing ahead through views nobody else will join. On expiry
    /// the next view change waits twice as long.
    fn arm_new_view_timer(&mut self) {
        if !self.changing || self.new_view_timer_armed {
            return;
        }
        // A replica asking for a view at or above ours has given up on every view
        // below it, so it counts: otherwise one that moved on past our target (its
        // view-change for our view superseded) would leave us short forever.
        let view = self.view;
        let count = self
            .view_changes
            .values()
            .filter(|(vc, _)| vc.payload.new_view >= view)
            .count();
        if count >= self.quorum() {
            self.new_view_timer_armed = true;
            self.set_timer(Timer::ViewChange, self.vc_timeout);
            self.vc_timeout = backoff(self.vc_timeout, self.cfg.view_change_timeout);
        }
    }

    pub(super) fn on_view_change(&mut self, vc: Verified<ViewChange>, bodies: Bodies) {
        let (from, target) = (vc.replica, vc.new_view);
        if target < self.view || (target == self.view && !self.changing) {
            // A laggard still asking for a view we are in: relay the new-view. It is
            // self-certifying (signed by its primary, carrying 2f+1 view-changes), so
            // any replica may relay it, which matters when the primary has moved on.
            if target == self.view {
                self.relay_new_view(from);
            }
            return;
        }
        if self
            .view_changes
            .get(&from)
            .is_some_and(|(old, _)| old.payload.new_view >= target)
        {
            return;
        }
        self.view_changes.insert(from, (vc.into_signed(), bodies));
        self.join_if_f_plus_1_moved();
        self.follow_a_primary_that_left();
        self.arm_new_view_timer();
        self.try_new_view();
    }

    /// Send `peer` the new-view that started our view (it proves itself), at most
    /// once per heartbeat interval: a replayed view-change must not make us send a
    /// new-view, batches and all, every time it arrives.
    pub(super) fn relay_new_view(&mut self, peer: ReplicaId) {
        let gap = self.cfg.fd.heartbeat_interval;
        let Some((nv, bodies)) = self.last_new_view.clone() else {
            return;
        };
        if self
            .new_view_relayed
            .allow(peer, nv.payload.view, self.now, gap)
        {
            self.emit(Output::Send {
                to: peer,
                message: Message::NewView(nv, bodies),
            });
        }
    }

    /// The primary of the view we are in (or changing to) asked for a later one:
    /// by its view-change it promised to propose nothing more in ours, so ours can
    /// order nothing more. Move to the next view now instead of waiting for f+1
    /// others or our own timer: a primary whose request timer fired alone (its disk
    /// stalled its pre-prepares, say) otherwise leaves the group headless until
    /// clients' retransmissions start the backups' timers (issue 13: 3.3 s after
    /// a sub-second stall). A faulty primary gains nothing by it: silence ends its
    /// view too, one timeout later; sent to a few backups only, it leaves them
    /// behind as a timer that fired at them alone would. Only the next view: the
    /// one it asked for may be far ahead, and every view between has a primary.
    /// Checked whenever our view changes too: its primary's view-change may have
    /// come first. Then the next view's primary may have left it as well: the
    /// replica goes straight to the first view whose primary has not (one
    /// view-change, one back-off step, not one per view passed). That ends within
    /// n views, at the latest at one this replica leads.
    fn follow_a_primary_that_left(&mut self) {
        let me = self.me();
        let mut target = self.view;
        loop {
            let primary = self.primary_of(target);
            let left = self
                .view_changes
                .get(&primary)
                .is_some_and(|(vc, _)| vc.payload.new_view > target);
            if primary == me || !left {
                break;
            }
            target += 1;
        }
        if target > self.view {
            self.start_view_change(target);
        }
    }

    /// §4.5.2: f+1 view-changes for views above ours mean at least one correct replica
    /// gave up on our view; join the smallest such view rather than wait for a timer.
    fn join_if_f_plus_1_moved(&mut self) {
        let me = self.me();
        let view = self.view;
        let mut higher: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(r, (vc, _))| **r != me && vc.payload.new_view > view)
            .map(|(_, (vc, _))| vc.payload.new_view)
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
        let chosen: Vec<&(Signed<ViewChange>, Bodies)> = self
            .view_changes
            .values()
            .filter(|(vc, _)| vc.payload.new_view == view)
            .take(self.quorum())
            .collect();
        if chosen.len() < self.quorum() {
            return;
        }
        let bodies = index(chosen.iter().flat_map(|(_, b)| b));
        let vcs: Vec<Signed<ViewChange>> = chosen.into_iter().map(|(vc, _)| vc.clone()).collect();
        let plan = plan(&vcs, &bodies)
            .expect("each view-change carried the batches its certificates name");
        let pre_prepares: Vec<_> = plan
            .entries
            .iter()
            .map(|(seq, digest, _)| {
                self.sign(PrePrepare {
                    view,
                    seq: *seq,
                    digest: *digest,
                    replica: self.me(),
                })
            })
            .collect();
        let nv = self.sign(NewView {
            view,
            view_changes: vcs,
            pre_prepares,
            replica: self.me(),
        });
        // Enter first: the pre-prepares are persisted before the new-view leaves.
        // New proposals only after it, so backups see the new-view first.
        let bodies = plan.bodies();
        self.enter_new_view(nv.clone(), plan);
        self.broadcast(Message::NewView(nv, bodies));
        self.resume_proposing();
    }

    pub(super) fn on_new_view(&mut self, nv: Verified<NewView>, plan: NewViewPlan) {
        if nv.view < self.view || (nv.view == self.view && !self.changing) {
            return;
        }
        self.enter_new_view(nv.into_signed(), plan);
        let early = std::mem::take(&mut self.early_pre_prepares);
        for (pp, batch) in early.into_values() {
            self.on_pre_prepare(pp, batch);
        }
    }

    /// Install the new view: adopt V's latest stable checkpoint, accept O's
    /// pre-prepares (backups prepare them), and resume normal operation.
    fn enter_new_view(&mut self, nv: Signed<NewView>, plan: NewViewPlan) {
        let view = nv.payload.view;
        self.roll_back_tentative();
        self.settle_executed_slots();
        self.view = view;
        self.changing = false;
        self.executed_in_view_at = None;
        self.emit(Output::Persist(PersistRecord::View {
            view,
            changing: false,
        }));
        let bodies = plan.bodies();
        self.emit(Output::Persist(PersistRecord::NewViewEntered(
            nv.clone(),
            bodies.clone(),
        )));
        self.adopt_new_view_checkpoint(&plan);
        for slot in self.log.values_mut() {
            slot.reset_for_new_view();
        }
        self.in_flight.clear();
        self.queue.clear();
        self.early_pre_prepares.retain(|_, (pp, _)| pp.view == view);
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
        // Never at or below the low water mark, which a floor set by an earlier
        // new-view may hold above our stable checkpoint while we fetch its state:
        // backups refuse such proposals (review of the accept_pre_prepare assert,
        // which they would now trip; recovery.rs has the same rule).
        self.next_seq = max_seq.max(self.last_executed).max(self.low_watermark()) + 1;
        self.view_changes
            .retain(|_, (vc, _)| vc.payload.new_view > view);
        self.last_new_view = Some((nv, bodies));
        self.deadlines.remove(&Timer::ViewChange);
        self.emit(Output::ViewEntered {
            view,
            primary: self.primary(),
        });
        let seqs: Vec<_> = self.log.keys().copied().collect();
        for seq in seqs {
            self.check_prepared(seq);
        }
        self.follow_a_primary_that_left();
    }

    /// min-s becomes the low water mark (see `Replica::new_view_floor`), and its
    /// checkpoint our stable one, from our own state or fetched.
    pub(super) fn adopt_new_view_checkpoint(&mut self, plan: &NewViewPlan) {
        self.new_view_floor = self.new_view_floor.max(plan.min_s);
        if let Some((digest, proof)) = plan.checkpoint.clone() {
            self.adopt_stable(plan.min_s, digest, proof);
        }
    }

    /// New primary: queue every request still waiting, and propose.
    fn resume_proposing(&mut self) {
        let queue: Vec<_> = self
            .waiting
            .sorted()
            .into_iter()
            .map(|(_, r)| r.clone())
            .collect();
        self.queue.extend(queue);
        self.try_propose(false);
    }
}
