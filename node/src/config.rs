//! TOML configuration (INTERFACE.md "Config"): one file per replica, here; the
//! shared validators file and the client's file are the client library's
//! (`bft_client::config`, re-exported below), since a client reads them too.
//! Unknown keys are errors; relative paths are relative to the file that names
//! them. Every problem is a one-line [`ConfigError`].

use bft_client::config::{invalid, load_key, parse};
pub use bft_client::config::{
    load_validators, relative_to, ClientConfig, ConfigError, ResolvedClient, ValidatorEntry,
    ValidatorPeer, ValidatorSet, ValidatorsFile,
};
use bft_consensus::fd::FdConfig;
use bft_consensus::{ProtocolParams, ReplicaConfig, ReplicaId};
use bft_crypto::KeyPair;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
