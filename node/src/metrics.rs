//! Prometheus metrics (INTERFACE.md "Metrics"), served at `GET /metrics`.
//!
//! The event loop is the only writer; `/metrics` gathers from the shared registry.
//! Latency histograms use buckets from 100 µs to 10 s: PBFT on a LAN commits in
//! about a millisecond, a view change takes seconds.

use crate::loop_cpu::{Phase, PhaseClock};
use bft_consensus::byzantine::ALL_BEHAVIOURS;
use bft_consensus::{Frame, Rejection, ReplicaId};
use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Sub-millisecond to seconds, for request latency and persist time.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// The refusal reason of a bad reply route (`runtime::routes`), besides the
/// core's [`Rejection`] labels.
pub const ROUTE_REFUSED: &str = "bad_route";
/// Requests per batch.
const BATCH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Metrics {
    registry: Registry,
    pub view: IntGauge,
    pub primary: IntGauge,
    pub last_executed_seq: IntGauge,
    pub last_stable_checkpoint_seq: IntGauge,
    pub committed_requests: IntCounter,
    pub committed_batches: IntCounter,
    /// Read-only requests answered outside the order (TOCS §5.1.3).
    pub read_only_requests: IntCounter,
    /// Batches executed tentatively (TOCS §5.1.2), and such executions undone.
    pub tentative_executions: IntCounter,
    pub rollbacks: IntCounter,
    pub view_changes: IntCounter,
    pub messages_sent: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub invalid_messages: IntCounterVec,
    pub request_latency: Histogram,
    pub batch_size: Histogram,
    /// Frames per verification batch: how much the verify threads' (or loop's) batched
    /// signature checks gain (a batch of one costs what a lone check does).
    pub verify_batch_frames: Histogram,
    /// CPU seconds of a replica's phases of work (see [`crate::loop_cpu`]).
    pub loop_cpu: CounterVec,
    pub peers_connected: IntGauge,
    pub suspected_peers: IntGauge,
    pub fd_phi: GaugeVec,
    pub byzantine_behaviour: IntGaugeVec,
    pub checkpoint_persist: Histogram,
    pub checkpoint_snapshot: Histogram,
    /// Event-loop turns whose records one write took (group commit).
    pub persist_turns: Histogram,
    /// Synced writes (a group of records alone is written unsynced).
    pub persist_syncs: IntCounter,
    /// How long each synced write took: a disk that stalls shows here first
    /// (issue 13: a primary whose syncs stalled gave up its view).
    pub persist_sync_seconds: Histogram,
    pub state_transfers: IntCounter,
    pub generals_decisions: IntCounterVec,
    /// Frames the transport dropped because a peer's queue was full.
    pub frames_dropped: IntGauge,
    pub frames_lost: IntGauge,
    /// Connections and inbound streams closed for being over the ingress bounds.
    pub connections_refused: IntGauge,
    pub streams_refused: IntGauge,
    /// Seconds since the replica started (lets a dashboard spot restarts).
    pub uptime: Gauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

impl Metrics {
    /// Every metric registered, labelled with nothing yet.
    ///
    /// # Panics
    /// Never: names and label sets are fixed and valid.
    #[must_use]
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid metric"),
            )
        };
        let m = Self {
            view: gauge("bft_view", "Current view"),
            primary: gauge("bft_primary", "Primary of the current view"),
            last_executed_seq: gauge("bft_last_executed_seq", "Last executed sequence number"),
            last_stable_checkpoint_seq: gauge(
                "bft_last_stable_checkpoint_seq",
                "Sequence number of the last stable checkpoint",
            ),
            committed_requests: counter("bft_committed_requests_total", "Client requests executed"),
            read_only_requests: counter(
                "bft_read_only_requests_total",
                "Read-only requests answered from the current state, outside the order",
            ),
            tentative_executions: counter(
                "bft_tentative_executions_total",
                "Batches executed tentatively: prepared, not yet committed, replied to at once",
            ),
            rollbacks: counter(
                "bft_rollbacks_total",
                "Tentative executions undone (view left, another batch committed there, or state replaced)",
            ),
            committed_batches: counter("bft_committed_batches_total", "Batches executed"),
            view_changes: counter("bft_view_changes_total", "New views entered"),
            messages_sent: counter_vec(
                "bft_messages_sent_total",
                "Messages sent, by type (a broadcast counts once per peer)",
                &["type"],
            ),
            messages_received: counter_vec(
                "bft_messages_received_total",
                "Messages received, by type",
                &["type"],
            ),
            invalid_messages: counter_vec(
                "bft_invalid_messages_total",
                "Messages refused, by reason and by the peer they came from",
                &["reason", "peer"],
            ),
            request_latency: histogram(
                "bft_request_latency_seconds",
                "From a request's first sight at this replica to its execution",
                LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                "bft_batch_size",
                "Requests per executed batch",
                BATCH_BUCKETS,
            ),
            verify_batch_frames: histogram(
                "bft_verify_batch_frames",
                "Frames checked together by a verify thread or the event loop (signatures batch-verified)",
                BATCH_BUCKETS,
            ),
            loop_cpu: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "bft_loop_cpu_seconds_total",
                        "CPU seconds of a replica's phases of work, from the running thread's own CPU clock: verify (frame checks, on the event loop or the verify threads), handle (the rest of the event loop but outputs), outputs",
                    ),
                    &["phase"],
                )
                .expect("valid metric"),
            ),
            peers_connected: gauge("bft_peers_connected", "Replicas connected"),
            suspected_peers: gauge(
                "bft_suspected_peers",
                "Replicas the failure detector suspects",
            ),
            fd_phi: register(
                &r,
                GaugeVec::new(
                    Opts::new("bft_fd_phi", "Phi-accrual suspicion level per peer"),
                    &["peer"],
                )
                .expect("valid metric"),
            ),
            byzantine_behaviour: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("bft_byzantine_behaviour", "1 for the behaviour in force"),
                    &["behaviour"],
                )
                .expect("valid metric"),
            ),
            checkpoint_persist: histogram(
                "bft_checkpoint_persist_seconds",
                "Time to durably write a stable checkpoint (its snapshot file, then its record)",
                LATENCY_BUCKETS,
            ),
            checkpoint_snapshot: histogram(
                "bft_checkpoint_snapshot_seconds",
                "Time to encode and hash a checkpoint's snapshot, on the snapshot thread (the event loop only captures the state)",
                LATENCY_BUCKETS,
            ),
            persist_turns: histogram(
                "bft_persist_turns_per_write",
                "Event-loop turns whose records one write took (group commit)",
                BATCH_BUCKETS,
            ),
            persist_syncs: counter(
                "bft_persist_syncs_total",
                "Synced writes: made only when a frame or a stable checkpoint waits for the records",
            ),
            persist_sync_seconds: histogram(
                "bft_persist_sync_seconds",
                "Time of each synced write of the persist thread, its records' encoding included (the frames of its turns wait for it)",
                LATENCY_BUCKETS,
            ),
            state_transfers: counter(
                "bft_state_transfers_total",
                "State snapshots fetched and installed",
            ),
            generals_decisions: counter_vec(
                "bft_generals_decisions_total",
                "Signed-message generals decisions, by outcome (value or none)",
                &["outcome"],
            ),
            frames_dropped: gauge(
                "bft_frames_dropped",
                "Frames dropped because a peer's outbound queue was full",
            ),
            frames_lost: gauge(
                "bft_frames_lost",
                "Frames lost in a write to a peer that failed (the stream broke), or held for a client that never came back",
            ),
            connections_refused: gauge(
                "bft_connections_refused",
                "Connections closed for being over the ingress bounds",
            ),
            streams_refused: gauge(
                "bft_streams_refused",
                "Inbound streams refused for being over a peer's bound",
            ),
            uptime: register(
                &r,
                Gauge::new("bft_uptime_seconds", "Seconds since the replica started")
                    .expect("valid metric"),
            ),
            registry: r,
        };
        m.set_behaviour("none");
        // Both outcomes exist from the start, so dashboards show 0 rather than no data.
        for outcome in ["value", "none"] {
            m.generals_decisions.with_label_values(&[outcome]);
        }
        for phase in Phase::ALL {
            m.loop_cpu.with_label_values(&[phase.label()]);
        }
        m
    }

    /// The clock of `phase`.
    #[must_use]
    pub fn phase_clock(&self, phase: Phase) -> PhaseClock {
        PhaseClock::new(self.loop_cpu.with_label_values(&[phase.label()]))
    }

    /// Every metric registered, with each labelled series a replica `me` of a group
    /// of `n` can have at zero: message types, refusal reasons for each peer (and
    /// `none`, a client), and each peer's phi. A dashboard panel or a `rate()`
    /// alert then has a series from start-up, not from the first event.
    #[must_use]
    pub fn for_group(n: u32, me: ReplicaId) -> Self {
        let m = Self::new();
        for kind in Frame::kinds() {
            m.messages_sent.with_label_values(&[kind]);
            m.messages_received.with_label_values(&[kind]);
        }
        let others: Vec<String> = (0..n).filter(|p| *p != me).map(|p| p.to_string()).collect();
        for peer in others.iter().map(String::as_str).chain(["none"]) {
            for reason in Rejection::LABELS.iter().chain(&[ROUTE_REFUSED]) {
                m.invalid_messages.with_label_values(&[*reason, peer]);
            }
        }
        for peer in &others {
            m.fd_phi.with_label_values(&[peer.as_str()]).set(0.0);
        }
        m
    }

    /// Mark `name` as the behaviour in force (every other at 0).
    pub fn set_behaviour(&self, name: &str) {
        for b in std::iter::once(&"none").chain(ALL_BEHAVIOURS.iter()) {
            self.byzantine_behaviour
                .with_label_values(&[*b])
                .set(i64::from(*b == name));
        }
    }

    /// A refused message; `peer` is a replica id, or None (a client or unknown).
    pub fn invalid(&self, reason: &str, peer: Option<u32>) {
        let peer = peer.map_or_else(|| "none".to_string(), |p| p.to_string());
        self.invalid_messages
            .with_label_values(&[reason, &peer])
            .inc();
    }

    /// The text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_metric_is_exposed() {
        let m = Metrics::new();
        m.messages_sent.with_label_values(&["prepare"]).inc();
        m.messages_received.with_label_values(&["prepare"]).inc();
        m.invalid("bad_signature", Some(2));
        m.fd_phi.with_label_values(&["1"]).set(0.5);
        m.generals_decisions.with_label_values(&["value"]).inc();
        m.request_latency.observe(0.002);
        let text = m.render();
        for name in [
            "bft_view",
            "bft_primary",
            "bft_last_executed_seq",
            "bft_last_stable_checkpoint_seq",
            "bft_committed_requests_total",
            "bft_committed_batches_total",
            "bft_read_only_requests_total",
            "bft_tentative_executions_total",
            "bft_rollbacks_total",
            "bft_loop_cpu_seconds_total{phase=\"verify\"} 0",
            "bft_loop_cpu_seconds_total{phase=\"handle\"} 0",
            "bft_loop_cpu_seconds_total{phase=\"outputs\"} 0",
            "bft_view_changes_total",
            "bft_messages_sent_total{type=\"prepare\"}",
            "bft_messages_received_total{type=\"prepare\"}",
            "bft_invalid_messages_total{peer=\"2\",reason=\"bad_signature\"}",
            "bft_request_latency_seconds_bucket{le=\"0.0025\"} 1",
            "bft_batch_size_bucket",
            "bft_verify_batch_frames_bucket",
            "bft_peers_connected",
            "bft_suspected_peers",
            "bft_fd_phi{peer=\"1\"} 0.5",
            "bft_byzantine_behaviour{behaviour=\"none\"} 1",
            "bft_byzantine_behaviour{behaviour=\"flood\"} 0",
            "bft_checkpoint_persist_seconds_bucket",
            "bft_checkpoint_snapshot_seconds_bucket",
            "bft_state_transfers_total",
            "bft_generals_decisions_total{outcome=\"value\"} 1",
            "bft_frames_lost",
            "bft_connections_refused",
            "bft_streams_refused",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn a_replicas_labelled_counters_exist_at_zero_from_the_start() {
        let text = Metrics::for_group(4, 1).render();
        for series in [
            "bft_invalid_messages_total{peer=\"0\",reason=\"bad_signature\"} 0",
            "bft_invalid_messages_total{peer=\"3\",reason=\"bad_route\"} 0",
            "bft_invalid_messages_total{peer=\"none\",reason=\"malformed\"} 0",
            "bft_messages_received_total{type=\"commit\"} 0",
            "bft_messages_sent_total{type=\"pre_prepare\"} 0",
            "bft_fd_phi{peer=\"2\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        // Never blamed on itself, and no phi of its own.
        assert!(!text.contains("peer=\"1\""));
    }

    #[test]
    fn switching_behaviour_moves_the_one() {
        let m = Metrics::new();
        m.set_behaviour("equivocate");
        let text = m.render();
        assert!(text.contains("bft_byzantine_behaviour{behaviour=\"equivocate\"} 1"));
        assert!(text.contains("bft_byzantine_behaviour{behaviour=\"none\"} 0"));
    }
}
