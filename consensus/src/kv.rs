//! A key-value store on the [`Application`] trait: put, set, get, delete,
//! compare-and-swap.

use crate::app::{Application, CapturedState, RestoreError};
use crate::lookup::LookupMap;
use bft_crypto::{Digest, SetElement, SetHash};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// A client operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        #[serde(with = "bft_crypto::bytes")]
        key: Vec<u8>,
        #[serde(with = "bft_crypto::bytes")]
        value: Vec<u8>,
    },
    Get {
        #[serde(with = "bft_crypto::bytes")]
        key: Vec<u8>,
    },
    Delete {
        #[serde(with = "bft_crypto::bytes")]
        key: Vec<u8>,
    },
    /// Set `key` to `new` only if its current value is `expected` (`None`: absent).
    CompareAndSwap {
        #[serde(with = "bft_crypto::bytes")]
        key: Vec<u8>,
        #[serde(with = "bft_crypto::bytes::option")]
        expected: Option<Vec<u8>>,
        #[serde(with = "bft_crypto::bytes")]
        new: Vec<u8>,
    },
    /// Write `value` under `key` and answer only that it was written
    /// ([`KvResult::Written`]), as Redis's SET or etcd's put without `prev_kv` do:
    /// a [`KvOp::Put`] answers with the value it replaced, which every replica
    /// hashes into its reply and the designated one sends in full. For 512-byte
    /// values that echo was about 7 % of the machine's CPU per write (issue 13).
    Set {
        #[serde(with = "bft_crypto::bytes")]
        key: Vec<u8>,
        #[serde(with = "bft_crypto::bytes")]
        value: Vec<u8>,
    },
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Put/Delete done; carries the previous value.
    Done {
        #[serde(with = "bft_crypto::bytes::option")]
        previous: Option<Vec<u8>>,
    },
    /// Get: the value, if any.
    Value(#[serde(with = "bft_crypto::bytes::option")] Option<Vec<u8>>),
    /// CompareAndSwap: whether it swapped, and the value found.
    Swapped {
        swapped: bool,
        #[serde(with = "bft_crypto::bytes::option")]
        current: Option<Vec<u8>>,
    },
    /// The operation bytes did not decode.
    Invalid,
    /// The store would outgrow [`MAX_STATE_BYTES`]: nothing was written.
    Full,
    /// Set done (it does not say what was there).
    Written,
}

impl KvOp {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        bft_crypto::encode(self).expect("KvOp always encodes")
    }

    /// The key the operation reads or writes.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Set { key, .. }
            | KvOp::Get { key }
            | KvOp::Delete { key }
            | KvOp::CompareAndSwap { key, .. } => key,
        }
    }
}

impl KvResult {
    /// The bytes a replica returns for this result.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        bft_crypto::encode(self).expect("KvResult always encodes")
    }

    /// Decode a result returned by a replica.
    ///
    /// # Errors
    /// If the bytes are not a `KvResult`.
    pub fn decode(bytes: &[u8]) -> Result<Self, bft_crypto::CryptoError> {
        bft_crypto::decode(bytes, crate::messages::MAX_MESSAGE_BYTES)
    }
}

/// Largest operation the store decodes.
const MAX_OP_BYTES: usize = 16 * 1024 * 1024;

/// Most bytes the store holds, counting [`ENTRY_OVERHEAD`] per entry. With the client
/// table's bound (`client_table::MAX_TABLE_BYTES`) it keeps a state snapshot, which
/// state transfer sends in one message, well inside the 64 MiB frame: a store that
/// could outgrow the frame would make itself impossible to transfer (issue 11).
pub const MAX_STATE_BYTES: usize = 32 * 1024 * 1024;
/// What an entry costs besides its key and value (lengths in the snapshot, map
/// overhead), so that many tiny entries count too.
const ENTRY_OVERHEAD: usize = 16;

/// A write the store's bound refuses.
#[derive(Debug)]
struct Full;

fn entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// A stored value: shared, so that a checkpoint captures the state by taking a
/// reference to each value rather than copying it (see [`Application::capture`]).
type Value = Arc<[u8]>;

/// A value, with what the state digest counts for its key.
///
/// The digest is brought up to date only when asked for ([`KvStore::digest`]):
/// hashing every written entry into it (a SHA-256 of the entry and two 2048-bit
/// expansions per overwrite) was about a seventh of a replica's event loop, and
/// nothing but `/status` and tests reads it (issue 13). `counted` is the element
/// the digest's sum holds for this key (the entry as it was when the digest was
/// last brought up to date), `stale` says the value changed since, and the key is
/// then in [`Digested::stale`]. Both are cells: [`Application::digest`] reads
/// the store through a shared reference, and updates them.
#[derive(Clone, Debug)]
struct Stored {
    value: Value,
    counted: Cell<Option<SetElement>>,
    stale: Cell<bool>,
}

