//! Cryptography for bftnode: ed25519 keys, domain-separated signed envelopes,
//! SHA-256 digests, an incremental set hash, Merkle trees (one signature for many
//! items), and batch signature verification.
//!
//! The one rule this crate enforces through types: a [`Verified<T>`] can only be
//! made here, by checking a signature. Code that needs an authenticated message
//! takes `Verified<T>`, so forgetting to verify is a compile error, not a review
//! comment.
#![forbid(unsafe_code)]

mod batch;
pub mod bytes;
mod digest;
mod error;
mod keys;
mod merkle;
mod seen;
mod set_hash;
mod signed;

pub use batch::{BatchOk, Pending, SignatureBatch};
pub use digest::{sha256, Digest, Hasher};
pub use ed25519_dalek::Signature;
pub use error::CryptoError;
pub use keys::{KeyPair, PublicKey};
pub use merkle::{MerkleProof, MerkleTree};
pub use seen::SeenSignatures;
pub use set_hash::{SetElement, SetHash};
pub use signed::{all_valid, signing_bytes, verify_batch, Signable, Signed, Verified};

/// Encode a value with the one bincode configuration used everywhere a byte string
/// is signed or hashed. Deterministic: equal values give equal bytes.
///
/// # Errors
/// Only if serde refuses the value (e.g. a map with non-string keys in some formats);
/// bincode itself does not fail on our message types.
///
/// The bytes are counted first and written into one allocation of that size:
/// bincode's own `encode_to_vec` grows its vector as it writes, which cost a
/// 600-byte request eight reallocations and copies and a 128 KiB batch seventeen
/// (issue 13). Counting walks the value without copying anything.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(try_encoded_len(value).map_err(encode_error)?);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// [`encode`]'s bytes appended to `out`, in one pass: for a value written into a
/// buffer that already holds its prefix, or one kept from an earlier encoding so
/// that its pages are not faulted in again (a 5 MB checkpoint snapshot).
///
/// # Errors
/// As [`encode`]; `out` may then hold part of the value.
pub fn encode_into<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CryptoError> {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .map(drop)
        .map_err(encode_error)
}

/// SHA-256 of `value`'s encoding (the bytes [`encode`] gives), written straight
/// into the hash: no sizing pass, no buffer, no copy. A client's request is ~600
/// bytes and its prehash is taken once to sign it and once per replica that
/// checks it (see [`Signable::PREHASHED`]).
pub(crate) fn sha256_of_encoding<T: serde::Serialize>(value: &T) -> Result<Digest, CryptoError> {
    struct IntoHash(sha2::Sha256);
    impl bincode::enc::write::Writer for IntoHash {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            sha2::Digest::update(&mut self.0, bytes);
            Ok(())
        }
    }
    let mut hash = IntoHash(<sha2::Sha256 as sha2::Digest>::new());
    bincode::serde::encode_into_writer(value, &mut hash, bincode::config::standard())
        .map_err(encode_error)?;
    Ok(Digest(sha2::Digest::finalize(hash.0).into()))
}

/// How many bytes [`encode`] makes of `value`, without making them.
///
/// # Panics
/// Only if serde refuses the value, which our message types never do.
#[must_use]
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    try_encoded_len(value).expect("message types always encode")
}

/// Count [`encode`]'s bytes: bincode walks the value and copies nothing.
fn try_encoded_len<T: serde::Serialize>(value: &T) -> Result<usize, bincode::error::EncodeError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard())?;
    Ok(size.bytes_written)
}

fn encode_error(e: bincode::error::EncodeError) -> CryptoError {
    CryptoError::Encode(e.to_string())
}

/// Decode a value that was produced by [`encode`], refusing inputs larger than
/// `limit` bytes and trailing garbage.
///
/// # Errors
/// [`CryptoError::Decode`] on malformed, oversized or trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, CryptoError> {
    if bytes.len() > limit {
        return Err(CryptoError::Decode(format!(
            "{} bytes exceeds the {limit}-byte bound",
            bytes.len()
        )));
    }
    // Borrowing from the slice: byte strings are then taken from the input, so a
    // length the input claims but does not hold is an error, never an allocation
    // (see `bytes::deserialize`).
    let (value, used) =
        bincode::serde::borrow_decode_from_slice::<T, _>(bytes, bincode::config::standard())
            .map_err(|e| CryptoError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CryptoError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_writes_bincodes_bytes_into_one_allocation_of_their_size() {
        let values: Vec<(u64, Vec<u8>, Option<String>)> = vec![
            (0, Vec::new(), None),
            (7, vec![1; 600], Some("seven".into())),
            (u64::MAX, vec![2; 128 * 1024], Some(String::new())),
        ];
        for v in &values {
            let bytes = encode(v).unwrap();
            let theirs = bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap();
            assert_eq!(bytes, theirs);
            // Growing as it wrote gave a 600-byte value 1,024 bytes of room.
            assert!(
                bytes.capacity() <= bytes.len() + 16,
                "sized once, never grown"
            );
            assert_eq!(encoded_len(v), bytes.len());
        }
        assert_eq!(
            sha256_of_encoding(&values).unwrap(),
            sha256(&encode(&values).unwrap()),
            "hashing while encoding gives the digest of the encoding"
        );
        assert_eq!(encode(&values).unwrap(), {
            bincode::serde::encode_to_vec(&values, bincode::config::standard()).unwrap()
        });
    }
}
