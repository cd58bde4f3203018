//! Group commit off the event loop.
//!
//! The rule is unchanged: a message leaves only after everything persisted before it
//! is durable. What changes is who waits. The event loop used to block on every
//! turn's synced RocksDB write (a fifth of its time in `fdatasync`); now it hands
//! each turn's records and frames to this thread and goes on with the next input
//! (it waits only when [`TURNS_QUEUED`] turns are queued, i.e. storage stalls).
//! The thread takes every turn queued so far, writes all of their records in one
//! synced batch, and only then sends their frames, in turn order. So while one
//! fsync is in progress the next turns pile up and share the next one.
//!
//! The replica's state machine never reads storage, so running ahead of durability
//! changes nothing it decides; only what the world sees is held back, and a crash
//! loses exactly the messages that were never sent.
//!
//! The replica's own stable checkpoints (`Output::PersistApart`: the core says
//! which records may be written apart, and the simulator models it) go to a second
//! thread, which writes them apart (see `storage`): no message depends on one, and
//! its snapshot write used to hold every later message back for tens of
//! milliseconds. If checkpoints come faster than it writes them, it writes only the
//! newest. A checkpoint installed by state transfer is an ordinary record: written
//! in its turn, before the turn's frames leave.

use crate::metrics::Metrics;
use crate::storage::{StableWriter, Storage};
use bft_consensus::{PersistRecord, StableCheckpoint};
use bft_net::{NetHandle, PeerId};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc;

/// Turns queued for the persist thread at most. Every fsync takes all that wait,
/// so the queue fills only when storage stalls; the event loop then waits for room
/// (nothing it sends could leave before the stalled write anyway).
pub const TURNS_QUEUED: usize = 4096;

/// A frame and the peer it goes to.
pub type Frame = (PeerId, Arc<Vec<u8>>);

/// One turn's work: make `records` durable, then send `frames`; hand `apart` (own
/// stable checkpoints) to the checkpoint thread.
struct Turn {
    records: Vec<PersistRecord>,
    apart: Vec<PersistRecord>,
    frames: Vec<Frame>,
}

pub struct Persister {
    tx: Option<mpsc::Sender<Turn>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Persister {
    /// Start the thread that owns `storage`. Must be called inside tokio (frames to
    /// a new peer start a writer task on this runtime).
    ///
    /// # Panics
    /// If the thread cannot be spawned.
    #[must_use]
    pub fn start(storage: Storage, net: NetHandle, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(TURNS_QUEUED);
        let failure = Arc::new(Mutex::new(None));
        let runtime = tokio::runtime::Handle::current();
        let thread = {
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("persist".into())
                .spawn(move || {
                    let _enter = runtime.enter();
                    if let Err(e) = run(storage, &net, &metrics, rx, &failure) {
                        tracing::error!(error = %e, "cannot persist; stopping");
                    }
                })
                .expect("spawn persist thread")
        };
        Self {
            tx: Some(tx),
            thread: Some(thread),
            failure,
        }
    }

    /// Queue a turn, waiting for room if [`TURNS_QUEUED`] turns wait already.
    /// Nothing to do for an empty one.
    ///
    /// # Errors
    /// The storage failed earlier (the node must stop: it cannot promise durability).
    pub async fn submit(
        &self,
        records: Vec<PersistRecord>,
        apart: Vec<PersistRecord>,
        frames: Vec<Frame>,
    ) -> anyhow::Result<()> {
        if records.is_empty() && apart.is_empty() && frames.is_empty() {
            return Ok(());
        }
        if self.failure().is_some() {
            return Err(self.error());
        }
        let Some(tx) = &self.tx else {
            return Err(self.error());
        };
        let turn = Turn {
            records,
            apart,
            frames,
        };
        if tx.send(turn).await.is_ok() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// Wait until every queued turn is durable and sent, then stop the thread.
    ///
    /// # Errors
    /// The storage failed.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.failure().is_some() {
            return Err(self.error());
        }
        Ok(())
    }

