//! Stateless validation of network input: every signature (outer and nested), that
//! each signer is who the message claims, and the internal consistency of
//! certificates. Stateful checks (view, window, conflicts) happen in the replica.
//!
//! This is pure CPU work with no access to replica state, so the node runs it off
//! the event loop, in parallel and batched.

use crate::fd::Heartbeat;
use crate::generals::{verify_chain, Report, VerifiedChain};
use crate::messages::{state_digest, Commit};
use crate::messages::{
    Batch, Checkpoint, FetchState, Message, NewView, PrePrepare, Prepare, PreparedCert, ReplyRoute,
    Request, StateSnapshot, ViewChange,
};
use crate::new_view::{plan, NewViewPlan};
use crate::rejection::Rejection;
use crate::reply::{verify_reply, RootCache, SignedReply, VerifiedReply};
use crate::types::{Membership, ReplicaConfig, ReplicaId, Seq, View};
use bft_crypto::{all_valid, verify_batch, Digest, Signable, Signed, Verified};
use std::collections::BTreeSet;

/// A message whose signatures have all been checked.
#[derive(Clone, Debug)]
pub enum VerifiedMessage {
    Request(Verified<Request>),
    PrePrepare(Verified<PrePrepare>, Batch),
    Prepare(Verified<Prepare>),
    Commit(Verified<Commit>),
    Checkpoint(Verified<Checkpoint>),
    ViewChange(Verified<ViewChange>),
    /// With the pre-prepare set recomputed from V (already checked to match O).
    NewView(Verified<NewView>, NewViewPlan),
    FetchState(Verified<FetchState>),
    State(Verified<StateSnapshot>),
    Reply(VerifiedReply),
    Heartbeat(Verified<Heartbeat>),
    Generals(VerifiedChain),
    GeneralsReport(Verified<Report>),
    /// A client's reply route: for the node's transport, never for the core.
    ReplyRoute(Verified<ReplyRoute>),
}

impl VerifiedMessage {
    /// The replica that sent it (None for client requests).
    #[must_use]
    pub fn sender(&self) -> Option<ReplicaId> {
        Some(match self {
            VerifiedMessage::Request(_) | VerifiedMessage::ReplyRoute(_) => return None,
            VerifiedMessage::PrePrepare(m, _) => m.replica,
            VerifiedMessage::Prepare(m) => m.replica,
            VerifiedMessage::Commit(m) => m.replica,
            VerifiedMessage::Checkpoint(m) => m.replica,
            VerifiedMessage::ViewChange(m) => m.replica,
            VerifiedMessage::NewView(m, _) => m.replica,
            VerifiedMessage::FetchState(m) => m.replica,
            VerifiedMessage::State(m) => m.replica,
            VerifiedMessage::Reply(m) => m.replica,
            VerifiedMessage::Heartbeat(m) => m.replica,
            VerifiedMessage::Generals(c) => c.last_signer(),
            VerifiedMessage::GeneralsReport(m) => m.replica,
        })
    }
}

/// The replica (if any) a raw message claims to come from, for attributing rejections.
#[must_use]
pub fn claimed_sender(msg: &Message) -> Option<ReplicaId> {
    Some(match msg {
        Message::Request(_) | Message::ReplyRoute(_) => return None,
        Message::PrePrepare(m, _) => m.payload.replica,
        Message::Prepare(m) => m.payload.replica,
        Message::Commit(m) => m.payload.replica,
        Message::Checkpoint(m) => m.payload.replica,
        Message::ViewChange(m) => m.payload.replica,
        Message::NewView(m) => m.payload.replica,
        Message::FetchState(m) => m.payload.replica,
        Message::State(m) => m.payload.replica,
        Message::Reply(m) => m.reply.replica,
        Message::Heartbeat(m) => m.payload.replica,
        Message::Generals(c) => return c.links.last().map(|l| l.payload.signer),
        Message::GeneralsReport(m) => m.payload.replica,
    })
}

