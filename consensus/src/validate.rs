//! Stateless validation of network input: every signature (outer and nested), that
//! each signer is who the message claims, and the internal consistency of
//! certificates. Stateful checks (view, window, conflicts) happen in the replica.
//!
//! This is pure CPU work with no access to replica state, so the node runs it off
//! the event loop, in parallel and batched. Every check is written once: its
//! signatures are either checked on the spot ([`Validator::verify`], which names
//! the first bad one) or queued into one batch for many messages
//! ([`Validator::verify_many`], what [`crate::Ingress`] uses); single and batch
//! verification follow the same rule, so the two agree on every message.

use crate::fd::Heartbeat;
use crate::messages::{snapshot_digest, Commit};
use crate::messages::{
    Batch, Bodies, Checkpoint, FetchState, Message, NewView, PrePrepare, Prepare, PreparedProof,
    ReadRequest, Request, StateSnapshot, ViewChange,
};
use crate::new_view::{plan, BodyIndex, NewViewPlan};
use crate::params::ProtocolParams;
use crate::rejection::Rejection;
use crate::reply::{verify_reply, RootCache, SignedReply, VerifiedReply};
use crate::reply_bundle::{verify_bundle, ReplyBundle};
use crate::types::{Membership, ReplicaConfig, ReplicaId, Seq, View};
use bft_crypto::{
    all_valid, BatchOk, Digest, Pending, SeenSignatures, Signable, SignatureBatch, Signed, Verified,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A message whose signatures have all been checked.
#[derive(Clone, Debug)]
pub enum VerifiedMessage {
    Request(Verified<Request>),
    Read(Verified<ReadRequest>),
    PrePrepare(Verified<PrePrepare>, Batch),
    Prepare(Verified<Prepare>),
    Commit(Verified<Commit>),
    Checkpoint(Verified<Checkpoint>),
    /// With the batches of its prepared certificates (each checked against its digest).
    ViewChange(Verified<ViewChange>, Bodies),
    /// With the pre-prepare set recomputed from V (already checked to match O), its
    /// batches taken from the bodies carried beside.
    NewView(Verified<NewView>, NewViewPlan),
    FetchState(Verified<FetchState>),
    State(Verified<StateSnapshot>),
    Reply(VerifiedReply),
    /// A bundle's replies, all from the replica named.
    Replies(ReplicaId, Vec<VerifiedReply>),
    Heartbeat(Verified<Heartbeat>),
}

impl VerifiedMessage {
    /// The replica that sent it (None for client requests).
    #[must_use]
    pub fn sender(&self) -> Option<ReplicaId> {
        Some(match self {
            VerifiedMessage::Request(_) | VerifiedMessage::Read(_) => return None,
            VerifiedMessage::PrePrepare(m, _) => m.replica,
            VerifiedMessage::Prepare(m) => m.replica,
            VerifiedMessage::Commit(m) => m.replica,
            VerifiedMessage::Checkpoint(m) => m.replica,
            VerifiedMessage::ViewChange(m, _) => m.replica,
            VerifiedMessage::NewView(m, _) => m.replica,
            VerifiedMessage::FetchState(m) => m.replica,
            VerifiedMessage::State(m) => m.replica,
            VerifiedMessage::Reply(m) => m.replica,
            VerifiedMessage::Replies(replica, _) => *replica,
            VerifiedMessage::Heartbeat(m) => m.replica,
        })
    }
}

/// The group and limits a message is checked against.
#[derive(Clone, Debug)]
pub struct Validator {
    members: Membership,
    params: ProtocolParams,
    /// Always on (off only in a planted-bug test).
    request_size_check: bool,
    /// The replica this validator admits messages for, if it is one replica's: it
    /// then skips the client-signature checks of the pre-prepares the rule of
    /// [`crate::request_checks`] gives it. None checks everything (clients, and
    /// the simulator's shared first check).
    me: Option<ReplicaId>,
    /// Backups that skip those checks per sequence number (the rule's count).
    request_check_skippers: usize,
    /// Signatures the batches found good lately, shared by clones: a copy that
    /// comes again (a retransmission, a re-sent route, a replay) is not checked
    /// again, with the answer its first check gave to the same equation
    /// (`bft_crypto`'s seen.rs).
    seen: Arc<SeenSignatures>,
}

/// Signatures a validator remembers: a few seconds of requests, routes and votes
/// at the peak, which covers a client's first retransmission.
const SEEN_SIGNATURES: usize = 32_768;

type Checked<T> = Result<T, Rejection>;

/// Where the signatures a check meets go: checked on the spot, one by one, so the
/// first bad one is named; or into a batch checked later, for many messages at once.
enum Sigs<'a> {
    Now,
    Later(&'a mut SignatureBatch),
}

impl Sigs<'_> {
    /// A signature inside a message (a proof in a certificate): checked or queued.
    fn nested<T: Signable>(&mut self, signed: &Signed<T>) -> bool {
        match self {
            Sigs::Now => signed.check().is_ok(),
            Sigs::Later(batch) => batch.queue(signed).is_ok(),
        }
    }

    /// The message's own signature: verified, or waiting for the batch.
    fn outer<T: Signable>(&mut self, signed: Signed<T>) -> Checked<Outer<T>> {
        match self {
            Sigs::Now => signed
                .verify()
                .map(Outer::Done)
                .map_err(|_| Rejection::BadSignature),
            Sigs::Later(batch) => batch
                .take(signed)
                .map(Outer::Waiting)
                .map_err(|_| Rejection::BadSignature),
        }
    }

    /// Client requests (a batch's): all valid?
    fn requests(&mut self, requests: &[Signed<Request>]) -> bool {
        match self {
            Sigs::Now => all_valid(requests),
            Sigs::Later(batch) => requests.iter().all(|r| batch.queue(r).is_ok()),
        }
    }
}

