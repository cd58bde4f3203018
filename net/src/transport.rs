//! The transport's handle and the swarm task: connections (admitted against
//! [`IngressLimits`]) and dialling. Writers and readers live in `writer` and
//! `reader`.

use crate::reader::{accept_streams, Queues};
use crate::writer::write_to_peer;
use crate::{keypair_of, PROTOCOL};
use futures::StreamExt as _;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// How often disconnected validators are redialled.
const REDIAL: Duration = Duration::from_millis(500);
/// Writers kept for peers outside the validator set before closed ones are swept.
const WRITER_SWEEP: usize = 4096;
/// The system resolver's configuration, which the DNS transport reads.
const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot set up the libp2p transport: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("outbound queue to {0} is full; frame dropped")]
    QueueFull(PeerId),
}

/// Transport configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub key: bft_crypto::KeyPair,
    /// Where to accept connections (None for a client that only dials).
    pub listen: Option<Multiaddr>,
    /// Peers to keep connected to, redialled with back-off forever (the validator set).
    pub peers: Vec<(PeerId, Multiaddr)>,
    pub max_frame_bytes: usize,
    /// Frames queued per peer before new ones are dropped.
    pub peer_queue: usize,
    /// Frames received but not yet taken by the application, over all peers (over
    /// the configured ones if `others_queue` is set).
    pub inbound_queue: usize,
    /// If set, frames from peers outside `peers` (a replica's clients) get a queue
    /// of their own of this many frames ([`Network::others`]), so the application
    /// can take its configured peers' frames first: a flood of client requests must
    /// not hold up the validator set's votes and heartbeats behind it. None: one
    /// queue for all.
    pub others_queue: Option<usize>,
    /// What peers may hold open here.
    pub limits: IngressLimits,
    /// Whether a writer woken with one frame queued, less than 1 ms after its last
    /// write, yields once so that the tasks that are ready queue more frames first
    /// (see `writer::write_to_peer`): for a gateway, whose many clients each queue
    /// a request microseconds apart. A replica queues what a turn produced at once,
    /// and gains nothing from waiting.
    pub coalesce_writes: bool,
}

/// Bounds on what other peers may hold open at this node. A connection over a
/// bound is closed as soon as the swarm reports it established (streams it carries
/// meanwhile are read until it goes), a stream over a bound is dropped unread;
/// both are counted ([`NetStats::connections_refused`],
/// [`NetStats::streams_refused`]). The configured peers (the validator set) never
/// count against `max_other_connections`, so a crowd of clients cannot lock a
/// replica out of its group; and a configured peer over its own bound replaces its
/// oldest connection rather than being refused (old ones may be half-open after
/// the peer moved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressLimits {
    /// Connections from peers outside the configured set, all together.
    pub max_other_connections: usize,
    /// Connections per peer: a pair has one, or two when both dial at once.
    pub max_connections_per_peer: usize,
    /// Inbound streams of our protocol per peer: its writer keeps one open, and
    /// one more while it replaces a broken one.
    pub max_streams_per_peer: usize,
}

impl Default for IngressLimits {
    fn default() -> Self {
        Self {
            max_other_connections: 1024,
            max_connections_per_peer: 4,
            max_streams_per_peer: 4,
        }
    }
}

/// A frame from a peer.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub bytes: Vec<u8>,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Dropped because a peer's queue was full.
    pub frames_dropped: u64,
    /// Lost in a write that failed (the stream broke), or held by a writer that
    /// gave up on a peer outside the configured set (a client that did not return).
    pub frames_lost: u64,
    /// Oversized or truncated frames received.
    pub frames_malformed: u64,
    pub stream_opens: u64,
    /// Connections closed for being over an [`IngressLimits`] bound.
    pub connections_refused: u64,
    /// Inbound streams refused for being over the per-peer bound.
    pub streams_refused: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) opens: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
}

/// State the swarm task, writers and readers share. Locks are held for one map
/// or set operation and never across an await; they do not poison (a panic
/// elsewhere cannot leave these half-updated).
pub(crate) struct Shared {
    pub(crate) control: libp2p_stream::Control,
    writers: Mutex<HashMap<PeerId, mpsc::Sender<Arc<Vec<u8>>>>>,
    pub(crate) persistent: HashSet<PeerId>,
    connected: Mutex<HashSet<PeerId>>,
    /// Ticks whenever `connected` changes, for writers waiting on a peer.
    connection_changes: watch::Sender<()>,
    /// Inbound streams held per peer.
    pub(crate) streams: Mutex<HashMap<PeerId, usize>>,
    pub(crate) limits: IngressLimits,
    pub(crate) counters: Counters,
    peer_queue: usize,
    pub(crate) coalesce_writes: bool,
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Shared {
    fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.lock().contains(peer)
    }

