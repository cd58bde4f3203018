//! Directed adversarial scenarios against one honest replica: a Byzantine primary
//! (or peers) feeding it messages that are each validly signed, the core expected
//! to keep to the paper's rules. Each test names the defect it pins (issue 11).

mod common;

use bft_consensus::messages::{Commit, Message, NewView, ViewChange};
use bft_consensus::{Input, Output};
use common::*;

/// Feed replica `to` a message as if it arrived from the network (checked first).
fn deliver(c: &mut Cluster, to: u32, msg: Message) {
    let verified = c.group.validator().verify(msg).expect("a valid message");
    c.input(to, Input::Message(verified));
}

/// Sequence numbers replica `id` prepared, committed or executed at or below `upto`.
fn acted_at_or_below(c: &Cluster, id: u32, upto: u64) -> Vec<String> {
    c.all_outputs(id)
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast {
                message: Message::Prepare(p),
            } if p.payload.seq <= upto => Some(format!("prepare {}", p.payload.seq)),
            Output::Broadcast {
                message: Message::Commit(m),
            } if m.payload.seq <= upto => Some(format!("commit {}", m.payload.seq)),
            Output::Executed(e) if e.seq <= upto => Some(format!("executed {}", e.seq)),
            _ => None,
        })
        .collect()
}

/// OSDI'99 §4.4 / TOCS §4.5: a replica that enters view v+1 adopts min-s, the latest
/// stable checkpoint in V, as its low water mark, even while it still fetches that
/// checkpoint's state. The new primary's pre-prepares are for (min-s, max-s] and
/// after; anything at or below min-s is already decided by the checkpoint.
///
/// The attack (defect 5): replica 3 lags (stable 0, nothing executed) when view 1
/// starts from a V whose best checkpoint is 8. The Byzantine primary of view 1
/// proposes fabricated batches for 1..=3; peers that also lag (forgetful or behind)
/// vote for them. Without the rule replica 3 prepares, commits and executes them:
/// a history the stable checkpoint at 8 contradicts.
#[test]
fn a_new_view_raises_the_low_water_mark_to_min_s() {
    let mut c = Cluster::new(4);
    let g = &c.group;
    let proof = g.checkpoint_proof(8, bft_crypto::Digest([8; 32]));
    let vc = |id: u32, stable: bool| {
        g.sign(
            id,
            ViewChange {
                new_view: 1,
                stable_seq: if stable { 8 } else { 0 },
                checkpoint_proof: if stable { proof.clone() } else { vec![] },
                prepared: vec![],
                replica: id,
            },
        )
    };
    let nv = g.sign(
        1,
        NewView {
            view: 1,
            view_changes: vec![vc(0, false), vc(1, true), vc(2, false)],
            pre_prepares: vec![],
            replica: 1,
        },
    );
    deliver(&mut c, 3, Message::NewView(nv, vec![]));
    assert_eq!(c.replica(3).view(), 1);
    assert!(!c.replica(3).in_view_change());
    assert_eq!(c.replica(3).watermarks().0, 8, "low water mark is min-s");

    let client = client_key(9);
    for seq in 1..=3 {
        let forged = batch_of(vec![request(&client, seq, "k", "forged")]);
        let g = &c.group;
        let pp = g.pre_prepare(1, seq, &forged);
        let votes: Vec<Message> = [0, 2]
            .iter()
            .map(|r| Message::Prepare(g.prepare(*r, 1, seq, &forged)))
            .chain([0, 1, 2].iter().map(|r| {
                Message::Commit(g.sign(
                    *r,
                    Commit {
                        view: 1,
                        seq,
                        digest: forged.digest(),
                        replica: *r,
                    },
                ))
            }))
            .collect();
        deliver(&mut c, 3, Message::PrePrepare(pp, forged));
        for v in votes {
            deliver(&mut c, 3, v);
        }
    }
    assert_eq!(
        acted_at_or_below(&c, 3, 8),
        Vec::<String>::new(),
        "nothing at or below min-s is voted for or executed"
    );
    assert_eq!(c.replica(3).last_executed(), 0);
}

/// Messages replica `id` sent to `to` of the given type.
fn sent(c: &Cluster, id: u32, to: u32, kind: &str) -> usize {
    c.all_outputs(id)
        .iter()
        .filter(
            |o| matches!(o, Output::Send { to: t, message } if *t == to && message.kind() == kind),
        )
        .count()
}

/// Commit `n` writes so that every replica has a stable checkpoint (K = 4).
fn cluster_with_a_stable_checkpoint(n: u64) -> Cluster {
    let mut c = Cluster::new(4);
    for ts in 1..=n {
        c.client_sends(0, request(&client_key(1), ts, "k", "v"));
        c.run();
    }
    assert_eq!(c.replica(0).stable_checkpoint().seq, 4);
    c
}

