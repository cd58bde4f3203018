//! One key, two roles: the replica's (or client's) ed25519 signing key is also its
//! libp2p identity, so PeerIds are derived from the validator set's public keys.

use bft_crypto::{KeyPair, PublicKey};
use libp2p::identity::{ed25519, Keypair};
use libp2p::PeerId;

/// The libp2p keypair for a bftnode key.
///
/// # Panics
/// Never: a 32-byte ed25519 secret is always a valid libp2p ed25519 key.
#[must_use]
pub fn keypair_of(key: &KeyPair) -> Keypair {
    Keypair::ed25519_from_bytes(key.secret_bytes()).expect("32-byte ed25519 secret")
}

/// The PeerId of a public key, or None if the bytes are not an ed25519 point.
#[must_use]
pub fn peer_id_of(key: &PublicKey) -> Option<PeerId> {
    let pk = ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

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
    }
}
