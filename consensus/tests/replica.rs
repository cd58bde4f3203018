//! Directed tests of the replica state machine, each naming the rule it checks.

mod common;

use bft_consensus::messages::{Batch, Commit, Message, PrePrepare, Prepare};
use bft_consensus::{Input, KvOp, KvResult, Output, PersistRecord, Rejection, Timer};
use common::*;
use std::time::Duration;

fn executed_seqs(c: &Cluster, id: u32) -> Vec<u64> {
    c.all_outputs(id)
        .iter()
        .filter_map(|o| {
            if let Output::Executed(e) = o {
                Some(e.seq)
            } else {
                None
            }
        })
        .collect()
}

/// The result a reply carries (short results always travel in full).
fn result_of(reply: &bft_consensus::SignedReply) -> KvResult {
    let bytes = reply
        .reply
        .result
        .full()
        .expect("short results travel in full");
    KvResult::decode(bytes).unwrap()
}

/// §4.2: request -> pre-prepare -> prepare -> commit -> execute, on every replica,
/// and every replica replies.
#[test]
fn normal_case_executes_everywhere_and_replies() {
    let mut c = Cluster::new(4);
    let client = client_key(1);
    c.client_sends(0, request(&client, 1, "a", "1"));
    c.run();
    for id in 0..4 {
        assert_eq!(c.replica(id).last_executed(), 1, "replica {id}");
        assert_eq!(executed_seqs(&c, id), vec![1]);
    }
    let digests: Vec<_> = (0..4).map(|i| c.replica(i).app_digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(c.replies.len(), 4);
    for (to, reply) in &c.replies {
        assert_eq!(*to, client.public());
        let checked = bft_consensus::reply::verify_reply(reply.clone(), None).unwrap();
        assert_eq!(
            checked.signer(),
            c.group.keys[reply.reply.replica as usize].public()
        );
        assert_eq!(result_of(reply), KvResult::Done { previous: None });
    }
}

/// DESIGN.md persistence: in every step's outputs, the prepare for (v, n) comes after
/// the persisted pre-prepare, and the commit after the persisted certificate.
#[test]
fn what_a_message_commits_to_is_persisted_before_it_leaves() {
    let mut c = Cluster::new(4);
    for ts in 1..=6 {
        c.client_sends(0, request(&client_key(1), ts, "k", "v"));
        c.run();
    }
    let mut checked = 0;
    for id in 0..4 {
        for step in &c.outputs[id as usize] {
            for (i, o) in step.iter().enumerate() {
                let earlier = &step[..i];
                match o {
                    Output::Broadcast {
                        message: Message::Prepare(p),
                    } => {
                        assert!(earlier.iter().any(|e| matches!(e,
                            Output::Persist(PersistRecord::Accepted { pre_prepare, .. })
                                if pre_prepare.payload.seq == p.payload.seq && pre_prepare.payload.digest == p.payload.digest)));
                        checked += 1;
                    }
                    Output::Broadcast {
                        message: Message::Commit(cm),
                    } => {
                        assert!(earlier.iter().any(|e| matches!(e,
                            Output::Persist(PersistRecord::Prepared(cert)) if cert.seq() == cm.payload.seq)));
                        checked += 1;
                    }
                    Output::Broadcast {
                        message: Message::PrePrepare(pp, _),
                    } => {
                        assert!(earlier.iter().any(|e| matches!(e,
                            Output::Persist(PersistRecord::Accepted { pre_prepare, .. }) if pre_prepare == pp)));
                        checked += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} sends checked");
}

/// §4.2: a backup accepts at most one digest per (view, seq); a second is reported.
#[test]
fn conflicting_pre_prepare_is_rejected() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let a = batch_of(vec![request(&client_key(1), 1, "k", "a")]);
    let b = batch_of(vec![request(&client_key(1), 1, "k", "b")]);
    let v = g.validator();
    for batch in [&a, &b] {
        let m = v
            .verify(Message::PrePrepare(
                g.pre_prepare(0, 1, batch),
                batch.clone(),
            ))
            .unwrap();
        c.input(1, Input::Message(m));
    }
    let out = c.all_outputs(1);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Rejected {
            peer: Some(0),
            reason: Rejection::ConflictingPrePrepare { view: 0, seq: 1 }
        }
    )));
    let prepares = out
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Broadcast {
                    message: Message::Prepare(_)
                }
            )
        })
        .count();
    assert_eq!(prepares, 1);
}

