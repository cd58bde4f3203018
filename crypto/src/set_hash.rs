//! An incremental multiset hash (Bellare and Micciancio's AdHash, as PBFT's BASE
//! uses for incremental checkpoints): the digest of a set is the sum, modulo
//! 2^2048, of a 2048-bit expansion of each element's SHA-256. Adding or removing
//! one element costs a hash and an expansion, whatever the set's size, and the
//! result does not depend on the order of updates.
//!
//! The expansion is AES-256 in counter mode keyed by the element's SHA-256, at a
//! fraction of the cost of the eight SHA-256 blocks counter-mode hashing took (the
//! key-value store expanded two elements per overwrite, about 4 % of the machine's
//! CPU per request: issue 13; it now brings its digest up to date only when asked,
//! see `bft_consensus::kv`). AES runs on the processor's AES
//! instructions where it has them (the `aes` crate detects them at run time).
//!
//! AdHash wants a random oracle here. AES with a public key is not one by design,
//! and AES-256 has known distinguishers when an attacker chooses related keys; the
//! keys here are SHA-256 outputs, which nobody can relate, so the generalised
//! birthday bound above is kept heuristically. That is enough for what the digest
//! is for: a replica's own view of its state (`/status`, the simulator's
//! comparison of replicas). It never leaves the replica, and checkpoints use a
//! SHA-256 of the snapshot's bytes. Before it goes into a checkpoint or onto the
//! wire (BASE's incremental checkpoints), the expansion should become a standard
//! extendable-output function (SHAKE, BLAKE3).
//!
//! Why 2048 bits: additive hashes fall to Wagner's generalised birthday attack at
//! roughly 2^(2*sqrt(bits)) work, which is 2^32 for 256 bits but about 2^90 here.
//!
//! An element is hashed once into its [`SetElement`] (the seed of its expansion); a
//! holder that keeps the `SetElement` can take the element out again without hashing
//! its bytes a second time (the key-value store does, so overwriting a 512-byte
//! value no longer re-hashes the old one).

use crate::{Digest, Hasher};
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes256, Block};

const LIMBS: usize = 32; // 32 x 64 = 2048 bits

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetHash {
    sum: [u64; LIMBS],
}

impl Default for SetHash {
    fn default() -> Self {
        Self { sum: [0; LIMBS] }
    }
}

impl SetHash {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the element made of `parts` (framed, so `["ab","c"]` and `["a","bc"]` differ).
    pub fn insert(&mut self, parts: &[&[u8]]) {
        self.insert_element(&SetElement::of(parts));
    }

    /// Remove an element added before (the inverse of [`SetHash::insert`]).
    pub fn remove(&mut self, parts: &[&[u8]]) {
        self.remove_element(&SetElement::of(parts));
    }

    /// Add an element already hashed with [`SetElement::of`].
    pub fn insert_element(&mut self, element: &SetElement) {
        let e = expand(element);
        let mut carry = false;
        for (s, x) in self.sum.iter_mut().zip(e) {
            let (v, c1) = s.overflowing_add(x);
            let (v, c2) = v.overflowing_add(u64::from(carry));
            *s = v;
            carry = c1 || c2;
        }
    }

    /// Remove an element added before (the inverse of [`SetHash::insert_element`]).
    pub fn remove_element(&mut self, element: &SetElement) {
        let e = expand(element);
        let mut borrow = false;
        for (s, x) in self.sum.iter_mut().zip(e) {
            let (v, b1) = s.overflowing_sub(x);
            let (v, b2) = v.overflowing_sub(u64::from(borrow));
            *s = v;
            borrow = b1 || b2;
        }
    }

    /// A 32-byte digest of the accumulated set under `domain`.
    #[must_use]
    pub fn digest(&self, domain: &str) -> Digest {
        let mut h = Hasher::new(domain);
        for limb in self.sum {
            h.update_u64(limb);
        }
        h.finish()
    }
}

/// One element of a [`SetHash`], hashed: the SHA-256 of its framed parts. Keeping
/// it lets the element be removed without its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetElement(Digest);

impl SetElement {
    /// Hash the element made of `parts` (framed, as [`SetHash::insert`] frames them).
    #[must_use]
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut seed = Hasher::new("bftnode/set-hash/element/v1");
        for p in parts {
            seed.update(p);
        }
        Self(seed.finish())
    }
}