/// The group and limits a message is checked against.
#[derive(Clone, Debug)]
pub struct Validator {
    members: Membership,
    window: u64,
    checkpoint_interval: u64,
    max_batch: usize,
}

type Checked<T> = Result<T, Rejection>;

impl Validator {
    #[must_use]
    pub fn new(config: &ReplicaConfig) -> Self {
        Self {
            members: config.members.clone(),
            window: config.window,
            checkpoint_interval: config.checkpoint_interval,
            max_batch: config.batch_size,
        }
    }

    #[must_use]
    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// Check a message from the network.
    ///
    /// # Errors
    /// The first problem found, typed.
    pub fn verify(&self, msg: Message) -> Checked<VerifiedMessage> {
        Ok(match msg {
            Message::Request(r) => {
                VerifiedMessage::Request(r.verify().map_err(|_| Rejection::BadSignature)?)
            }
            Message::PrePrepare(pp, batch) => {
                let claimed = pp.payload.replica;
                let pp = self.by_replica(pp, claimed)?;
                self.check_batch(&batch, pp.digest)?;
                VerifiedMessage::PrePrepare(pp, batch)
            }
            Message::Prepare(m) => {
                let r = m.payload.replica;
                VerifiedMessage::Prepare(self.by_replica(m, r)?)
            }
            Message::Commit(m) => {
                let r = m.payload.replica;
                VerifiedMessage::Commit(self.by_replica(m, r)?)
            }
            Message::Checkpoint(m) => {
                let r = m.payload.replica;
                let m = self.by_replica(m, r)?;
                if m.seq == 0 || !m.seq.is_multiple_of(self.checkpoint_interval) {
                    return Err(Rejection::MisalignedCheckpoint { seq: m.seq });
                }
                VerifiedMessage::Checkpoint(m)
            }
            Message::ViewChange(m) => {
                self.check_view_change(&m.payload)?;
                let r = m.payload.replica;
                VerifiedMessage::ViewChange(self.by_replica(m, r)?)
            }
            Message::NewView(m) => {
                let plan = self.check_new_view(&m.payload)?;
                let r = m.payload.replica;
                VerifiedMessage::NewView(self.by_replica(m, r)?, plan)
            }
            Message::FetchState(m) => {
                let r = m.payload.replica;
                VerifiedMessage::FetchState(self.by_replica(m, r)?)
            }
            Message::State(m) => {
                let digest = self.check_checkpoint_proof(m.payload.seq, &m.payload.proof)?;
                if digest != Some(state_digest(&m.payload.snapshot)) {
                    return Err(Rejection::BadSnapshot);
                }
                let r = m.payload.replica;
                VerifiedMessage::State(self.by_replica(m, r)?)
            }
            Message::Reply(m) => VerifiedMessage::Reply(self.verify_reply(m, None)?),
            Message::Heartbeat(m) => {
                let r = m.payload.replica;
                VerifiedMessage::Heartbeat(self.by_replica(m, r)?)
            }
            Message::Generals(c) => VerifiedMessage::Generals(verify_chain(c, &self.members)?),
            Message::GeneralsReport(m) => {
                let r = m.payload.replica;
                VerifiedMessage::GeneralsReport(self.by_replica(m, r)?)
            }
            Message::ReplyRoute(m) => {
                VerifiedMessage::ReplyRoute(m.verify().map_err(|_| Rejection::BadSignature)?)
            }
        })
    }

