//! One writer task per peer: wait for a connection, open a stream the peer
//! confirms it accepted, then write whatever is queued, many frames per flush.
//! A gateway's writer (`NetConfig::coalesce_writes`) also waits a turn of the
//! scheduler before a write while frames come fast, so that its many clients'
//! requests leave together.
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
//!   connection or the peer's reader goes, and reopens before it takes more frames.
//!   Frames written before the end is seen (a connection that dies mid-write, or
//!   goes half-open) are still lost and counted; PBFT retransmits.

use crate::frame::write_frames;
use crate::transport::Shared;
use crate::PROTOCOL;
use futures::AsyncReadExt as _;
use libp2p::PeerId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The byte a reader writes back once it has taken a stream.
pub(crate) const STREAM_ACCEPTED: u8 = 1;
/// How long opening a stream and getting its confirmation may take before the
/// writer tries again (a request parked inside libp2p-stream for a connection
/// that just went is never answered otherwise).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A stream the peer's side dropped unread (its accept slot was taken) is tried
/// again after a random pause up to this long: the writers that collided must not
/// collide again in step.
const COLLISION_JITTER_MS: u64 = 20;
/// Collisions in a row a writer retries before it counts one failure.
const COLLISIONS_PER_FAILURE: u32 = 16;
/// A writer to a peer outside the validator set (a client) ends after this long
/// idle...
const TRANSIENT_IDLE: Duration = Duration::from_secs(120);
/// ...or after waiting this long for it to connect (we cannot dial a client)...
const TRANSIENT_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// ...or after this many failed attempts to open a stream to it.
const TRANSIENT_ATTEMPTS: u32 = 3;
/// Frames written per flush.
const WRITE_BATCH: usize = 512;
/// With [`crate::NetConfig::coalesce_writes`], a writer woken with one frame
/// queued this soon after its last write yields once, so that the tasks that are
/// ready queue more frames before it writes (see [`write_to_peer`]).
const COALESCE_WITHIN: Duration = Duration::from_millis(1);

/// Why a stream could not be used.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("cannot open a stream: {0}")]
    Open(String),
    /// The peer's side dropped the stream without confirming it.
    #[error("the peer dropped the stream unread: {0}")]
    Dropped(String),
    #[error("the peer sent {0} instead of the confirmation")]
    BadConfirmation(u8),
    #[error("no stream and confirmation within {OPEN_TIMEOUT:?}")]
    TimedOut,
}

/// The writer task for `peer`. `persistent`: a configured peer, which the swarm
/// keeps dialling and this writer never gives up on.
pub(crate) async fn write_to_peer(
    shared: Arc<Shared>,
    peer: PeerId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    persistent: bool,
) {
    let mut retry = Retry::default();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let connect_wait = (!persistent).then_some(TRANSIENT_CONNECT_WAIT);
        let opened = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            r = open_accepted(&shared, peer, connect_wait) => r,
        };
        let mut stream = match opened {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "cannot open stream");
                let Some(pause) = retry.after(&e, persistent) else {
                    return give_up(&shared, &mut rx);
                };
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            // A client that did not come back: its frames are no use to anyone.
            None => return give_up(&shared, &mut rx),
        };
        shared.counters.opens.fetch_add(1, Ordering::Relaxed);
        retry = Retry::default();
        let mut probe = [0u8; 1];
        let mut last_write: Option<Instant> = None;
        loop {
            // Biased: a stream found dead is replaced before queued frames are
            // taken, so they go out on the new stream rather than into the old.
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                // The reader never writes after its confirmation: anything here
                // (end of stream, reset, a stray byte) means the stream is gone.
                r = stream.read(&mut probe) => {
                    tracing::debug!(%peer, result = ?r, "stream ended by the peer; reopening");
                    break;
                }
                f = rx.recv() => f,
                () = tokio::time::sleep(TRANSIENT_IDLE), if !persistent => return,
            };
            let Some(first) = next else { return };
            let coming_fast = last_write.is_some_and(|t| t.elapsed() < COALESCE_WITHIN);
            if shared.coalesce_writes && coming_fast && rx.is_empty() {
                // Let the tasks that are ready run first. Many clients behind one
                // gateway each queue a request a few microseconds apart, and a
                // writer woken by the first used to write each alone (a write, a
                // noise and a yamux frame, and a wake-up of the peer's reader
                // each). Tokio runs a yielded task again once its worker has no
                // other work queued (or after its periodic maintenance, at most
                // some tens of polls later), so the requests queued meanwhile
                // leave together. (Yielding again while frames kept coming did
                // not gather more.) A frame after a quiet spell, or the first on
                // a new stream, goes at once.
                tokio::task::yield_now().await;
            }
            let mut frames = vec![first];
            while frames.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            match write_frames(&mut stream, &frames).await {
                Ok(()) => {
                    if shared.coalesce_writes {
                        last_write = Some(Instant::now());
                    }
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

/// How a writer waits between attempts to open a stream: a stream the peer
/// dropped unread (a collision) is retried soon, at random, up to
/// [`COLLISIONS_PER_FAILURE`] times in a row; anything else is a failure, retried
/// with doubling back-off, and a transient peer is given up after
/// [`TRANSIENT_ATTEMPTS`] failures.
struct Retry {
    backoff: Duration,
    failures: u32,
    collisions: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: BACKOFF_MIN,
            failures: 0,
            collisions: 0,
        }
    }
}

