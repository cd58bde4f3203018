//! The last reply sent to each client (PBFT §4.1): it gives exactly-once
//! execution (a request whose timestamp is not newer than the last one executed for
//! its client is never executed again) and lets a replica re-send a lost reply.
//! It is part of the replicated state: it goes into checkpoints and snapshots.
//!
//! Bounded (issue 11, defect 7). Anybody can make a client key, so the table cannot
//! remember every client for ever. The paper's replicas know every client in
//! advance; ours bound what a client can ask instead: every request names a
//! *horizon*, the highest sequence number its client knows executed, and is executed
//! only within `request_horizon` sequence numbers of it (older, or from the future:
//! refused in order with [`crate::messages::Refusal::Expired`], and the client
//! signs it again with a fresh horizon; [`crate::Client`] does this by itself). A
//! request is executed after its horizon, so an entry whose last request executed
//! more than `request_horizon` sequence numbers ago can be forgotten: any old
//! request of that client names a horizon at least as old, and is refused. The table
//! therefore holds at most the clients of the last `request_horizon` sequence
//! numbers, however many keys anybody makes, and nobody chooses what it forgets.
//!
//! Results are bounded too ([`MAX_TABLE_BYTES`] for the whole table): when the
//! results of recent clients do not fit, the oldest results go first and their
//! entries stay. A retransmission for such an entry is answered with
//! [`crate::messages::Refusal::ReplyNotKept`]: the request was executed; its reply is
//! no longer held.

use crate::lookup::LookupMap;
use crate::types::{ClientId, Seq};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Bytes the table may hold, results included: with the key-value store's own
/// bound it keeps a snapshot inside one frame (see `kv::MAX_STATE_BYTES`).
pub const MAX_TABLE_BYTES: usize = 16 * 1024 * 1024;
/// What an entry costs besides its result: key, timestamps, map overhead.
pub const ENTRY_BYTES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReply {
    pub timestamp: u64,
    /// The sequence number its request executed at (what eviction orders by).
    pub executed_at: Seq,
    /// The reply's result, unless dropped to keep the table within its bytes.
    #[serde(with = "bft_crypto::bytes::option")]
    pub result: Option<Vec<u8>>,
}

impl LastReply {
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.result.as_ref().map_or(0, Vec::len)
    }
}

/// The table as stored in snapshots; the age index is rebuilt from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    entries: BTreeMap<ClientId, LastReply>,
    horizon: Seq,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Stored")]
pub struct ClientTable {
    /// A hash map ([`LookupMap`]): every request looks its client up several times
    /// (ingress, batching, execution), and in a B-tree of a thousand clients each
    /// lookup compared about ten keys behind pointers (issue 13). Snapshots write
    /// it in key order ([`Stored`]).
    entries: LookupMap<ClientId, LastReply>,
    /// (executed_at, client) of every entry, oldest first.
    by_age: BTreeSet<(Seq, ClientId)>,
    /// No entry before this place in `by_age` holds a result (`None`: the start).
    /// The byte bound drops the oldest results first, searching `by_age` from here,
    /// so results dropped once are not searched again. It replaces a second index
    /// of the entries holding results, which cost two more B-tree searches for
    /// every executed request (issue 13).
    results_from: Option<(Seq, ClientId)>,
    bytes: usize,
    /// `request_horizon`: how far behind the executing sequence number a request's
    /// horizon may be.
    horizon: Seq,
    /// While executing tentatively: every change of an entry since then, in order,
    /// as the client and the entry before it (`None`: absent); a rollback undoes
    /// them newest first (see [`ClientTable::begin_tentative`]). One batch's
    /// requests, plus the entries they evicted or stripped of their results.
    #[serde(skip)]
    undo: Option<Vec<(ClientId, Option<LastReply>)>>,
}

/// The same entries and horizon (and the same tentative journal): `by_age` and
/// the byte count follow from the entries, and where the search for results
/// starts is a shortcut, not content.
impl PartialEq for ClientTable {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.horizon == other.horizon
            && self.undo == other.undo
            && self.by_age == other.by_age
            && self.bytes == other.bytes
    }
}

impl Eq for ClientTable {}

impl From<Stored> for ClientTable {
    fn from(s: Stored) -> Self {
        let by_age = s.entries.iter().map(|(c, e)| (e.executed_at, *c)).collect();
        let bytes = s.entries.values().map(LastReply::bytes).sum();
        Self {
            entries: s.entries.into_iter().collect(),
            by_age,
            results_from: None,
            bytes,
            horizon: s.horizon,
            undo: None,
        }
    }
}

