//! The simulated world: replicas, clients, a faulty network and a clock, all driven
//! by one seeded RNG and one time-ordered event queue.
//!
//! This file is the scheduler: the event queue, stepping, and the replicas' and
//! clients' inputs and outputs. The network (partitions, loss, delivery, the
//! ingress) is in `network`, the replicas' storage (group commit, crashes,
//! restarts, damaged disks) in `durability`, and the judge of liveness (when a
//! run is done, and what failed if it never is) in `judge`.

mod durability;
mod judge;
mod network;

use super::admissions::Admissions;
use super::checker::{Checker, Violation};
use super::rogue::Rogue;
use super::{SimConfig, SimFailure, SimReport};
use crate::byzantine::{by_name, Behaviour, Honest, Twin, Wrapped};
use crate::client::{Client, ClientOutput};
use crate::durable::{DurableState, PersistRecord};
use crate::fd::FdConfig;
use crate::frame::VerifiedFrame;
use crate::ingress::{Ingress, Origin};
use crate::io::{Input, Output, Timer};
use crate::kv::{KvOp, KvStore};
use crate::messages::Message;
use crate::replica::Replica;
use crate::types::{Membership, ReplicaConfig, ReplicaId, Seq};
use crate::validate::{Validator, VerifiedMessage};
use bft_crypto::KeyPair;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The batch timeout of every simulated replica.
const SIM_BATCH_TIMEOUT: Duration = Duration::from_millis(1);
const TRACE_TAIL: usize = 300;
const CLIENT_RETRANSMIT: Duration = Duration::from_millis(600);
/// How far a simulated client's retransmission timeout may back off: five times
/// its floor, as a node's client has by default (1 s, up to half its 10 s timeout).
/// Simulated clients never give up, so nothing else would stop the doubling
/// short of the client's own ceiling (32 times the floor).
const CLIENT_RETRANSMIT_CEILING: Duration = Duration::from_millis(3_000);
const VIEW_CHANGE_TIMEOUT: Duration = Duration::from_millis(400);
/// Heartbeats are signed; a slower beat than the node's keeps thousands of runs cheap.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(150);
/// After the workload ends, how long laggards have to catch up without new requests.
const CATCH_UP_GRACE: Duration = Duration::from_secs(3);
/// Bound on events per run (a livelock guard; far above what a passing run uses).
const MAX_EVENTS: u64 = 3_000_000;
/// The node's verify threads (or loop) take whatever frames are queued when they wake; the
/// simulator drains a replica's inbox this long (at most) after a frame arrives, so
/// frames that arrive close together are admitted, and batch-verified, together.
const INGEST_DELAY_US: u64 = 300;
/// Longest a record written apart takes to land (the node's checkpoint thread writes
/// a snapshot file and a record, each synced).
const APART_WRITE_MS: u64 = 250;
/// Longest a checkpoint's snapshot job usually takes (see `crate::snapshot_job`):
/// the node's takes a few milliseconds for megabytes of state, on a busy machine
/// tens. Drawn from 0, so that a replica's own checkpoint is sometimes done at once
/// and sometimes still pending when the others' votes, a proof in a new-view, a
/// crash or a state transfer arrive.
const SNAPSHOT_JOB_MS: u64 = 40;
/// Before the heal, one job in [`SLOW_SNAPSHOT_ONE_IN`] takes up to this long
/// instead: the node runs its jobs at the lowest priority, and on a saturated
/// machine one waits until the loops go idle (at worst until the window fills
/// behind the pending checkpoint and the primary pauses).
const SLOW_SNAPSHOT_JOB_MS: u64 = 1_500;
const SLOW_SNAPSHOT_ONE_IN: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Replica(ReplicaId),
    Client(usize),
    /// A Byzantine client (see `rogue`).
    Rogue(usize),
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one event per message, moved once
enum Event {
    Deliver {
        from: Node,
        to: Node,
        frame: Arc<Vec<u8>>,
    },
    /// A replica's verify step: admit every frame in its inbox, in one batch.
    Ingest {
        replica: ReplicaId,
        incarnation: u32,
    },
    /// A record written apart (see `Output::PersistApart`) reaches the disk, unless
    /// its replica crashed since.
    LandApart {
        replica: ReplicaId,
        incarnation: u32,
        record: Box<PersistRecord>,
    },
    /// A checkpoint's snapshot job is done (see `Output::TakeSnapshot`); lost if its
    /// replica crashed since, as the node's thread is.
    SnapshotTaken {
        replica: ReplicaId,
        incarnation: u32,
        taken: Box<crate::snapshot_job::SnapshotTaken>,
    },
    ReplicaTimer {
        replica: ReplicaId,
        incarnation: u32,
        timer: Timer,
        /// The deadline on the replica's own clock.
        at: Duration,
    },
    /// The persist thread writes a replica's unflushed records, then sends the
    /// frames that waited for them.
    Flush {
        replica: ReplicaId,
        incarnation: u32,
    },
    ClientTimer {
        client: usize,
    },
    /// A Byzantine client sends one nasty frame.
    RogueSends {
        rogue: usize,
    },
    ClientNext {
        client: usize,
    },
    Restart {
        replica: ReplicaId,
    },
    /// A replica stalls (see `Faults::stall_ms`); the next stall is drawn.
    Stall,
    PartitionStart,
    PartitionEnd,
    Heal,
    /// `byzantine clear` on every Byzantine replica.
    ClearByzantine,
}