    /// Return once `peer` has a connection.
    pub(crate) async fn wait_connected(&self, peer: PeerId) {
        let mut changes = self.connection_changes.subscribe();
        while !self.is_connected(&peer) {
            if changes.changed().await.is_err() {
                // The sender lives in `self`; it cannot be gone while we run.
                return;
            }
        }
    }

    fn set_connected(&self, peer: PeerId, up: bool) {
        let mut connected = self.connected.lock();
        let changed = if up {
            connected.insert(peer)
        } else {
            connected.remove(&peer)
        };
        drop(connected);
        if changed {
            self.connection_changes.send_replace(());
        }
    }
}

/// A cloneable handle to send frames and read transport state.
#[derive(Clone)]
pub struct NetHandle {
    shared: Arc<Shared>,
    local: PeerId,
}

/// A running transport: the handle and the stream of inbound frames.
pub struct Network {
    pub handle: NetHandle,
    pub inbound: mpsc::Receiver<Inbound>,
    /// Frames from peers outside the configured set, if `others_queue` was set.
    pub others: Option<mpsc::Receiver<Inbound>>,
}

impl Network {
    /// Build the swarm, start listening, and start the background tasks. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// If the transport cannot be built or the listen address cannot be bound.
    pub fn start(cfg: NetConfig) -> Result<Self, NetError> {
        let keypair = keypair_of(&cfg.key);
        let local = keypair.public().to_peer_id();
        // The same behaviour and settings on either transport stack below.
        macro_rules! finish {
            ($builder:expr) => {
                $builder
                    .with_behaviour(|_| libp2p_stream::Behaviour::new())
                    .map_err(|e| NetError::Setup(e.to_string()))?
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build()
            };
        }
        let transports = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::Setup(e.to_string()))?
            // QUIC (TLS 1.3, its own multiplexing) for `/udp/P/quic-v1` addresses.
            .with_quic();
        // `/dns4/NAME/...` addresses, resolved at every dial (the system's resolver
        // and hosts file): a peer that comes back under its name with another
        // address (a rescheduled Kubernetes pod) is found again. Without a resolver
        // configuration (a minimal container) only IP addresses can be dialled,
        // which is no reason to refuse to start.
        let mut swarm = if Path::new(RESOLV_CONF).exists() {
            finish!(transports
                .with_dns()
                .map_err(|e| NetError::Setup(format!("DNS resolver ({RESOLV_CONF}): {e}")))?)
        } else {
            tracing::warn!("no {RESOLV_CONF}: DNS addresses cannot be dialled, IP addresses can");
            finish!(transports)
        };
        if let Some(addr) = &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut control = swarm.behaviour().new_control();
        let incoming = control
            .accept(PROTOCOL)
            .map_err(|e| NetError::Setup(e.to_string()))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            control,
            writers: Mutex::new(HashMap::new()),
            persistent: cfg
                .peers
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| *p != local)
                .collect(),
            connected: Mutex::new(HashSet::new()),
            connection_changes: watch::Sender::new(()),
            streams: Mutex::new(HashMap::new()),
            limits: cfg.limits,
            counters: Counters::default(),
            peer_queue: cfg.peer_queue.max(1),
            coalesce_writes: cfg.coalesce_writes,
            shutdown,
        });
        let (inbound_tx, inbound) = mpsc::channel(cfg.inbound_queue.max(1));
        let (others_tx, others) = match cfg.others_queue {
            Some(size) => {
                let (tx, rx) = mpsc::channel(size.max(1));
                (tx, Some(rx))
            }
            None => (inbound_tx.clone(), None),
        };
        let queues = Queues {
            peers: inbound_tx,
            others: others_tx,
        };
        let dial: Vec<_> = cfg
            .peers
            .iter()
            .filter(|(p, _)| *p != local)
            .cloned()
            .collect();
        tokio::spawn(run_swarm(swarm, dial, shared.clone(), shutdown_rx.clone()));
        tokio::spawn(accept_streams(
            incoming,
            shared.clone(),
            queues,
            cfg.max_frame_bytes,
            shutdown_rx,
        ));
        let handle = NetHandle { shared, local };
        // Open the streams to the validator set now, not at the first message.
        for peer in handle.shared.persistent.clone() {
            handle.ensure_writer(peer);
        }
        Ok(Self {
            handle,
            inbound,
            others,
        })
    }
}

