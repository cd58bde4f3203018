//! What goes into the replica state machine and what comes out.
//!
//! Outputs are performed in order by the driver. A [`Output::Persist`] must be
//! durable before any later send leaves the process: that is how a replica that
//! crashes and restarts never contradicts a message it signed before (DESIGN.md,
//! "Persistence").

use crate::durable::PersistRecord;
use crate::messages::Message;
use crate::rejection::Rejection;
use crate::reply_bundle::SignedReplies;
use crate::snapshot_job::{SnapshotJob, SnapshotTaken};
use crate::types::{ReplicaId, RequestId, Seq, View};
use crate::validate::VerifiedMessage;
use bft_crypto::Digest;
use std::time::Duration;

/// Timers the replica asks for. Setting a timer replaces the previous deadline of
/// the same kind; a timer that fires late or stale is ignored by the replica, so
/// drivers need not cancel anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The primary proposes a partial batch.
    Batch,
    /// A backup waited too long for a request (or a new view): change view (§4.4).
    ViewChange,
    /// A state-transfer request went unanswered: ask another peer.
    StateFetch,
    /// Send a heartbeat and check the failure detector.
    Heartbeat,
}

/// An event for the replica. (Messages are moved, never copied, once per event;
/// boxing them would only add an allocation.)
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// A message whose signatures have been checked (see [`crate::validate`]).
    Message(VerifiedMessage),
    /// A timer set earlier reached its deadline.
    Timer(Timer),
    /// An [`Output::TakeSnapshot`]'s job finished (see [`crate::snapshot_job`]).
    SnapshotTaken(SnapshotTaken),
}

/// An effect for the driver to perform, in order.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send to one replica.
    Send { to: ReplicaId, message: Message },
    /// Send to every other replica.
    Broadcast { message: Message },
    /// Send an executed batch's replies, signed once, to their clients (through
    /// [`SignedReplies::address`], which bundles those behind one process).
    Replies(SignedReplies),
    /// Make this durable before any later Send/Broadcast/Reply leaves.
    Persist(PersistRecord),
    /// Make this durable some time later, apart from the other records: no message
    /// depends on it, and a crash may lose it. The replica emits this only where a
    /// restart from the older durable state contradicts nothing it sent (an own
    /// stable checkpoint: the log below it stays on disk until it lands). Drivers
    /// must keep the newest of these once several land (`DurableState::apply` does).
    PersistApart(PersistRecord),
    /// Run this job, off the replica's loop if the driver likes, and deliver its
    /// result as [`Input::SnapshotTaken`] (see [`crate::snapshot_job`]). Drivers must
    /// run every one they are handed (the replica signs its checkpoint only then),
    /// except that a replica's jobs die with it.
    TakeSnapshot(SnapshotJob),
    /// Deliver `Input::Timer(timer)` at `at` (replaces an earlier deadline).
    SetTimer { timer: Timer, at: Duration },
    /// Bad input, for counting and logging; `peer` is the replica it came from, if known.
    Rejected {
        peer: Option<ReplicaId>,
        reason: Rejection,
    },
    /// A batch was executed (for metrics, logs and the simulator's checkers).
    Executed(Executed),
    /// Read-only requests were answered from the current state (for metrics).
    ReadsAnswered { count: usize },
    /// The batch at `seq` executed tentatively (prepared, not committed), with
    /// `requests` executed; its replies follow.
    TentativelyExecuted { seq: Seq, requests: usize },
    /// The tentative execution of `seq` was undone (another batch committed there,
    /// or a state transfer replaced the state).
    RolledBack { seq: Seq },
    /// The replica entered a new view (normal operation resumes).
    ViewEntered { view: View, primary: ReplicaId },
    /// The replica started a view change to `view`.
    ViewChangeStarted { view: View },
    /// A checkpoint became stable.
    CheckpointStable { seq: Seq, digest: Digest },
    /// A state snapshot from a peer was checked and installed.
    StateInstalled { seq: Seq, digest: Digest },
    /// The suspected replicas (for any reason; see [`crate::fd`]) or the reasons changed.
    Suspected(Vec<ReplicaId>),
}

/// One executed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub seq: Seq,
    pub view: View,
    pub digest: Digest,
    /// Requests executed now, in order, with their results. Requests in the batch that
    /// were already executed earlier (duplicates) are not listed.
    pub requests: Vec<(RequestId, Vec<u8>)>,
    /// Requests in the batch (executed or skipped).
    pub batch_len: usize,
}
