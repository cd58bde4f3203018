//! The misbehaviours, each a small filter over the honest replica's traffic.

use super::{Behaviour, Ctx, SplitMix64};
use crate::io::{Input, Output};
use crate::messages::{
    Batch, Checkpoint, Commit, Message, PrePrepare, Prepare, PreparedProof, ViewChange,
};
use crate::validate::VerifiedMessage;
use bft_crypto::{Digest, Signature, Signed};
use std::collections::VecDeque;

fn is_network(o: &Output) -> bool {
    matches!(
        o,
        Output::Send { .. } | Output::Broadcast { .. } | Output::Replies(_)
    )
}

fn is_heartbeat(o: &Output) -> bool {
    matches!(
        o,
        Output::Broadcast {
            message: Message::Heartbeat(_)
        }
    )
}

/// `silent`: keeps its state and its heartbeats, so it looks alive, but sends no
/// protocol message. Only progress-based suspicion can unmask it as primary.
pub struct Silent;

impl Behaviour for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
            .into_iter()
            .filter(|o| !is_network(o) || is_heartbeat(o))
            .collect()
    }
}

/// `crash`: stops all output, heartbeats included (a crash failure, though the
/// process keeps running so it can be switched back).
pub struct Crash;

impl Behaviour for Crash {
    fn name(&self) -> &'static str {
        "crash"
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs.into_iter().filter(|o| !is_network(o)).collect()
    }
}

/// `delay`: sends everything, `ms` late (a timing failure). The driver applies the
/// delay; the outputs are the honest ones.
pub struct Delay {
    pub delay: std::time::Duration,
}

impl Behaviour for Delay {
    fn name(&self) -> &'static str {
        "delay"
    }
    fn send_delay(&self) -> std::time::Duration {
        self.delay
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}

/// A behaviour that leaves PBFT honest because it is about another module
/// (`traitor-relay` lies only in the generals protocol).
pub struct OtherModule(pub &'static str);

impl Behaviour for OtherModule {
    fn name(&self) -> &'static str {
        self.0
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}

/// `equivocate`: as primary, sends half the backups one batch and the other half a
/// conflicting one (the same requests reversed, or a null batch), both signed.
pub struct Equivocate;

impl Behaviour for Equivocate {
    fn name(&self) -> &'static str {
        "equivocate"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        fork_pre_prepares(outputs, |pp, batch| {
            let mut other = batch.clone();
            if other.len() > 1 {
                std::sync::Arc::make_mut(&mut other.requests).reverse();
            } else {
                other = Batch::default();
            }
            let forked = Signed::sign(
                PrePrepare {
                    digest: other.digest(),
                    ..pp.payload.clone()
                },
                ctx.key,
            );
            let others = ctx.others();
            let half = others.len() / 2;
            others
                .into_iter()
                .enumerate()
                .map(|(i, to)| {
                    let message = if i < half {
                        Message::PrePrepare(pp.clone(), batch.clone())
                    } else {
                        Message::PrePrepare(forked.clone(), other.clone())
                    };
                    Output::Send { to, message }
                })
                .collect()
        })
    }
}

/// The outputs with each pre-prepare the replica broadcasts replaced by what
/// `fork` makes of it (sends of its own choosing); the rest unchanged.
pub(super) fn fork_pre_prepares(
    outputs: Vec<Output>,
    mut fork: impl FnMut(Signed<PrePrepare>, Batch) -> Vec<Output>,
) -> Vec<Output> {
    let mut out = Vec::with_capacity(outputs.len());
    for o in outputs {
        match o {
            Output::Broadcast {
                message: Message::PrePrepare(pp, batch),
            } => out.extend(fork(pp, batch)),
            other => out.push(other),
        }
    }
    out
}

/// Break a signature (one bit of its scalar half).
pub(super) fn flip(sig: &mut Signature) {
    let mut b = sig.to_bytes();
    b[40] ^= 0x01;
    *sig = Signature::from_bytes(&b);
}

