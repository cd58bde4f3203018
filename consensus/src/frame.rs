//! What one frame between bftnode processes carries: a PBFT [`Message`], or one of
//! the things the node carries beside the protocol (signed-message generals, and a
//! client's reply route). The core, its [`crate::Validator`] and its Byzantine
//! wrappers see only [`Message`]; the envelope is opened by the [`crate::Ingress`],
//! which hands PBFT to the validator and checks the node's own frames here.
//!
//! On the wire a frame is its variant's tag and then the content: a PBFT message is
//! one byte longer than the message itself (see [`encode_pbft`]).

use crate::generals::{verify_chain, Chain, Report, VerifiedChain};
use crate::messages::Message;
use crate::rejection::Rejection;
use crate::types::Membership;
use crate::validate::{Validator, VerifiedMessage};
use bft_crypto::{Pending, Signable, SignatureBatch, Signed, Verified};
use serde::{Deserialize, Serialize};

/// One frame, decoded and not yet checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The PBFT protocol: requests, its three phases, checkpoints, view changes,
    /// state transfer, the failure detector's heartbeats and replies to clients.
    Pbft(Message),
    /// Signed-message generals (see [`crate::generals`]).
    Generals(Chain),
    GeneralsReport(Signed<Report>),
    /// A client's reply route (see [`ReplyRoute`]).
    ReplyRoute(Signed<ReplyRoute>),
}

/// The same variants as [`Frame`], borrowed, so a message is framed without
/// being moved or copied (serde writes `&T` as `T`: the bytes are equal).
#[derive(Serialize)]
enum FrameRef<'a> {
    Pbft(&'a Message),
}

/// A PBFT message's frame bytes.
///
/// # Panics
/// Never for our message types (bincode does not fail on them).
#[must_use]
pub fn encode_pbft(message: &Message) -> Vec<u8> {
    bft_crypto::encode(&FrameRef::Pbft(message)).expect("messages encode")
}

/// A frame's bytes.
///
/// # Panics
/// Never for our frame types (bincode does not fail on them).
#[must_use]
pub fn encode(frame: &Frame) -> Vec<u8> {
    bft_crypto::encode(frame).expect("frames encode")
}

impl Frame {
    /// A short stable name, used as the `type` label of message metrics: a PBFT
    /// message's own kind, or the node frame's.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Pbft(m) => m.kind(),
            Frame::Generals(_) => "generals",
            Frame::GeneralsReport(_) => "generals_report",
            Frame::ReplyRoute(_) => "reply_route",
        }
    }

    /// Every value [`Frame::kind`] returns, plus `malformed` and `oversized`
    /// (frames refused before they decode), so that metrics labelled by type exist
    /// at zero from start-up.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        Message::KINDS
            .iter()
            .chain(["generals", "generals_report", "reply_route"].iter())
            .chain(["malformed", "oversized"].iter())
            .copied()
    }
}

/// A frame whose signatures have all been checked.
#[derive(Clone, Debug)]
pub enum VerifiedFrame {
    Pbft(VerifiedMessage),
    Generals(VerifiedChain),
    GeneralsReport(Verified<Report>),
    ReplyRoute(Verified<ReplyRoute>),
}

/// <ROUTE, via, issued>σc: client `c` asks the replicas to send its replies over
/// the connection of transport peer `via` (raw libp2p PeerId bytes) instead of
/// dialling `c` itself. A gateway process that hosts many clients uses this to
/// multiplex them over one connection per replica, so a reply costs one frame on a
/// shared stream instead of a frame on a connection of its own.
///
/// Routing is a transport matter: the core never sees a route. It is signed by the
/// client so that nobody else can divert the client's replies, and `issued` (the
/// client's clock) orders its routes so a replayed older one cannot undo a newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRoute {
    #[serde(with = "bft_crypto::bytes")]
    pub via: Vec<u8>,
    pub issued: u64,
}
impl Signable for ReplyRoute {
    const DOMAIN: &'static str = "bftnode/reply-route/v1";
}

/// A node frame (not PBFT) whose structure passed, its signature queued.
pub(crate) enum StagedNodeFrame {
    Generals(VerifiedChain),
    GeneralsReport(Pending<Report>),
    ReplyRoute(Pending<ReplyRoute>),
}

/// Check the node's own frames (never [`Frame::Pbft`], which the validator checks):
/// a generals chain link by link, a report's signer against the group, and the
/// signatures of reports and routes in one batch. If that batch fails, each is
/// checked alone, so one bad signature costs its neighbours one more check each
/// (these frames are few: a route per client session, a report per generals
/// instance). Results are in input order.
pub(crate) fn verify_node_frames(
    validator: &Validator,
    frames: Vec<Frame>,
) -> Vec<Result<VerifiedFrame, Rejection>> {
    let members = validator.members();
    let mut batch = validator.signature_batch();
    let staged: Vec<Result<StagedNodeFrame, Rejection>> = frames
        .into_iter()
        .map(|f| stage(members, f, &mut batch))
        .collect();
    let ok = batch.verify().ok();
    staged
        .into_iter()
        .map(|s| {
            s.and_then(|s| match s {
                StagedNodeFrame::Generals(c) => Ok(VerifiedFrame::Generals(c)),
                StagedNodeFrame::GeneralsReport(p) => {
                    finish(p, ok.as_ref()).map(VerifiedFrame::GeneralsReport)
                }
                StagedNodeFrame::ReplyRoute(p) => {
                    finish(p, ok.as_ref()).map(VerifiedFrame::ReplyRoute)
                }
            })
        })
        .collect()
}

