//! SM(m)'s messages: a value with a chain of signatures, the commander's first.
//!
//! Each link signs the instance, the value, its signer and the digest of the links
//! before it, so a chain can be extended but never edited: a lieutenant that alters
//! a relayed value, drops a link or reorders them produces a chain that fails to
//! verify, and loyal lieutenants discard it (Lamport, Shostak & Pease 1982, §4).

use crate::rejection::Rejection;
use crate::types::{Membership, ReplicaId};
use bft_crypto::{Digest, Hasher, KeyPair, Signable, Signed, Verified};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Longest value accepted (bytes of UTF-8).
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest round accepted: beyond this an instance is a way to make us hold state.
pub const MAX_ROUND_MS: u64 = 60_000;

/// Names one SM(m) run: the commander and a number it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    pub commander: ReplicaId,
    pub nonce: u64,
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.commander, self.nonce)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, n) = s
            .split_once('-')
            .ok_or_else(|| format!("instance id {s:?} is not COMMANDER-NONCE"))?;
        Ok(Self {
            commander: c.parse().map_err(|_| format!("bad commander in {s:?}"))?,
            nonce: n.parse().map_err(|_| format!("bad nonce in {s:?}"))?,
        })
    }
}

/// Everything that fixes how an instance runs. Signed into every link, so every
/// loyal lieutenant times the rounds alike: round k ends at `start_ms + k * round_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    /// Traitors tolerated; the run lasts m+1 rounds.
    pub m: u32,
    /// When round 1 began, on the commander's clock (ms).
    pub start_ms: u64,
    /// The round length: a bound on message delay (from the failure detector).
    pub round_ms: u64,
}

impl Instance {
    /// When round `k` (1-based) ends.
    #[must_use]
    pub fn round_end_ms(&self, k: u64) -> u64 {
        self.start_ms
            .saturating_add(k.saturating_mul(self.round_ms))
    }

    /// When lieutenants decide: after m+1 rounds.
    #[must_use]
    pub fn decide_at_ms(&self) -> u64 {
        self.round_end_ms(u64::from(self.m) + 1)
    }
}

/// One signature of the chain: `signer` vouches that it received `value` with the
/// links digested in `prev` (or, for the commander, that it orders `value`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub instance: Instance,
    pub value: String,
    pub prev: Digest,
    pub signer: ReplicaId,
}

impl Signable for Link {
    const DOMAIN: &'static str = "bftnode/generals-link/v1";
}

/// What travels: a value and its signature chain (unverified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub links: Vec<Signed<Link>>,
}

/// The digest a link following `links` must name.
#[must_use]
pub fn chain_digest(links: &[Signed<Link>]) -> Digest {
    let mut h = Hasher::new("bftnode/generals-chain/v1");
    h.update_u64(links.len() as u64);
    for l in links {
        h.update_u64(u64::from(l.payload.signer))
            .update(&l.signature.to_bytes());
    }
    h.finish()
}

impl Chain {
    /// The commander's order: a chain of one link.
    #[must_use]
    pub fn order(instance: Instance, value: String, key: &KeyPair) -> Self {
        let link = Link {
            instance,
            value,
            prev: chain_digest(&[]),
            signer: instance.id.commander,
        };
        Self {
            links: vec![Signed::sign(link, key)],
        }
    }

    /// This chain with `signer`'s link appended.
    #[must_use]
    pub fn extended(&self, signer: ReplicaId, key: &KeyPair) -> Self {
        let first = &self.links[0].payload;
        let link = Link {
            instance: first.instance,
            value: first.value.clone(),
            prev: chain_digest(&self.links),
            signer,
        };
        let mut links = self.links.clone();
        links.push(Signed::sign(link, key));
        Self { links }
    }
}

/// A chain whose every link was checked. Only [`verify_chain`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedChain {
    links: Vec<Verified<Link>>,
}

impl VerifiedChain {
    #[must_use]
    pub fn instance(&self) -> Instance {
        self.links[0].instance
    }

    #[must_use]
    pub fn value(&self) -> &str {
        &self.links[0].value
    }

    /// Number of signatures (k: the chain is valid until round k ends).
    #[must_use]
    pub fn len(&self) -> usize {
        self.links.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn signers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.links.iter().map(|l| l.signer)
    }

    /// The last signer: who sent it to us, if it is loyal.
    #[must_use]
    pub fn last_signer(&self) -> ReplicaId {
        self.links[self.links.len() - 1].signer
    }

    /// The wire form, to relay (extended).
    #[must_use]
    pub fn to_chain(&self) -> Chain {
        Chain {
            links: self.links.iter().map(|l| l.signed().clone()).collect(),
        }
    }
}

fn bad(why: &'static str) -> Rejection {
    Rejection::InvalidGeneralsChain(why)
}

/// Check a chain: not empty, the commander signs first, every link names the same
/// instance and value and the digest of the links before it, signers are distinct
/// members, and every signature verifies.
///
/// # Errors
/// The first problem, as a [`Rejection::InvalidGeneralsChain`].
pub fn verify_chain(chain: Chain, members: &Membership) -> Result<VerifiedChain, Rejection> {
    let first = chain
        .links
        .first()
        .ok_or(bad("empty chain"))?
        .payload
        .clone();
    let n = members.n();
    if chain.links.len() > n {
        return Err(bad("longer than the group"));
    }
    if first.value.len() > MAX_VALUE_BYTES {
        return Err(bad("value too long"));
    }
    let inst = first.instance;
    if inst.round_ms == 0 || inst.round_ms > MAX_ROUND_MS {
        return Err(bad("round length out of range"));
    }
    if inst.m as usize + 2 > n {
        return Err(bad("m must satisfy n >= m + 2"));
    }
    if first.signer != inst.id.commander {
        return Err(bad("first link not signed by the commander"));
    }
    let mut signers = BTreeSet::new();
    let mut links = Vec::with_capacity(chain.links.len());
    for (k, link) in chain.links.iter().enumerate() {
        let p = &link.payload;
        if p.instance != inst || p.value != first.value {
            return Err(bad("links disagree on the instance or value"));
        }
        if p.prev != chain_digest(&chain.links[..k]) {
            return Err(bad("link does not follow the chain"));
        }
        if !signers.insert(p.signer) {
            return Err(bad("a replica signs twice"));
        }
        if members.key(p.signer) != Some(link.signer) {
            return Err(bad("signer is not that replica"));
        }
        links.push(
            link.clone()
                .verify()
                .map_err(|_| bad("signature does not verify"))?,
        );
    }
    Ok(VerifiedChain { links })
}

/// A replica's decision, sent to the commander so it can show everyone's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: InstanceId,
    pub replica: ReplicaId,
    /// None: no value (|V| was not 1: the commander was a traitor or silent).
    pub decided: Option<String>,
}

impl Signable for Report {
    const DOMAIN: &'static str = "bftnode/generals-report/v1";
}
