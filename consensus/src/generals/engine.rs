//! SM(m) (Lamport, Shostak & Pease 1982, §4) as a sans-IO state machine.
//!
//! The commander signs its value and sends it to every lieutenant. A lieutenant
//! that receives a valid chain of k signatures in time (by the end of round k)
//! with a value not yet in its set V adds it; if k <= m it appends its own
//! signature and sends the chain to every replica that has not signed it. After
//! m+1 rounds it decides choice(V): the value if V holds exactly one, else none.
//!
//! Why it works for any number m of traitors (n >= m+2): a loyal lieutenant that
//! accepts v relays it, so every loyal lieutenant accepts it one round later; a
//! chain of m+1 signatures has a loyal signer, who already relayed it. So loyal
//! lieutenants end with the same V (IC1), and a loyal commander's value is the only
//! one anyone can prove (IC2). Only two values ever need relaying: with two, V's
//! choice is already "none" everywhere.
//!
//! Time: `now` must be comparable across replicas (the node passes wall-clock
//! time; the simulator its global clock). The round length must cover message
//! delay plus clock skew; the node takes it from the failure detector.

use super::messages::{Chain, Instance, InstanceId, Report, VerifiedChain};
use crate::types::ReplicaId;
use bft_crypto::{KeyPair, Signed};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Instances remembered; the oldest are forgotten first (a bound on hostile input).
pub const MAX_INSTANCES: usize = 256;
/// How far in the future an instance may claim to start.
const MAX_START_AHEAD_MS: u64 = 10_000;
/// Values relayed per instance (two suffice; see the module docs).
const RELAYED_VALUES: usize = 2;

/// What the engine asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeneralsOutput {
    /// Send `chain` to replica `to`.
    Send { to: ReplicaId, chain: Chain },
    /// Send this decision report to the instance's commander.
    Report {
        to: ReplicaId,
        report: Signed<Report>,
    },
    /// Call [`Generals::on_timer`] at `at` (or later).
    SetTimer { at: Duration },
    /// This replica decided.
    Decided {
        id: InstanceId,
        value: Option<String>,
    },
    /// A chain was valid but refused (late, or an instance out of bounds).
    Ignored { id: InstanceId, why: &'static str },
}

/// One instance as this replica sees it.
#[derive(Clone, Debug)]
pub struct InstanceState {
    pub instance: Instance,
    /// V: the values accepted.
    pub values: BTreeSet<String>,
    pub decided: Option<Option<String>>,
    /// Commander only: each replica's reported decision.
    pub reports: BTreeMap<ReplicaId, Option<String>>,
}

