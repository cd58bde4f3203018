//! Byzantine behaviours as wrappers around the honest replica (DESIGN.md): each
//! sees the honest replica's inputs and outputs and filters, alters (re-signing
//! with the replica's own key), duplicates or adds to them. The honest code has no
//! `if malicious` anywhere; the behaviour in force is a value that can be swapped.

mod adversarial;
mod behaviours;
mod rng;
mod twins;

pub use adversarial::{BelowMinS, HideCertificates, Mutate, SplitNewView};
pub use behaviours::{
    BadSignature, Censor, Crash, Delay, EagerVote, Equivocate, Flood, ForgeViewChange,
    LyingCheckpoint, OtherModule, Replay, Silent, WrongDigest,
};
pub use rng::SplitMix64;
pub use twins::{Twin, TwinsSchedule};

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

/// Every behaviour name of INTERFACE.md but `none`.
pub const ALL_BEHAVIOURS: &[&str] = &[
    "silent",
    "crash",
    "delay",
    "equivocate",
    "bad-signature",
    "wrong-digest",
    "lying-checkpoint",
    "forge-view-change",
    "replay",
    "censor",
    "flood",
    "traitor-relay",
    "eager-vote",
    "hide-certificates",
    "below-min-s",
    "split-new-view",
    "mutate",
];

/// `delay`'s default when no `ms` is given.
pub const DEFAULT_DELAY_MS: u64 = 100;

/// Build a behaviour from its INTERFACE.md name and parameters. `seed` drives its
/// choices.
///
/// # Errors
/// An unknown name, or a parameter the behaviour does not take.
pub fn build(name: &str, seed: u64, params: &Params) -> Result<Box<dyn Behaviour>, BehaviourError> {
    let allowed: &[&str] = if name == "delay" { &["ms"] } else { &[] };
    if let Some(p) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(BehaviourError::UnknownParam {
            behaviour: name.to_string(),
            param: p.clone(),
        });
    }
    if name == "delay" {
        let ms = params.get("ms").copied().unwrap_or(DEFAULT_DELAY_MS);
        return Ok(Box::new(Delay {
            delay: Duration::from_millis(ms),
        }));
    }
    by_name(name, seed).ok_or_else(|| BehaviourError::Unknown(name.to_string()))
}

/// Build a behaviour with default parameters from its INTERFACE.md name. `seed`
/// drives its choices.
#[must_use]
pub fn by_name(name: &str, seed: u64) -> Option<Box<dyn Behaviour>> {
    Some(match name {
        "none" => Box::new(Honest),
        "silent" => Box::new(Silent),
        "crash" => Box::new(Crash),
        "delay" => Box::new(Delay {
            delay: Duration::from_millis(DEFAULT_DELAY_MS),
        }),
        "traitor-relay" => Box::new(OtherModule("traitor-relay")),
        "equivocate" => Box::new(Equivocate),
        "bad-signature" => Box::new(BadSignature),
        "wrong-digest" => Box::new(WrongDigest::new(seed)),
        "lying-checkpoint" => Box::new(LyingCheckpoint::new(seed)),
        "forge-view-change" => Box::new(ForgeViewChange::new(seed)),
        "replay" => Box::new(Replay::new(seed)),
        "censor" => Box::new(Censor),
        "flood" => Box::new(Flood::new(seed)),
        "eager-vote" => Box::new(EagerVote),
        "hide-certificates" => Box::new(HideCertificates::new(seed)),
        "below-min-s" => Box::new(BelowMinS::new(seed)),
        "split-new-view" => Box::new(SplitNewView::new(seed)),
        "mutate" => Box::new(Mutate::new(seed)),
        _ => return None,
    })
}

/// The behaviours that change PBFT traffic (`traitor-relay` only changes the
/// generals protocol), the ones the simulator draws from.
pub const CORE_BEHAVIOURS: &[&str] = &[
    "silent",
    "crash",
    "delay",
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

/// Adversarial-but-valid behaviours (see `adversarial`): every message they send
/// passes the stateless checks; the adversarial simulator family draws from these
/// and the core ones.
pub const ADVERSARIAL_BEHAVIOURS: &[&str] = &[
    "hide-certificates",
    "below-min-s",
    "split-new-view",
    "mutate",
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