fn stage(
    members: &Membership,
    frame: Frame,
    batch: &mut SignatureBatch,
) -> Result<StagedNodeFrame, Rejection> {
    let bad = |_| Rejection::BadSignature;
    Ok(match frame {
        Frame::Pbft(_) => unreachable!("PBFT frames go to the validator"),
        Frame::Generals(c) => StagedNodeFrame::Generals(verify_chain(c, members)?),
        Frame::GeneralsReport(r) => {
            let claimed = r.payload.replica;
            match members.key(claimed) {
                Some(k) if k == r.signer => {}
                Some(_) => return Err(Rejection::SignerMismatch { claimed }),
                None => return Err(Rejection::UnknownSigner),
            }
            StagedNodeFrame::GeneralsReport(batch.take(r).map_err(bad)?)
        }
        Frame::ReplyRoute(r) => StagedNodeFrame::ReplyRoute(batch.take(r).map_err(bad)?),
    })
}

/// A queued signature, confirmed by the batch or, if the batch failed, checked alone.
fn finish<T: Signable>(
    pending: Pending<T>,
    ok: Option<&bft_crypto::BatchOk>,
) -> Result<Verified<T>, Rejection> {
    match ok {
        Some(ok) => Ok(pending.confirm(ok)),
        None => pending
            .into_signed()
            .verify()
            .map_err(|_| Rejection::BadSignature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Prepare;
    use bft_crypto::{Digest, KeyPair};

    fn prepare() -> Message {
        let key = KeyPair::from_seed([3; 32]);
        Message::Prepare(Signed::sign(
            Prepare {
                view: 1,
                seq: 2,
                digest: Digest([4; 32]),
                replica: 0,
            },
            &key,
        ))
    }

    #[test]
    fn a_pbft_frame_is_the_message_behind_one_tag_byte() {
        let m = prepare();
        let framed = encode_pbft(&m);
        assert_eq!(framed, encode(&Frame::Pbft(m.clone())));
        assert_eq!(framed[0], 0, "Pbft is the first variant");
        assert_eq!(&framed[1..], &bft_crypto::encode(&m).unwrap()[..]);
        let back: Frame = bft_crypto::decode(&framed, usize::MAX).unwrap();
        assert_eq!(back, Frame::Pbft(m));
    }

    #[test]
    fn every_kind_is_listed_once() {
        let kinds: Vec<_> = Frame::kinds().collect();
        let mut unique = kinds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len(), "{kinds:?}");
        for k in ["prepare", "generals", "reply_route", "malformed"] {
            assert!(kinds.contains(&k), "{k}");
        }
    }

    #[test]
    fn one_bad_route_in_a_batch_is_refused_alone() {
        let members = Membership::new(
            (0..4u8)
                .map(|i| KeyPair::from_seed([i + 1; 32]).public())
                .collect(),
        );
        let client = KeyPair::from_seed([9; 32]);
        let route = |issued| {
            Signed::sign(
                ReplyRoute {
                    via: vec![1, 2, 3],
                    issued,
                },
                &client,
            )
        };
        let mut forged = route(2);
        forged.payload.issued = 3; // signed for 2, claims 3
        let frames = vec![
            Frame::ReplyRoute(route(1)),
            Frame::ReplyRoute(forged),
            Frame::ReplyRoute(route(4)),
        ];
        let validator = Validator::new(&crate::ReplicaConfig::new(0, members));
        let results = verify_node_frames(&validator, frames);
        assert!(matches!(results[0], Ok(VerifiedFrame::ReplyRoute(_))));
        assert!(matches!(results[1], Err(Rejection::BadSignature)));
        assert!(matches!(results[2], Ok(VerifiedFrame::ReplyRoute(_))));
        // Sent again (a retransmission re-sends the route): the good one is
        // remembered, and its signature under the forged payload is still refused.
        let mut forged = route(1);
        forged.payload.issued = 5;
        let results = verify_node_frames(
            &validator,
            vec![Frame::ReplyRoute(route(1)), Frame::ReplyRoute(forged)],
        );
        assert!(matches!(results[0], Ok(VerifiedFrame::ReplyRoute(_))));
        assert!(matches!(results[1], Err(Rejection::BadSignature)));
    }

    #[test]
    fn a_report_signed_by_another_member_than_it_names_is_refused() {
        let keys: Vec<_> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        let report = |replica, key: &KeyPair| {
            Signed::sign(
                Report {
                    id: crate::generals::InstanceId {
                        commander: 0,
                        nonce: 1,
                    },
                    replica,
                    decided: None,
                },
                key,
            )
        };
        let validator = Validator::new(&crate::ReplicaConfig::new(0, members));
        let results = verify_node_frames(
            &validator,
            vec![
                Frame::GeneralsReport(report(2, &keys[2])),
                Frame::GeneralsReport(report(2, &keys[1])),
                Frame::GeneralsReport(report(7, &keys[1])),
            ],
        );
        assert!(matches!(results[0], Ok(VerifiedFrame::GeneralsReport(_))));
        assert!(matches!(
            results[1],
            Err(Rejection::SignerMismatch { claimed: 2 })
        ));
        assert!(matches!(results[2], Err(Rejection::UnknownSigner)));
    }
}
