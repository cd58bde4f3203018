//! Byte strings encoded as byte strings.
//!
//! Serde sees a `Vec<u8>` as a sequence, so bincode would encode and decode it one
//! `u8` call at a time: for a 5 MB snapshot that is five million calls, and the
//! profile showed it (the stable checkpoint's encoding was a tenth of a replica's
//! event loop). Through these helpers the same field is one length and one copy.
//!
//! The bytes on the wire and on disk do not change: bincode writes a sequence of
//! `u8` and a byte string alike, as a varint length followed by the raw bytes (a
//! test below holds it to that), so old records and peers still decode.
//!
//! Why not the `serde_bytes` crate, which writes the same bytes: its `Vec<u8>` and
//! `ByteBuf` read through `deserialize_byte_buf`, and bincode 2 answers that by
//! allocating the length the input claims before reading a byte of it (with no
//! limit configured, as ours has none: the limit is the frame's). A few hostile
//! bytes claiming 2^32 would allocate 4 GiB; claiming more than `isize::MAX`, they
//! panic. These helpers ask for `deserialize_bytes`, which bincode answers with a
//! slice of the input, so a claim beyond the input is an error. The test
//! `bincodes_owned_byte_path_trusts_the_claimed_length` keeps that reason checked.
//!
//! Use with `#[serde(with = "bft_crypto::bytes")]` on a `Vec<u8>`,
//! `bft_crypto::bytes::option` on an `Option<Vec<u8>>` and `bft_crypto::bytes::map`
//! on a `BTreeMap<Vec<u8>, Vec<u8>>`.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Serialize a byte string in one piece.
///
/// # Errors
/// Whatever the serializer reports.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Deserialize a byte string (also accepts a sequence of bytes, for formats that
/// write one).
///
/// # Errors
/// Whatever the deserializer reports.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    // Borrowed, not owned: bincode's owned path allocates the length the input
    // claims before reading it (a few bytes claiming 2^60 panicked), while the
    // borrowed path takes a slice of the input, which must hold that many bytes.
    d.deserialize_bytes(BufVisitor)
}

struct BufVisitor;

impl<'de> Visitor<'de> for BufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The size hint comes from the input: cap what it may reserve.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// A borrowed byte string that serializes in one piece.
struct Ref<'a>(&'a [u8]);

impl Serialize for Ref<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An owned byte string that deserializes in one piece.
struct Buf(Vec<u8>);

impl<'de> Deserialize<'de> for Buf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Buf)
    }
}

/// For `Arc<Vec<u8>>` fields: large byte strings (state snapshots) that several
/// owners hold at once. The wire bytes are those of a plain byte string.
pub mod shared {
    use serde::{Deserializer, Serializer};
    use std::sync::Arc;

    /// # Errors
    /// Whatever the serializer reports.
    #[allow(clippy::ptr_arg)] // serde's `with` passes `&Arc<Vec<u8>>`
    pub fn serialize<S: Serializer>(bytes: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// # Errors
    /// Whatever the deserializer reports.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        super::deserialize(d).map(Arc::new)
    }
}

/// For fixed-size arrays (`[u8; 32]` digests and keys, `[u8; 64]` signatures).
///
/// Serde sees an array as a tuple, and bincode encodes and decodes a tuple one `u8`
/// call per byte: a reply's Merkle path alone is ~250 such calls each way, and the
/// profile of issue 13 showed digests and keys decoded byte by byte across the load
/// generator and every replica. As a byte string the array is one length byte and
/// one copy. (The wire bytes gain that length byte; a length other than `N` is
/// refused.)
pub mod array {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    /// # Errors
    /// Whatever the serializer reports.
    pub fn serialize<S: Serializer, const N: usize>(a: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(a)
    }

    /// # Errors
    /// Whatever the deserializer reports, or a length other than `N`.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        d.deserialize_bytes(ArrayVisitor::<N>)
    }

    struct ArrayVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of {N} bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(N + 1, &self));
            }
            Ok(out)
        }
    }
}

/// For ed25519 signatures: their 64 bytes as one byte string (see [`array`]).
pub mod signature {
    use ed25519_dalek::Signature;
    use serde::{Deserializer, Serializer};

    /// # Errors
    /// Whatever the serializer reports.
    pub fn serialize<S: Serializer>(sig: &Signature, s: S) -> Result<S::Ok, S::Error> {
        super::array::serialize(&sig.to_bytes(), s)
    }

    /// # Errors
    /// Whatever the deserializer reports, or a length other than 64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        super::array::deserialize::<D, 64>(d).map(|b| Signature::from_bytes(&b))
    }
}

/// For `Option<Vec<u8>>` fields.
pub mod option {
    use super::{Buf, Ref};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// # Errors
    /// Whatever the serializer reports.
    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(Ref).serialize(s)
    }

    /// # Errors
    /// Whatever the deserializer reports.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Buf>::deserialize(d)?.map(|b| b.0))
    }
}

/// For `BTreeMap<Vec<u8>, Vec<u8>>` fields (the key-value store's state).
pub mod map {
    use super::{Buf, Ref};
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::Serializer;
    use std::collections::BTreeMap;
    use std::fmt;

