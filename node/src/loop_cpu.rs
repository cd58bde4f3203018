//! CPU time of a replica's phases of work, read from the running thread's own CPU
//! clock (`CLOCK_THREAD_CPUTIME_ID`) around each synchronous piece of it.
//!
//! Why not a profiler: perf's samples say which functions run, not which replica
//! does which share of the work, and without them the primary's 15 µs per request
//! more than a backup's were first put down to slower signature checks, when the
//! primary checks every request and each backup (with four replicas) two batches
//! in three (issue 13, twenty-eighth round). Why not wall time: on a machine
//! shared by more busy threads than cores, a piece of work is preempted about as
//! long as it runs. The thread's CPU clock counts only what the thread ran, and
//! each timed piece is synchronous code (no await inside), so it runs on one
//! thread from start to end.
//!
//! Exported as `bft_loop_cpu_seconds_total{phase}`; a rate of it over the rate of
//! `bft_committed_requests_total` is the phase's CPU per request. Cost: two
//! `clock_gettime` calls (each a system call, well under a microsecond) per phase
//! and turn, a few hundred turns a second at the peak.

use prometheus::Counter;
use std::time::Duration;

/// A phase of a replica's work: the metric's `phase` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Frames through the ingress: decoding, the sender rule, the batched signature
    /// checks. On the event loop, or summed over the verify threads where the node
    /// runs them (`BFTNODE_VERIFY_THREADS` above 0: a lone replica's default).
    Verify,
    /// Everything else the event loop does in a turn but perform outputs: checked
    /// frames through the replica (the state machine and its wrappers), the reply
    /// routes and the generals engine, timers, snapshots taken, admin commands,
    /// the status refresh.
    Handle,
    /// The turn's outputs performed: frames encoded and queued, replies addressed,
    /// timers set (the records and frames then go to the persister, whose thread is
    /// not counted).
    Outputs,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Verify, Phase::Handle, Phase::Outputs];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Phase::Verify => "verify",
            Phase::Handle => "handle",
            Phase::Outputs => "outputs",
        }
    }
}

/// One phase's counter.
#[derive(Clone)]
pub struct PhaseClock(Counter);

impl PhaseClock {
    #[must_use]
    pub fn new(counter: Counter) -> Self {
        Self(counter)
    }

    /// Run `work`, adding the CPU time this thread spent in it to the phase.
    pub fn time<R>(&self, work: impl FnOnce() -> R) -> R {
        self.time_if(true, work)
    }

    /// Run `work`, timed only if `timed` (work known to be trivial is not worth
    /// the clock's two system calls).
    pub fn time_if<R>(&self, timed: bool, work: impl FnOnce() -> R) -> R {
        if !timed {
            return work();
        }
        let start = thread_cpu();
        let result = work();
        self.0
            .inc_by(thread_cpu().saturating_sub(start).as_secs_f64());
        result
    }
}

/// CPU time this thread has run so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> (PhaseClock, Counter) {
        let c = Counter::new("phase_test_seconds_total", "test").expect("valid metric");
        (PhaseClock::new(c.clone()), c)
    }

    /// Work done inside `time` is counted, at about the CPU it took.
    #[test]
    fn busy_work_is_counted() {
        let (phase, counter) = clock();
        let spin = Duration::from_millis(30);
        let started = std::time::Instant::now();
        phase.time(|| {
            while started.elapsed() < spin {
                std::hint::black_box(0u64);
            }
        });
        // A spin of 30 ms of wall time runs at least part of it on a CPU, and
        // never more CPU than wall time.
        let counted = counter.get();
        assert!(counted > 0.0, "nothing counted");
        assert!(
            counted <= started.elapsed().as_secs_f64() + 0.01,
            "{counted}"
        );
    }

    /// Time spent asleep is not CPU: a phase that waits counts (almost) nothing.
    #[test]
    fn sleeping_is_not_counted() {
        let (phase, counter) = clock();
        phase.time(|| std::thread::sleep(Duration::from_millis(50)));
        assert!(counter.get() < 0.01, "{}", counter.get());
    }

    /// The result of the work comes back unchanged.
    #[test]
    fn the_work_result_is_returned() {
        let (phase, _) = clock();
        assert_eq!(phase.time(|| 41 + 1), 42);
    }
}
