//! Normal-case operation (OSDI'99 §4.2): request, pre-prepare, prepare, commit,
//! and execution in sequence order.

use super::slot::{insert_vote, matching};
use super::Replica;
use crate::app::Application;
use crate::client_table::Freshness;
use crate::durable::PersistRecord;
use crate::io::{Executed, Output, Timer};
use crate::messages::{
    request_id, Batch, Commit, Message, PrePrepare, Prepare, PreparedCert, Refusal, Reply,
    ReplyResult, Request,
};
use crate::params::ProtocolParams;
use crate::rejection::Rejection;
use crate::reply::sign_reply_batch;
use crate::types::Seq;
use bft_crypto::{Digest, Signed, Verified};

/// What applying a batch did: the fresh requests (executed or refused), the
/// executed ones with their results, and the replies to send.
#[derive(Clone, Debug, Default)]
pub(super) struct Applied {
    pub fresh: Vec<crate::types::RequestId>,
    pub done: Vec<(crate::types::RequestId, Vec<u8>)>,
    /// One per fresh request; emptied once a tentative execution has sent them.
    pub replies: Vec<Reply>,
}

impl<A: Application> Replica<A> {
    /// §4.1: a request newer than the client's last executed one is ordered; the last
    /// one gets its cached reply again; older ones are ignored.
    pub(super) fn on_request(&mut self, req: Verified<Request>) {
        let client = req.signer();
        let ts = req.timestamp;
        match self.clients.freshness(&client, ts) {
            Freshness::Stale => return,
            Freshness::Repeat(last) => {
                // Always in full: a retransmission is how a client asks for the
                // result its designated replier did not send (TOCS §5.1.1).
                let outcome = last
                    .result
                    .clone()
                    .map(ReplyResult::Full)
                    .ok_or(Refusal::ReplyNotKept);
                // Executed tentatively, not committed yet: the reply says so, and
                // names the view it was prepared in (a client counts 2f+1
                // tentative replies only from one view).
                let tentative = self
                    .tentative
                    .as_ref()
                    .filter(|t| t.seq == last.executed_at)
                    .map(|t| t.view);
                let mut reply = self
                    .reply_to(client, ts, last.executed_at, outcome)
                    .tentative(tentative.is_some());
                reply.view = tentative.unwrap_or(reply.view);
                self.send_replies(vec![reply]);
                if tentative.is_none() {
                    return;
                }
                // Not committed yet: it still waits like any request, so the request
                // timer runs and a view change follows if it never commits (the
                // simulator's storage family, seed 318: a restarted replica took the
                // retransmission for a repeat and never waited for it).
            }
            // Ordered; one whose horizon has passed is refused when it executes,
            // so every replica refuses it at the same point of the order.
            Freshness::New => {}
        }
        let known = self.waiting.get(&client).map(|w| w.payload.timestamp);
        if known.is_some_and(|k| k > ts) {
            return;
        }
        let req = req.into_signed();
        if known != Some(ts) {
            if known.is_none() && self.waiting.len() >= self.cfg.max_pending {
                self.reject(None, Rejection::Overloaded);
                return;
            }
            self.waiting.insert(client, req.clone());
        }
        if self.changing {
            return;
        }
        if self.is_primary() {
            if known != Some(ts) {
                self.queue.push_back(req);
            }
            self.try_propose(false);
        } else {
            // A client sends to the primary first; a backup that hears of a request
            // relays it and starts its timer (the primary may be faulty).
            let primary = self.primary();
            self.emit(Output::Send {
                to: primary,
                message: Message::Request(req),
            });
        }
    }

    /// Primary: cut batches while the window has room. A batch leaves when full, when
    /// fewer than `max_batches_in_flight` batches are in flight (so an idle system
    /// answers a lone request at once, and under load requests gather while the
    /// pipeline is busy), or when the batch timer fired (`timer_fired`).
    pub(super) fn try_propose(&mut self, mut timer_fired: bool) {
        if !self.is_primary() || self.changing {
            return;
        }
        loop {
            self.drop_stale_queue_head();
            if self.queue.is_empty() {
                self.deadlines.remove(&Timer::Batch);
                return;
            }
            if self.next_seq > self.high_watermark() {
                return; // resumes when a checkpoint becomes stable
            }
            let in_flight = self.next_seq.saturating_sub(self.last_executed + 1);
            let room = in_flight < self.cfg.max_batches_in_flight;
            if self.queue.len() < self.cfg.params.batch_size && !timer_fired && !room {
                if !self.deadlines.contains_key(&Timer::Batch) {
                    self.set_timer(Timer::Batch, self.cfg.batch_timeout);
                }
                return;
            }
            timer_fired = false;
            // Full at `batch_size` requests or `max_batch_bytes` bytes, whichever comes
            // first (no request is larger than a batch: the validator refuses those).
            let (max_len, max_bytes) =
                (self.cfg.params.batch_size, self.cfg.params.max_batch_bytes);
            let mut requests = Vec::new();
            let mut bytes = 0;
            while requests.len() < max_len {
                let Some(r) = self.queue.front() else {
                    break;
                };
                let size = ProtocolParams::request_bytes(r);
                if !requests.is_empty() && bytes + size > max_bytes {
                    break;
                }
                let r = self.queue.pop_front().expect("the front was just seen");
                if self.is_orderable(&r) {
                    bytes += size;
                    requests.push(r);
                }
            }
            if !requests.is_empty() {
                self.propose(Batch::new(requests));
            }
        }
    }

