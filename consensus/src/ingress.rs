//! One ingress for every driver: what arrives from the network as bytes becomes a
//! verified message or a typed rejection here, and nowhere else.
//!
//! The node's verify threads (or its event loop) and the simulator both call [`Ingress::admit_many`]
//! with the frames they received and the transport's word on who sent each one
//! ([`Origin`]). So the frame-size bound, decoding, the sender rule and signature
//! verification (batched the same way) are one piece of code, and a sweep of the
//! simulator tests exactly what the node accepts. Each rule the node once applied
//! on its own was a place where the two could disagree, and each such place hid a
//! bug the simulator could not see (issue 11).
//!
//! A frame is a PBFT message or one of the node's own (generals, reply routes; see
//! [`crate::frame`]): PBFT goes to the [`Validator`], the node's frames to their
//! own checks, and each kind's signatures are verified in one batch.
//!
//! The sender rule: a signature authenticates its author; the connection only says
//! who relayed it. A replica message (pre-prepare, vote, checkpoint, view-change,
//! new-view, state, heartbeat, generals) is therefore accepted over any replica's
//! connection, whoever signed it: retransmission and view changes relay other
//! replicas' signed messages by design. It is refused over a connection that is
//! not a replica's (a client's or a stranger's), which keeps a client from making
//! replicas do the work of checking certificates it replays. Client requests
//! are accepted from anyone (a backup relays them to the primary).

use crate::frame::{verify_node_frames, Frame, VerifiedFrame};
use crate::messages::{Message, MAX_MESSAGE_BYTES};
use crate::rejection::Rejection;
use crate::types::ReplicaId;
use crate::validate::{Validator, VerifiedMessage};

/// Who is at the other end of the connection a frame came on, as the transport
/// authenticated it (for the node: the noise handshake with the peer's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A member of the validator set.
    Replica(ReplicaId),
    /// Anyone else: a client, a gateway, a stranger.
    Other,
}

impl Origin {
    /// The replica this came from, if a replica.
    #[must_use]
    pub fn replica(self) -> Option<ReplicaId> {
        match self {
            Origin::Replica(r) => Some(r),
            Origin::Other => None,
        }
    }
}

/// A frame after the ingress: its content checked, or why it was refused.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub origin: Origin,
    /// The frame's type (its `type` metric label, see [`Frame::kinds`]).
    pub kind: &'static str,
    pub result: Result<VerifiedFrame, Rejection>,
}

impl Admitted {
    /// Whom a rejection is blamed on: the replica whose connection carried it. Never
    /// the replica the message claims to be from: a relayer or a stranger could have
    /// forged that claim.
    #[must_use]
    pub fn blame(&self) -> Option<ReplicaId> {
        self.origin.replica()
    }
}

/// The frame bound, decoding, the sender rule and signature checks.
#[derive(Clone, Debug)]
pub struct Ingress {
    validator: Validator,
    max_frame_bytes: usize,
    relay: RelayRule,
}

/// Whether a replica may relay another replica's signed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayRule {
    /// The signature authenticates the author; any replica may relay (the rule).
    SignatureAuthenticates,
    /// Test-only planted bug: a replica message must come over its signer's own
    /// connection. The node applied this rule until issue 11, silently undoing every
    /// catch-up rule that relays; the simulator must find the liveness failure.
    #[cfg(feature = "sim")]
    SignerMustBeTheConnection,
}

impl Ingress {
    /// An ingress with the transport's frame bound ([`MAX_MESSAGE_BYTES`]).
    #[must_use]
    pub fn new(validator: Validator) -> Self {
        Self::with_frame_limit(validator, MAX_MESSAGE_BYTES)
    }

    /// An ingress refusing frames above `max_frame_bytes` (the simulator lowers it to
    /// reach the bound with small messages).
    #[must_use]
    pub fn with_frame_limit(validator: Validator, max_frame_bytes: usize) -> Self {
        Self {
            validator,
            max_frame_bytes,
            relay: RelayRule::SignatureAuthenticates,
        }
    }

    /// Test-only: plant another relay rule (see [`RelayRule`]).
    #[cfg(feature = "sim")]
    #[must_use]
    pub fn with_relay_rule(mut self, relay: RelayRule) -> Self {
        self.relay = relay;
        self
    }

    #[must_use]
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    #[must_use]
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Admit one frame.
    #[must_use]
    pub fn admit(&self, origin: Origin, bytes: &[u8]) -> Admitted {
        self.admit_many(vec![(origin, bytes)])
            .pop()
            .expect("one frame in, one result out")
    }

