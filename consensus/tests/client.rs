//! The client state machine (§4.1): f+1 matching replies, retransmission to all.

mod common;

use bft_consensus::client::{Client, ClientError, ClientOutput};
use bft_consensus::messages::{Message, Reply, ReplyResult};
use bft_consensus::reply::{sign_replies, verify_reply};
use bft_consensus::VerifiedReply;
use common::*;
use std::time::Duration;

fn reply(
    g: &Group,
    from: u32,
    client: &bft_crypto::KeyPair,
    ts: u64,
    view: u64,
    result: &[u8],
) -> VerifiedReply {
    let reply = Reply {
        view,
        timestamp: ts,
        client: client.public(),
        replica: from,
        result: ReplyResult::Full(result.to_vec()),
        refusal: None,
        seq: 0,
        tentative: false,
    };
    let signed = sign_replies(&g.keys[from as usize], view, from, vec![reply]).remove(0);
    verify_reply(signed, None).unwrap()
}

#[test]
fn accepts_on_f_plus_1_matching_replies_only() {
    let g = Group::new(4);
    let key = client_key(1);
    let mut c = Client::new(
        key.clone(),
        g.members.clone(),
        10,
        Duration::from_millis(500),
    );
    let out = c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Send { to: 0, message: Message::Request(r) } if r.payload.timestamp == 10)
    );
    assert_eq!(
        c.submit(Duration::ZERO, b"again".to_vec()),
        Err(ClientError::Busy)
    );
    // One reply, then a conflicting one (a faulty replica), then a duplicate: not enough.
    assert!(c.on_reply(&reply(&g, 1, &key, 10, 0, b"ok")).is_empty());
    assert!(c.on_reply(&reply(&g, 2, &key, 10, 0, b"evil")).is_empty());
    assert!(c.on_reply(&reply(&g, 1, &key, 10, 0, b"ok")).is_empty());
    // A reply for another timestamp or client is ignored.
    assert!(c.on_reply(&reply(&g, 3, &key, 9, 0, b"ok")).is_empty());
    assert!(c
        .on_reply(&reply(&g, 3, &client_key(2), 10, 0, b"ok"))
        .is_empty());
    let out = c.on_reply(&reply(&g, 3, &key, 10, 2, b"ok"));
    assert_eq!(
        out,
        vec![ClientOutput::Accepted {
            timestamp: 10,
            result: b"ok".to_vec()
        }]
    );
    assert!(!c.is_busy());
    // The next request goes to the primary of the lowest view among the f+1 (view 0).
    assert_eq!(c.view(), 0);
    let out = c.submit(Duration::ZERO, b"next".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Send { message: Message::Request(r), .. } if r.payload.timestamp == 11)
    );
}

#[test]
fn retransmits_to_all_replicas_on_timeout() {
    let g = Group::new(4);
    let mut c = Client::new(
        client_key(1),
        g.members.clone(),
        1,
        Duration::from_millis(500),
    );
    c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    assert!(
        c.on_timeout(Duration::from_millis(499)).is_empty(),
        "not yet due"
    );
    let out = c.on_timeout(Duration::from_millis(500));
    assert!(
        matches!(&out[0], ClientOutput::Broadcast { message: Message::Request(r) } if r.payload.timestamp == 1)
    );
    // The next expiry waits twice as long (RFC 6298 §5.5).
    assert_eq!(
        out[1],
        ClientOutput::SetTimer {
            at: Duration::from_millis(1500)
        }
    );
}

#[test]
fn learns_the_view_from_replies() {
    let g = Group::new(4);
    let key = client_key(1);
    let mut c = Client::new(
        key.clone(),
        g.members.clone(),
        1,
        Duration::from_millis(500),
    );
    c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    c.on_reply(&reply(&g, 1, &key, 1, 2, b"r"));
    c.on_reply(&reply(&g, 2, &key, 1, 2, b"r"));
    assert_eq!(c.view(), 2);
    let out = c.submit(Duration::ZERO, b"op2".to_vec()).unwrap();
    assert!(matches!(&out[0], ClientOutput::Send { to: 2, .. }));
}

