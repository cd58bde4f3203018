//! The last reply sent to each client (PBFT §4.1): it gives exactly-once
//! execution (a request whose timestamp is not newer than the last one executed for
//! its client is never executed again) and lets a replica re-send a lost reply.
//! It is part of the replicated state: it goes into checkpoints and snapshots.

use crate::types::ClientId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReply {
    pub timestamp: u64,
    #[serde(with = "bft_crypto::bytes")]
    pub result: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    entries: BTreeMap<ClientId, LastReply>,
}

/// What to do with a request given what was last executed for its client.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness<'a> {
    /// Newer than anything executed for this client.
    New,
    /// The request last executed: re-send this result.
    Repeat(&'a LastReply),
    /// Older than the last executed request: ignore.
    Stale,
}

impl ClientTable {
    #[must_use]
    pub fn freshness(&self, client: &ClientId, timestamp: u64) -> Freshness<'_> {
        match self.entries.get(client) {
            None => Freshness::New,
            Some(last) if timestamp > last.timestamp => Freshness::New,
            Some(last) if timestamp == last.timestamp => Freshness::Repeat(last),
            Some(_) => Freshness::Stale,
        }
    }

    pub fn record(&mut self, client: ClientId, timestamp: u64, result: Vec<u8>) {
        self.entries.insert(client, LastReply { timestamp, result });
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The replicated state that checkpoints cover: application and client table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    #[serde(with = "bft_crypto::bytes")]
    pub app: Vec<u8>,
    pub clients: ClientTable,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_crypto::KeyPair;

    #[test]
    fn freshness_gives_exactly_once() {
        let c = KeyPair::from_seed([1; 32]).public();
        let mut t = ClientTable::default();
        assert_eq!(t.freshness(&c, 5), Freshness::New);
        t.record(c, 5, b"r".to_vec());
        assert_eq!(t.freshness(&c, 4), Freshness::Stale);
        assert!(matches!(t.freshness(&c, 5), Freshness::Repeat(r) if r.result == b"r"));
        assert_eq!(t.freshness(&c, 6), Freshness::New);
    }
}
