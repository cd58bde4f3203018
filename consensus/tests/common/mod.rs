//! A tiny synchronous cluster for directed tests: FIFO delivery, filters to drop
//! messages, manual time. (The randomized simulator lives in `bft_consensus::sim`.)
#![allow(dead_code)]

use bft_consensus::client_table::ReplicaSnapshot;
use bft_consensus::messages::{
    Batch, Checkpoint, PrePrepare, Prepare, PreparedCert, Request, ViewChange,
};
use bft_consensus::{
    DurableState, Input, KvOp, KvStore, Membership, Message, Output, Replica, ReplicaConfig,
    ReplicaId, Validator,
};
use bft_crypto::{KeyPair, Signed};
use std::collections::VecDeque;
use std::time::Duration;

pub struct Group {
    pub keys: Vec<KeyPair>,
    pub members: Membership,
    /// Every replica's protocol parameters (small, so tests reach the bounds).
    pub params: bft_consensus::ProtocolParams,
    /// The primary's pipeline bound (`ReplicaConfig::max_batches_in_flight`).
    pub max_batches_in_flight: u64,
    /// `ReplicaConfig::tentative_execution`.
    pub tentative_execution: bool,
}

impl Group {
    pub fn new(n: usize) -> Self {
        let keys: Vec<_> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        let params = bft_consensus::ProtocolParams {
            batch_size: 4,
            checkpoint_interval: 4,
            window: 16,
            ..Default::default()
        };
        Self {
            keys,
            members,
            params,
            max_batches_in_flight: 1,
            tentative_execution: true,
        }
    }

    pub fn config(&self, id: ReplicaId) -> ReplicaConfig {
        // Every directed test checks the batch digests the node takes on trust.
        let mut c = ReplicaConfig::new(id, self.members.clone()).with_audited_batch_digests();
        c.params = self.params.clone();
        c.max_batches_in_flight = self.max_batches_in_flight;
        c.tentative_execution = self.tentative_execution;
        // The directed tests step time in small increments: a partial batch goes
        // out within a millisecond, as these tests were written for.
        c.batch_timeout = Duration::from_millis(1);
        c.view_change_timeout = Duration::from_millis(100);
        c
    }

    /// A validator that checks everything (what a client uses).
    pub fn validator(&self) -> Validator {
        Validator::new(&self.config(0))
    }

    /// Replica `id`'s own validator, as its node builds it (it takes some
    /// pre-prepares' requests unchecked: `request_checks`).
    pub fn validator_of(&self, id: ReplicaId) -> Validator {
        Validator::for_replica(&self.config(id))
    }

    pub fn sign<T: bft_crypto::Signable>(&self, id: ReplicaId, payload: T) -> Signed<T> {
        Signed::sign(payload, &self.keys[id as usize])
    }

    pub fn prepare(&self, id: ReplicaId, view: u64, seq: u64, batch: &Batch) -> Signed<Prepare> {
        self.sign(
            id,
            Prepare {
                view,
                seq,
                digest: batch.digest(),
                replica: id,
            },
        )
    }

    pub fn pre_prepare(&self, view: u64, seq: u64, batch: &Batch) -> Signed<PrePrepare> {
        let p = self.members.primary(view);
        self.sign(
            p,
            PrePrepare {
                view,
                seq,
                digest: batch.digest(),
                replica: p,
            },
        )
    }

    /// A valid prepared certificate for `batch` at (view, seq).
    pub fn cert(&self, view: u64, seq: u64, batch: &Batch) -> PreparedCert {
        let primary = self.members.primary(view);
        let prepares = self
            .members
            .ids()
            .filter(|r| *r != primary)
            .take(self.members.quorum() - 1)
            .map(|r| self.prepare(r, view, seq, batch))
            .collect();
        PreparedCert {
            pre_prepare: self.pre_prepare(view, seq, batch),
            batch: batch.clone(),
            prepares,
        }
    }