/// §4.2: pre-prepares beyond the high water mark are refused; votes that equivocate are reported.
#[test]
fn window_and_vote_equivocation_are_enforced() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let v = g.validator();
    let b = batch_of(vec![request(&client_key(1), 1, "k", "a")]);
    let far = v
        .verify(Message::PrePrepare(g.pre_prepare(0, 17, &b), b.clone()))
        .unwrap();
    c.input(1, Input::Message(far));
    assert!(c.all_outputs(1).iter().any(|o| matches!(
        o,
        Output::Rejected {
            reason: Rejection::OutOfWindow {
                seq: 17,
                low: 0,
                high: 16
            },
            ..
        }
    )));
    for digest_of in [&b, &Batch::default()] {
        let p = g.sign(
            2,
            Prepare {
                view: 0,
                seq: 1,
                digest: digest_of.digest(),
                replica: 2,
            },
        );
        c.input(1, Input::Message(v.verify(Message::Prepare(p)).unwrap()));
    }
    assert!(c.all_outputs(1).iter().any(|o| matches!(
        o,
        Output::Rejected {
            peer: Some(2),
            reason: Rejection::Equivocation {
                replica: 2,
                view: 0,
                seq: 1
            }
        }
    )));
    let from_primary = g.sign(
        0,
        Prepare {
            view: 0,
            seq: 1,
            digest: b.digest(),
            replica: 0,
        },
    );
    c.input(
        1,
        Input::Message(v.verify(Message::Prepare(from_primary)).unwrap()),
    );
    assert!(c.all_outputs(1).iter().any(|o| matches!(
        o,
        Output::Rejected {
            peer: Some(0),
            reason: Rejection::Malformed(_)
        }
    )));
}

/// §4.4: a primary that drops everything is replaced; the request then executes.
#[test]
fn silent_primary_is_replaced_by_a_view_change() {
    let mut c = Cluster::new(4);
    c.drop_if = Box::new(|from, _, _| from == 0);
    let req = request(&client_key(1), 1, "k", "v");
    // The client times out and sends to every replica.
    for r in 0..4 {
        c.client_sends(r, req.clone());
    }
    c.run();
    // Backups wait for the request; their timers fire; they change view; after the
    // view-changes are in, the new primary (1) sends the new-view and orders it.
    for step in 1..=10 {
        c.advance_to(Duration::from_millis(150 * step));
        c.run();
    }
    for id in 1..4 {
        let r = c.replica(id);
        assert!(
            r.view() >= 1 && !r.in_view_change(),
            "replica {id} in view {}",
            r.view()
        );
        assert_eq!(r.last_executed(), 1, "replica {id}");
    }
    assert!(c.all_outputs(1).iter().any(|o| matches!(
        o,
        Output::ViewEntered {
            view: 1,
            primary: 1
        }
    )));
}

/// §4.3: every K executions a checkpoint; stable at 2f+1; the log below is discarded
/// and the window moves.
#[test]
fn checkpoints_become_stable_and_move_the_window() {
    let mut c = Cluster::new(4);
    for ts in 1..=9 {
        c.client_sends(0, request(&client_key(1), ts, "k", "v"));
        c.run();
    }
    for id in 0..4 {
        let r = c.replica(id);
        assert_eq!(r.last_executed(), 9);
        assert_eq!(r.stable_checkpoint().seq, 8);
        assert_eq!(r.stable_checkpoint().proof.len(), 3);
        assert_eq!(r.watermarks(), (8, 24));
    }
    assert!(c.durable[2].stable.as_ref().is_some_and(|s| s.seq == 8));
    assert!(
        c.durable[2].accepted.keys().all(|s| *s > 8),
        "log not garbage-collected"
    );
}

/// TOCS §6.2: a replica cut off while the others move several checkpoints ahead
/// fetches the state, checks it against the proof and installs it.
#[test]
fn lagging_replica_catches_up_by_state_transfer() {
    let mut c = Cluster::new(4);
    c.drop_if = Box::new(|_, to, m| {
        *to == To::Replica(3) && !matches!(m, Message::Checkpoint(_) | Message::State(_))
    });
    for ts in 1..=12 {
        c.client_sends(0, request(&client_key(1), ts, "k", &format!("v{ts}")));
        c.run();
    }
    c.drop_if = Box::new(|_, _, _| false);
    c.run();
    let r3 = c.replica(3);
    assert_eq!(r3.stable_checkpoint().seq, 12);
    assert_eq!(r3.last_executed(), 12);
    assert_eq!(r3.app_digest(), c.replica(0).app_digest());
    assert!(c
        .all_outputs(3)
        .iter()
        .any(|o| matches!(o, Output::StateInstalled { seq: 12, .. })));
}

