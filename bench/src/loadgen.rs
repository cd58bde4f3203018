//! The load generator: many PBFT clients (each its own key, behind gateways that
//! share connections, one request outstanding at a time, as PBFT clients are) writing `payload`-byte
//! values, either closed-loop (K clients, each sends its next request when the last
//! is accepted) or open-loop (requests due at a fixed rate, handed to whichever
//! client is free).
//!
//! Open-loop latency is measured from when a request was *due*, not when a client
//! got round to sending it, so a backlog shows up as latency instead of hiding
//! (no coordinated omission).

use crate::cpu::{Probe, Usage};
use crate::loop_phases::PhaseSample;
use crate::timeline::{self, Timeline};
use anyhow::Context as _;
use bft_client::config::{ResolvedClient, ValidatorSet};
use bft_client::{ClientError, Gateway, KvClient};
use bft_consensus::{KvResult, RootCache};
use bft_crypto::KeyPair;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// How requests are offered.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `rate` requests per second, whatever the replies do.
    OpenLoop { rate: f64 },
    /// `outstanding` clients, each with one request in flight.
    ClosedLoop { outstanding: usize },
}

/// The operation each write is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    /// `KvOp::Set`: answered with "written" (Redis's SET, etcd's put).
    #[default]
    Set,
    /// `KvOp::Put`: answered with the value it replaced, a payload's worth of
    /// reply per write once every key has been written.
    Put,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadConfig {
    pub mode: Mode,
    /// Client identities in open-loop mode (closed-loop uses one per outstanding).
    pub clients: usize,
    /// Connections (gateways) the clients share, round robin: one per client puts
    /// every client on a connection of its own.
    pub connections: usize,
    pub payload: usize,
    /// Distinct keys written (round robin): the replicated state stays bounded, as
    /// it does for a real workload, however long the run.
    pub keys: u64,
    /// The share of requests that are read-only gets of those keys (the rest are
    /// writes), each client alternating so that its own share is exact.
    pub read_ratio: f64,
    /// Send those gets through the order like writes instead of read-only (for
    /// comparing the two paths).
    pub ordered_reads: bool,
    /// What each write is.
    pub write: WriteOp,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// A request not accepted within this is an error (and its client moves on).
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Print a progress line every second.
    #[serde(skip)]
    pub progress: bool,
}