#[test]
fn an_abandoned_request_frees_the_client_and_its_late_replies_are_ignored() {
    let g = Group::new(4);
    let key = client_key(1);
    let mut c = Client::new(
        key.clone(),
        g.members.clone(),
        5,
        Duration::from_millis(500),
    );
    c.submit(Duration::ZERO, b"lost".to_vec()).unwrap();
    c.abandon();
    assert!(!c.is_busy());
    assert!(
        c.on_timeout(Duration::from_secs(9)).is_empty(),
        "no retransmission"
    );
    let out = c.submit(Duration::ZERO, b"next".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Send { message: Message::Request(r), .. } if r.payload.timestamp == 6)
    );
    // f+1 late replies for the abandoned timestamp are not taken as the answer.
    assert!(c.on_reply(&reply(&g, 1, &key, 5, 0, b"old")).is_empty());
    assert!(c.on_reply(&reply(&g, 2, &key, 5, 0, b"old")).is_empty());
    assert!(c.is_busy());
}

/// Defect 7: f+1 replicas refuse the request as expired (its horizon passed): the
/// client signs the same operation again with the fresh horizon and sends it to all.
/// One refusal (a faulty replica's) is not enough.
#[test]
fn an_expired_request_is_signed_again_with_a_fresh_horizon() {
    use bft_consensus::messages::Refusal;
    let g = Group::new(4);
    let key = client_key(1);
    let mut c = Client::new(
        key.clone(),
        g.members.clone(),
        5,
        Duration::from_millis(500),
    );
    let out = c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Send { message: Message::Request(r), .. } if r.payload.horizon == 0)
    );
    let refused = |from: u32, ts: u64, seq: u64, refusal: Refusal| {
        let reply = Reply {
            view: 0,
            timestamp: ts,
            client: key.public(),
            replica: from,
            result: ReplyResult::default(),
            refusal: Some(refusal),
            seq,
            tentative: false,
        };
        let signed = sign_replies(&g.keys[from as usize], 0, from, vec![reply]).remove(0);
        verify_reply(signed, None).unwrap()
    };
    let expired = |seq| Refusal::Expired { seq };
    assert!(c.on_reply(&refused(1, 5, 900, expired(900))).is_empty());
    assert!(
        c.on_reply(&refused(2, 5, 99, expired(99))).is_empty(),
        "they differ: no f+1 yet"
    );
    let out = c.on_reply(&refused(3, 5, 900, expired(900)));
    assert_eq!(out[0], ClientOutput::Reissued { timestamp: 6 });
    assert!(matches!(
        &out[1],
        ClientOutput::Broadcast { message: Message::Request(r) }
            if r.payload.timestamp == 6 && r.payload.horizon == 900 && r.payload.operation == b"op"
    ));
    assert!(c.is_busy(), "still waiting for the result");
    // Retransmitted, then refused as expired: an earlier copy may have executed, so
    // the client does not sign it again (it could execute twice).
    c.on_timeout(Duration::from_secs(1));
    assert!(c.on_reply(&refused(1, 6, 990, expired(990))).is_empty());
    let out = c.on_reply(&refused(3, 6, 990, expired(990)));
    assert_eq!(out, vec![ClientOutput::Unknown { timestamp: 6 }]);
    c.submit(Duration::from_secs(1), b"op2".to_vec()).unwrap();
    // Executed, but asked again too late: f+1 say the reply is gone.
    assert!(c.on_reply(&refused_at(&g, &key, 1, 7)).is_empty());
    let out = c.on_reply(&refused_at(&g, &key, 2, 7));
    assert_eq!(out, vec![ClientOutput::Lost { timestamp: 7 }]);
    assert!(!c.is_busy());
}

fn refused_at(g: &Group, key: &bft_crypto::KeyPair, from: u32, ts: u64) -> VerifiedReply {
    let reply = Reply {
        view: 0,
        timestamp: ts,
        client: key.public(),
        replica: from,
        result: ReplyResult::default(),
        refusal: Some(bft_consensus::messages::Refusal::ReplyNotKept),
        seq: 950,
        tentative: false,
    };
    let signed = sign_replies(&g.keys[from as usize], 0, from, vec![reply]).remove(0);
    verify_reply(signed, None).unwrap()
}

/// Run one request from `at` that f+1 replicas answer `rtt` later; returns the
/// deadline the request was given.
fn round(
    c: &mut Client,
    g: &Group,
    key: &bft_crypto::KeyPair,
    ts: u64,
    at: Duration,
    rtt: Duration,
) -> Duration {
    let out = c.submit(at, b"op".to_vec()).unwrap();
    let deadline = out
        .iter()
        .find_map(|o| match o {
            ClientOutput::SetTimer { at } => Some(*at),
            _ => None,
        })
        .expect("a request sets its retransmission timer");
    assert!(c
        .on_reply_at(at + rtt, &reply(g, 1, key, ts, 0, b"ok"))
        .is_empty());
    let out = c.on_reply_at(at + rtt, &reply(g, 2, key, ts, 0, b"ok"));
    assert!(matches!(out[..], [ClientOutput::Accepted { timestamp, .. }] if timestamp == ts));
    deadline
}

