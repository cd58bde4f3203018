//! Byzantine behaviours as wrappers around the honest replica (DESIGN.md): each
//! sees the honest replica's inputs and outputs and filters, alters (re-signing
//! with the replica's own key), duplicates or adds to them. The honest code has no
//! `if malicious` anywhere; the behaviour in force is a value that can be swapped.

mod adversarial;
mod behaviours;
mod forge_request;
mod rng;
mod stale_reads;
mod table;
mod twins;
mod wrong_results;

pub use adversarial::{BelowMinS, HideCertificates, Mutate, SplitNewView};
pub use behaviours::{
    BadSignature, Censor, Crash, Delay, EagerVote, Equivocate, Flood, ForgeViewChange,
    LyingCheckpoint, OtherModule, Replay, Silent, WrongDigest,
};
pub use forge_request::ForgeRequest;
pub use rng::SplitMix64;
pub use stale_reads::StaleReads;
pub use table::{
    build, by_name, Family, ADVERSARIAL_BEHAVIOURS, ALL_BEHAVIOURS, CORE_BEHAVIOURS,
    DEFAULT_DELAY_MS,
};
pub use twins::{Twin, TwinsSchedule};
pub use wrong_results::WrongResults;

use crate::app::Application;
use crate::io::{Input, Output};
use crate::replica::Replica;
use crate::types::{Membership, ReplicaId, View};
use bft_crypto::KeyPair;
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// What a behaviour may know about the replica it wraps.
pub struct Ctx<'a> {
    pub id: ReplicaId,
    pub members: &'a Membership,
    pub key: &'a KeyPair,
    pub view: View,
    pub window: (u64, u64),
    /// The replica's clock at this step.
    pub now: Duration,
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

/// Tests' group of four: the keys (replica `i`'s from seed `[i; 32]`) and the
/// membership they make.
#[cfg(test)]
pub(crate) fn four_replicas() -> (Vec<KeyPair>, Membership) {
    let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i; 32])).collect();
    let members = Membership::new(keys.iter().map(KeyPair::public).collect());
    (keys, members)
}

/// Tests' context: replica `id` of `members` in view 0 at time zero.
#[cfg(test)]
pub(crate) fn test_ctx<'a>(id: ReplicaId, members: &'a Membership, key: &'a KeyPair) -> Ctx<'a> {
    Ctx {
        id,
        members,
        key,
        view: 0,
        window: (0, 100),
        now: Duration::ZERO,
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

    /// Outputs of its own when `filter_input` kept an input from the honest replica
    /// (which then has none).
    fn on_dropped_input(&mut self, _ctx: &Ctx<'_>) -> Vec<Output> {
        Vec::new()
    }

    /// Transform the honest replica's outputs.
    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output>;

    /// Extra delay the driver adds to every message this replica sends.
    fn send_delay(&self) -> Duration {
        Duration::ZERO
    }

    /// True only for [`Honest`]: lets the wrapper skip itself.
    fn is_honest(&self) -> bool {
        false
    }
}

/// No misbehaviour: outputs pass unchanged.
pub struct Honest;

impl Behaviour for Honest {
    fn name(&self) -> &'static str {
        "none"
    }
    fn is_honest(&self) -> bool {
        true
    }
    fn outputs(&mut self, _ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        outputs
    }
}

/// Numeric parameters of a behaviour (`delay`'s `ms`), by name.
pub type Params = BTreeMap<String, u64>;

/// Why a behaviour cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BehaviourError {
    #[error("unknown behaviour {0:?} (known: none, {known})", known = ALL_BEHAVIOURS.join(", "))]
    Unknown(String),
    #[error("behaviour {behaviour} takes no parameter {param:?}")]
    UnknownParam { behaviour: String, param: String },
}

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

    /// Delay the driver adds to every send while this behaviour is in force.
    #[must_use]
    pub fn send_delay(&self) -> Duration {
        self.behaviour.send_delay()
    }

    /// Start the replica (first heartbeat, timers), through the behaviour.
    pub fn start(&mut self, now: Duration, out: &mut Vec<Output>) {
        let mut honest = Vec::new();
        self.replica.start(now, &mut honest);
        self.pass_outputs(now, honest, out);
    }

    fn pass_outputs(&mut self, now: Duration, honest: Vec<Output>, out: &mut Vec<Output>) {
        let key = self.replica.signing_key().clone();
        let members = self.replica.config().members.clone();
        let ctx = Ctx {
            id: self.replica.id(),
            members: &members,
            key: &key,
            view: self.replica.view(),
            window: self.replica.watermarks(),
            now,
        };
        out.extend(self.behaviour.outputs(&ctx, honest));
    }

    #[must_use]
    pub fn replica(&self) -> &Replica<A> {
        &self.replica
    }

    pub fn handle(&mut self, now: Duration, input: Input, out: &mut Vec<Output>) {
        if self.behaviour.is_honest() {
            // The common case costs nothing: no context to build, no copy of outputs.
            self.replica.handle(now, input, out);
            return;
        }
        let key = self.replica.signing_key().clone();
        let members = self.replica.config().members.clone();
        let ctx = Ctx {
            id: self.replica.id(),
            members: &members,
            key: &key,
            view: self.replica.view(),
            window: self.replica.watermarks(),
            now,
        };
        out.extend(self.behaviour.on_input(&ctx, &input));
        let Some(input) = self.behaviour.filter_input(&ctx, input) else {
            out.extend(self.behaviour.on_dropped_input(&ctx));
            return;
        };
        let mut honest = Vec::new();
        self.replica.handle(now, input, &mut honest);
        self.pass_outputs(now, honest, out);
    }
}
