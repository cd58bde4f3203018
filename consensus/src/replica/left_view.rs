//! Executing what the group commits in a view this replica has left (issue 11,
//! defect 8).
//!
//! A replica whose request timer fired alone asks for view v+1 and, by its
//! view-change, promised not to take part in view v any more: it sends no prepare
//! and no commit for v. PBFT then leaves it waiting, executing nothing, until the
//! others change view too or a later checkpoint lets it fetch the state; with no
//! further load that is never, and a replica switched back from `silent` to honest
//! stayed behind for good. But it need not vote to learn what is decided: 2f+1
//! matching commits for (v, n, d) from distinct replicas mean f+1 correct replicas
//! were prepared, so `committed(m, v, n)` holds and every later view keeps d at n
//! (OSDI'99 §4.4's safety argument). Such a slot, with its pre-prepare's batch, is
//! as good as one committed locally: the replica executes it, keeping its state and
//! its replies current while it waits, and votes for nothing.
//!
//! The same holds in our own view when the primary equivocated and we accepted the
//! pre-prepare the group did not commit: 2f+1 commits for the other digest, with
//! the other pre-prepare (relayed by whoever holds it), prove that one committed.
//! And in our own view when we accepted the committed pre-prepare but never saw
//! 2f prepares: 2f+1 relayed commits matching the pre-prepare our log holds prove
//! it committed as well as our own prepared certificate would.
//!
//! Bounded: only sequence numbers inside the window and above what was executed,
//! one pre-prepare and one commit per replica each; and the certificates of the
//! slots executed this way (`Settled`) until a stable checkpoint covers them.

use super::slot::matching;
use super::Replica;
use crate::app::Application;
use crate::durable::PersistRecord;
use crate::io::Output;
use crate::messages::{Batch, Commit, PrePrepare};
use crate::types::{ReplicaId, Seq, View};
use bft_crypto::{Digest, Signed, Verified};
use std::collections::BTreeMap;

/// What was seen of one slot in views below ours, or in ours beside what the log
/// accepted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Witness {
    pre_prepare: Option<(Signed<PrePrepare>, Batch)>,
    /// Each replica's newest commit, signed: once the slot executes they are its
    /// proof, relayed to laggards (see `retransmit`).
    commits: BTreeMap<ReplicaId, Signed<Commit>>,
}

/// A slot executed through its commit certificate rather than our own votes: the
/// pre-prepare, its batch and the 2f+1 matching commits, kept until a stable
/// checkpoint covers it so we can hand them to a replica that lacks them. We may
/// be the only one holding all of them (the simulator's adversarial family, seed
/// 208, f=1, with clients that back off: the other honest replicas each lacked one
/// commit while we changed view alone; test `consensus/tests/left_view.rs`).
/// Bounded by the window: only executed slots above the stable checkpoint. Kept in
/// memory only: a restart forgets them (the executed state survives, the relay
/// does not).
pub(crate) type Settled = (Signed<PrePrepare>, Batch, Vec<Signed<Commit>>);

impl Witness {
    /// `quorum` matching commits for the pre-prepare held: a commit certificate.
    fn proven(&self, quorum: usize) -> bool {
        let Some((pp, _)) = &self.pre_prepare else {
            return false;
        };
        self.support(pp.payload.view, pp.payload.digest) >= quorum
    }

    /// How many replicas' commits match (view, digest).
    fn support(&self, view: View, digest: Digest) -> usize {
        self.matching(view, digest).count()
    }

    fn matching(&self, view: View, digest: Digest) -> impl Iterator<Item = &Signed<Commit>> {
        self.commits
            .values()
            .filter(move |c| c.payload.view == view && c.payload.digest == digest)
    }
}

impl<A: Application> Replica<A> {
    /// A slot of a view below ours, or of ours, that we may still learn the outcome
    /// of. Ours too: a primary that equivocates (two twins with one key do) can
    /// leave us holding a pre-prepare the group did not commit; its rejection of
    /// the other would leave us without the slot until the next checkpoint, which
    /// with no further load never comes (Twins family, seed 35, f=1).
    fn witnessable(&self, view: View, seq: Seq) -> bool {
        view <= self.view && seq > self.last_executed && self.in_window(seq)
    }

