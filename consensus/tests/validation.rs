//! Unit tests of every stateless validator: each rejection path is provoked once,
//! and each well-formed message passes.

mod common;

use bft_consensus::messages::{
    snapshot_digest, Batch, Checkpoint, Commit, FetchState, NewView, PrePrepare, Prepare, Reply,
    ReplyResult, StateSnapshot,
};
use bft_consensus::new_view::{index, plan};
use bft_consensus::reply::{sign_replies, sign_reply_batch};
use bft_consensus::{Message, Rejection, VerifiedMessage};
use bft_crypto::{Digest, Signed};
use common::*;

fn batch(n: u64) -> Batch {
    batch_of(
        (0..n)
            .map(|i| request(&client_key(1), i + 1, "k", "v"))
            .collect(),
    )
}

fn reject(msg: Message) -> Rejection {
    Group::new(4)
        .validator()
        .verify(msg)
        .expect_err("must be rejected")
}

#[test]
fn well_formed_messages_pass() {
    let g = Group::new(4);
    let v = g.validator();
    let b = batch(2);
    let ok = |m: Message| v.verify(m).unwrap_or_else(|e| panic!("rejected: {e}"));
    assert!(matches!(
        ok(Message::Request(request(&client_key(1), 1, "k", "v"))),
        VerifiedMessage::Request(_)
    ));
    assert!(matches!(
        ok(Message::PrePrepare(g.pre_prepare(0, 1, &b), b.clone())),
        VerifiedMessage::PrePrepare(..)
    ));
    assert!(matches!(
        ok(Message::Prepare(g.prepare(1, 0, 1, &b))),
        VerifiedMessage::Prepare(_)
    ));
    let commit = g.sign(
        2,
        Commit {
            view: 0,
            seq: 1,
            digest: b.digest(),
            replica: 2,
        },
    );
    assert!(matches!(
        ok(Message::Commit(commit)),
        VerifiedMessage::Commit(_)
    ));
    let cp = g.sign(
        3,
        Checkpoint {
            seq: 4,
            snapshot_digest: Digest([1; 32]),
            replica: 3,
        },
    );
    assert!(matches!(
        ok(Message::Checkpoint(cp)),
        VerifiedMessage::Checkpoint(_)
    ));
    let vc = g.view_change_message(1, 1, vec![g.cert(0, 1, &b)]);
    assert!(matches!(ok(vc), VerifiedMessage::ViewChange(..)));
    let fetch = g.sign(2, FetchState { seq: 4, replica: 2 });
    assert!(matches!(
        ok(Message::FetchState(fetch)),
        VerifiedMessage::FetchState(_)
    ));
    let reply = Reply {
        view: 0,
        timestamp: 1,
        client: client_key(1).public(),
        replica: 1,
        result: ReplyResult::Full(vec![1]),
        refusal: None,
        seq: 0,
        tentative: false,
    };
    let signed = sign_replies(&g.keys[1], 0, 1, vec![reply.clone()]).remove(0);
    assert!(matches!(
        ok(Message::Reply(signed)),
        VerifiedMessage::Reply(_)
    ));
    // Replica 2 cannot sign a root for replies that name replica 1, nor claim its
    // root is replica 1's.
    let by_other = sign_replies(&g.keys[2], 0, 1, vec![reply.clone()]).remove(0);
    assert_eq!(
        reject(Message::Reply(by_other)),
        Rejection::SignerMismatch { claimed: 1 }
    );
    // The same for a bundle of a batch's replies to one process.
    let two = vec![
        reply.clone(),
        Reply {
            timestamp: 2,
            ..reply.clone()
        },
    ];
    let bundle = |key| {
        let batch = sign_reply_batch(key, 0, 1, two.clone());
        match batch.address(|_| Some(())).remove(0).1 {
            Message::Replies(b) => b,
            other => panic!("two replies to one process travel as a bundle, not {other:?}"),
        }
    };
    assert!(matches!(
        ok(Message::Replies(bundle(&g.keys[1]))),
        VerifiedMessage::Replies(1, ref r) if r.len() == 2
    ));
    assert_eq!(
        reject(Message::Replies(bundle(&g.keys[2]))),
        Rejection::SignerMismatch { claimed: 1 }
    );
}

