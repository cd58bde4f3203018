//! Digest replies (TOCS §5.1.1): the designated replica sends a long result in
//! full, the others its digest; a retransmission gets it in full from everyone;
//! the client accepts only a full result that hashes to the quorum's digest, and
//! designates another replica once its designated one failed to deliver.

mod common;

use bft_consensus::client::{Client, ClientOutput};
use bft_consensus::kv::{KvOp, KvResult};
use bft_consensus::messages::{Message, Reply, ReplyResult, Request};
use bft_consensus::reply::{sign_replies, verify_reply};
use bft_consensus::reply_result::result_digest;
use bft_consensus::VerifiedReply;
use bft_crypto::{KeyPair, Signed};
use common::*;
use std::time::Duration;

/// A put of `value` at `key` that designates `replier`.
fn put(client: &KeyPair, ts: u64, key: &str, value: &[u8], replier: u32) -> Signed<Request> {
    let op = KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
    };
    Signed::sign(
        Request {
            timestamp: ts,
            operation: op.encode(),
            horizon: 0,
            replier: Some(replier),
        },
        client,
    )
}

#[test]
fn requests_that_differ_only_in_their_replier_are_different_batches() {
    // The digest replicas agree on covers every signed field: a client that signed
    // two versions of one request cannot have replicas agree on one digest while
    // they execute different ones.
    let client = client_key(1);
    let digest = |replier| {
        bft_consensus::messages::Batch::new(vec![put(&client, 1, "a", b"v", replier)]).digest()
    };
    assert_ne!(digest(1), digest(2));
}

#[test]
fn requests_that_differ_only_in_their_signature_are_different_batches() {
    // Some backups take a pre-prepare's requests unchecked (`request_checks`): the
    // digest the group agrees on must bind the very bytes the others checked, or a
    // skipping backup could hold the agreed batch with a forged signature inside.
    let client = client_key(1);
    let honest = put(&client, 1, "a", b"v", 1);
    let mut forged = honest.clone();
    let mut bytes = forged.signature.to_bytes();
    bytes[40] ^= 1;
    forged.signature = bft_crypto::Signature::from_bytes(&bytes);
    let digest = |r| bft_consensus::messages::Batch::new(vec![r]).digest();
    assert_ne!(digest(honest), digest(forged));
}

/// The replies the cluster sent since `from`, checked, as (replica, full result).
fn checked_since(c: &Cluster, from: usize) -> Vec<(u32, VerifiedReply)> {
    c.replies[from..]
        .iter()
        .map(|(_, r)| (r.reply.replica, verify_reply(r.clone(), None).unwrap()))
        .collect()
}

#[test]
fn only_the_designated_replica_sends_a_long_result_and_a_retransmission_gets_it_from_all() {
    let mut c = Cluster::new(4);
    let client = client_key(1);
    let long = vec![b'x'; 100];
    c.client_sends(0, put(&client, 1, "a", &long, 2));
    c.run();
    // The second put's result is the first one's 100-byte value.
    let second = put(&client, 2, "a", b"short", 2);
    let expected = KvResult::Done {
        previous: Some(long),
    }
    .encode();
    let before = c.replies.len();
    c.client_sends(0, second.clone());
    c.run();
    let first_time = checked_since(&c, before);
    assert!(
        first_time.len() >= 4,
        "every replica replies: {first_time:?}"
    );
    for (replica, r) in &first_time {
        assert_eq!(
            r.result_digest(),
            result_digest(&expected),
            "replica {replica}"
        );
        if *replica == 2 {
            assert_eq!(r.result.full(), Some(&expected[..]));
        } else {
            assert!(
                r.result.full().is_none(),
                "replica {replica} sent it in full"
            );
        }
    }
    // The client asks every replica again: each answers from its client table, in
    // full.
    let before = c.replies.len();
    for id in 0..4 {
        c.client_sends(id, second.clone());
    }
    c.run();
    let again = checked_since(&c, before);
    let mut from: Vec<u32> = again.iter().map(|(r, _)| *r).collect();
    from.sort_unstable();
    from.dedup();
    assert_eq!(from, vec![0, 1, 2, 3]);
    for (replica, r) in &again {
        assert_eq!(r.result.full(), Some(&expected[..]), "replica {replica}");
    }
}

