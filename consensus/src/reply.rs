//! Replies signed per batch: a replica signs the Merkle root of every reply of an
//! executed batch once, and each client gets its own reply with the path from its
//! leaf to that signed root.
//!
//! Signing one reply per request cost each replica one ed25519 signature per request
//! (the largest signing cost in the profile; issue 5). What a client must know is
//! unchanged: replica `i` vouched for this reply. The root signature says so for
//! every leaf under it, and the path ties the reply to the root.
//!
//! A process that hosts many clients (the load generator, a gateway) receives the
//! same signed root once per client in the batch; [`RootCache`] lets it check each
//! root's signature once.

use crate::messages::Reply;
use crate::rejection::Rejection;
use crate::reply_bundle::SignedReplies;
use crate::types::{ReplicaId, View};
use bft_crypto::{
    encode, Digest, Hasher, KeyPair, MerkleProof, MerkleTree, PublicKey, Signable, Signed,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// <REPLIES, v, root, i>σi: replica `i` vouches for every reply under `root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRoot {
    pub view: View,
    pub root: Digest,
    pub replica: ReplicaId,
}

impl Signable for ReplyRoot {
    const DOMAIN: &'static str = "bftnode/reply-root/v1";
}

/// A reply as it travels: the reply, its path, and the signed root of its batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReply {
    pub reply: Reply,
    pub proof: MerkleProof,
    pub root: Signed<ReplyRoot>,
}

/// A reply whose path and root signature have been checked. Only this module
/// makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReply {
    reply: Reply,
    signer: PublicKey,
    /// The digest of its result, found while checking its leaf.
    result_digest: Digest,
}

impl VerifiedReply {
    /// A reply whose root was checked (by [`verify_reply`] or a bundle's check),
    /// with its result's digest.
    pub(crate) fn vouched(reply: Reply, signer: PublicKey, result_digest: Digest) -> Self {
        Self {
            reply,
            signer,
            result_digest,
        }
    }

    /// The key that signed the root this reply is under.
    #[must_use]
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The digest of the result, whichever form it came in (what replies are
    /// matched by; see [`crate::reply_result`]).
    #[must_use]
    pub fn result_digest(&self) -> Digest {
        self.result_digest
    }
}

impl std::ops::Deref for VerifiedReply {
    type Target = Reply;
    fn deref(&self) -> &Reply {
        &self.reply
    }
}

/// The leaf a reply contributes to its batch's tree (its own domain, so a reply can
/// never be taken for an inner node or for any other signed thing). It hashes the
/// result's digest, not the result, so a reply in full and one carrying only the
/// digest (TOCS §5.1.1) are the same leaf.
#[must_use]
pub fn leaf(reply: &Reply) -> Digest {
    leaf_with(reply, reply.result.digest())
}

/// [`leaf`], given the digest of the reply's result.
pub(crate) fn leaf_with(reply: &Reply, result_digest: Digest) -> Digest {
    // Every field named, so a field added to `Reply` cannot be left out here.
    let Reply {
        view,
        timestamp,
        client,
        replica,
        result: _,
        refusal,
        seq,
        tentative,
    } = reply;
    let fields = (
        view,
        timestamp,
        client,
        replica,
        result_digest,
        refusal,
        seq,
        tentative,
    );
    let bytes = encode(&fields).expect("replies always encode");
    let mut h = Hasher::new("bftnode/reply-leaf/v2");
    h.update(&bytes);
    h.finish()
}

/// Sign `replies` (all from `replica` in `view`) with one signature.
#[must_use]
pub fn sign_reply_batch(
    key: &KeyPair,
    view: View,
    replica: ReplicaId,
    replies: Vec<Reply>,
) -> SignedReplies {
    let leaves: Vec<Digest> = replies.iter().map(leaf).collect();
    let root = Signed::sign(
        ReplyRoot {
            view,
            root: MerkleTree::new(leaves.clone()).root(),
            replica,
        },
        key,
    );
    SignedReplies {
        root,
        replies,
        leaves,
    }
}

/// Sign `replies` with one signature and give each with its own path.
#[must_use]
pub fn sign_replies(
    key: &KeyPair,
    view: View,
    replica: ReplicaId,
    replies: Vec<Reply>,
) -> Vec<SignedReply> {
    if replies.is_empty() {
        return Vec::new();
    }
    sign_reply_batch(key, view, replica, replies).individual()
}

/// Check the path, that the root names the same replica and view as the reply, and
/// (unless `cache` already holds this exact signed root) the root's signature.
///
/// # Errors
/// [`Rejection::Malformed`] for a reply not under its root, or
/// [`Rejection::BadSignature`].
pub fn verify_reply(r: SignedReply, cache: Option<&RootCache>) -> Result<VerifiedReply, Rejection> {
    let root = &r.root.payload;
    if root.replica != r.reply.replica || root.view != r.reply.view {
        return Err(Rejection::Malformed(
            "reply and its signed root disagree on replica or view".into(),
        ));
    }
    let result_digest = r.reply.result.digest();
    if r.proof.root_from(leaf_with(&r.reply, result_digest)) != Some(root.root) {
        return Err(Rejection::Malformed(
            "reply is not under its signed root".into(),
        ));
    }
    check_root(&r.root, cache)?;
    Ok(VerifiedReply::vouched(
        r.reply,
        r.root.signer,
        result_digest,
    ))
}

/// The root's signature, unless `cache` already holds this exact signed root.
pub(crate) fn check_root(
    root: &Signed<ReplyRoot>,
    cache: Option<&RootCache>,
) -> Result<(), Rejection> {
    let check = |root: &Signed<ReplyRoot>| root.check().map_err(|_| Rejection::BadSignature);
    match cache {
        Some(c) => {
            let fingerprint = RootCache::fingerprint(root);
            if !c.contains(&fingerprint) {
                check(root)?;
                c.insert(fingerprint);
            }
            Ok(())
        }
        None => check(root),
    }
}

/// Signed roots whose signatures were already checked, keyed by the whole signed
/// root (payload, signer and signature), so a hit means this exact signed root
/// verified before. (Keyed once by a SHA-256 of its encoding: that encoding and
/// hash cost the load generator ~3 us per request, issue 13.) Bounded: the oldest entries are forgotten first. Shared
/// by the clients of one process; the lock is held only to look up or insert, never
/// across a signature check.
#[derive(Debug)]
pub struct RootCache {
    capacity: usize,
    inner: Mutex<Known>,
}

/// A signed root, every field of it: equal fingerprints are equal signed roots.
type Fingerprint = (View, Digest, ReplicaId, [u8; 32], [u8; 64]);

#[derive(Debug, Default)]
struct Known {
    set: BTreeSet<Fingerprint>,
    order: VecDeque<Fingerprint>,
}

impl RootCache {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Known::default()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fingerprint(root: &Signed<ReplyRoot>) -> Fingerprint {
        let ReplyRoot {
            view,
            root: digest,
            replica,
        } = root.payload;
        (
            view,
            digest,
            replica,
            root.signer.0,
            root.signature.to_bytes(),
        )
    }

