//! The failure detector in simulated time: heartbeats over a jittery network
//! between `FailureDetector`s, and replicas in the PBFT simulator whose primary is
//! silent (alive heartbeats, no ordering) or crashed.

use bft_consensus::fd::{FailureDetector, FdConfig, Heartbeat, Progress, Reason};
use bft_consensus::sim::{run, SimConfig};
use bft_consensus::types::ReplicaId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);
const BEAT: Duration = Duration::from_millis(100);

/// What each observer concluded, over time.
struct Trace {
    /// (time, observer, peer) of every ◇P suspicion raised.
    timeouts: Vec<(Duration, ReplicaId, ReplicaId)>,
    /// (time, observer, peer) whenever φ exceeded the threshold at a check.
    phi_over: Vec<(Duration, ReplicaId, ReplicaId)>,
    detectors: Vec<FailureDetector>,
}

/// `n` detectors exchanging heartbeats every [`BEAT`] for `duration`; `delay` draws
/// each heartbeat's delay; replica `crash.0` stops at `crash.1`.
fn simulate(
    n: usize,
    duration: Duration,
    crash: Option<(ReplicaId, Duration)>,
    seed: u64,
    mut delay: impl FnMut(&mut ChaCha8Rng, Duration) -> Duration,
) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = FdConfig::with_interval(BEAT);
    let ids = 0..n as ReplicaId;
    let mut detectors: Vec<FailureDetector> = ids
        .clone()
        .map(|i| FailureDetector::new(cfg.clone(), i, ids.clone(), 1, Duration::ZERO))
        .collect();
    // In flight: (arrival, to, heartbeat).
    let mut flight: Vec<(Duration, ReplicaId, Heartbeat)> = Vec::new();
    let mut trace = Trace {
        timeouts: Vec::new(),
        phi_over: Vec::new(),
        detectors: Vec::new(),
    };
    let mut now = Duration::ZERO;
    while now < duration {
        now += MS;
        // Deliver what arrives now.
        flight.sort_by_key(|(at, to, hb)| (*at, *to, hb.replica, hb.counter));
        while flight.first().is_some_and(|(at, ..)| *at <= now) {
            let (_, to, hb) = flight.remove(0);
            detectors[to as usize].on_heartbeat(&hb, now);
        }
        if !now.as_millis().is_multiple_of(BEAT.as_millis()) {
            continue;
        }
        for i in ids.clone() {
            let crashed = crash.is_some_and(|(c, at)| c == i && now >= at);
            if crashed {
                continue;
            }
            let d = &mut detectors[i as usize];
            let hb = d.next_heartbeat(Progress::default());
            for to in ids.clone().filter(|t| *t != i) {
                flight.push((now + delay(&mut rng, now), to, hb.clone()));
            }
            for peer in d.check(now) {
                trace.timeouts.push((now, i, peer));
            }
            for (peer, reasons) in d.suspicions() {
                if reasons.contains(&Reason::Phi) {
                    trace.phi_over.push((now, i, peer));
                }
            }
        }
    }
    trace.detectors = detectors;
    trace
}

#[test]
fn a_crashed_replica_is_suspected_within_its_timeout_and_stays_suspected() {
    let crash_at = Duration::from_secs(5);
    let trace = simulate(
        4,
        Duration::from_secs(15),
        Some((3, crash_at)),
        1,
        |rng, _| Duration::from_micros(rng.gen_range(1_000..20_000)),
    );
    let cfg = FdConfig::with_interval(BEAT);
    let mut detection = BTreeMap::new();
    for (at, observer, peer) in &trace.timeouts {
        assert!(
            *peer == 3 && *at > crash_at,
            "a live replica was suspected: {:?}",
            trace.timeouts
        );
        detection.entry(*observer).or_insert(*at - crash_at);
    }
    assert_eq!(detection.len(), 3, "every live replica detects the crash");
    for (observer, took) in &detection {
        println!("replica {observer} detected the crash after {took:?}");
        // Silence must exceed the timeout (minus the last beat's travel), and a
        // check runs every beat.
        assert!(*took >= cfg.initial_timeout - BEAT, "{took:?}");
        assert!(*took <= cfg.initial_timeout + 2 * BEAT, "{took:?}");
    }
    for d in &trace.detectors[..3] {
        assert_eq!(d.suspected(), vec![3], "still suspected at the end");
        let phi = d.phi(Duration::from_secs(15))[&3];
        assert!(phi > cfg.phi_threshold, "phi {phi}");
    }
}