#[cfg(test)]
impl LoadConfig {
    /// A small load for unit tests of what reads a run's results: 512-byte sets
    /// to 10 keys for a second, one connection, no progress lines.
    pub(crate) fn for_tests(mode: Mode, clients: usize) -> Self {
        Self {
            mode,
            clients,
            connections: 1,
            payload: 512,
            keys: 10,
            read_ratio: 0.0,
            ordered_reads: false,
            write: WriteOp::Set,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            progress: false,
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// What one run measured. Latencies are in microseconds.
pub struct LoadResult {
    /// Requests submitted to the replicas during the whole run (warm-up included).
    pub sent: u64,
    /// Requests accepted (f+1 matching replies) during the whole run.
    pub committed: u64,
    /// Requests that timed out or failed.
    pub errors: u64,
    /// Times a client sent its request again to every replica (whole run). Each
    /// costs every replica a signature check: a run with many measured the clients'
    /// timeouts as much as the replicas' peak.
    pub retransmissions: u64,
    /// Requests accepted inside the measurement window (after the warm-up).
    pub measured: u64,
    pub measured_secs: f64,
    pub latency_us: Histogram<u64>,
    /// From when a client sent a request to when it accepted it (open loop: without
    /// the wait for a free client; closed loop: the same as `latency_us`).
    pub service_us: Histogram<u64>,
    /// Open loop: from when a request was due to when a client sent it.
    pub client_wait_us: Histogram<u64>,
    /// `latency_us` of the reads alone, and of the writes alone (with reads mixed
    /// in, see [`LoadConfig::read_ratio`]).
    pub read_latency_us: Histogram<u64>,
    pub write_latency_us: Histogram<u64>,
    /// Requests accepted inside the window, per [`timeline::WINDOW`].
    pub timeline: Timeline,
    /// CPU and context switches per request accepted inside the window, if a
    /// [`Probe`] was given.
    pub cpu: Option<Usage>,
}

impl LoadResult {
    #[must_use]
    pub fn throughput(&self) -> f64 {
        if self.measured_secs > 0.0 {
            self.measured as f64 / self.measured_secs
        } else {
            0.0
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    committed: AtomicU64,
    errors: AtomicU64,
    retransmissions: AtomicU64,
}

/// Connect `count` clients with fresh keys over `connections` gateways (clients
/// spread round robin) and wait until each gateway reaches every replica.
///
/// # Errors
/// A transport that cannot start, or replicas that stay unreachable for 30 s.
pub async fn connect_clients(
    validators: &ValidatorSet,
    count: usize,
    connections: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<KvClient>> {
    let n = validators.validators.len();
    let mut gateways = Vec::new();
    for _ in 0..connections.clamp(1, count.max(1)) {
        gateways.push(Gateway::connect(validators)?);
    }
    for (i, g) in gateways.iter().enumerate() {
        if !g.wait_connected(n, Duration::from_secs(30)).await {
            anyhow::bail!(
                "connection {i} reached only {} of {n} replicas",
                g.connected()
            );
        }
    }
    // One process, many clients: a root signed over a batch holding several of their
    // requests is verified once for all of them.
    let roots = Arc::new(RootCache::new(4096));
    let clients = (0..count)
        .map(|i| {
            let cfg = ResolvedClient {
                key: KeyPair::generate(),
                validators: validators.clone(),
                timeout,
                retransmit: timeout.min(Duration::from_secs(1)),
            };
            let mut client = KvClient::via(&gateways[i % gateways.len()], &cfg);
            client.share_root_cache(roots.clone());
            client
        })
        .collect();
    Ok(clients)
}

/// Run one load against the replicas of `validators`; with a `probe`, also account
/// the CPU its processes spend in the measurement window.
///
/// # Errors
/// If the clients cannot connect.
pub async fn run(
    validators: &ValidatorSet,
    cfg: &LoadConfig,
    probe: Option<Probe>,
) -> anyhow::Result<LoadResult> {
    let workers = match cfg.mode {
        Mode::OpenLoop { .. } => cfg.clients,
        Mode::ClosedLoop { outstanding } => outstanding,
    }
    .max(1);
    let clients = connect_clients(validators, workers, cfg.connections, cfg.timeout).await?;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let counters = Arc::new(Counters::default());
    let value = Arc::new(vec![b'x'; cfg.payload]);

    // Open loop: a pacer hands out due times; closed loop: none, workers just go.
    let due = match cfg.mode {
        Mode::OpenLoop { rate } => {
            let (tx, rx) = mpsc::unbounded_channel();
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(rate, start, end, &tx))
                .context("starting the open-loop pacer")?;
            Some(Arc::new(Mutex::new(rx)))
        }
        Mode::ClosedLoop { .. } => None,
    };
    let cpu = probe.map(|p| tokio::spawn(sample_window(p, measure_from, end)));
    let progress = cfg
        .progress
        .then(|| tokio::spawn(report_progress(counters.clone(), start, measure_from, end)));
    // One set of histograms for all workers: each set is about 0.9 MB, and one per
    // worker cost 4,096 clients 3.5 GB of sparse memory and a page fault for
    // many a first sample (issue 13: 2-3 % of the load generator's CPU).
    let measured = Arc::new(std::sync::Mutex::new(Measured::new(cfg.duration)));

    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let worker = Worker {
                id: w,
                workers: workers as u64,
                keys: cfg.keys.max(1),
                read_ratio: cfg.read_ratio.clamp(0.0, 1.0),
                ordered_reads: cfg.ordered_reads,
                write: cfg.write,
                client,
                counters: counters.clone(),
                measured: measured.clone(),
                value: value.clone(),
                measure_from,
                end,
            };
            tokio::spawn(worker.run(due.clone()))
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let total = std::mem::replace(
        &mut *measured.lock().unwrap_or_else(PoisonError::into_inner),
        Measured::new(Duration::ZERO),
    );
    let Measured {
        latency_us,
        service_us,
        client_wait_us,
        read_latency_us,
        write_latency_us,
        timeline,
        count: measured,
    } = total;
    if let Some(p) = progress {
        p.abort();
    }
    let cpu = match cpu {
        Some(task) => task.await?.map(|(a, b)| Usage::between(&a, &b, measured)),
        None => None,
    };
    Ok(LoadResult {
        sent: counters.sent.load(Ordering::Relaxed),
        committed: counters.committed.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        retransmissions: counters.retransmissions.load(Ordering::Relaxed),
        measured,
        measured_secs: cfg.duration.as_secs_f64(),
        latency_us,
        service_us,
        client_wait_us,
        read_latency_us,
        write_latency_us,
        timeline,
        cpu,
    })
}

/// Samples at the start and the end of the measurement window (`None` if the run
/// was already past its start, which only a zero-length window can be).
async fn sample_window(
    probe: Probe,
    from: Instant,
    end: Instant,
) -> Option<(crate::cpu::Sample, crate::cpu::Sample)> {
    if Instant::now() > from {
        return None;
    }
    // The replicas' phases are an HTTP request each: off the runtime's workers
    // (the load generator's clients run there), and after `/proc` is read, so a
    // slow replica never moves the window's ends.
    let phases = |probe: &Probe| {
        let phases = probe.phases().clone();
        async move {
            if phases.is_empty() {
                return PhaseSample::new();
            }
            tokio::task::spawn_blocking(move || phases.sample())
                .await
                .unwrap_or_default()
        }
    };
    tokio::time::sleep_until(from.into()).await;
    let start = probe.sample();
    let start_phases = tokio::spawn(phases(&probe));
    tokio::time::sleep_until(end.into()).await;
    let end_sample = probe.sample();
    let start = start.with_phases(start_phases.await.unwrap_or_default());
    let end_sample = end_sample.with_phases(phases(&probe).await);
    Some((start, end_sample))
}

/// 1 µs to 10 minutes, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Emit the due time of every request of an open-loop run, `rate` per second
/// from `start` until `end`, each as close to its time as [`PACER_GAP`] allows:
/// request `i` is due at `start + i / rate`, and none at or after `end`.
///
/// On a thread of its own: tokio's timers have a millisecond's resolution, and a
/// pacer ticking on them handed each request out 1.0-1.2 ms after it was due
/// (median), which every latency of an open-loop run counted, the unreplicated
/// baseline's 1.7 ms median included (issue 13).
fn pace(rate: f64, start: Instant, end: Instant, tx: &mpsc::UnboundedSender<Instant>) {
    if !(rate.is_finite() && rate > 0.0) {
        return; // nothing is ever due
    }
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    // Requests due before the end: i / rate < end - start.
    let total = (end.duration_since(start).as_secs_f64() * rate).ceil() as u64;
    let mut issued: u64 = 0;
    while issued < total {
        // Every request due by now: i / rate <= elapsed.
        let elapsed = Instant::now().duration_since(start).as_secs_f64();
        let due_now = ((elapsed * rate).floor() as u64 + 1).min(total);
        while issued < due_now {
            if tx.send(due_at(issued)).is_err() {
                return; // the workers are gone
            }
            issued += 1;
        }
        if issued < total {
            let now = Instant::now();
            std::thread::sleep(due_at(issued).max(now + PACER_GAP) - now);
        }
    }
    // Dropping tx (the caller's) lets the workers finish.
}

/// The pacer sleeps at least this long between hand-outs: each wake-up costs the
/// load generator a context switch, so at high rates it hands out a few requests
/// per wake-up rather than waking for each.
const PACER_GAP: Duration = Duration::from_micros(250);

/// What workers measured inside the window.
struct Measured {
    latency_us: Histogram<u64>,
    service_us: Histogram<u64>,
    client_wait_us: Histogram<u64>,
    read_latency_us: Histogram<u64>,
    write_latency_us: Histogram<u64>,
    timeline: Timeline,
    count: u64,
}

impl Measured {
    /// For a measurement that lasts `span`.
    fn new(span: Duration) -> Self {
        Self {
            latency_us: new_histogram(),
            service_us: new_histogram(),
            client_wait_us: new_histogram(),
            read_latency_us: new_histogram(),
            write_latency_us: new_histogram(),
            timeline: Timeline::new(timeline::WINDOW, span),
            count: 0,
        }
    }

    /// A request due at `due`, sent at `sent` and accepted at `done`, `since` the
    /// measurement began.
    fn record(&mut self, read: bool, due: Instant, sent: Instant, done: Instant, since: Duration) {
        self.timeline.record(since);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let latency = us(done.duration_since(due));
        self.latency_us.saturating_record(latency);
        let by_kind = if read {
            &mut self.read_latency_us
        } else {
            &mut self.write_latency_us
        };
        by_kind.saturating_record(latency);
        self.service_us
            .saturating_record(us(done.duration_since(sent)));
        self.client_wait_us
            .saturating_record(us(sent.saturating_duration_since(due)));
        self.count += 1;
    }
}

struct Worker {
    id: usize,
    workers: u64,
    keys: u64,
    read_ratio: f64,
    ordered_reads: bool,
    write: WriteOp,
    client: KvClient,
    counters: Arc<Counters>,
    /// Shared by all workers (never locked across an await).
    measured: Arc<std::sync::Mutex<Measured>>,
    value: Arc<Vec<u8>>,
    measure_from: Instant,
    end: Instant,
}

impl Worker {
    /// Records into `measured` the requests accepted inside the window.
    async fn run(mut self, due: Option<Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>>) {
        // Reads owed: each request adds the ratio, a read pays one off.
        let mut reads_owed = 0.0;
        for i in 0u64.. {
            let sent_at = match &due {
                Some(rx) => match rx.lock().await.recv().await {
                    Some(at) => at,
                    None => break,
                },
                None => Instant::now(),
            };
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            let key = format!("bench-{}", (self.id as u64 + i * self.workers) % self.keys);
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            let before = self.client.retransmissions();
            reads_owed += self.read_ratio;
            let read = reads_owed >= 1.0;
            let outcome = if read {
                reads_owed -= 1.0;
                if self.ordered_reads {
                    self.client.get_ordered(key.as_bytes()).await
                } else {
                    self.client.get(key.as_bytes()).await
                }
            } else {
                match self.write {
                    WriteOp::Set => self.client.set(key.as_bytes(), &self.value).await,
                    WriteOp::Put => self.client.put(key.as_bytes(), &self.value).await,
                }
            };
            self.counters
                .retransmissions
                .fetch_add(self.client.retransmissions() - before, Ordering::Relaxed);
            let expected = |r: &KvResult| match (read, self.write) {
                (true, _) => matches!(r, KvResult::Value(_)),
                (false, WriteOp::Set) => *r == KvResult::Written,
                (false, WriteOp::Put) => matches!(r, KvResult::Done { .. }),
            };
            match outcome {
                Ok(r) if expected(&r) => {
                    self.counters.committed.fetch_add(1, Ordering::Relaxed);
                    let done = Instant::now();
                    if done >= self.measure_from && done <= self.end {
                        self.measured
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record(read, sent_at, now, done, done - self.measure_from);
                    }
                }
                Ok(other) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("client {}: unexpected result {other:?}", self.id);
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, ClientError::Net(_) | ClientError::BadResult) {
                        eprintln!("client {}: {e}", self.id);
                    }
                }
            }
        }
    }
}

/// One line a second: elapsed time, phase, accepted requests per second, errors,
/// retransmissions.
async fn report_progress(
    counters: Arc<Counters>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let committed = counters.committed.load(Ordering::Relaxed);
        let phase = if now < measure_from {
            "warm-up"
        } else if now <= end {
            "measure"
        } else {
            "drain"
        };
        eprintln!(
            "[{:>5.1}s {phase:>7}] {:>7} req/s  committed {committed:>8}  errors {}  retransmitted {}",
            now.duration_since(start).as_secs_f64(),
            committed - last,
            counters.errors.load(Ordering::Relaxed),
            counters.retransmissions.load(Ordering::Relaxed)
        );
        last = committed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pacer hands out every due time of the run exactly once, in order, on
    /// the schedule `start + i / rate`, and stops at the end.
    #[test]
    fn the_pacer_hands_out_each_due_time_once_on_schedule() {
        let rate = 4_000.0;
        let start = Instant::now();
        let end = start + Duration::from_millis(60);
        let (tx, mut rx) = mpsc::unbounded_channel();
        pace(rate, start, end, &tx);
        drop(tx);
        let mut due = Vec::new();
        while let Ok(at) = rx.try_recv() {
            due.push(at);
        }
        assert_eq!(due.len(), 240, "60 ms at 4,000 per second");
        assert!(
            due.iter().all(|at| *at < end),
            "none due at the end or after"
        );
        for (i, at) in due.iter().enumerate() {
            assert_eq!(*at, start + Duration::from_secs_f64(i as f64 / rate));
        }
    }

    /// Nobody left to hand out to: the pacer stops at once rather than run to the end.
    #[test]
    fn the_pacer_stops_when_the_workers_are_gone() {
        let start = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        // Would run for an hour if it did not stop.
        pace(1_000.0, start, start + Duration::from_secs(3_600), &tx);
    }

    /// No rate, nothing due: the pacer returns at once instead of dividing by zero.
    #[test]
    fn a_pacer_without_a_rate_hands_out_nothing() {
        let start = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            pace(rate, start, start + Duration::from_secs(3_600), &tx);
        }
        drop(tx);
        assert!(rx.try_recv().is_err());
    }
}