/// Written as [`Stored`] is (the same bytes), from the table itself: a snapshot
/// used to clone the whole table to make a `Stored` of it, twice per checkpoint.
impl Serialize for ClientTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Stored")]
        struct StoredRef<'a> {
            entries: InKeyOrder<'a>,
            horizon: Seq,
        }
        struct InKeyOrder<'a>(&'a LookupMap<ClientId, LastReply>);
        impl Serialize for InKeyOrder<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.sorted())
            }
        }
        StoredRef {
            entries: InKeyOrder(&self.entries),
            horizon: self.horizon,
        }
        .serialize(s)
    }
}

impl Default for ClientTable {
    fn default() -> Self {
        Self::new(crate::params::ProtocolParams::default().request_horizon)
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
}

impl ClientTable {
    /// An empty table for requests within `horizon` sequence numbers.
    #[must_use]
    pub fn new(horizon: Seq) -> Self {
        Self {
            entries: LookupMap::new(),
            by_age: BTreeSet::new(),
            results_from: None,
            bytes: 0,
            horizon: horizon.max(1),
            undo: None,
        }
    }

    /// Start remembering how to undo what [`ClientTable::record`] changes (tentative
    /// execution, TOCS §5.1.2).
    pub fn begin_tentative(&mut self) {
        assert!(self.undo.is_none(), "tentative execution begun twice");
        self.undo = Some(Vec::new());
    }

    /// Keep what was recorded since [`ClientTable::begin_tentative`].
    pub fn commit_tentative(&mut self) {
        self.undo = None;
    }

    /// Put every entry back as it was at [`ClientTable::begin_tentative`].
    pub fn rollback_tentative(&mut self) {
        for (client, before) in self.undo.take().unwrap_or_default().into_iter().rev() {
            if let Some(now) = self.entries.remove(&client) {
                self.unindex(client, &now);
            }
            if let Some(entry) = before {
                self.index(client, &entry);
                self.entries.insert(client, entry);
            }
        }
    }

    /// Before `client`'s entry changes while executing tentatively: keep a copy.
    fn remember(&mut self, client: ClientId) {
        if let Some(undo) = self.undo.as_mut() {
            undo.push((client, self.entries.get(&client).cloned()));
        }
    }

    /// After `client`'s entry was replaced while executing tentatively: keep the
    /// entry it had (`before`).
    fn keep_for_undo(&mut self, client: ClientId, before: Option<LastReply>) {
        if let Some(undo) = self.undo.as_mut() {
            undo.push((client, before));
        }
    }

    fn index(&mut self, client: ClientId, entry: &LastReply) {
        self.bytes += entry.bytes();
        self.by_age.insert((entry.executed_at, client));
        if entry.result.is_some() {
            self.result_at((entry.executed_at, client));
        }
    }

    fn unindex(&mut self, client: ClientId, entry: &LastReply) {
        self.bytes -= entry.bytes();
        self.by_age.remove(&(entry.executed_at, client));
    }

    /// An entry holding a result is at `place` in `by_age`: search for results from
    /// there at the latest.
    fn result_at(&mut self, place: (Seq, ClientId)) {
        if self.results_from.is_some_and(|from| place < from) {
            self.results_from = Some(place);
        }
    }

    /// The oldest entry holding a result, as (executed_at, client).
    fn oldest_result(&self) -> Option<(Seq, ClientId)> {
        let from = self.results_from.map_or(Bound::Unbounded, Bound::Included);
        let entries = &self.entries;
        self.by_age
            .range((from, Bound::Unbounded))
            .find(|(_, c)| entries.get(c).is_some_and(|e| e.result.is_some()))
            .copied()
    }

    #[must_use]
    pub fn freshness(&self, client: &ClientId, timestamp: u64) -> Freshness<'_> {
        match self.entries.get(client) {
            None => Freshness::New,
            Some(last) if timestamp > last.timestamp => Freshness::New,
            Some(last) if timestamp == last.timestamp => Freshness::Repeat(last),
            Some(_) => Freshness::Stale,
        }
    }

    /// Whether a request naming `horizon` may execute at `seq`: after its horizon
    /// and within `request_horizon` of it.
    #[must_use]
    pub fn in_horizon(&self, horizon: Seq, seq: Seq) -> bool {
        horizon < seq && seq - horizon <= self.horizon
    }

