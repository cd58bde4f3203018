//! The limits every replica of a group must share: they decide what a valid message
//! may be, so a replica with other values refuses its peers' messages (issue 11,
//! defect 6). They belong to the validator set, beside the members' keys, not to
//! one node's configuration.
//!
//! They also decide how large the largest messages can get, and each of those must
//! fit the transport's frame bound, or the message that needs it most (a new-view
//! after a crash) is refused by every replica and the group never leaves the view.
//! [`ProtocolParams::validate`] checks the worst case before a replica starts.

use crate::client_table::{ENTRY_BYTES, MAX_TABLE_BYTES};
use crate::messages::{Checkpoint, Commit, PrePrepare, Prepare, Request};
use crate::types::Membership;
use bft_crypto::{Digest, KeyPair, Signable, Signed};
use serde::{Deserialize, Serialize};

/// What a group agrees on besides its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolParams {
    /// Most requests the primary puts in one pre-prepare.
    pub batch_size: usize,
    /// Most bytes of (encoded, signed) requests in one batch; a larger request is
    /// refused at once, since no batch could carry it.
    pub max_batch_bytes: usize,
    /// K: a checkpoint is taken every K sequence numbers (PBFT §4.3).
    pub checkpoint_interval: u64,
    /// L: the log window above the low water mark (a multiple of K).
    pub window: u64,
    /// How many sequence numbers after its horizon a request may execute; the
    /// client table forgets clients idle for longer (see `client_table`).
    pub request_horizon: u64,
}

impl Default for ProtocolParams {
    /// Sized for a LAN: 512 requests or 176 KiB a batch, a checkpoint every 128, a
    /// window of 256 (which keeps the largest new-view of a group of up to 31
    /// replicas under the 64 MiB frame bound), requests valid for 256 sequence
    /// numbers after their horizon.
    ///
    /// Why batches this large: with one batch in flight, a batch under load holds
    /// what arrived while the one before it was agreed on, and 128 KiB (about 210
    /// requests of 512 bytes) was the bound that closed it at the peak. Part of a
    /// batch's cost does not depend on what it holds (its votes' signatures, the
    /// persist turn and its sync, the reply bundle's signature, the wake-ups), so
    /// larger batches spread it thinner: a few per cent of the machine's CPU per
    /// request at the peak (README "Performance", sixteenth round). 176 KiB is
    /// near the most a window of 256 allows a group of 31 replicas (189 KiB: their
    /// view-changes' certificates take the rest of a new-view's frame); the
    /// request horizon halves so the client table's bound (`request_horizon` x
    /// `batch_size` entries) stays where it was.
    fn default() -> Self {
        Self {
            batch_size: 512,
            max_batch_bytes: 176 * 1024,
            checkpoint_interval: 128,
            window: 256,
            request_horizon: 256,
        }
    }
}

/// Worst-case sizes of the messages the bound depends on, as [`ProtocolParams::largest_frames`] reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargestFrames {
    pub pre_prepare: usize,
    pub view_change: usize,
    pub new_view: usize,
}

