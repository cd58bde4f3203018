//! Read-only requests (TOCS §5.1.3): answered from the current state, outside the
//! order, so a read costs no pre-prepare, prepare or commit, and no write.
//!
//! A client accepts a read once 2f+1 replicas gave the same result. That alone is
//! not linearizable: a write is accepted on f+1 replies, so one correct replica and
//! a faulty one may be all that executed it, and a later read could gather 2f+1
//! old values from correct replicas that had not executed it yet and the faulty
//! one. The paper avoids that by making writes wait for 2f+1 replies too. We keep
//! f+1 for writes and make the replica wait instead: it answers a read only once
//! it has executed everything it had *prepared* when the read arrived. A write
//! accepted on f+1 replies committed at a correct replica, so 2f+1 replicas sent
//! commits for it before it completed. With k <= f faulty replicas, at least
//! 2f+1-k correct ones had prepared it, and any 2f+1 replies to a later read come
//! from at least 2f+1-k correct ones. Twice 2f+1-k exceeds the 3f+1-k correct
//! replicas, so the two sets share one, which answers after the write: the old
//! value cannot gather 2f+1. The same count shows that a read that completed is
//! never followed by one that goes behind it.
//!
//! The wait is bounded by the pipeline (what is prepared executes within a
//! commit round), not by new arrivals: the target is fixed when the read arrives.
//! A replica that restarted waits for the highest slot it had persisted as
//! prepared or committed, since it may have answered reads from that state before.

use super::Replica;
use crate::app::Application;
use crate::io::Output;
use crate::messages::{ReadRequest, Refusal, ReplyResult};
use crate::rejection::Rejection;
use crate::types::Seq;
use bft_crypto::Verified;

/// Bytes of read-only operations a replica holds while they wait (besides the
/// count bound, `max_pending`): a read may be as large as a batch.
pub(super) const MAX_READ_BYTES: usize = 16 * 1024 * 1024;

impl<A: Application> Replica<A> {
    /// Queue a read-only request until this replica has executed everything it had
    /// prepared (see the module doc); answered at the end of this step if it already
    /// has.
    pub(super) fn on_read(&mut self, read: Verified<ReadRequest>) {
        // One waiting read per client (a PBFT client has one request outstanding):
        // a replayed or repeated read cannot fill the queue.
        if self.read_clients.contains(&read.signer()) {
            return;
        }
        let bytes = read.operation.len();
        if self.reads.len() >= self.cfg.max_pending || self.read_bytes + bytes > MAX_READ_BYTES {
            return self.reject(None, Rejection::Overloaded);
        }
        self.read_bytes += bytes;
        self.read_clients.insert(read.signer());
        // Targets never decrease (each term below never does), so the queue stays
        // in target order; the max with the last one makes that hold regardless.
        let last = self.reads.back().map_or(0, |(t, _)| *t);
        let target = self.read_target().max(last);
        self.reads.push_back((target, read));
    }

    /// The sequence number this replica must have executed before it answers a read
    /// that arrives now: the highest it prepared, or persisted as prepared or
    /// committed before a restart, its stable checkpoint, and min-s of its view
    /// (proven stable, perhaps not fetched yet).
    fn read_target(&self) -> Seq {
        let prepared = self.certs.last_key_value().map_or(0, |(s, _)| *s);
        prepared
            .max(self.read_floor)
            .max(self.stable.seq)
            .max(self.new_view_floor)
    }

    /// Answer every queued read whose target has executed, with one signature.
    pub(super) fn answer_reads(&mut self) {
        if self.tentative.is_some() {
            return; // the state holds a batch not committed yet
        }
        let mut replies = Vec::new();
        let mut answered = 0;
        while let Some((target, _)) = self.reads.front() {
            if *target > self.last_executed {
                break;
            }
            let (_, read) = self.reads.pop_front().expect("the front was just seen");
            self.read_bytes -= read.operation.len();
            self.read_clients.remove(&read.signer());
            let outcome = self
                .app
                .execute_read_only(&read.operation)
                .map(ReplyResult::Full)
                .ok_or(Refusal::NotReadOnly);
            answered += usize::from(outcome.is_ok());
            replies.push(self.reply_to(read.signer(), read.timestamp, self.last_executed, outcome));
        }
        if answered > 0 {
            self.emit(Output::ReadsAnswered { count: answered });
        }
        self.send_replies(replies);
    }

    /// Reads waiting for their target to execute.
    #[must_use]
    pub fn pending_reads(&self) -> usize {
        self.reads.len()
    }
}
