//! TOML configuration (INTERFACE.md "Config"): one file per replica, a shared
//! validators file, and a client file. Unknown keys are errors; relative paths are
//! relative to the file that names them. Every problem is a one-line [`ConfigError`].

use bft_consensus::fd::FdConfig;
use bft_consensus::{Membership, ProtocolParams, ReplicaConfig, ReplicaId};
use bft_crypto::{KeyPair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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

fn invalid(s: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(s.into())
}

/// One replica's file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub network: NetworkSection,
    #[serde(default)]
    pub consensus: ConsensusSection,
    #[serde(default)]
    pub failure_detector: FailureDetectorSection,
    pub http: HttpSection,
    #[serde(default)]
    pub byzantine: ByzantineSection,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: ReplicaId,
    pub data_dir: PathBuf,
    /// The replica's secret key (written by `bftnode keygen`); default `replica.key`.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
}

fn default_key_file() -> PathBuf {
    PathBuf::from("replica.key")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// libp2p multiaddr to listen on, e.g. `/ip4/127.0.0.1/tcp/7000`.
    pub listen: String,
    /// The validator set inline...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validators: Vec<ValidatorEntry>,
    /// ...or in a shared file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validators_file: Option<PathBuf>,
    /// The digest of the validator set (keys and protocol parameters) this node
    /// expects; if given, a validator set with another one is refused at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validators_digest: Option<String>,
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

/// A replica's own `[consensus]` tunables. `batch_size`, `checkpoint_interval` and
/// `window` are the group's (the validators file's `[consensus]`): given here they
/// must agree with it, since replicas that differ refuse each other's messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Batches the primary keeps in flight before partial batches wait (see
    /// `ReplicaConfig::max_batches_in_flight`).
    pub max_batches_in_flight: u64,
    pub batch_timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    pub view_change_timeout_ms: u64,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        Self {
            batch_size: None,
            max_batches_in_flight: ReplicaConfig::DEFAULT_MAX_BATCHES_IN_FLIGHT,
            batch_timeout_ms: millis(ReplicaConfig::DEFAULT_BATCH_TIMEOUT),
            checkpoint_interval: None,
            window: None,
            view_change_timeout_ms: millis(ReplicaConfig::DEFAULT_VIEW_CHANGE_TIMEOUT),
        }
    }
}