/// Drive `client` against `c`: send what it sends, feed it every reply, until it
/// accepts or nothing is left to deliver. Returns what it accepted.
fn drive(c: &mut Cluster, client: &mut Client, out: Vec<ClientOutput>) -> Option<Vec<u8>> {
    let mut pending = out;
    let mut seen = c.replies.len();
    loop {
        for o in std::mem::take(&mut pending) {
            match o {
                ClientOutput::Send {
                    to,
                    message: Message::Request(r),
                } => c.client_sends(to, r),
                ClientOutput::Broadcast {
                    message: Message::Request(r),
                } => {
                    for id in 0..4 {
                        c.client_sends(id, r.clone());
                    }
                }
                ClientOutput::Accepted { result, .. } => return Some(result),
                _ => {}
            }
        }
        if c.run() == 0 && c.replies.len() == seen {
            return None;
        }
        for (_, r) in checked_since(c, seen) {
            pending.extend(client.on_reply(&r));
        }
        seen = c.replies.len();
    }
}

#[test]
fn a_client_whose_designated_replica_crashed_gets_the_result_by_retransmitting_then_designates_another(
) {
    let mut c = Cluster::new(4);
    let key = client_key(1);
    let mut client = Client::new(key, c.group.members.clone(), 1, Duration::from_secs(1));
    let long = vec![b'y'; 64];
    let write = KvOp::Put {
        key: b"a".to_vec(),
        value: long.clone(),
    };
    let out = client.submit(Duration::ZERO, write.encode()).unwrap();
    let designated = client.designated().expect("four replicas");
    assert_ne!(designated, 0, "the primary is never designated");
    assert!(drive(&mut c, &mut client, out).is_some());

    // The replica the next request designates crashes: f+1 digests arrive, and the
    // one result in full never does, so the client waits...
    let designated = client.designated().expect("four replicas");
    c.crash(designated);
    let overwrite = KvOp::Put {
        key: b"a".to_vec(),
        value: b"z".to_vec(),
    };
    let out = client
        .submit(Duration::from_secs(1), overwrite.encode())
        .unwrap();
    assert_eq!(drive(&mut c, &mut client, out), None);
    assert!(client.is_busy());
    // ... until it retransmits, and the live replicas answer in full.
    let out = client.on_timeout(Duration::from_secs(10));
    let expected = KvResult::Done {
        previous: Some(long),
    }
    .encode();
    assert_eq!(drive(&mut c, &mut client, out), Some(expected));
    let next = client.designated().expect("four replicas");
    assert_ne!(next, designated, "the client designates another replica");
    assert_ne!(next, 0);
}

/// A reply from `from`, signed, as the client receives it.
fn reply(g: &Group, from: u32, client: &KeyPair, ts: u64, result: ReplyResult) -> VerifiedReply {
    let reply = Reply {
        view: 0,
        timestamp: ts,
        client: client.public(),
        replica: from,
        result,
        refusal: None,
        seq: 1,
        tentative: false,
    };
    let signed = sign_replies(&g.keys[from as usize], 0, from, vec![reply]).remove(0);
    verify_reply(signed, None).unwrap()
}