impl NetHandle {
    #[must_use]
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Queue a frame for `peer` without waiting. A full queue drops the frame: the
    /// caller's protocol must tolerate loss (PBFT does), and one stuck peer must
    /// never block the sender.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when the frame was dropped.
    pub fn send(&self, peer: PeerId, frame: Arc<Vec<u8>>) -> Result<(), SendError> {
        let tx = self.ensure_writer(peer);
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(SendError::QueueFull(peer))
            }
            Err(mpsc::error::TrySendError::Closed(frame)) => {
                // The writer gave up on a transient peer; start a fresh one (unless
                // another sender just did: only a closed writer is removed).
                {
                    let mut writers = self.shared.writers.lock();
                    if writers.get(&peer).is_some_and(mpsc::Sender::is_closed) {
                        writers.remove(&peer);
                    }
                }
                let tx = self.ensure_writer(peer);
                tx.try_send(frame).map_err(|_| {
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    SendError::QueueFull(peer)
                })
            }
        }
    }

    fn ensure_writer(&self, peer: PeerId) -> mpsc::Sender<Arc<Vec<u8>>> {
        let mut writers = self.shared.writers.lock();
        if writers.len() > WRITER_SWEEP {
            writers.retain(|_, tx| !tx.is_closed());
        }
        writers
            .entry(peer)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.shared.peer_queue);
                let persistent = self.shared.persistent.contains(&peer);
                tokio::spawn(write_to_peer(self.shared.clone(), peer, rx, persistent));
                tx
            })
            .clone()
    }

    /// Peers with at least one open connection.
    #[must_use]
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.shared.connected.lock().iter().copied().collect()
    }

    #[must_use]
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.shared.is_connected(peer)
    }

    #[must_use]
    pub fn stats(&self) -> NetStats {
        let c = &self.shared.counters;
        NetStats {
            frames_sent: c.sent.load(Ordering::Relaxed),
            frames_received: c.received.load(Ordering::Relaxed),
            frames_dropped: c.dropped.load(Ordering::Relaxed),
            frames_lost: c.lost.load(Ordering::Relaxed),
            frames_malformed: c.malformed.load(Ordering::Relaxed),
            stream_opens: c.opens.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            streams_refused: c.streams_refused.load(Ordering::Relaxed),
        }
    }

    /// Stop the swarm and every task; connections close.
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.writers.lock().clear();
    }
}

/// The one task that owns the swarm: it keeps the configured peers dialed (every
/// `REDIAL` while disconnected) and tracks connections. Writers open their streams
/// on these connections.
async fn run_swarm(
    mut swarm: libp2p::Swarm<libp2p_stream::Behaviour>,
    peers: Vec<(PeerId, Multiaddr)>,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut redial = tokio::time::interval(REDIAL);
    let mut admitted = Admitted::new(shared.limits);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = redial.tick() => {
                for (peer, addr) in &peers {
                    if !swarm.is_connected(peer) {
                        let opts = DialOpts::peer_id(*peer)
                            .addresses(vec![addr.clone()])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(e) = swarm.dial(opts) {
                            tracing::debug!(%peer, error = %e, "dial refused");
                        }
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    let configured = shared.persistent.contains(&peer_id);
                    match admitted.admit(peer_id, connection_id, configured) {
                        Admission::Admit => {
                            tracing::debug!(%peer_id, "connected");
                            shared.set_connected(peer_id, true);
                        }
                        Admission::Replace(oldest) => {
                            tracing::debug!(%peer_id, "connected; its oldest connection closed");
                            swarm.close_connection(oldest);
                            shared.set_connected(peer_id, true);
                        }
                        Admission::Refuse => {
                            shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer_id, "connection over the ingress limits; closed");
                            swarm.close_connection(connection_id);
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                    let configured = shared.persistent.contains(&peer_id);
                    let was_last = admitted.close(peer_id, connection_id, configured);
                    if was_last {
                        tracing::debug!(%peer_id, ?cause, "disconnected");
                        shared.set_connected(peer_id, false);
                    }
                }
                SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
                SwarmEvent::ListenerError { error, .. } => tracing::error!(%error, "listener error"),
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(?peer_id, %error, "dial failed");
                }
                _ => {}
            }
        }
    }
}

/// The connections the swarm task admitted, per peer (oldest first), checked
/// against the [`IngressLimits`] as each is established.
struct Admitted {
    limits: IngressLimits,
    by_peer: HashMap<PeerId, Vec<ConnectionId>>,
    /// Connections of peers outside the configured set.
    others: usize,
}

