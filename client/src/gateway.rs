//! A gateway: one libp2p node hosting many clients, each with its own key,
//! timestamps and signed requests, multiplexed over one connection per replica.
//! It is the only transport clients have: a lone client is a gateway of one.
//!
//! A client on its own connection costs every replica a connection, a noise
//! session and a stream write per reply. Behind a gateway, a batch's replies to
//! all of its clients leave each replica as frames on one shared stream, flushed
//! together. Nothing is trusted to the gateway: requests are still signed by
//! their clients, replies still verified by them. Each client signs a
//! [`ReplyRoute`] naming the gateway so replicas send its replies there (a
//! replica only accepts a route over the connection it names).

use crate::config::ValidatorSet;
use crate::{poll_until, wall_clock_micros, MAX_FRAME_BYTES, ROOT_CACHE};
use bft_consensus::frame::ReplyRoute;
use bft_consensus::{
    ClientId, Frame, Message, ReplicaConfig, ReplicaId, RootCache, SignedReply, Validator,
    VerifiedReply,
};
use bft_crypto::{KeyPair, PublicKey, Signed};
use bft_net::{Inbound, IngressLimits, NetConfig, NetError, NetHandle, Network, PeerId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

type Sessions = Arc<Mutex<HashMap<ClientId, Arc<Inbox>>>>;

/// A reply as the gateway hands it to its client.
pub(crate) enum Incoming {
    /// One reply with its path, not yet checked (its client checks it, on its own
    /// task, only if it answers the request outstanding).
    Signed(SignedReply),
    /// From a bundle, checked already: the gateway verifies a bundle once for all
    /// the clients it holds replies for.
    Verified(VerifiedReply),
}

impl Incoming {
    fn timestamp(&self) -> u64 {
        match self {
            Incoming::Signed(r) => r.reply.timestamp,
            Incoming::Verified(r) => r.timestamp,
        }
    }
}

/// A client's undelivered replies: the newest from each replica, one slot each.
/// A faulty replica can overwrite only its own slot, so however many replies it
/// sends, it cannot crowd out the honest replicas' (a shared queue could be kept
/// full by one sender, and the client needs only f+1 of the others). A late reply
/// to an older request never replaces one to a newer request: that one may be the
/// only full result of a digest reply's request (TOCS §5.1.1), whose loss would
/// cost the client a retransmission timeout.
struct Inbox {
    slots: Mutex<Vec<Option<Incoming>>>,
    ready: tokio::sync::Notify,
}

impl Inbox {
    fn new(n: usize) -> Self {
        Self {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn put(&self, replica: usize, reply: Incoming) {
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(replica)
        {
            if slot
                .as_ref()
                .is_none_or(|held| held.timestamp() <= reply.timestamp())
            {
                *slot = Some(reply);
            }
        }
        // Stores a permit if the client is not waiting: no wake-up is lost.
        self.ready.notify_one();
    }

    async fn take(&self) -> Incoming {
        loop {
            if let Some(r) = self
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter_mut()
                .find_map(Option::take)
            {
                return r;
            }
            self.ready.notified().await;
        }
    }
}

struct Shared {
    net: NetHandle,
    /// The transport's identity: replicas send a client with this key its replies
    /// without being told (a lone client's gateway).
    identity: PublicKey,
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
    pub fn connect(validators: &ValidatorSet) -> Result<Self, NetError> {
        Self::connect_as(validators, KeyPair::generate())
    }

    /// As [`Gateway::connect`], with `key` as the transport's identity (a lone
    /// client's own key, so replicas reach it even before its route arrives).
    ///
    /// # Errors
    /// If the transport cannot start.
    pub fn connect_as(validators: &ValidatorSet, key: KeyPair) -> Result<Self, NetError> {
        let peers: Vec<(PeerId, bft_net::Multiaddr)> = validators
            .validators
            .iter()
            .map(|v| (v.peer, v.address.clone()))
            .collect();
        let identity = key.public();
        let net = Network::start(NetConfig {
            key,
            listen: None,
            peers: peers.clone(),
            max_frame_bytes: MAX_FRAME_BYTES,
            peer_queue: 64 * 1024,
            inbound_queue: 64 * 1024,
            others_queue: None,
            limits: IngressLimits::default(),
            coalesce_writes: true,
        })?;
        let sessions = Sessions::default();
        let peers: Vec<PeerId> = peers.into_iter().map(|(p, _)| p).collect();
        let validator = Validator::new(&ReplicaConfig::new(0, validators.membership()));
        tokio::spawn(dispatch(
            net.inbound,
            sessions.clone(),
            peers.clone(),
            validator,
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                identity,
                net: net.handle,
                peers,
                sessions,
            }),
        })
    }

    /// A session for the client with key `key`. Its reply route is sent to every
    /// replica now, ahead of its first request (unless the transport's identity is
    /// the client's own key: replicas send a client's replies to its own identity
    /// unless a route says otherwise, so a lone client needs none). One session per
    /// key: a second with the same key takes the replies over from the first.
    pub(crate) fn session(&self, key: &KeyPair) -> Session {
        let id = key.public();
        let inbox = Arc::new(Inbox::new(self.shared.peers.len()));
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, inbox.clone());
        let route = (id != self.shared.identity).then(|| {
            let route = Signed::sign(
                ReplyRoute {
                    via: self.shared.net.local_peer_id().to_bytes(),
                    issued: wall_clock_micros(),
                },
                key,
            );
            Arc::new(bft_consensus::frame::encode(&Frame::ReplyRoute(route)))
        });
        let session = Session {
            shared: self.shared.clone(),
            id,
            inbox,
            route,
        };
        session.send_route();
        session
    }

    /// Replicas currently connected.
    #[must_use]
    pub fn connected(&self) -> usize {
        replicas_connected(&self.shared.net, &self.shared.peers)
    }

    /// Wait until at least `n` replicas are connected, or `within` passes.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> bool {
        poll_until(within, || self.connected() >= n).await
    }
}

