//! Typed reasons for refusing input. Each has a stable label for the
//! `bft_invalid_messages_total{reason}` metric.

use crate::types::{ReplicaId, Seq, View};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("signature does not verify")]
    BadSignature,
    #[error("signer is not a member of the replica group")]
    UnknownSigner,
    #[error("message claims replica {claimed} but is signed by another key")]
    SignerMismatch { claimed: ReplicaId },
    #[error("replica {replica} is not the primary of view {view}")]
    NotPrimary { replica: ReplicaId, view: View },
    #[error("batch digest does not match the pre-prepare")]
    DigestMismatch,
    #[error("sequence {seq} outside the window ({low}, {high}]")]
    OutOfWindow { seq: Seq, low: Seq, high: Seq },
    #[error("a different pre-prepare for view {view} seq {seq} was already accepted")]
    ConflictingPrePrepare { view: View, seq: Seq },
    #[error("replica {replica} sent two different votes for view {view} seq {seq}")]
    Equivocation {
        replica: ReplicaId,
        view: View,
        seq: Seq,
    },
    #[error("batch of {len} requests exceeds the limit {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("batch of {bytes} bytes exceeds the limit {max}")]
    BatchTooManyBytes { bytes: usize, max: usize },
    #[error("request of {bytes} bytes exceeds the batch limit {max}")]
    RequestTooLarge { bytes: usize, max: usize },
    #[error("checkpoint at {seq} is not a multiple of the checkpoint interval")]
    MisalignedCheckpoint { seq: Seq },
    #[error("invalid checkpoint proof: {0}")]
    InvalidCheckpointProof(&'static str),
    #[error("invalid prepared certificate: {0}")]
    InvalidPreparedCert(&'static str),
    #[error("invalid view-change: {0}")]
    InvalidViewChange(&'static str),
    #[error("invalid new-view: {0}")]
    InvalidNewView(&'static str),
    #[error("state snapshot does not match its proven digest")]
    BadSnapshot,
    #[error("a replica sent a message only clients send, or the reverse")]
    WrongSender,
    #[error("too many pending requests")]
    Overloaded,
    #[error("frame of {len} bytes exceeds the {max}-byte bound")]
    Oversized { len: usize, max: usize },
    /// Only under the simulator's planted relay rule (see `ingress::RelayRule`).
    #[error("message signed by replica {signer} relayed by replica {via}")]
    RelayRefused { signer: ReplicaId, via: ReplicaId },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid generals signature chain: {0}")]
    InvalidGeneralsChain(&'static str),
}

impl Rejection {
    /// Every label [`Rejection::label`] can return, so that metrics can show each
    /// at zero from start-up (a `rate()` alert needs a series before the first).
    pub const LABELS: &'static [&'static str] = &[
        "bad_signature",
        "unknown_signer",
        "signer_mismatch",
        "not_primary",
        "digest_mismatch",
        "out_of_window",
        "conflicting_pre_prepare",
        "equivocation",
        "batch_too_large",
        "request_too_large",
        "misaligned_checkpoint",
        "invalid_checkpoint_proof",
        "invalid_prepared_cert",
        "invalid_view_change",
        "invalid_new_view",
        "bad_snapshot",
        "wrong_sender",
        "overloaded",
        "oversized",
        "relay_refused",
        "malformed",
        "invalid_generals_chain",
    ];

    /// The metric label: short, stable, low cardinality.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownSigner => "unknown_signer",
            Rejection::SignerMismatch { .. } => "signer_mismatch",
            Rejection::NotPrimary { .. } => "not_primary",
            Rejection::DigestMismatch => "digest_mismatch",
            Rejection::OutOfWindow { .. } => "out_of_window",
            Rejection::ConflictingPrePrepare { .. } => "conflicting_pre_prepare",
            Rejection::Equivocation { .. } => "equivocation",
            Rejection::BatchTooLarge { .. } | Rejection::BatchTooManyBytes { .. } => {
                "batch_too_large"
            }
            Rejection::RequestTooLarge { .. } => "request_too_large",
            Rejection::MisalignedCheckpoint { .. } => "misaligned_checkpoint",
            Rejection::InvalidCheckpointProof(_) => "invalid_checkpoint_proof",
            Rejection::InvalidPreparedCert(_) => "invalid_prepared_cert",
            Rejection::InvalidViewChange(_) => "invalid_view_change",
            Rejection::InvalidNewView(_) => "invalid_new_view",
            Rejection::BadSnapshot => "bad_snapshot",
            Rejection::WrongSender => "wrong_sender",
            Rejection::Overloaded => "overloaded",
            Rejection::Oversized { .. } => "oversized",
            Rejection::RelayRefused { .. } => "relay_refused",
            Rejection::Malformed(_) => "malformed",
            Rejection::InvalidGeneralsChain(_) => "invalid_generals_chain",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_label_is_listed_once() {
        let all = [
            Rejection::BadSignature,
            Rejection::UnknownSigner,
            Rejection::SignerMismatch { claimed: 0 },
            Rejection::NotPrimary {
                replica: 0,
                view: 0,
            },
            Rejection::DigestMismatch,
            Rejection::OutOfWindow {
                seq: 0,
                low: 0,
                high: 0,
            },
            Rejection::ConflictingPrePrepare { view: 0, seq: 0 },
            Rejection::Equivocation {
                replica: 0,
                view: 0,
                seq: 0,
            },
            Rejection::BatchTooLarge { len: 0, max: 0 },
            Rejection::BatchTooManyBytes { bytes: 0, max: 0 },
            Rejection::RequestTooLarge { bytes: 0, max: 0 },
            Rejection::MisalignedCheckpoint { seq: 0 },
            Rejection::InvalidCheckpointProof(""),
            Rejection::InvalidPreparedCert(""),
            Rejection::InvalidViewChange(""),
            Rejection::InvalidNewView(""),
            Rejection::BadSnapshot,
            Rejection::WrongSender,
            Rejection::Overloaded,
            Rejection::Oversized { len: 0, max: 0 },
            Rejection::RelayRefused { signer: 0, via: 0 },
            Rejection::Malformed(String::new()),
            Rejection::InvalidGeneralsChain(""),
        ];
        let mut seen: Vec<&str> = all.iter().map(Rejection::label).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut listed = Rejection::LABELS.to_vec();
        listed.sort_unstable();
        assert_eq!(seen, listed);
    }
}