impl Retry {
    /// The pause before the next attempt after `e`, or None: give up.
    fn after(&mut self, e: &OpenError, persistent: bool) -> Option<Duration> {
        if matches!(e, OpenError::Dropped(_)) && self.collisions < COLLISIONS_PER_FAILURE {
            self.collisions += 1;
            return Some(Duration::from_millis(
                rand::random::<u64>() % COLLISION_JITTER_MS + 1,
            ));
        }
        self.collisions = 0;
        self.failures += 1;
        if !persistent && self.failures >= TRANSIENT_ATTEMPTS {
            return None;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Some(pause)
    }
}

/// Wait until `peer` is connected (at most `wait`, if given: None when it is not
/// by then), open a stream on the connection and wait for the peer's reader to
/// confirm it, all of that but the wait within [`OPEN_TIMEOUT`].
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
    let open = async {
        let mut control = shared.control.clone();
        let mut stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| OpenError::Open(e.to_string()))?;
        let mut confirmation = [0u8; 1];
        match stream.read_exact(&mut confirmation).await {
            Ok(()) if confirmation[0] == STREAM_ACCEPTED => Ok(stream),
            Ok(()) => Err(OpenError::BadConfirmation(confirmation[0])),
            Err(e) => Err(OpenError::Dropped(e.to_string())),
        }
    };
    Some(
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .unwrap_or(Err(OpenError::TimedOut)),
    )
}

/// End a writer that gave up on a transient peer: what it still held is lost
/// (counted with the frames lost in failed writes).
fn give_up(shared: &Shared, rx: &mut mpsc::Receiver<Arc<Vec<u8>>>) {
    rx.close();
    let mut held = 0u64;
    while rx.try_recv().is_ok() {
        held += 1;
    }
    shared.counters.lost.fetch_add(held, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_retry_soon_failures_back_off_and_a_client_is_given_up() {
        let mut r = Retry::default();
        let dropped = OpenError::Dropped("reset".into());
        for _ in 0..COLLISIONS_PER_FAILURE {
            let pause = r.after(&dropped, false).unwrap();
            assert!(pause <= Duration::from_millis(COLLISION_JITTER_MS));
        }
        // One collision too many counts as a failure, with the back-off.
        assert_eq!(r.after(&dropped, false), Some(BACKOFF_MIN));
        assert_eq!(r.after(&OpenError::TimedOut, false), Some(BACKOFF_MIN * 2));
        assert_eq!(
            r.after(&OpenError::TimedOut, false),
            None,
            "a client is given up"
        );
        let mut v = Retry::default();
        for _ in 0..20 {
            assert!(v.after(&OpenError::TimedOut, true).unwrap() <= BACKOFF_MAX);
        }
    }
}
