//! The protocol's messages, named as in Castro & Liskov (OSDI'99 §4, TOCS'02 §4).
//!
//! Each signed payload is its own type with its own signing domain. The wire enum
//! [`Message`] carries them unverified; [`crate::validate`] turns one into a
//! [`crate::VerifiedMessage`].

pub use crate::reply_result::ReplyResult;
use crate::types::{ClientId, ReplicaId, RequestId, Seq, View};
use bft_crypto::{Digest, Hasher, Signable, Signed};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

macro_rules! signable {
    ($t:ty, $domain:literal) => {
        impl Signable for $t {
            const DOMAIN: &'static str = $domain;
        }
    };
    // A client's requests: signed by their digest (see `Signable::PREHASHED`).
    ($t:ty, $domain:literal, prehashed) => {
        impl Signable for $t {
            const DOMAIN: &'static str = $domain;
            const PREHASHED: bool = true;
        }
    };
}

/// <REQUEST, o, t, c>σc: operation `o` with the client's timestamp `t`; the client
/// `c` is the signer. `horizon` is the highest sequence number the client knows
/// executed (0 at first): the request is executed only within `request_horizon`
/// sequence numbers after it, which lets the replicas forget clients without
/// letting an old request of theirs run again (see `client_table`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub timestamp: u64,
    #[serde(with = "bft_crypto::bytes")]
    pub operation: Vec<u8>,
    pub horizon: Seq,
    /// The replica that sends the result in full (TOCS §5.1.1); the others send
    /// its digest (see [`crate::reply_result`]). None: all send it in full. An id
    /// that is not a member's gets digests from all: only a retransmission, which
    /// replicas answer in full, then gets the result (a client's own loss).
    pub replier: Option<ReplicaId>,
}
signable!(Request, "bftnode/request/v2", prehashed);

/// <READ, o, t, c>σc: a read-only operation (TOCS §5.1.3), sent to every replica
/// and answered by each from its current state, outside the order. It is a type of
/// its own, with its own signing domain, rather than a flag on [`Request`]: a
/// [`Batch`] holds only `Request`s, so no replica can order one, and a read-only
/// signature can never be replayed as an ordered request. Its timestamp comes
/// from the client's request timestamps, so the ordered request a client falls
/// back to gets a newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub timestamp: u64,
    #[serde(with = "bft_crypto::bytes")]
    pub operation: Vec<u8>,
}
signable!(ReadRequest, "bftnode/read-request/v2", prehashed);

/// The request's identity and digest, from its signed form.
#[must_use]
pub fn request_id(req: &Signed<Request>) -> RequestId {
    (req.signer, req.payload.timestamp)
}

/// The digest of a request: its client, every field it signed, and the signature.
///
/// The signature is bound too because some backups accept a pre-prepare without
/// checking its requests' signatures (see [`crate::request_checks`]): the digest a
/// group agrees on must name the exact bytes the checking replicas found valid, so
/// a skipping replica given a copy with a forged signature holds another batch,
/// which can never gather a quorum, rather than the agreed batch with a bad
/// signature inside, which it would later hand on in view-changes that every
/// other replica refuses.
#[must_use]
pub fn request_digest(req: &Signed<Request>) -> Digest {
    let mut h = Hasher::new("bftnode/request-digest/v2");
    // Every field the client signed (a replier id is a u32, so u64::MAX stands for
    // none without colliding): two requests that differ in any of them, even only
    // in who replies in full, are two batches to agree on.
    h.update(&req.signer.0)
        .update_u64(req.payload.timestamp)
        .update_u64(req.payload.horizon)
        .update_u64(req.payload.replier.map_or(u64::MAX, u64::from))
        .update(&req.payload.operation)
        .update(&req.signature.to_bytes());
    h.finish()
}

/// The requests the primary orders under one sequence number. An empty batch is the
/// paper's null request (§4.4), used to fill gaps in a new view.
///
/// The requests are shared, not owned: a batch is held at once by its log slot, the
/// records that make it durable, the message that carries it and the execution that
/// applies it, and a clone is a reference count rather than a copy of every request
/// (issue 13: each deep copy cost a replica about a microsecond per request). On the
/// wire it is the plain sequence of requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Arc<Vec<Signed<Request>>>,
}

impl Batch {
    #[must_use]
    pub fn new(requests: Vec<Signed<Request>>) -> Self {
        Self {
            requests: Arc::new(requests),
        }
    }

