//! A checkpoint's snapshot is encoded and hashed off the replica's loop
//! (`Output::TakeSnapshot`, `Input::SnapshotTaken`; issue 13, twenty-fifth round):
//! the replica signs its checkpoint only once the job is done, and a proof that
//! arrives before then waits for it instead of starting a state transfer.

mod common;

use bft_consensus::messages::Message;
use bft_consensus::{Input, Output};
use common::*;

/// Whether `id` sent a checkpoint vote for `seq` in `outputs`.
fn votes_for(outputs: &[Output], id: u32, seq: u64) -> bool {
    outputs.iter().any(|o| {
        matches!(o, Output::Broadcast { message: Message::Checkpoint(c) }
            if c.payload.replica == id && c.payload.seq == seq)
    })
}

fn asks_for_state(outputs: &[Output]) -> bool {
    outputs.iter().any(|o| {
        matches!(
            o,
            Output::Send {
                message: Message::FetchState(_),
                ..
            } | Output::Broadcast {
                message: Message::FetchState(_)
            }
        )
    })
}

/// A group of four that executed K requests, one a batch, with replica 3's
/// snapshot jobs held; and K.
fn at_first_checkpoint_with_replica_3_held() -> (Cluster, u64) {
    let mut c = Cluster::new(4);
    c.hold_snapshots_of = vec![3];
    let k = c.group.params.checkpoint_interval;
    for ts in 1..=k {
        c.client_sends(0, request(&client_key(1), ts, "k", &format!("v{ts}")));
        c.run();
    }
    (c, k)
}

/// OSDI'99 §4.3 with the digest computed off the loop: replica 3's job is held
/// while the other three prove checkpoint K stable. It executed K, so it neither
/// votes (it has no digest yet) nor fetches the state it has; once its job is
/// done it votes, and the proof that waited makes K its stable checkpoint.
#[test]
fn a_proof_waits_for_the_replicas_own_snapshot_instead_of_fetching_it() {
    let (mut c, k) = at_first_checkpoint_with_replica_3_held();
    for id in 0..3 {
        assert_eq!(c.replica(id).stable_checkpoint().seq, k, "replica {id}");
    }
    let r3 = c.replica(3);
    assert_eq!(r3.last_executed(), k);
    assert_eq!(
        r3.stable_checkpoint().seq,
        0,
        "its own digest is not known yet"
    );
    let before = c.all_outputs(3);
    assert!(
        !votes_for(&before, 3, k),
        "voted before its snapshot was taken"
    );
    assert!(!asks_for_state(&before), "fetched a state it has");
    assert_eq!(c.held_snapshots.len(), 1);
    assert_eq!(c.held_snapshots[0].1.seq(), k);

    c.release_snapshots(3);
    c.run();
    let r3 = c.replica(3);
    assert_eq!(r3.stable_checkpoint().seq, k);
    assert_eq!(
        r3.stable_checkpoint().digest,
        c.replica(0).stable_checkpoint().digest
    );
    assert_eq!(
        r3.stable_checkpoint().snapshot,
        c.replica(0).stable_checkpoint().snapshot
    );
    let after = c.all_outputs(3);
    assert!(votes_for(&after, 3, k));
    assert!(!asks_for_state(&after));
    assert!(!after
        .iter()
        .any(|o| matches!(o, Output::StateInstalled { .. })));
    assert!(c.durable[3].stable.as_ref().is_some_and(|s| s.seq == k));
}

/// A job's result delivered twice, or for a checkpoint already stable, changes
/// nothing and sends nothing.
#[test]
fn a_snapshot_result_no_longer_awaited_is_dropped() {
    let (mut c, k) = at_first_checkpoint_with_replica_3_held();
    let job = c.held_snapshots[0].1.clone();
    c.release_snapshots(3);
    c.run();
    assert_eq!(c.replica(3).stable_checkpoint().seq, k);
    let calls = c.outputs[3].len();
    c.input(3, Input::SnapshotTaken(job.run()));
    let last = c.outputs[3]
        .get(calls)
        .expect("the call's outputs are recorded");
    assert!(
        !last.iter().any(|o| matches!(
            o,
            Output::Broadcast { .. } | Output::Send { .. } | Output::Persist(_)
        )),
        "a stale result did something: {last:?}"
    );
    assert_eq!(c.replica(3).stable_checkpoint().seq, k);
}

/// The replica's checkpoint digest is what the job computes from the state at K,
/// however the state changed after K before the job ran: the job holds the state
/// as it was.
#[test]
fn a_job_run_late_still_snapshots_the_state_at_its_checkpoint() {
    let mut c = Cluster::new(4);
    c.hold_snapshots_of = vec![3];
    let k = c.group.params.checkpoint_interval;
    // K requests, then more that overwrite the same key and add others, all
    // executed by replica 3 before its job for K runs.
    for ts in 1..=k + 2 {
        let key = if ts > k {
            format!("late{ts}")
        } else {
            "k".into()
        };
        c.client_sends(0, request(&client_key(1), ts, &key, &format!("v{ts}")));
        c.run();
    }
    c.client_sends(0, request(&client_key(1), k + 3, "k", "overwritten"));
    c.run();
    assert_eq!(c.replica(3).last_executed(), k + 3);
    c.release_snapshots(3);
    c.run();
    let (r0, r3) = (c.replica(0), c.replica(3));
    assert_eq!(r3.stable_checkpoint().seq, k);
    assert_eq!(r3.stable_checkpoint().digest, r0.stable_checkpoint().digest);
    assert_eq!(r3.app_digest(), r0.app_digest());
}
