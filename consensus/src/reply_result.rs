//! Digest replies (TOCS §5.1.1): a request designates one replica to send its
//! result; every other replica sends only the result's digest.
//!
//! Without them every replica sends every result in full: four copies of each
//! result to hash, encode, encrypt, send, receive, decrypt, decode and hash again
//! (issue 13: a benchmark put answers with the 512-byte value it replaced, so a
//! request's four replies came to ~2.2 kB). The client still needs the same quorum
//! of matching replies (f+1 committed, or 2f+1 tentative from one view), now
//! matched by digest, and one full result whose digest is theirs. f+1 (or 2f+1)
//! replicas vouching for a digest include a correct one, so the full result that
//! hashes to it is the correct result, whoever sent it.
//!
//! If the designated replica is slow, faulty or gone, the client retransmits as
//! it would anyway (§4.1), and replicas answer a retransmitted request they
//! already executed from their client table, always in full. The client then
//! designates another replica for its next requests.
//!
//! A reply's Merkle leaf (see [`crate::reply::leaf`]) hashes the result's digest,
//! not the result, so both forms of one reply are under the same signed root.

use crate::types::ReplicaId;
use bft_crypto::{Digest, Hasher};
use serde::{Deserialize, Serialize};

/// Results this long or shorter always travel in full: a digest would be no
/// smaller (refusals, with an empty result, among them).
pub const ALWAYS_FULL_BYTES: usize = 32;

/// A reply's result as it travels: the bytes, or only their digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyResult {
    Full(#[serde(with = "bft_crypto::bytes")] Vec<u8>),
    Digest(Digest),
}

impl Default for ReplyResult {
    fn default() -> Self {
        Self::Full(Vec::new())
    }
}

impl ReplyResult {
    /// The digest both forms of this result are known by.
    #[must_use]
    pub fn digest(&self) -> Digest {
        match self {
            Self::Full(bytes) => result_digest(bytes),
            Self::Digest(d) => *d,
        }
    }

    /// The bytes, if they travel here.
    #[must_use]
    pub fn full(&self) -> Option<&[u8]> {
        match self {
            Self::Full(bytes) => Some(bytes),
            Self::Digest(_) => None,
        }
    }

    /// Bytes this result takes on the wire, about (for choosing a reply's form).
    #[must_use]
    pub fn wire_len(&self) -> usize {
        match self {
            Self::Full(bytes) => bytes.len(),
            Self::Digest(_) => 32,
        }
    }

    /// The form replica `me` sends a freshly executed result in, for a request that
    /// designated `replier`: in full if it is the designated one, if none is
    /// designated, or if the result is no longer than its digest; else the digest.
    /// The bytes are copied only for the full form.
    #[must_use]
    pub fn for_replier(bytes: &[u8], replier: Option<ReplicaId>, me: ReplicaId) -> Self {
        if replier.is_none_or(|r| r == me) || bytes.len() <= ALWAYS_FULL_BYTES {
            Self::Full(bytes.to_vec())
        } else {
            Self::Digest(result_digest(bytes))
        }
    }
}

/// The digest of a result (its own domain, so it is never taken for any other
/// digest).
#[must_use]
pub fn result_digest(bytes: &[u8]) -> Digest {
    let mut h = Hasher::new("bftnode/reply-result/v1");
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_designated_replica_sends_a_long_result_in_full() {
        let long = vec![7u8; 100];
        let full = ReplyResult::for_replier(&long, Some(2), 2);
        assert_eq!(full.full(), Some(&long[..]));
        let digest = ReplyResult::for_replier(&long, Some(2), 1);
        assert_eq!(digest, ReplyResult::Digest(result_digest(&long)));
        assert_eq!(digest.digest(), full.digest());
        assert!(digest.full().is_none());
        // Nobody designated: everyone sends it in full.
        assert!(ReplyResult::for_replier(&long, None, 1).full().is_some());
    }

    #[test]
    fn short_results_always_travel_in_full() {
        let short = vec![1u8; ALWAYS_FULL_BYTES];
        assert!(ReplyResult::for_replier(&short, Some(0), 3)
            .full()
            .is_some());
        assert!(ReplyResult::for_replier(&[], Some(0), 3).full().is_some());
    }

    #[test]
    fn results_with_different_bytes_have_different_digests() {
        let a = ReplyResult::Full(b"a".to_vec());
        let b = ReplyResult::Full(b"b".to_vec());
        assert_ne!(a.digest(), b.digest());
        assert_ne!(result_digest(b""), bft_crypto::sha256(b""));
    }
}
