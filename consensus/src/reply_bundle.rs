//! A batch's replies to the clients behind one process, sent as one message.
//!
//! A replica signs the Merkle root of every reply of an executed batch once
//! ([`crate::reply`]). Sent one per client, each reply carries a copy of that
//! signed root and its own Merkle path: for a batch of ~200 requests, ~450 bytes of
//! proof per reply, and one frame to decode, route and check per reply. When many
//! of a batch's clients sit behind one process (a gateway, the load generator),
//! their replies travel as one [`ReplyBundle`]: the signed root once, their replies,
//! and the leaf digest of every other reply of the batch, so the receiver rebuilds
//! the whole tree and checks the root once. Issue 13's profile had the load
//! generator spend ~16 % of its CPU decoding and checking replies one by one.
//!
//! [`SignedReplies::address`] decides, per destination, whichever form is smaller;
//! the node and the simulator both send through it.

use crate::messages::{Message, Reply};
use crate::rejection::Rejection;
use crate::reply::{check_root, leaf_with, ReplyRoot, RootCache, SignedReply, VerifiedReply};
use crate::types::ClientId;
use bft_crypto::{Digest, MerkleTree, Signed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Reply bytes one bundle carries at most; more are split over several bundles,
/// each with every leaf, so any frame bound a client may set is far away.
pub const BUNDLE_REPLY_BYTES: usize = 1 << 20;

/// What encoding a leaf costs in a bundle (tag, length, digest), and a reply's
/// signed root and path overhead beside it, for choosing the smaller form.
const LEAF_BYTES: usize = 34;
const ROOT_BYTES: usize = 180;
const SIBLING_BYTES: usize = 33;

/// One executed batch's replies, signed once: what the replica hands its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReplies {
    pub root: Signed<ReplyRoot>,
    /// In the order of the tree's leaves.
    pub replies: Vec<Reply>,
    /// `leaves[i]` is `leaf(&replies[i])`.
    pub leaves: Vec<Digest>,
}

/// One position of a bundled tree: a reply for this destination, or only the leaf
/// of a reply that goes elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleEntry {
    Reply(Reply),
    Leaf(Digest),
}

/// The signed root and every leaf of its tree, in order; some leaves as the
/// replies themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBundle {
    pub root: Signed<ReplyRoot>,
    pub entries: Vec<BundleEntry>,
}

impl SignedReplies {
    /// Each reply on its own, with its path (what a client behind no shared
    /// process gets; tests use it to look at single replies).
    #[must_use]
    pub fn individual(&self) -> Vec<SignedReply> {
        let tree = MerkleTree::new(self.leaves.clone());
        self.replies
            .iter()
            .enumerate()
            .map(|(i, reply)| SignedReply {
                reply: reply.clone(),
                proof: tree.proof(i).expect("index is in the tree"),
                root: self.root.clone(),
            })
            .collect()
    }

    /// The messages to send, and where: replies grouped by the destination `route`
    /// gives their client (clients without one are skipped), each group as bundles
    /// or as single replies, whichever is smaller. Destinations come in the order
    /// of their first reply (deterministic, for the simulator). Each reply goes to
    /// one destination, so it is moved there, not copied.
    pub fn address<P: Ord + Clone>(
        self,
        mut route: impl FnMut(&ClientId) -> Option<P>,
    ) -> Vec<(P, Message)> {
        let mut order: Vec<(P, Vec<usize>)> = Vec::new();
        let mut index: BTreeMap<P, usize> = BTreeMap::new();
        for (i, r) in self.replies.iter().enumerate() {
            if let Some(p) = route(&r.client) {
                let at = *index.entry(p.clone()).or_insert_with(|| {
                    order.push((p, Vec::new()));
                    order.len() - 1
                });
                order[at].1.push(i);
            }
        }
        let SignedReplies {
            root,
            replies,
            leaves,
        } = self;
        let n = replies.len();
        assert_eq!(leaves.len(), n, "one leaf per reply");
        let mut replies: Vec<Option<Reply>> = replies.into_iter().map(Some).collect();
        let depth = usize::BITS as usize - n.saturating_sub(1).leading_zeros() as usize;
        let mut tree: Option<MerkleTree> = None;
        let mut out = Vec::new();
        for (peer, mine) in order {
            let k = mine.len();
            let as_bundle = (n - k) * LEAF_BYTES;
            let as_singles = k * (ROOT_BYTES + depth * SIBLING_BYTES);
            if n > 1 && as_bundle <= as_singles {
                for bundle in bundles(&root, &leaves, &mut replies, &mine) {
                    out.push((peer.clone(), Message::Replies(bundle)));
                }
            } else {
                let tree = tree.get_or_insert_with(|| MerkleTree::new(leaves.clone()));
                for i in mine {
                    let single = SignedReply {
                        reply: take(&mut replies, i),
                        proof: tree.proof(i).expect("index is in the tree"),
                        root: root.clone(),
                    };
                    out.push((peer.clone(), Message::Reply(single)));
                }
            }
        }
        out
    }
}