/// Hand each reply to the inbox of the client it is addressed to, in the slot of
/// the replica whose connection it came over (a reply claiming another replica, or
/// from a peer that is no replica, is dropped). A single reply is only decoded
/// here, and its client verifies it on its own task; a bundle (many clients'
/// replies under one root) is verified here once, for all of them.
async fn dispatch(
    mut inbound: mpsc::Receiver<Inbound>,
    sessions: Sessions,
    peers: Vec<PeerId>,
    validator: Validator,
) {
    // The gateway's own cache, apart from its clients' (they check single replies).
    let roots = RootCache::new(ROOT_CACHE);
    while let Some(frame) = inbound.recv().await {
        let Some(from) = peers.iter().position(|p| *p == frame.peer) else {
            continue;
        };
        let replies = match bft_crypto::decode::<Frame>(&frame.bytes, MAX_FRAME_BYTES) {
            Ok(Frame::Pbft(Message::Reply(reply))) if reply.reply.replica as usize == from => {
                vec![(reply.reply.client, Incoming::Signed(reply))]
            }
            Ok(Frame::Pbft(Message::Replies(bundle)))
                if bundle.root.payload.replica as usize == from =>
            {
                let Ok(verified) = validator.verify_bundle(bundle, Some(&roots)) else {
                    continue;
                };
                verified
                    .into_iter()
                    .map(|v| (v.client, Incoming::Verified(v)))
                    .collect()
            }
            _ => continue,
        };
        let sessions = sessions.lock().unwrap_or_else(PoisonError::into_inner);
        for (client, reply) in replies {
            if let Some(inbox) = sessions.get(&client) {
                inbox.put(from, reply);
            }
        }
    }
}

/// One client's share of a gateway.
pub(crate) struct Session {
    shared: Arc<Shared>,
    id: ClientId,
    inbox: Arc<Inbox>,
    /// The client's encoded, signed reply route (None: the transport is its own).
    route: Option<Arc<Vec<u8>>>,
}

impl Session {
    fn send_route(&self) {
        if let Some(route) = &self.route {
            send_all(&self.shared.net, &self.shared.peers, route);
        }
    }