/// Retransmission (the BFT library's status messages): a replica that missed
/// everything, including the last stable checkpoint and the slots after it, catches
/// up from its peers' heartbeats alone; no new request pushes a later checkpoint.
#[test]
fn lagging_replica_catches_up_from_heartbeats_without_new_requests() {
    let mut c = Cluster::new(4);
    c.start_all();
    c.drop_if = Box::new(|_, to, m| *to == To::Replica(3) && !matches!(m, Message::Heartbeat(_)));
    for ts in 1..=14 {
        c.client_sends(0, request(&client_key(1), ts, "k", &format!("v{ts}")));
        c.run();
    }
    assert_eq!(c.replica(0).last_executed(), 14);
    assert_eq!(c.replica(0).stable_checkpoint().seq, 12);
    assert_eq!(c.replica(3).last_executed(), 0);
    c.drop_if = Box::new(|_, _, _| false);
    c.run();
    assert_eq!(c.replica(3).last_executed(), 0, "nothing was resent yet");
    let beat = c.group.config(0).fd.heartbeat_interval;
    for k in 1..=4 {
        c.advance_to(beat * k);
        c.run();
    }
    let r3 = c.replica(3);
    assert_eq!(r3.last_executed(), 14);
    assert_eq!(r3.app_digest(), c.replica(0).app_digest());
    let out = c.all_outputs(3);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StateInstalled { seq: 12, .. })));
    assert_eq!(
        executed_seqs(&c, 3),
        vec![13, 14],
        "13 and 14 ran, not fetched"
    );
    // Caught up, it is helped no more: heartbeats go on, resends stop.
    let sent_to_3 = |c: &Cluster| {
        (0..3)
            .flat_map(|id| c.all_outputs(id))
            .filter(|o| matches!(o, Output::Send { to: 3, message } if !matches!(message, Message::Heartbeat(_))))
            .count()
    };
    let before = sent_to_3(&c);
    for k in 5..=8 {
        c.advance_to(beat * k);
        c.run();
    }
    assert_eq!(sent_to_3(&c), before);
}

/// A replica that executed every request but missed the checkpoint messages that
/// made a checkpoint stable gets the proof from a peer whose heartbeats show it
/// stable there while the laggard's show it is not: it must not wait for a later
/// checkpoint that needs new requests (node test lying_checkpoint_7 lost one such
/// message on a busy machine: with two liars among seven, one lost honest vote
/// leaves the checkpoint short of 2f+1). Once it holds the checkpoint, the resends
/// stop.
#[test]
fn a_replica_that_missed_checkpoint_votes_gets_the_proof_from_heartbeats() {
    let mut c = Cluster::new(4);
    c.start_all();
    c.drop_if = Box::new(|from, to, m| {
        *to == To::Replica(3) && from != 2 && matches!(m, Message::Checkpoint(_))
    });
    for ts in 1..=5 {
        c.client_sends(0, request(&client_key(1), ts, "k", &format!("v{ts}")));
        c.run();
    }
    assert_eq!(c.replica(0).stable_checkpoint().seq, 4);
    assert_eq!(c.replica(3).last_executed(), 5);
    assert_eq!(
        c.replica(3).stable_checkpoint().seq,
        0,
        "votes from 0 and 1 were lost"
    );
    c.drop_if = Box::new(|_, _, _| false);
    let beat = c.group.config(0).fd.heartbeat_interval;
    for k in 1..=3 {
        c.advance_to(beat * k);
        c.run();
    }
    let r3 = c.replica(3);
    assert_eq!(r3.stable_checkpoint().seq, 4);
    assert_eq!(
        r3.stable_checkpoint().digest,
        c.replica(0).stable_checkpoint().digest
    );
    assert!(
        !c.all_outputs(3)
            .iter()
            .any(|o| matches!(o, Output::StateInstalled { .. })),
        "its own state at 4 matched the proof: nothing to fetch"
    );
    let checkpoints_to_3 = |c: &Cluster| {
        (0..3)
            .flat_map(|id| c.all_outputs(id))
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        to: 3,
                        message: Message::Checkpoint(_)
                    }
                )
            })
            .count()
    };
    let before = checkpoints_to_3(&c);
    assert!(before > 0);
    for k in 4..=7 {
        c.advance_to(beat * k);
        c.run();
    }
    assert_eq!(
        checkpoints_to_3(&c),
        before,
        "helped once it is stable, no more"
    );
}