impl Event {
    /// The replica this event happens at, and what of it must run for the event
    /// to: a stalled replica's events wait for the stall's end. Deliveries still
    /// land in its inbox (the kernel's socket buffers).
    fn handled_by(&self) -> Option<(ReplicaId, Needs)> {
        match self {
            // The snapshot job's thread is the process's: a paused process pauses
            // it too.
            Event::Ingest { replica, .. }
            | Event::ReplicaTimer { replica, .. }
            | Event::SnapshotTaken { replica, .. } => Some((*replica, Needs::Process)),
            Event::Flush { replica, .. } => Some((*replica, Needs::ProcessAndDisk)),
            // The checkpoint thread's write was issued before: a paused process
            // does not hold it up, a stalled disk does.
            Event::LandApart { replica, .. } => Some((*replica, Needs::Disk)),
            _ => None,
        }
    }
}

/// What of a replica an event needs running (see `Faults::stall_ms`).
#[derive(Clone, Copy, Debug)]
enum Needs {
    Process,
    Disk,
    ProcessAndDisk,
}

impl Needs {
    /// Until when `r` cannot serve an event that needs this.
    fn blocked_until(self, r: &SimReplica) -> Duration {
        match self {
            Needs::Process => r.stalled_until,
            Needs::Disk => r.disk_stalled_until,
            Needs::ProcessAndDisk => r.stalled_until.max(r.disk_stalled_until),
        }
    }
}

struct Entry {
    at: Duration,
    tie: u64,
    event: Event,
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.tie) == (o.at, o.tie)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.tie).cmp(&(o.at, o.tie))
    }
}

struct SimReplica {
    node: Option<Wrapped<KvStore>>,
    durable: DurableState,
    key: KeyPair,
    cfg: ReplicaConfig,
    honest: bool,
    incarnation: u32,
    timers: BTreeMap<Timer, Duration>,
    /// Frames delivered and not yet admitted (lost on a crash, as a process's queues are).
    inbox: Vec<(Origin, Node, Arc<Vec<u8>>)>,
    /// The highest checkpoint this replica signed and sent: a restart must never
    /// bring it back below it (it would have forgotten what it vouched for).
    signed_checkpoint: Seq,
    /// Grouped writes: records not yet written, and the frames that wait for them.
    unflushed: Vec<PersistRecord>,
    held: Vec<(Node, Arc<Vec<u8>>)>,
    /// The highest own checkpoint among the held frames.
    held_checkpoint: Seq,
    /// Records to write apart, handed on after the group write.
    unflushed_apart: Vec<PersistRecord>,
    /// How many of `unflushed` were written unsynced (no frame waited for them).
    written_unsynced: usize,
    flush_scheduled: bool,
    /// Whether anything was ever written (the node's marker beside its data
    /// directory): an empty store then means the directory was lost.
    has_persisted: bool,
    /// Refused to start (a damaged snapshot, a wiped directory): down for good.
    retired: bool,
    /// This replica's clock rate, in millionths.
    rate_ppm: u64,
    /// Until when its process, and its disk, are stalled (see `Faults::stall_ms`).
    stalled_until: Duration,
    disk_stalled_until: Duration,
}

impl SimReplica {
    /// The first `count` records written unsynced became durable after all (a
    /// later sync, or the disk kept them through a crash).
    fn keep_written(&mut self, count: usize) {
        let count = count.min(self.written_unsynced);
        if count == 0 {
            return;
        }
        for record in self.unflushed.drain(..count) {
            self.durable.apply(&record);
        }
        self.written_unsynced -= count;
        // The node marks its store at its next sync, or at its restart (a store
        // found holding records without the marker is synced and marked then).
        self.has_persisted = true;
    }
}

struct SimClient {
    client: Client,
    remaining: usize,
    timer_at: Option<Duration>,
    /// The operation outstanding and when it was invoked (kept across re-signing).
    invocation: Option<(KvOp, Duration)>,
    /// The timestamp of the outstanding request if it is read-only (not yet
    /// fallen back to an ordered one).
    reading: Option<u64>,
}