/// The state digest's sum and the keys whose entries changed since it was last
/// brought up to date.
#[derive(Clone, Debug, Default)]
struct Digested {
    sum: SetHash,
    /// Keys whose entry is stale, oldest first, each listed once per change from
    /// up to date to stale; a key deleted meanwhile is skipped. Bounded by
    /// [`KvStore::bound_stale`].
    stale: VecDeque<Vec<u8>>,
    /// The bytes of the keys in `stale`.
    stale_bytes: usize,
}

/// Stale entries beyond which each newly listed one brings two of the oldest up to
/// date: what one `/status` may have to hash at once (tens of milliseconds), where
/// a node nobody asks could otherwise gather the whole state (a store of two
/// million tiny entries takes seconds, on the event loop). The load generator's
/// 10,000 keys stay far below it and are never hashed unasked.
const STALE_MAX: usize = 65_536;

/// Bring `key`'s entry up to date in `sum` if it is present and stale.
fn count_entry(map: &LookupMap<Vec<u8>, Stored>, sum: &mut SetHash, key: &[u8]) {
    let Some(stored) = map.get(key) else {
        return; // deleted: its element left the sum then
    };
    if !stored.stale.replace(false) {
        return; // listed twice (deleted and written again): counted already
    }
    if let Some(counted) = stored.counted.get() {
        sum.remove_element(&counted);
    }
    let element = SetElement::of(&[key, &stored.value]);
    sum.insert_element(&element);
    stored.counted.set(Some(element));
}

/// The snapshot's encoding: the map, its keys and values written as byte strings
/// in key order (the same bytes as `bft_crypto::bytes::map` writes for an ordered
/// map of values), so that equal states give equal bytes whatever order the hash
/// map holds them in.
struct Entries<'a>(&'a KvStore);

impl Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries = InOrder::new(self.0).map(|(k, stored)| (&k[..], &stored.value[..]));
        bft_crypto::bytes::map::serialize_pairs(entries, s)
    }
}

/// Entries [`InOrder`] finds before it hands out the first of them.
const LOOKAHEAD: usize = 256;

/// The store's entries in key order, found [`LOOKAHEAD`] at a time: those lookups
/// do not depend on one another, so the CPU overlaps their cache misses, where
/// finding each entry just before it is copied waited for them one at a time
/// (issue 13: encoding 10,000 entries of 512 bytes with cold caches, the median of
/// alternating benchmark runs fell from 3.1 to 2.45 ms). A chunk at a time, not
/// all at once, so the references take a few kilobytes rather than twice the
/// state's bound for a state of tiny entries. Exact in length, as the encoding of
/// a map's length needs.
struct InOrder<'a> {
    keys: std::collections::btree_set::Iter<'a, Arc<[u8]>>,
    map: &'a LookupMap<Vec<u8>, Stored>,
    chunk: Vec<(&'a Arc<[u8]>, &'a Stored)>,
    /// The next of `chunk` to hand out.
    next: usize,
}

impl<'a> InOrder<'a> {
    fn new(store: &'a KvStore) -> Self {
        Self {
            keys: store.order.iter(),
            map: &store.map,
            chunk: Vec::with_capacity(LOOKAHEAD),
            next: 0,
        }
    }
}

impl<'a> Iterator for InOrder<'a> {
    type Item = (&'a Arc<[u8]>, &'a Stored);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.chunk.len() {
            let map = self.map;
            self.chunk.clear();
            self.next = 0;
            self.chunk
                .extend(self.keys.by_ref().take(LOOKAHEAD).map(|k| {
                    let stored = map.get(&k[..]).expect("every ordered key is in the map");
                    (k, stored)
                }));
        }
        let entry = self.chunk.get(self.next).copied()?;
        self.next += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.keys.len() + (self.chunk.len() - self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for InOrder<'_> {}

/// A [`KvStore`]'s entries at a checkpoint, in key order (see
/// [`Application::capture`]).
struct Captured {
    entries: Vec<(Arc<[u8]>, Value)>,
    /// [`Application::snapshot_bound`] at the capture.
    bound: usize,
}

impl CapturedState for Captured {
    /// The bytes [`Entries`] wrote at the capture: the same map encoding of the
    /// same pairs in the same order.
    fn encode_into(&self, out: &mut Vec<u8>) {
        bft_crypto::encode_into(&CapturedEntries(&self.entries), out).expect("map always encodes");
    }

    fn encoded_bound(&self) -> usize {
        self.bound
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("entries", &self.entries.len())
            .field("bound", &self.bound)
            .finish()
    }
}

struct CapturedEntries<'a>(&'a [(Arc<[u8]>, Value)]);

impl Serialize for CapturedEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs = self.0.iter().map(|(k, v)| (&k[..], &v[..]));
        bft_crypto::bytes::map::serialize_pairs(pairs, s)
    }
}

