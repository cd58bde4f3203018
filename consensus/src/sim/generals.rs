//! A deterministic simulator for SM(m): n replicas on a synchronous network
//! (every delay below the round length), loyal ones running the real engine,
//! traitors running a [`Traitor`] strategy. It checks IC1 and IC2 at the end.

use crate::generals::behaviours::altered;
use crate::generals::{verify_chain, Chain, Generals, GeneralsOutput, Instance, InstanceId};
use crate::types::{Membership, ReplicaId};
use bft_crypto::KeyPair;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The round length of the simulated network; delays are 1..ROUND_MS-1 ms.
pub const ROUND_MS: u64 = 100;

/// What a traitor does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traitor {
    /// Sends nothing.
    Silent,
    /// As commander: to lieutenant `i` (in id order) orders `orders[i]`: None is no
    /// order, Some(k) the k-th of the values "A", "B", "C".
    Orders(Vec<Option<u8>>),
    /// As lieutenant: runs the honest engine but relays only to the lieutenants in
    /// `to` (bit i = replica i), with the value altered (a broken chain) if `alter`,
    /// and held back one round (late, perhaps too late to count) if `late`.
    Relay { to: u64, alter: bool, late: bool },
    /// As lieutenant with a traitor commander (their keys shared): on its first
    /// message it forges the commander's order for "Z", signs it too, and sends it to
    /// the replicas in `to` just before round 2 ends.
    Collude { to: u64 },
}

/// One run.
#[derive(Clone, Debug)]
pub struct GeneralsScenario {
    pub n: usize,
    pub m: u32,
    pub commander: ReplicaId,
    pub traitors: BTreeMap<ReplicaId, Traitor>,
    pub seed: u64,
}

/// What the loyal lieutenants decided (None: no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneralsOutcome {
    pub decisions: BTreeMap<ReplicaId, Option<String>>,
    /// Chains refused by a loyal replica's verification.
    pub rejected: u64,
    pub messages: u64,
}

const VALUES: [&str; 3] = ["A", "B", "C"];
const LOYAL_VALUE: &str = "A";

struct Pending {
    at_ms: u64,
    tie: u64,
    to: ReplicaId,
    chain: Chain,
}

/// Run `s` and check IC1 (loyal lieutenants agree) and IC2 (they follow a loyal
/// commander).
///
/// # Errors
/// A description of the violated condition and the decisions.
pub fn run_generals(s: &GeneralsScenario) -> Result<GeneralsOutcome, String> {
    let outcome = simulate(s);
    let loyal_commander = !s.traitors.contains_key(&s.commander);
    let values: BTreeSet<&Option<String>> = outcome.decisions.values().collect();
    if values.len() > 1 {
        return Err(format!("IC1 violated: {:?} ({s:?})", outcome.decisions));
    }
    if loyal_commander
        && outcome
            .decisions
            .values()
            .any(|d| d.as_deref() != Some(LOYAL_VALUE))
    {
        return Err(format!("IC2 violated: {:?} ({s:?})", outcome.decisions));
    }
    Ok(outcome)
}

/// The synchronous network: every message arrives within one round.
struct Net<'a> {
    queue: Vec<Pending>,
    tie: u64,
    rng: &'a mut ChaCha8Rng,
}

impl Net<'_> {
    /// Deliver at `at_ms` exactly.
    fn push(&mut self, at_ms: u64, to: ReplicaId, chain: Chain) {
        self.tie += 1;
        self.queue.push(Pending {
            at_ms,
            tie: self.tie,
            to,
            chain,
        });
    }

    /// Send at `now` (+ `extra` held back) with a random delay below one round.
    fn send(&mut self, now: u64, extra: u64, to: ReplicaId, chain: Chain) {
        let delay = self.rng.gen_range(1..ROUND_MS);
        self.push(now + extra + delay, to, chain);
    }

    /// The earliest pending delivery.
    fn next(&mut self) -> Option<Pending> {
        let i = (0..self.queue.len()).min_by_key(|i| (self.queue[*i].at_ms, self.queue[*i].tie))?;
        Some(self.queue.swap_remove(i))
    }
}