    /// # Errors
    /// Whatever the serializer reports.
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Vec<u8>, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serialize_pairs(m.iter().map(|(k, v)| (&k[..], &v[..])), s)
    }

    /// The same bytes as [`serialize`], from key-value pairs in key order (for a
    /// map that keeps more than the value beside each key).
    ///
    /// # Errors
    /// Whatever the serializer reports.
    pub fn serialize_pairs<'a, S: Serializer>(
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(pairs.map(|(k, v)| (Ref(k), Ref(v))))
    }

    /// # Errors
    /// Whatever the deserializer reports.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, D::Error> {
        d.deserialize_map(MapVisitor)
    }

    struct MapVisitor;

    impl<'de> Visitor<'de> for MapVisitor {
        type Value = BTreeMap<Vec<u8>, Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of byte strings")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((Buf(k), Buf(v))) = access.next_entry()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: Vec<u8>,
        b: Option<Vec<u8>>,
        c: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast {
        #[serde(with = "crate::bytes")]
        a: Vec<u8>,
        #[serde(with = "crate::bytes::option")]
        b: Option<Vec<u8>>,
        #[serde(with = "crate::bytes::map")]
        c: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    fn pair(len: usize) -> (Plain, Fast) {
        let a: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let c: BTreeMap<_, _> = (0..len.min(300))
            .map(|i| (vec![i as u8, (i >> 8) as u8], vec![0xAB; i]))
            .collect();
        let b = len.is_multiple_of(2).then(|| a.clone());
        (
            Plain {
                a: a.clone(),
                b: b.clone(),
                c: c.clone(),
            },
            Fast { a, b, c },
        )
    }

    #[test]
    fn the_encoding_is_byte_for_byte_what_a_sequence_gives() {
        for len in [0, 1, 127, 128, 250, 251, 300, 70_000] {
            let (plain, fast) = pair(len);
            let bytes = encode(&plain).unwrap();
            assert_eq!(encode(&fast).unwrap(), bytes, "len {len}");
            let back: Fast = decode(&bytes, usize::MAX).unwrap();
            assert_eq!(back, fast);
            let old: Plain = decode(&encode(&fast).unwrap(), usize::MAX).unwrap();
            assert_eq!(old, plain);
        }
    }

    #[test]
    fn a_length_beyond_the_input_is_an_error_not_an_allocation() {
        // A varint length of about 2^32 followed by nothing.
        let hostile = [0xFC, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0];
        #[derive(Deserialize, Debug)]
        struct One {
            #[serde(with = "crate::bytes")]
            _a: Vec<u8>,
        }
        assert!(decode::<One>(&hostile, 1024).is_err());
    }

    /// The path `serde_bytes` takes (see the module docs): bincode allocates what
    /// the input claims. If this ever stops panicking, `serde_bytes` could replace
    /// this module; until then ours refuses the same input with an error.
    #[test]
    fn bincodes_owned_byte_path_trusts_the_claimed_length() {
        struct OwnedPath;
        impl<'de> Deserialize<'de> for OwnedPath {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_byte_buf(BufVisitor).map(|_| OwnedPath)
            }
        }
        #[derive(Deserialize, Debug)]
        struct Ours {
            #[serde(with = "crate::bytes")]
            _a: Vec<u8>,
        }
        // A varint length of u64::MAX (0xFD and eight bytes), then nothing.
        let mut hostile = vec![0xFD];
        hostile.extend([0xFF; 8]);
        let owned = std::panic::catch_unwind(|| decode::<OwnedPath>(&hostile, 1024));
        assert!(owned.is_err(), "bincode's owned path no longer panics");
        assert!(decode::<Ours>(&hostile, 1024).is_err());
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Arrays {
        #[serde(with = "crate::bytes::array")]
        digest: [u8; 32],
        #[serde(with = "crate::bytes::array")]
        wide: [u8; 64],
    }

    #[test]
    fn an_array_is_one_length_and_its_bytes_and_any_other_length_is_refused() {
        let a = Arrays {
            digest: [7; 32],
            wide: [9; 64],
        };
        let bytes = encode(&a).unwrap();
        let mut expected = vec![32];
        expected.extend([7; 32]);
        expected.push(64);
        expected.extend([9; 64]);
        assert_eq!(bytes, expected);
        assert_eq!(decode::<Arrays>(&bytes, usize::MAX).unwrap(), a);
        // 31 bytes where 32 belong: refused, not padded.
        let mut short = vec![31];
        short.extend([7; 31]);
        short.push(64);
        short.extend([9; 64]);
        assert!(decode::<Arrays>(&short, usize::MAX).is_err());
    }

    #[test]
    fn an_array_also_reads_from_a_sequence_of_exactly_its_length() {
        // Human-readable formats (JSON in the HTTP routes) write byte strings as
        // arrays of numbers.
        let a = Arrays {
            digest: [1; 32],
            wide: [2; 64],
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Arrays>(&json).unwrap(), a);
        let long = json.replacen("[1,", "[1,1,", 1);
        assert!(serde_json::from_str::<Arrays>(&long).is_err());
    }
}
