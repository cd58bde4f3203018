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
//! A turn with frames but no records while nothing is pending (every turn handed
//! over earlier is durable and its frames sent) has nothing to wait for: its
//! frames go out at once from the event loop, as they would from this thread a
//! moment later, and the thread is not woken. The rule is the same, and so is the
//! order of frames; below the peak most turns that send are of this kind (a
//! backup's replies, a vote that completes no certificate), and each wakeup costs
//! two context switches (issue 13).
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
use std::sync::atomic::{AtomicU64, Ordering};
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
    pending: Pending,
    net: NetHandle,
}

/// Turns handed to the persist thread, and how many of them it has finished
/// (records durable, frames sent): equal when nothing is pending.
#[derive(Default)]
struct Pending {
    submitted: u64,
    finished: Arc<AtomicU64>,
}

impl Pending {
    /// Whether the thread has finished every turn handed to it. Acquire: its
    /// sends of every finished turn happened before.
    fn idle(&self) -> bool {
        self.finished.load(Ordering::Acquire) == self.submitted
    }

    /// Send `turn`'s frames now if it has no records and nothing is pending;
    /// otherwise give it back, to be queued (and counted as submitted).
    fn send_now_if_idle(&mut self, turn: Turn, net: &impl FrameSink) -> Option<Turn> {
        if self.idle() && turn.records.is_empty() && turn.apart.is_empty() {
            for (peer, frame) in turn.frames {
                net.send(peer, frame);
            }
            return None;
        }
        self.submitted += 1;
        Some(turn)
    }
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
        let pending = Pending::default();
        let thread = {
            let failure = failure.clone();
            let finished = pending.finished.clone();
            let net = net.clone();
            std::thread::Builder::new()
                .name("persist".into())
                .spawn(move || {
                    let _enter = runtime.enter();
                    if let Err(e) = run(storage, &net, &metrics, rx, &finished, &failure) {
                        tracing::error!(error = %e, "cannot persist; stopping");
                    }
                })
                .expect("spawn persist thread")
        };
        Self {
            tx: Some(tx),
            thread: Some(thread),
            failure,
            pending,
            net,
        }
    }

    /// Queue a turn, waiting for room if [`TURNS_QUEUED`] turns wait already.
    /// Nothing to do for an empty one; a turn of frames alone, with nothing
    /// pending, is sent at once.
    ///
    /// # Errors
    /// The storage failed earlier (the node must stop: it cannot promise durability).
    pub async fn submit(
        &mut self,
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
        let Some(turn) = self.pending.send_now_if_idle(turn, &self.net) else {
            return Ok(());
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
    finished: &AtomicU64,
    failure: &Arc<Mutex<Option<String>>>,
) -> Result<(), String> {
    let (checkpoints, checkpoint_thread) =
        start_checkpoint_writer(storage.stable_writer(), metrics.clone(), failure.clone());
    let result = persist_turns(&mut storage, net, metrics, &mut rx, finished, &checkpoints);
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

/// What the persist loop needs of storage: the synced write of a group of turns'
/// records, and the bookkeeping of records written apart. A seam for the ordering
/// test; the node's is [`Storage`].
trait TurnStore {
    /// Write `records`; synced (with every earlier write) if `sync`.
    fn persist(&mut self, records: &[PersistRecord], sync: bool) -> Result<(), String>;
    /// Make every earlier write durable.
    fn sync(&mut self) -> Result<(), String>;
    fn note_apart(&mut self, apart: Vec<PersistRecord>) -> Vec<StableCheckpoint>;
}

impl TurnStore for Storage {
    fn persist(&mut self, records: &[PersistRecord], sync: bool) -> Result<(), String> {
        if sync {
            Storage::persist(self, records)
        } else {
            Storage::write_unsynced(self, records)
        }
        .map_err(|e| e.to_string())
    }

    fn sync(&mut self) -> Result<(), String> {
        Storage::sync(self).map_err(|e| e.to_string())
    }

    fn note_apart(&mut self, apart: Vec<PersistRecord>) -> Vec<StableCheckpoint> {
        Storage::note_apart(self, apart)
    }
}

/// Where the persist loop sends frames once they may leave.
trait FrameSink {
    fn send(&self, peer: PeerId, frame: Arc<Vec<u8>>);
}

impl FrameSink for NetHandle {
    fn send(&self, peer: PeerId, frame: Arc<Vec<u8>>) {
        // A full queue drops the frame, as the network may (counted by the transport).
        let _ = NetHandle::send(self, peer, frame);
    }
}

/// The persist loop: every turn queued so far written in one write, then their
/// frames sent in turn order, then counted in `finished`; until the queue closes
/// or storage fails.
///
/// The write is synced only when something waits for it: a frame of the group,
/// or a stable checkpoint (its writer syncs anyway). A group of records alone (a
/// backup's commit decision, most often) is written without a sync, and its turns
/// are finished only when a later group's synced write (or a sync alone, for a
/// group of frames alone) has made them durable too, so the rule holds: no frame
/// leaves before every earlier record is durable. A crash may lose those records,
/// as it may lose any turn's not yet written; the simulator's storage model
/// (`consensus/src/sim/world/durability.rs`) keeps them at risk just as long. This
/// saves a backup one of its three synced writes per batch (issue 13).
fn persist_turns(
    storage: &mut impl TurnStore,
    net: &impl FrameSink,
    metrics: &Metrics,
    rx: &mut mpsc::Receiver<Turn>,
    finished: &AtomicU64,
    checkpoints: &CheckpointSender,
) -> Result<(), String> {
    // Turns written but not yet synced: finished only when a sync covers them.
    let mut unsynced: u64 = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut turns = vec![first];
        while let Ok(t) = rx.try_recv() {
            turns.push(t);
        }
        let records: Vec<PersistRecord> = turns
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.records))
            .collect();
        let sends = turns.iter().any(|t| !t.frames.is_empty());
        let stable = records
            .iter()
            .any(|r| matches!(r, PersistRecord::Stable(_)));
        let began = Instant::now();
        let synced = if !records.is_empty() {
            let sync = sends || stable;
            storage.persist(&records, sync)?;
            metrics.persist_turns.observe(turns.len() as f64);
            sync
        } else if sends && unsynced > 0 {
            storage.sync()?;
            true
        } else {
            false
        };
        if synced {
            metrics.persist_syncs.inc();
            metrics
                .persist_sync_seconds
                .observe(began.elapsed().as_secs_f64());
        }
        let apart = turns
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.apart))
            .collect();
        for cp in storage.note_apart(apart) {
            checkpoints.send(cp);
        }
        let count = turns.len() as u64;
        for (peer, frame) in turns.into_iter().flat_map(|t| t.frames) {
            net.send(peer, frame);
        }
        if synced || (records.is_empty() && unsynced == 0) {
            // Release: a submitter that sees the count sees these sends done (and,
            // since nothing is finished out of order, every earlier record durable).
            finished.fetch_add(count + std::mem::take(&mut unsynced), Ordering::Release);
        } else {
            unsynced += count;
        }
    }
    // Stopping: what was written is made durable before the store closes.
    if unsynced > 0 {
        storage.sync()?;
        finished.fetch_add(unsynced, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What happened, in order: records made durable, or a frame sent.
    #[derive(Clone, Debug, PartialEq)]
    enum Event {
        Durable(Vec<u64>),
        Sent(u64),
    }

    /// A store and a sink that write one log, so the test sees their order. The
    /// store's synced writes are slow, so turns pile up behind them (group
    /// commit) and frames of turns without records wait behind earlier turns'
    /// writes. Records written unsynced become durable only at a later sync.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Event>>>, Arc<Mutex<Vec<u64>>>);

    impl Log {
        fn push(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    impl TurnStore for Log {
        fn persist(&mut self, records: &[PersistRecord], sync: bool) -> Result<(), String> {
            self.1.lock().unwrap().extend(records.iter().map(turn_of));
            if sync {
                self.sync()?;
            }
            Ok(())
        }

        fn sync(&mut self) -> Result<(), String> {
            std::thread::sleep(std::time::Duration::from_millis(3));
            let written = std::mem::take(&mut *self.1.lock().unwrap());
            self.push(Event::Durable(written));
            Ok(())
        }

        fn note_apart(&mut self, _: Vec<PersistRecord>) -> Vec<StableCheckpoint> {
            Vec::new()
        }
    }

    impl FrameSink for Log {
        fn send(&self, _: PeerId, frame: Arc<Vec<u8>>) {
            self.push(Event::Sent(u64::from_le_bytes(
                frame[..8].try_into().unwrap(),
            )));
        }
    }

    /// A record that names turn `t` (as its view).
    fn record(t: u64) -> PersistRecord {
        PersistRecord::View {
            view: t,
            changing: false,
        }
    }

    fn turn_of(r: &PersistRecord) -> u64 {
        match r {
            PersistRecord::View { view, .. } => *view,
            other => panic!("unexpected record {other:?}"),
        }
    }

    fn wait_idle(pending: &Pending) {
        let waited = Instant::now();
        while !pending.idle() {
            assert!(
                waited.elapsed().as_secs() < 30,
                "the thread never caught up"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Turns with records and frames, with frames alone, and with records alone.
    fn records_of(t: u64) -> Vec<PersistRecord> {
        if has_records(t) {
            vec![record(t)]
        } else {
            Vec::new()
        }
    }

    fn has_records(t: u64) -> bool {
        t % 7 == 5 || t % 3 != 2
    }

    fn has_frames(t: u64) -> bool {
        t % 7 != 5
    }

    /// Turns go through [`Pending::send_now_if_idle`] as the runtime's do, so
    /// some of the frames-only turns leave from the submitting side; turns of
    /// records alone are written unsynced, and their records must be durable
    /// before any later frame leaves.
    #[test]
    fn no_frame_leaves_before_its_turn_and_every_earlier_turn_are_durable() {
        let peer = PeerId::random();
        let (tx, mut rx) = mpsc::channel(TURNS_QUEUED);
        let log = Log::default();
        let (mut store, sink) = (log.clone(), log.clone());
        let mut pending = Pending::default();
        let finished = pending.finished.clone();
        let worker = std::thread::spawn(move || {
            let metrics = Metrics::new();
            let latest = Arc::new(LatestCheckpoint {
                slot: Mutex::new((None, false)),
                ready: Condvar::new(),
            });
            let checkpoints = CheckpointSender(latest);
            persist_turns(
                &mut store,
                &sink,
                &metrics,
                &mut rx,
                &finished,
                &checkpoints,
            )
        });
        let frames_of = |t: u64| -> Vec<Frame> {
            (0..2)
                .map(|_| (peer, Arc::new(t.to_le_bytes().to_vec())))
                .collect()
        };
        let mut extra = 0;
        let mut expected = 0;
        // 200 turns, some with records and frames, some with frames only (their
        // frames must still wait for the earlier turns' records), some with
        // records only.
        for t in 0..200u64 {
            let frames = if has_frames(t) {
                expected += 2;
                frames_of(t)
            } else {
                Vec::new()
            };
            let turn = Turn {
                records: records_of(t),
                apart: Vec::new(),
                frames,
            };
            let probe = t % 17 == 0;
            let records_alone = probe && !has_frames(t);
            if records_alone {
                // Alone in its group (else an earlier turn's frames sync it).
                wait_idle(&pending);
            }
            if let Some(turn) = pending.send_now_if_idle(turn, &log) {
                tx.blocking_send(turn).unwrap();
            }
            // A turn of frames alone, tagged like the turn before it.
            let alone = Turn {
                records: Vec::new(),
                apart: Vec::new(),
                frames: frames_of(t),
            };
            if records_alone {
                // Records alone were written unsynced: the thread is not idle
                // until a sync, so a turn of frames alone must queue behind them.
                std::thread::sleep(std::time::Duration::from_millis(20));
                assert!(!pending.idle(), "turn {t}'s records are not durable yet");
                let queued = pending.send_now_if_idle(alone, &log);
                let queued = queued.unwrap_or_else(|| panic!("turn {t}'s frames left at once"));
                tx.blocking_send(queued).unwrap();
                // Alone in its group too: the thread syncs for these frames
                // (and only then is idle), so they find turn t's records durable.
                wait_idle(&pending);
                extra += 1;
            } else if probe {
                // Once the thread has finished everything, a turn of frames
                // alone must leave at once.
                wait_idle(&pending);
                assert!(
                    pending.send_now_if_idle(alone, &log).is_none(),
                    "nothing pending, yet turn {t}'s frames were queued"
                );
                extra += 1;
            }
        }
        // A last turn of records alone: only the thread's stop syncs it.
        let last = Turn {
            records: vec![record(200)],
            apart: Vec::new(),
            frames: Vec::new(),
        };
        let last = pending
            .send_now_if_idle(last, &log)
            .expect("records are queued");
        tx.blocking_send(last).unwrap();
        drop(tx);
        worker.join().unwrap().unwrap();

        let events = log.0.lock().unwrap().clone();
        let mut durable_through: Option<u64> = None;
        let mut last_sent = 0u64;
        let mut sent = 0;
        let mut groups = 0;
        for e in &events {
            match e {
                Event::Durable(turns) => {
                    groups += 1;
                    durable_through = turns.iter().copied().max().max(durable_through);
                }
                Event::Sent(t) => {
                    sent += 1;
                    assert!(
                        *t >= last_sent,
                        "frames out of turn order: {t} after {last_sent}"
                    );
                    last_sent = *t;
                    // Every turn up to t that had records is durable already.
                    let newest_with_records = (0..=*t).rev().find(|x| has_records(*x));
                    assert!(
                        newest_with_records <= durable_through,
                        "turn {t}'s frame left before turn {newest_with_records:?} was durable"
                    );
                }
            }
        }
        assert_eq!(sent, expected + 2 * extra, "every frame left");
        assert!(groups >= 1);
        // The last turn's records are durable too: the thread syncs as it stops.
        assert_eq!(durable_through, Some(200));
    }
}