    /// Admit frames received together: decode each, apply the sender rule, and check
    /// every signature, batched over all of them (PBFT messages with
    /// [`Validator::verify_many`], the node's frames apart). Results are in input
    /// order.
    #[must_use]
    pub fn admit_many(&self, frames: Vec<(Origin, &[u8])>) -> Vec<Admitted> {
        let mut results: Vec<Option<Admitted>> = Vec::with_capacity(frames.len());
        let mut pbft = Vec::with_capacity(frames.len());
        let mut node = Vec::new();
        for (origin, bytes) in frames {
            match self.decode(origin, bytes) {
                Ok(frame) => {
                    let meta = (results.len(), origin, frame.kind());
                    match frame {
                        Frame::Pbft(m) => pbft.push((meta, m)),
                        other => node.push((meta, other)),
                    }
                    results.push(None);
                }
                Err((kind, reason)) => results.push(Some(Admitted {
                    origin,
                    kind,
                    result: Err(reason),
                })),
            }
        }
        let (meta, msgs): (Vec<_>, Vec<_>) = pbft.into_iter().unzip();
        let verified = self.validator.verify_many(msgs);
        for ((slot, origin, kind), result) in meta.into_iter().zip(verified) {
            let result = result
                .and_then(|m| self.relay_allowed(origin, m))
                .map(VerifiedFrame::Pbft);
            results[slot] = Some(Admitted {
                origin,
                kind,
                result,
            });
        }
        let (meta, others): (Vec<_>, Vec<_>) = node.into_iter().unzip();
        let verified = verify_node_frames(&self.validator, others);
        for ((slot, origin, kind), result) in meta.into_iter().zip(verified) {
            results[slot] = Some(Admitted {
                origin,
                kind,
                result,
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every frame has a result"))
            .collect()
    }

    fn relay_allowed(
        &self,
        origin: Origin,
        msg: VerifiedMessage,
    ) -> Result<VerifiedMessage, Rejection> {
        match self.relay {
            RelayRule::SignatureAuthenticates => {
                let _ = origin; // any replica may relay
                Ok(msg)
            }
            #[cfg(feature = "sim")]
            RelayRule::SignerMustBeTheConnection => match (msg.sender(), origin) {
                (Some(signer), Origin::Replica(via)) if signer != via => {
                    Err(Rejection::RelayRefused { signer, via })
                }
                _ => Ok(msg),
            },
        }
    }

    /// The frame bound, the decoding and the sender rule, before any signature work.
    fn decode(&self, origin: Origin, bytes: &[u8]) -> Result<Frame, (&'static str, Rejection)> {
        if bytes.len() > self.max_frame_bytes {
            return Err((
                "oversized",
                Rejection::Oversized {
                    len: bytes.len(),
                    max: self.max_frame_bytes,
                },
            ));
        }
        let frame: Frame = bft_crypto::decode(bytes, self.max_frame_bytes)
            .map_err(|e| ("malformed", Rejection::Malformed(e.to_string())))?;
        if origin == Origin::Other && replicas_only(&frame) {
            return Err((frame.kind(), Rejection::WrongSender));
        }
        Ok(frame)
    }
}

/// Frames only replicas send (and relay). Requests come from clients (and from
/// backups relaying them); replies and reply routes are for clients and their
/// gateways.
fn replicas_only(frame: &Frame) -> bool {
    !matches!(
        frame,
        Frame::Pbft(
            Message::Request(_) | Message::Read(_) | Message::Reply(_) | Message::Replies(_)
        ) | Frame::ReplyRoute(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Prepare, Request};
    use crate::types::{Membership, ReplicaConfig};
    use bft_crypto::{Digest, KeyPair, Signed};

    fn setup() -> (Ingress, Vec<KeyPair>) {
        let keys: Vec<_> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        (
            Ingress::new(Validator::new(&ReplicaConfig::new(0, members))),
            keys,
        )
    }

    fn prepare(keys: &[KeyPair], replica: ReplicaId) -> Vec<u8> {
        let p = Signed::sign(
            Prepare {
                view: 0,
                seq: 1,
                digest: Digest([7; 32]),
                replica,
            },
            &keys[replica as usize],
        );
        crate::frame::encode_pbft(&Message::Prepare(p))
    }

    /// A signature authenticates its author; the connection only says who relayed it.
    #[test]
    fn a_replica_message_relayed_by_another_replica_is_admitted() {
        let (ingress, keys) = setup();
        let frame = prepare(&keys, 2);
        for origin in [Origin::Replica(2), Origin::Replica(1)] {
            let a = ingress.admit(origin, &frame);
            assert!(a.result.is_ok(), "{origin:?}: {:?}", a.result);
            let Ok(VerifiedFrame::Pbft(m)) = a.result else {
                panic!("{origin:?}: not a PBFT message");
            };
            assert_eq!(m.sender(), Some(2));
        }
    }

    #[test]
    fn a_replica_message_from_a_client_connection_is_refused_and_blames_nobody() {
        let (ingress, keys) = setup();
        let a = ingress.admit(Origin::Other, &prepare(&keys, 2));
        assert_eq!(a.blame(), None);
        assert_eq!(a.result.unwrap_err(), Rejection::WrongSender);
        let req = Signed::sign(
            Request {
                timestamp: 1,
                operation: vec![1],
                horizon: 0,
                replier: None,
            },
            &KeyPair::from_seed([9; 32]),
        );
        let frame = crate::frame::encode_pbft(&Message::Request(req));
        assert!(ingress.admit(Origin::Other, &frame).result.is_ok());
    }

    fn route(issued: u64) -> Vec<u8> {
        let r = Signed::sign(
            crate::frame::ReplyRoute {
                via: vec![1; 38],
                issued,
            },
            &KeyPair::from_seed([9; 32]),
        );
        crate::frame::encode(&Frame::ReplyRoute(r))
    }

    /// The node's frames pass the same door: a generals order only from a
    /// replica's connection, a reply route from anyone, in input order with PBFT.
    #[test]
    fn node_frames_follow_the_sender_rule_and_keep_their_place() {
        let (ingress, keys) = setup();
        let order = crate::generals::Chain::order(
            crate::generals::Instance {
                id: crate::generals::InstanceId {
                    commander: 0,
                    nonce: 1,
                },
                m: 1,
                start_ms: 0,
                round_ms: 100,
            },
            "attack".into(),
            &keys[0],
        );
        let order = crate::frame::encode(&Frame::Generals(order));
        let refused = ingress.admit(Origin::Other, &order);
        assert_eq!(refused.kind, "generals");
        assert_eq!(refused.result.unwrap_err(), Rejection::WrongSender);
        let good = prepare(&keys, 1);
        let route = route(5);
        let mut bad_route = route.clone();
        let last = bad_route.len() - 1;
        bad_route[last] ^= 1;
        let out = ingress.admit_many(vec![
            (Origin::Other, &route[..]),
            (Origin::Replica(1), &good[..]),
            (Origin::Replica(2), &order[..]),
            (Origin::Other, &bad_route[..]),
        ]);
        assert!(matches!(out[0].result, Ok(VerifiedFrame::ReplyRoute(_))));
        assert!(matches!(out[1].result, Ok(VerifiedFrame::Pbft(_))));
        assert!(matches!(out[2].result, Ok(VerifiedFrame::Generals(_))));
        assert_eq!(
            out[3].result.as_ref().unwrap_err(),
            &Rejection::BadSignature
        );
        let kinds: Vec<_> = out.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["reply_route", "prepare", "generals", "reply_route"]);
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_and_blamed_on_the_connection() {
        let (ingress, keys) = setup();
        let frame = prepare(&keys, 2);
        let small = Ingress::with_frame_limit(ingress.validator().clone(), frame.len() - 1);
        let a = small.admit(Origin::Replica(3), &frame);
        assert!(matches!(a.result, Err(Rejection::Oversized { .. })));
        assert_eq!(a.blame(), Some(3));
        let a = ingress.admit(Origin::Replica(1), &frame[..frame.len() - 1]);
        assert!(matches!(a.result, Err(Rejection::Malformed(_))));
        assert_eq!(a.kind, "malformed");
    }

    #[test]
    fn results_keep_input_order() {
        let (ingress, keys) = setup();
        let good = prepare(&keys, 1);
        let mut bad = prepare(&keys, 2);
        let last = bad.len() - 1;
        bad[last] ^= 1; // the signature's last byte
        let out = ingress.admit_many(vec![
            (Origin::Replica(1), &good[..]),
            (Origin::Replica(2), &bad[..]),
            (Origin::Other, &good[..]),
            (Origin::Replica(3), &good[..]),
        ]);
        let oks: Vec<bool> = out.iter().map(|a| a.result.is_ok()).collect();
        assert_eq!(oks, vec![true, false, false, true]);
    }
}