    /// 2f+1 checkpoints for (seq, snapshot of an empty replica).
    pub fn checkpoint_proof(
        &self,
        seq: u64,
        digest: bft_crypto::Digest,
    ) -> Vec<Signed<Checkpoint>> {
        self.members
            .ids()
            .take(self.members.quorum())
            .map(|r| {
                self.sign(
                    r,
                    Checkpoint {
                        seq,
                        snapshot_digest: digest,
                        replica: r,
                    },
                )
            })
            .collect()
    }

    pub fn view_change(
        &self,
        id: ReplicaId,
        new_view: u64,
        prepared: Vec<PreparedCert>,
    ) -> Signed<ViewChange> {
        self.sign(
            id,
            ViewChange {
                new_view,
                stable_seq: 0,
                checkpoint_proof: vec![],
                prepared: prepared.iter().map(PreparedCert::proof).collect(),
                replica: id,
            },
        )
    }

    /// A view-change message: the signed view-change and its certificates' batches.
    pub fn view_change_message(
        &self,
        id: ReplicaId,
        new_view: u64,
        prepared: Vec<PreparedCert>,
    ) -> Message {
        let bodies = bodies_of(&prepared);
        Message::ViewChange(self.view_change(id, new_view, prepared), bodies)
    }
}

/// The batches a view-change carries for `certs`: each non-null batch once.
pub fn bodies_of(certs: &[PreparedCert]) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for c in certs {
        if !c.batch.is_empty() && !out.iter().any(|b| b.digest() == c.digest()) {
            out.push(c.batch.clone());
        }
    }
    out
}

