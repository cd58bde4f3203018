//! The thread that runs the replica's checkpoint snapshot jobs
//! (`Output::TakeSnapshot`, see `bft_consensus::snapshot_job`) off the event loop,
//! and hands each result back to the loop as an input.
//!
//! Encoding and hashing a state of megabytes took each replica's loop about 9 ms
//! at every checkpoint, and commits stalled meanwhile (issue 13). On a thread of
//! its own (named `snapshot`, so profiles show it) the loop goes on ordering while
//! the job runs; one job at a time, in the order the replica made them.

use bft_consensus::{SnapshotJob, SnapshotTaken};
use std::time::Instant;
use tokio::sync::mpsc;

/// Jobs waiting for the thread at most. The replica makes one job per checkpoint
/// interval it executes, so a turn rarely hands over more than one; a turn that
/// hands over more (a restart or a state transfer re-executing a window with a
/// small checkpoint interval) waits for room, a job's time at most each, since the
/// thread never waits for the loop (see [`Snapshotter::done`]). It waits as a task
/// does, giving its worker thread to the runtime's other tasks (the network's, the
/// HTTP server's): a blocking send held the thread, and with it the task the
/// worker had lined up next, which no other worker can take.
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
    jobs: mpsc::Sender<SnapshotJob>,
    /// Finished jobs, for the loop to feed the replica. Unbounded so that the
    /// thread never waits for the loop (which may be waiting for room in `jobs`);
    /// it holds at most the jobs taken from `jobs` and not yet received, each a
    /// checkpoint the replica awaits.
    pub(super) done: mpsc::UnboundedReceiver<SnapshotTaken>,
}

impl Snapshotter {
    /// Start the thread; it ends when the `Snapshotter` is dropped.
    pub(super) fn start(seconds: prometheus::Histogram) -> Self {
        let (jobs, mut queue) = mpsc::channel::<SnapshotJob>(JOBS_QUEUED);
        let (finished, done) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                lower_priority();
                while let Some(job) = queue.blocking_recv() {
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

    /// Queue `job`, waiting (as a task) for room if [`JOBS_QUEUED`] wait already.
    ///
    /// # Errors
    /// The thread is gone: the replica would never sign a checkpoint again, so the
    /// node must stop.
    pub(super) async fn submit(&self, job: SnapshotJob) -> Result<(), SnapshotterGone> {
        let seq = job.seq();
        self.jobs
            .send(job)
            .await
            .map_err(|_| SnapshotterGone { seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    /// A captured state whose encoding waits until the test opens the gate: it
    /// holds the snapshot thread in its first job.
    #[derive(Debug, Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[derive(Debug)]
    struct HeldState(Arc<Gate>);

    impl bft_consensus::app::CapturedState for HeldState {
        fn encode_into(&self, out: &mut Vec<u8>) {
            let open = self.0.open.lock().unwrap();
            drop(self.0.opened.wait_while(open, |open| !*open).unwrap());
            out.push(1);
        }

        fn encoded_bound(&self) -> usize {
            1
        }
    }

    fn job(seq: u64, gate: &Arc<Gate>) -> SnapshotJob {
        SnapshotJob::new(seq, Arc::new(HeldState(gate.clone())), Vec::new(), None)
    }

    /// With the thread held and the queue full, a job waits for room without
    /// holding the thread the loop runs on: on a runtime of one thread, a task
    /// beside it still runs and a timer still fires. (A blocking send held the
    /// thread until the queue had room; here, until the watchdog gave up.)
    #[test]
    fn a_full_queue_makes_the_loop_wait_without_holding_its_thread() {
        let (finished, watchdog) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                let gate = Arc::new(Gate::default());
                let seconds = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
                    "snapshot_test_seconds",
                    "test",
                ))
                .unwrap();
                let mut snapshotter = Snapshotter::start(seconds);
                // The thread takes one job and is held in it; JOBS_QUEUED more fill
                // the queue.
                for seq in 1..=JOBS_QUEUED as u64 + 1 {
                    snapshotter.submit(job(seq, &gate)).await.unwrap();
                }
                let beside = tokio::spawn(async { 42 });
                let full = tokio::time::timeout(
                    Duration::from_millis(200),
                    snapshotter.submit(job(99, &gate)),
                )
                .await;
                assert!(full.is_err(), "the queue was full, yet the job went in");
                assert_eq!(beside.await.unwrap(), 42);
                // Room again once the thread moves on: every job is done, in order.
                gate.open();
                snapshotter.submit(job(100, &gate)).await.unwrap();
                let mut done = Vec::new();
                while done.len() < JOBS_QUEUED + 2 {
                    done.push(snapshotter.done.recv().await.unwrap().seq);
                }
                let expected: Vec<u64> = (1..=JOBS_QUEUED as u64 + 1).chain([100]).collect();
                assert_eq!(done, expected);
            });
            finished.send(()).unwrap();
        });
        watchdog
            .recv_timeout(Duration::from_secs(30))
            .expect("the loop's thread was held by a full queue");
    }
}