/// Reply `i`, moved out: each index is in exactly one destination's group.
fn take(replies: &mut [Option<Reply>], i: usize) -> Reply {
    replies[i]
        .take()
        .expect("a reply goes to one destination only")
}

/// Bundles carrying (and taking) the replies at `mine` (ascending), at most
/// [`BUNDLE_REPLY_BYTES`] of results each, with every other leaf of the tree.
fn bundles(
    root: &Signed<ReplyRoot>,
    leaves: &[Digest],
    replies: &mut [Option<Reply>],
    mine: &[usize],
) -> Vec<ReplyBundle> {
    let mut chunks: Vec<Vec<usize>> = vec![Vec::new()];
    let mut bytes = 0;
    for &i in mine {
        let size = replies[i]
            .as_ref()
            .expect("a reply goes to one destination only")
            .result
            .wire_len();
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && bytes + size > BUNDLE_REPLY_BYTES {
            chunks.push(Vec::new());
            bytes = 0;
        }
        chunks.last_mut().expect("never empty").push(i);
        bytes += size;
    }
    chunks
        .into_iter()
        .map(|chunk| {
            let mut mine = chunk.into_iter().peekable();
            let entries = (0..leaves.len())
                .map(|i| {
                    if mine.peek() == Some(&i) {
                        mine.next();
                        BundleEntry::Reply(take(replies, i))
                    } else {
                        BundleEntry::Leaf(leaves[i])
                    }
                })
                .collect();
            ReplyBundle {
                root: root.clone(),
                entries,
            }
        })
        .collect()
}

