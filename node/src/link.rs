//! How a [`crate::client::KvClient`] reaches the replicas: over its own libp2p
//! node (its key is its transport identity), or as one session of a shared
//! [`crate::gateway::Gateway`].

use crate::client::MAX_FRAME_BYTES;
use crate::gateway::Session;
use bft_consensus::{Message, ReplicaId, ReplyBundle, SignedReply, VerifiedReply};
use bft_net::{Inbound, NetHandle, PeerId};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A reply as the link hands it to its client.
pub(crate) enum Incoming {
    /// One reply with its path, not yet checked.
    Signed(SignedReply),
    /// A bundle that came to this client's own connection, not yet checked.
    Bundle(ReplyBundle),
    /// Checked already: a gateway verifies a bundle once for all its clients.
    Verified(VerifiedReply),
}

pub(crate) enum Link {
    Own {
        net: NetHandle,
        inbound: mpsc::Receiver<Inbound>,
        /// Replica id -> PeerId.
        peers: Vec<PeerId>,
    },
    Session(Session),
}

impl Link {
    pub(crate) fn send(&self, to: ReplicaId, frame: Arc<Vec<u8>>) {
        match self {
            Link::Own { net, peers, .. } => send_to(net, peers, to, frame),
            Link::Session(s) => s.send(to, frame),
        }
    }

    /// Send to every replica. A session re-sends its reply route first: a replica
    /// that forgot the route (or restarted) relearns it with the retransmission.
    pub(crate) fn broadcast(&self, frame: &Arc<Vec<u8>>) {
        match self {
            Link::Own { net, peers, .. } => send_all(net, peers, frame),
            Link::Session(s) => s.broadcast(frame),
        }
    }

    /// The next reply addressed to this client (None once the transport is gone).
    pub(crate) async fn next_reply(&mut self) -> Option<Incoming> {
        match self {
            Link::Own { inbound, .. } => loop {
                let frame = inbound.recv().await?;
                match bft_crypto::decode::<Message>(&frame.bytes, MAX_FRAME_BYTES) {
                    Ok(Message::Reply(r)) => return Some(Incoming::Signed(r)),
                    Ok(Message::Replies(b)) => return Some(Incoming::Bundle(b)),
                    _ => {}
                }
            },
            Link::Session(s) => s.next_reply().await,
        }
    }

    /// Replicas currently connected.
    pub(crate) fn connected(&self) -> usize {
        match self {
            Link::Own { net, peers, .. } => replicas_connected(net, peers),
            Link::Session(s) => s.connected(),
        }
    }
}

/// Send `frame` to replica `to` (dropped, as the network may drop it, if the queue
/// is full or there is no such replica).
pub(crate) fn send_to(net: &NetHandle, peers: &[PeerId], to: ReplicaId, frame: Arc<Vec<u8>>) {
    if let Some(peer) = peers.get(to as usize) {
        let _ = net.send(*peer, frame);
    }
}

/// Send `frame` to every replica.
pub(crate) fn send_all(net: &NetHandle, peers: &[PeerId], frame: &Arc<Vec<u8>>) {
    for p in peers {
        let _ = net.send(*p, frame.clone());
    }
}

/// How many of `peers` (the replicas) `net` has a connection to.
pub(crate) fn replicas_connected(net: &NetHandle, peers: &[PeerId]) -> usize {
    peers.iter().filter(|p| net.is_connected(p)).count()
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Link::Own { net, .. } = self {
            net.shutdown();
        }
    }
}
