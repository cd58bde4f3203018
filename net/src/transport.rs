//! The swarm task, per-peer writers and inbound readers.

use crate::frame::{read_frame, write_frames, FrameError};
use crate::{keypair_of, PROTOCOL};
use futures::StreamExt as _;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// How often disconnected validators are redialled.
const REDIAL: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A writer to a peer outside the validator set (a client) ends after this long idle.
const TRANSIENT_IDLE: Duration = Duration::from_secs(120);
/// ...or after this many failed attempts to open a stream to it.
const TRANSIENT_ATTEMPTS: u32 = 3;
/// Frames written per flush.
const WRITE_BATCH: usize = 512;
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
    /// Lost in a write that failed (the stream broke).
    pub frames_lost: u64,
    /// Oversized or truncated frames received.
    pub frames_malformed: u64,
    pub stream_opens: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    malformed: AtomicU64,
    opens: AtomicU64,
}

struct Shared {
    control: libp2p_stream::Control,
    writers: Mutex<HashMap<PeerId, mpsc::Sender<Arc<Vec<u8>>>>>,
    persistent: HashSet<PeerId>,
    connected: Mutex<HashSet<PeerId>>,
    counters: Counters,
    peer_queue: usize,
    shutdown: tokio::sync::watch::Sender<bool>,
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
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
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
            counters: Counters::default(),
            peer_queue: cfg.peer_queue.max(1),
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
                // The writer gave up on a transient peer; start a fresh one.
                self.shared
                    .writers
                    .lock()
                    .expect("writers lock")
                    .remove(&peer);
                let tx = self.ensure_writer(peer);
                tx.try_send(frame).map_err(|_| {
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    SendError::QueueFull(peer)
                })
            }
        }
    }

    fn ensure_writer(&self, peer: PeerId) -> mpsc::Sender<Arc<Vec<u8>>> {
        let mut writers = self.shared.writers.lock().expect("writers lock");
        if writers.len() > 4096 {
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
        self.shared
            .connected
            .lock()
            .expect("connected lock")
            .iter()
            .copied()
            .collect()
    }

    #[must_use]
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.shared
            .connected
            .lock()
            .expect("connected lock")
            .contains(peer)
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
        }
    }

    /// Stop the swarm and every task; connections close.
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.writers.lock().expect("writers lock").clear();
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
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    tracing::debug!(%peer_id, "connected");
                    shared.connected.lock().expect("connected lock").insert(peer_id);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    tracing::debug!(%peer_id, ?cause, "disconnected");
                    shared.connected.lock().expect("connected lock").remove(&peer_id);
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

/// One writer per peer: open a stream (dialing if needed, with back-off), then
/// write whatever is queued, many frames per flush. A broken stream is reopened.
async fn write_to_peer(
    shared: Arc<Shared>,
    peer: PeerId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    persistent: bool,
) {
    let mut control = shared.control.clone();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let opened = tokio::select! {
            _ = shutdown.changed() => return,
            r = control.open_stream(peer, PROTOCOL) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                tracing::debug!(%peer, error = %e, "cannot open stream");
                if !persistent && failures >= TRANSIENT_ATTEMPTS {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        shared.counters.opens.fetch_add(1, Ordering::Relaxed);
        backoff = BACKOFF_MIN;
        failures = 0;
        loop {
            let next = tokio::select! {
                _ = shutdown.changed() => return,
                f = rx.recv() => f,
                () = tokio::time::sleep(TRANSIENT_IDLE), if !persistent => return,
            };
            let Some(first) = next else { return };
            let mut frames = vec![first];
            while frames.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            match write_frames(&mut stream, &frames).await {
                Ok(()) => {
                    shared
                        .counters
                        .sent
                        .fetch_add(frames.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    shared
                        .counters
                        .lost
                        .fetch_add(frames.len() as u64, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "write failed; reopening");
                    break;
                }
            }
        }
    }
}

/// Where inbound frames go: the configured peers' queue, or the others' (the same
/// one unless [`NetConfig::others_queue`] split them).
struct Queues {
    peers: mpsc::Sender<Inbound>,
    others: mpsc::Sender<Inbound>,
}

async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    queues: Queues,
    max_frame: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => return,
            s = incoming.next() => s,
        };
        let Some((peer, stream)) = next else { return };
        let inbound = if shared.persistent.contains(&peer) {
            queues.peers.clone()
        } else {
            queues.others.clone()
        };
        tokio::spawn(read_from_peer(
            shared.clone(),
            peer,
            stream,
            inbound,
            max_frame,
            shutdown.clone(),
        ));
    }
}

/// Read frames from one inbound stream. An oversized frame ends the stream (the
/// peer is misbehaving or broken); the connection's other streams are unaffected.
async fn read_from_peer(
    shared: Arc<Shared>,
    peer: PeerId,
    stream: libp2p::Stream,
    inbound: mpsc::Sender<Inbound>,
    max_frame: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut reader = futures::io::BufReader::with_capacity(64 * 1024, stream);
    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => return,
            f = read_frame(&mut reader, max_frame) => f,
        };
        match frame {
            Ok(bytes) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                if inbound.send(Inbound { peer, bytes }).await.is_err() {
                    return;
                }
            }
            Err(FrameError::Closed) => return,
            Err(e) => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "dropping stream after a bad frame");
                return;
            }
        }
    }
}