/// The same under steady load, where the laggard is never idle (it executes a
/// request every heartbeat, so it never reports the same position twice): the
/// votes of replicas 0 and 1 never reach replica 3, yet its stable checkpoint
/// follows the group's through replica 2's relayed proofs.
#[test]
fn under_load_a_replica_that_loses_checkpoint_votes_still_follows_the_stable_checkpoint() {
    let mut c = Cluster::new(4);
    c.start_all();
    c.drop_if = Box::new(|from, to, m| {
        *to == To::Replica(3) && from != 2 && matches!(m, Message::Checkpoint(_))
    });
    let beat = c.group.config(0).fd.heartbeat_interval;
    for ts in 1..=14u32 {
        c.advance_to(beat * ts);
        c.client_sends(
            0,
            request(&client_key(1), ts.into(), "k", &format!("v{ts}")),
        );
        c.run();
        assert_eq!(
            c.replica(3).last_executed(),
            u64::from(ts),
            "executes every beat"
        );
    }
    assert_eq!(c.replica(0).stable_checkpoint().seq, 12);
    let r3 = c.replica(3).stable_checkpoint().seq;
    assert!(r3 >= 8, "replica 3's stable checkpoint stayed at {r3}");
}

/// Recovery: a replica that prepared a digest, crashed and restarted, refuses a
/// different digest for the same (view, seq): it never contradicts what it signed.
#[test]
fn restarted_replica_does_not_contradict_its_prepare() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let v = g.validator();
    let a = batch_of(vec![request(&client_key(1), 1, "k", "a")]);
    let b = batch_of(vec![request(&client_key(1), 1, "k", "b")]);
    c.input(
        1,
        Input::Message(
            v.verify(Message::PrePrepare(g.pre_prepare(0, 1, &a), a.clone()))
                .unwrap(),
        ),
    );
    c.crash(1);
    c.restart(1);
    c.input(
        1,
        Input::Message(
            v.verify(Message::PrePrepare(g.pre_prepare(0, 1, &b), b.clone()))
                .unwrap(),
        ),
    );
    let out = c.all_outputs(1);
    let prepared_digests: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast {
                message: Message::Prepare(p),
            } => Some(p.payload.digest),
            _ => None,
        })
        .collect();
    assert!(
        prepared_digests.iter().all(|d| *d == a.digest()),
        "prepared a second digest after restart"
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Rejected {
            reason: Rejection::ConflictingPrePrepare { .. },
            ..
        }
    )));
}

/// Recovery: all replicas crash after executing; restarted from what they persisted
/// they have the same state, and the data is still there.
#[test]
fn whole_group_restart_keeps_every_executed_write() {
    let mut c = Cluster::new(4);
    for ts in 1..=10 {
        c.client_sends(0, request(&client_key(1), ts, &format!("k{ts}"), "v"));
        c.run();
    }
    let before = c.replica(0).app_digest();
    for id in 0..4 {
        c.crash(id);
    }
    for id in 0..4 {
        c.restart(id);
    }
    c.run();
    for id in 0..4 {
        assert_eq!(c.replica(id).last_executed(), 10, "replica {id}");
        assert_eq!(c.replica(id).app_digest(), before, "replica {id}");
        assert_eq!(c.replica(id).app().get(b"k7"), Some(&b"v"[..]));
    }
}

/// §4.1 exactly-once: a retransmitted request is answered from the reply cache, not
/// executed again.
#[test]
fn retransmitted_request_gets_cached_reply_without_re_execution() {
    let mut c = Cluster::new(4);
    let client = client_key(1);
    let cas = KvOp::CompareAndSwap {
        key: b"k".to_vec(),
        expected: None,
        new: b"x".to_vec(),
    };
    let req = bft_crypto::Signed::sign(
        bft_consensus::messages::Request {
            timestamp: 1,
            operation: cas.encode(),
            horizon: 0,
            replier: None,
        },
        &client,
    );
    c.client_sends(0, req.clone());
    c.run();
    c.replies.clear();
    for r in 0..4 {
        c.client_sends(r, req.clone());
    }
    c.run();
    assert_eq!(c.replica(0).last_executed(), 1);
    assert_eq!(c.replies.len(), 4);
    for (_, reply) in &c.replies {
        // The cached result of the first (successful) swap, not a failed second one.
        assert_eq!(
            result_of(reply),
            KvResult::Swapped {
                swapped: true,
                current: None
            }
        );
    }
}