    /// Check many messages at once. Client requests among them are verified with one
    /// ed25519 batch verification (falling back to one by one to find a bad one);
    /// everything else as in [`Validator::verify`]. Results are in input order.
    #[must_use]
    pub fn verify_many(&self, msgs: Vec<Message>) -> Vec<Checked<VerifiedMessage>> {
        let mut results: Vec<Option<Checked<VerifiedMessage>>> = Vec::with_capacity(msgs.len());
        let mut requests = Vec::new();
        let mut request_slots = Vec::new();
        for msg in msgs {
            match msg {
                Message::Request(r) => {
                    request_slots.push(results.len());
                    requests.push(r);
                    results.push(None);
                }
                other => results.push(Some(self.verify(other))),
            }
        }
        for (slot, checked) in request_slots.into_iter().zip(verify_batch(requests)) {
            results[slot] = Some(
                checked
                    .map(VerifiedMessage::Request)
                    .map_err(|_| Rejection::BadSignature),
            );
        }
        results
            .into_iter()
            .map(|r| r.expect("every slot filled"))
            .collect()
    }

    /// A reply to a client: under its root, the root signed by the replica the reply
    /// names. `cache` (a client process's roots already checked) can spare the
    /// signature check for a root seen before.
    ///
    /// # Errors
    /// The first problem found, typed.
    pub fn verify_reply(
        &self,
        reply: SignedReply,
        cache: Option<&RootCache>,
    ) -> Checked<VerifiedReply> {
        self.check_signer(&reply.root, reply.root.payload.replica)?;
        verify_reply(reply, cache)
    }

    /// Verify `signed` and that its signer is replica `claimed`.
    fn by_replica<T: Signable>(
        &self,
        signed: Signed<T>,
        claimed: ReplicaId,
    ) -> Checked<Verified<T>> {
        self.check_signer(&signed, claimed)?;
        signed.verify().map_err(|_| Rejection::BadSignature)
    }

    fn check_signer<T>(&self, signed: &Signed<T>, claimed: ReplicaId) -> Checked<()> {
        match self.members.key(claimed) {
            Some(k) if k == signed.signer => Ok(()),
            Some(_) => Err(Rejection::SignerMismatch { claimed }),
            None => Err(Rejection::UnknownSigner),
        }
    }

    fn check_nested<T: Signable>(&self, signed: &Signed<T>, claimed: ReplicaId) -> Checked<()> {
        self.check_signer(signed, claimed)?;
        signed.check().map_err(|_| Rejection::BadSignature)
    }

    /// The batch hashes to `digest`, is not too large, and every request in it is
    /// signed by its client (Validity: only signed requests are ever executed).
    fn check_batch(&self, batch: &Batch, digest: Digest) -> Checked<()> {
        if batch.len() > self.max_batch {
            return Err(Rejection::BatchTooLarge {
                len: batch.len(),
                max: self.max_batch,
            });
        }
        if batch.digest() != digest {
            return Err(Rejection::DigestMismatch);
        }
        if !all_valid(&batch.requests) {
            return Err(Rejection::BadSignature);
        }
        Ok(())
    }

    /// 2f+1 signed checkpoints from distinct replicas agreeing on (seq, digest).
    /// Returns the digest, or None for the genesis checkpoint (seq 0, empty proof).
    fn check_checkpoint_proof(
        &self,
        seq: Seq,
        proof: &[Signed<Checkpoint>],
    ) -> Checked<Option<Digest>> {
        if seq == 0 {
            return if proof.is_empty() {
                Ok(None)
            } else {
                Err(Rejection::InvalidCheckpointProof("proof for seq 0"))
            };
        }
        if !seq.is_multiple_of(self.checkpoint_interval) {
            return Err(Rejection::InvalidCheckpointProof("misaligned seq"));
        }
        let first = proof
            .first()
            .ok_or(Rejection::InvalidCheckpointProof("empty proof"))?;
        let digest = first.payload.state_digest;
        let mut seen = BTreeSet::new();
        for c in proof {
            if c.payload.seq != seq || c.payload.state_digest != digest {
                return Err(Rejection::InvalidCheckpointProof("checkpoints disagree"));
            }
            if !seen.insert(c.payload.replica) {
                return Err(Rejection::InvalidCheckpointProof("duplicate signer"));
            }
            self.check_nested(c, c.payload.replica)
                .map_err(|_| Rejection::InvalidCheckpointProof("bad signature"))?;
        }
        if seen.len() < self.members.quorum() {
            return Err(Rejection::InvalidCheckpointProof(
                "fewer than 2f+1 checkpoints",
            ));
        }
        Ok(Some(digest))
    }