/// What to do with a connection just established.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    /// Over a bound: close it.
    Refuse,
    /// A configured peer at its bound: admit it and close its oldest one.
    Replace(ConnectionId),
}

impl Admitted {
    fn new(limits: IngressLimits) -> Self {
        Self {
            limits,
            by_peer: HashMap::new(),
            others: 0,
        }
    }

    /// Whether `conn` of `peer` (`configured`: one of the validator set) fits the
    /// limits; an admitted one is counted until [`Admitted::close`].
    fn admit(&mut self, peer: PeerId, conn: ConnectionId, configured: bool) -> Admission {
        let held = self.by_peer.get(&peer).map_or(0, Vec::len);
        let full = held >= self.limits.max_connections_per_peer.max(1);
        if !configured && (full || self.others >= self.limits.max_other_connections) {
            return Admission::Refuse;
        }
        let conns = self.by_peer.entry(peer).or_default();
        conns.push(conn);
        if !configured {
            self.others += 1;
            return Admission::Admit;
        }
        if full {
            // Forgotten now; its close event then finds nothing to remove.
            return Admission::Replace(conns.remove(0));
        }
        Admission::Admit
    }

    /// Forget `conn` (of a `configured` peer or not, as when admitted); true if it
    /// was admitted and was `peer`'s last connection.
    fn close(&mut self, peer: PeerId, conn: ConnectionId, configured: bool) -> bool {
        let Some(conns) = self.by_peer.get_mut(&peer) else {
            return false;
        };
        let Some(i) = conns.iter().position(|c| *c == conn) else {
            return false;
        };
        conns.remove(i);
        if !configured {
            self.others -= 1;
        }
        if conns.is_empty() {
            self.by_peer.remove(&peer);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    fn limits(others: usize, per_peer: usize) -> IngressLimits {
        IngressLimits {
            max_other_connections: others,
            max_connections_per_peer: per_peer,
            max_streams_per_peer: 4,
        }
    }

    fn ids(n: usize) -> Vec<ConnectionId> {
        (0..n).map(ConnectionId::new_unchecked).collect()
    }

    #[test]
    fn connections_over_a_peers_bound_are_refused_and_closing_frees_a_place() {
        let mut a = Admitted::new(limits(100, 2));
        let p = peer();
        let c = ids(3);
        assert_eq!(a.admit(p, c[0], false), Admission::Admit);
        assert_eq!(a.admit(p, c[1], false), Admission::Admit);
        assert_eq!(a.admit(p, c[2], false), Admission::Refuse, "over the bound");
        // A refused connection's close is not the peer's last.
        assert!(!a.close(p, c[2], false));
        assert!(!a.close(p, c[0], false), "one connection is left");
        assert_eq!(a.admit(p, c[2], false), Admission::Admit);
        assert!(!a.close(p, c[1], false));
        assert!(a.close(p, c[2], false), "the last connection went");
        assert_eq!(a.others, 0);
    }

    #[test]
    fn other_peers_share_one_bound_that_configured_peers_never_meet() {
        let mut a = Admitted::new(limits(2, 4));
        let c = ids(5);
        let (x, y, z) = (peer(), peer(), peer());
        assert_eq!(a.admit(x, c[0], false), Admission::Admit);
        assert_eq!(a.admit(y, c[1], false), Admission::Admit);
        assert_eq!(a.admit(z, c[2], false), Admission::Refuse, "others' bound");
        assert_eq!(
            a.admit(peer(), c[3], true),
            Admission::Admit,
            "a configured peer is admitted however many others there are"
        );
        assert!(a.close(x, c[0], false));
        assert_eq!(a.admit(z, c[4], false), Admission::Admit, "a freed place");
    }

    #[test]
    fn a_configured_peer_at_its_bound_replaces_its_oldest_connection() {
        let mut a = Admitted::new(limits(0, 2));
        let v = peer();
        let c = ids(4);
        assert_eq!(a.admit(v, c[0], true), Admission::Admit);
        assert_eq!(a.admit(v, c[1], true), Admission::Admit);
        // Old connections may be half-open after the peer moved: the new one wins.
        assert_eq!(a.admit(v, c[2], true), Admission::Replace(c[0]));
        assert!(
            !a.close(v, c[0], true),
            "the replaced one was forgotten already"
        );
        assert_eq!(a.admit(v, c[3], true), Admission::Replace(c[1]));
        assert!(!a.close(v, c[2], true));
        assert!(a.close(v, c[3], true), "the last connection went");
    }
}
