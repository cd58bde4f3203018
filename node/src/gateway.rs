//! A gateway: one libp2p node hosting many clients, each with its own key,
//! timestamps and signed requests, multiplexed over one connection per replica.
//!
//! A client on its own connection costs every replica a connection, a noise
//! session and a stream write per reply. Behind a gateway, a batch's replies to
//! all of its clients leave each replica as frames on one shared stream, flushed
//! together. Nothing is trusted to the gateway: requests are still signed by
//! their clients, replies still verified by them. Each client signs a
//! [`ReplyRoute`] naming the gateway so replicas send its replies there (a
//! replica only accepts a route over the connection it names).

use crate::client::{wall_clock_micros, ClientError, KvClient, MAX_FRAME_BYTES};
use crate::config::{ResolvedClient, ValidatorSet};
use crate::link::Link;
use bft_consensus::messages::ReplyRoute;
use bft_consensus::{ClientId, Message, ReplicaId, SignedReply};
use bft_crypto::{KeyPair, Signed};
use bft_net::{Inbound, NetConfig, NetHandle, Network, PeerId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Replies queued for one client before more are dropped (it has one request out;
/// anything beyond a few replies per replica is stale or hostile).
const SESSION_QUEUE: usize = 64;

type Sessions = Arc<Mutex<HashMap<ClientId, mpsc::Sender<SignedReply>>>>;

struct Shared {
    net: NetHandle,
    /// Replica id -> PeerId.
    peers: Vec<PeerId>,
    sessions: Sessions,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closes the inbound queue, which ends the dispatcher.
        self.net.shutdown();
    }
}

/// A shared connection to every replica; see the module doc. Cloning shares it.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Start the gateway's transport (with a fresh key of its own) and dial the
    /// replicas. Must run inside tokio.
    ///
    /// # Errors
    /// If the transport cannot start.
    pub fn connect(validators: &ValidatorSet) -> Result<Self, ClientError> {
        let peers: Vec<(PeerId, bft_net::Multiaddr)> = validators
            .validators
            .iter()
            .map(|v| (v.peer, v.address.clone()))
            .collect();
        let net = Network::start(NetConfig {
            key: KeyPair::generate(),
            listen: None,
            peers: peers.clone(),
            max_frame_bytes: MAX_FRAME_BYTES,
            peer_queue: 64 * 1024,
            inbound_queue: 64 * 1024,
        })?;
        let sessions = Sessions::default();
        tokio::spawn(dispatch(net.inbound, sessions.clone()));
        Ok(Self {
            shared: Arc::new(Shared {
                net: net.handle,
                peers: peers.into_iter().map(|(p, _)| p).collect(),
                sessions,
            }),
        })
    }

    /// A client with key `cfg.key` behind this gateway. Its reply route is sent to
    /// every replica now, ahead of its first request.
    #[must_use]
    pub fn client(&self, cfg: &ResolvedClient) -> KvClient {
        let id = cfg.key.public();
        let (tx, replies) = mpsc::channel(SESSION_QUEUE);
        self.shared
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(id, tx);
        let route = Signed::sign(
            ReplyRoute {
                via: self.shared.net.local_peer_id().to_bytes(),
                issued: wall_clock_micros(),
            },
            &cfg.key,
        );
        let route = Arc::new(bft_crypto::encode(&Message::ReplyRoute(route)).expect("encodes"));
        let session = Session {
            shared: self.shared.clone(),
            id,
            replies,
            route,
        };
        session.send_route();
        KvClient::with_link(cfg, Link::Session(session))
    }

    /// Replicas currently connected.
    #[must_use]
    pub fn connected(&self) -> usize {
        let net = &self.shared.net;
        self.shared
            .peers
            .iter()
            .filter(|p| net.is_connected(p))
            .count()
    }

    /// Wait until at least `n` replicas are connected, or `within` passes.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.connected() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Hand each reply to the session of the client it is addressed to. Replies are
/// only decoded here; each client verifies its own (on its own task).
async fn dispatch(mut inbound: mpsc::Receiver<Inbound>, sessions: Sessions) {
    while let Some(frame) = inbound.recv().await {
        let Ok(Message::Reply(reply)) =
            bft_crypto::decode::<Message>(&frame.bytes, MAX_FRAME_BYTES)
        else {
            continue;
        };
        let sessions = sessions.lock().expect("sessions lock");
        if let Some(tx) = sessions.get(&reply.reply.client) {
            // A full queue means the client is not keeping up with stale replies.
            let _ = tx.try_send(reply);
        }
    }
}

/// One client's share of a gateway.
pub(crate) struct Session {
    shared: Arc<Shared>,
    id: ClientId,
    replies: mpsc::Receiver<SignedReply>,
    /// The client's encoded, signed reply route.
    route: Arc<Vec<u8>>,
}

impl Session {
    fn send_route(&self) {
        for p in &self.shared.peers {
            let _ = self.shared.net.send(*p, self.route.clone());
        }
    }

    pub(crate) fn send(&self, to: ReplicaId, frame: Arc<Vec<u8>>) {
        if let Some(peer) = self.shared.peers.get(to as usize) {
            let _ = self.shared.net.send(*peer, frame);
        }
    }

    pub(crate) fn broadcast(&self, frame: &Arc<Vec<u8>>) {
        self.send_route();
        for p in &self.shared.peers {
            let _ = self.shared.net.send(*p, frame.clone());
        }
    }

    pub(crate) async fn next_reply(&mut self) -> Option<SignedReply> {
        self.replies.recv().await
    }

    pub(crate) fn connected(&self) -> usize {
        Gateway {
            shared: self.shared.clone(),
        }
        .connected()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
    }
}