    /// Why the thread stopped, if storage failed.
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self) -> anyhow::Error {
        let why = self
            .failure()
            .unwrap_or_else(|| "the persist thread stopped".into());
        anyhow::anyhow!("cannot persist; stopping: {why}")
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn run(
    mut storage: Storage,
    net: &NetHandle,
    metrics: &Arc<Metrics>,
    mut rx: mpsc::Receiver<Turn>,
    failure: &Arc<Mutex<Option<String>>>,
) -> Result<(), String> {
    let (checkpoints, checkpoint_thread) =
        start_checkpoint_writer(storage.stable_writer(), metrics.clone(), failure.clone());
    let result = persist_turns(&mut storage, net, metrics, &mut rx, &checkpoints);
    if let Err(e) = &result {
        // Recorded while the queue is still open: a turn refused from now on
        // reports this reason, not just that the thread stopped.
        *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
    }
    // Stopping (or failed): the checkpoint thread finishes what it has and lets go
    // of the store before this thread does.
    drop(checkpoints);
    let _ = checkpoint_thread.join();
    result
}

fn persist_turns(
    storage: &mut Storage,
    net: &NetHandle,
    metrics: &Metrics,
    rx: &mut mpsc::Receiver<Turn>,
    checkpoints: &CheckpointSender,
) -> Result<(), String> {
    while let Some(first) = rx.blocking_recv() {
        let mut turns = vec![first];
        while let Ok(t) = rx.try_recv() {
            turns.push(t);
        }
        let records: Vec<PersistRecord> = turns
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.records))
            .collect();
        if !records.is_empty() {
            storage.persist(&records).map_err(|e| e.to_string())?;
            metrics.persist_turns.observe(turns.len() as f64);
        }
        let apart = turns
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.apart))
            .collect();
        for cp in storage.note_apart(apart) {
            checkpoints.send(cp);
        }
        for (peer, frame) in turns.into_iter().flat_map(|t| t.frames) {
            let _ = net.send(peer, frame);
        }
    }
    Ok(())
}

/// The newest own stable checkpoint not yet written: the persist thread replaces
/// it, the checkpoint thread takes it. One slot, never full, so the persist thread
/// (and every frame behind it) never waits for a snapshot write.
struct LatestCheckpoint {
    slot: Mutex<(Option<StableCheckpoint>, bool)>,
    ready: Condvar,
}

impl LatestCheckpoint {
    fn put(&self, cp: StableCheckpoint) {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).0 = Some(cp);
        self.ready.notify_one();
    }

    /// No more checkpoints: the thread writes what the slot holds and stops.
    fn close(&self) {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.ready.notify_one();
    }

    /// The next checkpoint to write, or None once closed and empty.
    fn take(&self) -> Option<StableCheckpoint> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(cp) = slot.0.take() {
                return Some(cp);
            }
            if slot.1 {
                return None;
            }
            slot = self
                .ready
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Hands the persist thread's own checkpoints to the checkpoint thread; closes
/// the slot when dropped.
struct CheckpointSender(Arc<LatestCheckpoint>);

impl CheckpointSender {
    fn send(&self, cp: StableCheckpoint) {
        self.0.put(cp);
    }
}

impl Drop for CheckpointSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The thread that writes stable checkpoints, the newest when several came.
fn start_checkpoint_writer(
    writer: StableWriter,
    metrics: Arc<Metrics>,
    failure: Arc<Mutex<Option<String>>>,
) -> (CheckpointSender, JoinHandle<()>) {
    let latest = Arc::new(LatestCheckpoint {
        slot: Mutex::new((None, false)),
        ready: Condvar::new(),
    });
    let slot = latest.clone();
    let thread = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            while let Some(newest) = slot.take() {
                let started = Instant::now();
                if let Err(e) = writer.write(&newest) {
                    tracing::error!(error = %e, "cannot write the stable checkpoint; stopping");
                    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    return;
                }
                metrics
                    .checkpoint_persist
                    .observe(started.elapsed().as_secs_f64());
            }
        })
        .expect("spawn checkpoint thread");
    (CheckpointSender(latest), thread)
}
