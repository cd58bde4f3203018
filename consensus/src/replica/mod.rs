//! The PBFT replica as a deterministic, sans-IO state machine.
//!
//! `handle(now, input, &mut outbox)` is the whole interface: no clock is read,
//! nothing is sent, nothing is written. The sub-protocols live in their own files:
//! [`normal`] (§4.2 normal case), [`checkpoint`] (§4.3 garbage collection),
//! [`view_change`] (§4.4), [`state_transfer`] (TOCS §6.2) and [`recovery`]
//! (restart from what was persisted).

mod checkpoint;
mod failure_detection;
mod left_view;
mod normal;
mod rate_limit;
mod reads;
mod recovery;
mod retransmit;
mod slot;
mod state_transfer;
mod tentative;
mod view_change;

use crate::app::Application;
use crate::client_table::ClientTable;
use crate::durable::StableCheckpoint;
use crate::fd::FailureDetector;
use crate::io::{Input, Output, Timer};
use crate::lookup::{LookupMap, LookupSet};
use crate::messages::{
    snapshot_digest, Bodies, Checkpoint, Message, NewView, PreparedCert, ReadRequest, Request,
    ViewChange,
};
use crate::rejection::Rejection;
use crate::types::{ClientId, ReplicaConfig, ReplicaId, RequestId, Seq, View};
use crate::validate::VerifiedMessage;
use bft_crypto::{Digest, KeyPair, Signed};
use slot::Slot;
use state_transfer::Fetch;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use checkpoint::OwnCheckpoint;
pub use recovery::RecoveryError;

/// Cap on the exponential view-change back-off, as a multiple of the base timeout.
const MAX_BACKOFF_FACTOR: u32 = 64;

/// How many request-timer periods the primary waits, where a backup waits one
/// (see `update_request_timer`).
pub(crate) const PRIMARY_PATIENCE: u32 = 2;

/// A PBFT replica over application `A`.
pub struct Replica<A: Application> {
    cfg: ReplicaConfig,
    key: KeyPair,
    app: A,
    clients: ClientTable,
    now: Duration,
    out: Vec<Output>,

    view: View,
    /// True between sending a view-change and entering the new view.
    changing: bool,
    log: BTreeMap<Seq, Slot>,
    /// The P set: for each seq above the stable checkpoint, the prepared certificate
    /// from the highest view this replica was prepared in.
    certs: BTreeMap<Seq, PreparedCert>,
    last_executed: Seq,
    /// Primary only: the next sequence number to assign.
    next_seq: Seq,
    stable: StableCheckpoint,
    /// min-s of the view we are in (§4.4): the checkpoint the new view starts from is
    /// proven stable, so nothing at or below it is accepted, voted for or ordered any
    /// more, even while its state is still being fetched. Never decreases.
    new_view_floor: Seq,

    checkpoint_votes: BTreeMap<Seq, BTreeMap<ReplicaId, Signed<Checkpoint>>>,
    /// Own checkpoints not yet stable, taken or still being taken (bounded by the
    /// window: one per checkpoint interval above the low water mark).
    own_checkpoints: BTreeMap<Seq, OwnCheckpoint>,
    /// The snapshot of the stable checkpoint before the current one, whose buffer
    /// the next checkpoint is encoded into if nobody else holds it by then (see
    /// [`encode_snapshot_into`]). Not taken back when it is replaced: the node's
    /// storage still holds it until the new stable checkpoint is written. One more
    /// state's worth of memory than before, bounded like the others.
    retired_snapshot: Option<Arc<Vec<u8>>>,

    /// Requests known and not yet executed, newest per client (the paper's "waiting").
    /// Looked up for every request; read in full only in client order
    /// ([`LookupMap::sorted`]).
    waiting: LookupMap<ClientId, Signed<Request>>,
    /// Primary only: requests to put into batches, in arrival order.
    queue: VecDeque<Signed<Request>>,
    /// Requests in an accepted pre-prepare of this view, not yet executed.
    in_flight: LookupSet<RequestId>,
    /// Read-only requests waiting until this replica executed the sequence number
    /// beside each (see [`reads`]), in that order.
    reads: VecDeque<(Seq, bft_crypto::Verified<ReadRequest>)>,
    /// Operation bytes in `reads` (bounded by `reads::MAX_READ_BYTES`).
    read_bytes: usize,
    /// The clients with a read in `reads` (at most one each).
    read_clients: BTreeSet<ClientId>,
    /// The batch executed tentatively (TOCS §5.1.2), if any: prepared, not yet
    /// committed, right after the last committed one (see [`tentative`]).
    tentative: Option<tentative::Tentative>,
    /// After a restart: the highest slot persisted as prepared or committed, which
    /// reads must wait for (it may have answered reads from that state before).
    read_floor: Seq,
    /// Set when a request executes; the request timer restarts (§4.4).
    progress: bool,
    /// When a request ordered in the current view last executed here.
    executed_in_view_at: Option<Duration>,

