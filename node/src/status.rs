//! The node's `/status` document (INTERFACE.md) and the counters behind it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub id: u32,
    pub n: usize,
    pub f: usize,
    pub view: u64,
    pub primary: u32,
    pub in_view_change: bool,
    pub last_executed: u64,
    pub last_stable_checkpoint: u64,
    /// Hex state digest the last stable checkpoint proves (2f+1 signed).
    #[serde(default)]
    pub stable_checkpoint_digest: String,
    pub low_watermark: u64,
    pub high_watermark: u64,
    /// Hex SHA-256 of the application state.
    pub state_digest: String,
    pub peers_connected: usize,
    pub suspected: Vec<u32>,
    pub behaviour: String,
    #[serde(default)]
    pub behaviour_params: std::collections::BTreeMap<String, u64>,
    pub in_state_transfer: bool,
    /// Messages refused as invalid since start.
    pub invalid_messages: u64,
    pub committed_requests: u64,
    /// Hex digest of the validator set (keys and protocol parameters): equal on
    /// every replica of one group.
    #[serde(default)]
    pub validators_digest: String,
}
