//! Byzantine clients (issue 12): anybody can make a key and talk to the replicas,
//! so the adversarial family adds clients that send what an honest `Client` never
//! would. Each frame they send goes through the same ingress as everything else.

use crate::kv::KvOp;
use crate::messages::{Batch, Message, PrePrepare, Request};
use crate::types::{ReplicaId, RequestId, Seq};
use bft_crypto::{KeyPair, PublicKey, Signature, Signed};
use rand::Rng;

/// What one rogue frame was, for the trace.
#[derive(Clone, Copy, Debug)]
pub enum RogueKind {
    /// Random bytes.
    Garbage,
    /// A request whose signature was damaged after signing.
    BadSignature,
    /// A request claiming a small-order key (the identity point), which every
    /// signature check must refuse.
    SmallOrderKey,
    /// A request larger than a batch may be.
    Huge,
    /// A well-signed request with extreme timestamp and horizon.
    Extreme,
    /// A well-signed request with a value of a few KiB.
    Bulky,
    /// A replica message (a pre-prepare) from a client's connection, signed by the
    /// client's key.
    PosingAsReplica,
}

/// A Byzantine client: its key and its next timestamp.
pub struct Rogue {
    key: KeyPair,
    next_timestamp: u64,
}

impl Rogue {
    #[must_use]
    pub fn new(key: KeyPair) -> Self {
        Self {
            key,
            next_timestamp: 1,
        }
    }

    fn request(&mut self, timestamp: u64, horizon: Seq, value: Vec<u8>) -> Signed<Request> {
        let op = KvOp::Put {
            key: b"rogue".to_vec(),
            value,
        };
        Signed::sign(
            Request {
                timestamp,
                operation: op.encode(),
                horizon,
                // Nobody, a replica that does not exist, or replica 0, in turn
                // (drawn from the timestamp, not the RNG, to keep pinned seeds).
                replier: match timestamp % 3 {
                    0 => None,
                    1 => Some(ReplicaId::MAX),
                    _ => Some(0),
                },
            },
            &self.key,
        )
    }

    /// One nasty frame, and the request it carries if replicas may rightly execute
    /// it (the checker must know it was issued).
    pub fn frame(
        &mut self,
        rng: &mut impl Rng,
        max_batch_bytes: usize,
    ) -> (RogueKind, Vec<u8>, Option<RequestId>) {
        let encode = crate::frame::encode_pbft;
        let ts = self.next_timestamp;
        self.next_timestamp += 1;
        match rng.gen_range(0..7) {
            0 => {
                let len = rng.gen_range(1..200);
                let bytes = (0..len).map(|_| rng.gen()).collect();
                (RogueKind::Garbage, bytes, None)
            }
            1 => {
                let mut req = self.request(ts, 0, b"x".to_vec());
                let mut sig = req.signature.to_bytes();
                sig[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
                req.signature = Signature::from_bytes(&sig);
                (
                    RogueKind::BadSignature,
                    encode(&Message::Request(req)),
                    None,
                )
            }
            2 => {
                let mut req = self.request(ts, 0, b"x".to_vec());
                let mut identity = [0u8; 32];
                identity[0] = 1;
                req.signer = PublicKey(identity);
                (
                    RogueKind::SmallOrderKey,
                    encode(&Message::Request(req)),
                    None,
                )
            }
            3 => {
                let req = self.request(ts, 0, vec![7; max_batch_bytes + 1]);
                (RogueKind::Huge, encode(&Message::Request(req)), None)
            }
            4 => {
                let timestamp = u64::MAX - rng.gen_range(0..4);
                let horizon = if rng.gen_bool(0.5) { Seq::MAX } else { 0 };
                let req = self.request(timestamp, horizon, b"x".to_vec());
                let id = (req.signer, timestamp);
                (RogueKind::Extreme, encode(&Message::Request(req)), Some(id))
            }
            5 => {
                let req = self.request(ts, 0, vec![3; rng.gen_range(1024..8192)]);
                let id = (req.signer, ts);
                (RogueKind::Bulky, encode(&Message::Request(req)), Some(id))
            }
            _ => {
                let batch = Batch::default();
                let pp = Signed::sign(
                    PrePrepare {
                        view: rng.gen_range(0..3),
                        seq: rng.gen_range(1..20),
                        digest: batch.digest(),
                        replica: rng.gen_range(0..4),
                    },
                    &self.key,
                );
                let frame = encode(&Message::PrePrepare(pp, batch));
                (RogueKind::PosingAsReplica, frame, None)
            }
        }
    }
}