    pub(crate) fn send(&self, to: ReplicaId, frame: Arc<Vec<u8>>) {
        send_to(&self.shared.net, &self.shared.peers, to, frame);
    }

    /// Send to every replica, with the route again (a retransmission: a replica
    /// that restarted lost it).
    pub(crate) fn broadcast(&self, frame: &Arc<Vec<u8>>) {
        self.send_route();
        self.send_all(frame);
    }

    /// Send to every replica.
    pub(crate) fn send_all(&self, frame: &Arc<Vec<u8>>) {
        send_all(&self.shared.net, &self.shared.peers, frame);
    }

    /// The next reply for this client (waits until one arrives).
    pub(crate) async fn next_reply(&self) -> Incoming {
        self.inbox.take().await
    }

    pub(crate) fn connected(&self) -> usize {
        replicas_connected(&self.shared.net, &self.shared.peers)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut sessions = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: a later session with the same key may have replaced it.
        if sessions
            .get(&self.id)
            .is_some_and(|inbox| Arc::ptr_eq(inbox, &self.inbox))
        {
            sessions.remove(&self.id);
        }
    }
}

/// Send `frame` to replica `to` (dropped, as the network may drop it, if the queue
/// is full or there is no such replica).
fn send_to(net: &NetHandle, peers: &[PeerId], to: ReplicaId, frame: Arc<Vec<u8>>) {
    if let Some(peer) = peers.get(to as usize) {
        let _ = net.send(*peer, frame);
    }
}

/// Send `frame` to every replica.
fn send_all(net: &NetHandle, peers: &[PeerId], frame: &Arc<Vec<u8>>) {
    for p in peers {
        let _ = net.send(*p, frame.clone());
    }
}

/// How many of `peers` (the replicas) `net` has a connection to.
fn replicas_connected(net: &NetHandle, peers: &[PeerId]) -> usize {
    peers.iter().filter(|p| net.is_connected(p)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_consensus::messages::{Reply, ReplyResult};
    use bft_consensus::reply::sign_replies;

    fn reply(replica: u32, timestamp: u64) -> Incoming {
        let client = KeyPair::from_seed([9; 32]).public();
        let r = Reply {
            view: 0,
            timestamp,
            client,
            replica,
            result: ReplyResult::Full(vec![1]),
            refusal: None,
            seq: 0,
            tentative: false,
        };
        sign_replies(
            &KeyPair::from_seed([replica as u8; 32]),
            0,
            replica,
            vec![r],
        )
        .pop()
        .map(Incoming::Signed)
        .unwrap()
    }

    #[tokio::test]
    async fn a_flooding_replica_cannot_crowd_out_the_others() {
        let inbox = Inbox::new(4);
        inbox.put(2, reply(2, 7));
        for t in 0..1000 {
            inbox.put(0, reply(0, t));
        }
        inbox.put(3, reply(3, 7));
        let mut got: Vec<(u32, u64)> = Vec::new();
        for _ in 0..3 {
            let Incoming::Signed(r) = inbox.take().await else {
                panic!("only single replies were put");
            };
            got.push((r.reply.replica, r.reply.timestamp));
        }
        got.sort_unstable();
        // The flooder keeps one slot (its newest); both honest replies are there.
        assert_eq!(got, vec![(0, 999), (2, 7), (3, 7)]);
        let nothing = tokio::time::timeout(Duration::from_millis(20), inbox.take()).await;
        assert!(nothing.is_err(), "no fourth reply was ever put");
    }

    #[tokio::test]
    async fn a_late_reply_to_an_older_request_does_not_replace_a_newer_one() {
        let inbox = Inbox::new(4);
        inbox.put(1, reply(1, 8));
        inbox.put(1, reply(1, 7));
        let Incoming::Signed(r) = inbox.take().await else {
            panic!("only single replies were put");
        };
        assert_eq!(r.reply.timestamp, 8);
        // A newer one still replaces it.
        inbox.put(2, reply(2, 8));
        inbox.put(2, reply(2, 9));
        assert_eq!(inbox.take().await.timestamp(), 9);
    }
}