pub fn client_key(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

pub fn request(client: &KeyPair, ts: u64, key: &str, value: &str) -> Signed<Request> {
    request_at(client, ts, key, value, 0)
}

/// A put whose client knows `horizon` executed.
pub fn request_at(
    client: &KeyPair,
    ts: u64,
    key: &str,
    value: &str,
    horizon: u64,
) -> Signed<Request> {
    let op = KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    Signed::sign(
        Request {
            timestamp: ts,
            operation: op.encode(),
            horizon,
            replier: None,
        },
        client,
    )
}

pub fn batch_of(reqs: Vec<Signed<Request>>) -> Batch {
    Batch::new(reqs)
}

pub fn empty_snapshot() -> Vec<u8> {
    use bft_consensus::Application;
    bft_crypto::encode(&ReplicaSnapshot {
        app: KvStore::new().snapshot(),
        clients: Default::default(),
    })
    .unwrap()
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum To {
    Replica(ReplicaId),
    Client(bft_crypto::PublicKey),
}

/// Decides which messages the network loses: (from, to, message) -> drop?
pub type DropFilter = Box<dyn Fn(ReplicaId, &To, &Message) -> bool>;

/// A synchronous cluster: every output of every replica is recorded, messages are
/// delivered FIFO through the validator, `drop_if` loses chosen messages.
pub struct Cluster {
    pub group: Group,
    pub replicas: Vec<Option<Replica<KvStore>>>,
    pub durable: Vec<DurableState>,
    pub now: Duration,
    pub queue: VecDeque<(ReplicaId, To, Message)>,
    /// Every output each replica produced, per handle call, in order.
    pub outputs: Vec<Vec<Vec<Output>>>,
    pub replies: Vec<(bft_crypto::PublicKey, bft_consensus::SignedReply)>,
    pub timers: Vec<Vec<(bft_consensus::Timer, Duration)>>,
    pub drop_if: DropFilter,
    /// The transport's frame bound; frames above it are refused (and listed in
    /// `refused`), as the node's ingress refuses them.
    pub max_frame: usize,
    /// Frames the ingress refused: (from, to, message type, why).
    pub refused: Vec<(ReplicaId, ReplicaId, &'static str, bft_consensus::Rejection)>,
    /// Replicas whose checkpoint snapshot jobs wait in `held_snapshots` until a
    /// test releases them; every other replica's job runs at once.
    pub hold_snapshots_of: Vec<ReplicaId>,
    pub held_snapshots: Vec<(ReplicaId, bft_consensus::SnapshotJob)>,
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        Self::with_params(n, |_| {})
    }

    /// A cluster whose protocol parameters `edit` changed first.
    pub fn with_params(n: usize, edit: impl FnOnce(&mut bft_consensus::ProtocolParams)) -> Self {
        Self::with_group(n, |g| edit(&mut g.params))
    }

    /// A cluster whose group (parameters, pipeline bound) `edit` changed first.
    pub fn with_group(n: usize, edit: impl FnOnce(&mut Group)) -> Self {
        let mut group = Group::new(n);
        edit(&mut group);
        let replicas = (0..n)
            .map(|i| {
                Some(Replica::new(
                    group.config(i as u32),
                    group.keys[i].clone(),
                    KvStore::new(),
                ))
            })
            .collect();
        Self {
            group,
            replicas,
            durable: vec![DurableState::default(); n],
            now: Duration::ZERO,
            queue: VecDeque::new(),
            outputs: vec![Vec::new(); n],
            replies: Vec::new(),
            timers: vec![Vec::new(); n],
            drop_if: Box::new(|_, _, _| false),
            max_frame: bft_consensus::messages::MAX_MESSAGE_BYTES,
            refused: Vec::new(),
            hold_snapshots_of: Vec::new(),
            held_snapshots: Vec::new(),
        }
    }

    /// Start every replica (its first heartbeat leaves, its heartbeat timer runs).
    pub fn start_all(&mut self) {
        for id in 0..self.replicas.len() as ReplicaId {
            let mut out = Vec::new();
            if let Some(r) = self.replicas[id as usize].as_mut() {
                r.start(self.now, &mut out);
            }
            self.perform(id, out);
        }
    }

    pub fn replica(&self, id: ReplicaId) -> &Replica<KvStore> {
        self.replicas[id as usize].as_ref().expect("replica is up")
    }

    pub fn input(&mut self, id: ReplicaId, input: Input) {
        let Some(r) = self.replicas[id as usize].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        r.handle(self.now, input, &mut out);
        self.perform(id, out);
    }

    /// Feed replica `to` a message as if it arrived from the network (checked first),
    /// whatever `drop_if` says.
    pub fn deliver(&mut self, to: ReplicaId, msg: Message) {
        let verified = self
            .group
            .validator_of(to)
            .verify(msg)
            .expect("a valid message");
        self.input(to, Input::Message(verified));
    }

    /// Backup 1 (of 4) gets view 0's pre-prepare of `batch` at seq 1 and backup 2's
    /// prepare: with its own, 2f prepares, so it is prepared and not committed.
    pub fn prepare_at_backup_1(&mut self, batch: &Batch) {
        let pp = Message::PrePrepare(self.group.pre_prepare(0, 1, batch), batch.clone());
        self.deliver(1, pp);
        let prepare = Message::Prepare(self.group.prepare(2, 0, 1, batch));
        self.deliver(1, prepare);
    }

    pub fn perform(&mut self, id: ReplicaId, out: Vec<Output>) {
        let n = self.replicas.len() as ReplicaId;
        let mut jobs = Vec::new();
        for o in &out {
            match o {
                Output::Send { to, message } => {
                    self.queue
                        .push_back((id, To::Replica(*to), message.clone()))
                }
                Output::Broadcast { message } => {
                    for to in (0..n).filter(|t| *t != id) {
                        self.queue.push_back((id, To::Replica(to), message.clone()));
                    }
                }
                Output::Replies(replies) => self.replies.extend(
                    replies
                        .individual()
                        .into_iter()
                        .map(|r| (r.reply.client, r)),
                ),
                Output::Persist(rec) | Output::PersistApart(rec) => {
                    self.durable[id as usize].apply(rec);
                }
                Output::SetTimer { timer, at } => self.timers[id as usize].push((*timer, *at)),
                Output::TakeSnapshot(job) => jobs.push(job.clone()),
                _ => {}
            }
        }
        self.outputs[id as usize].push(out);
        for job in jobs {
            if self.hold_snapshots_of.contains(&id) {
                self.held_snapshots.push((id, job));
            } else {
                self.input(id, Input::SnapshotTaken(job.run()));
            }
        }
    }

    /// Run the held snapshot jobs of `id` and hand it their results.
    pub fn release_snapshots(&mut self, id: ReplicaId) {
        let (mine, others) = std::mem::take(&mut self.held_snapshots)
            .into_iter()
            .partition(|(r, _)| *r == id);
        self.held_snapshots = others;
        for (_, job) in mine {
            self.input(id, Input::SnapshotTaken(job.run()));
        }
    }

    /// Send a client request to one replica.
    pub fn client_sends(&mut self, to: ReplicaId, req: Signed<Request>) {
        self.queue
            .push_back((u32::MAX, To::Replica(to), Message::Request(req)));
    }

    /// Deliver until quiet, every frame encoded and admitted through the node's
    /// ingress; return how many messages were delivered.
    pub fn run(&mut self) -> usize {
        let ingresses: Vec<bft_consensus::Ingress> = (0..self.replicas.len() as ReplicaId)
            .map(|id| {
                bft_consensus::Ingress::with_frame_limit(
                    self.group.validator_of(id),
                    self.max_frame,
                )
            })
            .collect();
        let mut delivered = 0;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if (self.drop_if)(from, &to, &msg) {
                continue;
            }
            let To::Replica(r) = to else { continue };
            if self.replicas[r as usize].is_none() {
                continue;
            }
            let origin = if (from as usize) < self.replicas.len() {
                bft_consensus::Origin::Replica(from)
            } else {
                bft_consensus::Origin::Other
            };
            let frame = bft_consensus::frame::encode_pbft(&msg);
            let admitted = ingresses[r as usize].admit(origin, &frame);
            let verified = match admitted.result {
                Err(reason @ bft_consensus::Rejection::Oversized { .. }) => {
                    self.refused.push((from, r, admitted.kind, reason));
                    continue;
                }
                Ok(bft_consensus::VerifiedFrame::Pbft(m)) => m,
                other => panic!("cluster messages are valid PBFT: {other:?}"),
            };
            delivered += 1;
            self.input(r, Input::Message(verified));
            assert!(delivered < 1_000_000, "message storm");
        }
        delivered
    }

    /// Advance time to `at` and fire every timer due by then (latest deadline per kind).
    pub fn advance_to(&mut self, at: Duration) {
        self.now = at;
        for id in 0..self.replicas.len() {
            let mut due: Vec<_> = self.timers[id]
                .iter()
                .filter(|(_, t)| *t <= at)
                .map(|(k, _)| *k)
                .collect();
            due.sort();
            due.dedup();
            self.timers[id].retain(|(_, t)| *t > at);
            for timer in due {
                self.input(id as u32, Input::Timer(timer));
            }
        }
    }

    pub fn crash(&mut self, id: ReplicaId) {
        self.replicas[id as usize] = None;
        self.timers[id as usize].clear();
        // Its snapshot jobs die with it, as the node's thread does.
        self.held_snapshots.retain(|(r, _)| *r != id);
    }

    pub fn restart(&mut self, id: ReplicaId) {
        let cfg = self.group.config(id);
        let key = self.group.keys[id as usize].clone();
        let (r, out) = Replica::recover(
            cfg,
            key,
            KvStore::new(),
            &self.durable[id as usize],
            self.now,
        )
        .unwrap();
        self.replicas[id as usize] = Some(r);
        self.perform(id, out);
    }

    /// All outputs of replica `id`, flattened.
    pub fn all_outputs(&self, id: ReplicaId) -> Vec<Output> {
        self.outputs[id as usize]
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}