#[test]
fn the_retransmission_timeout_follows_the_latency_seen_and_never_drops_below_the_configured_one() {
    let g = Group::new(4);
    let key = client_key(1);
    let floor = Duration::from_secs(1);
    let mut c = Client::new(key.clone(), g.members.clone(), 1, floor);
    // Fast answers: the configured timeout stands.
    let mut now = Duration::ZERO;
    for ts in 1..=5 {
        assert_eq!(
            round(&mut c, &g, &key, ts, now, Duration::from_millis(5)) - now,
            floor
        );
        now += Duration::from_secs(1);
    }
    // Overload: each request takes 1.6 s, longer than the configured timeout. A fixed
    // timer would send every one of them again to every replica; the timeout grows
    // past the latency instead.
    for ts in 6..=30 {
        round(&mut c, &g, &key, ts, now, Duration::from_millis(1600));
        now += Duration::from_secs(2);
    }
    let rto = c.retransmit_timeout();
    assert!(rto > Duration::from_millis(1600), "{rto:?}");
    assert!(rto <= floor * 32, "{rto:?}");
    let deadline = round(&mut c, &g, &key, 31, now, Duration::from_millis(1600));
    assert_eq!(deadline - now, rto);
    // Back to fast answers: it comes down again, to the floor and not below.
    for ts in 32..=120 {
        now += Duration::from_secs(2);
        round(&mut c, &g, &key, ts, now, Duration::from_millis(5));
    }
    assert_eq!(c.retransmit_timeout(), floor);
}

/// Each expiry doubles the timeout (RFC 6298 §5.5); a request answered after a
/// retransmission teaches no round trip (Karn), so the doubled timeout stands for
/// the next request (§5.7) until one is answered without retransmission.
#[test]
fn an_expiry_doubles_the_timeout_until_a_fresh_sample() {
    let g = Group::new(4);
    let key = client_key(1);
    let floor = Duration::from_secs(1);
    let mut c = Client::new(key.clone(), g.members.clone(), 1, floor);
    c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    let out = c.on_timeout(floor);
    assert!(out
        .iter()
        .any(|o| matches!(o, ClientOutput::Broadcast { .. })));
    assert!(out
        .iter()
        .any(|o| matches!(o, ClientOutput::SetTimer { at } if *at == floor * 3)));
    assert!(c.on_timeout(floor * 2).is_empty(), "not due before 3 s");
    let out = c.on_timeout(floor * 3);
    assert!(out
        .iter()
        .any(|o| matches!(o, ClientOutput::SetTimer { at } if *at == floor * 7)));
    // Answered 20 s after the first send: which copy was answered is unknown (Karn).
    c.on_reply_at(Duration::from_secs(20), &reply(&g, 1, &key, 1, 0, b"ok"));
    let out = c.on_reply_at(Duration::from_secs(20), &reply(&g, 2, &key, 1, 0, b"ok"));
    assert!(matches!(out[..], [ClientOutput::Accepted { .. }]));
    assert_eq!(c.retransmit_timeout(), floor * 4, "backed off twice");
    // The next request, answered at once, is a fresh sample: back to the floor.
    let now = Duration::from_secs(30);
    let deadline = round(&mut c, &g, &key, 2, now, Duration::from_millis(5));
    assert_eq!(
        deadline - now,
        floor * 4,
        "sent under the backed-off timeout"
    );
    assert_eq!(c.retransmit_timeout(), floor);
}

/// A driver that gives up on a request after some time caps the timeout below it,
/// and giving up forgets what was learnt: otherwise a client that learnt a long
/// round trip would give up before ever sending to every replica, the backups would
/// never wait for its requests, and nothing would replace a crashed primary.
#[test]
fn the_ceiling_bounds_the_timeout_and_abandoning_a_request_resets_it() {
    let g = Group::new(4);
    let key = client_key(1);
    let floor = Duration::from_secs(1);
    let mut c = Client::new(key.clone(), g.members.clone(), 1, floor)
        .with_retransmit_ceiling(Duration::from_secs(5));
    let mut now = Duration::ZERO;
    for ts in 1..=30 {
        let rtt = Duration::from_secs(if ts % 2 == 0 { 2 } else { 6 });
        round(&mut c, &g, &key, ts, now, rtt);
        now += Duration::from_secs(10);
    }
    assert_eq!(c.retransmit_timeout(), Duration::from_secs(5));
    c.submit(now, b"op".to_vec()).unwrap();
    c.abandon();
    assert_eq!(c.retransmit_timeout(), floor);
}

