//! The last reply sent to each client (PBFT §4.1): it gives exactly-once
//! execution (a request whose timestamp is not newer than the last one executed for
//! its client is never executed again) and lets a replica re-send a lost reply.
//! It is part of the replicated state: it goes into checkpoints and snapshots.
//!
//! Bounded (issue 11, defect 7): anybody can make a client key, so the table holds
//! at most `max_clients` clients and [`MAX_TABLE_BYTES`] of them (their results
//! included). When a new client does not fit, the client whose last request was
//! executed longest ago is forgotten (ties by key), the same on every replica since
//! the table changes only as requests execute. The paper's replicas know every
//! client in advance; with clients that come and go, forgetting one must not let an
//! old request of its be executed again, so the table keeps a `floor`: the highest
//! timestamp of a forgotten client. A request of a client the table does not hold
//! is executed only if its timestamp is above the floor; otherwise every replica
//! answers it, in order, with [`crate::messages::Refusal::Expired`] carrying the
//! floor, and the client signs it again with a timestamp above it
//! ([`crate::Client`] does this by itself). What a forgotten client sees is that one
//! extra round trip, and nothing at all if its timestamps come from the clock (they
//! are above the floor unless somebody's clock runs ahead of it). One thing is lost
//! with the entry: the cached reply of its last request, so a client forgotten
//! between a request's execution and its retransmission gets a refusal and
//! re-issues that operation as a new request.

use crate::types::{ClientId, Seq};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes the table may hold, results included: with the key-value store's own
/// bound it keeps a snapshot inside one frame (see `kv::MAX_STATE_BYTES`).
pub const MAX_TABLE_BYTES: usize = 16 * 1024 * 1024;
/// What an entry costs besides its result: key, timestamps, map overhead.
const ENTRY_BYTES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReply {
    pub timestamp: u64,
    /// The sequence number its request executed at (what eviction orders by).
    pub executed_at: Seq,
    #[serde(with = "bft_crypto::bytes")]
    pub result: Vec<u8>,
}

impl LastReply {
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.result.len()
    }
}

/// The table as stored in snapshots; the age index is rebuilt from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    entries: BTreeMap<ClientId, LastReply>,
    floor: u64,
    max_clients: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct ClientTable {
    entries: BTreeMap<ClientId, LastReply>,
    /// (executed_at, client) of every entry, oldest first.
    by_age: BTreeSet<(Seq, ClientId)>,
    bytes: usize,
    floor: u64,
    max_clients: usize,
}

impl From<Stored> for ClientTable {
    fn from(s: Stored) -> Self {
        let by_age = s.entries.iter().map(|(c, e)| (e.executed_at, *c)).collect();
        let bytes = s.entries.values().map(LastReply::bytes).sum();
        Self {
            entries: s.entries,
            by_age,
            bytes,
            floor: s.floor,
            max_clients: s.max_clients,
        }
    }
}

impl From<ClientTable> for Stored {
    fn from(t: ClientTable) -> Self {
        Stored {
            entries: t.entries,
            floor: t.floor,
            max_clients: t.max_clients,
        }
    }
}

impl Default for ClientTable {
    fn default() -> Self {
        Self::new(crate::params::ProtocolParams::default().max_clients)
    }
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
    /// A client the table does not hold, with a timestamp at or below the floor: it
    /// may be a forgotten client's old request, so it is refused (see the module doc).
    Expired { floor: u64 },
}

impl ClientTable {
    /// An empty table for at most `max_clients` clients.
    #[must_use]
    pub fn new(max_clients: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            by_age: BTreeSet::new(),
            bytes: 0,
            floor: 0,
            max_clients: max_clients.max(1),
        }
    }

    #[must_use]
    pub fn freshness(&self, client: &ClientId, timestamp: u64) -> Freshness<'_> {
        match self.entries.get(client) {
            None if timestamp <= self.floor => Freshness::Expired { floor: self.floor },
            None => Freshness::New,
            Some(last) if timestamp > last.timestamp => Freshness::New,
            Some(last) if timestamp == last.timestamp => Freshness::Repeat(last),
            Some(_) => Freshness::Stale,
        }
    }

    /// Record the result of `client`'s request `timestamp`, executed at `seq`; then
    /// forget the least recently executed clients while over either bound.
    pub fn record(&mut self, client: ClientId, timestamp: u64, result: Vec<u8>, seq: Seq) {
        let entry = LastReply {
            timestamp,
            executed_at: seq,
            result,
        };
        self.bytes += entry.bytes();
        if let Some(old) = self.entries.insert(client, entry) {
            self.bytes -= old.bytes();
            self.by_age.remove(&(old.executed_at, client));
        }
        self.by_age.insert((seq, client));
        while self.entries.len() > self.max_clients || self.bytes > MAX_TABLE_BYTES {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            assert_ne!(oldest, client, "the entry just recorded is the newest");
            let gone = self.entries.remove(&oldest).expect("indexed entries exist");
            self.bytes -= gone.bytes();
            self.floor = self.floor.max(gone.timestamp);
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest timestamp of a forgotten client.
    #[must_use]
    pub fn floor(&self) -> u64 {
        self.floor
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

    fn client(i: u8) -> ClientId {
        KeyPair::from_seed([i; 32]).public()
    }

    #[test]
    fn freshness_gives_exactly_once() {
        let c = client(1);
        let mut t = ClientTable::default();
        assert_eq!(t.freshness(&c, 5), Freshness::New);
        t.record(c, 5, b"r".to_vec(), 1);
        assert_eq!(t.freshness(&c, 4), Freshness::Stale);
        assert!(matches!(t.freshness(&c, 5), Freshness::Repeat(r) if r.result == b"r"));
        assert_eq!(t.freshness(&c, 6), Freshness::New);
    }

    /// The least recently executed client goes first; its old requests (and any
    /// unknown client's at or below its timestamp) are refused from then on.
    #[test]
    fn a_forgotten_client_cannot_have_an_old_request_executed_again() {
        let mut t = ClientTable::new(2);
        t.record(client(1), 100, vec![1], 1);
        t.record(client(2), 50, vec![2], 2);
        t.record(client(1), 101, vec![1], 3); // client 1 is now the newer one
        t.record(client(3), 10, vec![3], 4); // evicts client 2 (executed at 2)
        assert_eq!(t.len(), 2);
        assert_eq!(t.floor(), 50);
        assert_eq!(
            t.freshness(&client(2), 50),
            Freshness::Expired { floor: 50 }
        );
        assert_eq!(t.freshness(&client(2), 51), Freshness::New);
        assert_eq!(t.freshness(&client(9), 7), Freshness::Expired { floor: 50 });
        assert!(matches!(t.freshness(&client(1), 101), Freshness::Repeat(_)));
        // Held clients are judged by their own entries, whatever the floor.
        assert!(matches!(t.freshness(&client(3), 10), Freshness::Repeat(_)));
    }

    #[test]
    fn the_byte_bound_evicts_too_and_survives_a_snapshot() {
        let mut t = ClientTable::new(1_000_000);
        let big = vec![0u8; MAX_TABLE_BYTES / 3];
        for i in 0..4u8 {
            t.record(client(i), u64::from(i) + 1, big.clone(), u64::from(i));
        }
        assert_eq!(t.len(), 2, "only what fits in MAX_TABLE_BYTES stays");
        assert_eq!(t.floor(), 2);
        let back: ClientTable =
            bft_crypto::decode(&bft_crypto::encode(&t).unwrap(), usize::MAX).unwrap();
        assert_eq!(back, t, "the age index and byte count are rebuilt");
    }
}