    fn drop_stale_queue_head(&mut self) {
        while let Some(r) = self.queue.front() {
            if self.is_orderable(r) {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// Not executed, not already in a batch of this view, and still the client's newest.
    fn is_orderable(&self, r: &Signed<Request>) -> bool {
        let id = request_id(r);
        matches!(self.clients.freshness(&id.0, id.1), Freshness::New)
            && !self.in_flight.contains(&id)
            && self
                .waiting
                .get(&id.0)
                .is_some_and(|w| w.payload.timestamp == id.1)
    }

    fn propose(&mut self, batch: Batch) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pp = self.sign(PrePrepare {
            view: self.view,
            seq,
            digest: batch.digest(),
            replica: self.me(),
        });
        self.accept_pre_prepare(pp.clone(), batch.clone());
        self.broadcast(Message::PrePrepare(pp, batch));
        self.check_prepared(seq);
    }

    /// Record an accepted pre-prepare; durable before our prepare (or, as primary,
    /// the pre-prepare itself) leaves, so a restart never accepts a second digest.
    pub(super) fn accept_pre_prepare(&mut self, pp: Signed<PrePrepare>, batch: Batch) {
        let seq = pp.payload.seq;
        // Invariants (a breach is a bug in the caller, not bad input): the slot is
        // in our window, and we never accept a second digest for one (view, seq).
        assert!(
            seq > self.low_watermark(),
            "accepting seq {seq} at or below the low water mark {}",
            self.low_watermark()
        );
        if let Some((v, d)) = self.log.get(&seq).and_then(|s| s.accepted()) {
            assert!(
                v != pp.payload.view || d == pp.payload.digest,
                "accepting a second digest for view {v} seq {seq}"
            );
        }
        for r in batch.requests.iter() {
            self.in_flight.insert(request_id(r));
        }
        self.emit(Output::Persist(PersistRecord::Accepted {
            pre_prepare: pp.clone(),
            batch: batch.clone(),
        }));
        let slot = self.log.entry(seq).or_default();
        slot.pre_prepare = Some((pp, batch));
        slot.prepared = false;
        slot.committed = false;
        slot.requests_valid = None;
    }

    /// §4.2: a backup accepts a pre-prepare if it is in view v, signed by v's primary,
    /// within the watermarks, and it has not accepted another digest for (v, n).
    pub(super) fn on_pre_prepare(&mut self, pp: Verified<PrePrepare>, batch: Batch) {
        let (view, seq, digest) = (pp.view, pp.seq, pp.digest);
        if self.changing && view == self.view && self.in_window(seq) && pp.replica == self.primary()
        {
            // The new primary's proposals can overtake its new-view; keep them for
            // when we enter the view (at most one per seq in the window).
            self.early_pre_prepares.insert(seq, (pp, batch));
            return;
        }
        if view < self.view {
            return self.witness_pre_prepare(pp, batch); // a view we left
        }
        if self.changing || view != self.view || seq <= self.low_watermark() {
            return; // another view's, or already garbage collected
        }
        if pp.replica != self.primary() {
            return self.reject(
                Some(pp.replica),
                Rejection::NotPrimary {
                    replica: pp.replica,
                    view,
                },
            );
        }
        if self.is_primary() {
            return; // our own, echoed back
        }
        if !self.in_window(seq) {
            let (low, high) = self.watermarks();
            return self.reject(Some(pp.replica), Rejection::OutOfWindow { seq, low, high });
        }
        if let Some((v, d)) = self.log.get(&seq).and_then(|s| s.accepted()) {
            if v == view {
                if d != digest {
                    self.reject(
                        Some(pp.replica),
                        Rejection::ConflictingPrePrepare { view, seq },
                    );
                    // The group may have committed that one (see `left_view`).
                    self.witness_pre_prepare(pp, batch);
                }
                return;
            }
        }
        self.accept_pre_prepare(pp.into_signed(), batch);
        self.send_prepare(seq);
        self.check_prepared(seq);
    }

    /// Sign, record and broadcast our prepare for the accepted pre-prepare at `seq`.
    pub(super) fn send_prepare(&mut self, seq: Seq) {
        let Some((view, digest)) = self.log.get(&seq).and_then(|s| s.accepted()) else {
            return;
        };
        let prepare = self.sign(Prepare {
            view,
            seq,
            digest,
            replica: self.me(),
        });
        let slot = self.log.entry(seq).or_default();
        slot.prepares
            .insert(prepare.payload.replica, prepare.clone());
        self.broadcast(Message::Prepare(prepare));
    }

    pub(super) fn on_prepare(&mut self, p: Verified<Prepare>) {
        let (view, seq, replica) = (p.view, p.seq, p.replica);
        if seq <= self.low_watermark() || view < self.view {
            return;
        }
        if seq > self.high_watermark() {
            let (low, high) = self.watermarks();
            return self.reject(Some(replica), Rejection::OutOfWindow { seq, low, high });
        }
        if replica == self.primary_of(view) {
            return self.reject(
                Some(replica),
                Rejection::Malformed("prepare from the primary".into()),
            );
        }
        let slot = self.log.entry(seq).or_default();
        let accepted = slot.accepted();
        let stored = insert_vote(&mut slot.prepares, p.into_signed(), seq, accepted);
        if let Some(e) = stored.equivocation {
            self.reject(Some(replica), e);
        }
        if stored.changed {
            self.check_prepared(seq);
        }
    }

    pub(super) fn on_commit(&mut self, c: Verified<Commit>) {
        let (view, seq, replica) = (c.view, c.seq, c.replica);
        if view < self.view {
            return self.witness_commit(&c); // a view we left
        }
        if seq <= self.low_watermark() {
            return;
        }
        if seq > self.high_watermark() {
            let (low, high) = self.watermarks();
            return self.reject(Some(replica), Rejection::OutOfWindow { seq, low, high });
        }
        if view == self.view {
            self.witness_commit(&c); // in case our pre-prepare is not the committed one
        }
        let slot = self.log.entry(seq).or_default();
        let accepted = slot.accepted();
        let stored = insert_vote(&mut slot.commits, c.into_signed(), seq, accepted);
        if let Some(e) = stored.equivocation {
            self.reject(Some(replica), e);
        }
        if stored.changed {
            self.check_committed(seq);
        }
    }

    /// prepared(m, v, n, i): the pre-prepare and 2f matching prepares from distinct
    /// backups. On becoming prepared: persist the certificate, then multicast a commit.
    pub(super) fn check_prepared(&mut self, seq: Seq) {
        if self.changing {
            return;
        }
        let view = self.view;
        let primary = self.primary();
        let needed = self.quorum() - 1;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some((pp, batch)) = slot.pre_prepare.as_ref() else {
            return;
        };
        if pp.payload.view != view {
            return;
        }
        if !slot.prepared {
            let prepares = matching(&slot.prepares, view, pp.payload.digest, Some(primary));
            if prepares.len() < needed {
                return;
            }
            let cert = PreparedCert {
                pre_prepare: pp.clone(),
                batch: batch.clone(),
                prepares: prepares.into_iter().take(needed).collect(),
            };
            let digest = cert.digest();
            self.emit(Output::Persist(PersistRecord::Prepared(cert.clone())));
            self.certs.insert(seq, cert);
            let commit = self.sign(Commit {
                view,
                seq,
                digest,
                replica: self.me(),
            });
            let slot = self.log.get_mut(&seq).expect("slot checked above");
            slot.prepared = true;
            slot.commits.insert(commit.payload.replica, commit.clone());
            self.broadcast(Message::Commit(commit));
        }
        self.check_committed(seq);
        self.try_tentative();
    }

    /// committed-local(m, v, n, i): prepared and 2f+1 matching commits.
    pub(super) fn check_committed(&mut self, seq: Seq) {
        let view = self.view;
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        let Some((view_pp, digest)) = slot.accepted() else {
            return;
        };
        if !slot.prepared || slot.committed || view_pp != view || self.changing {
            return;
        }
        if matching(&slot.commits, view, digest, None).len() < self.cfg.commit_quorum {
            return;
        }
        slot.committed = true;
        self.emit(Output::Persist(PersistRecord::Committed {
            seq,
            view,
            digest,
        }));
        self.try_execute();
    }

    /// Execute committed batches in sequence order, without gaps: committed here, or
    /// committed by the group in a view we left (see `left_view`).
    pub(super) fn try_execute(&mut self) {
        // Execution never waits for a state fetch: if the committed slots are here,
        // catching up by executing them is as good as installing a snapshot.
        let before = self.last_executed;
        loop {
            let seq = self.last_executed + 1;
            let here = self.log.get(&seq).filter(|slot| slot.committed);
            if let Some((pp, batch)) = here.and_then(|slot| slot.pre_prepare.clone()) {
                self.execute(seq, pp.payload.view, pp.payload.digest, &batch);
            } else if let Some((view, digest, batch)) = self.committed_in_a_left_view(seq) {
                self.execute(seq, view, digest, &batch);
            } else {
                break;
            }
            self.forget_left_views_upto(seq);
        }
        // An execution makes room in the primary's pipeline: what gathered while it
        // was full leaves now, as one batch.
        if self.last_executed > before {
            // Reads waiting for these answer now, from committed state, before the
            // next batch may execute tentatively on top of it.
            self.answer_reads();
            self.try_tentative();
            self.try_propose(false);
        }
    }

    /// Execute one committed batch: apply it (or keep what its tentative execution
    /// applied); report it; reply to each client (unless the tentative execution
    /// did); take a checkpoint every K. `Executed` precedes the replies: what a
    /// client hears was executed first.
    ///
    /// `digest` is `batch`'s, as the pre-prepare or certificate it came with names
    /// it (checked when that arrived): hashing the batch again here cost every
    /// replica a second pass over every request (issue 13).
    pub(super) fn execute(&mut self, seq: Seq, view: u64, digest: Digest, batch: &Batch) {
        assert_eq!(
            seq,
            self.last_executed + 1,
            "execution must go one sequence number at a time"
        );
        if self.cfg.audit_batch_digests {
            // Every seeded run (and debug build) checks what the node takes on trust.
            assert_eq!(
                digest,
                batch.digest(),
                "a batch executed under another digest"
            );
        }
        let (applied, replied) = match self.take_tentative(seq, digest) {
            Some(applied) => (applied, true),
            None => (self.apply(seq, batch, false), false),
        };
        for r in batch.requests.iter() {
            self.in_flight.remove(&request_id(r));
        }
        for id in &applied.fresh {
            if self
                .waiting
                .get(&id.0)
                .is_some_and(|w| w.payload.timestamp <= id.1)
            {
                self.waiting.remove(&id.0);
            }
        }
        self.last_executed = seq;
        // A refused request counts as progress too: the primary ordered it. (Each
        // fresh request got a reply, sent already if it executed tentatively.)
        if !applied.fresh.is_empty() {
            self.progress = true;
            if view == self.view && !self.changing {
                self.executed_in_view_at = Some(self.now);
            }
            self.vc_timeout = self.cfg.view_change_timeout;
            self.primary_made_progress(self.primary_of(view));
        }
        self.emit(Output::Executed(Executed {
            seq,
            view,
            digest,
            requests: applied.done,
            batch_len: batch.len(),
        }));
        if !replied {
            self.send_replies(applied.replies);
        }
        if seq.is_multiple_of(self.cfg.params.checkpoint_interval) {
            self.take_checkpoint(seq);
        }
    }

    /// Apply `batch` at `seq` to the application and the client table: each fresh
    /// request executes (or is refused as expired), in order. Tentative replies
    /// say so.
    pub(super) fn apply(&mut self, seq: Seq, batch: &Batch, tentative: bool) -> Applied {
        let mut applied = Applied::default();
        for r in batch.requests.iter() {
            let id = request_id(r);
            if self.clients.freshness(&id.0, id.1) != Freshness::New {
                continue;
            }
            applied.fresh.push(id);
            if !self.clients.in_horizon(r.payload.horizon, seq) {
                let refusal = Err(Refusal::Expired { seq });
                let reply = self.reply_to(id.0, id.1, seq, refusal).tentative(tentative);
                applied.replies.push(reply);
                continue;
            }
            let result = self.app.execute(&r.payload.operation);
            self.clients.record(id.0, id.1, result.clone(), seq);
            let sent = ReplyResult::for_replier(&result, r.payload.replier, self.me());
            let reply = self.reply_to(id.0, id.1, seq, Ok(sent));
            applied.replies.push(reply.tentative(tentative));
            applied.done.push((id, result));
        }
        assert_eq!(
            applied.fresh.len(),
            applied.replies.len(),
            "every fresh request gets one reply"
        );
        applied
    }

    /// The reply to `client`'s request `timestamp`, ordered at `seq`: its result, or
    /// why there is none.
    pub(super) fn reply_to(
        &self,
        client: bft_crypto::PublicKey,
        timestamp: u64,
        seq: Seq,
        outcome: Result<ReplyResult, Refusal>,
    ) -> Reply {
        let (result, refusal) = match outcome {
            Ok(result) => (result, None),
            Err(refusal) => (ReplyResult::default(), Some(refusal)),
        };
        Reply {
            view: self.view,
            timestamp,
            client,
            replica: self.me(),
            result,
            refusal,
            seq,
            tentative: false,
        }
    }

    /// One signature for all of `replies` (a batch's, or a lone repeated one).
    pub(super) fn send_replies(&mut self, replies: Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        let signed = sign_reply_batch(&self.key, self.view, self.me(), replies);
        self.emit(Output::Replies(signed));
    }
}
