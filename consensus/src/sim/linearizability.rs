//! Linearizability of what clients read, against the common order (issue 15).
//!
//! Ordered requests are linearizable by construction once agreement and client
//! safety hold: a request's place in the order is fixed before its client can
//! accept it, so the order respects real time. A read answered outside the order
//! (PBFT's read-only optimisation, TOCS §5.1.3) has no place of its own; this
//! checker gives it one or reports that none exists. The common order is replayed
//! on a model key-value store, keeping every value each key had and from which
//! position (`(seq, index in the batch)`). A read of key `k` that returned `v` is
//! linearizable iff some version of `k` equal to `v` was current at a position
//! between
//! - the latest position of any operation that completed before the read was
//!   invoked (real time: what finished before it began must be visible), and
//! - the end of the order executed when the read completed (a value nobody had
//!   executed yet cannot have been read),
//!
//! and the read then takes the earliest such position, which later reads must not
//! go behind. Ordered reads take the check too (their position is their own), which
//! keeps the checker honest on every run.
//!
//! The model only knows operations it was told of ([`Linearizability::invoked`]);
//! a rogue client's puts, on a key of its own, are left out.

use super::checker::Violation;
use crate::app::Application;
use crate::kv::{KvOp, KvResult, KvStore};
use crate::types::{RequestId, Seq};
use std::collections::BTreeMap;
use std::time::Duration;

/// A place in the common order: the batch's sequence number and the request's index
/// in it.
pub(crate) type Position = (Seq, u32);

/// A value a key took (None: absent) and the position it took it at.
type Version = (Position, Option<Vec<u8>>);

/// A completion already judged, kept to judge again if an earlier completion is
/// learnt late (a result accepted on tentative replies is judged when it commits).
struct Judged {
    id: RequestId,
    invoked: Duration,
    what: Judgement,
}

enum Judgement {
    /// An ordered operation at its position.
    Ordered(Position),
    /// A read answered outside the order: its key, value, and what had executed
    /// when it completed.
    Read {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        before: Position,
    },
}

#[derive(Default)]
pub(crate) struct Linearizability {
    /// What each request asks and when its client first invoked it.
    ops: BTreeMap<RequestId, (KvOp, Duration)>,
    /// The common order replayed so far.
    model: KvStore,
    /// The last sequence number replayed (batches are replayed in order).
    replayed: Seq,
    /// First executions that arrived ahead of a gap, waiting for it to fill.
    pending: BTreeMap<Seq, Vec<(RequestId, Vec<u8>)>>,
    /// Where each replayed request sits.
    positions: BTreeMap<RequestId, Position>,
    /// Per key, each value it took and the position it took it at, in order (absent
    /// keys start as `None` at the start of the order).
    versions: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Completed operations by completion time: the latest position any of them
    /// holds up to then (a running maximum, so a prefix search answers).
    completed: Vec<(Duration, Position)>,
    /// Every completion judged so far (see [`Judged`]).
    judged: Vec<Judged>,
}

impl Linearizability {
    /// A client invoked `id` (or re-signed an earlier invocation as `id`) at `at`.
    pub fn invoked(&mut self, id: RequestId, op: KvOp, at: Duration) {
        self.ops.insert(id, (op, at));
    }

    /// The first honest execution of `seq`, with the requests it executed in order
    /// and their results. Batches are replayed in sequence order.
    pub fn executed(
        &mut self,
        seq: Seq,
        requests: &[(RequestId, Vec<u8>)],
    ) -> Result<(), Violation> {
        if seq <= self.replayed {
            return Ok(());
        }
        self.pending.entry(seq).or_insert_with(|| requests.to_vec());
        while let Some(batch) = self.pending.remove(&(self.replayed + 1)) {
            self.replayed += 1;
            self.replay(self.replayed, &batch)?;
        }
        Ok(())
    }