#[derive(Deserialize)]
struct OwnedEntries(
    #[serde(with = "bft_crypto::bytes::map")] std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
);

/// An in-memory map. Durability comes from PBFT checkpoints (snapshots) and
/// re-execution of the committed log after a restart.
///
/// Values are found through a hash map ([`LookupMap`]): every write looks its key
/// up once, and in a B-tree of 10,000 keys that lookup compared about twenty keys,
/// each behind a pointer, which was a tenth of a replica's event loop (issue 13).
/// The keys are also kept in order, for snapshots: an overwrite, the common write,
/// does not touch that order; a new key or a delete does (sorting the keys at every
/// checkpoint instead would take seconds for millions of tiny entries).
///
/// The state digest (a [`SetHash`] over the entries) is brought up to date for
/// the entries written since it was last asked for, when it is asked for.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    map: LookupMap<Vec<u8>, Stored>,
    /// The map's keys, in order (shared with the captures of checkpoints, which
    /// hold them in this order).
    order: BTreeSet<Arc<[u8]>>,
    /// The state digest (a [`SetHash`] over the entries), up to date as of the
    /// last [`Application::digest`]; a `RefCell` for the same reason as
    /// [`Stored`]'s cells.
    digested: RefCell<Digested>,
    /// Sum of [`entry_bytes`] over the map, kept under [`MAX_STATE_BYTES`].
    bytes: usize,
    /// While executing tentatively: every change since then, in order, as the key
    /// and the value it had before (`None`: absent); a rollback undoes them newest
    /// first. One entry per write of one batch (bounded by a batch's bytes); the
    /// values they replaced were in the state (its bound) or written by the batch.
    undo: Option<Journal>,
}

impl KvStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|s| &s.value[..])
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Set `key` to `value`, keeping the digest, size and undo journal in step;
    /// returns the old value if `previous` is asked for (None otherwise), or
    /// `Err(Full)` (nothing changed) if `bounded` and the store would outgrow
    /// [`MAX_STATE_BYTES`]. One lookup in the map, where a put made up to four (the
    /// bound, the journal's check and read, the insert): the bound and the journal
    /// are kept here, beside the write they guard. Unasked, the old value moves
    /// into the journal (or is dropped) instead of being copied there.
    fn set(
        &mut self,
        key: Vec<u8>,
        value: Value,
        bounded: bool,
        previous: Previous,
    ) -> Result<Option<Value>, Full> {
        let added = entry_bytes(&key, &value);
        let entry = self.map.entry(key);
        let freed = match &entry {
            Entry::Vacant(_) => 0,
            Entry::Occupied(e) => entry_bytes(e.key(), &e.get().value),
        };
        if bounded && self.bytes - freed + added > MAX_STATE_BYTES {
            return Err(Full);
        }
        self.bytes = self.bytes - freed + added;
        let stored = Stored {
            value,
            counted: Cell::new(None),
            stale: Cell::new(true),
        };
        let digested = self.digested.get_mut();
        let result = match entry {
            Entry::Vacant(e) => {
                journal(&mut self.undo, e.key(), || None);
                self.order.insert(Arc::from(&e.key()[..]));
                digested.list(e.key().clone());
                e.insert(stored);
                None
            }
            Entry::Occupied(mut e) => {
                let old = std::mem::replace(e.get_mut(), stored);
                // What the digest counts for the key stays until it is brought up
                // to date; the key is listed once however often it is written.
                e.get().counted.set(old.counted.get());
                if !old.stale.get() {
                    digested.list(e.key().clone());
                }
                match previous {
                    Previous::Return => {
                        journal(&mut self.undo, e.key(), || Some(old.value.clone()));
                        Some(old.value)
                    }
                    Previous::Drop => {
                        journal(&mut self.undo, e.key(), || Some(old.value));
                        None
                    }
                }
            }
        };
        self.bound_stale();
        Ok(result)
    }

    /// Take `key` out, keeping the digest, size and undo journal in step; returns
    /// its value.
    fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let old = self.map.remove(key)?;
        self.order.remove(key);
        if let Some(counted) = old.counted.get() {
            self.digested.get_mut().sum.remove_element(&counted);
        }
        self.bytes -= entry_bytes(key, &old.value);
        journal(&mut self.undo, key, || Some(old.value.clone()));
        Some(old.value)
    }

    /// Keep the stale list bounded after a key was listed. In entries: past
    /// [`STALE_MAX`], the two oldest are brought up to date. In bytes: a key
    /// deleted and written again is listed again, so once the listed keys hold
    /// more than twice the state's bytes, those gone or listed twice are dropped
    /// (what remains is each present key at most once: at most the state's bytes);
    /// one pass over the list, paid for by the bytes written since the last.
    fn bound_stale(&mut self) {
        let digested = self.digested.get_mut();
        if digested.stale.len() > STALE_MAX {
            for _ in 0..2 {
                let Some(key) = digested.stale.pop_front() else {
                    break;
                };
                digested.stale_bytes -= key.len();
                count_entry(&self.map, &mut digested.sum, &key);
            }
        }
        if digested.stale_bytes > 2 * self.bytes + 65_536 {
            // A listed key is kept once: its entry's flag is cleared as it is kept
            // and set again after the pass.
            let map = &self.map;
            digested.stale.retain(|key| {
                map.get(key)
                    .is_some_and(|stored| stored.stale.replace(false))
            });
            digested.stale_bytes = 0;
            for key in &digested.stale {
                map.get(key).expect("kept: present").stale.set(true);
                digested.stale_bytes += key.len();
            }
        }
    }

    /// Bring the digest's sum up to date: each stale entry's counted element out,
    /// its current one in.
    fn digest_sum(&self) -> SetHash {
        let mut digested = self.digested.borrow_mut();
        let Digested {
            sum,
            stale,
            stale_bytes,
        } = &mut *digested;
        for key in stale.drain(..) {
            count_entry(&self.map, sum, &key);
        }
        *stale_bytes = 0;
        sum.clone()
    }

    fn apply(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => match self.set(key, value.into(), true, Previous::Return) {
                Ok(previous) => KvResult::Done {
                    previous: previous.map(|v| v.to_vec()),
                },
                Err(Full) => KvResult::Full,
            },
            KvOp::Set { key, value } => match self.set(key, value.into(), true, Previous::Drop) {
                Ok(_) => KvResult::Written,
                Err(Full) => KvResult::Full,
            },
            KvOp::Get { key } => KvResult::Value(self.get(&key).map(<[u8]>::to_vec)),
            KvOp::Delete { key } => KvResult::Done {
                previous: self.remove(&key).map(|v| v.to_vec()),
            },
            KvOp::CompareAndSwap { key, expected, new } => {
                let current = self.get(&key).map(<[u8]>::to_vec);
                if current == expected {
                    match self.set(key, new.into(), true, Previous::Drop) {
                        Ok(_) => KvResult::Swapped {
                            swapped: true,
                            current,
                        },
                        Err(Full) => KvResult::Full,
                    }
                } else {
                    KvResult::Swapped {
                        swapped: false,
                        current,
                    }
                }
            }
        }
    }
}

