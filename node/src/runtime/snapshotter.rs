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

/// Jobs waiting for the thread at most. The replica has at most one pending
/// checkpoint per checkpoint interval in its window (a handful), so this is never
/// reached; if it were, the loop would wait for room rather than drop a job the
/// replica waits for.
const JOBS_QUEUED: usize = 16;

/// The snapshot thread's two ends, as the event loop holds them.
pub(super) struct Snapshotter {
    jobs: std_mpsc::SyncSender<SnapshotJob>,
    /// Finished jobs, for the loop to feed the replica.
    pub(super) done: mpsc::Receiver<SnapshotTaken>,
}

impl Snapshotter {
    /// Start the thread; it ends when the `Snapshotter` is dropped.
    pub(super) fn start(seconds: prometheus::Histogram) -> Self {
        let (jobs, queue) = std_mpsc::sync_channel::<SnapshotJob>(JOBS_QUEUED);
        let (finished, done) = mpsc::channel(JOBS_QUEUED);
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for job in queue {
                    let started = Instant::now();
                    let taken = job.run();
                    seconds.observe(started.elapsed().as_secs_f64());
                    if finished.blocking_send(taken).is_err() {
                        break; // the loop stopped
                    }
                }
            })
            .expect("spawn snapshot thread");
        Self { jobs, done }
    }

    /// Queue `job`.
    pub(super) fn submit(&self, job: SnapshotJob) {
        let seq = job.seq();
        if self.jobs.send(job).is_err() {
            // Only if the thread panicked: the checkpoint is never signed here, and
            // the others' proofs make it stable (fetched) all the same.
            tracing::error!(seq, "snapshot thread gone; checkpoint not taken");
        }
    }
}