    fn replay(&mut self, seq: Seq, batch: &[(RequestId, Vec<u8>)]) -> Result<(), Violation> {
        for (index, (id, result)) in batch.iter().enumerate() {
            let at = (seq, u32::try_from(index).unwrap_or(u32::MAX));
            self.positions.insert(*id, at);
            let Some((op, _)) = self.ops.get(id) else {
                continue;
            };
            let modelled = self.model.execute(&op.encode());
            if &modelled != result {
                return Err(Violation {
                    invariant: "linearizability",
                    detail: format!(
                        "the model replaying the order gave {id:?} at {at:?} another result \
                         than the replicas"
                    ),
                });
            }
            let key = op.key().to_vec();
            let now = self.model.get(&key).map(<[u8]>::to_vec);
            let versions = self
                .versions
                .entry(key)
                .or_insert_with(|| vec![((0, 0), None)]);
            if versions.last().map(|(_, v)| v) != Some(&now) {
                versions.push((at, now));
            }
        }
        Ok(())
    }

    /// A client accepted `result` for `id` at `at`. An ordered operation must sit
    /// after everything that completed before it began; a read's value must have
    /// been current at its position, or, for a read answered outside the order,
    /// somewhere between what completed before it began and what had executed by
    /// now (see the module doc). A request not replayed yet (a gap below it) is left
    /// to client safety.
    pub fn completed(
        &mut self,
        id: RequestId,
        result: &[u8],
        at: Duration,
    ) -> Result<(), Violation> {
        let Some((op, invoked)) = self.ops.get(&id).cloned() else {
            return Ok(());
        };
        let after = self.floor(invoked);
        let read = match (&op, KvResult::decode(result)) {
            (KvOp::Get { key }, Ok(KvResult::Value(value))) => Some((key.clone(), value)),
            _ => None,
        };
        let fail = |detail: String| {
            Err(Violation {
                invariant: "linearizability",
                detail,
            })
        };
        let mut judgement = None;
        let point = match (self.positions.get(&id).copied(), read) {
            (Some(p), _) if p < after => {
                return fail(format!(
                    "{id:?} was ordered at {p:?}, before {after:?}, which completed before it was invoked"
                ))
            }
            (Some(p), Some((key, value))) => {
                if self.place(&key, value.as_ref(), p, p).is_none() {
                    return fail(format!(
                        "{id:?} read {key:?} = {value:?} at {p:?}, where the order holds another value"
                    ));
                }
                p
            }
            (Some(p), None) => p,
            (None, Some((key, value))) if !self.ordered_elsewhere(&id) => {
                let before = (self.replayed, u32::MAX);
                match self.place(&key, value.as_ref(), after, before) {
                    Some(p) => {
                        judgement = Some(Judgement::Read { key, value, before });
                        p
                    }
                    None => {
                        return fail(format!(
                            "{id:?} read {key:?} = {value:?}, a value it had at no position from \
                             {after:?} (what completed before the read began) to {before:?} \
                             (what had executed)"
                        ))
                    }
                }
            }
            (None, _) => return Ok(()),
        };
        // Usually the latest completion; a result accepted on tentative replies is
        // judged when it commits, later, and goes in at its own time.
        let i = self.completed.partition_point(|(done, _)| *done <= at);
        let before = i.checked_sub(1).map_or((0, 0), |j| self.completed[j].1);
        self.completed.insert(i, (at, point.max(before)));
        for later in &mut self.completed[i + 1..] {
            later.1 = later.1.max(point);
        }
        let late = i + 1 < self.completed.len();
        self.judged.push(Judged {
            id,
            invoked,
            what: judgement.unwrap_or(Judgement::Ordered(point)),
        });
        if late {
            self.judge_again_after(at)?;
        }
        Ok(())
    }

