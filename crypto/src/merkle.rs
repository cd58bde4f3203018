//! A binary Merkle tree over digests, so one signature can vouch for many items
//! (a replica signs the root of all replies of an executed batch once, and each
//! client gets its reply with the path from its leaf to that root).
//!
//! Leaves are digests the caller made with its own domain tag; inner nodes are
//! hashed under a domain of their own, so no leaf can pass for an inner node. A
//! level with an odd count carries its last node up unchanged (no duplication, so
//! two different leaf lists never share a tree shape by accident).

use crate::digest::{Digest, Hasher};
use serde::{Deserialize, Serialize};

const NODE_DOMAIN: &str = "bftnode/merkle-node/v1";

fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = Hasher::new(NODE_DOMAIN);
    h.update(&left.0).update(&right.0);
    h.finish()
}

/// Every level of the tree, leaves first, root last.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
}

/// The path from one leaf to the root: the leaf's position, how many leaves the
/// tree has (which fixes where odd nodes were carried up) and the sibling hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub index: u32,
    pub leaves: u32,
    pub siblings: Vec<Digest>,
}

impl MerkleTree {
    /// Build the tree. An empty list gives the all-zero root (nothing to prove).
    #[must_use]
    pub fn new(leaves: Vec<Digest>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("checked non-empty");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    #[must_use]
    pub fn root(&self) -> Digest {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The proof for leaf `index`, or None if there is no such leaf.
    #[must_use]
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                siblings.push(level[sibling]);
            }
            i /= 2;
        }
        Some(MerkleProof {
            index: u32::try_from(index).ok()?,
            leaves: u32::try_from(self.len()).ok()?,
            siblings,
        })
    }
}

impl MerkleProof {
    /// The root this proof leads to from `leaf`, or None if the proof is malformed
    /// (index out of range, too few or too many siblings).
    #[must_use]
    pub fn root_from(&self, leaf: Digest) -> Option<Digest> {
        if self.index >= self.leaves {
            return None;
        }
        let mut width = self.leaves as usize;
        let mut i = self.index as usize;
        let mut acc = leaf;
        let mut siblings = self.siblings.iter();
        while width > 1 {
            if i % 2 == 1 {
                acc = node(siblings.next()?, &acc);
            } else if i + 1 < width {
                acc = node(&acc, siblings.next()?);
            } // else: the odd last node, carried up as it is
            i /= 2;
            width = width.div_ceil(2);
        }
        siblings.next().is_none().then_some(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| sha256(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn a_single_leaf_is_its_own_root_with_an_empty_path() {
        let t = MerkleTree::new(leaves(1));
        assert_eq!(t.root(), leaves(1)[0]);
        let p = t.proof(0).unwrap();
        assert!(p.siblings.is_empty());
        assert_eq!(p.root_from(leaves(1)[0]), Some(t.root()));
    }

    #[test]
    fn every_leaf_proves_to_the_root_for_many_sizes() {
        for n in 1..=40 {
            let l = leaves(n);
            let t = MerkleTree::new(l.clone());
            for (i, leaf) in l.iter().enumerate() {
                let p = t.proof(i).unwrap();
                assert_eq!(p.root_from(*leaf), Some(t.root()), "n={n} i={i}");
            }
            assert!(t.proof(n).is_none());
        }
    }

    #[test]
    fn a_proof_does_not_carry_another_leaf_or_position() {
        let l = leaves(7);
        let t = MerkleTree::new(l.clone());
        let p = t.proof(3).unwrap();
        assert_ne!(p.root_from(l[4]), Some(t.root()));
        let moved = MerkleProof {
            index: 2,
            ..p.clone()
        };
        assert_ne!(moved.root_from(l[3]), Some(t.root()));
        let out_of_range = MerkleProof {
            index: 7,
            ..p.clone()
        };
        assert_eq!(out_of_range.root_from(l[3]), None);
        let mut extra = p.clone();
        extra.siblings.push(l[0]);
        assert_eq!(extra.root_from(l[3]), None);
        let mut short = p;
        short.siblings.pop();
        assert_eq!(short.root_from(l[3]), None);
    }

    proptest! {
        #[test]
        fn tampering_with_any_sibling_breaks_the_proof(n in 2usize..64, pick in 0usize..64, bit in 0usize..256) {
            let l = leaves(n);
            let t = MerkleTree::new(l.clone());
            let i = pick % n;
            let mut p = t.proof(i).unwrap();
            let s = bit % p.siblings.len().max(1);
            if let Some(d) = p.siblings.get_mut(s) {
                d.0[(bit / 8) % 32] ^= 1 << (bit % 8);
                prop_assert_ne!(p.root_from(l[i]), Some(t.root()));
            }
        }
    }
}