pub(crate) struct World {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Duration,
    queue: BinaryHeap<Reverse<Entry>>,
    tie: u64,
    replicas: Vec<SimReplica>,
    clients: Vec<SimClient>,
    rogues: Vec<Rogue>,
    /// Each frame admitted once (see `admissions`).
    admissions: Admissions,
    client_index: BTreeMap<bft_crypto::PublicKey, usize>,
    /// The node's ingress: frame bound, decoding, sender rule, batched verification.
    /// This one checks everything; it admits each frame first (see `admissions`).
    ingress: Ingress,
    /// Each replica's own ingress, as its node builds it (`Validator::for_replica`).
    replica_ingress: Vec<Ingress>,
    healed: bool,
    heal_at: Duration,
    /// One side of the current partition (the rest is the other side).
    partition: Option<BTreeSet<ReplicaId>>,
    checker: Checker,
    trace: VecDeque<String>,
    report: SimReport,
    /// Requests issued after the workload to let laggards catch up.
    tail_requests: usize,
    /// When the workload finished: the highest honest executed seq, and the time.
    catch_up_target: Option<(Seq, Duration)>,
    /// When every honest replica first stood at the catch-up target while their
    /// stable checkpoints still differed.
    stable_wait_since: Option<Duration>,
}

type Step = Result<(), Violation>;

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = cfg.n();
        let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::from_seed(rng.gen())).collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        let replicas: Vec<SimReplica> = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let id = i as ReplicaId;
                let mut rc = ReplicaConfig::new(id, members.clone());
                // The simulator's runs (and the seeds its planted-bug hunts pin)
                // were found with a 1 ms batch timeout.
                rc.batch_timeout = SIM_BATCH_TIMEOUT;
                rc.params.batch_size = cfg.batch_size;
                rc.max_batches_in_flight = cfg.max_batches_in_flight;
                rc.tentative_execution = cfg.tentative_execution;
                rc.params.checkpoint_interval = cfg.checkpoint_interval;
                rc.params.window = cfg.window;
                rc.params.request_horizon = cfg.request_horizon;
                rc.view_change_timeout = VIEW_CHANGE_TIMEOUT;
                rc.state_fetch_timeout = Duration::from_millis(300);
                rc.fd = FdConfig::with_interval(HEARTBEAT_INTERVAL);
                // Every seeded run checks the digests the node takes on trust.
                rc = rc.with_audited_batch_digests();
                if let Some(q) = cfg.planted_commit_quorum {
                    rc = rc.with_planted_commit_quorum(q);
                }
                if cfg.planted_transfer_apart {
                    rc = rc.with_planted_transfer_written_apart();
                }
                if cfg.planted_no_request_size_check {
                    rc = rc.with_planted_no_request_size_check();
                }
                if let Some(k) = cfg.planted_request_check_skippers {
                    rc = rc.with_planted_request_check_skippers(k);
                }
                let honest = !cfg.is_byzantine(id);
                let behaviour: Box<dyn Behaviour> =
                    match (cfg.byzantine.iter().find(|(r, _)| *r == id), &cfg.twins) {
                        (Some(_), Some(schedule)) if schedule.twinned == id => {
                            let second = Replica::new(rc.clone(), key.clone(), KvStore::new());
                            Box::new(Twin::new(second, Arc::clone(schedule)))
                        }
                        (Some((_, b)), _) => {
                            by_name(b, cfg.seed ^ u64::from(id)).expect("known behaviour")
                        }
                        (None, _) => Box::new(Honest),
                    };
                let replica = Replica::new(rc.clone(), key.clone(), KvStore::new());
                SimReplica {
                    node: Some(Wrapped::new(replica, behaviour)),
                    durable: DurableState::default(),
                    key,
                    cfg: rc,
                    honest,
                    incarnation: 0,
                    timers: BTreeMap::new(),
                    inbox: Vec::new(),
                    signed_checkpoint: 0,
                    unflushed: Vec::new(),
                    held: Vec::new(),
                    held_checkpoint: 0,
                    unflushed_apart: Vec::new(),
                    written_unsynced: 0,
                    flush_scheduled: false,
                    has_persisted: false,
                    retired: false,
                    rate_ppm: 1_000_000,
                    stalled_until: Duration::ZERO,
                    disk_stalled_until: Duration::ZERO,
                }
            })
            .collect();
        let ingress = cfg.ingress(Validator::new(&replicas[0].cfg));
        let replica_ingress = replicas
            .iter()
            .map(|r| cfg.ingress(Validator::for_replica(&r.cfg)))
            .collect();
        let mut replicas = replicas;
        if cfg.storage.clock_skew > 0.0 {
            for r in &mut replicas {
                let skew = rng.gen_range(-cfg.storage.clock_skew..=cfg.storage.clock_skew);
                r.rate_ppm = (1_000_000.0 * (1.0 + skew)) as u64;
            }
        }
        let clients: Vec<SimClient> = (0..cfg.clients)
            .map(|_| {
                let mut client = Client::new(
                    KeyPair::from_seed(rng.gen()),
                    members.clone(),
                    1,
                    CLIENT_RETRANSMIT,
                )
                .with_retransmit_ceiling(CLIENT_RETRANSMIT_CEILING);
                if let Some(q) = cfg.planted_read_quorum {
                    client = client.with_planted_read_quorum(q);
                }
                SimClient {
                    client,
                    remaining: cfg.requests_per_client,
                    timer_at: None,
                    invocation: None,
                    reading: None,
                }
            })
            .collect();
        let client_index = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.client.id(), i))
            .collect();
        let rogues = (0..cfg.byzantine_clients)
            .map(|_| Rogue::new(KeyPair::from_seed(rng.gen())))
            .collect();
        let heal_at = cfg.faults.chaos;
        let report = SimReport {
            seed: cfg.seed,
            ..SimReport::default()
        };
        Self {
            cfg,
            rng,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            tie: 0,
            replicas,
            clients,
            rogues,
            admissions: Admissions::default(),
            client_index,
            ingress,
            replica_ingress,
            healed: false,
            heal_at,
            partition: None,
            checker: Checker::default(),
            trace: VecDeque::new(),
            report,
            tail_requests: 0,
            catch_up_target: None,
            stable_wait_since: None,
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.tie += 1;
        self.queue.push(Reverse(Entry {
            at: self.now + after,
            tie: self.tie,
            event,
        }));
    }

    fn log(&mut self, line: String) {
        let line = format!("[{:>8.3}s] {line}", self.now.as_secs_f64());
        if self.cfg.trace {
            println!("{line}");
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    pub fn run(mut self) -> Result<SimReport, Box<SimFailure>> {
        match self.run_inner() {
            Ok(()) => Ok(self.report),
            Err(violation) => Err(Box::new(SimFailure {
                seed: self.cfg.seed,
                config: self.cfg.summary(),
                replay: self.cfg.replay_args.clone(),
                violation,
                trace_tail: self.trace.into_iter().collect(),
            })),
        }
    }

    fn run_inner(&mut self) -> Step {
        for id in 0..self.cfg.n() as ReplicaId {
            let mut out = Vec::new();
            let now = self.local_now(id);
            if let Some(node) = self.replicas[id as usize].node.as_mut() {
                node.start(now, &mut out);
            }
            self.perform(id, out, None)?;
        }
        for c in 0..self.clients.len() {
            let think = Duration::from_millis(self.rng.gen_range(0..20));
            let start = self.cfg.client_start_gap * c as u32;
            self.schedule(start + think, Event::ClientNext { client: c });
        }
        for rogue in 0..self.rogues.len() {
            let first = Duration::from_millis(self.rng.gen_range(0..200));
            self.schedule(first, Event::RogueSends { rogue });
        }
        self.schedule(self.heal_at, Event::Heal);
        if let Some(at) = self.cfg.clear_byzantine_at {
            self.schedule(at, Event::ClearByzantine);
        }
        if self.cfg.faults.stall_ms.is_some() && self.heal_at > Duration::ZERO {
            let at =
                Duration::from_millis(self.rng.gen_range(0..=self.heal_at.as_millis() as u64 / 4));
            self.schedule(at, Event::Stall);
        }
        if self.cfg.faults.partitions && self.heal_at > Duration::ZERO {
            let at = Duration::from_millis(self.rng.gen_range(0..=self.heal_at.as_millis() as u64));
            self.schedule(at, Event::PartitionStart);
        }
        let mut events = 0u64;
        while let Some(Reverse(entry)) = self.queue.pop() {
            self.now = entry.at;
            events += 1;
            if events > MAX_EVENTS {
                return Err(Violation {
                    invariant: "liveness",
                    detail: "event budget exhausted (livelock?)".into(),
                });
            }
            self.step(entry.event)?;
            if self.healed && self.done()? {
                self.report.sim_time_ms = self.now.as_millis() as u64;
                self.report.committed_seqs = self.checker.committed_seqs();
                self.report.accepted_requests =
                    self.checker.accepted.len() + self.checker.reads_accepted;
                self.report.reads_accepted = self.checker.reads_accepted;
                return Ok(());
            }
            if self.healed && self.now > self.heal_at + self.cfg.liveness_budget {
                return Err(self.liveness_failure());
            }
        }
        Err(self.liveness_failure())
    }

    fn step(&mut self, event: Event) -> Step {
        if let Some((id, needs)) = event.handled_by() {
            let until = needs.blocked_until(&self.replicas[id as usize]);
            if until > self.now {
                // In the order they came: later entries get later ties.
                self.schedule(until - self.now, event);
                return Ok(());
            }
        }
        match event {
            Event::Deliver { from, to, frame } => self.deliver(from, to, frame),
            Event::Ingest {
                replica,
                incarnation,
            } => self.ingest(replica, incarnation),
            Event::Flush {
                replica,
                incarnation,
            } => self.flush(replica, incarnation),
            Event::LandApart {
                replica,
                incarnation,
                record,
            } => {
                let r = &mut self.replicas[replica as usize];
                if r.incarnation == incarnation {
                    // The checkpoint's synced write syncs the log with it: what the
                    // persist thread wrote unsynced before is durable now too.
                    let writes = match (&*record, &r.durable.stable) {
                        (PersistRecord::Stable(cp), Some(stored)) => cp.seq > stored.seq,
                        _ => true,
                    };
                    if writes {
                        r.keep_written(r.written_unsynced);
                    }
                    r.durable.apply(&record);
                }
                Ok(())
            }
            Event::SnapshotTaken {
                replica,
                incarnation,
                taken,
            } => {
                let r = &self.replicas[replica as usize];
                if r.node.is_some() && r.incarnation == incarnation {
                    self.log(format!("r{replica} snapshot {} taken", taken.seq));
                    self.handle(replica, Input::SnapshotTaken(*taken))?;
                }
                Ok(())
            }
            Event::ReplicaTimer {
                replica,
                incarnation,
                timer,
                at,
            } => {
                let r = &self.replicas[replica as usize];
                let due = r.timers.get(&timer) == Some(&at);
                if r.node.is_some() && r.incarnation == incarnation && due {
                    self.log(format!("r{replica} timer {timer:?}"));
                    self.handle(replica, Input::Timer(timer))?;
                }
                Ok(())
            }
            Event::ClientTimer { client } => {
                if self.clients[client].timer_at == Some(self.now) {
                    let out = self.clients[client].client.on_timeout(self.now);
                    if !out.is_empty() {
                        self.log(format!("c{client} retransmits"));
                    }
                    self.client_outputs(client, out)?;
                }
                Ok(())
            }
            Event::ClientNext { client } => self.client_submit(client),
            Event::RogueSends { rogue } => self.rogue_sends(rogue),
            Event::Restart { replica } => self.restart(replica),
            Event::Stall => {
                self.stall();
                Ok(())
            }
            Event::PartitionStart => {
                if !self.healed {
                    let n = self.cfg.n() as ReplicaId;
                    let side: BTreeSet<ReplicaId> =
                        (0..n).filter(|_| self.rng.gen_bool(0.5)).collect();
                    self.log(format!("partition {side:?} | rest"));
                    self.partition = Some(side);
                    let len = Duration::from_millis(self.rng.gen_range(200..2000));
                    self.schedule(len, Event::PartitionEnd);
                }
                Ok(())
            }
            Event::PartitionEnd => {
                self.partition = None;
                self.log("partition healed".into());
                if !self.healed {
                    let gap = Duration::from_millis(self.rng.gen_range(100..1500));
                    self.schedule(gap, Event::PartitionStart);
                }
                Ok(())
            }
            Event::ClearByzantine => {
                for r in &mut self.replicas {
                    if let Some(node) = r.node.as_mut() {
                        node.set_behaviour(Box::new(Honest));
                        r.honest = true;
                    }
                }
                self.log("byzantine clear: every replica honest".into());
                Ok(())
            }
            Event::Heal => {
                self.healed = true;
                self.partition = None;
                self.log("HEAL: network reliable, crashed replicas restart".into());
                for id in 0..self.cfg.n() as ReplicaId {
                    if self.replicas[id as usize].node.is_none() {
                        self.restart(id)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// A Byzantine client sends one nasty frame to one replica or to all, and
    /// again a little later, for as long as the chaos phase lasts.
    fn rogue_sends(&mut self, rogue: usize) -> Step {
        if self.healed {
            return Ok(());
        }
        let max_batch_bytes = self.replicas[0].cfg.params.max_batch_bytes;
        let (kind, frame, valid) = self.rogues[rogue].frame(&mut self.rng, max_batch_bytes);
        if let Some((client, timestamp)) = valid {
            self.checker.issued(client, timestamp);
        }
        self.log(format!("rogue{rogue} sends {kind:?}"));
        let frame = Arc::new(frame);
        let to_all = self.rng.gen_bool(0.5);
        let one = self.rng.gen_range(0..self.cfg.n()) as ReplicaId;
        for r in 0..self.cfg.n() as ReplicaId {
            if to_all || r == one {
                self.net_send_frame(Node::Rogue(rogue), Node::Replica(r), frame.clone());
            }
        }
        let next = Duration::from_millis(self.rng.gen_range(20..300));
        self.schedule(next, Event::RogueSends { rogue });
        Ok(())
    }

    fn client_submit(&mut self, client: usize) -> Step {
        let c = &mut self.clients[client];
        if c.remaining == 0 || c.client.is_busy() {
            return Ok(());
        }
        c.remaining -= 1;
        let key = vec![b'k', self.rng.gen_range(0..4u8)];
        let op = match self.rng.gen_range(0..4) {
            0 => {
                // Half the values are longer than a digest, so the replies that
                // return them (a later put's previous value, a get) travel as
                // digest replies (TOCS §5.1.1) from all but the designated replica.
                let byte: u8 = self.rng.gen();
                let len = if byte.is_multiple_of(2) { 3 } else { 40 };
                let value = vec![byte; len];
                // A quarter of these writes are sets (answered "written", their
                // old value only journalled), chosen by the byte already drawn:
                // no extra draw (the runs still diverge from there, as a set's
                // replies differ from a put's).
                if byte % 8 < 2 {
                    KvOp::Set { key, value }
                } else {
                    KvOp::Put { key, value }
                }
            }
            1 => KvOp::Get { key },
            2 => KvOp::Delete { key },
            _ => KvOp::CompareAndSwap {
                key,
                expected: None,
                new: vec![self.rng.gen(); 2],
            },
        };
        // Half the gets go read-only (TOCS §5.1.3), half through the order.
        let read_only = matches!(op, KvOp::Get { .. }) && self.rng.gen_bool(0.5);
        let c = &mut self.clients[client].client;
        let out = if read_only {
            c.submit_read(self.now, op.encode())
        } else {
            c.submit(self.now, op.encode())
        }
        .expect("client is idle");
        let ts = c.outstanding_timestamp().expect("just submitted");
        let id = c.id();
        // A read-only timestamp is not issued for ordering: if any replica ever
        // executed it, validity fails.
        if !read_only {
            self.checker.issued(id, ts);
        }
        self.checker.invoked((id, ts), op.clone(), self.now);
        self.clients[client].invocation = Some((op, self.now));
        self.clients[client].reading = read_only.then_some(ts);
        let how = if read_only { " read-only" } else { "" };
        self.log(format!("c{client} submits ts {ts}{how}"));
        self.client_outputs(client, out)
    }

    fn client_outputs(&mut self, client: usize, out: Vec<ClientOutput>) -> Step {
        for o in out {
            match o {
                ClientOutput::Send { to, message } => {
                    self.net_send(Node::Client(client), Node::Replica(to), &message);
                }
                ClientOutput::Broadcast { message } => {
                    let frame = encode(&message);
                    for r in 0..self.cfg.n() as ReplicaId {
                        self.net_send_frame(Node::Client(client), Node::Replica(r), frame.clone());
                    }
                }
                ClientOutput::SetTimer { at } => {
                    self.clients[client].timer_at = Some(at);
                    self.schedule(at - self.now, Event::ClientTimer { client });
                }
                ClientOutput::Reissued { timestamp } => {
                    self.clients[client].reading = None;
                    let id = self.clients[client].client.id();
                    self.checker.issued(id, timestamp);
                    if let Some((op, at)) = self.clients[client].invocation.clone() {
                        self.checker.invoked((id, timestamp), op, at);
                    }
                    self.log(format!("c{client} reissues as ts {timestamp}"));
                }
                ClientOutput::Lost { timestamp } | ClientOutput::Unknown { timestamp } => {
                    self.log(format!("c{client} gives up on ts {timestamp}"));
                    self.clients[client].timer_at = None;
                    let think = Duration::from_millis(self.rng.gen_range(0..30));
                    self.schedule(think, Event::ClientNext { client });
                }
                ClientOutput::Accepted { timestamp, result } => {
                    let id = (self.clients[client].client.id(), timestamp);
                    self.log(format!("c{client} accepted ts {timestamp}"));
                    if let Some((_, invoked)) = &self.clients[client].invocation {
                        let took = self.now.saturating_sub(*invoked).as_millis() as u64;
                        self.report.request_ms_total += took;
                        self.report.longest_request_ms = self.report.longest_request_ms.max(took);
                    }
                    if self.clients[client].reading.take() == Some(timestamp) {
                        self.checker.on_read_accept(id, &result, self.now)?;
                    } else {
                        self.checker.on_accept(id, &result, self.now)?;
                    }
                    self.clients[client].timer_at = None;
                    let think = Duration::from_millis(self.rng.gen_range(0..30));
                    self.schedule(think, Event::ClientNext { client });
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, id: ReplicaId, input: Input) -> Step {
        let mut out = Vec::new();
        let now = self.local_now(id);
        let r = &mut self.replicas[id as usize];
        let Some(node) = r.node.as_mut() else {
            return Ok(());
        };
        node.handle(now, input, &mut out);
        let may_crash = r.honest || self.cfg.byzantine_crash;
        let crash_at = if may_crash && !self.healed && self.rng.gen_bool(self.cfg.faults.crash) {
            Some(self.rng.gen_range(0..=out.len()))
        } else {
            None
        };
        self.perform(id, out, crash_at)
    }

    /// Perform outputs in order; a crash after `crash_at` of them loses the rest
    /// (including un-sent messages), exactly like a process dying mid-loop.
    fn perform(&mut self, id: ReplicaId, out: Vec<Output>, crash_at: Option<usize>) -> Step {
        let honest = self.replicas[id as usize].honest;
        for (i, o) in out.into_iter().enumerate() {
            if crash_at == Some(i) {
                return self.crash(id);
            }
            match o {
                Output::Send { to, message } => {
                    self.replica_send(id, Node::Replica(to), encode(&message));
                }
                Output::Broadcast { message } => {
                    if let Message::Checkpoint(c) = &message {
                        let grouped = self.cfg.storage.grouped_writes;
                        let r = &mut self.replicas[id as usize];
                        if c.payload.replica == id {
                            // It vouches for the checkpoint once the frames leave: with
                            // grouped writes, after the write they wait for.
                            if grouped && !(r.unflushed.is_empty() && r.held.is_empty()) {
                                r.held_checkpoint = r.held_checkpoint.max(c.payload.seq);
                            } else {
                                r.signed_checkpoint = r.signed_checkpoint.max(c.payload.seq);
                            }
                        }
                    }
                    let frame = encode(&message);
                    for to in 0..self.cfg.n() as ReplicaId {
                        if to != id {
                            self.replica_send(id, Node::Replica(to), frame.clone());
                        }
                    }
                }
                Output::Replies(replies) => {
                    // Each simulated client is a process of its own: a reply goes
                    // alone, or (small batches) as a bundle of one beside the leaves.
                    let index = &self.client_index;
                    for (c, message) in replies.address(|client| index.get(client).copied()) {
                        self.replica_send(id, Node::Client(c), encode(&message));
                    }
                }
                Output::Persist(record) => {
                    let r = &mut self.replicas[id as usize];
                    if self.cfg.storage.grouped_writes {
                        r.unflushed.push(record);
                    } else {
                        r.durable.apply(&record);
                        r.has_persisted = true;
                    }
                }
                Output::PersistApart(record) => {
                    let r = &mut self.replicas[id as usize];
                    if self.cfg.storage.grouped_writes {
                        // The persist thread hands it on after the group write.
                        r.unflushed_apart.push(record);
                    } else {
                        self.write_apart(id, record);
                    }
                }
                Output::TakeSnapshot(job) => {
                    // Run now: the job's state was captured when it was made, so
                    // running it at any later moment gives the same bytes.
                    let incarnation = self.replicas[id as usize].incarnation;
                    let taken = Box::new(job.run());
                    let longest = if !self.healed && self.rng.gen_ratio(1, SLOW_SNAPSHOT_ONE_IN) {
                        SLOW_SNAPSHOT_JOB_MS
                    } else {
                        SNAPSHOT_JOB_MS
                    };
                    let after = Duration::from_millis(self.rng.gen_range(0..=longest));
                    self.schedule(
                        after,
                        Event::SnapshotTaken {
                            replica: id,
                            incarnation,
                            taken,
                        },
                    );
                }
                Output::SetTimer { timer, at } => {
                    let r = &mut self.replicas[id as usize];
                    r.timers.insert(timer, at);
                    let incarnation = r.incarnation;
                    let after = self.sim_time(id, at).saturating_sub(self.now);
                    self.schedule(
                        after,
                        Event::ReplicaTimer {
                            replica: id,
                            incarnation,
                            timer,
                            at,
                        },
                    );
                }
                Output::Rejected { peer, reason } => {
                    self.report.rejections += 1;
                    self.log(format!("r{id} rejects input from {peer:?}: {reason}"));
                    if let Some(p) = peer {
                        if honest && self.replicas[p as usize].honest {
                            self.checker.on_rejection(id, p, &reason)?;
                        }
                    }
                }
                Output::Executed(e) => {
                    self.log(format!(
                        "r{id} executes seq {} {:?} ({} requests)",
                        e.seq,
                        e.digest,
                        e.requests.len()
                    ));
                    if honest {
                        self.checker.on_execute(id, &e)?;
                    }
                }
                Output::ViewEntered { view, primary } => {
                    self.report.view_changes += 1;
                    self.report.max_view = self.report.max_view.max(view);
                    self.log(format!("r{id} enters view {view} (primary {primary})"));
                }
                Output::ViewChangeStarted { view } => {
                    self.log(format!("r{id} starts view change to {view}"))
                }
                Output::ReadsAnswered { count } => {
                    self.log(format!("r{id} answered {count} read-only requests"));
                }
                Output::TentativelyExecuted { seq, requests } => {
                    self.report.tentative_executions += 1;
                    self.log(format!("r{id} executed seq {seq} tentatively ({requests})"));
                }
                Output::RolledBack { seq } => {
                    self.report.rollbacks += 1;
                    self.log(format!("r{id} rolled back tentative seq {seq}"));
                }
                Output::CheckpointStable { seq, .. } => {
                    self.report.stable_checkpoints += 1;
                    self.log(format!("r{id} checkpoint {seq} stable"));
                }
                Output::StateInstalled { seq, .. } => {
                    self.report.state_transfers += 1;
                    self.log(format!("r{id} installed state at {seq}"));
                }
                Output::Suspected(suspects) => {
                    self.report.suspicion_changes += 1;
                    self.log(format!("r{id} suspects {suspects:?}"));
                    let r = &self.replicas[id as usize];
                    if let (true, Some(node)) = (r.honest, r.node.as_ref()) {
                        for (peer, reasons) in node.replica().failure_detector().suspicions() {
                            self.report
                                .suspected_for
                                .entry(peer)
                                .or_default()
                                .extend(reasons);
                        }
                    }
                }
            }
        }
        if crash_at.is_some() {
            return self.crash(id); // crash after the last output
        }
        self.schedule_flush(id);
        Ok(())
    }

    /// Stall a running replica (the primary, as most replicas see it, half the
    /// time), then draw the next stall, until the heal.
    fn stall(&mut self) {
        if self.healed {
            return;
        }
        let (shortest, longest) = self
            .cfg
            .faults
            .stall_ms
            .expect("stalls are scheduled only when on");
        let n = self.cfg.n() as ReplicaId;
        let primary = self.commonest_primary();
        let id = if self.rng.gen_bool(0.5) {
            primary
        } else {
            self.rng.gen_range(0..n)
        };
        let length = Duration::from_millis(self.rng.gen_range(shortest..=longest));
        let disk = self.cfg.storage.grouped_writes && self.rng.gen_bool(0.5);
        // Faults end at the heal: the synchronous suffix starts with every replica running.
        let until = (self.now + length).min(self.heal_at);
        let length = until.saturating_sub(self.now);
        let r = &mut self.replicas[id as usize];
        if r.node.is_some() && !length.is_zero() {
            // Past the primary's request timer, which runs longer than a backup's.
            let patience = VIEW_CHANGE_TIMEOUT * crate::replica::PRIMARY_PATIENCE;
            if id == primary && length > patience {
                self.report.long_primary_stalls += 1;
            }
            let what = if disk {
                r.disk_stalled_until = r.disk_stalled_until.max(until);
                "'s DISK"
            } else {
                r.stalled_until = r.stalled_until.max(until);
                ""
            };
            self.report.stalls += 1;
            self.log(format!("r{id}{what} STALLS for {length:?}"));
        }
        let gap = Duration::from_millis(self.rng.gen_range(100..=1_500));
        self.schedule(length + gap, Event::Stall);
    }

    /// The primary of the view most running replicas are in (the lowest on a tie).
    fn commonest_primary(&self) -> ReplicaId {
        let mut votes: BTreeMap<ReplicaId, usize> = BTreeMap::new();
        for node in self.replicas.iter().filter_map(|r| r.node.as_ref()) {
            *votes.entry(node.replica().primary()).or_default() += 1;
        }
        let most = votes.values().copied().max().unwrap_or(0);
        votes
            .into_iter()
            .find(|(_, v)| *v == most)
            .map_or(0, |(id, _)| id)
    }

    /// A replica's clock: the simulation's, at the replica's rate.
    fn local_now(&self, id: ReplicaId) -> Duration {
        let rate = u128::from(self.replicas[id as usize].rate_ppm);
        let nanos = self.now.as_nanos() * rate / 1_000_000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// When the replica's clock reads `local` (the first simulated nanosecond at or
    /// after it).
    fn sim_time(&self, id: ReplicaId, local: Duration) -> Duration {
        let rate = u128::from(self.replicas[id as usize].rate_ppm);
        let nanos = (local.as_nanos() * 1_000_000).div_ceil(rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A message as the node puts it on the wire.
fn encode(message: &Message) -> Arc<Vec<u8>> {
    Arc::new(crate::frame::encode_pbft(message))
}