    /// Latest view-change from each replica, with the batches it carried.
    view_changes: BTreeMap<ReplicaId, (Signed<ViewChange>, Bodies)>,
    /// Pre-prepares of the view we are changing to that overtook its new-view.
    early_pre_prepares: BTreeMap<
        Seq,
        (
            bft_crypto::Verified<crate::messages::PrePrepare>,
            crate::messages::Batch,
        ),
    >,
    /// The new-view that started the current view, with its batches (re-sent to
    /// laggards).
    last_new_view: Option<(Signed<NewView>, Bodies)>,
    vc_timeout: Duration,
    /// While changing view: whether 2f+1 view-changes arrived and the new-view timer runs.
    new_view_timer_armed: bool,
    deadlines: BTreeMap<Timer, Duration>,
    fetch: Option<Fetch>,

    fd: FailureDetector,
    /// The suspected set last reported in an [`Output::Suspected`], and why.
    reported_suspects: Vec<ReplicaId>,
    reported_reasons: BTreeMap<ReplicaId, BTreeSet<crate::fd::Reason>>,
    /// Each peer's position from its heartbeats (see [`retransmit`]).
    peer_progress: BTreeMap<ReplicaId, retransmit::PeerProgress>,
    /// Our own position at the previous heartbeat (are we stuck?).
    progress_at_last_beat: Option<crate::fd::Progress>,
    /// Slots of views we left, by seq, that we may execute once the group commits
    /// them (see [`left_view`]).
    left_views: BTreeMap<Seq, left_view::Witness>,
    /// Slots executed through a commit certificate, until a stable checkpoint.
    settled: BTreeMap<Seq, left_view::Settled>,
    /// Whom we last sent our state, and when (see [`rate_limit`]).
    state_served: rate_limit::PerPeer,
    /// Whom we last relayed our new-view, and when.
    new_view_relayed: rate_limit::PerPeer,
    /// Our stable checkpoint's state, signed once for every peer that fetches it.
    signed_state: Option<Signed<crate::messages::StateSnapshot>>,
}

impl<A: Application> Replica<A> {
    /// A fresh replica at view 0 with the application's initial state.
    #[must_use]
    pub fn new(cfg: ReplicaConfig, key: KeyPair, app: A) -> Self {
        let clients = ClientTable::new(cfg.params.request_horizon);
        let snapshot = encode_snapshot(&app, &clients);
        let stable = StableCheckpoint {
            seq: 0,
            digest: snapshot_digest(&snapshot),
            proof: Vec::new(),
            snapshot: Arc::new(snapshot),
        };
        let vc_timeout = cfg.view_change_timeout;
        let fd = FailureDetector::new(
            cfg.fd.clone(),
            cfg.id,
            cfg.members.ids(),
            cfg.incarnation,
            Duration::ZERO,
        );
        Self {
            cfg,
            key,
            app,
            clients,
            now: Duration::ZERO,
            out: Vec::new(),
            view: 0,
            changing: false,
            log: BTreeMap::new(),
            certs: BTreeMap::new(),
            last_executed: 0,
            next_seq: 1,
            stable,
            new_view_floor: 0,
            checkpoint_votes: BTreeMap::new(),
            own_checkpoints: BTreeMap::new(),
            retired_snapshot: None,
            waiting: LookupMap::new(),
            queue: VecDeque::new(),
            in_flight: LookupSet::new(),
            reads: VecDeque::new(),
            read_bytes: 0,
            read_clients: BTreeSet::new(),
            tentative: None,
            read_floor: 0,
            progress: false,
            executed_in_view_at: None,
            view_changes: BTreeMap::new(),
            early_pre_prepares: BTreeMap::new(),
            last_new_view: None,
            vc_timeout,
            new_view_timer_armed: false,
            deadlines: BTreeMap::new(),
            fetch: None,
            fd,
            reported_suspects: Vec::new(),
            reported_reasons: BTreeMap::new(),
            peer_progress: BTreeMap::new(),
            progress_at_last_beat: None,
            left_views: BTreeMap::new(),
            settled: BTreeMap::new(),
            state_served: rate_limit::PerPeer::default(),
            new_view_relayed: rate_limit::PerPeer::default(),
            signed_state: None,
        }
    }