/// A reply to a read-only request: each replica answers from its own position.
fn read_reply(
    g: &Group,
    from: u32,
    key: &bft_crypto::KeyPair,
    ts: u64,
    seq: u64,
    result: &[u8],
) -> VerifiedReply {
    let reply = Reply {
        view: 0,
        timestamp: ts,
        client: key.public(),
        replica: from,
        result: ReplyResult::Full(result.to_vec()),
        refusal: None,
        seq,
        tentative: false,
    };
    let signed = sign_replies(&g.keys[from as usize], 0, from, vec![reply]).remove(0);
    verify_reply(signed, None).unwrap()
}

fn read_client(g: &Group) -> (bft_crypto::KeyPair, Client) {
    let key = client_key(1);
    let c = Client::new(
        key.clone(),
        g.members.clone(),
        10,
        Duration::from_millis(500),
    );
    (key, c)
}

#[test]
fn a_read_goes_to_every_replica_and_needs_2f_plus_1_matching_results() {
    let g = Group::new(4);
    let (key, mut c) = read_client(&g);
    let out = c.submit_read(Duration::ZERO, b"get".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Broadcast { message: Message::Read(r) } if r.payload.timestamp == 10)
    );
    assert_eq!(
        out[1],
        ClientOutput::SetTimer {
            at: Duration::from_millis(500)
        }
    );
    // f+1 matching results (at different positions: seq is ignored) are not enough.
    assert!(c.on_reply(&read_reply(&g, 0, &key, 10, 7, b"v")).is_empty());
    assert!(c.on_reply(&read_reply(&g, 1, &key, 10, 9, b"v")).is_empty());
    assert!(c.is_busy());
    let out = c.on_reply(&read_reply(&g, 3, &key, 10, 8, b"v"));
    assert_eq!(
        out,
        vec![ClientOutput::Accepted {
            timestamp: 10,
            result: b"v".to_vec()
        }]
    );
    // The next request gets a newer timestamp.
    let out = c.submit(Duration::ZERO, b"put".to_vec()).unwrap();
    assert!(
        matches!(&out[0], ClientOutput::Send { message: Message::Request(r), .. } if r.payload.timestamp == 11)
    );
}

#[test]
fn a_read_whose_results_cannot_match_falls_back_to_an_ordered_request() {
    let g = Group::new(4);
    let (key, mut c) = read_client(&g);
    c.submit_read(Duration::ZERO, b"get".to_vec()).unwrap();
    assert!(c
        .on_reply(&read_reply(&g, 0, &key, 10, 1, b"old"))
        .is_empty());
    // Two against one, one replica unheard: 2f+1 = 3 can still happen.
    assert!(c
        .on_reply(&read_reply(&g, 1, &key, 10, 2, b"new"))
        .is_empty());
    // One each of three values, one unheard: no value can reach 3 any more.
    let out = c.on_reply(&read_reply(&g, 2, &key, 10, 2, b"newer"));
    assert_eq!(out[0], ClientOutput::Reissued { timestamp: 11 });
    assert!(matches!(
        &out[1],
        ClientOutput::Send { to: 0, message: Message::Request(r) }
            if r.payload.timestamp == 11 && r.payload.operation == b"get"
    ));
    // Late read replies no longer count; the ordered request needs its own f+1.
    assert!(c
        .on_reply(&read_reply(&g, 3, &key, 10, 2, b"new"))
        .is_empty());
    assert!(c.on_reply(&reply(&g, 1, &key, 11, 0, b"new")).is_empty());
    let out = c.on_reply(&reply(&g, 2, &key, 11, 0, b"new"));
    assert_eq!(
        out,
        vec![ClientOutput::Accepted {
            timestamp: 11,
            result: b"new".to_vec()
        }]
    );
}

