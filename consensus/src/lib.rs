//! PBFT (Castro & Liskov, OSDI'99 / TOCS'02) as a deterministic, sans-IO state
//! machine, with its client, application trait, and a deterministic simulator.
//!
//! # The contract (read this before driving a [`Replica`])
//! 1. Admit frames with an [`Ingress`] (any thread, batched: it checks PBFT
//!    messages with a [`Validator`]); feed the [`VerifiedMessage`]s of its
//!    [`VerifiedFrame::Pbft`] frames and fired timers to [`Replica::handle`]
//!    together with the current time. The replica never reads a clock. Messages it
//!    sends leave framed by [`frame::encode_pbft`].
//! 2. Perform the returned [`Output`]s **in order**. A [`Output::Persist`] must be
//!    durable before any later `Send`/`Broadcast`/`Reply` leaves the process (one
//!    sync may cover all records of one `handle` call or loop turn).
//! 3. After a crash, fold the persisted records into a [`DurableState`] and call
//!    [`Replica::recover`]; perform its outputs.
//!
//! Nothing here uses tokio, libp2p, RocksDB, the wall clock or a thread RNG, so the
//! same code runs under the node's runtime and under the simulator.
#![forbid(unsafe_code)]

pub mod app;
pub mod client;
pub mod client_table;
pub mod durable;
pub mod fd;
pub mod frame;
pub mod generals;
pub mod ingress;
pub mod io;
pub mod kv;
mod lookup;
pub mod messages;
pub mod new_view;
pub mod params;
pub mod rejection;
mod replica;
pub mod reply;
pub mod reply_bundle;
pub mod reply_result;
pub mod request_checks;
pub mod snapshot_job;
pub mod types;
pub mod validate;

pub mod byzantine;
#[cfg(feature = "sim")]
pub mod sim;

pub use app::Application;
pub use client::{Client, ClientOutput};
pub use durable::{DurableState, PersistRecord, StableCheckpoint};
pub use frame::{Frame, VerifiedFrame};
pub use ingress::{Admitted, Ingress, Origin};
pub use io::{Executed, Input, Output, Timer};
pub use kv::{KvOp, KvResult, KvStore};
pub use messages::Message;
pub use params::ProtocolParams;
pub use rejection::Rejection;
pub use replica::{encode_snapshot, encode_snapshot_into, RecoveryError, Replica};
pub use reply::{RootCache, SignedReply, VerifiedReply};
pub use reply_bundle::{ReplyBundle, SignedReplies};
pub use snapshot_job::{SnapshotJob, SnapshotTaken};
pub use types::{ClientId, Membership, ReplicaConfig, ReplicaId, RequestId, Seq, View};
pub use validate::{Validator, VerifiedMessage};