/// A message's own signature: checked already, or in a batch not yet verified.
enum Outer<T> {
    Done(Verified<T>),
    Waiting(Pending<T>),
}

impl<T> Outer<T> {
    fn finish(self, ok: Option<&BatchOk>) -> Verified<T> {
        match self {
            Outer::Done(v) => v,
            Outer::Waiting(p) => p.confirm(ok.expect("a waiting signature needs its batch")),
        }
    }

    fn into_signed(self) -> Signed<T> {
        match self {
            Outer::Done(v) => v.into_signed(),
            Outer::Waiting(p) => p.into_signed(),
        }
    }
}

/// A message whose structure passed and whose signatures are checked or queued.
enum Staged {
    Request(Outer<Request>),
    Read(Outer<ReadRequest>),
    PrePrepare(Outer<PrePrepare>, Batch),
    Prepare(Outer<Prepare>),
    Commit(Outer<Commit>),
    Checkpoint(Outer<Checkpoint>),
    ViewChange(Outer<ViewChange>, Bodies),
    NewView(Outer<NewView>, NewViewPlan),
    FetchState(Outer<FetchState>),
    State(Outer<StateSnapshot>),
    Heartbeat(Outer<Heartbeat>),
    /// Checked in full by code of its own (replies).
    Done(VerifiedMessage),
}

impl Staged {
    fn finish(self, ok: Option<&BatchOk>) -> VerifiedMessage {
        use VerifiedMessage as V;
        match self {
            Staged::Request(m) => V::Request(m.finish(ok)),
            Staged::Read(m) => V::Read(m.finish(ok)),
            Staged::PrePrepare(m, b) => V::PrePrepare(m.finish(ok), b),
            Staged::Prepare(m) => V::Prepare(m.finish(ok)),
            Staged::Commit(m) => V::Commit(m.finish(ok)),
            Staged::Checkpoint(m) => V::Checkpoint(m.finish(ok)),
            Staged::ViewChange(m, b) => V::ViewChange(m.finish(ok), b),
            Staged::NewView(m, plan) => V::NewView(m.finish(ok), plan),
            Staged::FetchState(m) => V::FetchState(m.finish(ok)),
            Staged::State(m) => V::State(m.finish(ok)),
            Staged::Heartbeat(m) => V::Heartbeat(m.finish(ok)),
            Staged::Done(v) => v,
        }
    }

