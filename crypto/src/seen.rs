//! Signatures whose equation held lately, so that a copy arriving again is not
//! checked again: a client's retransmission (sent to every replica, the primary
//! included, which checked the original), the reply route a client re-sends with
//! it, a request a backup saw in a pre-prepare and then from the client, a replay.
//!
//! Issue 13: with 4,096 clients each retransmission cost the group eight
//! signature checks, and a wave of them at start-up pushed the replicas into a
//! storm they did not leave.
//!
//! Sound with no assumption about the hash. The batch equation checks each
//! signature through `[8]([s]B - R - [k]A) = 0` (see [`crate::SignatureBatch`]), which
//! depends on the signer's key `A`, the nonce point `R`, the scalar `s` (each as
//! encoded) and the challenge `k = H(R || A || M)`, and on nothing else. An entry
//! keeps `(A, R, s)` with the `k` its equation held for; a later signature is taken
//! as good only if its `A`, `R`, `s` and freshly computed `k` are all the same, so
//! it is the same equation. (Another message with the same `k` would satisfy it as
//! well, and would verify on its own too.) Only a batch that verified adds entries,
//! so a hit answers what that batch answered, with its error bound (a batch
//! accepts a bad signature with probability at most 2^-128).
//!
//! Bounded: two generations of at most half the capacity each; when the newer one
//! fills, the older is dropped. What matters is the last second or two, and a
//! flood of fresh signatures can only push entries out, never grow the table.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// `(A, R, s)`: the signer's key and the signature, as encoded.
pub(crate) type SeenKey = ([u8; 32], [u8; 32], [u8; 32]);

/// See the module doc. Shared by every batch that [`crate::SignatureBatch::remembering`] makes.
pub struct SeenSignatures {
    per_generation: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<SeenKey, [u8; 32]>,
    previous: HashMap<SeenKey, [u8; 32]>,
}

impl SeenSignatures {
    /// A cache of at most `capacity` signatures (at least 2).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            per_generation: (capacity / 2).max(1),
            generations: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `key`'s equation held for this very challenge `k`.
    pub(crate) fn holds(&self, key: &SeenKey, k: &[u8; 32]) -> bool {
        let g = self.lock();
        g.current.get(key).or_else(|| g.previous.get(key)) == Some(k)
    }

    /// Keep signatures whose equations held (a verified batch's).
    pub(crate) fn remember(&self, held: impl IntoIterator<Item = (SeenKey, [u8; 32])>) {
        let mut g = self.lock();
        for (key, k) in held {
            if g.current.len() >= self.per_generation {
                // The older generation's table becomes the newer one, emptied but
                // with its room kept: a fresh table grew by doubling and rehashing
                // every entry, 5 % of the primary's verify thread.
                let Generations { current, previous } = &mut *g;
                std::mem::swap(current, previous);
                current.clear();
            }
            g.current.insert(key, k);
        }
    }

    /// Signatures held now (never more than the capacity, or 2 if that is less).
    #[must_use]
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for SeenSignatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SeenSignatures({} of {})",
            self.len(),
            self.per_generation * 2
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SeenKey {
        ([n; 32], [n; 32], [n; 32])
    }

    #[test]
    fn an_entry_holds_only_for_the_challenge_it_was_checked_for() {
        let seen = SeenSignatures::new(8);
        seen.remember([(key(1), [7; 32])]);
        assert!(seen.holds(&key(1), &[7; 32]));
        assert!(
            !seen.holds(&key(1), &[8; 32]),
            "another message's challenge"
        );
        assert!(!seen.holds(&key(2), &[7; 32]), "another signature");
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let seen = SeenSignatures::new(4);
        for n in 0..50 {
            seen.remember([(key(n), [n; 32])]);
            assert!(seen.len() <= 4, "{} held after {n}", seen.len());
        }
        assert!(seen.holds(&key(49), &[49; 32]));
        assert!(seen.holds(&key(48), &[48; 32]));
        assert!(!seen.holds(&key(1), &[1; 32]), "the oldest were dropped");
    }
}