impl ProtocolParams {
    /// Check the parameters make sense together and for `members`, and that the
    /// largest pre-prepare, view-change and new-view fit `max_frame_bytes`.
    ///
    /// # Errors
    /// A one-line description of the first problem found.
    pub fn validate(&self, members: &Membership, max_frame_bytes: usize) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.max_batch_bytes < MIN_BATCH_BYTES {
            return Err(format!(
                "max_batch_bytes must be at least {MIN_BATCH_BYTES} (one small request)"
            ));
        }
        if self.checkpoint_interval == 0 || self.window < 2 * self.checkpoint_interval {
            return Err(
                "window must be at least twice checkpoint_interval (and both positive)".into(),
            );
        }
        if !self.window.is_multiple_of(self.checkpoint_interval) {
            return Err("window must be a multiple of checkpoint_interval".into());
        }
        let largest = self.largest_frames(members);
        if largest.new_view > max_frame_bytes {
            return Err(format!(
                "a new-view can reach {} bytes with window {} and max_batch_bytes {} for {} replicas, \
                 over the {max_frame_bytes}-byte frame bound: lower window or max_batch_bytes",
                largest.new_view,
                self.window,
                self.max_batch_bytes,
                members.n()
            ));
        }
        if self.request_horizon < self.window {
            return Err("request_horizon must be at least window".into());
        }
        // The clients of `request_horizon` sequence numbers, results dropped, must fit
        // half the client table's bytes (the rest is for results).
        let entries = self
            .request_horizon
            .saturating_mul(self.batch_size as u64)
            .saturating_mul(ENTRY_BYTES as u64);
        if entries > (MAX_TABLE_BYTES / 2) as u64 {
            return Err(format!(
                "request_horizon x batch_size clients would not fit the client table's \
                 {MAX_TABLE_BYTES} bytes: lower request_horizon or batch_size"
            ));
        }
        Ok(())
    }

    /// Upper bounds on the encoded size of the largest messages (the new-view is
    /// the largest: 2f+1 view-changes without batches, plus every batch once).
    #[must_use]
    pub fn largest_frames(&self, members: &Membership) -> LargestFrames {
        let q = members.quorum();
        let window = usize::try_from(self.window).unwrap_or(usize::MAX);
        let vote = worst::<Prepare>().max(worst::<Commit>());
        let pp = worst::<PrePrepare>();
        let body = VEC_LEN + self.max_batch_bytes;
        let bodies = VEC_LEN + window.saturating_mul(body);
        // A prepared proof: the pre-prepare and 2f prepares.
        let proof = pp + VEC_LEN + (q - 1) * vote;
        // The signed view-change: view, stable seq, 2f+1 checkpoints, L proofs.
        let vc_signed = (SIGNED + 3 * VARINT + VEC_LEN + q * worst::<Checkpoint>() + VEC_LEN)
            .saturating_add(window.saturating_mul(proof));
        let view_change = FRAME_TAGS.saturating_add(vc_signed).saturating_add(bodies);
        let nv_signed = (SIGNED + 2 * VARINT + VEC_LEN + VEC_LEN)
            .saturating_add(q.saturating_mul(vc_signed))
            .saturating_add(window.saturating_mul(pp));
        let new_view = FRAME_TAGS.saturating_add(nv_signed).saturating_add(bodies);
        LargestFrames {
            pre_prepare: (FRAME_TAGS + pp).saturating_add(body),
            view_change,
            new_view,
        }
    }

    /// The encoded size of a signed request counted against `max_batch_bytes`.
    #[must_use]
    pub fn request_bytes(request: &Signed<Request>) -> usize {
        bft_crypto::encoded_len(request)
    }
}

/// The smallest `max_batch_bytes` allowed: room for a request with a small operation.
const MIN_BATCH_BYTES: usize = 1024;
/// Bytes bincode may spend on a variable-length integer, a sequence's length, an
/// enum's tag, and the signer and signature of an envelope.
const VARINT: usize = 10;
const VEC_LEN: usize = VARINT;
const TAG: usize = VARINT;
/// A frame's tag and its message's (see [`crate::frame`]).
const FRAME_TAGS: usize = 2 * TAG;
const SIGNED: usize = 32 + 64;

/// The encoded size of a signed `T` with every number at its largest.
fn worst<T: Signable + Largest>() -> usize {
    let key = KeyPair::from_seed([0; 32]);
    bft_crypto::encoded_len(&Signed::sign(T::largest(), &key))
}

/// A value with every field at its widest encoding.
trait Largest {
    fn largest() -> Self;
}

impl Largest for Prepare {
    fn largest() -> Self {
        Prepare {
            view: u64::MAX,
            seq: u64::MAX,
            digest: Digest([0xff; 32]),
            replica: u32::MAX,
        }
    }
}

impl Largest for Commit {
    fn largest() -> Self {
        Commit {
            view: u64::MAX,
            seq: u64::MAX,
            digest: Digest([0xff; 32]),
            replica: u32::MAX,
        }
    }
}

impl Largest for PrePrepare {
    fn largest() -> Self {
        PrePrepare {
            view: u64::MAX,
            seq: u64::MAX,
            digest: Digest([0xff; 32]),
            replica: u32::MAX,
        }
    }
}