/// Flip a bit of the outer signature so it no longer verifies.
fn corrupt(message: &mut Message) {
    match message {
        Message::Request(s) => flip(&mut s.signature),
        Message::Read(s) => flip(&mut s.signature),
        Message::PrePrepare(s, _) => flip(&mut s.signature),
        Message::Prepare(s) => flip(&mut s.signature),
        Message::Commit(s) => flip(&mut s.signature),
        Message::Checkpoint(s) => flip(&mut s.signature),
        Message::ViewChange(s, _) => flip(&mut s.signature),
        Message::NewView(s, _) => flip(&mut s.signature),
        Message::FetchState(s) => flip(&mut s.signature),
        Message::State(s) => flip(&mut s.signature),
        Message::Reply(s) => flip(&mut s.root.signature),
        Message::Heartbeat(s) => flip(&mut s.signature),
        Message::Replies(b) => flip(&mut b.root.signature),
    }
}

/// `bad-signature`: every message it sends carries a broken signature.
pub struct BadSignature;

impl Behaviour for BadSignature {
    fn name(&self) -> &'static str {
        "bad-signature"
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            match o {
                Output::Send { message, .. } | Output::Broadcast { message } => corrupt(message),
                Output::Replies(replies) => flip(&mut replies.root.signature),
                _ => {}
            }
        }
        outputs
    }
}

/// `wrong-digest`: its prepares and commits vouch for a digest nobody proposed.
pub struct WrongDigest(SplitMix64);

impl WrongDigest {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
}

impl Behaviour for WrongDigest {
    fn name(&self) -> &'static str {
        "wrong-digest"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            if let Output::Broadcast { message } = o {
                match message {
                    Message::Prepare(p) => {
                        let digest = Digest(self.0.bytes32());
                        *p = Signed::sign(
                            Prepare {
                                digest,
                                ..p.payload.clone()
                            },
                            ctx.key,
                        );
                    }
                    Message::Commit(c) => {
                        let digest = Digest(self.0.bytes32());
                        *c = Signed::sign(
                            Commit {
                                digest,
                                ..c.payload.clone()
                            },
                            ctx.key,
                        );
                    }
                    _ => {}
                }
            }
        }
        outputs
    }
}

/// `lying-checkpoint`: signs checkpoints with a wrong snapshot digest.
pub struct LyingCheckpoint(SplitMix64);

impl LyingCheckpoint {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
}

impl Behaviour for LyingCheckpoint {
    fn name(&self) -> &'static str {
        "lying-checkpoint"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            if let Output::Broadcast {
                message: Message::Checkpoint(c),
            } = o
            {
                let snapshot_digest = Digest(self.0.bytes32());
                *c = Signed::sign(
                    Checkpoint {
                        snapshot_digest,
                        ..c.payload.clone()
                    },
                    ctx.key,
                );
            }
        }
        outputs
    }
}

/// `forge-view-change`: asks for view changes with prepared certificates it cannot
/// prove (prepares "from" other replicas signed with its own key).
pub struct ForgeViewChange(SplitMix64);

impl ForgeViewChange {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    fn forged(&mut self, ctx: &Ctx<'_>, new_view: u64, stable_seq: u64) -> Signed<ViewChange> {
        let view = new_view.saturating_sub(1);
        let seq = stable_seq + 1 + self.0.below(4);
        let digest = Digest(self.0.bytes32());
        let primary = ctx.members.primary(view);
        let pre_prepare = Signed::sign(
            PrePrepare {
                view,
                seq,
                digest,
                replica: primary,
            },
            ctx.key,
        );
        let prepares = ctx
            .members
            .ids()
            .filter(|r| *r != primary)
            .map(|replica| {
                Signed::sign(
                    Prepare {
                        view,
                        seq,
                        digest,
                        replica,
                    },
                    ctx.key,
                )
            })
            .collect();
        let cert = PreparedProof {
            pre_prepare,
            prepares,
        };
        Signed::sign(
            ViewChange {
                new_view,
                stable_seq,
                checkpoint_proof: Vec::new(),
                prepared: vec![cert],
                replica: ctx.id,
            },
            ctx.key,
        )
    }
}