#[test]
fn tampered_signatures_are_rejected() {
    let g = Group::new(4);
    let mut r = request(&client_key(1), 1, "k", "v");
    r.payload.timestamp = 2;
    assert_eq!(reject(Message::Request(r)), Rejection::BadSignature);
    let mut p = g.prepare(1, 0, 1, &batch(1));
    p.payload.seq = 2;
    assert_eq!(reject(Message::Prepare(p)), Rejection::BadSignature);
}

#[test]
fn a_replica_cannot_speak_for_another() {
    let g = Group::new(4);
    let b = batch(1);
    // Replica 2 signs a prepare claiming to be replica 1.
    let forged = g.sign(
        2,
        Prepare {
            view: 0,
            seq: 1,
            digest: b.digest(),
            replica: 1,
        },
    );
    assert_eq!(
        reject(Message::Prepare(forged)),
        Rejection::SignerMismatch { claimed: 1 }
    );
    let unknown = g.sign(
        2,
        Prepare {
            view: 0,
            seq: 1,
            digest: b.digest(),
            replica: 9,
        },
    );
    assert_eq!(reject(Message::Prepare(unknown)), Rejection::UnknownSigner);
    // A client key is not a replica.
    let by_client = Signed::sign(
        Prepare {
            view: 0,
            seq: 1,
            digest: b.digest(),
            replica: 1,
        },
        &client_key(1),
    );
    assert_eq!(
        reject(Message::Prepare(by_client)),
        Rejection::SignerMismatch { claimed: 1 }
    );
}

#[test]
fn pre_prepare_batch_must_match_fit_and_be_signed_by_clients() {
    let g = Group::new(4);
    let b = batch(2);
    assert_eq!(
        reject(Message::PrePrepare(g.pre_prepare(0, 1, &b), batch(1))),
        Rejection::DigestMismatch
    );
    let big = batch(5); // batch_size is 4 in the fixture
    assert_eq!(
        reject(Message::PrePrepare(g.pre_prepare(0, 1, &big), big)),
        Rejection::BatchTooLarge { len: 5, max: 4 }
    );
    let mut forged = batch(2);
    std::sync::Arc::make_mut(&mut forged.requests)[1]
        .payload
        .operation = b"evil".to_vec();
    assert_eq!(
        reject(Message::PrePrepare(g.pre_prepare(0, 1, &forged), forged)),
        Rejection::BadSignature
    );
}

#[test]
fn checkpoints_must_be_aligned() {
    let g = Group::new(4);
    let cp = g.sign(
        1,
        Checkpoint {
            seq: 5,
            snapshot_digest: Digest([1; 32]),
            replica: 1,
        },
    );
    assert_eq!(
        reject(Message::Checkpoint(cp)),
        Rejection::MisalignedCheckpoint { seq: 5 }
    );
    let cp0 = g.sign(
        1,
        Checkpoint {
            seq: 0,
            snapshot_digest: Digest([1; 32]),
            replica: 1,
        },
    );
    assert_eq!(
        reject(Message::Checkpoint(cp0)),
        Rejection::MisalignedCheckpoint { seq: 0 }
    );
}

fn vc_with(g: &Group, edit: impl FnOnce(&mut bft_consensus::messages::ViewChange)) -> Message {
    let mut vc = g.view_change(1, 1, vec![g.cert(0, 1, &batch(1))]).payload;
    edit(&mut vc);
    let bodies = if vc.prepared.is_empty() {
        vec![]
    } else {
        vec![batch(1)]
    };
    Message::ViewChange(g.sign(1, vc), bodies)
}