/// Defect 7: a faulty replica replaying its fetch-state gets the whole snapshot
/// once per fetch timeout, not once per message.
#[test]
fn a_replayed_fetch_state_is_answered_once_per_fetch_timeout() {
    let mut c = cluster_with_a_stable_checkpoint(5);
    let fetch = c.group.sign(
        3,
        bft_consensus::messages::FetchState { seq: 1, replica: 3 },
    );
    for _ in 0..10 {
        deliver(&mut c, 0, Message::FetchState(fetch.clone()));
    }
    assert_eq!(sent(&c, 0, 3, "state"), 1);
    c.now += c.group.config(0).state_fetch_timeout;
    deliver(&mut c, 0, Message::FetchState(fetch));
    assert_eq!(
        sent(&c, 0, 3, "state"),
        2,
        "asking again after the timeout is fine"
    );
}

/// Defect 7: a view-change replayed to a replica already in that view gets the
/// new-view (batches and all) once per heartbeat interval, not once per message.
#[test]
fn a_replayed_view_change_is_answered_with_the_new_view_once_per_interval() {
    let mut c = Cluster::new(4);
    c.drop_if = Box::new(|from, _, _| from == 0);
    let req = request(&client_key(1), 1, "k", "v");
    for r in 0..4 {
        c.client_sends(r, req.clone());
    }
    c.run();
    for step in 1..=10 {
        c.advance_to(std::time::Duration::from_millis(150 * step));
        c.run();
    }
    assert_eq!(c.replica(1).view(), 1);
    let vc = c.group.view_change_message(3, 1, vec![]);
    let before = sent(&c, 1, 3, "new_view");
    for _ in 0..10 {
        deliver(&mut c, 1, vc.clone());
    }
    assert_eq!(sent(&c, 1, 3, "new_view") - before, 1);
}

/// Defect 7: a snapshot that does not hash to the stable checkpoint's digest (a
/// damaged snapshot file) is refused at restart, never installed.
#[test]
fn a_damaged_snapshot_is_refused_at_restart() {
    let mut c = cluster_with_a_stable_checkpoint(5);
    c.crash(2);
    let stable = c.durable[2].stable.as_mut().expect("a stable checkpoint");
    std::sync::Arc::make_mut(&mut stable.snapshot)[0] ^= 1;
    let err = bft_consensus::Replica::recover(
        c.group.config(2),
        c.group.keys[2].clone(),
        bft_consensus::KvStore::new(),
        &c.durable[2],
        c.now,
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("does not match the stable checkpoint"),
        "{err}"
    );
}

/// Defect 7: the client table is bounded (anybody can make a client key): a client
/// idle for more than `request_horizon` sequence numbers is forgotten, and a replay
/// of its old request, whose horizon is older still, is refused by every replica in
/// order (`Refusal::Expired`), never executed a second time.
#[test]
fn a_forgotten_client_has_its_old_request_refused_not_executed_again() {
    let mut c = Cluster::with_params(4, |p| p.request_horizon = p.window);
    let horizon = c.group.params.request_horizon;
    let old = request(&client_key(1), 7, "k", "first");
    c.client_sends(0, old.clone());
    c.run();
    // Others keep the group busy well past the horizon (one request a slot).
    for ts in 1..=horizon + 2 {
        c.client_sends(0, request_at(&client_key(2), ts, "k", "later", ts - 1));
        c.run();
    }
    let executions_of = |c: &Cluster, ts: u64| {
        c.all_outputs(0)
            .iter()
            .filter_map(|o| match o {
                Output::Executed(e) => Some(
                    e.requests
                        .iter()
                        .filter(|(id, _)| *id == (client_key(1).public(), ts))
                        .count(),
                ),
                _ => None,
            })
            .sum::<usize>()
    };
    assert_eq!(executions_of(&c, 7), 1);
    c.replies.clear();
    c.client_sends(0, old);
    c.run();
    assert_eq!(executions_of(&c, 7), 1, "the replay was not executed");
    let refusals: Vec<_> = c
        .replies
        .iter()
        .filter(|(to, r)| *to == client_key(1).public() && r.reply.timestamp == 7)
        .map(|(_, r)| r.reply.refusal)
        .collect();
    assert_eq!(refusals.len(), 4, "every replica answered");
    let at = c.replica(0).last_executed();
    assert!(refusals
        .iter()
        .all(|r| *r == Some(bft_consensus::messages::Refusal::Expired { seq: at })));
}
