//! Tentative execution at the replica (TOCS §5.1.2, `replica/tentative.rs`): a
//! prepared batch right after the committed prefix executes at once and its replies
//! say so; when it commits, that execution stands (nothing runs or replies twice).

mod common;

use bft_consensus::messages::{Commit, Message, Reply};
use bft_consensus::{Input, KvResult, Output};
use common::*;

fn replies(out: &[Output]) -> Vec<Reply> {
    out.iter()
        .filter_map(|o| match o {
            Output::Replies(r) => Some(r.replies.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_prepared_batch_executes_tentatively_then_commits_without_running_twice() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let v = g.validator();
    let writer = client_key(1);
    let req = request(&writer, 1, "k", "new");
    let batch = batch_of(vec![req.clone()]);
    let pp = v
        .verify(Message::PrePrepare(
            g.pre_prepare(0, 1, &batch),
            batch.clone(),
        ))
        .unwrap();
    c.input(1, Input::Message(pp));
    assert!(
        replies(&c.all_outputs(1)).is_empty(),
        "replied before prepared"
    );
    let p2 = v
        .verify(Message::Prepare(g.prepare(2, 0, 1, &batch)))
        .unwrap();
    c.input(1, Input::Message(p2));

    // Prepared: executed tentatively, replied at once, nothing committed.
    let out = c.all_outputs(1);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::TentativelyExecuted {
            seq: 1,
            requests: 1
        }
    )));
    assert!(!out.iter().any(|o| matches!(o, Output::Executed(_))));
    let sent = replies(&out);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].tentative);
    assert_eq!(sent[0].seq, 1);
    assert_eq!(
        KvResult::decode(sent[0].result.full().expect("short results travel in full")).unwrap(),
        KvResult::Done { previous: None }
    );
    assert_eq!(c.replica(1).last_executed(), 0);
    assert_eq!(c.replica(1).tentative_seq(), Some(1));

    // A retransmission meanwhile gets the reply again, still marked tentative.
    let again = v.verify(Message::Request(req)).unwrap();
    c.input(1, Input::Message(again));
    let sent = replies(&c.all_outputs(1));
    assert_eq!(sent.len(), 2);
    assert!(sent[1].tentative);

    // 2f+1 commits: the tentative execution stands; no second execution or reply.
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
        c.input(
            1,
            Input::Message(v.verify(Message::Commit(commit)).unwrap()),
        );
    }
    let out = c.all_outputs(1);
    let executed: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Executed(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0].requests.len(), 1);
    assert_eq!(replies(&out).len(), 2, "the commit replied again");
    assert!(!out.iter().any(|o| matches!(o, Output::RolledBack { .. })));
    assert_eq!(c.replica(1).last_executed(), 1);
    assert_eq!(c.replica(1).tentative_seq(), None);
    // The state is the committed one, the same as a replica that never went
    // tentative reaches (replica 0 commits it the ordinary way in a full run).
    assert_eq!(c.replica(1).app().get(b"k"), Some(&b"new"[..]));
}

#[test]
fn without_tentative_execution_a_prepared_batch_waits_for_its_commit() {
    let mut c = Cluster::with_group(4, |g| g.tentative_execution = false);
    let batch = batch_of(vec![request(&client_key(1), 1, "k", "new")]);
    c.prepare_at_backup_1(&batch);
    assert!(replies(&c.all_outputs(1)).is_empty());
    assert_eq!(c.replica(1).tentative_seq(), None);
}

/// The paper's rule: a replica that leaves its view undoes its tentative execution
/// (the next view may order something else at that sequence number).
#[test]
fn leaving_the_view_rolls_a_tentative_execution_back() {
    let mut c = Cluster::new(4);
    let g = Group::new(4);
    let v = g.validator();
    let req = request(&client_key(1), 1, "k", "new");
    // The backup hears of the request (its request timer runs), then prepares it.
    c.input(
        1,
        Input::Message(v.verify(Message::Request(req.clone())).unwrap()),
    );
    let batch = batch_of(vec![req]);
    c.prepare_at_backup_1(&batch);
    assert_eq!(c.replica(1).tentative_seq(), Some(1));
    assert_eq!(c.replica(1).app().get(b"k"), Some(&b"new"[..]));
    let tentative_digest = c.replica(1).app_digest();

    // No commit comes: the request timer fires and the backup asks for view 1.
    c.advance_to(std::time::Duration::from_millis(500));
    assert!(c.replica(1).in_view_change());
    let out = c.all_outputs(1);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RolledBack { seq: 1 })));
    assert_eq!(c.replica(1).tentative_seq(), None);
    assert_eq!(c.replica(1).app().get(b"k"), None);
    assert_ne!(c.replica(1).app_digest(), tentative_digest);
    assert_eq!(
        c.replica(1).app_digest(),
        c.replica(3).app_digest(),
        "the state is the committed one again, as on a replica that never executed it"
    );
    assert_eq!(c.replica(1).last_executed(), 0);
}
