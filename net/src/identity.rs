//! One key, two roles: the replica's (or client's) ed25519 signing key is also its
//! libp2p identity, so PeerIds are derived from the validator set's public keys.

use bft_crypto::{KeyPair, PublicKey};
use libp2p::identity::{ed25519, Keypair};
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The libp2p keypair for a bftnode key.
///
/// # Panics
/// Never: a 32-byte ed25519 secret is always a valid libp2p ed25519 key.
#[must_use]
pub fn keypair_of(key: &KeyPair) -> Keypair {
    Keypair::ed25519_from_bytes(key.secret_bytes()).expect("32-byte ed25519 secret")
}

/// The PeerId of a public key, or None if the bytes are not an ed25519 point.
///
/// libp2p decompresses the point to check it, a field square root that cost a
/// tenth of a replica's event loop when done for every reply; so the answers are
/// kept in a process-wide map keyed by the key's bytes (bounded: it starts over
/// when full).
#[must_use]
pub fn peer_id_of(key: &PublicKey) -> Option<PeerId> {
    let cache = PEER_IDS.get_or_init(|| Mutex::new(BTreeMap::new()));
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = lock().get(key) {
        return *known;
    }
    let peer = ed25519::PublicKey::try_from_bytes(&key.0)
        .ok()
        .map(|pk| libp2p::identity::PublicKey::from(pk).to_peer_id());
    let mut map = lock();
    if map.len() >= PEER_IDS_MAX {
        map.clear();
    }
    map.insert(*key, peer);
    peer
}

static PEER_IDS: OnceLock<Mutex<BTreeMap<PublicKey, Option<PeerId>>>> = OnceLock::new();
const PEER_IDS_MAX: usize = 65_536;

/// The ed25519 public key inside a PeerId (identity-hashed keys only).
#[must_use]
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(PublicKey(pk.try_into_ed25519().ok()?.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_the_replica_key() {
        let key = KeyPair::from_seed([5; 32]);
        let peer = peer_id_of(&key.public()).unwrap();
        assert_eq!(peer, keypair_of(&key).public().to_peer_id());
        assert_eq!(public_key_of(&peer), Some(key.public()));
        // Asked again (now from the cache), the answer is the same.
        assert_eq!(peer_id_of(&key.public()), Some(peer));
    }

    #[test]
    fn bytes_that_are_not_a_point_have_no_peer_id_cached_or_not() {
        // y = 2 is not the y-coordinate of a point on edwards25519.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let not_a_point = PublicKey(bytes);
        assert_eq!(peer_id_of(&not_a_point), None);
        assert_eq!(peer_id_of(&not_a_point), None);
    }
}
