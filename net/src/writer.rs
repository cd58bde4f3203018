//! One writer task per peer: wait for a connection, open a stream the peer
//! confirms it accepted, then write whatever is queued, many frames per flush.
//!
//! Two ways a frame used to vanish without a trace, both fixed here:
//! - libp2p-stream hands inbound streams to the application through a channel of
//!   one slot and drops a stream that arrives while the slot is taken (several
//!   peers answering a client at once). The writer's first frames went into a
//!   stream nobody read. Now the reader confirms each stream with one byte
//!   ([`STREAM_ACCEPTED`]) and the writer writes nothing before it has it.
//! - A stream outlived its connection unnoticed until the next write failed and
//!   took the frames with it (a client that reconnected lost its first replies).
//!   Now the writer also waits on the stream's read side, which ends when the
//!   connection or the peer's reader goes, and reopens before any frame is lost.

use crate::frame::write_frames;
use crate::transport::Shared;
use crate::PROTOCOL;
use futures::AsyncReadExt as _;
use libp2p::PeerId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The byte a reader writes back once it has taken a stream.
pub(crate) const STREAM_ACCEPTED: u8 = 1;
/// How long a writer waits for that byte before it opens another stream.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A writer to a peer outside the validator set (a client) ends after this long
/// idle...
const TRANSIENT_IDLE: Duration = Duration::from_secs(120);
/// ...or after waiting this long for it to connect (we cannot dial a client)...
const TRANSIENT_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// ...or after this many failed attempts to open a stream to it.
const TRANSIENT_ATTEMPTS: u32 = 3;
/// Frames written per flush.
const WRITE_BATCH: usize = 512;

/// Why a stream could not be used.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("cannot open a stream: {0}")]
    Open(String),
    #[error("the peer did not take the stream: {0}")]
    NotAccepted(String),
}

/// The writer task for `peer`. `persistent`: a configured peer, which the swarm
/// keeps dialling and this writer never gives up on.
pub(crate) async fn write_to_peer(
    shared: Arc<Shared>,
    peer: PeerId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    persistent: bool,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let connect_wait = (!persistent).then_some(TRANSIENT_CONNECT_WAIT);
        let opened = tokio::select! {
            _ = shutdown.changed() => return,
            r = open_accepted(&shared, peer, connect_wait) => r,
        };
        let mut stream = match opened {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                failures += 1;
                tracing::debug!(%peer, error = %e, "cannot open stream");
                if !persistent && failures >= TRANSIENT_ATTEMPTS {
                    return give_up(&shared, &mut rx);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            // A client that did not come back: its frames are no use to anyone.
            None => return give_up(&shared, &mut rx),
        };
        shared.counters.opens.fetch_add(1, Ordering::Relaxed);
        backoff = BACKOFF_MIN;
        failures = 0;
        let mut probe = [0u8; 1];
        loop {
            let next = tokio::select! {
                _ = shutdown.changed() => return,
                f = rx.recv() => f,
                // The reader never writes after its confirmation: anything here
                // (end of stream, reset, a stray byte) means the stream is gone.
                r = stream.read(&mut probe) => {
                    tracing::debug!(%peer, result = ?r, "stream ended by the peer; reopening");
                    break;
                }
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

/// Wait until `peer` is connected (at most `wait`, if given: None when it is not
/// by then), open a stream on the connection and wait for the peer's reader to
/// confirm it.
async fn open_accepted(
    shared: &Shared,
    peer: PeerId,
    wait: Option<Duration>,
) -> Option<Result<libp2p::Stream, OpenError>> {
    let connected = shared.wait_connected(peer);
    match wait {
        Some(limit) => tokio::time::timeout(limit, connected).await.ok()?,
        None => connected.await,
    }
    let mut control = shared.control.clone();
    let mut stream = match control.open_stream(peer, PROTOCOL).await {
        Ok(s) => s,
        Err(e) => return Some(Err(OpenError::Open(e.to_string()))),
    };
    let mut confirmation = [0u8; 1];
    let confirmed = tokio::time::timeout(ACCEPT_TIMEOUT, stream.read_exact(&mut confirmation));
    Some(match confirmed.await {
        Ok(Ok(())) if confirmation[0] == STREAM_ACCEPTED => Ok(stream),
        Ok(Ok(())) => Err(OpenError::NotAccepted(format!(
            "unexpected confirmation byte {}",
            confirmation[0]
        ))),
        Ok(Err(e)) => Err(OpenError::NotAccepted(e.to_string())),
        Err(_) => Err(OpenError::NotAccepted(format!(
            "no confirmation within {ACCEPT_TIMEOUT:?}"
        ))),
    })
}

/// End a writer that gave up on a transient peer: what it still held is lost.
fn give_up(shared: &Shared, rx: &mut mpsc::Receiver<Arc<Vec<u8>>>) {
    rx.close();
    let mut held = 0u64;
    while rx.try_recv().is_ok() {
        held += 1;
    }
    shared.counters.lost.fetch_add(held, Ordering::Relaxed);
}