    /// The digest `d` that pre-prepares, prepares and commits agree on.
    #[must_use]
    pub fn digest(&self) -> Digest {
        let mut h = Hasher::new("bftnode/batch/v1");
        h.update_u64(self.requests.len() as u64);
        for r in self.requests.iter() {
            h.update(&request_digest(r).0);
        }
        h.finish()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// <PRE-PREPARE, v, n, d>σp: the primary assigns sequence `n` to the batch with digest `d`.
/// The batch itself travels beside the signed header (§4.2: "requests are not included").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    pub view: View,
    pub seq: Seq,
    pub digest: Digest,
    pub replica: ReplicaId,
}
signable!(PrePrepare, "bftnode/pre-prepare/v1");

/// <PREPARE, v, n, d, i>σi: backup `i` accepted the pre-prepare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub view: View,
    pub seq: Seq,
    pub digest: Digest,
    pub replica: ReplicaId,
}
signable!(Prepare, "bftnode/prepare/v1");

/// <COMMIT, v, n, d, i>σi: replica `i` is prepared for (v, n, d).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub view: View,
    pub seq: Seq,
    pub digest: Digest,
    pub replica: ReplicaId,
}
signable!(Commit, "bftnode/commit/v1");

/// <REPLY, v, t, c, i, r>: the result `r` of the client's request with timestamp `t`.
/// Not signed alone: a replica signs the replies of a whole batch at once (see
/// [`crate::reply`]), and `Message::Reply` carries the signed root and the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub view: View,
    pub timestamp: u64,
    pub client: ClientId,
    pub replica: ReplicaId,
    /// The result, or only its digest if another replica was designated to send
    /// it (see [`crate::reply_result`]).
    pub result: ReplyResult,
    /// Set when there is no result to give (the result is empty).
    pub refusal: Option<Refusal>,
    /// The sequence number the request executed (or was refused) at: the client's
    /// next horizon.
    pub seq: Seq,
    /// Executed tentatively (TOCS §5.1.2): prepared, not committed yet. A client
    /// needs 2f+1 matching tentative replies from one view (f+1 committed ones).
    pub tentative: bool,
}

impl Reply {
    /// This reply, marked tentative or not.
    #[must_use]
    pub fn tentative(mut self, tentative: bool) -> Self {
        self.tentative = tentative;
        self
    }
}

/// Why the replicas answered a request without a result. Decided from the
/// replicated state, so every correct replica gives the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Ordered at `seq` but not executed: its horizon is more than `request_horizon`
    /// behind `seq`, or not behind it at all (see `client_table`). Sign the
    /// operation again with horizon `seq`.
    Expired { seq: Seq },
    /// Executed, but its reply is no longer held (the client table dropped the
    /// result to stay within its bytes); the client asked again too late.
    ReplyNotKept,
    /// A read-only request (`Message::Read`) whose operation the application does
    /// not answer without ordering it. Send it as an ordered request.
    NotReadOnly,
}

/// <CHECKPOINT, n, d, i>σi: replica `i`'s state snapshot after executing `n` has
/// [`snapshot_digest`] `d` (§4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: Seq,
    pub snapshot_digest: Digest,
    pub replica: ReplicaId,
}
signable!(Checkpoint, "bftnode/checkpoint/v1");

/// A prepared certificate (the paper's P_m): a pre-prepare and 2f matching prepares
/// from distinct backups, with the batch so a new primary can re-propose it. This is
/// what a replica keeps and persists; a view-change carries it split into its signed
/// proof ([`PreparedProof`]) and the batch beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    pub pre_prepare: Signed<PrePrepare>,
    pub batch: Batch,
    pub prepares: Vec<Signed<Prepare>>,
}

impl PreparedCert {
    #[must_use]
    pub fn seq(&self) -> Seq {
        self.pre_prepare.payload.seq
    }

    #[must_use]
    pub fn view(&self) -> View {
        self.pre_prepare.payload.view
    }

    #[must_use]
    pub fn digest(&self) -> Digest {
        self.pre_prepare.payload.digest
    }

    /// The signed proof, without the batch.
    #[must_use]
    pub fn proof(&self) -> PreparedProof {
        PreparedProof {
            pre_prepare: self.pre_prepare.clone(),
            prepares: self.prepares.clone(),
        }
    }
}

/// P_m as a view-change carries it: the pre-prepare (naming the batch by digest) and
/// 2f matching prepares. The batch itself travels once, beside the signed message
/// (see [`Message::ViewChange`]), so a new-view made of 2f+1 view-changes does not
/// carry 2f+1 copies of every batch (issue 11, defect 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    pub pre_prepare: Signed<PrePrepare>,
    pub prepares: Vec<Signed<Prepare>>,
}

impl PreparedProof {
    #[must_use]
    pub fn seq(&self) -> Seq {
        self.pre_prepare.payload.seq
    }

