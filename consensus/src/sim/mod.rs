//! Deterministic simulation of a PBFT group (TigerBeetle VOPR / FoundationDB style).
//!
//! One seeded RNG drives everything: the network drops, duplicates, reorders and
//! delays messages and partitions replicas; honest replicas crash at any output
//! boundary and restart from exactly what they persisted; up to f replicas run a
//! Byzantine behaviour. The invariants of DESIGN.md are checked after every step:
//! agreement, validity, client safety and durability during a chaos phase, then
//! liveness after the network heals. Fault families (`Family`: basic, storage,
//! adversarial, twins) draw their runs from the seed each in their own way. A
//! failure prints the exact `bft-sim` arguments that replay it, e.g.
//! `cargo run --release -p bft-consensus --features sim --bin bft-sim -- --family twins --seed N --f F --trace`.

mod admissions;
mod checker;
mod config;
mod family;
pub mod generals;
mod linearizability;
mod rogue;
mod world;

pub use checker::Violation;
pub use config::{Faults, SimConfig, Storage};
pub use family::Family;

/// What a passing run did, for reports and sanity assertions in tests.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub committed_seqs: u64,
    /// Requests whose result a client accepted, read-only ones included.
    pub accepted_requests: usize,
    /// Of those, read-only results (answered outside the order).
    pub reads_accepted: usize,
    /// Batches executed tentatively, and tentative executions rolled back.
    pub tentative_executions: u64,
    pub rollbacks: u64,
    pub view_changes: u64,
    pub max_view: u64,
    pub crashes: u64,
    pub state_transfers: u64,
    pub stable_checkpoints: u64,
    pub rejections: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub sim_time_ms: u64,
    /// Requests the run had to add after the workload (and a grace period) before
    /// every honest replica caught up: 0 when retransmission alone sufficed.
    pub catch_up_requests: u64,
    /// Client requests' time from invocation to an accepted result (ms): the
    /// longest, and the sum over accepted requests. How long faults kept clients
    /// waiting, to compare builds on the same seeds (safety is judged elsewhere).
    pub longest_request_ms: u64,
    pub request_ms_total: u64,
    /// Replicas stalled (the stalls family), and of those stalls, the ones of the
    /// primary most replicas were in the view of that outlasted the request timer.
    pub stalls: u64,
    pub long_primary_stalls: u64,
    /// Changes of some replica's suspected set.
    pub suspicion_changes: u64,
    /// Replicas that refused to start (a damaged snapshot, a wiped directory).
    pub refused_starts: u64,
    /// Atomic write groups made durable (grouped writes only).
    pub write_groups: u64,
    /// Groups of records alone, written unsynced (grouped writes only).
    pub unsynced_writes: u64,
    /// Crashes that lost records written unsynced.
    pub unsynced_lost: u64,
    /// Every replica some honest replica suspected, with the reasons it gave.
    pub suspected_for: std::collections::BTreeMap<
        crate::types::ReplicaId,
        std::collections::BTreeSet<crate::fd::Reason>,
    >,
}

/// A failed run: the broken invariant and the last events before it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub config: String,
    /// The `bft-sim` arguments that replay this run.
    pub replay: String,
    pub violation: Violation,
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} violated {}: {}",
            self.seed, self.violation.invariant, self.violation.detail
        )?;
        writeln!(f, "config: {}", self.config)?;
        writeln!(f, "last events:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: cargo run --release -p bft-consensus --features sim --bin bft-sim -- {} --trace",
            self.replay
        )
    }
}

/// Run one simulation to completion.
///
/// # Errors
/// The first invariant violation, with a trace tail.
pub fn run(cfg: &SimConfig) -> Result<SimReport, Box<SimFailure>> {
    world::World::new(cfg.clone()).run()
}
