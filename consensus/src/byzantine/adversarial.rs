//! Adversarial-but-valid misbehaviours (issue 12): messages every check passes one
//! by one, signed with the replica's own key, that an honest replica would not send.
//! They attack the rules that hold between messages (min-s, the choice of V, the
//! certificates a view-change must carry), where filters that break signatures or
//! digests cannot reach. Like every behaviour they wrap the honest replica.

use super::{Behaviour, Ctx, SplitMix64};
use crate::io::{Input, Output};
use crate::messages::{
    Batch, Checkpoint, Commit, Message, NewView, PrePrepare, Prepare, ViewChange,
};
use crate::new_view::{index, plan};
use crate::types::{ReplicaId, Seq, View};
use crate::validate::VerifiedMessage;
use bft_crypto::Signed;
use std::collections::BTreeMap;

/// A view-change with the batches carried beside it.
type Carried = (Signed<ViewChange>, Vec<Batch>);

/// Most view-changes a [`SplitNewView`] keeps (per view, and views kept).
const KEPT_VIEWS: usize = 4;

/// `hide-certificates`: its view-changes leave out prepared certificates (some or
/// all) and may claim an older stable checkpoint than it has (genesis, or one it
/// vouched for in an earlier view-change): each still a well-formed, correctly
/// signed view-change. Safety must not rest on any one replica's honesty here:
/// 2f+1 view-changes always hold one honest certificate for whatever committed.
pub struct HideCertificates {
    rng: SplitMix64,
    /// Older stable checkpoints it proved before, to claim instead of its newest.
    older: Vec<(Seq, Vec<Signed<Checkpoint>>)>,
}

impl HideCertificates {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            older: Vec::new(),
        }
    }

    fn hide(&mut self, ctx: &Ctx<'_>, vc: &ViewChange, bodies: &mut Vec<Batch>) -> ViewChange {
        let mut out = vc.clone();
        if vc.stable_seq > 0 && !self.older.iter().any(|(s, _)| *s == vc.stable_seq) {
            self.older
                .push((vc.stable_seq, vc.checkpoint_proof.clone()));
            if self.older.len() > 8 {
                self.older.remove(0);
            }
        }
        if self.rng.chance(0.5) {
            // An older checkpoint: genesis, or one proven before.
            let pick = self.rng.below(self.older.len() as u64 + 1) as usize;
            let (seq, proof) = self.older.get(pick).cloned().unwrap_or((0, Vec::new()));
            if seq <= vc.stable_seq {
                out.stable_seq = seq;
                out.checkpoint_proof = proof;
            }
        }
        // Keep each certificate with probability one half; none at all a third of
        // the time. Certificates must stay within the claimed checkpoint's window.
        let none = self.rng.chance(0.33);
        // The high water mark is the real checkpoint plus the window.
        let window = ctx.window.1.saturating_sub(vc.stable_seq);
        let (low, high) = (out.stable_seq, out.stable_seq + window);
        out.prepared.retain(|c| {
            let keep = !none && self.rng.chance(0.5);
            keep && c.seq() > low && c.seq() <= high
        });
        let named: std::collections::BTreeSet<_> = out
            .prepared
            .iter()
            .map(|c| c.pre_prepare.payload.digest)
            .collect();
        bodies.retain(|b| named.contains(&b.digest()));
        out
    }
}

impl Behaviour for HideCertificates {
    fn name(&self) -> &'static str {
        "hide-certificates"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            if let Output::Broadcast {
                message: Message::ViewChange(vc, bodies),
            } = o
            {
                if vc.payload.replica == ctx.id {
                    let hidden = self.hide(ctx, &vc.payload, bodies);
                    *vc = Signed::sign(hidden, ctx.key);
                }
            }
        }
        outputs
    }
}

/// `below-min-s`: as a new primary, it also proposes fresh (null) batches at
/// sequence numbers at or below min-s, the highest stable checkpoint in V, and
/// commits them itself. Below min-s the group has already decided; a replica that
/// is behind must ignore these (its low water mark rises to min-s with the
/// new-view), or it could execute something else than the group did there.
pub struct BelowMinS(SplitMix64);

impl BelowMinS {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    fn below(&mut self, ctx: &Ctx<'_>, view: View, min_s: Seq) -> Vec<Output> {
        let null = Batch::default();
        let digest = null.digest();
        let lowest = min_s.saturating_sub(self.0.below(8)).max(1);
        let mut out = Vec::new();
        for seq in lowest..=min_s {
            let pp = Signed::sign(
                PrePrepare {
                    view,
                    seq,
                    digest,
                    replica: ctx.id,
                },
                ctx.key,
            );
            let commit = Signed::sign(
                Commit {
                    view,
                    seq,
                    digest,
                    replica: ctx.id,
                },
                ctx.key,
            );
            out.push(Output::Broadcast {
                message: Message::PrePrepare(pp, null.clone()),
            });
            out.push(Output::Broadcast {
                message: Message::Commit(commit),
            });
        }
        out
    }
}