#[test]
fn view_change_checkpoint_proofs_are_checked() {
    let g = Group::new(4);
    let d = Digest([7; 32]);
    let too_few = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d)[..2].to_vec();
        vc.prepared.clear();
    });
    assert_eq!(
        reject(too_few),
        Rejection::InvalidCheckpointProof("fewer than 2f+1 checkpoints")
    );
    let disagree = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d);
        vc.checkpoint_proof[1] = g.sign(
            1,
            Checkpoint {
                seq: 4,
                snapshot_digest: Digest([8; 32]),
                replica: 1,
            },
        );
        vc.prepared.clear();
    });
    assert_eq!(
        reject(disagree),
        Rejection::InvalidCheckpointProof("checkpoints disagree")
    );
    let too_many = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d);
        vc.checkpoint_proof.push(g.sign(
            3,
            Checkpoint {
                seq: 4,
                snapshot_digest: d,
                replica: 3,
            },
        ));
        vc.prepared.clear();
    });
    assert_eq!(
        reject(too_many),
        Rejection::InvalidCheckpointProof("more than 2f+1 checkpoints")
    );
    let dup = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d);
        vc.checkpoint_proof[1] = vc.checkpoint_proof[0].clone();
        vc.prepared.clear();
    });
    assert_eq!(
        reject(dup),
        Rejection::InvalidCheckpointProof("duplicate signer")
    );
    let forged = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d);
        vc.checkpoint_proof[2] = g.sign(
            1,
            Checkpoint {
                seq: 4,
                snapshot_digest: d,
                replica: 2,
            },
        );
        vc.prepared.clear();
    });
    assert_eq!(
        reject(forged),
        Rejection::InvalidCheckpointProof("bad signature")
    );
    let seq0 = vc_with(&g, |vc| vc.checkpoint_proof = g.checkpoint_proof(4, d));
    assert_eq!(
        reject(seq0),
        Rejection::InvalidCheckpointProof("proof for seq 0")
    );
    let good = vc_with(&g, |vc| {
        vc.stable_seq = 4;
        vc.checkpoint_proof = g.checkpoint_proof(4, d);
        vc.prepared = vec![g.cert(0, 5, &batch(1)).proof()];
    });
    assert!(g.validator().verify(good).is_ok());
}

type CertEdit = Box<dyn Fn(&mut bft_consensus::messages::PreparedCert)>;

#[test]
fn view_change_prepared_certificates_are_checked() {
    let g = Group::new(4);
    let b = batch(1);
    let cases: Vec<(CertEdit, &str)> = vec![
        (
            Box::new(|c| c.prepares.truncate(1)),
            "fewer than 2f prepares",
        ),
        (
            Box::new(|c| c.prepares[1] = c.prepares[0].clone()),
            "prepare from the primary or a duplicate",
        ),
        (
            Box::new(|c| c.prepares.push(Group::new(4).prepare(3, 0, 1, &batch(1)))),
            "more than 2f prepares",
        ),
        (
            Box::new(|c| c.prepares[0] = Group::new(4).prepare(0, 0, 1, &batch(1))),
            "prepare from the primary or a duplicate",
        ),
        (
            Box::new(|c| c.prepares[0] = Group::new(4).prepare(1, 0, 2, &batch(1))),
            "prepare does not match the pre-prepare",
        ),
        (
            Box::new(|c| {
                let g = Group::new(4);
                let b = batch(1);
                c.pre_prepare = g.sign(
                    1,
                    PrePrepare {
                        view: 0,
                        seq: 1,
                        digest: b.digest(),
                        replica: 0,
                    },
                );
            }),
            "bad pre-prepare signature",
        ),
        (
            Box::new(|c| {
                let g = Group::new(4);
                let b = batch(1);
                c.pre_prepare = g.sign(
                    1,
                    PrePrepare {
                        view: 0,
                        seq: 1,
                        digest: b.digest(),
                        replica: 1,
                    },
                );
            }),
            "pre-prepare not from the view's primary",
        ),
    ];
    for (edit, why) in cases {
        let mut cert = g.cert(0, 1, &b);
        edit(&mut cert);
        let msg = g.view_change_message(1, 1, vec![cert]);
        assert_eq!(reject(msg), Rejection::InvalidPreparedCert(why), "{why}");
    }
    // A certificate from the new view itself, or beyond the window, or twice for one seq.
    let same_view = g.view_change_message(1, 1, vec![g.cert(1, 1, &b)]);
    assert_eq!(
        reject(same_view),
        Rejection::InvalidPreparedCert("certificate view is not below the new view")
    );
    let far = g.view_change_message(1, 1, vec![g.cert(0, 17, &b)]);
    assert_eq!(
        reject(far),
        Rejection::InvalidPreparedCert("sequence outside the window")
    );
    let twice = g.view_change_message(1, 2, vec![g.cert(0, 1, &b), g.cert(1, 1, &batch(2))]);
    assert_eq!(
        reject(twice),
        Rejection::InvalidViewChange("two certificates for one sequence number")
    );
    let to_zero = g.view_change_message(1, 0, vec![]);
    assert_eq!(
        reject(to_zero),
        Rejection::InvalidViewChange("view change to view 0")
    );
}