/// The changes made while executing tentatively, oldest first: each key written
/// or deleted, with the value it had before (`None`: absent).
type Journal = Vec<(Vec<u8>, Option<Value>)>;

/// Whether [`KvStore::set`] returns the value it replaces.
#[derive(Clone, Copy)]
enum Previous {
    Return,
    Drop,
}

/// While executing tentatively (`undo` is `Some`): append the change of `key`,
/// whose value before it was `before()` (`None`: absent), for a rollback. Every
/// change is kept, not only a key's first: appending needs no lookup, and undoing
/// the changes newest first ends at each key's value from before the first.
/// `before` is only called when kept, so a value the caller no longer needs moves
/// in instead of being copied.
fn journal(undo: &mut Option<Journal>, key: &[u8], before: impl FnOnce() -> Option<Value>) {
    if let Some(undo) = undo {
        undo.push((key.to_vec(), before()));
    }
}

impl Digested {
    /// List `key`, whose entry just became stale.
    fn list(&mut self, key: Vec<u8>) {
        self.stale_bytes += key.len();
        self.stale.push_back(key);
    }
}

/// Equal contents: the same keys and values (and the same tentative journal),
/// however far each store's digest was brought up to date.
impl PartialEq for KvStore {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && self.undo == other.undo && self.map == other.map
    }
}

impl Eq for KvStore {}