    /// A pre-prepare of a view we left, from that view's primary: keep its batch.
    pub(super) fn witness_pre_prepare(&mut self, pp: Verified<PrePrepare>, batch: Batch) {
        let (view, seq) = (pp.view, pp.seq);
        if !self.witnessable(view, seq) || pp.replica != self.primary_of(view) {
            return;
        }
        let quorum = self.cfg.members.quorum();
        let w = self.left_views.entry(seq).or_default();
        // A newer view's pre-prepare replaces an older one, unless the older one is
        // already proven committed (a faulty primary of a view in between must not
        // be able to swap it for one nobody committed). In the same view (a primary
        // that sent several), the one more commits back replaces the other: keeping
        // the first seen, a mutation nobody committed, left the replica without the
        // committed batch for good (adversarial family, seed 208, f=1, once clients
        // backed off their retransmissions). Relays repeat each heartbeat, the
        // pre-prepare before its commits, so the committed one wins on a later relay.
        // And one whose commits already form a certificate replaces whatever is held
        // that is not proven, of any view: a faulty primary of a later view (one we
        // reached alone) must not keep us from the certificate of an earlier one
        // (two certificates for one seq always carry the same digest).
        let replace = match &w.pre_prepare {
            None => true,
            Some(_) if w.proven(quorum) => false,
            Some(_) if w.support(view, pp.digest) >= quorum => true,
            Some((old, _)) => {
                let (old_view, old_digest) = (old.payload.view, old.payload.digest);
                old_view < view
                    || (old_view == view
                        && w.support(view, pp.digest) > w.support(old_view, old_digest))
            }
        };
        if replace {
            w.pre_prepare = Some((pp.into_signed(), batch));
        }
        self.try_execute();
    }

    /// A commit of a view we left: count it.
    pub(super) fn witness_commit(&mut self, c: &Verified<Commit>) {
        let (view, seq) = (c.view, c.seq);
        if !self.witnessable(view, seq) {
            return;
        }
        let w = self.left_views.entry(seq).or_default();
        let newer = w
            .commits
            .get(&c.replica)
            .is_none_or(|old| old.payload.view < view);
        if newer {
            w.commits.insert(c.replica, c.signed().clone());
        }
        self.try_execute();
    }

    /// The batch at `seq` if 2f+1 replicas committed its pre-prepare in a view we
    /// left (or in ours, see the module doc). Persisted (the batch, then the
    /// decision) before it is executed, so a restart re-executes it like any
    /// committed slot.
    pub(super) fn committed_in_a_left_view(&mut self, seq: Seq) -> Option<(View, Batch)> {
        let w = self.left_views.get(&seq)?;
        let quorum = self.cfg.members.quorum();
        let logged = self.log.get(&seq).and_then(|s| s.pre_prepare.as_ref());
        let (pp, batch) = w
            .pre_prepare
            .iter()
            .chain(logged)
            .find(|(pp, _)| w.support(pp.payload.view, pp.payload.digest) >= quorum)
            .cloned()?;
        let (view, digest) = (pp.payload.view, pp.payload.digest);
        let proof: Vec<Signed<Commit>> = w.matching(view, digest).take(quorum).cloned().collect();
        self.settled.insert(seq, (pp.clone(), batch.clone(), proof));
        self.emit(Output::Persist(PersistRecord::Accepted {
            pre_prepare: pp,
            batch: batch.clone(),
        }));
        self.emit(Output::Persist(PersistRecord::Committed {
            seq,
            view,
            digest,
        }));
        self.left_views.remove(&seq);
        Some((view, batch))
    }

    /// Forget what no longer matters: slots executed or below the window.
    pub(super) fn forget_left_views_upto(&mut self, seq: Seq) {
        self.left_views.retain(|s, _| *s > seq);
    }

    /// Before leaving the view: keep the commit certificates of the slots executed
    /// in it (above the stable checkpoint) as settled. The next view's pre-prepares
    /// replace those slots in the log, and with them the only copies of the commits
    /// a laggard needs to execute them (the simulator's adversarial family, seed
    /// 388, f=2: slots committed in view 2 while a replica was down; the group then
    /// sat in a view that could not commit, and retransmission had nothing left to
    /// prove them with).
    pub(super) fn settle_executed_slots(&mut self) {
        if self.last_executed <= self.stable.seq {
            return; // nothing executed above the checkpoint (or fetching its state)
        }
        let quorum = self.cfg.commit_quorum;
        let mut proven = Vec::new();
        for (seq, slot) in self.log.range(self.stable.seq + 1..=self.last_executed) {
            if !slot.committed || self.settled.contains_key(seq) {
                continue;
            }
            let Some((pp, batch)) = &slot.pre_prepare else {
                continue;
            };
            let commits = matching(&slot.commits, pp.payload.view, pp.payload.digest, None);
            if commits.len() >= quorum {
                let proof = commits.into_iter().take(quorum).collect();
                proven.push((*seq, (pp.clone(), batch.clone(), proof)));
            }
        }
        self.settled.extend(proven);
    }
}