    /// A completion at `at` was learnt after later ones: everything invoked after
    /// `at` must still find its place above it.
    fn judge_again_after(&self, at: Duration) -> Result<(), Violation> {
        for j in self.judged.iter().filter(|j| j.invoked > at) {
            let after = self.floor(j.invoked);
            let ok = match &j.what {
                Judgement::Ordered(p) => *p >= after,
                Judgement::Read { key, value, before } => {
                    self.place(key, value.as_ref(), after, *before).is_some()
                }
            };
            if !ok {
                return Err(Violation {
                    invariant: "linearizability",
                    detail: format!(
                        "{:?} sits below {after:?}, the place of an operation that completed \
                         (on tentative replies, judged at its commit) before it was invoked",
                        j.id
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether `id` waits in a batch not replayed yet (ordered, behind a gap).
    fn ordered_elsewhere(&self, id: &RequestId) -> bool {
        self.pending
            .values()
            .any(|batch| batch.iter().any(|(r, _)| r == id))
    }

    /// The latest position of the operations that completed before `t`.
    fn floor(&self, t: Duration) -> Position {
        let n = self.completed.partition_point(|(done, _)| *done < t);
        n.checked_sub(1).map_or((0, 0), |i| self.completed[i].1)
    }

    /// The earliest position in `[after, before]` at which `key` held `value`.
    fn place(
        &self,
        key: &[u8],
        value: Option<&Vec<u8>>,
        after: Position,
        before: Position,
    ) -> Option<Position> {
        let initial: [Version; 1] = [((0, 0), None)];
        let versions = self.versions.get(key).map_or(&initial[..], Vec::as_slice);
        versions.iter().enumerate().find_map(|(i, (from, v))| {
            let until = versions.get(i + 1).map(|(p, _)| *p);
            let start = (*from).max(after);
            let open = until.is_none_or(|u| start < u);
            (v.as_ref() == value && open && start <= before).then_some(start)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_crypto::KeyPair;

    fn id(c: u8, ts: u64) -> RequestId {
        (KeyPair::from_seed([c; 32]).public(), ts)
    }

    fn put(v: u8) -> KvOp {
        KvOp::Put {
            key: b"k".to_vec(),
            value: vec![v],
        }
    }

    fn get() -> KvOp {
        KvOp::Get { key: b"k".to_vec() }
    }

    fn read(v: Option<u8>) -> Vec<u8> {
        KvResult::Value(v.map(|v| vec![v])).encode()
    }

    fn ms(t: u64) -> Duration {
        Duration::from_millis(t)
    }

    /// The order: seq 1 puts 1 (client 1, accepted at 5 ms), seq 2 puts 2 (client 2,
    /// invoked at 10 ms; accepted at 20 ms if `second_completes`).
    fn two_writes(second_completes: bool) -> Linearizability {
        let mut l = Linearizability::default();
        l.invoked(id(1, 1), put(1), ms(0));
        l.invoked(id(2, 1), put(2), ms(10));
        let mut m = KvStore::default();
        let r1 = m.execute(&put(1).encode());
        let r2 = m.execute(&put(2).encode());
        l.executed(1, &[(id(1, 1), r1.clone())]).unwrap();
        l.executed(2, &[(id(2, 1), r2.clone())]).unwrap();
        l.completed(id(1, 1), &r1, ms(5)).unwrap();
        if second_completes {
            l.completed(id(2, 1), &r2, ms(20)).unwrap();
        }
        l
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        let mut l = two_writes(true);
        l.invoked(id(3, 1), get(), ms(30));
        let err = l.completed(id(3, 1), &read(Some(1)), ms(40)).unwrap_err();
        assert_eq!(err.invariant, "linearizability", "{err:?}");
        l.invoked(id(3, 2), get(), ms(50));
        l.completed(id(3, 2), &read(Some(2)), ms(60)).unwrap();
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let mut l = two_writes(true);
        // Invoked at 15: the put of 2 was invoked at 10 and completed at 20.
        l.invoked(id(3, 1), get(), ms(15));
        l.completed(id(3, 1), &read(Some(1)), ms(25)).unwrap();
        let mut l = two_writes(true);
        l.invoked(id(3, 1), get(), ms(15));
        l.completed(id(3, 1), &read(Some(2)), ms(25)).unwrap();
    }

    #[test]
    fn a_later_read_may_not_go_back_behind_an_earlier_one() {
        let mut l = two_writes(false);
        // The put of 2 is executed but not accepted: the first read may see it, and
        // the second, begun after the first ended, may then not miss it.
        l.invoked(id(3, 1), get(), ms(12));
        l.completed(id(3, 1), &read(Some(2)), ms(14)).unwrap();
        l.invoked(id(4, 1), get(), ms(16));
        let err = l.completed(id(4, 1), &read(Some(1)), ms(18)).unwrap_err();
        assert!(err.detail.contains("no position"), "{err:?}");
    }

    #[test]
    fn a_value_nobody_has_executed_yet_cannot_be_read() {
        let mut l = Linearizability::default();
        l.invoked(id(1, 1), put(7), ms(0));
        l.invoked(id(3, 1), get(), ms(1));
        // Nothing executed: only the initial absence can be read.
        assert!(l.completed(id(3, 1), &read(Some(7)), ms(2)).is_err());
        l.invoked(id(3, 2), get(), ms(3));
        l.completed(id(3, 2), &read(None), ms(4)).unwrap();
    }

    #[test]
    fn batches_replay_in_order_and_reads_inside_a_batch_see_its_earlier_writes() {
        let mut l = Linearizability::default();
        l.invoked(id(1, 1), put(1), ms(0));
        l.invoked(id(2, 1), get(), ms(0));
        l.invoked(id(1, 2), put(2), ms(0));
        let mut m = KvStore::default();
        let batch: Vec<_> = [(id(1, 1), put(1)), (id(2, 1), get()), (id(1, 2), put(2))]
            .into_iter()
            .map(|(i, op)| (i, m.execute(&op.encode())))
            .collect();
        // Seq 2 arrives first; nothing is replayed until seq 1 fills the gap.
        l.executed(2, &[]).unwrap();
        assert_eq!(l.replayed, 0);
        l.executed(1, &batch).unwrap();
        assert_eq!(l.replayed, 2);
        // The ordered get sat between the two puts and read 1.
        l.completed(id(2, 1), &batch[1].1, ms(5)).unwrap();
        // The model catches a result the replicas did not give.
        let mut wrong = Linearizability::default();
        wrong.invoked(id(1, 1), put(1), ms(0));
        let forged = KvResult::Done {
            previous: Some(vec![9]),
        }
        .encode();
        assert!(wrong.executed(1, &[(id(1, 1), forged)]).is_err());
    }

    #[test]
    fn a_write_accepted_early_and_learnt_late_still_binds_later_reads() {
        // The put of 1 was accepted at 5 ms on tentative replies; it commits (and
        // so is judged) only after a read invoked at 6 ms read the old absence.
        let mut l = Linearizability::default();
        l.invoked(id(1, 1), put(1), ms(0));
        l.invoked(id(3, 1), get(), ms(6));
        l.completed(id(3, 1), &read(None), ms(7)).unwrap();
        let r1 = KvStore::default().execute(&put(1).encode());
        l.executed(1, &[(id(1, 1), r1.clone())]).unwrap();
        let err = l.completed(id(1, 1), &r1, ms(5)).unwrap_err();
        assert!(err.detail.contains("before it was invoked"), "{err:?}");
        // A read invoked before the write completed may have missed it.
        let mut l = Linearizability::default();
        l.invoked(id(1, 1), put(1), ms(0));
        l.invoked(id(3, 1), get(), ms(4));
        l.completed(id(3, 1), &read(None), ms(7)).unwrap();
        l.executed(1, &[(id(1, 1), r1.clone())]).unwrap();
        l.completed(id(1, 1), &r1, ms(5)).unwrap();
    }
}
