//! The event loop: the only owner of the replica. It turns verified messages (from
//! the verify pool, which reads the network itself), timers and shutdown into inputs, and performs the outputs:
//! persist first (one synced RocksDB write per turn), then send.

use crate::status::Status;
use crate::storage::Storage;
use crate::verify::Checked;
use anyhow::Context as _;
use bft_consensus::byzantine::Wrapped;
use bft_consensus::{Input, KvStore, Message, Output, ReplicaId, Timer};
use bft_net::{NetHandle, PeerId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How often `/status` is refreshed and the liveness heartbeat ticks.
const TICK: Duration = Duration::from_millis(100);

pub struct Runtime {
    pub replica: Wrapped<KvStore>,
    pub storage: Storage,
    pub net: NetHandle,
    /// Replica id -> PeerId, and back.
    pub peers: Vec<PeerId>,
    pub ids: HashMap<PeerId, ReplicaId>,
    pub start: Instant,
    pub status: watch::Sender<Status>,
    /// Milliseconds since `start` at the last loop tick (read by `/health`).
    pub heartbeat: Arc<AtomicU64>,
    timers: BTreeMap<Timer, Instant>,
    pending: Vec<Output>,
    invalid: u64,
    committed_requests: u64,
    digest_cache: (u64, String),
}

impl Runtime {
    #[must_use]
    pub fn new(
        replica: Wrapped<KvStore>,
        storage: Storage,
        net: NetHandle,
        peers: Vec<PeerId>,
        start: Instant,
        status: watch::Sender<Status>,
        heartbeat: Arc<AtomicU64>,
    ) -> Self {
        let ids = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as ReplicaId))
            .collect();
        Self {
            replica,
            storage,
            net,
            peers,
            ids,
            start,
            status,
            heartbeat,
            timers: BTreeMap::new(),
            pending: Vec::new(),
            invalid: 0,
            committed_requests: 0,
            digest_cache: (u64::MAX, String::new()),
        }
    }

    /// Outputs produced before the loop started (recovery re-sends, timers).
    pub fn push_outputs(&mut self, out: Vec<Output>) {
        self.pending.extend(out);
    }

    /// Run until `shutdown` resolves; then flush what is pending.
    ///
    /// # Errors
    /// A storage failure (the replica cannot promise durability, so it stops).
    pub async fn run(
        mut self,
        mut verified: mpsc::Receiver<Vec<Checked>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        self.flush()?;
        loop {
            let next_timer = self.timers.values().min().copied();
            tokio::select! {
                () = &mut shutdown => break,
                Some(batch) = verified.recv() => {
                    for checked in batch {
                        self.on_checked(checked);
                    }
                }
                () = sleep_until(next_timer) => self.fire_timers(),
                _ = tick.tick() => self.refresh_status(),
            }
            self.flush()?;
        }
        self.flush()?;
        self.refresh_status();
        tracing::info!(replica = self.replica.replica().id(), "event loop stopped");
        Ok(())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        let mut out = Vec::new();
        self.replica.handle(now, input, &mut out);
        self.pending.extend(out);
    }

    fn on_checked(&mut self, c: Checked) {
        match c.result {
            Ok(msg) => {
                // The transport authenticated the peer: a replica message must come
                // from that replica's own connection (a forwarded client request may not).
                if let (Some(claimed), Some(from)) = (msg.sender(), self.ids.get(&c.peer)) {
                    if claimed != *from {
                        self.count_invalid(Some(*from), "wrong_peer");
                        return;
                    }
                }
                self.handle(Input::Message(msg));
            }
            Err(reason) => {
                let peer = self.ids.get(&c.peer).copied().or(c.claimed);
                tracing::debug!(?peer, kind = c.kind, %reason, "invalid message");
                self.count_invalid(peer, reason.label());
            }
        }
    }

    fn count_invalid(&mut self, _peer: Option<ReplicaId>, _reason: &str) {
        self.invalid += 1;
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.timers.remove(&t);
            self.handle(Input::Timer(t));
        }
    }

    /// Persist everything this turn produced (one synced write), then send.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.pending);
        let records: Vec<_> = out
            .iter()
            .filter_map(|o| {
                if let Output::Persist(r) = o {
                    Some(r.clone())
                } else {
                    None
                }
            })
            .collect();
        self.storage
            .persist(&records)
            .context("cannot persist; stopping")?;
        let me = self.replica.replica().id();
        for o in out {
            match o {
                Output::Send { to, message } => self.send(to, &message),
                Output::Broadcast { message } => {
                    let frame = Arc::new(bft_crypto::encode(&message).expect("messages encode"));
                    for to in 0..self.peers.len() as ReplicaId {
                        if to != me {
                            let _ = self.net.send(self.peers[to as usize], frame.clone());
                        }
                    }
                }
                Output::Reply { client, reply } => {
                    if let Some(peer) = bft_net::peer_id_of(&client) {
                        let frame = Arc::new(
                            bft_crypto::encode(&Message::Reply(reply)).expect("messages encode"),
                        );
                        let _ = self.net.send(peer, frame);
                    }
                }
                Output::Persist(_) => {}
                Output::SetTimer { timer, at } => {
                    self.timers.insert(timer, self.start + at);
                }
                Output::Rejected { peer, reason } => {
                    tracing::debug!(?peer, %reason, "rejected");
                    self.count_invalid(peer, reason.label());
                }
                Output::Executed(e) => {
                    self.committed_requests += e.requests.len() as u64;
                    tracing::debug!(
                        replica = me,
                        view = e.view,
                        seq = e.seq,
                        requests = e.requests.len(),
                        "executed"
                    );
                }
                Output::ViewEntered { view, primary } => {
                    tracing::info!(replica = me, view, primary, "entered view")
                }
                Output::ViewChangeStarted { view } => {
                    tracing::info!(replica = me, view, "view change started")
                }
                Output::CheckpointStable { seq, .. } => {
                    tracing::debug!(replica = me, seq, "checkpoint stable")
                }
                Output::StateInstalled { seq, .. } => {
                    tracing::info!(replica = me, seq, "state transfer installed")
                }
            }
        }
        Ok(())
    }

    fn send(&self, to: ReplicaId, message: &Message) {
        if let Some(peer) = self.peers.get(to as usize) {
            let frame = Arc::new(bft_crypto::encode(message).expect("messages encode"));
            let _ = self.net.send(*peer, frame);
        }
    }

    fn refresh_status(&mut self) {
        self.heartbeat
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let r = self.replica.replica();
        if self.digest_cache.0 != r.last_executed() {
            self.digest_cache = (r.last_executed(), r.state_digest().to_hex());
        }
        let (low, high) = r.watermarks();
        let members = &r.config().members;
        let connected = self
            .net
            .connected_peers()
            .iter()
            .filter(|p| self.ids.contains_key(*p))
            .count();
        let status = Status {
            id: r.id(),
            n: members.n(),
            f: members.f(),
            view: r.view(),
            primary: r.primary(),
            in_view_change: r.in_view_change(),
            last_executed: r.last_executed(),
            last_stable_checkpoint: r.stable_checkpoint().seq,
            low_watermark: low,
            high_watermark: high,
            state_digest: self.digest_cache.1.clone(),
            peers_connected: connected,
            suspected: Vec::new(),
            behaviour: self.replica.behaviour().to_string(),
            in_state_transfer: r.in_state_transfer(),
            invalid_messages: self.invalid,
            committed_requests: self.committed_requests,
        };
        self.status.send_replace(status);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