impl Behaviour for ForgeViewChange {
    fn name(&self) -> &'static str {
        "forge-view-change"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            if let Output::Broadcast {
                message: Message::ViewChange(vc, bodies),
            } = o
            {
                let forged = self.forged(ctx, vc.payload.new_view, 0);
                *vc = forged;
                bodies.clear(); // the forged certificate names a batch nobody has
            }
        }
        if self.0.chance(0.05) {
            let vc = self.forged(ctx, ctx.view + 1, 0);
            outputs.push(Output::Broadcast {
                message: Message::ViewChange(vc, Vec::new()),
            });
        }
        outputs
    }
}

/// `replay`: re-sends old messages of its own, at random, to random replicas.
pub struct Replay {
    rng: SplitMix64,
    sent: VecDeque<Message>,
}

impl Replay {
    const KEEP: usize = 256;

    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            sent: VecDeque::new(),
        }
    }
}

impl Behaviour for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &outputs {
            if let Output::Send { message, .. } | Output::Broadcast { message } = o {
                if self.sent.len() == Self::KEEP {
                    self.sent.pop_front();
                }
                self.sent.push_back(message.clone());
            }
        }
        if !self.sent.is_empty() && self.rng.chance(0.5) {
            let old = self.sent[self.rng.below(self.sent.len() as u64) as usize].clone();
            let others = ctx.others();
            let to = others[self.rng.below(others.len() as u64) as usize];
            outputs.push(Output::Send { to, message: old });
        }
        outputs
    }
}

/// `censor`: ignores client requests (as primary: never orders them).
pub struct Censor;

impl Behaviour for Censor {
    fn name(&self) -> &'static str {
        "censor"
    }
    fn filter_input(&mut self, _ctx: &Ctx<'_>, input: Input) -> Option<Input> {
        match input {
            Input::Message(VerifiedMessage::Request(_)) => None,
            other => Some(other),
        }
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}

/// `flood`: adds a burst of invalid messages (bad signatures, wrong claimed sender,
/// out-of-window sequence numbers) to everything it sends.
pub struct Flood(SplitMix64);

impl Flood {
    const BURST: usize = 8;

    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
}

impl Behaviour for Flood {
    fn name(&self) -> &'static str {
        "flood"
    }
    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for _ in 0..Self::BURST {
            let digest = Digest(self.0.bytes32());
            let seq = ctx.window.1 + 1 + self.0.below(1 << 20);
            let claimed = self.0.below(ctx.members.n() as u64) as u32;
            let mut message = Message::Commit(Signed::sign(
                Commit {
                    view: ctx.view,
                    seq,
                    digest,
                    replica: claimed,
                },
                ctx.key,
            ));
            if self.0.chance(0.5) {
                corrupt(&mut message);
            }
            outputs.push(Output::Broadcast { message });
        }
        outputs
    }
}

/// `eager-vote`: prepares and commits every pre-prepare the moment it arrives,
/// without waiting to be prepared. Harmless against correct quorums; it is what
/// turns a too-small commit quorum into an agreement violation.
pub struct EagerVote;

impl Behaviour for EagerVote {
    fn name(&self) -> &'static str {
        "eager-vote"
    }
    fn on_input(&mut self, ctx: &Ctx<'_>, input: &Input) -> Vec<Output> {
        let Input::Message(VerifiedMessage::PrePrepare(pp, _)) = input else {
            return Vec::new();
        };
        let (view, seq, digest, replica) = (pp.view, pp.seq, pp.digest, ctx.id);
        vec![
            Output::Broadcast {
                message: Message::Prepare(Signed::sign(
                    Prepare {
                        view,
                        seq,
                        digest,
                        replica,
                    },
                    ctx.key,
                )),
            },
            Output::Broadcast {
                message: Message::Commit(Signed::sign(
                    Commit {
                        view,
                        seq,
                        digest,
                        replica,
                    },
                    ctx.key,
                )),
            },
        ]
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}