    /// Feed one event; effects are appended to `out` in the order they must happen.
    pub fn handle(&mut self, now: Duration, input: Input, out: &mut Vec<Output>) {
        self.now = now;
        match input {
            Input::Timer(timer) => self.on_timer(timer),
            Input::Message(msg) => self.on_message(msg),
            Input::SnapshotTaken(taken) => self.on_snapshot_taken(taken),
        }
        self.answer_reads();
        self.update_request_timer();
        out.append(&mut self.out);
    }

    fn on_message(&mut self, msg: VerifiedMessage) {
        match msg {
            VerifiedMessage::Request(r) => self.on_request(r),
            VerifiedMessage::Read(r) => self.on_read(r),
            VerifiedMessage::PrePrepare(pp, batch) => self.on_pre_prepare(pp, batch),
            VerifiedMessage::Prepare(p) => self.on_prepare(p),
            VerifiedMessage::Commit(c) => self.on_commit(c),
            VerifiedMessage::Checkpoint(c) => self.on_checkpoint(c),
            VerifiedMessage::ViewChange(vc, bodies) => self.on_view_change(vc, bodies),
            VerifiedMessage::NewView(nv, plan) => self.on_new_view(nv, plan),
            VerifiedMessage::FetchState(f) => self.on_fetch_state(&f),
            VerifiedMessage::State(s) => self.on_state(s),
            VerifiedMessage::Reply(r) => self.reject(Some(r.replica), Rejection::WrongSender),
            VerifiedMessage::Replies(from, _) => self.reject(Some(from), Rejection::WrongSender),
            VerifiedMessage::Heartbeat(hb) => self.on_heartbeat(&hb),
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match self.deadlines.get(&timer) {
            Some(at) if *at <= self.now => {
                self.deadlines.remove(&timer);
            }
            _ => return, // stale or superseded
        }
        match timer {
            Timer::Batch => self.try_propose(true),
            Timer::ViewChange => self.on_view_change_timeout(),
            Timer::StateFetch => self.ask_next_peer(),
            Timer::Heartbeat => self.on_heartbeat_timer(),
        }
    }

    /// §4.4: a replica waiting for a request runs a timer; it restarts the timer when
    /// a request executes and it is still waiting for another. Unlike the paper, the
    /// primary runs it too: a primary that cannot gather a quorum (say it restarted
    /// into a view the others have left) must give up its view as well. It waits
    /// [`PRIMARY_PATIENCE`] times as long as a backup: it holds every request first,
    /// while a backup learns of one only from a client's retransmission, a period
    /// later, so with equal timers the primary was the first to give up whenever
    /// all replicas slowed down together (issue 13: every replica's syncs stalled
    /// behind a 1.5 GB write, the primary's timer fired alone, and the view change,
    /// its every step a synced write, took seconds more).
    fn update_request_timer(&mut self) {
        if self.changing {
            self.progress = false;
            return;
        }
        if self.waiting.is_empty() {
            self.deadlines.remove(&Timer::ViewChange);
        } else if self.progress || !self.deadlines.contains_key(&Timer::ViewChange) {
            let period = if self.is_primary() {
                self.vc_timeout.saturating_mul(PRIMARY_PATIENCE)
            } else {
                self.vc_timeout
            };
            self.set_timer(Timer::ViewChange, period);
        }
        self.progress = false;
    }

    fn set_timer(&mut self, timer: Timer, after: Duration) {
        let at = self.now + after;
        self.deadlines.insert(timer, at);
        self.emit(Output::SetTimer { timer, at });
    }

    fn emit(&mut self, o: Output) {
        self.out.push(o);
    }

    fn broadcast(&mut self, message: Message) {
        self.emit(Output::Broadcast { message });
    }

    fn reject(&mut self, peer: Option<ReplicaId>, reason: Rejection) {
        self.emit(Output::Rejected { peer, reason });
    }

    fn sign<T: bft_crypto::Signable>(&self, payload: T) -> Signed<T> {
        Signed::sign(payload, &self.key)
    }

    fn me(&self) -> ReplicaId {
        self.cfg.id
    }

    fn quorum(&self) -> usize {
        self.cfg.members.quorum()
    }

    fn primary_of(&self, view: View) -> ReplicaId {
        self.cfg.members.primary(view)
    }

    fn is_primary(&self) -> bool {
        self.primary_of(self.view) == self.me()
    }

    /// h: the stable checkpoint, or min-s of the view we entered if that is higher.
    fn low_watermark(&self) -> Seq {
        self.stable.seq.max(self.new_view_floor)
    }

    fn high_watermark(&self) -> Seq {
        self.stable.seq + self.cfg.params.window
    }

    fn in_window(&self, seq: Seq) -> bool {
        seq > self.low_watermark() && seq <= self.high_watermark()
    }

    // ---- read-only views for the node's /status and the simulator ----

    #[must_use]
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }
    #[must_use]
    pub fn view(&self) -> View {
        self.view
    }
    #[must_use]
    pub fn primary(&self) -> ReplicaId {
        self.primary_of(self.view)
    }
    #[must_use]
    pub fn in_view_change(&self) -> bool {
        self.changing
    }
    #[must_use]
    pub fn last_executed(&self) -> Seq {
        self.last_executed
    }
    #[must_use]
    pub fn stable_checkpoint(&self) -> &StableCheckpoint {
        &self.stable
    }
    #[must_use]
    pub fn watermarks(&self) -> (Seq, Seq) {
        (self.low_watermark(), self.high_watermark())
    }
    #[must_use]
    pub fn in_state_transfer(&self) -> bool {
        self.fetch
            .as_ref()
            .is_some_and(|f| f.is_proven() && f.min_seq > self.last_executed)
    }
    /// The application's digest of its live state (`/status` shows it as
    /// `state_digest`): equal on replicas with equal `last_executed`, unless one
    /// holds a tentatively executed batch on top ([`Replica::tentative_seq`]). Checkpoints carry a
    /// different value, the [`crate::messages::snapshot_digest`] of the snapshot.
    #[must_use]
    pub fn app_digest(&self) -> Digest {
        self.app.digest()
    }
    #[must_use]
    pub fn app(&self) -> &A {
        &self.app
    }
    #[must_use]
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }
    pub(crate) fn signing_key(&self) -> &KeyPair {
        &self.key
    }
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        self.waiting.len()
    }
}