/// Issue 11, defect 3: batches travel beside the signed view-change, once each; the
/// validator refuses a missing, an extra, a repeated or an invalid one.
#[test]
fn view_change_bodies_are_exactly_the_named_batches() {
    let g = Group::new(4);
    let (b1, b2) = (batch(1), batch(2));
    let certs = vec![
        g.cert(0, 1, &b1),
        g.cert(0, 2, &b2),
        g.cert(0, 3, &Batch::default()),
    ];
    let vc = g.view_change(1, 1, certs);
    let with = |bodies: Vec<Batch>| reject(Message::ViewChange(vc.clone(), bodies));
    assert!(g
        .validator()
        .verify(Message::ViewChange(
            vc.clone(),
            vec![b1.clone(), b2.clone()]
        ))
        .is_ok());
    let bad = Rejection::InvalidViewChange;
    assert_eq!(
        with(vec![b1.clone()]),
        bad("a certificate's batch is missing")
    );
    assert_eq!(
        with(vec![b1.clone(), b2.clone(), batch(3)]),
        bad("a batch beside it that no certificate names")
    );
    assert_eq!(
        with(vec![b1.clone(), b2.clone(), b2.clone()]),
        bad("the same batch twice beside it")
    );
    assert_eq!(
        with(vec![b1.clone(), b2.clone(), Batch::default()]),
        bad("a body for the null request")
    );
    let mut forged = b2.clone();
    std::sync::Arc::make_mut(&mut forged.requests)[0]
        .payload
        .timestamp += 100;
    assert_eq!(with(vec![b1, forged]), bad("a batch beside it is invalid"));
}

/// A valid new-view for view 1 from three view-changes, one carrying a certificate for seq 2.
fn new_view(g: &Group) -> NewView {
    let b = batch(1);
    let vcs = vec![
        g.view_change(0, 1, vec![]),
        g.view_change(2, 1, vec![g.cert(0, 2, &b)]),
        g.view_change(3, 1, vec![]),
    ];
    let p = plan(&vcs, &index([&b])).unwrap();
    let pre_prepares = p
        .entries
        .iter()
        .map(|(seq, digest, _)| {
            g.sign(
                1,
                PrePrepare {
                    view: 1,
                    seq: *seq,
                    digest: *digest,
                    replica: 1,
                },
            )
        })
        .collect();
    NewView {
        view: 1,
        view_changes: vcs,
        pre_prepares,
        replica: 1,
    }
}

#[test]
fn new_view_is_recomputed_and_checked() {
    let g = Group::new(4);
    let nv = new_view(&g);
    let plan = plan(&nv.view_changes, &index([&batch(1)])).unwrap();
    // Seq 1 had no certificate: null request; seq 2 carries the prepared batch.
    assert_eq!(plan.entries.len(), 2);
    assert!(plan.entries[0].2.is_empty());
    assert_eq!(plan.entries[1].2, batch(1));
    let ok = g
        .validator()
        .verify(Message::NewView(g.sign(1, nv.clone()), vec![batch(1)]));
    assert!(matches!(ok, Ok(VerifiedMessage::NewView(..))));
    let bad = Rejection::InvalidNewView;
    let signed = || g.sign(1, nv.clone());
    assert_eq!(
        reject(Message::NewView(signed(), vec![])),
        bad("a chosen batch is missing")
    );
    assert_eq!(
        reject(Message::NewView(signed(), vec![batch(1), batch(2)])),
        bad("a batch beside it that O does not use")
    );

    let check = |edit: &dyn Fn(&mut NewView), signer: u32| {
        let mut m = nv.clone();
        edit(&mut m);
        reject(Message::NewView(g.sign(signer, m), vec![batch(1)]))
    };
    assert_eq!(
        check(&|m| m.replica = 2, 2),
        Rejection::NotPrimary {
            replica: 2,
            view: 1
        }
    );
    assert_eq!(
        check(
            &|m| {
                m.view_changes.pop();
            },
            1
        ),
        Rejection::InvalidNewView("fewer than 2f+1 view-changes")
    );
    assert_eq!(
        check(&|m| m.view_changes[2] = m.view_changes[1].clone(), 1),
        Rejection::InvalidNewView("two view-changes from one replica")
    );
    assert_eq!(
        check(
            &|m| m.view_changes[0] = Group::new(4).view_change(0, 2, vec![]),
            1
        ),
        Rejection::InvalidNewView("view-change for another view")
    );
    // The primary drops the prepared batch: O no longer matches V.
    assert_eq!(
        check(
            &|m| {
                m.pre_prepares.pop();
            },
            1
        ),
        Rejection::InvalidNewView("pre-prepare set differs from the one computed from V")
    );
    assert_eq!(
        check(
            &|m| {
                let g = Group::new(4);
                m.pre_prepares[1] = g.sign(
                    1,
                    PrePrepare {
                        view: 1,
                        seq: 2,
                        digest: batch(2).digest(),
                        replica: 1,
                    },
                );
            },
            1
        ),
        Rejection::InvalidNewView("pre-prepare set differs from the one computed from V")
    );
}

