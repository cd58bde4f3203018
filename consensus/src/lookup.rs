//! A hash map for lookups only: the consensus core bans `HashMap` (its iteration
//! order depends on a random hasher, and any output built from it would differ
//! between replicas and between runs of one simulator seed). [`LookupMap`] offers
//! no iteration in that order: the only way to read every entry is in key order
//! ([`LookupMap::sorted`]).
//!
//! Why not a `BTreeMap`: the key-value store and the client table look a key up
//! for every request, several times, and a B-tree of thousands of keys compares
//! about a dozen keys behind pointers per lookup, where a hash map hashes once
//! (issue 13). The hasher is std's keyed SipHash, so nobody who chooses keys (every
//! client chooses its own, and its writes' keys) can aim them at one bucket.
#![allow(clippy::disallowed_types)] // the one place `HashMap` is used, behind the API above

use std::borrow::Borrow;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::Hash;

#[derive(Clone, Debug)]
pub struct LookupMap<K, V>(HashMap<K, V>);

impl<K, V> Default for LookupMap<K, V> {
    fn default() -> Self {
        Self(HashMap::default())
    }
}

impl<K: Eq + Hash, V: PartialEq> PartialEq for LookupMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Eq + Hash, V: Eq> Eq for LookupMap<K, V> {}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for LookupMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<K: Eq + Hash, V> LookupMap<K, V> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(key)
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.0.entry(key)
    }

    /// Keep only the entries `keep` says yes to (whatever order it sees them
    /// in, so `keep` must not depend on the others).
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain(keep);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Every entry, in key order.
    #[must_use]
    pub fn sorted(&self) -> Vec<(&K, &V)>
    where
        K: Ord,
    {
        let mut all: Vec<(&K, &V)> = self.0.iter().collect();
        // Keys are unique: an unstable sort gives one order.
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// A set for membership tests only, as [`LookupMap`] is a map: no iteration at all.
///
/// For keys looked up for every request, such as the requests of the batches in
/// flight: in a B-tree of a thousand 40-byte keys each insertion, test and removal
/// compared about ten keys behind pointers, ~3 % of the primary's event loop
/// (issue 13).
#[derive(Clone, Debug, Default)]
pub struct LookupSet<K>(LookupMap<K, ()>);

impl<K: Eq + Hash> LookupSet<K> {
    #[must_use]
    pub fn new() -> Self {
        Self(LookupMap::new())
    }

    /// Whether `key` was absent.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ()).is_none()
    }

    #[must_use]
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(key).is_some()
    }

    /// Whether `key` was present.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(key).is_some()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<K: Eq + Hash> Extend<K> for LookupSet<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, keys: I) {
        for k in keys {
            self.insert(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_in_key_order_whatever_the_insertion_order() {
        let mut m = LookupMap::new();
        for k in [5u32, 1, 9, 3, 7, 2, 8] {
            m.insert(k, k * 10);
        }
        m.remove(&9);
        let keys: Vec<u32> = m.sorted().into_iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 2, 3, 5, 7, 8]);
        let other: LookupMap<u32, u32> = m.sorted().into_iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(other, m);
    }

    #[test]
    fn a_set_answers_membership_as_it_was_changed() {
        let mut s = LookupSet::new();
        assert!(!s.contains(&3u32));
        assert!(s.insert(3u32));
        assert!(!s.insert(3), "already there");
        s.extend([4, 5, 3]);
        assert!(s.contains(&4) && s.contains(&5) && !s.contains(&6));
        assert!(s.remove(&4));
        assert!(!s.remove(&4), "gone already");
        assert!(!s.contains(&4));
        s.clear();
        assert!(!s.contains(&3) && !s.contains(&5));
    }

    #[test]
    fn retain_keeps_exactly_the_entries_asked_for() {
        let mut m: LookupMap<u32, u32> = (0..10).map(|k| (k, k * 2)).collect();
        m.retain(|k, v| {
            *v += 1;
            k % 3 == 0
        });
        let kept: Vec<(u32, u32)> = m.sorted().into_iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(kept, [(0, 1), (3, 7), (6, 13), (9, 19)]);
    }
}
