//! The configuration a client needs (INTERFACE.md "Config"): the shared validators
//! file and the client's own file, read, resolved and checked. The replica's file
//! (bftnode's `config`) builds on these. Unknown keys are errors; relative paths are
//! relative to the file that names them. Every problem is a one-line
//! [`ConfigError`].

use bft_consensus::{Membership, ProtocolParams, ReplicaId};
use bft_crypto::{KeyPair, PublicKey};
use bft_net::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid config {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
}

/// A [`ConfigError::Invalid`] from a one-line description.
#[must_use]
pub fn invalid(s: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(s.into())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    pub id: ReplicaId,
    pub public_key: String,
    pub address: String,
}

/// The shared validators file: the group's protocol parameters (`[consensus]`,
/// defaults if absent) and its members.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorsFile {
    #[serde(default)]
    pub consensus: ProtocolParams,
    pub validator: Vec<ValidatorEntry>,
}

/// The client's file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub key_file: PathBuf,
    pub validators_file: PathBuf,
    #[serde(default = "default_client_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_retransmit")]
    pub retransmit_ms: u64,
}

fn default_client_timeout() -> u64 {
    10_000
}
fn default_retransmit() -> u64 {
    1_000
}

/// One validator as a node reaches it: its id, key, libp2p peer id and address.
/// (Not [`bft_consensus::Validator`], which checks messages.)
#[derive(Clone, Debug)]
pub struct ValidatorPeer {
    pub id: ReplicaId,
    pub public_key: PublicKey,
    pub peer: PeerId,
    pub address: Multiaddr,
}

/// The validator set, resolved and checked: ids are 0..n in order, keys distinct
/// and none of small order; with the group's protocol parameters.
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    pub validators: Vec<ValidatorPeer>,
    pub params: ProtocolParams,
}

impl ValidatorSet {
    /// # Errors
    /// Bad keys or addresses, ids not 0..n, duplicates, parameters that do not fit.
    pub fn resolve(
        mut entries: Vec<ValidatorEntry>,
        params: ProtocolParams,
    ) -> Result<Self, ConfigError> {
        if entries.is_empty() {
            return Err(invalid("the validator set is empty"));
        }
        entries.sort_by_key(|e| e.id);
        let mut validators = Vec::new();
        for (i, e) in entries.into_iter().enumerate() {
            if e.id as usize != i {
                return Err(invalid(format!(
                    "validator ids must be 0..n without gaps; found {} at position {i}",
                    e.id
                )));
            }
            let public_key = PublicKey::from_hex(&e.public_key).map_err(|_| {
                invalid(format!(
                    "validator {}: public_key is not a 64-hex-digit ed25519 key",
                    e.id
                ))
            })?;
            if public_key.is_small_order() {
                return Err(invalid(format!(
                    "validator {}: public_key is a point of small order, for which anybody can sign",
                    e.id
                )));
            }
            let peer = bft_net::peer_id_of(&public_key).ok_or_else(|| invalid("bad public key"))?;
            let address: Multiaddr = e.address.parse().map_err(|err| {
                invalid(format!(
                    "validator {}: address {:?}: {err}",
                    e.id, e.address
                ))
            })?;
            validators.push(ValidatorPeer {
                id: e.id,
                public_key,
                peer,
                address,
            });
        }
        let mut keys: Vec<_> = validators.iter().map(|v| v.public_key).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != validators.len() {
            return Err(invalid("two validators share a public key"));
        }
        let set = Self { validators, params };
        set.params
            .validate(
                &set.membership(),
                bft_consensus::messages::MAX_MESSAGE_BYTES,
            )
            .map_err(|e| invalid(format!("[consensus] of the validator set: {e}")))?;
        Ok(set)
    }

    /// What every replica of the group must agree on, hashed: the members' keys in
    /// order and the protocol parameters (not the addresses, which may be spelled
    /// differently from different hosts). Hex.
    #[must_use]
    pub fn digest(&self) -> String {
        let mut h = bft_crypto::Hasher::new("bftnode/validator-set/v1");
        h.update_u64(self.validators.len() as u64);
        for v in &self.validators {
            h.update(&v.public_key.0);
        }
        let p = &self.params;
        h.update_u64(p.batch_size as u64)
            .update_u64(p.max_batch_bytes as u64)
            .update_u64(p.checkpoint_interval)
            .update_u64(p.window)
            .update_u64(p.request_horizon);
        h.finish().to_hex()
    }

    #[must_use]
    pub fn membership(&self) -> Membership {
        Membership::new(self.validators.iter().map(|v| v.public_key).collect())
    }

    #[must_use]
    pub fn n(&self) -> usize {
        self.validators.len()
    }
}

/// The file's text.
///
/// # Errors
/// [`ConfigError::Read`] if it cannot be read.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The file, parsed as TOML into `T`.
///
/// # Errors
/// [`ConfigError::Read`] or [`ConfigError::Parse`].
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    toml::from_str(&read(path)?).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        reason: e.message().to_string(),
    })
}

/// `p` relative to the directory of `file`.
#[must_use]
pub fn relative_to(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or_else(|| Path::new(".")).join(p)
    }
}

/// # Errors
/// Unreadable or invalid validators file.
pub fn load_validators(path: &Path) -> Result<ValidatorSet, ConfigError> {
    let file: ValidatorsFile = parse(path)?;
    ValidatorSet::resolve(file.validator, file.consensus)
}

/// A key file written by `bftnode keygen`.
///
/// # Errors
/// [`ConfigError::Key`] if it cannot be read or holds no key.
pub fn load_key(path: &Path) -> Result<KeyPair, ConfigError> {
    KeyPair::load(path).map_err(|e| ConfigError::Key {
        path: path.display().to_string(),
        reason: match e {
            bft_crypto::CryptoError::KeyFile { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}

/// A client's configuration, resolved.
pub struct ResolvedClient {
    pub key: KeyPair,
    pub validators: ValidatorSet,
    pub timeout: Duration,
    pub retransmit: Duration,
}

impl ClientConfig {
    /// # Errors
    /// The first problem, as one line.
    pub fn load(path: &Path) -> Result<ResolvedClient, ConfigError> {
        let file: ClientConfig = parse(path)?;
        let key = load_key(&relative_to(path, &file.key_file))?;
        let validators = load_validators(&relative_to(path, &file.validators_file))?;
        Ok(ResolvedClient {
            key,
            validators,
            timeout: Duration::from_millis(file.timeout_ms),
            retransmit: Duration::from_millis(file.retransmit_ms),
        })
    }
}
