//! The node's `/status` document (INTERFACE.md), fetching it, and the one-line
//! table `bftnode status` and `bftnode testnet status` print.

use crate::http_client;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// Hex snapshot digest the last stable checkpoint proves (2f+1 signed).
    #[serde(default)]
    pub stable_checkpoint_digest: String,
    pub low_watermark: u64,
    pub high_watermark: u64,
    /// Hex application digest of the live state (`Replica::app_digest`); the
    /// contract's name for it is `state_digest`.
    #[serde(rename = "state_digest")]
    pub app_digest: String,
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

/// Fetch a node's `/status`.
///
/// # Errors
/// Unreachable node or a malformed answer.
pub fn fetch_status(url: &str) -> anyhow::Result<Status> {
    let (code, body) = http_client::get(url, "/status", Duration::from_secs(2))?;
    if code != 200 {
        bail!("{url}/status answered {code}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}/status returned malformed JSON"))
}

#[must_use]
pub fn table_header() -> String {
    format!(
        "{:>3} {:>5} {:>7} {:>13} {:>10} {:>5} {:>10} {:<14} {:<16}",
        "id",
        "view",
        "primary",
        "last_executed",
        "stable_cp",
        "peers",
        "suspected",
        "behaviour",
        "state_digest"
    )
}

#[must_use]
pub fn table_row(s: &Status) -> String {
    let view = if s.in_view_change {
        format!("{}*", s.view)
    } else {
        s.view.to_string()
    };
    let suspected: Vec<_> = s.suspected.iter().map(ToString::to_string).collect();
    format!(
        "{:>3} {:>5} {:>7} {:>13} {:>10} {:>5} {:>10} {:<14} {:<16}",
        s.id,
        view,
        s.primary,
        s.last_executed,
        s.last_stable_checkpoint,
        s.peers_connected,
        if suspected.is_empty() {
            "-".into()
        } else {
            suspected.join(",")
        },
        s.behaviour,
        &s.app_digest.get(..16).unwrap_or(&s.app_digest)
    )
}