    #[must_use]
    pub fn view(&self) -> View {
        self.pre_prepare.payload.view
    }

    #[must_use]
    pub fn digest(&self) -> Digest {
        self.pre_prepare.payload.digest
    }
}

/// <VIEW-CHANGE, v+1, n, C, P, i>σi (§4.4): `n` is the stable checkpoint, `C` its
/// 2f+1 proof, `P` the prepared certificates above it (their batches beside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    pub new_view: View,
    pub stable_seq: Seq,
    pub checkpoint_proof: Vec<Signed<Checkpoint>>,
    pub prepared: Vec<PreparedProof>,
    pub replica: ReplicaId,
}
signable!(ViewChange, "bftnode/view-change/v2");

/// <NEW-VIEW, v+1, V, O>σp (§4.4): the 2f+1 view-changes `V` and the pre-prepares `O`
/// computed from them. The batches of `O` travel beside, once each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    pub view: View,
    pub view_changes: Vec<Signed<ViewChange>>,
    pub pre_prepares: Vec<Signed<PrePrepare>>,
    pub replica: ReplicaId,
}
signable!(NewView, "bftnode/new-view/v2");

/// Batches carried beside a signed message that names them by digest: one body per
/// digest it needs, no more (the validator refuses missing, extra or repeated ones).
pub type Bodies = Vec<Batch>;

/// Ask a peer for its stable checkpoint's state, at least `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    pub seq: Seq,
    pub replica: ReplicaId,
}
signable!(FetchState, "bftnode/fetch-state/v1");

/// A stable checkpoint's full state with its 2f+1 proof. The receiver trusts the
/// proof, not the sender: the snapshot must hash to the proven digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub seq: Seq,
    pub proof: Vec<Signed<Checkpoint>>,
    /// Shared with the stable checkpoint it was taken from (megabytes, not copied).
    #[serde(with = "bft_crypto::bytes::shared")]
    pub snapshot: Arc<Vec<u8>>,
    pub replica: ReplicaId,
}
signable!(StateSnapshot, "bftnode/state/v1");

/// The snapshot digest: SHA-256 (domain-separated) of a state snapshot's bytes, as
/// carried in checkpoints and checked against a fetched snapshot. Not the same
/// value as the application's own digest ([`crate::Replica::app_digest`]), which is
/// kept incrementally over the live state and never leaves the replica.
#[must_use]
pub fn snapshot_digest(snapshot: &[u8]) -> Digest {
    let mut h = Hasher::new("bftnode/state/v1");
    h.update(snapshot);
    h.finish()
}

/// A PBFT message between replicas and clients, signatures not yet checked. It
/// travels inside a [`crate::frame::Frame`], beside the node's own frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Request(Signed<Request>),
    /// A read-only request, answered outside the order (never in a batch).
    Read(Signed<ReadRequest>),
    PrePrepare(Signed<PrePrepare>, Batch),
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    Checkpoint(Signed<Checkpoint>),
    /// A view-change and the batches of its prepared certificates.
    ViewChange(Signed<ViewChange>, Bodies),
    /// A new-view and the batches of its pre-prepares (null requests need none).
    NewView(Signed<NewView>, Bodies),
    FetchState(Signed<FetchState>),
    State(Signed<StateSnapshot>),
    Reply(crate::reply::SignedReply),
    /// Failure detection (see [`crate::fd`]).
    Heartbeat(Signed<crate::fd::Heartbeat>),
    /// A batch's replies to the clients behind one process (see
    /// [`crate::reply_bundle`]).
    Replies(crate::reply_bundle::ReplyBundle),
}

impl Message {
    /// A short stable name, used as the `type` label of message metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        // Keep `Message::KINDS` in step with this list.
        match self {
            Message::Request(_) => "request",
            Message::Read(_) => "read",
            Message::PrePrepare(..) => "pre_prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(..) => "view_change",
            Message::NewView(..) => "new_view",
            Message::FetchState(_) => "fetch_state",
            Message::State(_) => "state",
            Message::Reply(_) => "reply",
            Message::Heartbeat(_) => "heartbeat",
            Message::Replies(_) => "replies",
        }
    }
}

impl Message {
    /// Every value [`Message::kind`] returns (see [`crate::frame::Frame::kinds`]
    /// for every label of a frame).
    pub const KINDS: &'static [&'static str] = &[
        "request",
        "read",
        "pre_prepare",
        "prepare",
        "commit",
        "checkpoint",
        "view_change",
        "new_view",
        "fetch_state",
        "state",
        "reply",
        "heartbeat",
        "replies",
    ];
}

/// Largest encoded message accepted from the network (a bound on hostile input).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
