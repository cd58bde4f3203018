//! Thousands of seeded simulations with faults on: drops, duplicates, reordering,
//! delays, partitions, crashes with restart from persisted state, and up to f
//! Byzantine replicas. Every DESIGN.md invariant is checked after every step.
//!
//! `SIM_SEEDS=N` changes the number of seeds per f (default 1000). A failure prints
//! the seed, the configuration, the last events and the command that replays it.

use bft_consensus::sim::{run, Family, SimConfig, SimReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Run `count` seeds of the basic family over all cores; return the reports, or
/// panic with the first failure.
fn sweep(f: usize, count: u64) -> Vec<SimReport> {
    sweep_family(Family::Basic, f, count)
}

/// Run `count` seeds of `family` over all cores.
fn sweep_family(family: Family, f: usize, count: u64) -> Vec<SimReport> {
    let next = AtomicU64::new(0);
    let reports = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= count || failure.lock().unwrap().is_some() {
                    return;
                }
                match run(&family.config(seed, f)) {
                    Ok(r) => reports.lock().unwrap().push(r),
                    Err(e) => {
                        failure.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        panic!("simulation of the {family} family failed (f={f}):\n{e}");
    }
    reports.into_inner().unwrap()
}

/// The sweep must actually exercise the machinery it claims to test.
fn assert_faults_were_exercised(reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| r.crashes) > 0, "no crash happened");
    assert!(sum(|r| r.view_changes) > 0, "no view change happened");
    assert!(sum(|r| r.state_transfers) > 0, "no state transfer happened");
    assert!(
        sum(|r| r.stable_checkpoints) > 0,
        "no checkpoint became stable"
    );
    assert!(sum(|r| r.messages_dropped) > 0, "no message was dropped");
    assert!(sum(|r| r.rejections) > 0, "no invalid message was rejected");
    assert!(
        reports.iter().all(|r| r.accepted_requests > 0),
        "a run accepted nothing"
    );
    assert!(
        sum(|r| r.reads_accepted as u64) > 0,
        "no read-only result was accepted"
    );
    assert!(
        sum(|r| r.tentative_executions) > 0,
        "nothing executed tentatively"
    );
    assert!(
        sum(|r| r.rollbacks) > 0,
        "no tentative execution was rolled back"
    );
    let mut needed: Vec<u64> = reports
        .iter()
        .filter(|r| r.catch_up_requests > 0)
        .map(|r| r.seed)
        .collect();
    needed.sort_unstable();
    println!(
        "{} of {} runs: every honest replica caught up without new requests (others: seeds {:?})",
        reports.len() - needed.len(),
        reports.len(),
        needed
    );
}

#[test]
fn thousand_seeds_f1_with_faults() {
    let reports = sweep(1, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_faults_were_exercised(&reports);
}

#[test]
fn thousand_seeds_f2_with_faults() {
    let reports = sweep(2, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_faults_were_exercised(&reports);
}

/// The storage family must have exercised what it models.
fn assert_storage_faults_were_exercised(reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| r.crashes) > 0, "no crash happened");
    assert!(sum(|r| r.write_groups) > 0, "no grouped write happened");
    assert!(
        sum(|r| r.unsynced_writes) > 0,
        "no group of records alone was written unsynced"
    );
    assert!(
        sum(|r| r.unsynced_lost) > 0,
        "no crash lost records written unsynced"
    );
    assert!(
        sum(|r| r.refused_starts) > 0,
        "no damaged store was refused"
    );
    assert!(sum(|r| r.state_transfers) > 0, "no state transfer happened");
    assert!(sum(|r| r.view_changes) > 0, "no view change happened");
}

#[test]
fn thousand_seeds_f1_storage_family() {
    let reports = sweep_family(Family::Storage, 1, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_storage_faults_were_exercised(&reports);
}

#[test]
fn thousand_seeds_f2_storage_family() {
    let reports = sweep_family(Family::Storage, 2, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_storage_faults_were_exercised(&reports);
}

/// The adversarial family: Byzantine replicas did send hostile messages that were
/// refused, crashed, and the runs still changed views.
fn assert_adversaries_were_exercised(reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| r.crashes) > 0, "no crash happened");
    assert!(sum(|r| r.view_changes) > 0, "no view change happened");
    assert!(sum(|r| r.rejections) > 0, "no hostile message was refused");
    assert!(sum(|r| r.state_transfers) > 0, "no state transfer happened");
}

