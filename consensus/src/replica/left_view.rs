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
//! A certificate is 2f+1 commits of one view, but the slot's pre-prepare may be of
//! another (a view-change carries the batch to later views under the same digest,
//! and the digest binds the batch): any pre-prepare held with the certified digest
//! gives the batch. Commits are kept per view: a replica that committed the slot
//! in view 0 and again in view 1 counts toward both views' certificates (keeping
//! only each replica's newest commit lost view 0's certificate for good once some
//! of its signers had also committed in view 1 while too few others had:
//! storage family, seed 149, f=2).
//!
//! Bounded: only sequence numbers inside the window and above what was executed,
//! one pre-prepare and, per replica, commits of at most [`VIEWS_PER_REPLICA`]
//! views each; and the certificates of the slots executed this way (`Settled`)
//! until a stable checkpoint covers them.

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
    /// Each replica's first commit in each view (its newest views only), signed:
    /// once the slot executes, a certificate among them is its proof, relayed to
    /// laggards (see `retransmit`).
    commits: BTreeMap<(ReplicaId, View), Signed<Commit>>,
}

/// Views whose commits are kept per replica and slot: a slot is committed again in
/// each view a view change carries it to, and its certificate may be in any of
/// them; a faulty replica signing commits for endless views only pushes out its
/// own oldest.
const VIEWS_PER_REPLICA: usize = 4;

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
    /// The pre-prepare held carries a certified digest: its batch is the one
    /// committed.
    fn proven(&self, quorum: usize) -> bool {
        let Some((pp, _)) = &self.pre_prepare else {
            return false;
        };
        self.certified(quorum)
            .is_some_and(|(_, digest)| digest == pp.payload.digest)
    }

    /// A (view, digest) that `quorum` distinct replicas committed: a commit
    /// certificate. (Two certificates for one slot always carry the same digest.)
    fn certified(&self, quorum: usize) -> Option<(View, Digest)> {
        let mut counts: BTreeMap<(View, Digest), usize> = BTreeMap::new();
        for c in self.commits.values() {
            *counts
                .entry((c.payload.view, c.payload.digest))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .find(|(_, n)| *n >= quorum)
            .map(|(certified, _)| certified)
    }

    /// Keep `c`, dropping its signer's oldest view beyond [`VIEWS_PER_REPLICA`].
    /// If its signer already committed another digest in its view (an
    /// equivocation), one of the two stands: the one for the pre-prepare held, else
    /// the one more of the other replicas committed, else the first. A faulty
    /// replica's signature counts in a certificate however many others it signed,
    /// and keeping its first commit when that is the stray one could leave the
    /// certificate one commit short for good (adversarial seed 744, f=1, once
    /// replicas kept an equivocator's vote for the digest they accepted: the
    /// replica that had left the view held the faulty replica's commit for a random
    /// digest and never counted the relayed one for the committed batch).
    fn add_commit(&mut self, c: Signed<Commit>) {
        let (replica, view, digest) = (c.payload.replica, c.payload.view, c.payload.digest);
        match self
            .commits
            .get(&(replica, view))
            .map(|old| old.payload.digest)
        {
            None => {
                self.commits.insert((replica, view), c);
            }
            Some(old) if old == digest => {}
            Some(old) => {
                let held = self.pre_prepare.as_ref().map(|(pp, _)| pp.payload.digest);
                // The signer's own commit is among the old digest's support.
                let better = held == Some(digest)
                    || (held != Some(old)
                        && self.support(view, digest) + 1 > self.support(view, old));
                if better {
                    self.commits.insert((replica, view), c);
                }
            }
        }
        let views = self.commits.range((replica, 0)..=(replica, View::MAX));
        if views.clone().count() > VIEWS_PER_REPLICA {
            let oldest = views.map(|(key, _)| *key).next();
            if let Some(oldest) = oldest {
                self.commits.remove(&oldest);
            }
        }
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
            Some(_) if w.certified(quorum).is_some_and(|(_, d)| d == pp.digest) => true,
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
        w.add_commit(c.signed().clone());
        self.try_execute();
    }

    /// The batch at `seq`, the view it committed in and its digest, if 2f+1 replicas committed
    /// it in a view we left (or in ours, see the module doc) and we hold a
    /// pre-prepare (of any view) with its digest. Persisted (the batch, then the
    /// decision) before it is executed, so a restart re-executes it like any
    /// committed slot.
    pub(super) fn committed_in_a_left_view(&mut self, seq: Seq) -> Option<(View, Digest, Batch)> {
        let w = self.left_views.get(&seq)?;
        let quorum = self.cfg.members.quorum();
        let (view, digest) = w.certified(quorum)?;
        let logged = self.log.get(&seq).and_then(|s| s.pre_prepare.as_ref());
        // Only a pre-prepare our durable state will keep for this seq: it keeps the
        // accepted one of the highest view, as our log does, so one older than the
        // log's would be dropped and a restart would find the decision without its
        // batch. (Then we wait: the views after the certificate's carry its digest,
        // and retransmission relays their pre-prepares.) Of those, the
        // certificate's own view's if we hold it (what we relay then reaches a
        // laggard in that view too), else any with its digest.
        let logged_view = logged.map(|(pp, _)| pp.payload.view);
        let kept = |pp: &Signed<PrePrepare>| logged_view.is_none_or(|v| pp.payload.view >= v);
        let held = || {
            w.pre_prepare
                .iter()
                .chain(logged)
                .filter(|(pp, _)| pp.payload.digest == digest && kept(pp))
        };
        let (pp, batch) = held()
            .find(|(pp, _)| pp.payload.view == view)
            .or_else(|| held().next())
            .cloned()?;
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
        Some((view, digest, batch))
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
