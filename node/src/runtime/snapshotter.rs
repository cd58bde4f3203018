//! The thread that runs the replica's checkpoint snapshot jobs
//! (`Output::TakeSnapshot`, see `bft_consensus::snapshot_job`) off the event loop,
//! and hands each result back to the loop as an input.
//!
//! Encoding and hashing a state of megabytes took each replica's loop about 9 ms
//! at every checkpoint, and commits stalled meanwhile (issue 13). On a thread of
//! its own (named `snapshot`, so profiles show it) the loop goes on ordering while
//! the job runs; one job at a time, in the order the replica made them.

use bft_consensus::{SnapshotJob, SnapshotTaken};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Jobs waiting for the thread at most. The replica makes one job per checkpoint
/// interval it executes, so a turn rarely hands over more than one; a turn that
/// hands over more (a restart or a state transfer re-executing a window with a
/// small checkpoint interval) waits for room, a job's time at most each, since the
/// thread never waits for the loop (see [`Snapshotter::done`]).
const JOBS_QUEUED: usize = 16;

/// The snapshot thread's nice value: the lowest. Off the loop, a job still takes
/// the CPU it took on it, and at 10,000 req/s on two cores the replicas leave
/// about 5 % of the machine idle: at the loops' priority the four replicas' jobs
/// took the cores from their loops all the same. At the lowest, the jobs run in the
/// loops' idle moments, and if there are none (a saturated machine), the window
/// fills behind the pending checkpoint until the primary pauses and there are.
const SNAPSHOT_NICE: i32 = 19;

/// Give this thread [`SNAPSHOT_NICE`]. On Linux, `setpriority(PRIO_PROCESS, tid)`
/// sets one thread's nice value, not the process's. Lowering it needs no
/// privilege; if it fails anyway, the jobs run at the loop's priority.
fn lower_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), SNAPSHOT_NICE) {
        tracing::warn!(error = %e, "cannot lower the snapshot thread's priority");
    }
}

/// The snapshot thread could not take a job: it is gone (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the snapshot thread is gone; checkpoint {seq} cannot be taken")]
pub(super) struct SnapshotterGone {
    seq: u64,
}

/// The snapshot thread's two ends, as the event loop holds them.
pub(super) struct Snapshotter {
    jobs: std_mpsc::SyncSender<SnapshotJob>,
    /// Finished jobs, for the loop to feed the replica. Unbounded so that the
    /// thread never waits for the loop (which may be waiting for room in `jobs`);
    /// it holds at most the jobs taken from `jobs` and not yet received, each a
    /// checkpoint the replica awaits.
    pub(super) done: mpsc::UnboundedReceiver<SnapshotTaken>,
}

impl Snapshotter {
    /// Start the thread; it ends when the `Snapshotter` is dropped.
    pub(super) fn start(seconds: prometheus::Histogram) -> Self {
        let (jobs, queue) = std_mpsc::sync_channel::<SnapshotJob>(JOBS_QUEUED);
        let (finished, done) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                lower_priority();
                for job in queue {
                    let started = Instant::now();
                    let taken = job.run();
                    seconds.observe(started.elapsed().as_secs_f64());
                    if finished.send(taken).is_err() {
                        break; // the loop stopped
                    }
                }
            })
            .expect("spawn snapshot thread");
        Self { jobs, done }
    }

    /// Queue `job`, waiting for room if [`JOBS_QUEUED`] wait already.
    ///
    /// # Errors
    /// The thread is gone: the replica would never sign a checkpoint again, so the
    /// node must stop.
    pub(super) fn submit(&self, job: SnapshotJob) -> Result<(), SnapshotterGone> {
        let seq = job.seq();
        self.jobs.send(job).map_err(|_| SnapshotterGone { seq })
    }
}
