//! Byzantine behaviours as wrappers around the honest replica (DESIGN.md): each
//! sees the honest replica's inputs and outputs and filters, alters (re-signing
//! with the replica's own key), duplicates or adds to them. The honest code has no
//! `if malicious` anywhere; the behaviour in force is a value that can be swapped.

mod behaviours;
mod rng;

pub use behaviours::{
    BadSignature, Censor, EagerVote, Equivocate, Flood, ForgeViewChange, LyingCheckpoint, Replay,
    Silent, WrongDigest,
};
pub use rng::SplitMix64;

use crate::app::Application;
use crate::io::{Input, Output};
use crate::replica::Replica;
use crate::types::{Membership, ReplicaId, View};
use bft_crypto::KeyPair;
use std::time::Duration;

/// What a behaviour may know about the replica it wraps.
pub struct Ctx<'a> {
    pub id: ReplicaId,
    pub members: &'a Membership,
    pub key: &'a KeyPair,
    pub view: View,
    pub window: (u64, u64),
}

impl Ctx<'_> {
    #[must_use]
    pub fn is_primary(&self) -> bool {
        self.members.primary(self.view) == self.id
    }

    /// Every replica but this one, in id order.
    #[must_use]
    pub fn others(&self) -> Vec<ReplicaId> {
        self.members.ids().filter(|r| *r != self.id).collect()
    }
}

/// A way of misbehaving. Names are the stable names of INTERFACE.md.
pub trait Behaviour: Send {
    fn name(&self) -> &'static str;

    /// See (and possibly drop) an input before the honest replica does.
    fn filter_input(&mut self, _ctx: &Ctx<'_>, input: Input) -> Option<Input> {
        Some(input)
    }

    /// Extra outputs upon an input, before the honest replica's own.
    fn on_input(&mut self, _ctx: &Ctx<'_>, _input: &Input) -> Vec<Output> {
        Vec::new()
    }

    /// Transform the honest replica's outputs.
    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output>;
}

/// No misbehaviour: outputs pass unchanged.
pub struct Honest;

impl Behaviour for Honest {
    fn name(&self) -> &'static str {
        "none"
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}

/// Build a behaviour from its INTERFACE.md name. `seed` drives its choices.
#[must_use]
pub fn by_name(name: &str, seed: u64) -> Option<Box<dyn Behaviour>> {
    Some(match name {
        "none" => Box::new(Honest),
        "silent" => Box::new(Silent),
        "equivocate" => Box::new(Equivocate),
        "bad-signature" => Box::new(BadSignature),
        "wrong-digest" => Box::new(WrongDigest::new(seed)),
        "lying-checkpoint" => Box::new(LyingCheckpoint::new(seed)),
        "forge-view-change" => Box::new(ForgeViewChange::new(seed)),
        "replay" => Box::new(Replay::new(seed)),
        "censor" => Box::new(Censor),
        "flood" => Box::new(Flood::new(seed)),
        "eager-vote" => Box::new(EagerVote),
        _ => return None,
    })
}

/// The behaviours that live in the core (the node adds `crash` and `delay`, which
/// are about its I/O, and `traitor-relay` belongs to the generals module).
pub const CORE_BEHAVIOURS: &[&str] = &[
    "silent",
    "equivocate",
    "bad-signature",
    "wrong-digest",
    "lying-checkpoint",
    "forge-view-change",
    "replay",
    "censor",
    "flood",
    "eager-vote",
];

/// An honest replica with a behaviour around it.
pub struct Wrapped<A: Application> {
    replica: Replica<A>,
    behaviour: Box<dyn Behaviour>,
}

impl<A: Application> Wrapped<A> {
    #[must_use]
    pub fn new(replica: Replica<A>, behaviour: Box<dyn Behaviour>) -> Self {
        Self { replica, behaviour }
    }

    /// Swap the behaviour at runtime.
    pub fn set_behaviour(&mut self, behaviour: Box<dyn Behaviour>) {
        self.behaviour = behaviour;
    }

    #[must_use]
    pub fn behaviour(&self) -> &'static str {
        self.behaviour.name()
    }

    #[must_use]
    pub fn replica(&self) -> &Replica<A> {
        &self.replica
    }

    pub fn handle(&mut self, now: Duration, input: Input, out: &mut Vec<Output>) {
        let key = self.replica.signing_key().clone();
        let ctx = Ctx {
            id: self.replica.id(),
            members: &self.replica.config().members.clone(),
            key: &key,
            view: self.replica.view(),
            window: self.replica.watermarks(),
        };
        out.extend(self.behaviour.on_input(&ctx, &input));
        let Some(input) = self.behaviour.filter_input(&ctx, input) else {
            return;
        };
        let mut honest = Vec::new();
        self.replica.handle(now, input, &mut honest);
        let ctx = Ctx {
            view: self.replica.view(),
            window: self.replica.watermarks(),
            ..ctx
        };
        out.extend(self.behaviour.outputs(&ctx, honest));
    }
}