    /// The message as it arrived (to check it again alone), or what was already done.
    fn into_message(self) -> Recheck {
        Recheck::Again(match self {
            Staged::Request(m) => Message::Request(m.into_signed()),
            Staged::Read(m) => Message::Read(m.into_signed()),
            Staged::PrePrepare(m, b) => Message::PrePrepare(m.into_signed(), b),
            Staged::Prepare(m) => Message::Prepare(m.into_signed()),
            Staged::Commit(m) => Message::Commit(m.into_signed()),
            Staged::Checkpoint(m) => Message::Checkpoint(m.into_signed()),
            Staged::ViewChange(m, b) => Message::ViewChange(m.into_signed(), b),
            Staged::NewView(m, plan) => Message::NewView(m.into_signed(), plan.bodies()),
            Staged::FetchState(m) => Message::FetchState(m.into_signed()),
            Staged::State(m) => Message::State(m.into_signed()),
            Staged::Heartbeat(m) => Message::Heartbeat(m.into_signed()),
            Staged::Done(v) => return Recheck::Done(v),
        })
    }
}

/// What a failed batch leaves of a staged message.
enum Recheck {
    Again(Message),
    Done(VerifiedMessage),
}

impl Validator {
    /// A validator that checks every signature of every message: what a client
    /// uses, and the simulator's shared first check of each frame.
    #[must_use]
    pub fn new(config: &ReplicaConfig) -> Self {
        Self {
            members: config.members.clone(),
            params: config.params.clone(),
            request_size_check: config.request_size_check,
            me: None,
            request_check_skippers: config.request_check_skippers,
            seen: Arc::new(SeenSignatures::new(SEEN_SIGNATURES)),
        }
    }

    /// The validator of replica `config.id`: as [`Validator::new`], except that it
    /// accepts the pre-prepares [`crate::request_checks`] assigns it without
    /// checking their requests' client signatures.
    #[must_use]
    pub fn for_replica(config: &ReplicaConfig) -> Self {
        Self {
            me: Some(config.id),
            ..Self::new(config)
        }
    }

    /// Whether this validator skips the client signatures of `pp`'s batch.
    fn skips_requests(&self, pp: &PrePrepare) -> bool {
        self.me.is_some_and(|me| {
            crate::request_checks::skips(
                &self.members,
                self.request_check_skippers,
                pp.view,
                pp.seq,
                me,
            )
        })
    }

    /// A batch for this validator's checks, which skips signatures found good lately
    /// (see the `seen` field).
    pub(crate) fn signature_batch(&self) -> SignatureBatch {
        SignatureBatch::remembering(self.seen.clone())
    }

    #[must_use]
    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// Check a message from the network, every signature on the spot.
    ///
    /// # Errors
    /// The first problem found, typed.
    pub fn verify(&self, msg: Message) -> Checked<VerifiedMessage> {
        self.stage(msg, &mut Sigs::Now).map(|s| s.finish(None))
    }