/// A [`ReplicaSnapshot`]'s bytes, in one pass over the state and without copying
/// the client table first (both were a large share of every checkpoint: issue 13).
/// Public for the checkpoint benchmark (`bench/benches/core.rs`).
#[must_use]
pub fn encode_snapshot<A: Application>(app: &A, clients: &ClientTable) -> Vec<u8> {
    encode_snapshot_into(app, clients, Vec::new())
}

/// [`encode_snapshot`]'s bytes, written into `buf` (whatever it held is dropped).
/// The application writes its state straight into the snapshot's buffer, and a
/// buffer kept from an earlier checkpoint has its pages mapped already: a
/// checkpoint of a 5 MB state used to encode the state into one fresh buffer and
/// copy it into another, and the page faults for the two were 38 % of its time
/// (issue 13, twenty-first round).
#[must_use]
pub fn encode_snapshot_into<A: Application>(
    app: &A,
    clients: &ClientTable,
    buf: Vec<u8>,
) -> Vec<u8> {
    encode_snapshot_with(app, clients, buf, LIKELY_PREFIX)
}

/// How much larger than a snapshot's bound a reused buffer may be.
const REUSE_SLACK: usize = 64 * 1024;

/// The length prefix of a state from 64 KiB to 4 GiB, the states whose copy is
/// worth saving: bincode's varint is then 5 bytes.
pub const LIKELY_PREFIX: usize = 5;