#[test]
fn thousand_seeds_f1_adversarial_family() {
    let reports = sweep_family(Family::Adversarial, 1, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_adversaries_were_exercised(&reports);
}

#[test]
fn thousand_seeds_f2_adversarial_family() {
    let reports = sweep_family(Family::Adversarial, 2, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_adversaries_were_exercised(&reports);
}

/// The Twins family: partitions by round did split the group (messages dropped)
/// and the twins' double votes were seen and refused somewhere.
fn assert_twins_were_exercised(reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(
        sum(|r| r.messages_dropped) > 0,
        "no partition dropped anything"
    );
    assert!(sum(|r| r.rejections) > 0, "no twin's vote was refused");
    assert!(sum(|r| r.view_changes) > 0, "no view change happened");
}

#[test]
fn thousand_seeds_f1_twins_family() {
    let reports = sweep_family(Family::Twins, 1, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_twins_were_exercised(&reports);
}

#[test]
fn thousand_seeds_f2_twins_family() {
    let reports = sweep_family(Family::Twins, 2, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_twins_were_exercised(&reports);
}

/// The stalls family: replicas did stall, primaries past the request timer too.
fn assert_stalls_were_exercised(reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| r.stalls) > 0, "no replica stalled");
    assert!(
        sum(|r| r.long_primary_stalls) > 0,
        "no primary stalled past the request timer"
    );
    assert!(sum(|r| r.view_changes) > 0, "no view change happened");
    assert!(sum(|r| r.suspicion_changes) > 0, "no stall was suspected");
}

#[test]
fn thousand_seeds_f1_stalls_family() {
    let reports = sweep_family(Family::Stalls, 1, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_stalls_were_exercised(&reports);
}

#[test]
fn thousand_seeds_f2_stalls_family() {
    let reports = sweep_family(Family::Stalls, 2, seeds());
    assert_eq!(reports.len() as u64, seeds());
    assert_stalls_were_exercised(&reports);
}

#[test]
fn calm_network_commits_everything_without_view_changes() {
    for f in [1, 2] {
        let cfg = SimConfig::calm(7, f);
        let r = run(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.accepted_requests, cfg.clients * cfg.requests_per_client);
        assert!(r.reads_accepted > 0, "no get went read-only");
        assert_eq!(r.view_changes, 0);
        assert_eq!(r.crashes, 0);
        assert_eq!(r.rejections, 0);
        assert!(r.stable_checkpoints > 0);
    }
}

#[test]
fn every_core_behaviour_at_f_replicas_keeps_safety_and_liveness() {
    for behaviour in bft_consensus::byzantine::CORE_BEHAVIOURS.iter() {
        for f in [1, 2] {
            for seed in 0..6 {
                let mut cfg = SimConfig::randomized(10_000 + seed, f);
                // f replicas misbehave, the primary of view 0 among them.
                cfg.byzantine = (0..f as u32)
                    .map(|id| (id, (*behaviour).to_string()))
                    .collect();
                if let Err(e) = run(&cfg) {
                    panic!("behaviour {behaviour}:\n{e}");
                }
            }
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    for cfg in [SimConfig::randomized(42, 1), SimConfig::stalls(42, 1)] {
        let a = run(&cfg).unwrap();
        let b = run(&cfg).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

/// Issue 11, defect 8: a primary switched to `silent` and back (`byzantine clear`)
/// rejoins: within seconds of the clear it has executed what the others have,
/// without any new request. (Before, it stayed at seq 1 alone in view 2 while the
/// others reached 6: `bft-sim --seed 11 --f 1 --calm --clients 6 --requests 1
/// --client-gap-ms 1500 --byzantine 0=silent --clear-byzantine-at 12000`.)
#[test]
fn a_silent_primary_switched_back_to_honest_catches_up() {
    for f in [1, 2] {
        // Six `bftnode client put`s one after the other: each a fresh client that
        // first asks the primary of view 0. The silent primary's timer fires before
        // the client's retransmission, and it asks alone for view 2.
        let mut cfg = SimConfig::calm(11, f);
        cfg.clients = 6;
        cfg.requests_per_client = 1;
        cfg.client_start_gap = std::time::Duration::from_millis(1500);
        cfg.byzantine = vec![(0, "silent".to_string())];
        cfg.clear_byzantine_at = Some(std::time::Duration::from_secs(12));
        if let Err(e) = run(&cfg) {
            panic!("f={f}:\n{e}");
        }
    }
}