#[test]
fn a_full_result_that_does_not_hash_to_the_quorum_digest_is_never_accepted() {
    let g = Group::new(4);
    let key = client_key(2);
    let mut client = Client::new(key.clone(), g.members.clone(), 5, Duration::from_secs(1));
    client.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    let designated = client.designated().expect("four replicas");
    let others: Vec<u32> = (1..4).filter(|r| *r != designated).collect();
    let good = vec![1u8; 50];
    let evil = vec![2u8; 50];
    let digest = ReplyResult::Digest(result_digest(&good));
    // The designated replica lies in full; f+1 others vouch for the digest of the
    // true result: no result to accept.
    let lie = reply(&g, designated, &key, 5, ReplyResult::Full(evil.clone()));
    assert!(client.on_reply(&lie).is_empty());
    for r in &others {
        assert!(client
            .on_reply(&reply(&g, *r, &key, 5, digest.clone()))
            .is_empty());
    }
    // The timeout passes: the client retransmits, and designates another replica
    // for its next requests. The true result in full (as the retransmission gets
    // it) from a replica of the quorum is accepted.
    let out = client.on_timeout(Duration::from_secs(10));
    assert!(matches!(&out[0], ClientOutput::Broadcast { .. }), "{out:?}");
    let out = client.on_reply(&reply(
        &g,
        others[0],
        &key,
        5,
        ReplyResult::Full(good.clone()),
    ));
    assert!(
        matches!(&out[..], [ClientOutput::Accepted { timestamp: 5, result }] if *result == good),
        "{out:?}"
    );
    assert_ne!(client.designated(), Some(designated));
}

/// A client with one request outstanding, the replica it designated, and the
/// other backups.
fn waiting_client(g: &Group, key: &KeyPair) -> (Client, u32, Vec<u32>) {
    let mut client = Client::new(key.clone(), g.members.clone(), 5, Duration::from_secs(1));
    client.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    let designated = client.designated().expect("four replicas");
    let others = (1..4).filter(|r| *r != designated).collect();
    (client, designated, others)
}

#[test]
fn a_designated_replica_that_made_the_client_wait_past_the_grace_is_not_designated_next() {
    // A faulty designated replica could send the true result just before the
    // client's timer, every time: one wait past the grace is enough to move on.
    let g = Group::new(4);
    let key = client_key(3);
    let good = vec![1u8; 50];
    let digest = ReplyResult::Digest(result_digest(&good));
    for (late, moves_on) in [(false, false), (true, true)] {
        let (mut client, designated, others) = waiting_client(&g, &key);
        let grace = client.replier_grace();
        for r in &others {
            let quorum_part = reply(&g, *r, &key, 5, digest.clone());
            assert!(client.on_reply_at(Duration::ZERO, &quorum_part).is_empty());
        }
        // Moments after the quorum (a gateway hands replies over one replica at a
        // time), or past the grace.
        let at = if late {
            grace + Duration::from_millis(1)
        } else {
            Duration::from_millis(1)
        };
        let full = reply(&g, designated, &key, 5, ReplyResult::Full(good.clone()));
        let out = client.on_reply_at(at, &full);
        assert!(
            matches!(&out[..], [ClientOutput::Accepted { result, .. }] if *result == good),
            "{out:?}"
        );
        assert_eq!(
            client.designated() != Some(designated),
            moves_on,
            "late: {late}"
        );
    }
}

#[test]
fn short_results_come_in_full_from_everyone_and_keep_the_designation() {
    let g = Group::new(4);
    let key = client_key(4);
    let (mut client, designated, others) = waiting_client(&g, &key);
    let short = b"ok".to_vec();
    assert!(client
        .on_reply(&reply(
            &g,
            others[0],
            &key,
            5,
            ReplyResult::Full(short.clone())
        ))
        .is_empty());
    let out = client.on_reply(&reply(&g, others[1], &key, 5, ReplyResult::Full(short)));
    assert!(
        matches!(&out[..], [ClientOutput::Accepted { .. }]),
        "{out:?}"
    );
    assert_eq!(client.designated(), Some(designated));
}

#[test]
fn a_request_abandoned_while_waiting_for_its_full_result_moves_the_designation() {
    // A caller whose deadline passes before the client retransmits: without moving
    // on, every later request would designate the same crashed replica again.
    let g = Group::new(4);
    let key = client_key(5);
    let (mut client, designated, others) = waiting_client(&g, &key);
    for r in &others {
        let digest = ReplyResult::Digest(result_digest(&[3; 40]));
        assert!(client.on_reply(&reply(&g, *r, &key, 5, digest)).is_empty());
    }
    client.abandon();
    assert_ne!(client.designated(), Some(designated));
    // Abandoned before any quorum: no reason to move on.
    let (mut client, designated, _) = waiting_client(&g, &key);
    client.abandon();
    assert_eq!(client.designated(), Some(designated));
}