/// A default duration as the config file writes it.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConsensusSection {
    /// The group's parameters with this section's values in place of theirs.
    fn overriding(&self, params: &ProtocolParams) -> ProtocolParams {
        ProtocolParams {
            batch_size: self.batch_size.unwrap_or(params.batch_size),
            checkpoint_interval: self
                .checkpoint_interval
                .unwrap_or(params.checkpoint_interval),
            window: self.window.unwrap_or(params.window),
            ..params.clone()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureDetectorSection {
    pub heartbeat_ms: u64,
    pub phi_threshold: f64,
}

impl Default for FailureDetectorSection {
    fn default() -> Self {
        let core = FdConfig::with_interval(ReplicaConfig::DEFAULT_HEARTBEAT_INTERVAL);
        Self {
            heartbeat_ms: millis(core.heartbeat_interval),
            phi_threshold: core.phi_threshold,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByzantineSection {
    pub behaviour: String,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub params: toml::Table,
}

impl ByzantineSection {
    /// The params as the numbers behaviours take.
    ///
    /// # Errors
    /// A parameter that is not a non-negative integer.
    pub fn numeric_params(&self) -> Result<bft_consensus::byzantine::Params, ConfigError> {
        self.params
            .iter()
            .map(
                |(k, v)| match v.as_integer().and_then(|i| u64::try_from(i).ok()) {
                    Some(n) => Ok((k.clone(), n)),
                    None => Err(invalid(format!(
                        "[byzantine] params.{k} must be a non-negative integer"
                    ))),
                },
            )
            .collect()
    }
}

impl Default for ByzantineSection {
    fn default() -> Self {
        Self {
            behaviour: "none".into(),
            params: toml::Table::new(),
        }
    }
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

/// Everything `bftnode start` needs, read and checked.
pub struct Resolved {
    pub file: NodeConfig,
    pub key: KeyPair,
    pub validators: ValidatorSet,
    pub replica: ReplicaConfig,
    pub listen: Multiaddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
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

fn load_key(path: &Path) -> Result<KeyPair, ConfigError> {
    KeyPair::load(path).map_err(|e| ConfigError::Key {
        path: path.display().to_string(),
        reason: match e {
            bft_crypto::CryptoError::KeyFile { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}

impl NodeConfig {
    /// Read, resolve and check a replica's configuration.
    ///
    /// # Errors
    /// The first problem, as one line.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let file: NodeConfig = parse(path)?;
        let validators = match (
            &file.network.validators_file,
            file.network.validators.is_empty(),
        ) {
            (Some(_), false) => {
                return Err(invalid(
                    "give either [[network.validators]] or validators_file, not both",
                ))
            }
            (Some(f), true) => {
                let set = load_validators(&relative_to(path, f))?;
                check_agrees(&file.consensus, &set.params)?;
                set
            }
            // Inline, this file is the only place the parameters can be.
            (None, false) => ValidatorSet::resolve(
                file.network.validators.clone(),
                file.consensus.overriding(&ProtocolParams::default()),
            )?,
            (None, true) => {
                return Err(invalid(
                    "no validator set: set network.validators_file or [[network.validators]]",
                ))
            }
        };
        if let Some(expected) = &file.network.validators_digest {
            let actual = validators.digest();
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(invalid(format!(
                    "the validator set's digest is {actual}, but network.validators_digest \
                     expects {expected}: this replica was configured for another group"
                )));
            }
        }
        let id = file.node.id;
        let me = validators.validators.get(id as usize).ok_or_else(|| {
            invalid(format!(
                "node.id {id} is not in the validator set of {}",
                validators.n()
            ))
        })?;
        let key_path = relative_to(path, &file.node.key_file);
        let key = load_key(&key_path)?;
        if key.public() != me.public_key {
            return Err(ConfigError::Key {
                path: key_path.display().to_string(),
                reason: format!(
                    "its public key does not match validator {id} in the validator set"
                ),
            });
        }
        let listen: Multiaddr = file
            .network
            .listen
            .parse()
            .map_err(|e| invalid(format!("network.listen {:?}: {e}", file.network.listen)))?;
        let http: SocketAddr = file
            .http
            .listen
            .parse()
            .map_err(|e| invalid(format!("http.listen {:?}: {e}", file.http.listen)))?;
        let c = &file.consensus;
        let mut replica = ReplicaConfig::new(id, validators.membership());
        replica.params = validators.params.clone();
        replica.batch_timeout = Duration::from_millis(c.batch_timeout_ms);
        replica.max_batches_in_flight = c.max_batches_in_flight;
        replica.view_change_timeout = Duration::from_millis(c.view_change_timeout_ms);
        let fd = &file.failure_detector;
        let mut fd_cfg = FdConfig::with_interval(Duration::from_millis(fd.heartbeat_ms));
        fd_cfg.phi_threshold = fd.phi_threshold;
        replica.fd = fd_cfg;
        // A new incarnation per start, so peers can tell our heartbeats from replays.
        replica.incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        replica
            .validate()
            .map_err(|e| invalid(format!("[consensus]/[failure_detector]: {e}")))?;
        let behaviour_params = file.byzantine.numeric_params()?;
        bft_consensus::byzantine::build(&file.byzantine.behaviour, 0, &behaviour_params)
            .map_err(|e| invalid(format!("[byzantine]: {e}")))?;
        let data_dir = relative_to(path, &file.node.data_dir);
        Ok(Resolved {
            file,
            key,
            validators,
            replica,
            listen,
            http,
            data_dir,
        })
    }
}

/// The group's parameters given again in a replica's `[consensus]` must be the
/// validator set's (issue 11, defect 6: replicas that differ refuse each other).
fn check_agrees(own: &ConsensusSection, group: &ProtocolParams) -> Result<(), ConfigError> {
    let differs = |name: &str, own: Option<u64>, group: u64| match own {
        Some(v) if v != group => Err(invalid(format!(
            "[consensus] {name} = {v} differs from the validator set's {group}: it is a \
             protocol parameter of the whole group; set it in the validators file, not here"
        ))),
        _ => Ok(()),
    };
    differs(
        "batch_size",
        own.batch_size.map(|v| v as u64),
        group.batch_size as u64,
    )?;
    differs(
        "checkpoint_interval",
        own.checkpoint_interval,
        group.checkpoint_interval,
    )?;
    differs("window", own.window, group.window)
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
