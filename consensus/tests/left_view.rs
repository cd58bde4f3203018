//! A replica that changed view alone still executes what the group commits in the
//! view it left, from the commit certificate (2f+1 signed commits and the
//! pre-prepare they match), and can hand that certificate on (see
//! `consensus/src/replica/left_view.rs`). Two gaps the simulator found once
//! clients backed off their retransmissions (adversarial family, seed 208, f=1),
//! and two more a review of their fix found, each pinned here on its own.

mod common;

use bft_consensus::fd::{Heartbeat, Progress};
use bft_consensus::messages::{Batch, Commit, Message, NewView, ViewChange};
use bft_consensus::{Input, Output, Timer};
use common::*;
use std::time::Duration;

/// Replica 1 alone: it gets a client's request, the primary never orders it for
/// replica 1 (everything to and from replica 1 is lost), its request timer fires
/// and it asks for view 1, which nobody else joins. Returns the request's batch.
fn replica_1_leaves_view_0_alone(c: &mut Cluster) -> Batch {
    c.start_all();
    c.drop_if = Box::new(|from, to, _| from == 1 || (*to == To::Replica(1) && from != u32::MAX));
    let req = request(&client_key(1), 1, "k", "committed");
    c.client_sends(1, req.clone());
    c.run();
    c.advance_to(Duration::from_millis(150));
    c.run();
    let r1 = c.replica(1);
    assert!(
        r1.view() == 1 && r1.in_view_change(),
        "replica 1 left view 0"
    );
    assert_eq!(r1.last_executed(), 0);
    batch_of(vec![req])
}

/// Commits for (view 0, seq 1, batch) from replicas 0, 2 and 3: a commit certificate.
fn certificate(c: &Cluster, batch: &Batch) -> Vec<Message> {
    [0, 2, 3]
        .into_iter()
        .map(|id| {
            Message::Commit(c.group.sign(
                id,
                Commit {
                    view: 0,
                    seq: 1,
                    digest: batch.digest(),
                    replica: id,
                },
            ))
        })
        .collect()
}

/// Relay to replica 1 what a peer holding the certificate sends: the pre-prepare
/// of (view 0, seq 1) with its batch, then the commits.
fn relay_certificate(c: &mut Cluster, committed: &Batch) {
    let pp = Message::PrePrepare(c.group.pre_prepare(0, 1, committed), committed.clone());
    c.deliver(1, pp);
    for m in certificate(c, committed) {
        c.deliver(1, m);
    }
}

/// A faulty primary of `view` relays its mutation for seq 1 to replica 1 first;
/// then the certificate comes, twice (relays repeat each heartbeat). Returns the
/// mutation.
fn mutation_then_certificate_twice(c: &mut Cluster, view: u64, committed: &Batch) -> Batch {
    let mutation = batch_of(vec![request(&client_key(1), 1, "k", "mutated")]);
    let pp = Message::PrePrepare(c.group.pre_prepare(view, 1, &mutation), mutation.clone());
    c.deliver(1, pp);
    for _relay in 0..2 {
        relay_certificate(c, committed);
    }
    mutation
}

/// Replica 1 executes seq 1 with the committed batch (not the mutation).
fn executed_committed(c: &Cluster, id: u32, batch: &Batch) -> bool {
    c.all_outputs(id)
        .iter()
        .any(|o| matches!(o, Output::Executed(e) if e.seq == 1 && e.digest == batch.digest()))
}

/// A faulty primary of view 0 equivocated: replica 1, which left view 0, was
/// first relayed a mutation nobody committed, then the pre-prepare the group
/// committed with its commits (the relays of `retransmit` send the pre-prepare
/// first, then the votes, and repeat each heartbeat). Keeping the first
/// pre-prepare seen for (view 0, seq 1) left replica 1 without the committed
/// batch for good; the one that more commits back replaces it.
#[test]
fn a_witnessed_mutation_gives_way_to_the_pre_prepare_the_group_committed() {
    let mut c = Cluster::new(4);
    let committed = replica_1_leaves_view_0_alone(&mut c);
    let mutation = mutation_then_certificate_twice(&mut c, 0, &committed);
    assert_eq!(c.replica(1).last_executed(), 1);
    assert!(executed_committed(&c, 1, &committed));
    assert!(
        !c.all_outputs(1)
            .iter()
            .any(|o| matches!(o, Output::Executed(e) if e.digest == mutation.digest())),
        "the mutation never executes"
    );
}