/// The size of each batch replica `id` proposed, in order.
fn pre_prepare_batch_sizes(c: &Cluster, id: u32) -> Vec<usize> {
    c.all_outputs(id)
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast {
                message: Message::PrePrepare(_, b),
            } => Some(b.len()),
            _ => None,
        })
        .collect()
}

/// Stale timers are ignored; the primary batches up to batch_size and flushes a
/// partial batch when the batch timer fires.
#[test]
fn batching_by_size_and_by_timer() {
    let mut c = Cluster::new(4);
    // Keep one batch in flight (backups silent) so the primary has to batch.
    c.drop_if = Box::new(|from, _, _| from != 0 && from != u32::MAX);
    for i in 0..6u8 {
        c.client_sends(0, request(&client_key(i), 1, "k", "v"));
    }
    c.run();
    let sizes = pre_prepare_batch_sizes(&c, 0);
    assert_eq!(sizes, vec![1, 4], "first alone (idle), then a full batch");
    // A timer input before its deadline (stale or early) changes nothing.
    let count_pre_prepares = |c: &Cluster| {
        c.all_outputs(0)
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Broadcast {
                        message: Message::PrePrepare(..)
                    }
                )
            })
            .count()
    };
    let before = count_pre_prepares(&c);
    c.input(0, Input::Timer(Timer::Batch));
    assert_eq!(
        count_pre_prepares(&c),
        before,
        "an early timer proposed a batch"
    );
    let deadline = c.timers[0]
        .iter()
        .find(|(t, _)| *t == Timer::Batch)
        .map(|(_, at)| *at)
        .expect("batch timer set");
    c.advance_to(deadline);
    c.run();
    let last = c.all_outputs(0).into_iter().rev().find_map(|o| match o {
        Output::Broadcast {
            message: Message::PrePrepare(_, b),
        } => Some(b.len()),
        _ => None,
    });
    assert_eq!(
        last,
        Some(1),
        "the leftover request goes out when the timer fires"
    );
}

/// The pipeline bound (issue 13): with two batches allowed in flight, the primary
/// proposes the first two requests at once, each alone; while both are in flight,
/// later requests gather, and leave as one batch when an execution makes room
/// (not one by one, and without waiting for the timer).
#[test]
fn partial_batches_wait_while_the_pipeline_is_full_and_leave_together() {
    let mut c = Cluster::with_group(4, |g| {
        g.params.batch_size = 8;
        g.max_batches_in_flight = 2;
    });
    // All five arrive before any pre-prepare is delivered (the cluster delivers in
    // order): the first two find room, the other three find the pipeline full.
    for i in 0..5u8 {
        c.client_sends(0, request(&client_key(i), 1, "k", "v"));
    }
    c.run();
    let sizes = pre_prepare_batch_sizes(&c, 0);
    assert_eq!(
        sizes,
        vec![1, 1, 3],
        "two alone, then the three held back as one batch once one executed"
    );
    assert!(
        c.timers[0]
            .iter()
            .all(|(t, at)| *t != Timer::Batch || *at > c.now),
        "no timer was needed"
    );
    assert_eq!(c.replica(0).last_executed(), 3);
}

/// One step of `step`: request `i` (from one of 40 clients) reaches the backups first,
/// as a client's retransmission does, so one waits at each backup whenever its
/// timers fire; the primary gets it when the step ends and orders it at once. The
/// cluster's `drop_if` must drop the backups' relays of requests.
fn backups_first_then_primary(c: &mut Cluster, i: u64, step: Duration) {
    let key = client_key((i % 40) as u8 + 1);
    let req = request(&key, i / 40 + 1, "k", "v");
    for r in 1..4 {
        c.client_sends(r, req.clone());
    }
    c.run();
    c.advance_to(c.now + step);
    c.client_sends(0, req);
    c.run();
}