/// Equal values, whatever the digest counts for them.
impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Application for KvStore {
    fn execute(&mut self, operation: &[u8]) -> Vec<u8> {
        let result = match bft_crypto::decode::<KvOp>(operation, MAX_OP_BYTES) {
            Ok(op) => self.apply(op),
            Err(_) => KvResult::Invalid,
        };
        bft_crypto::encode(&result).expect("KvResult always encodes")
    }

    /// A `Get` is read-only; anything else (and bytes that are not an operation)
    /// goes through the order.
    fn execute_read_only(&self, operation: &[u8]) -> Option<Vec<u8>> {
        match bft_crypto::decode::<KvOp>(operation, MAX_OP_BYTES) {
            Ok(KvOp::Get { key }) => {
                let result = KvResult::Value(self.get(&key).map(<[u8]>::to_vec));
                Some(bft_crypto::encode(&result).expect("KvResult always encodes"))
            }
            _ => None,
        }
    }

    fn begin_tentative(&mut self) -> bool {
        assert!(self.undo.is_none(), "tentative execution begun twice");
        self.undo = Some(Vec::new());
        true
    }

    fn commit_tentative(&mut self) {
        self.undo = None;
    }

    fn rollback_tentative(&mut self) {
        for (key, before) in self.undo.take().unwrap_or_default().into_iter().rev() {
            match before {
                // Unbounded: putting values back in any order may pass the bound
                // for a moment, and a rollback must be complete.
                Some(value) => {
                    self.set(key, value, false, Previous::Drop)
                        .expect("an unbounded set is never refused");
                }
                None => {
                    self.remove(&key);
                }
            }
        }
    }

    /// One pass over the entries, in the order kept for this.
    fn snapshot_into(&self, out: &mut Vec<u8>) {
        bft_crypto::encode_into(&Entries(self), out).expect("map always encodes");
    }

    /// A reference to each key and value, in key order: a walk over the entries
    /// with no copy (the values are shared, see [`Value`]). Until the capture is
    /// dropped, the values overwritten since stay allocated: at most one more
    /// state's worth for each checkpoint being encoded. The capture itself is two
    /// references an entry (32 bytes), at most twice [`MAX_STATE_BYTES`] for a
    /// state of the tiniest entries (each counts [`ENTRY_OVERHEAD`]); for the load
    /// generator's 10,000 entries, 320 KB.
    fn capture(&self) -> Arc<dyn CapturedState> {
        let entries = InOrder::new(self)
            .map(|(k, stored)| (Arc::clone(k), Arc::clone(&stored.value)))
            .collect();
        Arc::new(Captured {
            entries,
            bound: self.snapshot_bound(),
        })
    }

    /// `bytes` bounds the encoding: each entry's two length prefixes take at most
    /// 10 of the [`ENTRY_OVERHEAD`] bytes it counts, the map's length at most 10 more.
    fn snapshot_bound(&self) -> usize {
        self.bytes + 10
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let OwnedEntries(map) =
            bft_crypto::decode(snapshot, usize::MAX).map_err(|e| RestoreError(e.to_string()))?;
        let bytes: usize = map.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        if bytes > MAX_STATE_BYTES {
            return Err(RestoreError(format!(
                "{bytes} bytes of entries exceed the store's bound of {MAX_STATE_BYTES}"
            )));
        }
        // The digest is brought up to date here, all at once, as it was before it
        // became lazy: restoring is a pass over the state anyway, and a node asked
        // for `/status` right after must not hash it all then (see STALE_MAX).
        let mut sum = SetHash::new();
        self.order = map.keys().map(|k| Arc::from(&k[..])).collect();
        self.map = map
            .into_iter()
            .map(|(k, value)| {
                let element = SetElement::of(&[&k, &value]);
                sum.insert_element(&element);
                let stored = Stored {
                    value: value.into(),
                    counted: Cell::new(Some(element)),
                    stale: Cell::new(false),
                };
                (k, stored)
            })
            .collect();
        *self.digested.get_mut() = Digested {
            sum,
            ..Digested::default()
        };
        self.bytes = bytes;
        self.undo = None;
        Ok(())
    }

    fn digest(&self) -> Digest {
        self.digest_sum().digest("bftnode/kv/v3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kv: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&kv.execute(&op.encode())).unwrap()
    }

    #[test]
    fn a_rollback_puts_back_exactly_the_state_before_tentative_execution() {
        let put = |k: &str, v: &str| KvOp::Put {
            key: k.into(),
            value: v.into(),
        };
        let mut kv = KvStore::new();
        run(&mut kv, put("a", "1"));
        run(&mut kv, put("b", "2"));
        let before = kv.clone();
        assert!(kv.begin_tentative());
        run(&mut kv, put("a", "changed"));
        let set = |k: &str, v: &str| KvOp::Set {
            key: k.into(),
            value: v.into(),
        };
        // A set's old value goes to the journal without a copy; a new key's absence too.
        assert_eq!(run(&mut kv, set("a", "set")), KvResult::Written);
        assert_eq!(run(&mut kv, set("d", "new")), KvResult::Written);
        run(&mut kv, put("a", "twice"));
        run(&mut kv, KvOp::Delete { key: b"b".to_vec() });
        run(&mut kv, put("c", "new"));
        // Created, deleted and created again; deleted and written again.
        run(&mut kv, KvOp::Delete { key: b"c".to_vec() });
        run(&mut kv, put("c", "again"));
        run(&mut kv, put("b", "back"));
        run(
            &mut kv,
            KvOp::CompareAndSwap {
                key: b"a".to_vec(),
                expected: Some(b"twice".to_vec()),
                new: b"swapped".to_vec(),
            },
        );
        assert_eq!(kv.get(b"a"), Some(&b"swapped"[..]));
        assert_ne!(kv.digest(), before.digest());
        kv.rollback_tentative();
        assert_eq!(kv, before);
        assert_eq!(kv.digest(), before.digest());
        assert_eq!(kv.snapshot(), before.snapshot());
        // A commit keeps what executed, and the next rollback has nothing to undo.
        assert!(kv.begin_tentative());
        run(&mut kv, put("a", "kept"));
        kv.commit_tentative();
        let kept = kv.clone();
        kv.rollback_tentative();
        assert_eq!(kv, kept);
    }

    #[test]
    fn only_a_get_is_read_only_and_it_reads_what_execute_would() {
        let mut kv = KvStore::new();
        let k = b"k".to_vec();
        run(
            &mut kv,
            KvOp::Put {
                key: k.clone(),
                value: b"v".to_vec(),
            },
        );
        let get = KvOp::Get { key: k.clone() }.encode();
        let digest = kv.digest();
        assert_eq!(kv.execute_read_only(&get), Some(kv.clone().execute(&get)));
        assert_eq!(kv.digest(), digest);
        let writes = [
            KvOp::Put {
                key: k.clone(),
                value: b"w".to_vec(),
            },
            KvOp::Delete { key: k.clone() },
            KvOp::CompareAndSwap {
                key: k.clone(),
                expected: None,
                new: b"x".to_vec(),
            },
            KvOp::Set {
                key: k,
                value: b"y".to_vec(),
            },
        ];
        for op in writes {
            assert_eq!(kv.execute_read_only(&op.encode()), None, "{op:?}");
        }
        assert_eq!(kv.execute_read_only(b"not an operation"), None);
    }

    #[test]
    fn put_get_delete_cas() {
        let mut kv = KvStore::new();
        let k = b"k".to_vec();
        assert_eq!(
            run(&mut kv, KvOp::Get { key: k.clone() }),
            KvResult::Value(None)
        );
        assert_eq!(
            run(
                &mut kv,
                KvOp::Put {
                    key: k.clone(),
                    value: b"1".to_vec()
                }
            ),
            KvResult::Done { previous: None }
        );
        assert_eq!(
            run(&mut kv, KvOp::Get { key: k.clone() }),
            KvResult::Value(Some(b"1".to_vec()))
        );
        let cas = |e: Option<&[u8]>, n: &[u8]| KvOp::CompareAndSwap {
            key: k.clone(),
            expected: e.map(<[u8]>::to_vec),
            new: n.to_vec(),
        };
        assert_eq!(
            run(&mut kv, cas(Some(b"0"), b"2")),
            KvResult::Swapped {
                swapped: false,
                current: Some(b"1".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, cas(Some(b"1"), b"2")),
            KvResult::Swapped {
                swapped: true,
                current: Some(b"1".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, KvOp::Delete { key: k.clone() }),
            KvResult::Done {
                previous: Some(b"2".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, cas(None, b"3")),
            KvResult::Swapped {
                swapped: true,
                current: None
            }
        );
        // A set answers only that it wrote, over a value or none.
        for v in [b"4", b"5"] {
            let set = KvOp::Set {
                key: k.clone(),
                value: v.to_vec(),
            };
            assert_eq!(run(&mut kv, set), KvResult::Written);
            assert_eq!(
                run(&mut kv, KvOp::Get { key: k.clone() }),
                KvResult::Value(Some(v.to_vec()))
            );
        }
        run(&mut kv, KvOp::Delete { key: k.clone() });
        let fresh = KvOp::Set {
            key: k.clone(),
            value: b"6".to_vec(),
        };
        assert_eq!(run(&mut kv, fresh), KvResult::Written);
        assert_eq!(kv.get(&k), Some(&b"6"[..]));
    }

    /// The store never outgrows its bound (a snapshot must fit one frame): a write
    /// that would is refused as `Full` and changes nothing; one that frees room is fine.
    #[test]
    fn a_write_past_the_bound_is_refused_and_changes_nothing() {
        let mut kv = KvStore::new();
        let chunk = vec![7u8; 1024 * 1024];
        let mut stored = 0;
        loop {
            let op = KvOp::Put {
                key: stored.to_string().into_bytes(),
                value: chunk.clone(),
            };
            match run(&mut kv, op) {
                KvResult::Done { .. } => stored += 1,
                KvResult::Full => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, 31, "32 MiB hold 31 one-MiB values and their keys");
        let before = kv.digest();
        let grow = KvOp::CompareAndSwap {
            key: b"0".to_vec(),
            expected: Some(chunk.clone()),
            new: vec![7u8; 2 * 1024 * 1024],
        };
        assert_eq!(run(&mut kv, grow), KvResult::Full);
        let grow = KvOp::Set {
            key: b"0".to_vec(),
            value: vec![7u8; 2 * 1024 * 1024],
        };
        assert_eq!(run(&mut kv, grow), KvResult::Full);
        assert_eq!(kv.digest(), before);
        assert_eq!(
            run(&mut kv, KvOp::Delete { key: b"0".to_vec() }),
            KvResult::Done {
                previous: Some(chunk.clone())
            }
        );
        let again = KvOp::Put {
            key: b"again".to_vec(),
            value: chunk,
        };
        assert!(matches!(run(&mut kv, again), KvResult::Done { .. }));
        assert!(kv.snapshot().len() < crate::messages::MAX_MESSAGE_BYTES);
    }

    #[test]
    fn garbage_operation_is_an_invalid_result_not_a_panic() {
        let mut kv = KvStore::new();
        assert_eq!(
            KvResult::decode(&kv.execute(&[0xff, 0xff, 0xff])).unwrap(),
            KvResult::Invalid
        );
        assert!(kv.is_empty());
    }

    /// A capture writes the state as it was when captured, whatever the store
    /// did since: overwrites, deletes, new keys, a rollback, a restore.
    #[test]
    fn a_capture_encodes_the_state_it_was_taken_from() {
        let mut kv = KvStore::new();
        for i in 0..600u32 {
            let key = format!("key-{}", i % 300).into_bytes();
            run(
                &mut kv,
                KvOp::Set {
                    key,
                    value: vec![i as u8; 40],
                },
            );
        }
        let before = kv.snapshot();
        let captured = kv.capture();
        assert!(captured.encoded_bound() >= before.len());
        for i in 0..300u32 {
            let key = format!("key-{i}").into_bytes();
            match i % 3 {
                0 => run(&mut kv, KvOp::Delete { key }),
                1 => run(
                    &mut kv,
                    KvOp::Put {
                        key,
                        value: vec![9; 90],
                    },
                ),
                _ => run(
                    &mut kv,
                    KvOp::Set {
                        key: [&key[..], b"-new"].concat(),
                        value: vec![1],
                    },
                ),
            };
        }
        assert!(kv.begin_tentative());
        run(
            &mut kv,
            KvOp::Set {
                key: b"key-1".to_vec(),
                value: vec![7],
            },
        );
        kv.rollback_tentative();
        assert_ne!(kv.snapshot(), before);
        let mut out = Vec::new();
        captured.encode_into(&mut out);
        assert_eq!(out, before);
        kv.restore(&KvStore::new().snapshot()).unwrap();
        let mut again = vec![1, 2, 3];
        captured.encode_into(&mut again);
        assert_eq!(&again[3..], &before[..]);
    }

    #[test]
    fn snapshot_restore_and_digest_agree() {
        let mut a = KvStore::new();
        for i in 0..50u8 {
            run(
                &mut a,
                KvOp::Put {
                    key: vec![i],
                    value: vec![i; 3],
                },
            );
        }
        let mut b = KvStore::new();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        run(&mut b, KvOp::Delete { key: vec![7] });
        assert_ne!(a.digest(), b.digest());
        assert!(b.restore(b"nonsense").is_err());
    }

    /// The incremental digest always equals the digest of the same map built from
    /// scratch, whatever mix of overwrites, deletes and swaps led there.
    #[test]
    fn incremental_digest_matches_a_fresh_computation() {
        let mut kv = KvStore::new();
        let empty = kv.digest();
        let mut x: u64 = 7;
        for step in 0..2_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let key = vec![(x >> 33) as u8 % 40];
            let value = (x >> 20).to_le_bytes()[..(x % 5) as usize].to_vec();
            let op = match step % 5 {
                0 | 1 => KvOp::Put { key, value },
                2 => KvOp::Set { key, value },
                3 => KvOp::Delete { key },
                _ => KvOp::CompareAndSwap {
                    expected: kv.get(&key).map(<[u8]>::to_vec),
                    key,
                    new: value,
                },
            };
            run(&mut kv, op);
            if step % 97 == 0 {
                let mut fresh = KvStore::new();
                fresh.restore(&kv.snapshot()).unwrap();
                assert_eq!(kv.digest(), fresh.digest(), "step {step}");
            }
        }
        let keys: Vec<Vec<u8>> = kv.order.iter().map(|k| k.to_vec()).collect();
        for key in keys {
            run(&mut kv, KvOp::Delete { key });
        }
        assert_eq!(kv.digest(), empty);
    }

    /// The digest is brought up to date only when asked for, and is then the one of
    /// the state reached (a rollback in between included); until then the list of
    /// stale keys stays bounded, in bytes however often a large key is deleted and
    /// written again, and in entries however many keys are written.
    #[test]
    fn a_digest_asked_for_late_is_the_states_and_the_stale_list_stays_bounded() {
        let fresh_digest = |kv: &KvStore| {
            let mut fresh = KvStore::new();
            fresh.restore(&kv.snapshot()).unwrap();
            fresh.digest()
        };
        let within_bounds = |kv: &mut KvStore| {
            let bytes = kv.bytes;
            let d = kv.digested.get_mut();
            let listed: usize = d.stale.iter().map(Vec::len).sum();
            assert_eq!(listed, d.stale_bytes);
            assert!(
                d.stale.len() <= STALE_MAX + 1,
                "{} keys listed",
                d.stale.len()
            );
            assert!(
                d.stale_bytes <= 2 * bytes + 65_536 + 100_000,
                "{} bytes listed for a state of {bytes}",
                d.stale_bytes
            );
        };
        let mut kv = KvStore::new();
        for i in 0..100u8 {
            run(
                &mut kv,
                KvOp::Set {
                    key: vec![i],
                    value: vec![i],
                },
            );
        }
        let early = kv.digest();
        // A 100,000-byte key written and deleted again and again.
        let big = vec![7u8; 100_000];
        for round in 0..1_000u32 {
            let value = round.to_le_bytes().to_vec();
            run(
                &mut kv,
                KvOp::Set {
                    key: big.clone(),
                    value,
                },
            );
            run(&mut kv, KvOp::Delete { key: big.clone() });
            run(
                &mut kv,
                KvOp::Set {
                    key: vec![4],
                    value: round.to_le_bytes().to_vec(),
                },
            );
            within_bounds(&mut kv);
        }
        assert_ne!(kv.digest(), early);
        assert_eq!(kv.digest(), fresh_digest(&kv));
        // More keys than STALE_MAX, never asked for: the oldest are counted as
        // newer ones are listed.
        for i in 0..(STALE_MAX as u32 + 5_000) {
            run(
                &mut kv,
                KvOp::Set {
                    key: i.to_be_bytes().to_vec(),
                    value: vec![1],
                },
            );
        }
        within_bounds(&mut kv);
        assert_eq!(kv.digest(), fresh_digest(&kv));
        // Written tentatively and rolled back, with the digest asked for between.
        assert!(kv.begin_tentative());
        run(
            &mut kv,
            KvOp::Set {
                key: vec![5],
                value: b"t".to_vec(),
            },
        );
        run(&mut kv, KvOp::Delete { key: vec![6] });
        let tentative = kv.digest();
        assert_eq!(tentative, fresh_digest(&kv));
        run(
            &mut kv,
            KvOp::Set {
                key: vec![5],
                value: b"u".to_vec(),
            },
        );
        kv.rollback_tentative();
        assert_eq!(kv.digest(), fresh_digest(&kv));
        assert_ne!(kv.digest(), tentative);
    }

    #[test]
    fn the_snapshot_is_the_plain_map_of_keys_to_values() {
        #[derive(Serialize)]
        struct Plain<'a>(#[serde(with = "bft_crypto::bytes::map")] &'a BTreeMap<Vec<u8>, Vec<u8>>);
        let mut kv = KvStore::new();
        let mut plain = BTreeMap::new();
        assert_eq!(kv.snapshot(), bft_crypto::encode(&Plain(&plain)).unwrap());
        // One more than two look-ahead chunks, then one deleted: exactly two.
        for i in 0..=2 * LOOKAHEAD as u16 {
            let [hi, lo] = i.to_be_bytes();
            let (key, value) = (vec![lo % 7, hi, lo], vec![lo; usize::from(lo % 40) * 3]);
            run(
                &mut kv,
                KvOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
            );
            plain.insert(key, value);
        }
        run(&mut kv, KvOp::Delete { key: vec![0, 0, 0] });
        plain.remove(&vec![0, 0, 0]);
        assert_eq!(kv.len(), 2 * LOOKAHEAD);
        assert_eq!(kv.snapshot(), bft_crypto::encode(&Plain(&plain)).unwrap());
        run(&mut kv, KvOp::Delete { key: vec![1, 0, 1] });
        plain.remove(&vec![1, 0, 1]);
        assert_eq!(kv.snapshot(), bft_crypto::encode(&Plain(&plain)).unwrap());
        let mut fresh = KvStore::new();
        fresh.restore(&kv.snapshot()).unwrap();
        assert_eq!(fresh, kv);
    }
}
