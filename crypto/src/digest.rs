use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// A SHA-256 digest: of a request, a batch, or the application state.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(#[serde(with = "crate::bytes::array")] pub [u8; 32]);

impl Digest {
    /// Lower-case hex, as shown in `/status` and logs.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first four bytes in hex: enough to tell digests apart in a trace.
    #[must_use]
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// SHA-256 of one byte string.
#[must_use]
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

/// Incremental SHA-256 with a domain tag, so digests of different kinds of things
/// (a batch, a state, a request) can never be confused with one another. Cloning
/// one part-way lets several digests share a common prefix's work.
#[derive(Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    #[must_use]
    pub fn new(domain: &str) -> Self {
        let mut h = Sha256::new();
        h.update((domain.len() as u64).to_le_bytes());
        h.update(domain.as_bytes());
        Self(h)
    }

    /// Add a length-prefixed byte string (so `["ab","c"]` and `["a","bc"]` differ).
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn update_u64(&mut self, v: u64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }

    #[must_use]
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hasher_domains_and_framing_separate_inputs() {
        let d = |dom: &str, parts: &[&[u8]]| {
            let mut h = Hasher::new(dom);
            for p in parts {
                h.update(p);
            }
            h.finish()
        };
        assert_ne!(d("batch", &[b"x"]), d("state", &[b"x"]));
        assert_ne!(d("batch", &[b"ab", b"c"]), d("batch", &[b"a", b"bc"]));
        assert_eq!(d("batch", &[b"ab", b"c"]), d("batch", &[b"ab", b"c"]));
    }
}
