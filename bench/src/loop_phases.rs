//! Each replica's CPU by phase per committed request, from the replica's own
//! `bft_loop_cpu_seconds_total{phase}` (INTERFACE.md "Metrics"), read from its
//! `/metrics` at the start and the end of the measurement window.
//!
//! `/proc` says how much CPU a replica spent; this says on what: checking frames
//! (`verify`, on its event loop or its verify threads), the rest of its event
//! loop (`handle`) or performing outputs. What is left of the process's figure
//! ran elsewhere (the network's tasks, the persist and snapshot threads). A
//! replica that cannot be read at either end, or whose counters went backwards
//! (it restarted), is left out of the report rather than failing the run.
//!
//! The in-process baseline server has no `/metrics`: it counts its `verify`
//! phase (decoding and checking the requests' signatures) in a [`LocalPhase`]
//! the probe reads directly, so a run with `--baseline` says how much of the
//! unreplicated server's CPU is signature checks and how much the rest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The counter read, and the label that names its phase.
const METRIC: &str = "bft_loop_cpu_seconds_total{phase=\"";
/// A scrape that takes longer is given up (the run goes on without it). The
/// replicas are read at once, so this bounds a whole sample.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a `/metrics` body read at most (a replica's is tens of kilobytes).
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// The phase that checks frames (decoding, signatures): the replicas' label, and
/// the one the in-process baseline counts.
pub const VERIFY: &str = "verify";

/// CPU seconds by phase, by replica, at one instant.
pub type PhaseSample = BTreeMap<String, BTreeMap<String, f64>>;

/// A phase counted in this process: CPU nanoseconds, added to by the thread
/// that did the work, read by the probe.
#[derive(Clone, Debug, Default)]
pub struct LocalPhase(Arc<AtomicU64>);

impl LocalPhase {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `work` (synchronous: it runs on this thread from start to end),
    /// counting the CPU time this thread spent in it: the thread's own CPU clock,
    /// as the replicas' `bft_loop_cpu_seconds_total` counts theirs.
    pub fn time<R>(&self, work: impl FnOnce() -> R) -> R {
        let start = thread_cpu();
        let result = work();
        self.add(thread_cpu().saturating_sub(start));
        result
    }

    /// Count `cpu` more.
    pub fn add(&self, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Everything counted so far.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
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

/// The replicas whose loops are read, by the name the report gives them, and
/// the base URL of each one's HTTP server (`http://HOST:PORT`); and phases
/// counted in this process (by name and phase).
#[derive(Clone, Debug, Default)]
pub struct PhaseProbe {
    replicas: Vec<(String, String)>,
    locals: Vec<(String, String, LocalPhase)>,
}

impl PhaseProbe {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Read `name`'s phases from `base` (`http://HOST:PORT`).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, base: impl Into<String>) -> Self {
        self.replicas.push((name.into(), base.into()));
        self
    }

    /// Read `name`'s `phase` from a counter in this process.
    #[must_use]
    pub fn with_local(
        mut self,
        name: impl Into<String>,
        phase: impl Into<String>,
        counter: LocalPhase,
    ) -> Self {
        self.locals.push((name.into(), phase.into(), counter));
        self
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty() && self.locals.is_empty()
    }

    /// Every replica's phases now (blocking: one HTTP request each, all at once,
    /// each within [`SCRAPE_TIMEOUT`]), and the local ones. Replicas that cannot
    /// be read are left out.
    #[must_use]
    pub fn sample(&self) -> PhaseSample {
        let mut sample = self.scrape_all();
        for (name, phase, counter) in &self.locals {
            sample
                .entry(name.clone())
                .or_default()
                .insert(phase.clone(), counter.seconds());
        }
        sample
    }

    fn scrape_all(&self) -> PhaseSample {
        std::thread::scope(|scope| {
            let reads: Vec<_> = self
                .replicas
                .iter()
                .map(|(name, base)| {
                    scope.spawn(move || Some((name.clone(), parse(&scrape(base)?))))
                })
                .collect();
            reads
                .into_iter()
                .filter_map(|read| read.join().ok().flatten())
                .filter(|(_, phases)| !phases.is_empty())
                .collect()
        })
    }
}

/// `GET base/metrics`, or None on any failure.
fn scrape(base: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SCRAPE_TIMEOUT))
        .proxy(None)
        .build()
        .into();
    let mut response = agent.get(&format!("{base}/metrics")).call().ok()?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .ok()
}