/// Under overload a primary's heartbeats queue behind its batches and arrive late
/// (issue 13: with 4,096 clients every replica suspected every other within
/// seconds). A primary whose requests keep executing is ordering: the backups keep
/// it, though their failure detectors suspect it, and requests wait all along.
#[test]
fn a_primary_that_keeps_ordering_keeps_its_view_though_its_heartbeats_never_arrive() {
    let mut c = Cluster::new(4);
    c.start_all();
    // The primary's heartbeats never arrive; nor do the backups' relays of requests,
    // so each request reaches the primary only when the test says.
    c.drop_if = Box::new(|from, _, m| {
        (from == 0 && matches!(m, Message::Heartbeat(_)))
            || (from != u32::MAX && matches!(m, Message::Request(_)))
    });
    let step = Duration::from_millis(20);
    let steps = 150u64; // 3 s: far past the primary's ◇P timeout (800 ms)
    for i in 0..steps {
        backups_first_then_primary(&mut c, i, step);
    }
    for id in 0..4 {
        let changes = c
            .all_outputs(id)
            .into_iter()
            .filter(|o| matches!(o, Output::ViewChangeStarted { .. }))
            .count();
        assert_eq!(
            changes, 0,
            "replica {id} left the view of an ordering primary"
        );
    }
    assert!(
        c.replica(1).last_executed() >= 30,
        "{}",
        c.replica(1).last_executed()
    );
}

/// The other side: a primary that stops ordering is still replaced (here by the
/// request timer, which restarts only on executions, while its heartbeats arrive).
#[test]
fn a_primary_that_stops_ordering_is_replaced_though_its_heartbeats_arrive() {
    let mut c = Cluster::new(4);
    c.start_all();
    // Replica 0 orders for a while (its heartbeats arriving all along), then its
    // pre-prepares stop arriving.
    c.drop_if = Box::new(|from, _, m| from != u32::MAX && matches!(m, Message::Request(_)));
    let step = Duration::from_millis(20);
    for i in 0..100u64 {
        if i == 30 {
            c.drop_if = Box::new(|from, _, m| {
                (from != u32::MAX && matches!(m, Message::Request(_)))
                    || (from == 0 && matches!(m, Message::PrePrepare(..)))
            });
        }
        backups_first_then_primary(&mut c, i, step);
    }
    assert!(
        (1..4).all(|id| c
            .all_outputs(id)
            .iter()
            .any(|o| matches!(o, Output::ViewChangeStarted { .. }))),
        "a primary whose batches stopped kept its view"
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A Byzantine replica can sign anything. No well-signed message, however
        /// extreme its numbers, makes the core panic (overflow checks are on).
        #[test]
        fn arbitrary_signed_votes_never_panic(
            msgs in proptest::collection::vec((0u8..4, any::<u64>(), any::<u64>(), any::<[u8; 32]>(), 1u32..4), 1..40)
        ) {
            let mut c = Cluster::new(4);
            let g = Group::new(4);
            let v = g.validator();
            for (kind, view, seq, digest, from) in msgs {
                let digest = bft_crypto::Digest(digest);
                let m = match kind {
                    0 => Message::Prepare(g.sign(from, Prepare { view, seq, digest, replica: from })),
                    1 => Message::Commit(g.sign(from, Commit { view, seq, digest, replica: from })),
                    2 => Message::Checkpoint(g.sign(from, bft_consensus::messages::Checkpoint { seq: seq - seq % 4, snapshot_digest: digest, replica: from })),
                    _ => Message::PrePrepare(g.sign(from, PrePrepare { view, seq, digest: Batch::default().digest(), replica: from }), Batch::default()),
                };
                if let Ok(m) = v.verify(m) {
                    c.input(0, Input::Message(m));
                }
            }
            c.advance_to(Duration::from_secs(1000));
        }
    }
}

