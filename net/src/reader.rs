//! Inbound streams: each is admitted against the per-peer stream cap, confirmed
//! to its writer with one byte, then read frame by frame into the application's
//! bounded queue.

use crate::frame::{read_frame, FrameError};
use crate::transport::{Inbound, Shared};
use crate::writer::STREAM_ACCEPTED;
use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::PeerId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Where inbound frames go: the configured peers' queue, or the others' (the same
/// one unless [`crate::NetConfig::others_queue`] split them).
pub(crate) struct Queues {
    pub(crate) peers: mpsc::Sender<Inbound>,
    pub(crate) others: mpsc::Sender<Inbound>,
}

pub(crate) async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    queues: Queues,
    max_frame: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            s = incoming.next() => s,
        };
        let Some((peer, stream)) = next else { return };
        let Some(slot) = StreamSlot::take(&shared, peer) else {
            // Dropping the stream resets it: the peer's writer sees no
            // confirmation and tries again later.
            shared
                .counters
                .streams_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "too many streams from this peer; refused");
            continue;
        };
        let inbound = if shared.persistent.contains(&peer) {
            queues.peers.clone()
        } else {
            queues.others.clone()
        };
        tokio::spawn(read_from_peer(
            shared.clone(),
            slot,
            stream,
            inbound,
            max_frame,
            shutdown.clone(),
        ));
    }
}

/// One of a peer's inbound stream slots, given back when its reader ends.
struct StreamSlot {
    shared: Arc<Shared>,
    peer: PeerId,
}

impl StreamSlot {
    /// A slot for a new stream from `peer`, or None if it holds its cap already.
    fn take(shared: &Arc<Shared>, peer: PeerId) -> Option<Self> {
        let mut streams = shared.streams.lock();
        let held = streams.entry(peer).or_insert(0);
        if *held >= shared.limits.max_streams_per_peer {
            return None;
        }
        *held += 1;
        Some(Self {
            shared: shared.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.shared.streams.lock();
        if let Some(held) = streams.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                streams.remove(&self.peer);
            }
        }
    }
}

/// Confirm one inbound stream, then read its frames. An oversized or cut frame
/// ends the stream (the peer is misbehaving or broken); the connection's other
/// streams are unaffected.
async fn read_from_peer(
    shared: Arc<Shared>,
    slot: StreamSlot,
    mut stream: libp2p::Stream,
    inbound: mpsc::Sender<Inbound>,
    max_frame: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let peer = slot.peer;
    let confirmed = async {
        stream.write_all(&[STREAM_ACCEPTED]).await?;
        stream.flush().await
    };
    if let Err(e) = confirmed.await {
        tracing::debug!(%peer, error = %e, "cannot confirm a stream");
        return;
    }
    let mut reader = futures::io::BufReader::with_capacity(64 * 1024, stream);
    loop {
        let frame = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
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