/// A faulty replica 0 signed two commits for (view 0, seq 1): replica 1, which
/// left view 0, got the one for a stray digest first, then the relayed
/// certificate, in which replica 0's commit is for the committed batch. Keeping
/// each replica's first commit per view left the certificate one commit short for
/// good (adversarial seed 744, f=1, with `wrong-digest`); the one for the
/// pre-prepare held now stands.
#[test]
fn an_equivocators_stray_commit_gives_way_to_its_commit_in_the_certificate() {
    let mut c = Cluster::new(4);
    let committed = replica_1_leaves_view_0_alone(&mut c);
    let stray = c.group.sign(
        0,
        Commit {
            view: 0,
            seq: 1,
            digest: bft_crypto::Digest([7; 32]),
            replica: 0,
        },
    );
    c.deliver(1, Message::Commit(stray));
    relay_certificate(&mut c, &committed);
    assert_eq!(c.replica(1).last_executed(), 1);
    assert!(executed_committed(&c, 1, &committed));
}

/// Replica 1 executed seq 1 through its commit certificate while changing view
/// alone. Replica 2, in view 0, prepared and committed the slot but lost the
/// commits of replicas 0 and 3, which then went quiet (its heartbeats say it
/// executed nothing). Replica 1 is the only one left holding the whole
/// certificate; it must keep it (until a stable checkpoint covers the slot) and
/// relay it, though it is between views itself and has no log of its own for
/// the slot.
#[test]
fn a_replica_changing_view_alone_relays_the_certificates_it_executed_by() {
    let mut c = Cluster::new(4);
    c.start_all();
    let lost_by_2 = |from: u32, to: &To, m: &Message| {
        *to == To::Replica(2) && matches!(m, Message::Commit(_)) && (from == 0 || from == 3)
    };
    c.drop_if = Box::new(move |from, to, m| {
        from == 1 || (*to == To::Replica(1) && from != u32::MAX) || lost_by_2(from, to, m)
    });
    let req = request(&client_key(1), 1, "k", "committed");
    c.client_sends(0, req.clone());
    c.client_sends(1, req.clone());
    c.run();
    let committed = batch_of(vec![req]);
    assert!(executed_committed(&c, 0, &committed) && executed_committed(&c, 3, &committed));
    assert_eq!(
        c.replica(2).last_executed(),
        0,
        "replica 2 lacks two commits"
    );

    // Only replica 1's request timer fires: it leaves view 0 alone.
    c.now = Duration::from_millis(150);
    c.input(1, Input::Timer(Timer::ViewChange));
    assert!(c.replica(1).in_view_change() && c.replica(1).view() == 1);
    relay_certificate(&mut c, &committed);
    assert!(executed_committed(&c, 1, &committed));
    assert!(c.replica(1).in_view_change());

    let sent_before = c.all_outputs(1).len();
    let beat = c.group.config(2).fd.heartbeat_interval;
    for counter in 1..=2 {
        c.now += beat;
        let hb = c.group.sign(
            2,
            Heartbeat {
                replica: 2,
                incarnation: 1,
                counter,
                progress: Progress {
                    view: 0,
                    changing: false,
                    last_executed: 0,
                    stable: 0,
                },
            },
        );
        c.deliver(1, Message::Heartbeat(hb));
    }
    let to_2: Vec<Message> = c.all_outputs(1)[sent_before..]
        .iter()
        .filter_map(|o| match o {
            Output::Send { to: 2, message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    let digest = committed.digest();
    let commits = to_2
        .iter()
        .filter(|m| matches!(m, Message::Commit(cm) if cm.payload.seq == 1 && cm.payload.digest == digest))
        .count();
    assert!(commits >= 3, "the whole certificate, relayed: {to_2:?}");

    // And that is enough for replica 2 to execute the slot.
    c.drop_if = Box::new(|from, to, _| !(from == 1 && *to == To::Replica(2)));
    c.queue.clear();
    for message in to_2 {
        c.queue.push_back((1, To::Replica(2), message));
    }
    c.run();
    assert!(executed_committed(&c, 2, &committed));
}

/// Replica 1, alone in a view above 0, was relayed a pre-prepare for seq 1 by the
/// faulty primary of a view between (2), which nobody committed; the group's
/// certificate from view 0 must still win. Keeping the newer view's pre-prepare
/// because it is newer left the slot unexecuted for good.
#[test]
fn a_certificate_of_an_earlier_view_beats_a_later_views_unproven_pre_prepare() {
    let mut c = Cluster::new(4);
    let committed = replica_1_leaves_view_0_alone(&mut c);
    // Replicas 2 and 3 moved on to view 3; replica 1 joins them (f+1 moved).
    for id in [2, 3] {
        let vc = c.group.view_change_message(id, 3, vec![]);
        c.deliver(1, vc);
    }
    assert_eq!(c.replica(1).view(), 3);
    mutation_then_certificate_twice(&mut c, 2, &committed);
    assert!(executed_committed(&c, 1, &committed));
    assert_eq!(c.replica(1).last_executed(), 1);
}

/// A replica in the certificate's own view that accepted the pre-prepare but never
/// saw 2f prepares (here: every prepare and commit to replica 2 is lost) is not
/// prepared, so PBFT's committed-local never holds for it. The 2f+1 commits a
/// peer relays (a settled certificate carries no prepares) prove the slot
/// committed all the same, for the pre-prepare its log holds.
#[test]
fn relayed_commits_alone_settle_a_slot_the_log_accepted_but_never_prepared() {
    let mut c = Cluster::new(4);
    c.start_all();
    c.drop_if = Box::new(|_, to, m| {
        *to == To::Replica(2) && matches!(m, Message::Prepare(_) | Message::Commit(_))
    });
    let req = request(&client_key(1), 1, "k", "committed");
    c.client_sends(0, req.clone());
    c.run();
    let committed = batch_of(vec![req]);
    for id in [0, 1, 3] {
        assert!(executed_committed(&c, id, &committed), "replica {id}");
    }
    assert_eq!(c.replica(2).last_executed(), 0, "replica 2 is not prepared");
    let commits: Vec<Message> = [0, 1, 3]
        .into_iter()
        .flat_map(|id| c.all_outputs(id))
        .filter_map(|o| match o {
            Output::Broadcast {
                message: m @ Message::Commit(_),
            } => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 3);
    for m in commits {
        c.deliver(2, m);
    }
    assert!(executed_committed(&c, 2, &committed));
}

/// The simulator's storage family, seed 149 (f=2): a restarted replica in view 1
/// held view 1's pre-prepare for a slot the group had committed in view 0, and its
/// peers relayed their view-0 commits as well as the view-1 commits some sent
/// after the view change. Keeping only each replica's newest commit threw away
/// the view-0 ones of every replica that had also committed in view 1, so neither
/// view ever showed 2f+1 and the slot stayed unexecuted for good. Commits are kept
/// per view, and a certificate in one view settles the slot for a pre-prepare of
/// any view that carries the same digest (the digest binds the batch).
#[test]
fn a_certificate_of_an_earlier_view_counts_though_its_signers_also_committed_later() {
    let mut c = Cluster::new(4);
    let g = &c.group;
    let vc = |id: u32| {
        g.sign(
            id,
            ViewChange {
                new_view: 2,
                stable_seq: 0,
                checkpoint_proof: vec![],
                prepared: vec![],
                replica: id,
            },
        )
    };
    let nv = g.sign(
        2,
        NewView {
            view: 2,
            view_changes: vec![vc(0), vc(2), vc(3)],
            pre_prepares: vec![],
            replica: 2,
        },
    );
    c.deliver(1, Message::NewView(nv, vec![]));
    assert_eq!(c.replica(1).view(), 2);
    assert!(!c.replica(1).in_view_change());
    let committed = batch_of(vec![request(&client_key(1), 1, "k", "committed")]);
    let pp = Message::PrePrepare(c.group.pre_prepare(2, 1, &committed), committed.clone());
    c.deliver(1, pp);
    let commit = |c: &Cluster, id: u32, view: u64| {
        Message::Commit(c.group.sign(
            id,
            Commit {
                view,
                seq: 1,
                digest: committed.digest(),
                replica: id,
            },
        ))
    };
    // View 2: two commits, one short of a certificate.
    for id in [0, 3] {
        let m = commit(&c, id, 2);
        c.deliver(1, m);
    }
    assert_eq!(c.replica(1).last_executed(), 0);
    // View 0's certificate, from replicas of which two also committed in view 2.
    for id in [0, 2, 3] {
        let m = commit(&c, id, 0);
        c.deliver(1, m);
    }
    assert!(executed_committed(&c, 1, &committed));
    assert_eq!(c.replica(1).last_executed(), 1);
}