pub struct Generals {
    me: ReplicaId,
    n: usize,
    key: KeyPair,
    next_nonce: u64,
    instances: BTreeMap<InstanceId, InstanceState>,
    /// Arrival order, for forgetting the oldest.
    order: Vec<InstanceId>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Generals {
    /// `first_nonce` must not repeat across restarts (the node uses its start time).
    #[must_use]
    pub fn new(me: ReplicaId, n: usize, key: KeyPair, first_nonce: u64) -> Self {
        Self {
            me,
            n,
            key,
            next_nonce: first_nonce,
            instances: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    #[must_use]
    pub fn id(&self) -> ReplicaId {
        self.me
    }

    #[must_use]
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The largest m this group supports (n >= m+2).
    #[must_use]
    pub fn max_m(&self) -> u32 {
        u32::try_from(self.n.saturating_sub(2)).unwrap_or(u32::MAX)
    }

    /// Start an instance as commander: sign `value` and send it to every lieutenant.
    /// The commander decides its own value at once.
    pub fn propose(
        &mut self,
        now: Duration,
        value: String,
        m: u32,
        round: Duration,
    ) -> (InstanceId, Vec<GeneralsOutput>) {
        let id = InstanceId {
            commander: self.me,
            nonce: self.next_nonce,
        };
        self.next_nonce += 1;
        let instance = Instance {
            id,
            m: m.min(self.max_m()),
            start_ms: ms(now),
            round_ms: ms(round).max(1),
        };
        let chain = Chain::order(instance, value.clone(), &self.key);
        let mut out: Vec<GeneralsOutput> = (0..self.n as ReplicaId)
            .filter(|r| *r != self.me)
            .map(|to| GeneralsOutput::Send {
                to,
                chain: chain.clone(),
            })
            .collect();
        let me = self.me;
        let state = self.remember(instance);
        state.values.insert(value.clone());
        state.decided = Some(Some(value.clone()));
        state.reports.insert(me, Some(value.clone()));
        out.push(GeneralsOutput::Decided {
            id,
            value: Some(value),
        });
        (id, out)
    }

    fn remember(&mut self, instance: Instance) -> &mut InstanceState {
        let id = instance.id;
        if !self.instances.contains_key(&id) {
            if self.order.len() >= MAX_INSTANCES {
                let oldest = self.order.remove(0);
                self.instances.remove(&oldest);
            }
            self.order.push(id);
        }
        self.instances.entry(id).or_insert_with(|| InstanceState {
            instance,
            values: BTreeSet::new(),
            decided: None,
            reports: BTreeMap::new(),
        })
    }

    /// A verified chain arrived at `now`.
    pub fn on_chain(&mut self, now: Duration, chain: VerifiedChain) -> Vec<GeneralsOutput> {
        let inst = chain.instance();
        let id = inst.id;
        let now_ms = ms(now);
        let k = chain.len() as u64;
        let ignored = |why| vec![GeneralsOutput::Ignored { id, why }];
        if id.commander == self.me {
            return Vec::new(); // the commander's own order coming back
        }
        if inst.start_ms > now_ms.saturating_add(MAX_START_AHEAD_MS) {
            return ignored("instance starts too far in the future");
        }
        if k > u64::from(inst.m) + 1 {
            return ignored("more signatures than rounds");
        }
        if now_ms > inst.round_end_ms(k) {
            return ignored("arrived after its round ended");
        }
        if chain.signers().any(|s| s == self.me) {
            return Vec::new(); // a chain we already signed
        }
        let me = self.me;
        let mut out = Vec::new();
        let fresh = !self.instances.contains_key(&id);
        let state = self.remember(inst);
        if state.decided.is_some()
            || state.values.contains(chain.value())
            || state.values.len() >= RELAYED_VALUES
        {
            return out;
        }
        state.values.insert(chain.value().to_string());
        if fresh {
            out.push(GeneralsOutput::SetTimer {
                at: Duration::from_millis(inst.decide_at_ms()),
            });
        }
        if k <= u64::from(inst.m) {
            let relayed = chain.to_chain().extended(me, &self.key);
            let signed: BTreeSet<ReplicaId> = chain.signers().collect();
            for to in (0..self.n as ReplicaId).filter(|r| *r != me && !signed.contains(r)) {
                out.push(GeneralsOutput::Send {
                    to,
                    chain: relayed.clone(),
                });
            }
        }
        out
    }

    /// Decide every instance whose m+1 rounds are over.
    pub fn on_timer(&mut self, now: Duration) -> Vec<GeneralsOutput> {
        let now_ms = ms(now);
        let mut out = Vec::new();
        for (id, state) in &mut self.instances {
            if state.decided.is_some() || now_ms < state.instance.decide_at_ms() {
                continue;
            }
            let value = choice(&state.values);
            state.decided = Some(value.clone());
            out.push(GeneralsOutput::Decided {
                id: *id,
                value: value.clone(),
            });
            let report = Report {
                id: *id,
                replica: self.me,
                decided: value,
            };
            out.push(GeneralsOutput::Report {
                to: id.commander,
                report: Signed::sign(report, &self.key),
            });
        }
        out
    }

    /// The earliest undecided instance's decision time, if any.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        self.instances
            .values()
            .filter(|s| s.decided.is_none())
            .map(|s| Duration::from_millis(s.instance.decide_at_ms()))
            .min()
    }

    /// A lieutenant's (verified) report of its decision, kept by the commander.
    pub fn on_report(&mut self, report: &Report) {
        if report.id.commander != self.me {
            return;
        }
        if let Some(state) = self.instances.get_mut(&report.id) {
            state
                .reports
                .entry(report.replica)
                .or_insert_with(|| report.decided.clone());
        }
    }

    #[must_use]
    pub fn instance(&self, id: &InstanceId) -> Option<&InstanceState> {
        self.instances.get(id)
    }
}

/// choice(V): the value if V holds exactly one, otherwise none (the paper's
/// RETREAT default).
#[must_use]
pub fn choice(values: &BTreeSet<String>) -> Option<String> {
    if values.len() == 1 {
        values.iter().next().cloned()
    } else {
        None
    }
}
