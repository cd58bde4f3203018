//! Traitors for SM(m): wrappers over an honest engine's outputs, as for PBFT
//! (DESIGN.md): the engine stays honest, the wrapper lies.

use super::engine::GeneralsOutput;
use super::messages::{Chain, Link};
use crate::types::ReplicaId;
use bft_crypto::{KeyPair, Signed};

/// How a replica treats its generals traffic.
pub trait GeneralsBehaviour: Send {
    fn name(&self) -> &'static str;
    /// Transform the honest engine's outputs (`me` signs with `key`).
    fn outputs(
        &mut self,
        me: ReplicaId,
        key: &KeyPair,
        outputs: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput>;
}

/// Loyal: outputs pass unchanged.
pub struct Loyal;

impl GeneralsBehaviour for Loyal {
    fn name(&self) -> &'static str {
        "loyal"
    }
    fn outputs(
        &mut self,
        _: ReplicaId,
        _: &KeyPair,
        o: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput> {
        o
    }
}

fn is_send(o: &GeneralsOutput) -> bool {
    matches!(
        o,
        GeneralsOutput::Send { .. } | GeneralsOutput::Report { .. }
    )
}

/// Sends nothing at all (orders, relays, reports).
pub struct SilentGeneral;

impl GeneralsBehaviour for SilentGeneral {
    fn name(&self) -> &'static str {
        "silent"
    }
    fn outputs(
        &mut self,
        _: ReplicaId,
        _: &KeyPair,
        o: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput> {
        o.into_iter().filter(|o| !is_send(o)).collect()
    }
}

/// As commander: orders its value to the lower half of the lieutenants and a
/// different, equally well-signed value to the rest.
pub struct EquivocatingCommander;

impl GeneralsBehaviour for EquivocatingCommander {
    fn name(&self) -> &'static str {
        "equivocate"
    }
    fn outputs(
        &mut self,
        me: ReplicaId,
        key: &KeyPair,
        outputs: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput> {
        let orders: Vec<ReplicaId> = outputs
            .iter()
            .filter_map(|o| match o {
                GeneralsOutput::Send { to, chain } if is_own_order(chain, me) => Some(*to),
                _ => None,
            })
            .collect();
        let half = orders.len().div_ceil(2);
        outputs
            .into_iter()
            .map(|o| match o {
                GeneralsOutput::Send { to, chain }
                    if is_own_order(&chain, me)
                        && orders.iter().position(|r| *r == to) >= Some(half) =>
                {
                    let first = &chain.links[0].payload;
                    let other = format!("{}~equivocated", first.value);
                    GeneralsOutput::Send {
                        to,
                        chain: Chain::order(first.instance, other, key),
                    }
                }
                other => other,
            })
            .collect()
    }
}

fn is_own_order(chain: &Chain, me: ReplicaId) -> bool {
    chain.links.len() == 1 && chain.links[0].payload.signer == me
}

/// As lieutenant: relays every chain with the value altered (its own link re-signed
/// over the altered value). The commander's signature no longer matches, so loyal
/// lieutenants discard the relay: signatures are what defeat this traitor.
pub struct TraitorRelay;

impl GeneralsBehaviour for TraitorRelay {
    fn name(&self) -> &'static str {
        "traitor-relay"
    }
    fn outputs(
        &mut self,
        me: ReplicaId,
        key: &KeyPair,
        outputs: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput> {
        outputs
            .into_iter()
            .map(|o| match o {
                GeneralsOutput::Send { to, chain }
                    if chain.links.len() >= 2
                        && chain.links.last().is_some_and(|l| l.payload.signer == me) =>
                {
                    GeneralsOutput::Send {
                        to,
                        chain: altered(&chain, key),
                    }
                }
                other => other,
            })
            .collect()
    }
}

/// `chain` with its value replaced in every link; only the last link (ours) is
/// re-signed, so the chain no longer verifies.
#[must_use]
pub fn altered(chain: &Chain, key: &KeyPair) -> Chain {
    let value = format!("{}~altered", chain.links[0].payload.value);
    let last = chain.links.len() - 1;
    let links = chain
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let payload = Link {
                value: value.clone(),
                ..l.payload.clone()
            };
            if i == last {
                Signed::sign(payload, key)
            } else {
                Signed {
                    payload,
                    ..l.clone()
                }
            }
        })
        .collect();
    Chain { links }
}

/// Sends only to the replicas in `to` (partial sends: some lieutenants hear it,
/// others do not).
pub struct Partial {
    pub to: Vec<ReplicaId>,
}

impl GeneralsBehaviour for Partial {
    fn name(&self) -> &'static str {
        "partial"
    }
    fn outputs(
        &mut self,
        _: ReplicaId,
        _: &KeyPair,
        o: Vec<GeneralsOutput>,
    ) -> Vec<GeneralsOutput> {
        o.into_iter()
            .filter(|o| match o {
                GeneralsOutput::Send { to, .. } => self.to.contains(to),
                _ => true,
            })
            .collect()
    }
}

/// The generals side of a node behaviour (INTERFACE.md names): `equivocate`
/// equivocates as commander, `traitor-relay` alters relays, `silent` and `crash`
/// send nothing; every other behaviour is about PBFT and leaves generals loyal.
#[must_use]
pub fn for_behaviour(name: &str) -> Box<dyn GeneralsBehaviour> {
    match name {
        "equivocate" => Box::new(EquivocatingCommander),
        "traitor-relay" => Box::new(TraitorRelay),
        "silent" | "crash" => Box::new(SilentGeneral),
        _ => Box::new(Loyal),
    }
}