/// [`encode_snapshot_into`], leaving `guess` bytes for the varint length of the
/// application's bytes (a [`ReplicaSnapshot`] is that length, those bytes, then the
/// client table). The state is written after the guessed gap, so a right guess
/// costs nothing; a wrong one moves the state once (a small state, the only kind
/// whose prefix is shorter, is cheap to move).
fn encode_snapshot_with<A: Application>(
    app: &A,
    clients: &ClientTable,
    buf: Vec<u8>,
    guess: usize,
) -> Vec<u8> {
    encode_snapshot_parts(
        Part {
            bound: app.snapshot_bound(),
            write: |out: &mut Vec<u8>| app.snapshot_into(out),
        },
        Part {
            bound: clients.encoded_bound(),
            write: |out: &mut Vec<u8>| {
                bft_crypto::encode_into(clients, out).expect("snapshots always encode");
            },
        },
        buf,
        guess,
    )
}

/// One part of a snapshot: at least how many bytes it takes, and what writes it.
pub struct Part<W: FnOnce(&mut Vec<u8>)> {
    pub bound: usize,
    pub write: W,
}

/// A [`ReplicaSnapshot`]'s bytes from its two parts, the application's state (a
/// byte string: its length, then its bytes) and the client table, written into
/// `buf` (see [`encode_snapshot_with`]). Shared by the checkpoint's job
/// ([`crate::snapshot_job`]) and [`encode_snapshot`], so that the two write the
/// same bytes by construction.
pub fn encode_snapshot_parts(
    state: Part<impl FnOnce(&mut Vec<u8>)>,
    clients: Part<impl FnOnce(&mut Vec<u8>)>,
    mut buf: Vec<u8>,
    guess: usize,
) -> Vec<u8> {
    let bound = guess + state.bound + clients.bound;
    // Sized once: a buffer too small is replaced rather than grown (growing copies
    // what it holds, and may double it), and one far too large (the state shrank)
    // is let go rather than kept resident.
    if buf.capacity() < bound || buf.capacity() > 2 * bound + REUSE_SLACK {
        buf = Vec::with_capacity(bound);
    }
    buf.clear();
    buf.resize(guess, 0);
    (state.write)(&mut buf);
    let app_len = (buf.len() - guess) as u64;
    // A length prefix is encoded as a u64 is: the same varint.
    let prefix = bft_crypto::encode(&app_len).expect("a length always encodes");
    if let Some(skip) = guess.checked_sub(prefix.len()) {
        buf[skip..guess].copy_from_slice(&prefix);
        buf.drain(..skip);
    } else {
        buf.splice(..guess, prefix);
    }
    (clients.write)(&mut buf);
    buf
}

