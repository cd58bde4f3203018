//! Commands from the HTTP admin routes to the event loop, which alone owns the
//! replica: each carries a oneshot for the answer.

use crate::committed_log::CommittedPage;
use crate::status::Status;
use bft_consensus::byzantine::Params;
use bft_consensus::generals::InstanceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::sync::oneshot;

pub enum Control {
    /// Switch the behaviour in force (`none` restores honesty).
    SetBehaviour {
        name: String,
        params: Params,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Start a signed-message generals instance with this replica as commander.
    ProposeGeneral {
        value: String,
        m: Option<u32>,
        reply: oneshot::Sender<Result<GeneralsView, String>>,
    },
    /// This replica's view of an instance.
    GetGeneral {
        id: InstanceId,
        reply: oneshot::Sender<Option<GeneralsView>>,
    },
    /// The status now, with the state digest brought up to date (`GET /status`):
    /// the loop computes that digest only when asked (see `bft_consensus::kv`).
    Status { reply: oneshot::Sender<Status> },
    /// A page of the batches executed since start (`GET /committed`).
    Committed {
        from: u64,
        limit: usize,
        reply: oneshot::Sender<CommittedPage>,
    },
}

/// `GET /generals/{id}`: one replica's view of an SM(m) instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneralsView {
    pub id: String,
    pub commander: u32,
    pub n: usize,
    pub m: u32,
    pub round_ms: u64,
    /// Unix time (ms) at which lieutenants decide.
    pub decide_at_ms: u64,
    /// Whether this replica has decided (`decided` is then final; null means none).
    pub done: bool,
    pub decided: Option<String>,
    /// V: the values this replica accepted.
    pub values: Vec<String>,
    /// Commander only: each replica's reported decision, by id.
    pub reports: BTreeMap<String, Option<String>>,
}

/// `GET /byzantine`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BehaviourView {
    pub behaviour: String,
    #[serde(default)]
    pub params: Params,
}