fn simulate(s: &GeneralsScenario) -> GeneralsOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let keys: Vec<KeyPair> = (0..s.n)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let members = Membership::new(keys.iter().map(KeyPair::public).collect());
    let mut engines: Vec<Generals> = (0..s.n)
        .map(|i| Generals::new(i as ReplicaId, s.n, keys[i].clone(), 1))
        .collect();
    let mut net = Net {
        queue: Vec::new(),
        tie: 0,
        rng: &mut rng,
    };
    let mut outcome = GeneralsOutcome {
        decisions: BTreeMap::new(),
        rejected: 0,
        messages: 0,
    };
    // Round 1: the commander's orders.
    let start = Duration::from_millis(1_000);
    let now0 = 1_000;
    let instance = Instance {
        id: InstanceId {
            commander: s.commander,
            nonce: 1,
        },
        m: s.m,
        start_ms: now0,
        round_ms: ROUND_MS,
    };
    let lieutenants: Vec<ReplicaId> = (0..s.n as ReplicaId)
        .filter(|r| *r != s.commander)
        .collect();
    match s.traitors.get(&s.commander) {
        None => {
            let round = Duration::from_millis(ROUND_MS);
            let (_, out) =
                engines[s.commander as usize].propose(start, LOYAL_VALUE.into(), s.m, round);
            for o in out {
                if let GeneralsOutput::Send { to, chain } = o {
                    net.send(now0, 0, to, chain);
                }
            }
        }
        Some(Traitor::Orders(orders)) => {
            for (i, to) in lieutenants.iter().enumerate() {
                if let Some(Some(v)) = orders.get(i) {
                    let chain = Chain::order(
                        instance,
                        VALUES[*v as usize % VALUES.len()].into(),
                        &keys[s.commander as usize],
                    );
                    net.send(now0, 0, *to, chain);
                }
            }
        }
        Some(_) => {} // silent (other strategies make no sense for a commander)
    }
    let decide_ms = instance.decide_at_ms();
    let mut colluded: BTreeSet<ReplicaId> = BTreeSet::new();
    while let Some(p) = net.next() {
        if p.at_ms > decide_ms + 10 * ROUND_MS {
            break;
        }
        outcome.messages += 1;
        let to = p.to;
        let now = Duration::from_millis(p.at_ms);
        let Ok(verified) = verify_chain(p.chain, &members) else {
            if !s.traitors.contains_key(&to) {
                outcome.rejected += 1;
            }
            continue;
        };
        let out = engines[to as usize].on_chain(now, verified);
        let sends: Vec<(ReplicaId, Chain)> = out
            .into_iter()
            .filter_map(|o| match o {
                GeneralsOutput::Send { to, chain } => Some((to, chain)),
                _ => None,
            })
            .collect();
        match s.traitors.get(&to) {
            None => {
                for (dst, chain) in sends {
                    net.send(p.at_ms, 0, dst, chain);
                }
            }
            Some(Traitor::Silent | Traitor::Orders(_)) => {}
            Some(Traitor::Relay {
                to: mask,
                alter,
                late,
            }) => {
                for (dst, chain) in sends {
                    if mask & (1 << dst) == 0 {
                        continue;
                    }
                    let chain = if *alter {
                        altered(&chain, &keys[to as usize])
                    } else {
                        chain
                    };
                    let extra = if *late { ROUND_MS } else { 0 };
                    net.send(p.at_ms, extra, dst, chain);
                }
            }
            Some(Traitor::Collude { to: mask }) => {
                if s.traitors.contains_key(&s.commander) && colluded.insert(to) {
                    let forged = Chain::order(instance, "Z".into(), &keys[s.commander as usize])
                        .extended(to, &keys[to as usize]);
                    for dst in lieutenants.iter().filter(|d| mask & (1 << **d) != 0) {
                        // Just inside round 2: the latest a 2-signature chain counts.
                        let at = instance.round_end_ms(2) - 1;
                        net.push(at.max(p.at_ms + 1), *dst, forged.clone());
                    }
                }
            }
        }
    }
    for r in &lieutenants {
        if s.traitors.contains_key(r) {
            continue;
        }
        let e = &mut engines[*r as usize];
        e.on_timer(Duration::from_millis(decide_ms));
        let id = instance.id;
        let decided = e.instance(&id).and_then(|st| st.decided.clone()).flatten();
        outcome.decisions.insert(*r, decided);
    }
    outcome
}

/// Every traitor strategy for a replica (as commander or lieutenant) in a group
/// of `n`: the space the exhaustive check enumerates.
#[must_use]
pub fn strategies(
    n: usize,
    commander: ReplicaId,
    me: ReplicaId,
    commander_traitor: bool,
) -> Vec<Traitor> {
    let mut out = vec![Traitor::Silent];
    let lieutenants = n - 1;
    if me == commander {
        // Each lieutenant gets no order, A, B or C: 4^(n-1) patterns.
        let total = 4usize.pow(lieutenants as u32);
        for code in 0..total {
            let mut c = code;
            let orders = (0..lieutenants)
                .map(|_| {
                    let v = c % 4;
                    c /= 4;
                    if v == 0 {
                        None
                    } else {
                        Some((v - 1) as u8)
                    }
                })
                .collect();
            out.push(Traitor::Orders(orders));
        }
        return out;
    }
    let others: Vec<ReplicaId> = (0..n as ReplicaId)
        .filter(|r| *r != commander && *r != me)
        .collect();
    for subset in 0..(1u64 << others.len()) {
        let mask = others
            .iter()
            .enumerate()
            .filter(|(i, _)| subset & (1 << i) != 0)
            .fold(0u64, |m, (_, r)| m | (1 << r));
        for alter in [false, true] {
            for late in [false, true] {
                out.push(Traitor::Relay {
                    to: mask,
                    alter,
                    late,
                });
            }
        }
        if commander_traitor {
            out.push(Traitor::Collude { to: mask });
        }
    }
    out
}

/// A random traitor strategy (for groups too large to enumerate).
pub fn random_strategy(
    rng: &mut impl Rng,
    n: usize,
    commander: ReplicaId,
    me: ReplicaId,
    commander_traitor: bool,
) -> Traitor {
    if me == commander {
        if rng.gen_bool(0.1) {
            return Traitor::Silent;
        }
        return Traitor::Orders(
            (0..n - 1)
                .map(|_| {
                    let v: u8 = rng.gen_range(0..4);
                    (v > 0).then(|| v - 1)
                })
                .collect(),
        );
    }
    let mask: u64 = rng.gen_range(0..(1u64 << n)) & !(1 << me) & !(1 << commander);
    match rng.gen_range(0..4) {
        0 => Traitor::Silent,
        1 if commander_traitor => Traitor::Collude { to: mask },
        _ => Traitor::Relay {
            to: mask,
            alter: rng.gen_bool(0.3),
            late: rng.gen_bool(0.3),
        },
    }
}