#[test]
fn state_snapshots_must_match_their_proof() {
    let g = Group::new(4);
    let snapshot = empty_snapshot();
    let digest = snapshot_digest(&snapshot);
    let good = StateSnapshot {
        seq: 4,
        proof: g.checkpoint_proof(4, digest),
        snapshot: snapshot.clone().into(),
        replica: 2,
    };
    assert!(g
        .validator()
        .verify(Message::State(g.sign(2, good.clone())))
        .is_ok());
    let mut tampered = good.clone();
    std::sync::Arc::make_mut(&mut tampered.snapshot).push(0);
    assert_eq!(
        reject(Message::State(g.sign(2, tampered))),
        Rejection::BadSnapshot
    );
    let mut unproven = good;
    unproven.proof.truncate(2);
    assert_eq!(
        reject(Message::State(g.sign(2, unproven))),
        Rejection::InvalidCheckpointProof("fewer than 2f+1 checkpoints")
    );
}

#[test]
fn garbage_bytes_never_decode_into_a_message() {
    for len in [0usize, 1, 7, 64, 300] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
        let max = bft_consensus::messages::MAX_MESSAGE_BYTES;
        assert!(bft_crypto::decode::<Message>(&bytes, max).is_err());
        assert!(bft_crypto::decode::<bft_consensus::Frame>(&bytes, max).is_err());
    }
}

/// A bad signature among many: the halves are checked again, down to the bad one;
/// every answer is what a check of that message alone says.
#[test]
fn verify_many_finds_bad_signatures_among_many_by_halves() {
    let g = Group::new(4);
    let v = g.validator();
    let b = batch(1);
    let mut msgs: Vec<Message> = (1..=40u64)
        .map(|ts| Message::Request(request(&client_key((ts % 7) as u8), ts, "k", "v")))
        .collect();
    msgs.push(Message::Prepare(g.prepare(1, 0, 1, &b)));
    for bad in [3usize, 17, 29] {
        if let Message::Request(r) = &mut msgs[bad] {
            r.payload.timestamp += 1_000;
        }
    }
    let alone: Vec<bool> = msgs.iter().map(|m| v.verify(m.clone()).is_ok()).collect();
    let together: Vec<bool> = v.verify_many(msgs).iter().map(Result::is_ok).collect();
    assert_eq!(together, alone);
    assert_eq!(together.iter().filter(|ok| !**ok).count(), 3);
}

#[test]
fn verify_many_batches_requests_and_keeps_order() {
    let g = Group::new(4);
    let v = g.validator();
    let b = batch(1);
    let mut bad = request(&client_key(2), 1, "k", "v");
    bad.payload.timestamp = 5;
    let msgs = vec![
        Message::Request(request(&client_key(1), 1, "k", "v")),
        Message::Prepare(g.prepare(1, 0, 1, &b)),
        Message::Request(bad),
        Message::Request(request(&client_key(3), 1, "k", "v")),
    ];
    let out = v.verify_many(msgs);
    assert!(matches!(out[0], Ok(VerifiedMessage::Request(_))));
    assert!(matches!(out[1], Ok(VerifiedMessage::Prepare(_))));
    assert_eq!(out[2].as_ref().unwrap_err(), &Rejection::BadSignature);
    assert!(matches!(out[3], Ok(VerifiedMessage::Request(_))));
}