/// The phases of one `/metrics` text: `phase -> seconds`.
#[must_use]
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(METRIC)?;
            let (phase, value) = rest.split_once("\"}")?;
            Some((phase.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Microseconds of each replica's phases per request between `start` and `end`,
/// for the replicas read at both with every phase, none of them lower at the end
/// (a replica that restarted in the window started its counters again).
#[must_use]
pub fn per_request(
    start: &PhaseSample,
    end: &PhaseSample,
    requests: u64,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let requests = requests.max(1) as f64;
    end.iter()
        .filter_map(|(replica, phases)| {
            let before = start.get(replica)?;
            let us = phases
                .iter()
                .map(|(phase, secs)| {
                    let grew = secs - before.get(phase)?;
                    (grew >= 0.0).then(|| (phase.clone(), grew * 1e6 / requests))
                })
                .collect::<Option<BTreeMap<_, _>>>()?;
            Some((replica.clone(), us))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP bft_loop_cpu_seconds_total CPU seconds of the event loop's phases
# TYPE bft_loop_cpu_seconds_total counter
bft_loop_cpu_seconds_total{phase=\"handle\"} 1.5
bft_loop_cpu_seconds_total{phase=\"outputs\"} 0.25
bft_loop_cpu_seconds_total{phase=\"verify\"} 3
bft_committed_requests_total 1000
";

    #[test]
    fn the_phases_are_read_from_the_exposition() {
        let phases = parse(METRICS);
        assert_eq!(phases.len(), 3);
        assert_eq!(phases["verify"], 3.0);
        assert_eq!(phases["handle"], 1.5);
        assert_eq!(phases["outputs"], 0.25);
        assert!(parse("bft_committed_requests_total 5\n").is_empty());
    }

    #[test]
    fn per_request_divides_each_phases_growth_by_the_requests() {
        let at = |verify: f64| -> PhaseSample {
            BTreeMap::from([(
                "replica0".to_string(),
                BTreeMap::from([("verify".to_string(), verify)]),
            )])
        };
        let us = per_request(&at(1.0), &at(1.5), 10_000);
        assert!((us["replica0"]["verify"] - 50.0).abs() < 1e-9);
        // A replica read at one end only is left out.
        let mut end = at(2.0);
        end.insert("replica1".into(), BTreeMap::new());
        assert_eq!(per_request(&at(1.0), &end, 1).len(), 1);
        // So is one whose counter went backwards (it restarted in the window).
        assert!(per_request(&at(2.0), &at(0.5), 1).is_empty());
    }

    #[test]
    fn an_unreachable_replica_is_left_out() {
        // A port just freed on the loopback: nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let probe = PhaseProbe::new().with("replica0", format!("http://127.0.0.1:{port}"));
        assert!(probe.sample().is_empty());
    }

    #[test]
    fn a_local_phase_is_read_with_the_others() {
        let verify = LocalPhase::new();
        let probe = PhaseProbe::new().with_local("baseline", "verify", verify.clone());
        assert!(!probe.is_empty());
        let start = probe.sample();
        assert_eq!(start["baseline"]["verify"], 0.0);
        verify.add(Duration::from_millis(3));
        let us = per_request(&start, &probe.sample(), 100);
        assert!((us["baseline"]["verify"] - 30.0).abs() < 1e-6, "{us:?}");
    }

    /// `time` counts the CPU its work ran, not the time it slept.
    #[test]
    fn a_local_phase_times_cpu_not_sleep() {
        let phase = LocalPhase::new();
        let started = std::time::Instant::now();
        let out = phase.time(|| {
            while started.elapsed() < Duration::from_millis(30) {
                std::hint::black_box(0u64);
            }
            7
        });
        assert_eq!(out, 7);
        let spun = phase.seconds();
        assert!(
            spun > 0.0 && spun <= started.elapsed().as_secs_f64() + 0.01,
            "{spun}"
        );
        phase.time(|| std::thread::sleep(Duration::from_millis(50)));
        assert!(phase.seconds() - spun < 0.01, "{}", phase.seconds());
    }
}