    /// Record the result of `client`'s request `timestamp`, executed at `seq`; then
    /// forget clients whose last request is beyond the horizon, and drop the oldest
    /// results while over [`MAX_TABLE_BYTES`].
    pub fn record(&mut self, client: ClientId, timestamp: u64, result: Vec<u8>, seq: Seq) {
        let entry = LastReply {
            timestamp,
            executed_at: seq,
            result: Some(result),
        };
        self.bytes += entry.bytes();
        let old = self.entries.insert(client, entry);
        if let Some(old) = &old {
            self.bytes -= old.bytes();
            self.by_age.remove(&(old.executed_at, client));
        }
        // The replaced entry itself goes to the undo journal, not a copy of it.
        self.keep_for_undo(client, old);
        self.by_age.insert((seq, client));
        self.result_at((seq, client));
        while let Some(&(at, oldest)) = self.by_age.first() {
            if seq - at <= self.horizon {
                break;
            }
            self.remember(oldest);
            self.by_age.pop_first();
            let gone = self.entries.remove(&oldest).expect("indexed entries exist");
            self.bytes -= gone.bytes();
        }
        while self.bytes > MAX_TABLE_BYTES {
            let Some(place) = self.oldest_result() else {
                break; // entries alone: bounded by the horizon (see ProtocolParams)
            };
            self.results_from = Some(place);
            let oldest = place.1;
            self.remember(oldest);
            let entry = self
                .entries
                .get_mut(&oldest)
                .expect("indexed entries exist");
            let dropped = entry.result.take().map_or(0, |r| r.len());
            self.bytes -= dropped;
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// At least as many bytes as the table's encoding takes: each entry's
    /// encoding (key, timestamps, result with its length) is within the
    /// [`ENTRY_BYTES`] and result it counts, plus the map's length and horizon.
    #[must_use]
    pub fn encoded_bound(&self) -> usize {
        self.bytes + 32
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
        assert!(
            matches!(t.freshness(&c, 5), Freshness::Repeat(r) if r.result.as_deref() == Some(&b"r"[..]))
        );
        assert_eq!(t.freshness(&c, 6), Freshness::New);
    }

    /// A client is forgotten once its last request is beyond the horizon, never
    /// sooner, whatever other clients do; by then every old request of its is
    /// outside the horizon too.
    #[test]
    fn clients_are_forgotten_only_beyond_the_horizon() {
        let mut t = ClientTable::new(10);
        t.record(client(1), 100, vec![1], 5);
        for i in 2..200u8 {
            t.record(client(i), 1, vec![i], 15);
        }
        assert!(matches!(t.freshness(&client(1), 100), Freshness::Repeat(_)));
        t.record(client(9), 2, vec![9], 16);
        assert_eq!(t.freshness(&client(1), 100), Freshness::New, "forgotten");
        // Its old request named a horizon below 5; at 16 that is out of reach.
        assert!(!t.in_horizon(4, 16));
        assert!(t.in_horizon(6, 16));
        assert!(!t.in_horizon(16, 16), "a horizon must be in the past");
        assert!(!t.in_horizon(20, 16));
        assert_eq!(t.len(), 198);
    }

    #[test]
    fn a_rollback_restores_entries_evictions_and_dropped_results() {
        let mut t = ClientTable::new(10);
        let big = vec![0u8; MAX_TABLE_BYTES / 3];
        t.record(client(1), 7, vec![1], 1);
        t.record(client(2), 3, big.clone(), 8);
        t.record(client(3), 3, big.clone(), 9);
        let before = t.clone();
        t.begin_tentative();
        // Overwrites client 2, forgets client 1 (beyond the horizon), and drops
        // client 3's result to stay within the bytes.
        t.record(client(2), 4, big.clone(), 12);
        t.record(client(4), 1, big.clone(), 12);
        assert_eq!(t.freshness(&client(1), 7), Freshness::New);
        assert_ne!(t, before);
        t.rollback_tentative();
        assert_eq!(t, before);
        assert_eq!(t.bytes, before.bytes);
        assert!(matches!(t.freshness(&client(1), 7), Freshness::Repeat(_)));
        // Committed, it stays.
        t.begin_tentative();
        t.record(client(2), 4, vec![2], 12);
        t.commit_tentative();
        t.rollback_tentative();
        assert!(matches!(t.freshness(&client(2), 4), Freshness::Repeat(_)));
    }

    /// The table is written as `Stored` (clients in key order), without a copy,
    /// and within its encoded bound.
    #[test]
    fn the_table_encodes_as_its_stored_form() {
        let mut t = ClientTable::new(50);
        for i in (0..40u8).rev() {
            t.record(
                client(i),
                u64::from(i),
                vec![i; usize::from(i)],
                u64::from(i % 7) + 1,
            );
        }
        t.record(client(3), 99, Vec::new(), 9);
        let stored = Stored {
            entries: t
                .entries
                .sorted()
                .into_iter()
                .map(|(c, e)| (*c, e.clone()))
                .collect(),
            horizon: t.horizon,
        };
        let bytes = bft_crypto::encode(&t).unwrap();
        assert_eq!(bytes, bft_crypto::encode(&stored).unwrap());
        assert!(bytes.len() <= t.encoded_bound());
        let back: ClientTable = bft_crypto::decode(&bytes, usize::MAX).unwrap();
        assert_eq!(back, t);
    }

    /// The table against the rules written plainly (every entry in one ordered map,
    /// each eviction found by scanning all of them): random records in batches of
    /// one sequence number, results big enough to cross the byte bound often, and
    /// tentative batches rolled back or kept. The two agree after every step on
    /// every entry, result and byte.
    #[test]
    fn the_table_keeps_exactly_the_entries_and_results_the_rules_say() {
        use proptest::prelude::Rng;
        use proptest::test_runner::{RngAlgorithm, TestRng};
        #[derive(Clone, Default)]
        struct Plain {
            entries: BTreeMap<ClientId, LastReply>,
        }
        impl Plain {
            fn bytes(&self) -> usize {
                self.entries.values().map(LastReply::bytes).sum()
            }
            fn record(&mut self, horizon: Seq, c: ClientId, ts: u64, result: Vec<u8>, seq: Seq) {
                let entry = LastReply {
                    timestamp: ts,
                    executed_at: seq,
                    result: Some(result),
                };
                self.entries.insert(c, entry);
                self.entries.retain(|_, e| seq - e.executed_at <= horizon);
                while self.bytes() > MAX_TABLE_BYTES {
                    let oldest = self
                        .entries
                        .iter()
                        .filter(|(_, e)| e.result.is_some())
                        .map(|(c, e)| (e.executed_at, *c))
                        .min();
                    let Some((_, c)) = oldest else { break };
                    self.entries.get_mut(&c).unwrap().result = None;
                }
            }
        }
        let horizon = 6;
        // Fixed seed: every run replays the same batches.
        let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut next = |n: u64| rng.next_u64() % n;
        let mut t = ClientTable::new(horizon);
        let mut plain = Plain::default();
        let mut ts = 0;
        let mut seq = 1;
        // Rolled-back batches, and entries seen without their result (summed over steps).
        let (mut rollbacks, mut drops) = (0, 0);
        for _ in 0..500 {
            let tentative = next(2) == 0;
            let saved = plain.clone();
            if tentative {
                t.begin_tentative();
            }
            for _ in 0..=next(5) {
                let c = client(u8::try_from(next(12)).unwrap());
                ts += 1;
                let len = [0, 1, MAX_TABLE_BYTES / 5, MAX_TABLE_BYTES / 3][next(4) as usize];
                t.record(c, ts, vec![7; len], seq);
                plain.record(horizon, c, ts, vec![7; len], seq);
            }
            if tentative && next(2) == 0 {
                t.rollback_tentative();
                plain = saved;
                rollbacks += 1;
            } else {
                if tentative {
                    t.commit_tentative();
                }
                seq += 1 + next(2);
            }
            let dropped = plain
                .entries
                .values()
                .filter(|e| e.result.is_none())
                .count();
            drops += dropped;
            let ours: Vec<(ClientId, LastReply)> = t
                .entries
                .sorted()
                .into_iter()
                .map(|(c, e)| (*c, e.clone()))
                .collect();
            let theirs: Vec<(ClientId, LastReply)> =
                plain.entries.iter().map(|(c, e)| (*c, e.clone())).collect();
            assert_eq!(ours, theirs);
            assert_eq!(t.bytes, plain.bytes());
            assert_eq!(t.by_age.len(), t.len());
            // Where the search for results starts, none is before it.
            if let Some(from) = t.results_from {
                for (_, c) in t.by_age.range(..from) {
                    assert!(t.entries.get(c).unwrap().result.is_none(), "{c:?} skipped");
                }
            }
        }
        assert!(rollbacks > 20, "{rollbacks} rollbacks");
        assert!(drops > 100, "results dropped {drops} times");
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_results_and_survives_a_snapshot() {
        let mut t = ClientTable::new(1_000);
        let big = vec![0u8; MAX_TABLE_BYTES / 3];
        for i in 0..4u8 {
            t.record(client(i), 1, big.clone(), 10); // one batch: the same seq
        }
        assert_eq!(t.len(), 4, "every entry stays");
        let kept = (0..4u8)
            .filter(|i| matches!(t.freshness(&client(*i), 1), Freshness::Repeat(r) if r.result.is_some()))
            .count();
        assert_eq!(kept, 2, "only the results that fit");
        let back: ClientTable =
            bft_crypto::decode(&bft_crypto::encode(&t).unwrap(), usize::MAX).unwrap();
        assert_eq!(back, t, "the indexes and byte count are rebuilt");
    }
}