#[test]
fn false_suspicions_die_out_under_jitter() {
    let secs = 120;
    // Jitter of up to 30 ms, and every 4 s a stall: for 300..800 ms nothing gets
    // through, and what was sent arrives when the stall ends (a congested switch,
    // a GC pause). Stalls repeat for the whole run: the network never gets better,
    // the detector learns it.
    let mut stall_rng = ChaCha8Rng::seed_from_u64(3);
    let stalls: Vec<(Duration, Duration)> = (1..secs / 4)
        .map(|k| {
            let start = Duration::from_secs(4 * k);
            (
                start,
                start + Duration::from_millis(stall_rng.gen_range(300..800)),
            )
        })
        .collect();
    let trace = simulate(4, Duration::from_secs(secs), None, 2, move |rng, now| {
        let jitter = Duration::from_micros(rng.gen_range(500..30_000));
        match stalls.iter().find(|(a, b)| *a <= now && now < *b) {
            Some((_, end)) => *end - now + jitter,
            None => jitter,
        }
    });
    let half = Duration::from_secs(secs / 2);
    let early = trace.timeouts.iter().filter(|(at, ..)| *at < half).count();
    let late: Vec<_> = trace
        .timeouts
        .iter()
        .filter(|(at, ..)| *at >= half)
        .collect();
    println!(
        "false suspicions: {early} in the first {}s, {} after",
        secs / 2,
        late.len()
    );
    assert!(early > 0, "the jitter never fooled the detector: no test");
    assert!(late.is_empty(), "false suspicions persist: {late:?}");
    let phi_early = trace.phi_over.iter().filter(|(at, ..)| *at < half).count();
    let phi_late = trace.phi_over.iter().filter(|(at, ..)| *at >= half).count();
    println!("phi over its threshold: {phi_early} checks early, {phi_late} late");
    assert!(phi_early > 0, "phi was never fooled: no test");
    assert_eq!(phi_late, 0, "phi keeps crossing its threshold");
    for d in &trace.detectors {
        assert!(d.suspected().is_empty(), "{:?}", d.suspicions());
        // Timeouts grew past the stuck heartbeats' delay.
        assert!(d.delay_bound() > BEAT * 4);
    }
}

#[test]
fn stale_and_replayed_heartbeats_do_not_count_as_life() {
    let cfg = FdConfig::with_interval(BEAT);
    let mut sender = FailureDetector::new(cfg.clone(), 1, [0, 1], 7, Duration::ZERO);
    let mut d = FailureDetector::new(cfg.clone(), 0, [0, 1], 1, Duration::ZERO);
    let first = sender.next_heartbeat(Progress::default());
    assert!(d.on_heartbeat(&first, BEAT));
    assert!(
        !d.on_heartbeat(&first, 2 * BEAT),
        "a duplicate is not fresh"
    );
    // Replaying it forever does not keep a dead replica alive.
    for k in 3..20u32 {
        d.on_heartbeat(&first, BEAT * k);
        d.check(BEAT * k);
    }
    assert_eq!(d.suspected(), vec![1]);
    // A restart (new incarnation) is fresh even though its counter starts over.
    let mut restarted = FailureDetector::new(cfg, 1, [0, 1], 8, Duration::ZERO);
    assert!(d.on_heartbeat(&restarted.next_heartbeat(Progress::default()), BEAT * 20));
    assert!(d.suspected().is_empty());
}

#[test]
fn a_silent_primary_is_replaced_on_lack_of_progress_not_heartbeats() {
    for f in [1, 2] {
        let mut cfg = SimConfig::calm(11, f);
        cfg.byzantine = vec![(0, "silent".into())];
        let report = run(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.max_view >= 1, "the silent primary kept its view");
        assert_eq!(
            report.accepted_requests,
            cfg.clients * cfg.requests_per_client
        );
        let reasons = report.suspected_for.get(&0).cloned().unwrap_or_default();
        assert!(reasons.contains(&Reason::NoProgress), "{reasons:?}");
        assert!(
            !reasons.contains(&Reason::Timeout),
            "its heartbeats kept it alive: {reasons:?}"
        );
    }
}

#[test]
fn a_crashed_primary_is_suspected_by_timeout_and_replaced() {
    for f in [1, 2] {
        let mut cfg = SimConfig::calm(12, f);
        cfg.byzantine = vec![(0, "crash".into())];
        let report = run(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.max_view >= 1);
        assert_eq!(
            report.accepted_requests,
            cfg.clients * cfg.requests_per_client
        );
        let reasons = report.suspected_for.get(&0).cloned().unwrap_or_default();
        assert!(reasons.contains(&Reason::Timeout), "{reasons:?}");
    }
}