fn backoff(current: Duration, base: Duration) -> Duration {
    (current * 2).min(base * MAX_BACKOFF_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::{
        encode_snapshot, encode_snapshot_into, encode_snapshot_with, LIKELY_PREFIX, REUSE_SLACK,
    };
    use crate::client_table::{ClientTable, ReplicaSnapshot};
    use crate::kv::{KvOp, KvStore};
    use crate::Application;
    use bft_crypto::KeyPair;

    /// A checkpoint's bytes are a `ReplicaSnapshot`'s encoding, made in one pass.
    #[test]
    fn a_snapshot_is_the_encoding_of_the_replica_snapshot() {
        let mut app = KvStore::new();
        let mut clients = ClientTable::new(100);
        for i in 0..30u8 {
            let op = KvOp::Set {
                key: vec![i % 11, i],
                value: vec![i; usize::from(i) * 9],
            };
            let result = app.execute(&op.encode());
            clients.record(KeyPair::from_seed([i; 32]).public(), 1, result, 5);
        }
        let bytes = encode_snapshot(&app, &clients);
        let whole = ReplicaSnapshot {
            app: app.snapshot(),
            clients: clients.clone(),
        };
        assert_eq!(bytes, bft_crypto::encode(&whole).unwrap());
        let back: ReplicaSnapshot = bft_crypto::decode(&bytes, usize::MAX).unwrap();
        assert_eq!(back, whole);
    }

    /// Whatever the gap left for the state's length prefix, and whatever the reused
    /// buffer held, the bytes are the same: for states whose prefix is 1, 3 and 5
    /// bytes (under 251 bytes, under 64 KiB, 64 KiB and more).
    #[test]
    fn a_snapshot_written_into_a_reused_buffer_has_the_same_bytes() {
        for (keys, value_len) in [(3u8, 10usize), (20, 400), (200, 400)] {
            let mut app = KvStore::new();
            let mut clients = ClientTable::new(100);
            for i in 0..keys {
                let op = KvOp::Set {
                    key: vec![i],
                    value: vec![i; value_len],
                };
                let result = app.execute(&op.encode());
                clients.record(KeyPair::from_seed([i; 32]).public(), 1, result, 5);
            }
            let whole = ReplicaSnapshot {
                app: app.snapshot(),
                clients: clients.clone(),
            };
            let expected = bft_crypto::encode(&whole).unwrap();
            let garbage = vec![0xAB; expected.len() * 2];
            for guess in 0..=9 {
                let bytes = encode_snapshot_with(&app, &clients, garbage.clone(), guess);
                assert_eq!(bytes, expected, "{keys} keys, a gap of {guess} bytes");
            }
            assert_eq!(
                encode_snapshot_into(&app, &clients, garbage.clone()),
                expected
            );
        }
    }

    /// Replica 1's key and config in a group of four.
    fn replica_config() -> (KeyPair, crate::ReplicaConfig) {
        let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i; 32])).collect();
        let members = crate::types::Membership::new(keys.iter().map(KeyPair::public).collect());
        (keys[1].clone(), crate::ReplicaConfig::new(1, members))
    }

    fn replica_with_audit(audit: bool) -> super::Replica<KvStore> {
        let (key, mut cfg) = replica_config();
        cfg.audit_batch_digests = audit;
        super::Replica::new(cfg, key, KvStore::new())
    }

    /// Execution takes a batch under the digest it was accepted with (checked when
    /// the batch arrived) rather than hashing it again; only an audited replica
    /// (the simulator's, a debug build's) hashes it to check. A digest that names
    /// another batch shows which one did: the trusting replica executes, the
    /// auditing one stops.
    #[test]
    fn execution_trusts_the_accepted_digest_unless_audited() {
        let batch = crate::messages::Batch::default();
        let other = bft_crypto::Digest([7; 32]);
        assert_ne!(batch.digest(), other);

        let mut trusting = replica_with_audit(false);
        trusting.execute(1, 0, other, &batch);
        assert_eq!(trusting.last_executed(), 1);

        let mut auditing = replica_with_audit(true);
        auditing.execute(1, 0, batch.digest(), &batch);
        assert_eq!(auditing.last_executed(), 1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            auditing.execute(2, 0, other, &batch);
        }));
        assert!(caught.is_err(), "an audited replica checks the digest");
    }

    /// The node's replicas trust the digests in release builds whatever features
    /// the build turned on: `cargo test --workspace` turns on `sim` for every crate
    /// it builds, the node's binary included, and with the audit tied to that
    /// feature the binary a user ran hashed every batch twice or once depending on
    /// the cargo command that built it last.
    #[test]
    fn only_debug_builds_audit_by_default() {
        assert_eq!(
            replica_config().1.audit_batch_digests,
            cfg!(debug_assertions),
            "the default must not depend on the crate's features"
        );
    }

    /// A buffer that fits is written in place; one too small or far too large is
    /// replaced by one of the snapshot's bound.
    #[test]
    fn a_reused_buffer_is_kept_only_if_it_fits() {
        let mut app = KvStore::new();
        let clients = ClientTable::new(100);
        for i in 0..200u8 {
            let op = KvOp::Set {
                key: vec![i],
                value: vec![i; 400],
            };
            app.execute(&op.encode());
        }
        let bound = LIKELY_PREFIX + app.snapshot_bound() + clients.encoded_bound();
        let fits = Vec::with_capacity(bound);
        let at = fits.as_ptr();
        let written = encode_snapshot_into(&app, &clients, fits);
        assert_eq!(written.as_ptr(), at, "written in the buffer given");
        for capacity in [bound - 1, 2 * bound + REUSE_SLACK + 1] {
            let out = encode_snapshot_into(&app, &clients, Vec::with_capacity(capacity));
            assert_eq!(out.capacity(), bound, "a buffer of {capacity} bytes");
        }
    }
}