/// Issue 11, defect 3: a new-view carries 2f+1 view-changes; if each carried its
/// prepared batches in full, large batches made the new-view outgrow the frame bound,
/// every replica refused it, and no view change ever completed. Each batch now
/// travels once beside the new-view. Here a frame bound that fits one view-change
/// but not three copies of its batches: the view change completes anyway.
#[test]
fn a_new_view_fits_the_frame_bound_when_prepared_batches_are_large() {
    let mut c = Cluster::new(4);
    c.max_frame = 48 * 1024;
    let big = "v".repeat(2000);
    let requests: Vec<_> = (1..=12)
        .map(|ts| request(&client_key(ts as u8), ts, "k", &big))
        .collect();
    // Slots prepare everywhere, but no commit gets through: nothing executes.
    c.drop_if = Box::new(|_, _, m| matches!(m, Message::Commit(_)));
    for r in &requests {
        for to in 0..4 {
            c.client_sends(to, r.clone());
        }
        c.run();
    }
    c.advance_to(Duration::from_millis(5));
    c.run();
    let prepared = c.replica(1).watermarks();
    assert_eq!(c.replica(1).last_executed(), 0, "{prepared:?}");
    c.crash(0);
    c.drop_if = Box::new(|_, _, _| false);
    for step in 1..=20 {
        c.advance_to(Duration::from_millis(100 * step));
        c.run();
    }
    // Before: every new-view (81,484 bytes against a 49,152-byte bound) was refused.
    assert!(c.refused.is_empty(), "frames refused: {:?}", c.refused);
    for id in 1..4 {
        let r = c.replica(id);
        assert!(
            r.view() >= 1 && !r.in_view_change(),
            "replica {id} stuck in view {}",
            r.view()
        );
        assert!(
            r.last_executed() >= 3,
            "replica {id} executed {}",
            r.last_executed()
        );
    }
}

/// A primary whose own request timer fires (its disk stalled its pre-prepares past
/// the timeout, say) leaves its view by its view-change, and orders nothing more in
/// it. The backups need not wait for f+1 view-changes or their own timers then: the
/// only replica that can propose in the view has said it will not (issue 13: after
/// a 3 GB write, the primary of a peak run gave up its view alone, and the group
/// stood still for 3.3 s until clients' retransmissions started the backups'
/// timers). This grants a faulty primary nothing it lacked: by staying silent it
/// ends its own view anyway, one timeout later.
#[test]
fn a_primary_that_gives_up_its_view_takes_the_backups_along() {
    let mut c = Cluster::new(4);
    c.start_all();
    // The primary's pre-prepares do not get out; the request reaches it alone.
    c.drop_if = Box::new(|from, _, m| from == 0 && matches!(m, Message::PrePrepare(..)));
    let req = request(&client_key(1), 1, "k", "v");
    c.client_sends(0, req.clone());
    c.run();
    c.advance_to(Duration::from_millis(1));
    c.run();
    // Its request timer (twice a backup's 100 ms) fires: it sends a view-change
    // for view 1.
    c.drop_if = Box::new(|_, _, _| false);
    c.advance_to(Duration::from_millis(199));
    assert!(!c.replica(0).in_view_change(), "the primary gave up early");
    c.advance_to(Duration::from_millis(200));
    assert!(c.replica(0).in_view_change(), "the primary kept its view");
    c.run();
    // No backup's timer has fired (none saw the request); they follow at once.
    for id in 0..4 {
        let r = c.replica(id);
        assert!(
            r.view() == 1 && !r.in_view_change(),
            "replica {id} in view {} (changing: {})",
            r.view(),
            r.in_view_change()
        );
    }
    // The client's retransmission reaches everyone; view 1 orders it.
    for r in 0..4 {
        c.client_sends(r, req.clone());
    }
    c.run();
    c.advance_to(Duration::from_millis(202));
    c.run();
    for id in 0..4 {
        assert_eq!(c.replica(id).last_executed(), 1, "replica {id}");
    }
}

/// The rule above moves a backup to the next view only, however far ahead the
/// primary asked: every view between has a primary of its own.
#[test]
fn a_primary_asking_for_a_far_view_moves_the_backups_one_view() {
    let mut c = Cluster::new(4);
    c.start_all();
    let leave = c.group.view_change_message(0, 5, vec![]);
    c.deliver(2, leave);
    let r = c.replica(2);
    assert_eq!((r.view(), r.in_view_change()), (1, true));
}

/// A view's primary may leave it before a backup gets there: the view-change of
/// view 1's primary (for view 2) arrives first, then view 0's primary leaves. The
/// backup moves to view 1 and, finding view 1's primary gone too, on to view 2,
/// instead of waiting in view 1 for a new-view that will not come.
#[test]
fn a_backup_follows_a_primary_that_left_before_the_backup_arrived() {
    let mut c = Cluster::new(4);
    c.start_all();
    let early = c.group.view_change_message(1, 2, vec![]);
    c.deliver(2, early);
    assert_eq!(
        c.replica(2).view(),
        0,
        "one view-change is no reason to move"
    );
    let leave = c.group.view_change_message(0, 1, vec![]);
    c.deliver(2, leave);
    let r = c.replica(2);
    assert_eq!((r.view(), r.in_view_change()), (2, true));
}
