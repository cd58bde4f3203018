use crate::CryptoError;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ed25519_zebra::VerificationKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Decompressed public keys, by their bytes (see [`PublicKey::verification_key`]).
/// A hash map: every signature checked looks its signer up here, and in a B-tree
/// of thousands of client keys that took a dozen 32-byte comparisons behind
/// pointers, a few percent of a verify thread (issue 13). Keyed SipHash: nobody
/// who makes keys can aim them at one bucket. Never iterated.
static DECOMPRESSED: OnceLock<Mutex<HashMap<[u8; 32], UsableKey>>> = OnceLock::new();

/// A public key decoded once for checking signatures: ed25519-zebra's form, for a
/// single check, and the curve point, for a batch (which would otherwise decompress
/// it again for every signature).
#[derive(Clone, Copy)]
pub(crate) struct UsableKey {
    pub(crate) single: VerificationKey,
    pub(crate) point: EdwardsPoint,
}
/// Keys kept before the map starts over.
const DECOMPRESSED_MAX: usize = 65_536;

/// An ed25519 public key, kept as its 32 bytes so it can be hashed, ordered and
/// serialised cheaply. It doubles as the identity of a client, and of a replica
/// (whose id is its index in the validator set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "crate::bytes::array")] pub [u8; 32]);

/// The bytes' lexicographic order, as a derived `Ord` gives, compared as four
/// big-endian words: the derived comparison calls `memcmp` for every step of
/// every search in the maps keyed by client (the client table, the requests in
/// flight and waiting), a few percent of a replica's event loop (issue 13).
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let words = |k: &[u8; 32]| {
            let word =
                |i: usize| u64::from_be_bytes(k[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            [word(0), word(1), word(2), word(3)]
        };
        words(&self.0).cmp(&words(&other.0))
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PublicKey {
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    ///
    /// # Errors
    /// [`CryptoError::BadPublicKey`] if not hex, not 32 bytes, or not a curve point.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(s.trim()).map_err(|_| CryptoError::BadPublicKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadPublicKey)?;
        VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::BadPublicKey)?;
        Ok(Self(arr))
    }

    /// Whether this is a point of small order (or no point at all). For such a key
    /// the verification equation holds for some signatures on every message, so
    /// anybody can sign "as" it: a validator set must never contain one, and a
    /// signature by one is refused.
    #[must_use]
    pub fn is_small_order(&self) -> bool {
        curve25519_dalek::edwards::CompressedEdwardsY(self.0)
            .decompress()
            .is_none_or(|p| p.is_small_order())
    }

    /// The decompressed key, for verification; refused if of small order (see
    /// [`PublicKey::is_small_order`]). Decompressing is a square root in the field,
    /// about a quarter of a signature check, and the same few keys (the replicas, the
    /// clients of the moment) sign almost everything; so usable keys are kept in a
    /// process-wide map keyed by their exact 32 bytes.
    pub(crate) fn verification_key(&self) -> Result<UsableKey, CryptoError> {
        let cache = DECOMPRESSED.get_or_init(|| Mutex::new(HashMap::new()));
        let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = lock().get(&self.0) {
            return Ok(*k);
        }
        let point = CompressedEdwardsY(self.0)
            .decompress()
            .ok_or(CryptoError::BadPublicKey)?;
        if point.is_small_order() {
            return Err(CryptoError::WeakKey);
        }
        let single = VerificationKey::try_from(self.0).map_err(|_| CryptoError::BadPublicKey)?;
        let key = UsableKey { single, point };
        let mut map = lock();
        if map.len() >= DECOMPRESSED_MAX {
            map.clear(); // crude, but bounded: a flood of fresh keys cannot grow it
        }
        map.insert(self.0, key);
        Ok(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pk:{}", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A secret signing key with its public half.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public)
    }
}

impl KeyPair {
    /// A fresh key from the operating system's randomness.
    #[must_use]
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key derived from 32 seed bytes. Deterministic: the simulator and tests
    /// derive every replica's key from the run's seed.
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_signing(SigningKey::from_bytes(&seed))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let public = PublicKey(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    #[must_use]
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The 32 secret seed bytes (for libp2p identities and key files).
    #[must_use]
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub(crate) fn sign_bytes(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// Write the secret key as hex to `path`, readable by the owner only (0600),
    /// and the public key beside it as `<path>.pub`.
    ///
    /// # Errors
    /// [`CryptoError::KeyFile`] on any I/O failure.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let err = |e: std::io::Error| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        write_private(path, hex::encode(self.secret_bytes()).as_bytes()).map_err(err)?;
        let pub_path = path.with_extension("pub");
        std::fs::write(&pub_path, self.public.to_hex()).map_err(err)?;
        Ok(())
    }

    /// Read a key written by [`KeyPair::save`]. Refuses a secret key file that
    /// others can read, as ssh does.
    ///
    /// # Errors
    /// [`CryptoError::KeyFile`] if unreadable, too open, or not 64 hex characters.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        check_private(path).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|_| err("not hex".into()))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("not a 32-byte ed25519 secret key".into()))?;
        Ok(Self::from_seed(seed))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` only applies on creation; tighten an existing file too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("permissions {mode:o} are too open; expected 600"));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Keys order as their bytes do (snapshots and every map keyed by client
        /// rely on it), including keys that differ only in a late byte.
        #[test]
        fn keys_order_as_their_bytes(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), at in 0usize..32) {
            prop_assert_eq!(PublicKey(a).cmp(&PublicKey(b)), a.cmp(&b));
            let mut c = a;
            c[at] = c[at].wrapping_add(1);
            prop_assert_eq!(PublicKey(a).cmp(&PublicKey(c)), a.cmp(&c));
            prop_assert_eq!(PublicKey(a).partial_cmp(&PublicKey(c)), Some(a.cmp(&c)));
        }
    }

    #[test]
    fn save_then_load_round_trips_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.key");
        let key = KeyPair::generate();
        key.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = KeyPair::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
        let pub_text = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        assert_eq!(PublicKey::from_hex(&pub_text).unwrap(), key.public());
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_world_readable_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        KeyPair::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyPair::load(&path),
            Err(CryptoError::KeyFile { .. })
        ));
    }

    #[test]
    fn load_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_private(&path, b"not a key").unwrap();
        assert!(KeyPair::load(&path).is_err());
        assert!(KeyPair::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn seeded_keys_are_deterministic() {
        assert_eq!(
            KeyPair::from_seed([7; 32]).public(),
            KeyPair::from_seed([7; 32]).public()
        );
        assert_ne!(
            KeyPair::from_seed([7; 32]).public(),
            KeyPair::from_seed([8; 32]).public()
        );
    }

    #[test]
    fn public_key_hex_rejects_bad_input() {
        assert!(PublicKey::from_hex("zz").is_err());
        assert!(PublicKey::from_hex(&"ab".repeat(31)).is_err());
    }
}