/// Check a bundle: every reply names the root's replica and view, the entries'
/// leaves rebuild the signed root, and (unless `cache` holds this exact signed
/// root) the root's signature. Gives each reply, verified.
///
/// # Errors
/// [`Rejection::Malformed`] for a bundle without replies, a reply from another
/// replica or view, or leaves that do not make the root; [`Rejection::BadSignature`].
pub fn verify_bundle(
    bundle: ReplyBundle,
    cache: Option<&RootCache>,
) -> Result<Vec<VerifiedReply>, Rejection> {
    let root = &bundle.root.payload;
    let mut leaves = Vec::with_capacity(bundle.entries.len());
    let mut replies = Vec::new();
    for entry in bundle.entries {
        match entry {
            BundleEntry::Reply(r) => {
                if r.replica != root.replica || r.view != root.view {
                    return Err(Rejection::Malformed(
                        "bundled reply and its signed root disagree on replica or view".into(),
                    ));
                }
                let result_digest = r.result.digest();
                leaves.push(leaf_with(&r, result_digest));
                replies.push((r, result_digest));
            }
            BundleEntry::Leaf(d) => leaves.push(d),
        }
    }
    if replies.is_empty() {
        return Err(Rejection::Malformed("reply bundle without a reply".into()));
    }
    if MerkleTree::new(leaves).root() != root.root {
        return Err(Rejection::Malformed(
            "bundled leaves do not make the signed root".into(),
        ));
    }
    check_root(&bundle.root, cache)?;
    let signer = bundle.root.signer;
    Ok(replies
        .into_iter()
        .map(|(reply, d)| VerifiedReply::vouched(reply, signer, d))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ReplyResult;
    use crate::reply::{sign_reply_batch, verify_reply};
    use crate::types::ReplicaId;
    use bft_crypto::KeyPair;

    fn reply(client: ClientId, ts: u64, replica: ReplicaId) -> Reply {
        Reply {
            view: 3,
            timestamp: ts,
            client,
            replica,
            result: ReplyResult::Full(vec![ts as u8; 40]),
            refusal: None,
            seq: 9,
            tentative: false,
        }
    }

    /// `n` replies from replica 1; client `i` is behind process `i % hosts`.
    fn signed(key: &KeyPair, clients: &[ClientId], n: usize) -> SignedReplies {
        sign_reply_batch(
            key,
            3,
            1,
            (0..n)
                .map(|i| reply(clients[i % clients.len()], i as u64, 1))
                .collect(),
        )
    }

    fn clients(k: usize) -> Vec<ClientId> {
        (0..k).map(|_| KeyPair::generate().public()).collect()
    }

    fn bundled(out: &[(usize, Message)]) -> Vec<ReplyBundle> {
        out.iter()
            .filter_map(|(_, m)| match m {
                Message::Replies(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replies_behind_one_process_travel_as_one_bundle_that_verifies_once() {
        let key = KeyPair::generate();
        let cs = clients(50);
        let batch = signed(&key, &cs, 50);
        let out = batch.address(|_| Some(0usize));
        assert_eq!(out.len(), 1, "one message for the whole batch");
        let bundle = bundled(&out).remove(0);
        assert!(bundle
            .entries
            .iter()
            .all(|e| matches!(e, BundleEntry::Reply(_))));
        let cache = RootCache::new(8);
        let verified = verify_bundle(bundle, Some(&cache)).unwrap();
        assert_eq!(verified.len(), 50);
        assert_eq!(cache.len(), 1);
        for (i, v) in verified.iter().enumerate() {
            assert_eq!(v.timestamp, i as u64);
            assert_eq!(v.client, cs[i]);
            assert_eq!(v.signer(), key.public());
        }
    }

    #[test]
    fn a_process_with_few_of_the_replies_gets_them_singly_and_each_verifies() {
        let key = KeyPair::generate();
        let cs = clients(50);
        let batch = signed(&key, &cs, 50);
        // Process 0 hosts client 0 alone; process 1 the other 49.
        let out = batch.clone().address(|c| Some(usize::from(*c != cs[0])));
        let singles: Vec<_> = out
            .iter()
            .filter_map(|(p, m)| match m {
                Message::Reply(r) => Some((*p, r.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(singles.len(), 1);
        assert_eq!(singles[0].0, 0);
        assert_eq!(
            verify_reply(singles[0].1.clone(), None).unwrap().client,
            cs[0]
        );
        let bundles = bundled(&out);
        assert_eq!(bundles.len(), 1);
        let verified = verify_bundle(bundles[0].clone(), None).unwrap();
        assert_eq!(verified.len(), 49);
        assert!(verified.iter().all(|v| v.client != cs[0]));
        // Clients without a route get nothing.
        assert!(batch.address(|_| None::<usize>).is_empty());
    }

    #[test]
    fn a_changed_reply_leaf_or_order_or_a_reply_of_another_replica_is_rejected() {
        let key = KeyPair::generate();
        let cs = clients(6);
        let batch = signed(&key, &cs, 6);
        let good = bundled(&batch.clone().address(|_| Some(0usize))).remove(0);
        let mut changed = good.clone();
        if let BundleEntry::Reply(r) = &mut changed.entries[2] {
            r.result = ReplyResult::Full(b"forged".to_vec());
        }
        assert!(matches!(
            verify_bundle(changed, None),
            Err(Rejection::Malformed(_))
        ));
        let mut swapped = good.clone();
        swapped.entries.swap(1, 2);
        assert!(matches!(
            verify_bundle(swapped, None),
            Err(Rejection::Malformed(_))
        ));
        let mut dropped = good.clone();
        dropped.entries.pop();
        assert!(matches!(
            verify_bundle(dropped, None),
            Err(Rejection::Malformed(_))
        ));
        let mut other = good.clone();
        if let BundleEntry::Reply(r) = &mut other.entries[0] {
            r.replica = 2;
        }
        assert!(matches!(
            verify_bundle(other, None),
            Err(Rejection::Malformed(_))
        ));
        // Leaves alone, though they make the root, vouch for nothing.
        let leaves_only = ReplyBundle {
            root: good.root.clone(),
            entries: batch.leaves.iter().map(|d| BundleEntry::Leaf(*d)).collect(),
        };
        assert!(matches!(
            verify_bundle(leaves_only, None),
            Err(Rejection::Malformed(_))
        ));
        // A replaced leaf beside a genuine reply breaks the root.
        let mut wrong_leaf = good.clone();
        wrong_leaf.entries[3] = BundleEntry::Leaf(Digest::default());
        assert!(matches!(
            verify_bundle(wrong_leaf, None),
            Err(Rejection::Malformed(_))
        ));
        assert_eq!(verify_bundle(good, None).unwrap().len(), 6);
    }

    #[test]
    fn a_bad_root_signature_is_rejected_and_not_cached() {
        let key = KeyPair::generate();
        let batch = signed(&key, &clients(4), 4);
        let mut bad = bundled(&batch.address(|_| Some(0usize))).remove(0);
        let mut sig = bad.root.signature.to_bytes();
        sig[7] ^= 1;
        bad.root.signature = bft_crypto::Signature::from_bytes(&sig);
        let cache = RootCache::new(8);
        assert_eq!(
            verify_bundle(bad, Some(&cache)),
            Err(Rejection::BadSignature)
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn large_results_are_split_over_bundles_that_each_verify() {
        let key = KeyPair::generate();
        let cs = clients(3);
        let big = vec![7u8; BUNDLE_REPLY_BYTES / 2 + 1];
        let replies = (0..3)
            .map(|i| Reply {
                result: ReplyResult::Full(big.clone()),
                ..reply(cs[i], i as u64, 1)
            })
            .collect();
        let batch = sign_reply_batch(&key, 3, 1, replies);
        let bundles = bundled(&batch.address(|_| Some(0usize)));
        assert_eq!(
            bundles.len(),
            3,
            "each half-megabyte result in its own bundle"
        );
        let mut seen: Vec<u64> = bundles
            .into_iter()
            .flat_map(|b| verify_bundle(b, None).unwrap())
            .map(|v| v.timestamp)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn the_single_form_is_what_individual_gives() {
        let key = KeyPair::generate();
        let cs = clients(1);
        let batch = signed(&key, &cs, 1);
        let out = batch.clone().address(|_| Some(0usize));
        assert_eq!(out.len(), 1);
        let Message::Reply(single) = &out[0].1 else {
            panic!("a batch of one goes as a single reply");
        };
        assert_eq!(*single, batch.individual()[0]);
    }
}