impl Behaviour for BelowMinS {
    fn name(&self) -> &'static str {
        "below-min-s"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        let mut extra = Vec::new();
        for o in &outputs {
            if let Output::Broadcast {
                message: Message::NewView(nv, _),
            } = o
            {
                let min_s = nv
                    .payload
                    .view_changes
                    .iter()
                    .map(|vc| vc.payload.stable_seq)
                    .max()
                    .unwrap_or(0);
                if min_s > 0 {
                    extra.extend(self.below(ctx, nv.payload.view, min_s));
                }
            }
        }
        // After the new-view, so a replica has V when the stale proposals arrive.
        outputs.extend(extra);
        outputs
    }
}

/// `split-new-view`: a new primary that picks which 2f+1 view-changes make V (the
/// ones with the fewest certificates, its own stripped of them, or at random), for
/// all backups alike or differently for each: every backup gets a new-view that is
/// valid on its own, but not the same one. V decides O (what survives the view
/// change), so this probes the rule that any 2f+1 view-changes carry everything
/// that may have committed.
pub struct SplitNewView {
    rng: SplitMix64,
    /// Valid view-changes received, by the view they ask for.
    seen: BTreeMap<View, BTreeMap<ReplicaId, Carried>>,
}

impl SplitNewView {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            seen: BTreeMap::new(),
        }
    }

    /// A new-view for `view` from a random choice of 2f+1 view-changes, or None if
    /// no other choice is possible. Now and then V is one short (a small-scope
    /// mutation every backup must refuse: 2f view-changes need not hold the
    /// certificate of a request that committed).
    fn another(&mut self, ctx: &Ctx<'_>, view: View) -> Option<(Signed<NewView>, Vec<Batch>)> {
        let short = self.rng.chance(0.3);
        let quorum = ctx.members.quorum() - usize::from(short);
        let mut pool: Vec<_> = self.seen.get(&view)?.values().cloned().collect();
        if pool.len() <= quorum {
            return None;
        }
        if self.rng.chance(0.5) {
            // The hostile choice: those that carry the fewest certificates.
            pool.sort_by_key(|(vc, _)| vc.payload.prepared.len());
        } else {
            // A random choice (Fisher-Yates on a prefix).
            for i in 0..quorum {
                let j = i + self.rng.below((pool.len() - i) as u64) as usize;
                pool.swap(i, j);
            }
        }
        pool.truncate(quorum);
        // It may rewrite its own view-change too: without certificates.
        if self.rng.chance(0.5) {
            for (vc, bodies) in &mut pool {
                if vc.payload.replica == ctx.id {
                    let mut bare = vc.payload.clone();
                    bare.prepared.clear();
                    *vc = Signed::sign(bare, ctx.key);
                    bodies.clear();
                }
            }
        }
        pool.sort_by_key(|(vc, _)| vc.payload.replica);
        let bodies = index(pool.iter().flat_map(|(_, b)| b));
        let vcs: Vec<Signed<ViewChange>> = pool.into_iter().map(|(vc, _)| vc).collect();
        let plan = plan(&vcs, &bodies).ok()?;
        let pre_prepares = plan
            .entries
            .iter()
            .map(|(seq, digest, _)| {
                Signed::sign(
                    PrePrepare {
                        view,
                        seq: *seq,
                        digest: *digest,
                        replica: ctx.id,
                    },
                    ctx.key,
                )
            })
            .collect();
        let nv = Signed::sign(
            NewView {
                view,
                view_changes: vcs,
                pre_prepares,
                replica: ctx.id,
            },
            ctx.key,
        );
        Some((nv, plan.bodies()))
    }
}

