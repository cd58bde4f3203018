//! Read-only requests at the replica (TOCS §5.1.3, `replica/reads.rs`): answered
//! from the current state, outside the order, once everything the replica had
//! prepared when the read arrived has executed.

mod common;

use bft_consensus::messages::{Commit, Message, ReadRequest, Refusal};
use bft_consensus::{Input, KvOp, KvResult, Output};
use bft_crypto::{KeyPair, Signed};
use common::*;

fn read(client: &KeyPair, ts: u64, op: &KvOp) -> Input {
    let signed = Signed::sign(
        ReadRequest {
            timestamp: ts,
            operation: op.encode(),
        },
        client,
    );
    Input::Message(
        Group::new(4)
            .validator()
            .verify(Message::Read(signed))
            .unwrap(),
    )
}

fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: key.as_bytes().to_vec(),
    }
}

/// Replica 1's replies to `client` in `out`: (timestamp, result, refusal).
fn replies_to(out: &[Output], client: &KeyPair) -> Vec<(u64, Vec<u8>, Option<Refusal>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Replies(r) => Some(r.replies.clone()),
            _ => None,
        })
        .flatten()
        .filter(|r| r.client == client.public())
        .map(|r| {
            let result = r.result.full().expect("reads are answered in full");
            (r.timestamp, result.to_vec(), r.refusal)
        })
        .collect()
}

#[test]
fn a_read_waits_for_what_the_replica_prepared_then_sees_it() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let v = g.validator();
    let reader = client_key(2);
    // Backup 1 gets the pre-prepare and 2f prepares for a put: prepared, not committed.
    let batch = batch_of(vec![request(&client_key(1), 1, "k", "new")]);
    c.prepare_at_backup_1(&batch);
    assert!(c.all_outputs(1).iter().any(|o| matches!(
        o,
        Output::Broadcast {
            message: Message::Commit(_)
        }
    )));
    // A read now must not be answered from the state before the put.
    c.input(1, read(&reader, 5, &get("k")));
    assert!(replies_to(&c.all_outputs(1), &reader).is_empty());
    assert_eq!(c.replica(1).pending_reads(), 1);
    // 2f+1 commits: the put executes, and the read is answered after it.
    for from in [0, 2] {
        let commit = g.sign(
            from,
            Commit {
                view: 0,
                seq: 1,
                digest: batch.digest(),
                replica: from,
            },
        );
        let m = v.verify(Message::Commit(commit)).unwrap();
        c.input(1, Input::Message(m));
    }
    assert_eq!(c.replica(1).last_executed(), 1);
    let got = replies_to(&c.all_outputs(1), &reader);
    assert_eq!(got.len(), 1);
    let (ts, result, refusal) = &got[0];
    assert_eq!((*ts, *refusal), (5, None));
    assert_eq!(
        KvResult::decode(result).unwrap(),
        KvResult::Value(Some(b"new".to_vec()))
    );
    assert!(c
        .all_outputs(1)
        .iter()
        .any(|o| matches!(o, Output::ReadsAnswered { count: 1 })));
    assert_eq!(c.replica(1).pending_reads(), 0);
    // Nothing was ordered for it: no second execution.
    assert_eq!(c.replica(1).last_executed(), 1);
}

#[test]
fn an_idle_replica_answers_at_once_and_refuses_a_write_sent_as_a_read() {
    let mut c = Cluster::new(4);
    let reader = client_key(2);
    c.input(1, read(&reader, 5, &get("k")));
    c.input(
        1,
        read(
            &reader,
            6,
            &KvOp::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        ),
    );
    let got = replies_to(&c.all_outputs(1), &reader);
    assert_eq!(got.len(), 2);
    assert_eq!(KvResult::decode(&got[0].1).unwrap(), KvResult::Value(None));
    assert_eq!(got[1], (6, Vec::new(), Some(Refusal::NotReadOnly)));
    // The write was not applied.
    assert_eq!(c.replica(1).last_executed(), 0);
    c.input(1, read(&reader, 7, &get("k")));
    let got = replies_to(&c.all_outputs(1), &reader);
    assert_eq!(KvResult::decode(&got[2].1).unwrap(), KvResult::Value(None));
}