impl Largest for Checkpoint {
    fn largest() -> Self {
        Checkpoint {
            seq: u64::MAX,
            snapshot_digest: Digest([0xff; 32]),
            replica: u32::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::messages::{Batch, Message, NewView, PreparedProof, ViewChange};

    fn group(n: usize) -> (Membership, Vec<KeyPair>) {
        let keys: Vec<_> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        (
            Membership::new(keys.iter().map(KeyPair::public).collect()),
            keys,
        )
    }

    #[test]
    fn the_defaults_fit_the_frame_bound_up_to_31_replicas() {
        let p = ProtocolParams::default();
        for n in [4, 7, 10, 31] {
            let (m, _) = group(n);
            assert!(
                p.validate(&m, crate::messages::MAX_MESSAGE_BYTES).is_ok(),
                "n = {n}"
            );
        }
        let (m, _) = group(4);
        let big = ProtocolParams {
            max_batch_bytes: 8 * 1024 * 1024,
            ..p
        };
        let err = big
            .validate(&m, crate::messages::MAX_MESSAGE_BYTES)
            .unwrap_err();
        assert!(err.contains("new-view can reach"), "{err}");
    }

    /// The bound is an upper bound: a real new-view with a full window of full
    /// batches encodes to no more than it says.
    #[test]
    fn a_full_new_view_encodes_within_the_computed_bound() {
        let (m, keys) = group(4);
        let p = ProtocolParams {
            batch_size: 8,
            max_batch_bytes: 4096,
            checkpoint_interval: 4,
            window: 8,
            ..ProtocolParams::default()
        };
        let client = KeyPair::from_seed([99; 32]);
        let mut bodies = Vec::new();
        let mut proofs = Vec::new();
        for seq in 1..=p.window {
            let mut batch = Batch::default();
            let mut ts = 0;
            loop {
                ts += 1;
                let r = Signed::sign(
                    Request {
                        timestamp: seq * 1000 + ts,
                        operation: vec![7; 400],
                        horizon: 0,
                        replier: Some(3),
                    },
                    &client,
                );
                let used: usize = batch
                    .requests
                    .iter()
                    .map(ProtocolParams::request_bytes)
                    .sum();
                if used + ProtocolParams::request_bytes(&r) > p.max_batch_bytes {
                    break;
                }
                std::sync::Arc::make_mut(&mut batch.requests).push(r);
            }
            let pp = Signed::sign(
                PrePrepare {
                    view: 0,
                    seq,
                    digest: batch.digest(),
                    replica: 0,
                },
                &keys[0],
            );
            let prepares = (1..3u32)
                .map(|r| {
                    Signed::sign(
                        Prepare {
                            view: 0,
                            seq,
                            digest: batch.digest(),
                            replica: r,
                        },
                        &keys[r as usize],
                    )
                })
                .collect();
            proofs.push(PreparedProof {
                pre_prepare: pp,
                prepares,
            });
            bodies.push(batch);
        }
        let vcs: Vec<_> = (1..4u32)
            .map(|r| {
                Signed::sign(
                    ViewChange {
                        new_view: 1,
                        stable_seq: 0,
                        checkpoint_proof: vec![],
                        prepared: proofs.clone(),
                        replica: r,
                    },
                    &keys[r as usize],
                )
            })
            .collect();
        let largest = p.largest_frames(&m);
        let vc_len = bft_crypto::encoded_len(&Frame::Pbft(Message::ViewChange(
            vcs[0].clone(),
            bodies.clone(),
        )));
        assert!(
            vc_len <= largest.view_change,
            "{vc_len} > {}",
            largest.view_change
        );
        let nv = Signed::sign(
            NewView {
                view: 1,
                view_changes: vcs,
                pre_prepares: proofs.iter().map(|p| p.pre_prepare.clone()).collect(),
                replica: 1,
            },
            &keys[1],
        );
        let nv_len = bft_crypto::encoded_len(&Frame::Pbft(Message::NewView(nv, bodies)));
        assert!(
            nv_len <= largest.new_view,
            "{nv_len} > {}",
            largest.new_view
        );
        assert!(
            nv_len * 2 > largest.new_view,
            "the bound is not wildly loose"
        );
    }
}