    /// Check many messages at once: the structure of each, then every signature of
    /// all of them (requests, votes, certificates' proofs) in one batch. If the batch
    /// fails, each half is checked again the same way, down to single messages,
    /// which [`Validator::verify`] checks alone: a bad signature costs a few batches
    /// of its neighbours, not a one-by-one check of all of them (one bad client
    /// request must not make a replica re-verify every view-change beside it).
    /// Results are in input order and always what `verify` says of each.
    #[must_use]
    pub fn verify_many(&self, msgs: Vec<Message>) -> Vec<Checked<VerifiedMessage>> {
        let mut batch = self.signature_batch();
        let staged: Vec<Checked<Staged>> = msgs
            .into_iter()
            .map(|m| self.stage(m, &mut Sigs::Later(&mut batch)))
            .collect();
        if let Ok(ok) = batch.verify() {
            return staged
                .into_iter()
                .map(|s| s.map(|s| s.finish(Some(&ok))))
                .collect();
        }
        // Take the messages back, and check each half again.
        let mut results: Vec<Option<Checked<VerifiedMessage>>> = Vec::with_capacity(staged.len());
        let mut slots = Vec::new();
        let mut again = Vec::new();
        for s in staged {
            match s.map(Staged::into_message) {
                Ok(Recheck::Again(msg)) => {
                    slots.push(results.len());
                    again.push(msg);
                    results.push(None);
                }
                Ok(Recheck::Done(done)) => results.push(Some(Ok(done))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let checked = if again.len() == 1 {
            again.into_iter().map(|msg| self.verify(msg)).collect()
        } else {
            let right = again.split_off(again.len() / 2);
            let mut out = self.verify_many(again);
            out.extend(self.verify_many(right));
            out
        };
        for (slot, r) in slots.into_iter().zip(checked) {
            results[slot] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every message has a result"))
            .collect()
    }

    /// Every check of `msg`, its signatures checked or queued as `sigs` says.
    fn stage(&self, msg: Message, sigs: &mut Sigs<'_>) -> Checked<Staged> {
        Ok(match msg {
            Message::Request(r) => {
                self.check_request_size(&r)?;
                Staged::Request(sigs.outer(r)?)
            }
            Message::Read(r) => {
                // Never batched, but held in a bounded queue until answered: the
                // same bound as a request keeps that queue's bytes bounded too.
                let (bytes, max) = (bft_crypto::encoded_len(&r), self.params.max_batch_bytes);
                if bytes > max {
                    return Err(Rejection::RequestTooLarge { bytes, max });
                }
                Staged::Read(sigs.outer(r)?)
            }
            Message::PrePrepare(pp, batch) => {
                self.check_signer(&pp, pp.payload.replica)?;
                let signed = !self.skips_requests(&pp.payload);
                self.check_batch(&batch, pp.payload.digest, signed, sigs)?;
                Staged::PrePrepare(sigs.outer(pp)?, batch)
            }
            Message::Prepare(m) => Staged::Prepare(self.by_replica(m, |m| m.replica, sigs)?),
            Message::Commit(m) => Staged::Commit(self.by_replica(m, |m| m.replica, sigs)?),
            Message::Checkpoint(m) => {
                let seq = m.payload.seq;
                if seq == 0 || !seq.is_multiple_of(self.params.checkpoint_interval) {
                    return Err(Rejection::MisalignedCheckpoint { seq });
                }
                Staged::Checkpoint(self.by_replica(m, |m| m.replica, sigs)?)
            }
            Message::ViewChange(m, bodies) => {
                self.check_view_change_with_bodies(&m.payload, &bodies, sigs)?;
                Staged::ViewChange(self.by_replica(m, |m| m.replica, sigs)?, bodies)
            }
            Message::NewView(m, bodies) => {
                let plan = self.check_new_view(&m.payload, bodies, sigs)?;
                Staged::NewView(self.by_replica(m, |m| m.replica, sigs)?, plan)
            }
            Message::FetchState(m) => {
                Staged::FetchState(self.by_replica(m, |m| m.replica, sigs)?)
            }
            Message::State(m) => {
                let digest = self.check_checkpoint_proof(m.payload.seq, &m.payload.proof, sigs)?;
                if digest != Some(snapshot_digest(&m.payload.snapshot)) {
                    return Err(Rejection::BadSnapshot);
                }
                Staged::State(self.by_replica(m, |m| m.replica, sigs)?)
            }
            Message::Reply(m) => Staged::Done(VerifiedMessage::Reply(self.verify_reply(m, None)?)),
            Message::Replies(b) => {
                let replica = b.root.payload.replica;
                Staged::Done(VerifiedMessage::Replies(
                    replica,
                    self.verify_bundle(b, None)?,
                ))
            }
            Message::Heartbeat(m) => Staged::Heartbeat(self.by_replica(m, |m| m.replica, sigs)?),
        })
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

    /// A reply bundle: its root signed by the replica it names, its leaves making
    /// that root (see [`crate::reply_bundle`]). `cache` as for
    /// [`Validator::verify_reply`].
    ///
    /// # Errors
    /// The first problem found, typed.
    pub fn verify_bundle(
        &self,
        bundle: ReplyBundle,
        cache: Option<&RootCache>,
    ) -> Checked<Vec<VerifiedReply>> {
        self.check_signer(&bundle.root, bundle.root.payload.replica)?;
        verify_bundle(bundle, cache)
    }

    /// `signed` is signed by the replica it names (`claimed` reads the name).
    fn by_replica<T: Signable>(
        &self,
        signed: Signed<T>,
        claimed: impl Fn(&T) -> ReplicaId,
        sigs: &mut Sigs<'_>,
    ) -> Checked<Outer<T>> {
        self.check_signer(&signed, claimed(&signed.payload))?;
        sigs.outer(signed)
    }

    fn check_signer<T>(&self, signed: &Signed<T>, claimed: ReplicaId) -> Checked<()> {
        match self.members.key(claimed) {
            Some(k) if k == signed.signer => Ok(()),
            Some(_) => Err(Rejection::SignerMismatch { claimed }),
            None => Err(Rejection::UnknownSigner),
        }
    }

    /// A proof inside a message: signed by replica `claimed`, signature checked or
    /// queued; `bad` is what to report if not.
    fn check_nested<T: Signable>(
        &self,
        signed: &Signed<T>,
        claimed: ReplicaId,
        sigs: &mut Sigs<'_>,
        bad: Rejection,
    ) -> Checked<()> {
        self.check_signer(signed, claimed)
            .map_err(|_| bad.clone())?;
        if sigs.nested(signed) {
            Ok(())
        } else {
            Err(bad)
        }
    }

    /// A client request no batch could carry is refused at once.
    fn check_request_size(&self, request: &Signed<Request>) -> Checked<()> {
        let bytes = ProtocolParams::request_bytes(request);
        let max = self.params.max_batch_bytes;
        if bytes > max && self.request_size_check {
            return Err(Rejection::RequestTooLarge { bytes, max });
        }
        Ok(())
    }

    /// The batch hashes to `digest` and passes [`Validator::check_batch_contents`],
    /// or only [`Validator::check_batch_limits`] unless `signed` (a pre-prepare
    /// whose requests [`crate::request_checks`] lets this replica take unchecked).
    fn check_batch(
        &self,
        batch: &Batch,
        digest: Digest,
        signed: bool,
        sigs: &mut Sigs<'_>,
    ) -> Checked<()> {
        if signed {
            self.check_batch_contents(batch, sigs)?;
        } else {
            self.check_batch_limits(batch)?;
        }
        if batch.digest() != digest {
            return Err(Rejection::DigestMismatch);
        }
        Ok(())
    }

    /// The batch is within the limits, and every request in it is signed by its
    /// client (Validity: only signed requests are ever executed).
    fn check_batch_contents(&self, batch: &Batch, sigs: &mut Sigs<'_>) -> Checked<()> {
        self.check_batch_limits(batch)?;
        if !sigs.requests(&batch.requests) {
            return Err(Rejection::BadSignature);
        }
        Ok(())
    }

    /// The batch is within the group's count and byte limits.
    fn check_batch_limits(&self, batch: &Batch) -> Checked<()> {
        let max = self.params.batch_size;
        if batch.len() > max {
            return Err(Rejection::BatchTooLarge {
                len: batch.len(),
                max,
            });
        }
        let bytes: usize = batch
            .requests
            .iter()
            .map(ProtocolParams::request_bytes)
            .sum();
        let max = self.params.max_batch_bytes;
        if bytes > max {
            return Err(Rejection::BatchTooManyBytes { bytes, max });
        }
        Ok(())
    }

    /// Bodies carried beside a message, by digest: one per batch, never the null
    /// request's (it needs none), each within the limits and validly signed.
    fn index_bodies(
        &self,
        bodies: &[Batch],
        sigs: &mut Sigs<'_>,
        bad: fn(&'static str) -> Rejection,
    ) -> Checked<BodyIndex> {
        let mut index = BodyIndex::new();
        for body in bodies {
            if body.is_empty() {
                return Err(bad("a body for the null request"));
            }
            self.check_batch_contents(body, sigs)
                .map_err(|_| bad("a batch beside it is invalid"))?;
            if index.insert(body.digest(), body.clone()).is_some() {
                return Err(bad("the same batch twice beside it"));
            }
        }
        Ok(index)
    }

    /// 2f+1 signed checkpoints from distinct replicas agreeing on (seq, digest).
    /// Returns the digest, or None for the genesis checkpoint (seq 0, empty proof).
    fn check_checkpoint_proof(
        &self,
        seq: Seq,
        proof: &[Signed<Checkpoint>],
        sigs: &mut Sigs<'_>,
    ) -> Checked<Option<Digest>> {
        if seq == 0 {
            return if proof.is_empty() {
                Ok(None)
            } else {
                Err(Rejection::InvalidCheckpointProof("proof for seq 0"))
            };
        }
        if !seq.is_multiple_of(self.params.checkpoint_interval) {
            return Err(Rejection::InvalidCheckpointProof("misaligned seq"));
        }
        let first = proof
            .first()
            .ok_or(Rejection::InvalidCheckpointProof("empty proof"))?;
        let digest = first.payload.snapshot_digest;
        let mut seen = BTreeSet::new();
        for c in proof {
            if c.payload.seq != seq || c.payload.snapshot_digest != digest {
                return Err(Rejection::InvalidCheckpointProof("checkpoints disagree"));
            }
            if !seen.insert(c.payload.replica) {
                return Err(Rejection::InvalidCheckpointProof("duplicate signer"));
            }
            let bad = Rejection::InvalidCheckpointProof("bad signature");
            self.check_nested(c, c.payload.replica, sigs, bad)?;
        }
        // Exactly 2f+1, as correct replicas make them: the bound on the largest
        // messages (`ProtocolParams::largest_frames`) counts on it.
        if seen.len() < self.members.quorum() {
            return Err(Rejection::InvalidCheckpointProof(
                "fewer than 2f+1 checkpoints",
            ));
        }
        if seen.len() > self.members.quorum() {
            return Err(Rejection::InvalidCheckpointProof(
                "more than 2f+1 checkpoints",
            ));
        }
        Ok(Some(digest))
    }

    /// A pre-prepare from the primary of its view (earlier than `before_view`) and 2f
    /// matching prepares from distinct backups, seq within (low, low+L].
    fn check_prepared_cert(
        &self,
        cert: &PreparedProof,
        before_view: View,
        low: Seq,
        sigs: &mut Sigs<'_>,
    ) -> Checked<()> {
        let bad = Rejection::InvalidPreparedCert;
        let pp = &cert.pre_prepare.payload;
        if pp.view >= before_view {
            return Err(bad("certificate view is not below the new view"));
        }
        if pp.seq <= low || pp.seq > low + self.params.window {
            return Err(bad("sequence outside the window"));
        }
        let primary = self.members.primary(pp.view);
        if pp.replica != primary {
            return Err(bad("pre-prepare not from the view's primary"));
        }
        let bad_pp = bad("bad pre-prepare signature");
        self.check_nested(&cert.pre_prepare, primary, sigs, bad_pp)?;
        let mut seen = BTreeSet::new();
        for p in &cert.prepares {
            let m = &p.payload;
            if (m.view, m.seq, m.digest) != (pp.view, pp.seq, pp.digest) {
                return Err(bad("prepare does not match the pre-prepare"));
            }
            if m.replica == primary || !seen.insert(m.replica) {
                return Err(bad("prepare from the primary or a duplicate"));
            }
            self.check_nested(p, m.replica, sigs, bad("bad prepare signature"))?;
        }
        if seen.len() + 1 < self.members.quorum() {
            return Err(bad("fewer than 2f prepares"));
        }
        if seen.len() + 1 > self.members.quorum() {
            return Err(bad("more than 2f prepares")); // see check_checkpoint_proof
        }
        Ok(())
    }

    /// A view-change's checkpoint proof and certificates (their batches aside).
    fn check_view_change(&self, vc: &ViewChange, sigs: &mut Sigs<'_>) -> Checked<()> {
        let bad = Rejection::InvalidViewChange;
        if vc.new_view == 0 {
            return Err(bad("view change to view 0"));
        }
        self.check_checkpoint_proof(vc.stable_seq, &vc.checkpoint_proof, sigs)?;
        let mut seqs = BTreeSet::new();
        for cert in &vc.prepared {
            if !seqs.insert(cert.seq()) {
                return Err(bad("two certificates for one sequence number"));
            }
            self.check_prepared_cert(cert, vc.new_view, vc.stable_seq, sigs)?;
        }
        Ok(())
    }

    /// A view-change message: the view-change, and beside it exactly the batches its
    /// certificates name (the null request's aside).
    fn check_view_change_with_bodies(
        &self,
        vc: &ViewChange,
        bodies: &[Batch],
        sigs: &mut Sigs<'_>,
    ) -> Checked<()> {
        let bad = Rejection::InvalidViewChange;
        self.check_view_change(vc, sigs)?;
        let index = self.index_bodies(bodies, sigs, bad)?;
        let null = Batch::default().digest();
        let named: BTreeSet<Digest> = vc
            .prepared
            .iter()
            .map(PreparedProof::digest)
            .filter(|d| *d != null)
            .collect();
        if named.iter().any(|d| !index.contains_key(d)) {
            return Err(bad("a certificate's batch is missing"));
        }
        if named.len() != index.len() {
            return Err(bad("a batch beside it that no certificate names"));
        }
        Ok(())
    }

    fn check_new_view(
        &self,
        nv: &NewView,
        bodies: Bodies,
        sigs: &mut Sigs<'_>,
    ) -> Checked<NewViewPlan> {
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
            self.check_view_change(&vc.payload, sigs)?;
            let bad_vc = bad("bad view-change signature");
            self.check_nested(vc, vc.payload.replica, sigs, bad_vc)?;
        }
        if seen.len() < self.members.quorum() {
            return Err(bad("fewer than 2f+1 view-changes"));
        }
        let index = self.index_bodies(&bodies, sigs, bad)?;
        let plan = plan(&nv.view_changes, &index).map_err(|_| bad("a chosen batch is missing"))?;
        if plan.bodies().len() != index.len() {
            return Err(bad("a batch beside it that O does not use"));
        }
        if plan.entries.len() != nv.pre_prepares.len() {
            return Err(bad("pre-prepare set differs from the one computed from V"));
        }
        for ((seq, digest, _), pp) in plan.entries.iter().zip(&nv.pre_prepares) {
            let m = &pp.payload;
            if (m.view, m.seq, m.digest, m.replica) != (nv.view, *seq, *digest, primary) {
                return Err(bad("pre-prepare set differs from the one computed from V"));
            }
            self.check_nested(pp, primary, sigs, bad("bad pre-prepare signature"))?;
        }
        Ok(plan)
    }
}
