//! The invariants of DESIGN.md, checked as events happen. Only honest replicas are
//! judged; Byzantine ones may do anything.

use super::linearizability::Linearizability;
use crate::io::Executed;
use crate::kv::KvOp;
use crate::rejection::Rejection;
use crate::types::{ClientId, ReplicaId, RequestId, Seq};
use bft_crypto::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation(invariant: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { invariant, detail })
}

#[derive(Default)]
pub(crate) struct Checker {
    /// Agreement: the batch digest executed at each seq by any honest replica.
    order: BTreeMap<Seq, (Digest, ReplicaId)>,
    /// Where and with what result each request was executed by honest replicas.
    executed: BTreeMap<RequestId, (Seq, Vec<u8>)>,
    /// Validity: what each client actually issued.
    issued: BTreeMap<ClientId, BTreeSet<u64>>,
    /// Client-accepted results.
    pub accepted: BTreeMap<RequestId, Vec<u8>>,
    /// Results accepted before any honest replica committed them (2f+1 tentative
    /// replies, TOCS §5.1.2): checked when the first honest replica commits them,
    /// and none may be left at the end.
    pending: Vec<(RequestId, Vec<u8>, Duration)>,
    /// Read-only results accepted (answered outside the order, so not in `accepted`,
    /// whose entries must all be in the order).
    pub reads_accepted: usize,
    /// What clients read, against the common order replayed.
    linearizability: Linearizability,
}

impl Checker {
    pub fn issued(&mut self, client: ClientId, timestamp: u64) {
        self.issued.entry(client).or_default().insert(timestamp);
    }

    /// What request `id` asks, and when its client first invoked it (a re-signed
    /// request keeps its first invocation), for the linearizability check.
    pub fn invoked(&mut self, id: RequestId, op: KvOp, at: Duration) {
        self.linearizability.invoked(id, op, at);
    }

    /// Agreement, validity (signed by its client, issued, at most once) and determinism.
    pub fn on_execute(&mut self, replica: ReplicaId, e: &Executed) -> Result<(), Violation> {
        match self.order.get(&e.seq) {
            Some((d, other)) if *d != e.digest => {
                return violation(
                    "agreement",
                    format!(
                        "seq {}: replica {replica} executed {:?}, replica {other} executed {d:?}",
                        e.seq, e.digest
                    ),
                )
            }
            Some(_) => {}
            None => {
                self.order.insert(e.seq, (e.digest, replica));
            }
        }
        for (id, result) in &e.requests {
            if !self.issued.get(&id.0).is_some_and(|ts| ts.contains(&id.1)) {
                return violation(
                    "validity",
                    format!("replica {replica} executed a request no client issued: {id:?}"),
                );
            }
            match self.executed.get(id) {
                Some((seq, _)) if *seq != e.seq => {
                    return violation(
                        "validity",
                        format!("request {id:?} executed at seq {seq} and again at seq {} (replica {replica})", e.seq),
                    )
                }
                Some((_, r)) if r != result => {
                    return violation("agreement", format!("request {id:?} gave two results (replica {replica})"))
                }
                Some(_) => {}
                None => {
                    self.executed.insert(*id, (e.seq, result.clone()));
                }
            }
        }
        self.linearizability.executed(e.seq, &e.requests)?;
        let pending = std::mem::take(&mut self.pending);
        for (id, result, at) in pending {
            if self.executed.contains_key(&id) {
                self.on_accept(id, &result, at)?;
            } else {
                self.pending.push((id, result, at));
            }
        }
        Ok(())
    }

    /// Client safety: an accepted result is the result in the common order; and
    /// linearizability (see [`Linearizability`]).
    pub fn on_accept(
        &mut self,
        id: RequestId,
        result: &[u8],
        at: Duration,
    ) -> Result<(), Violation> {
        match self.executed.get(&id) {
            // Tentatively executed, not committed yet: judged when it commits.
            None => {
                self.pending.push((id, result.to_vec(), at));
                Ok(())
            }
            Some((seq, r)) if r != result => violation(
                "client-safety",
                format!("client accepted a result for {id:?} that differs from seq {seq}'s"),
            ),
            Some(_) => {
                self.accepted.insert(id, result.to_vec());
                self.linearizability.completed(id, result, at)
            }
        }
    }

    /// A client accepted `result` for the read-only request `id`, answered outside
    /// the order: it must never have been ordered, and its value must be
    /// linearizable (see [`Linearizability`]).
    pub fn on_read_accept(
        &mut self,
        id: RequestId,
        result: &[u8],
        at: Duration,
    ) -> Result<(), Violation> {
        if let Some((seq, _)) = self.executed.get(&id) {
            return violation(
                "validity",
                format!("read-only request {id:?} was executed at seq {seq}"),
            );
        }
        self.reads_accepted += 1;
        self.linearizability.completed(id, result, at)
    }

    /// A validation failure of a message an honest replica sent is a bug (a forged
    /// certificate, or an amnesiac replica equivocating after a restart).
    pub fn on_rejection(
        &self,
        at: ReplicaId,
        from: ReplicaId,
        reason: &Rejection,
    ) -> Result<(), Violation> {
        let benign = matches!(
            reason,
            Rejection::OutOfWindow { .. } | Rejection::Overloaded | Rejection::RelayRefused { .. }
        );
        if benign {
            return Ok(());
        }
        violation(
            "honest-sender",
            format!("replica {at} rejected a message from honest replica {from}: {reason}"),
        )
    }

    /// Whether a result accepted on tentative replies has not committed yet.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Durability: every accepted request is in the order at or below `executed_upto`.
    pub fn check_durable(&self, executed_upto: Seq) -> Result<(), Violation> {
        if let Some((id, ..)) = self.pending.first() {
            return violation(
                "client-safety",
                format!("client accepted {id:?} that no honest replica executed"),
            );
        }
        for id in self.accepted.keys() {
            match self.executed.get(id) {
                Some((seq, _)) if *seq <= executed_upto => {}
                other => {
                    return violation(
                        "durability",
                        format!("accepted request {id:?} is not in the executed prefix ({other:?}, upto {executed_upto})"),
                    )
                }
            }
        }
        Ok(())
    }

    /// The highest seq holding a request some client accepted.
    pub fn highest_accepted_seq(&self) -> Seq {
        self.accepted
            .keys()
            .filter_map(|id| self.executed.get(id))
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(0)
    }

    pub fn committed_seqs(&self) -> u64 {
        self.order.keys().next_back().copied().unwrap_or(0)
    }
}