impl Behaviour for SplitNewView {
    fn name(&self) -> &'static str {
        "split-new-view"
    }
    fn on_input(&mut self, _ctx: &Ctx<'_>, input: &Input) -> Vec<Output> {
        if let Input::Message(VerifiedMessage::ViewChange(vc, bodies)) = input {
            let view = vc.new_view;
            self.seen
                .entry(view)
                .or_default()
                .insert(vc.replica, (vc.signed().clone(), bodies.clone()));
            while self.seen.len() > KEPT_VIEWS {
                self.seen.pop_first();
            }
        }
        Vec::new()
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        let mut out = Vec::with_capacity(outputs.len());
        for o in outputs {
            match o {
                Output::Broadcast {
                    message: Message::ViewChange(vc, bodies),
                } if vc.payload.replica == ctx.id => {
                    // Its own view-change counts towards V too.
                    self.seen
                        .entry(vc.payload.new_view)
                        .or_default()
                        .insert(ctx.id, (vc.clone(), bodies.clone()));
                    out.push(Output::Broadcast {
                        message: Message::ViewChange(vc, bodies),
                    });
                }
                Output::Broadcast {
                    message: Message::NewView(nv, bodies),
                } if nv.payload.replica == ctx.id => {
                    let view = nv.payload.view;
                    // One V of its choosing for everybody, or a V per backup.
                    let one = if self.rng.chance(0.5) {
                        self.another(ctx, view)
                    } else {
                        None
                    };
                    for to in ctx.others() {
                        let pick = one
                            .clone()
                            .or_else(|| self.another(ctx, view).filter(|_| self.rng.chance(0.7)));
                        let message = match pick {
                            Some((other, other_bodies)) => Message::NewView(other, other_bodies),
                            None => Message::NewView(nv.clone(), bodies.clone()),
                        };
                        out.push(Output::Send { to, message });
                    }
                }
                other => out.push(other),
            }
        }
        out
    }
}

/// `mutate` (ByzzFuzz's small-scope mutations): now and then it changes the view
/// or sequence number of a message of its own by one or two, re-signed, so the
/// message is valid but about a neighbouring slot or view: off-by-one attacks on
/// every rule that compares views and sequence numbers.
pub struct Mutate(SplitMix64);

impl Mutate {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// A number near `x`: one or two up or down (never below zero).
    fn near(&mut self, x: u64) -> u64 {
        let by = 1 + self.0.below(2);
        if self.0.chance(0.5) {
            x.saturating_add(by)
        } else {
            x.saturating_sub(by)
        }
    }

    /// Move the view or the sequence number of a vote-like message.
    fn shift(&mut self, view_not_seq: bool, view: &mut View, seq: &mut Seq) {
        if view_not_seq {
            *view = self.near(*view);
        } else {
            *seq = self.near(*seq);
        }
    }

    fn mutate(&mut self, ctx: &Ctx<'_>, message: &mut Message) {
        let view_not_seq = self.0.chance(0.5);
        match message {
            Message::PrePrepare(pp, _) if pp.payload.replica == ctx.id => {
                let mut p = pp.payload.clone();
                self.shift(view_not_seq, &mut p.view, &mut p.seq);
                *pp = Signed::sign(p, ctx.key);
            }
            Message::Prepare(v) if v.payload.replica == ctx.id => {
                let mut p: Prepare = v.payload.clone();
                self.shift(view_not_seq, &mut p.view, &mut p.seq);
                *v = Signed::sign(p, ctx.key);
            }
            Message::Commit(v) if v.payload.replica == ctx.id => {
                let mut p: Commit = v.payload.clone();
                self.shift(view_not_seq, &mut p.view, &mut p.seq);
                *v = Signed::sign(p, ctx.key);
            }
            Message::Checkpoint(c) if c.payload.replica == ctx.id => {
                let mut p = c.payload.clone();
                p.seq = self.near(p.seq);
                *c = Signed::sign(p, ctx.key);
            }
            Message::ViewChange(vc, _) if vc.payload.replica == ctx.id => {
                let mut p = vc.payload.clone();
                p.new_view = self.near(p.new_view);
                *vc = Signed::sign(p, ctx.key);
            }
            Message::NewView(nv, _) if nv.payload.replica == ctx.id => {
                let mut p = nv.payload.clone();
                p.view = self.near(p.view);
                *nv = Signed::sign(p, ctx.key);
            }
            _ => {}
        }
    }
}

impl Behaviour for Mutate {
    fn name(&self) -> &'static str {
        "mutate"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        let mut out = Vec::with_capacity(outputs.len());
        for o in outputs {
            let mut changed = o.clone();
            let message = match &mut changed {
                Output::Send { message, .. } | Output::Broadcast { message } => message,
                _ => {
                    out.push(o);
                    continue;
                }
            };
            if !self.0.chance(0.2) {
                out.push(o);
                continue;
            }
            self.mutate(ctx, message);
            // Instead of the honest message, or beside it (an off-by-one equivocation).
            if self.0.chance(0.5) {
                out.push(o);
            }
            out.push(changed);
        }
        out
    }
}