    fn contains(&self, d: &Fingerprint) -> bool {
        self.known().set.contains(d)
    }

    fn insert(&self, d: Fingerprint) {
        let mut k = self.known();
        if !k.set.insert(d) {
            return;
        }
        k.order.push_back(d);
        while k.order.len() > self.capacity {
            if let Some(old) = k.order.pop_front() {
                k.set.remove(&old);
            }
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.known().set.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.known().set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ReplyResult;

    fn reply(client: &KeyPair, ts: u64, replica: ReplicaId) -> Reply {
        Reply {
            view: 3,
            timestamp: ts,
            client: client.public(),
            replica,
            result: ReplyResult::Full(ts.to_le_bytes().to_vec()),
            refusal: None,
            seq: 0,
            tentative: false,
        }
    }

    fn batch(key: &KeyPair, n: u64) -> Vec<SignedReply> {
        let client = KeyPair::generate();
        sign_replies(key, 3, 1, (0..n).map(|t| reply(&client, t, 1)).collect())
    }

    #[test]
    fn every_reply_of_a_batch_verifies_under_one_signature() {
        let key = KeyPair::generate();
        let signed = batch(&key, 5);
        let roots: BTreeSet<_> = signed.iter().map(|s| s.root.signature.to_bytes()).collect();
        assert_eq!(roots.len(), 1, "one signature for the whole batch");
        for (t, s) in signed.into_iter().enumerate() {
            let v = verify_reply(s, None).unwrap();
            assert_eq!(v.timestamp, t as u64);
            assert_eq!(v.signer(), key.public());
        }
    }

    #[test]
    fn a_changed_result_or_a_swapped_path_is_rejected() {
        let key = KeyPair::generate();
        let signed = batch(&key, 4);
        let mut changed = signed[1].clone();
        changed.reply.result = ReplyResult::Full(b"forged".to_vec());
        assert!(matches!(
            verify_reply(changed, None),
            Err(Rejection::Malformed(_))
        ));
        let mut swapped = signed[1].clone();
        swapped.proof = signed[2].proof.clone();
        assert!(matches!(
            verify_reply(swapped, None),
            Err(Rejection::Malformed(_))
        ));
        let mut other_replica = signed[0].clone();
        other_replica.reply.replica = 2;
        assert!(matches!(
            verify_reply(other_replica, None),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn a_bad_root_signature_is_rejected_and_never_cached() {
        let key = KeyPair::generate();
        let signed = batch(&key, 2);
        let cache = RootCache::new(8);
        let mut bad = signed[0].clone();
        let mut sig = bad.root.signature.to_bytes();
        sig[5] ^= 1;
        bad.root.signature = bft_crypto::Signature::from_bytes(&sig);
        assert_eq!(
            verify_reply(bad.clone(), Some(&cache)),
            Err(Rejection::BadSignature)
        );
        assert!(cache.is_empty());
        // The good root is cached; the same payload with a broken signature is not
        // a hit, because the fingerprint covers the signature.
        verify_reply(signed[1].clone(), Some(&cache)).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(
            verify_reply(bad, Some(&cache)),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn the_cache_forgets_the_oldest_roots_first() {
        let key = KeyPair::generate();
        let cache = RootCache::new(2);
        let firsts: Vec<_> = (0..3).map(|_| batch(&key, 1).remove(0)).collect();
        for s in &firsts {
            verify_reply(s.clone(), Some(&cache)).unwrap();
        }
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(&RootCache::fingerprint(&firsts[0].root)));
        assert!(cache.contains(&RootCache::fingerprint(&firsts[2].root)));
    }
}