#[test]
fn a_read_refused_as_not_read_only_or_unanswered_is_ordered() {
    let g = Group::new(4);
    let (key, mut c) = read_client(&g);
    c.submit_read(Duration::ZERO, b"put".to_vec()).unwrap();
    let refusal = |from: u32| {
        let reply = Reply {
            view: 0,
            timestamp: 10,
            client: key.public(),
            replica: from,
            result: ReplyResult::default(),
            refusal: Some(bft_consensus::messages::Refusal::NotReadOnly),
            seq: 0,
            tentative: false,
        };
        let signed = sign_replies(&g.keys[from as usize], 0, from, vec![reply]).remove(0);
        verify_reply(signed, None).unwrap()
    };
    assert!(c.on_reply(&refusal(0)).is_empty());
    let out = c.on_reply(&refusal(1));
    assert_eq!(out[0], ClientOutput::Reissued { timestamp: 11 });

    // Unanswered: at the timeout the read is ordered and sent to every replica (the
    // primary may be what is wrong), with no back-off (a read's expiry teaches
    // nothing of the ordered round trip); a timeout later it is retransmitted.
    let (_, mut c) = read_client(&g);
    c.submit_read(Duration::ZERO, b"get".to_vec()).unwrap();
    assert!(c.on_timeout(Duration::from_millis(499)).is_empty());
    let out = c.on_timeout(Duration::from_millis(500));
    assert_eq!(out[0], ClientOutput::Reissued { timestamp: 11 });
    assert!(matches!(
        &out[1],
        ClientOutput::Broadcast {
            message: Message::Request(_)
        }
    ));
    assert_eq!(
        out[2],
        ClientOutput::SetTimer {
            at: Duration::from_millis(1000)
        }
    );
    let out = c.on_timeout(Duration::from_millis(1000));
    assert!(
        matches!(&out[0], ClientOutput::Broadcast { message: Message::Request(r) } if r.payload.timestamp == 11)
    );
}

#[test]
fn a_planted_read_quorum_accepts_on_fewer_replies() {
    let g = Group::new(4);
    let (key, c) = read_client(&g);
    let mut c = c.with_planted_read_quorum(2);
    c.submit_read(Duration::ZERO, b"get".to_vec()).unwrap();
    assert!(c
        .on_reply(&read_reply(&g, 0, &key, 10, 1, b"old"))
        .is_empty());
    let out = c.on_reply(&read_reply(&g, 3, &key, 10, 1, b"old"));
    assert_eq!(
        out,
        vec![ClientOutput::Accepted {
            timestamp: 10,
            result: b"old".to_vec()
        }]
    );
}

/// A tentative reply (TOCS §5.1.2): executed once prepared, not committed yet.
fn tentative_reply(
    g: &Group,
    from: u32,
    key: &bft_crypto::KeyPair,
    ts: u64,
    view: u64,
    seq: u64,
) -> VerifiedReply {
    let reply = Reply {
        view,
        timestamp: ts,
        client: key.public(),
        replica: from,
        result: ReplyResult::Full(b"ok".to_vec()),
        refusal: None,
        seq,
        tentative: true,
    };
    let signed = sign_replies(&g.keys[from as usize], view, from, vec![reply]).remove(0);
    verify_reply(signed, None).unwrap()
}

#[test]
fn tentative_replies_count_only_as_2f_plus_1_from_one_view() {
    let g = Group::new(4);
    let key = client_key(1);
    let mut c = Client::new(
        key.clone(),
        g.members.clone(),
        10,
        Duration::from_millis(500),
    );
    c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    // f+1 tentative replies are not enough (f+1 committed ones would be).
    assert!(c
        .on_reply(&tentative_reply(&g, 0, &key, 10, 0, 5))
        .is_empty());
    assert!(c
        .on_reply(&tentative_reply(&g, 1, &key, 10, 0, 5))
        .is_empty());
    // A third from another view does not match them.
    assert!(c
        .on_reply(&tentative_reply(&g, 2, &key, 10, 1, 5))
        .is_empty());
    // The third from the same view does.
    let out = c.on_reply(&tentative_reply(&g, 3, &key, 10, 0, 5));
    assert_eq!(
        out,
        vec![ClientOutput::Accepted {
            timestamp: 10,
            result: b"ok".to_vec()
        }]
    );

    // Two tentative and one committed from one view: 2f+1 matching, accepted.
    c.submit(Duration::ZERO, b"op".to_vec()).unwrap();
    assert!(c
        .on_reply(&tentative_reply(&g, 0, &key, 11, 0, 6))
        .is_empty());
    assert!(c
        .on_reply(&tentative_reply(&g, 1, &key, 11, 0, 6))
        .is_empty());
    let mut committed = (*tentative_reply(&g, 2, &key, 11, 0, 6)).clone();
    committed.tentative = false;
    let signed = sign_replies(&g.keys[2], 0, 2, vec![committed]).remove(0);
    let out = c.on_reply(&verify_reply(signed, None).unwrap());
    assert!(matches!(
        &out[..],
        [ClientOutput::Accepted { timestamp: 11, .. }]
    ));
}