    /// A pre-prepare from the primary of its view (earlier than `before_view`), its
    /// batch, and 2f matching prepares from distinct backups, seq within (low, low+L].
    fn check_prepared_cert(&self, cert: &PreparedCert, before_view: View, low: Seq) -> Checked<()> {
        let bad = Rejection::InvalidPreparedCert;
        let pp = &cert.pre_prepare.payload;
        if pp.view >= before_view {
            return Err(bad("certificate view is not below the new view"));
        }
        if pp.seq <= low || pp.seq > low + self.window {
            return Err(bad("sequence outside the window"));
        }
        let primary = self.members.primary(pp.view);
        if pp.replica != primary {
            return Err(bad("pre-prepare not from the view's primary"));
        }
        self.check_nested(&cert.pre_prepare, primary)
            .map_err(|_| bad("bad pre-prepare signature"))?;
        self.check_batch(&cert.batch, pp.digest)
            .map_err(|_| bad("batch does not match"))?;
        let mut seen = BTreeSet::new();
        for p in &cert.prepares {
            let m = &p.payload;
            if (m.view, m.seq, m.digest) != (pp.view, pp.seq, pp.digest) {
                return Err(bad("prepare does not match the pre-prepare"));
            }
            if m.replica == primary || !seen.insert(m.replica) {
                return Err(bad("prepare from the primary or a duplicate"));
            }
            self.check_nested(p, m.replica)
                .map_err(|_| bad("bad prepare signature"))?;
        }
        if seen.len() + 1 < self.members.quorum() {
            return Err(bad("fewer than 2f prepares"));
        }
        Ok(())
    }

    fn check_view_change(&self, vc: &ViewChange) -> Checked<()> {
        let bad = Rejection::InvalidViewChange;
        if vc.new_view == 0 {
            return Err(bad("view change to view 0"));
        }
        self.check_checkpoint_proof(vc.stable_seq, &vc.checkpoint_proof)?;
        let mut seqs = BTreeSet::new();
        for cert in &vc.prepared {
            if !seqs.insert(cert.seq()) {
                return Err(bad("two certificates for one sequence number"));
            }
            self.check_prepared_cert(cert, vc.new_view, vc.stable_seq)?;
        }
        Ok(())
    }

    fn check_new_view(&self, nv: &NewView) -> Checked<NewViewPlan> {
        let bad = Rejection::InvalidNewView;
        let primary = self.members.primary(nv.view);
        if nv.replica != primary {
            return Err(Rejection::NotPrimary {
                replica: nv.replica,
                view: nv.view,
            });
        }
        let mut seen = BTreeSet::new();
        for vc in &nv.view_changes {
            if vc.payload.new_view != nv.view {
                return Err(bad("view-change for another view"));
            }
            if !seen.insert(vc.payload.replica) {
                return Err(bad("two view-changes from one replica"));
            }
            self.check_view_change(&vc.payload)?;
            self.check_nested(vc, vc.payload.replica)
                .map_err(|_| bad("bad view-change signature"))?;
        }
        if seen.len() < self.members.quorum() {
            return Err(bad("fewer than 2f+1 view-changes"));
        }
        let plan = plan(&nv.view_changes);
        if plan.entries.len() != nv.pre_prepares.len() {
            return Err(bad("pre-prepare set differs from the one computed from V"));
        }
        for ((seq, digest, _), pp) in plan.entries.iter().zip(&nv.pre_prepares) {
            let m = &pp.payload;
            if (m.view, m.seq, m.digest, m.replica) != (nv.view, *seq, *digest, primary) {
                return Err(bad("pre-prepare set differs from the one computed from V"));
            }
            self.check_nested(pp, primary)
                .map_err(|_| bad("bad pre-prepare signature"))?;
        }
        Ok(plan)
    }
}