/// The element's 2048-bit image: the counter blocks 0 to 15, each tagged with
/// [`EXPAND_TAG`], encrypted with AES-256 under the element's digest.
fn expand(element: &SetElement) -> [u64; LIMBS] {
    let cipher = Aes256::new(GenericArray::from_slice(&element.0 .0));
    let mut blocks = [Block::default(); LIMBS / 2];
    for (i, block) in blocks.iter_mut().enumerate() {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        block[8..].copy_from_slice(EXPAND_TAG);
    }
    cipher.encrypt_blocks(&mut blocks);
    let mut out = [0u64; LIMBS];
    for (limbs, block) in out.chunks_exact_mut(2).zip(&blocks) {
        limbs[0] = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        limbs[1] = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
    }
    out
}

/// The upper half of every counter block: this expansion's own, so its blocks are
/// never those of another use of AES under the same key.
const EXPAND_TAG: &[u8; 8] = b"bftsetx2";

#[cfg(test)]
mod tests {
    use super::*;

    fn of(items: &[&[u8]]) -> SetHash {
        let mut h = SetHash::new();
        for i in items {
            h.insert(&[i]);
        }
        h
    }

    /// The expansion written out the long way: each counter block encrypted on its
    /// own, from the element's parts. Pins the construction, which every replica of
    /// a group must share for their `/status` digests to agree.
    fn expand_the_long_way(parts: &[&[u8]]) -> [u64; LIMBS] {
        let mut seed = Hasher::new("bftnode/set-hash/element/v1");
        for p in parts {
            seed.update(p);
        }
        let cipher = Aes256::new(GenericArray::from_slice(&seed.finish().0));
        let mut out = [0u64; LIMBS];
        for (i, limbs) in out.chunks_exact_mut(2).enumerate() {
            let mut block = Block::default();
            block[..8].copy_from_slice(&(i as u64).to_le_bytes());
            block[8..].copy_from_slice(b"bftsetx2");
            cipher.encrypt_block(&mut block);
            limbs[0] = u64::from_le_bytes(block[..8].try_into().unwrap());
            limbs[1] = u64::from_le_bytes(block[8..].try_into().unwrap());
        }
        out
    }

    #[test]
    fn the_expansion_is_each_counter_block_encrypted_under_the_elements_digest() {
        let value = vec![0xa5; 512];
        for parts in [
            vec![&b""[..]],
            vec![&b"key"[..], &value[..]],
            vec![&b"a"[..], &b"bc"[..], &b"def"[..]],
        ] {
            let e = expand(&SetElement::of(&parts));
            assert_eq!(e, expand_the_long_way(&parts));
            assert!(e.iter().any(|&limb| limb != 0));
        }
        assert_ne!(
            expand(&SetElement::of(&[b"a"])),
            expand(&SetElement::of(&[b"b"]))
        );
    }

    #[test]
    fn an_element_kept_removes_what_its_parts_inserted() {
        let mut h = of(&[b"a"]);
        let e = SetElement::of(&[b"k", b"v"]);
        h.insert(&[b"k", b"v"]);
        h.remove_element(&e);
        assert_eq!(h, of(&[b"a"]));
        h.insert_element(&e);
        h.remove(&[b"k", b"v"]);
        assert_eq!(h, of(&[b"a"]));
    }

    #[test]
    fn order_does_not_matter() {
        assert_eq!(of(&[b"a", b"b", b"c"]), of(&[b"c", b"a", b"b"]));
    }

    #[test]
    fn remove_undoes_insert() {
        let mut h = of(&[b"a", b"b"]);
        h.insert(&[b"x", b"y"]);
        h.remove(&[b"x", b"y"]);
        assert_eq!(h, of(&[b"a", b"b"]));
        h.remove(&[b"a"]);
        h.remove(&[b"b"]);
        assert_eq!(h, SetHash::new());
        assert_eq!(h.digest("d"), SetHash::new().digest("d"));
    }

    #[test]
    fn different_sets_and_framings_differ() {
        assert_ne!(of(&[b"a", b"b"]).digest("d"), of(&[b"a", b"c"]).digest("d"));
        assert_ne!(of(&[b"a"]).digest("d"), of(&[b"a", b"a"]).digest("d"));
        let mut split = SetHash::new();
        split.insert(&[b"ab", b"c"]);
        let mut other = SetHash::new();
        other.insert(&[b"a", b"bc"]);
        assert_ne!(split, other);
        assert_ne!(of(&[b"a"]).digest("d"), of(&[b"a"]).digest("e"));
    }

    #[test]
    fn removing_what_was_never_added_wraps_and_adding_it_back_restores() {
        let mut h = of(&[b"a"]);
        h.remove(&[b"ghost"]);
        assert_ne!(h, of(&[b"a"]));
        h.insert(&[b"ghost"]);
        assert_eq!(h, of(&[b"a"]));
    }
}
