//! The simulator has teeth: each planted bug is found by a sweep, and the very same
//! seed without the bug passes.
//! - commit on f+1 matching commits instead of 2f+1 (with one replica that votes
//!   eagerly): an agreement violation;
//! - the node's old sender rule (a replica message only over its signer's own
//!   connection): retransmission's relays are lost and a laggard stays behind;
//! - the same quorum bug, with a Twins pair as the only adversary;
//! - requests larger than a batch admitted: a Byzantine client's huge request makes
//!   an honest primary propose a batch every backup refuses;
//! - a checkpoint installed by state transfer written apart: a crash restarts the
//!   replica behind a checkpoint it signed (in the basic family, and in the storage
//!   family, where writes are grouped as the node groups them);
//! - every backup taking pre-prepares' requests unchecked, under a primary that
//!   forges requests: a request no client issued is executed; and one skipping
//!   backup more than the rule allows: an honest replica sends what another refuses.

use bft_consensus::sim::{run, Family, SimConfig};

fn hunt_config(seed: u64) -> SimConfig {
    let mut cfg = pinned(Family::Basic, seed, 1);
    cfg.byzantine = vec![(3, "eager-vote".to_string())];
    cfg.faults.drop = cfg.faults.drop.max(0.2);
    cfg.faults.crash = 0.0;
    cfg
}

/// The seed's configuration with one batch in flight: the conditions each plant
/// was found under (the sweeps draw the bound; the hunts' seed windows predate it).
fn pinned(family: Family, seed: u64, f: usize) -> SimConfig {
    let mut cfg = family.config(seed, f);
    cfg.max_batches_in_flight = 1;
    cfg
}

#[test]
fn planted_f_plus_1_commit_quorum_is_caught_as_an_agreement_violation() {
    // Seeds 16, 115 and 156 violated agreement until clients backed their
    // retransmission off (issue 13, sixth round); since then the first was 447,
    // since digest replies (issue 13, eighth round) 526, and since the primary waits
    // twice a backup's request timer (issue 13, nineteenth round: fewer view
    // changes) it is 952.
    let found = (0..1000u64).find_map(|seed| {
        let mut cfg = hunt_config(seed);
        cfg.planted_commit_quorum = Some(2);
        match run(&cfg) {
            Err(failure) if failure.violation.invariant == "agreement" => Some((seed, failure)),
            _ => None,
        }
    });
    let (seed, failure) =
        found.expect("the simulator should find the planted agreement bug within 1000 seeds");
    println!("planted bug found: {failure}");
    // The same seed with the real 2f+1 quorum is safe and live.
    let correct = run(&hunt_config(seed));
    assert!(
        correct.is_ok(),
        "seed {seed} fails even without the planted bug: {}",
        correct.unwrap_err()
    );
}

/// Find the first seed in `seeds` whose run with `plant` applied violates
/// `invariant`, then check that seed passes without the plant.
fn hunt(f: usize, seeds: std::ops::Range<u64>, invariant: &str, plant: fn(&mut SimConfig)) {
    hunt_in(Family::Basic, f, seeds, invariant, plant);
}

/// [`hunt`] in the seeds of `family`.
fn hunt_in(
    family: Family,
    f: usize,
    seeds: std::ops::Range<u64>,
    invariant: &str,
    plant: fn(&mut SimConfig),
) {
    hunt_with(family, f, seeds, invariant, |_| {}, plant);
}

/// [`hunt_in`] with `base` applied to the seed's configuration, with the plant
/// and without.
fn hunt_with(
    family: Family,
    f: usize,
    seeds: std::ops::Range<u64>,
    invariant: &str,
    base: fn(&mut SimConfig),
    plant: fn(&mut SimConfig),
) {
    let configured = |seed| {
        let mut cfg = pinned(family, seed, f);
        base(&mut cfg);
        cfg
    };
    let found = seeds.clone().find_map(|seed| {
        let mut cfg = configured(seed);
        plant(&mut cfg);
        match run(&cfg) {
            Err(failure) if failure.violation.invariant == invariant => Some((seed, failure)),
            _ => None,
        }
    });
    let (seed, failure) = found.unwrap_or_else(|| {
        panic!(
            "the planted bug was not found as a {invariant} violation in {family} seeds {seeds:?}"
        )
    });
    println!("planted bug found: {failure}");
    let correct = run(&configured(seed));
    assert!(
        correct.is_ok(),
        "seed {seed} fails even without the planted bug: {}",
        correct.unwrap_err()
    );
}

#[test]
fn planted_no_relay_sender_rule_is_caught_as_a_liveness_failure() {
    // Found at seed 676 when it was planted (issue 11, defect 1), later at seed
    // 993, where the primary had left view 0 alone and, with relays undone, never
    // got back; at seed 698 (a replica stuck in view 2 while the others order in
    // view 1) since backups follow a primary that leaves its view and the primary
    // waits twice a backup's request timer (issue 13, nineteenth round); at seed
    // 1322 (none in 600..1322) since one checkpoint job in eight before the heal may
    // take up to 1.5 s in the simulator (issue 13, twenty-fifth round).
    hunt(1, 1310..1350, "liveness", |c| c.planted_relay_rule = true);
}

#[test]
fn planted_state_transfer_checkpoint_written_apart_is_caught_as_a_durability_failure() {
    // Found at seed 111 when it was planted (issue 11, defect 4); at seed 454 since
    // issue 12's fixes changed how restarts and catch-up go. Issue 15's read-only
    // gets left fewer ordered requests, so fewer checkpoints and state transfers:
    // none in seeds 0..4000 of 8 to 20 requests per client, seed 826 with 40; seed
    // 891 since clients back their retransmission off (issue 13, sixth round); seed
    // 1060 since the simulator's values grew long enough for digest replies (issue
    // 13, eighth round); seed 1463 (the first in 0..4000) since `forge-request`
    // joined the behaviours every family draws and a request's digest covers its
    // signature (issue 13, ninth round); seed 1507 since a checkpoint's snapshot is
    // taken off the loop and its vote waits for it (issue 13, twenty-fifth round),
    // seed 1781 (the first in 1440..1781) once the simulator let one job in eight
    // take up to 1.5 s before the heal.
    hunt_with(
        Family::Basic,
        1,
        1770..1810,
        "durability",
        |c| c.requests_per_client = 40,
        |c| c.planted_transfer_apart = true,
    );
}

#[test]
fn storage_family_catches_a_state_transfer_checkpoint_written_apart() {
    // Found at seed 2075 (f=1) by `bft-sim --family storage --planted-transfer-apart`
    // when it was planted, at seed 802 once the families' fixes changed the runs,
    // and at seed 1060 since clients adapt their retransmission timeout and a
    // primary that orders keeps its view (issue 13): the write apart lost in a crash
    // after the group write, the replica restarted at seq 0 behind the checkpoint 16
    // it had signed; at seed 632 since issue 15 changed the runs; at seed 1425 (the
    // first in 0..4000) since clients back their retransmission off (issue 13,
    // sixth round). Since records no frame waits for are written unsynced and a
    // crash keeps any prefix of them (issue 13, fourteenth round), no seed in
    // 0..9000 finds it with the pipeline pinned to one batch in flight; with the
    // family's own draw (1 to 4, as `bft-sim --family storage` runs it) seed 321
    // does, the first in 0..4000. Why it drifts so far: the bug needs a replica to
    // install a checkpoint by state transfer, execute on to the next checkpoint and
    // sign it, then crash before the write apart lands (0 to 250 ms). In seeds
    // 0..4000 (pinned, planted) that sequence came 7 times before lazy sync (3
    // violations) and 2 times after (both crashes after 224 ms, once the write had
    // landed), while installs (1752 and 1705) and the delays from any executed
    // checkpoint to the next crash were the same: a rare event's count, not a
    // mechanism (`--batches-in-flight 1 --trace`, counted by script). Seed 2940
    // (the first in 300..2940) since a checkpoint's vote waits for its snapshot job,
    // which the simulator delivers 0 to 40 ms later (issue 13, twenty-fifth round);
    // seed 3814 (the first in 300..3814) once one job in eight before the heal may
    // take up to 1.5 s.
    hunt_with(
        Family::Storage,
        1,
        3800..3840,
        "durability",
        |c| c.max_batches_in_flight = Family::Storage.config(c.seed, c.f).max_batches_in_flight,
        |c| c.planted_transfer_apart = true,
    );
}

#[test]
fn twins_family_catches_an_f_plus_1_commit_quorum() {
    // Found at seed 57 (f=1) by `bft-sim --family twins --planted-commit-quorum 2`:
    // the twins' two histories each gathered f+1 commits and two honest replicas
    // executed different batches at seq 35. No behaviour written for it: the twin
    // alone, by following the protocol in two partitions, is the adversary. At seed
    // 37 since issue 15 changed the runs; at seed 144 since digest replies (issue
    // 13, eighth round); at seed 205 since backups follow a primary out of its view
    // and the primary waits twice a backup's request timer (nineteenth round).
    hunt_in(Family::Twins, 1, 200..260, "agreement", |c| {
        c.planted_commit_quorum = Some(2)
    });
}

#[test]
fn adversarial_family_catches_requests_larger_than_a_batch_admitted() {
    // Found at seed 5 (f=1) by `bft-sim --family adversarial
    // --planted-no-request-size-check`: a Byzantine client's request of 131,188
    // bytes reached the primary, which proposed it alone; every backup refused a
    // batch over 131,072 bytes from an honest primary (defect 2's pattern: a view
    // change per request). Only this family has Byzantine clients.
    hunt_in(Family::Adversarial, 1, 0..60, "honest-sender", |c| {
        c.planted_no_request_size_check = true
    });
}

/// The Basic family's seed with replica 3 answering read-only requests from a
/// stale cache (`stale-reads`).
fn stale_reader(seed: u64) -> SimConfig {
    let mut cfg = pinned(Family::Basic, seed, 1);
    cfg.byzantine = vec![(3, "stale-reads".to_string())];
    cfg
}

#[test]
fn planted_f_plus_1_read_quorum_is_caught_as_a_stale_read() {
    // Issue 15: a client that accepts a read-only result on f+1 matching replies
    // takes the faulty replica's stale value when one correct replica had not
    // executed the latest write yet. With 2f+1 the same seed is linearizable.
    // Found at seed 52 (f=1) when it was planted; at seed 122 since digest replies
    // changed the runs (issue 13, eighth round); at seed 276 (the first in 100..276)
    // since a checkpoint's snapshot is taken off the loop, and at seed 317 (the
    // first in 100..317) once some of its jobs may take up to 1.5 s (twenty-fifth
    // round).
    let seeds = 300..340u64;
    let found = seeds.clone().find_map(|seed| {
        let mut cfg = stale_reader(seed);
        cfg.planted_read_quorum = Some(2);
        match run(&cfg) {
            Err(failure) if failure.violation.invariant == "linearizability" => {
                Some((seed, failure))
            }
            _ => None,
        }
    });
    let (seed, failure) = found.unwrap_or_else(|| {
        panic!("the planted read quorum was not found as a stale read in seeds {seeds:?}")
    });
    println!("planted bug found at seed {seed}: {failure}");
    let correct = run(&stale_reader(seed));
    assert!(
        correct.is_ok(),
        "seed {seed} fails even without the planted bug: {}",
        correct.unwrap_err()
    );
    assert!(
        correct.unwrap().reads_accepted > 0,
        "no read-only result was accepted"
    );
}

#[test]
fn planted_all_backups_skipping_request_checks_is_caught_as_a_validity_violation() {
    // Issue 13, ninth round: f backups per sequence number take a pre-prepare's
    // requests unchecked (`request_checks`). With every backup skipping, a primary
    // that forges requests (`forge-request`) has its batch prepared and executed:
    // found at seed 0 (f=1), "replica 2 executed a request no client issued". With
    // the rule's f skippers the same seed is safe and live.
    hunt_with(
        Family::Basic,
        1,
        0..20,
        "validity",
        |c| c.byzantine = vec![(0, "forge-request".to_string())],
        |c| c.planted_request_check_skippers = Some(3),
    );
}

#[test]
fn planted_one_skipping_backup_too_many_is_caught() {
    // The rule's bound is tight: with one backup more than quorum - (f+1) taking a
    // pre-prepare's requests unchecked, a forging primary's batch gathers a
    // prepared certificate at the skipping backups, which then relay it or carry
    // it in their view-changes, and a checking replica refuses what an honest one
    // sent: found at seed 0 (f=1) with two skippers, "replica 1 rejected a message
    // from honest replica 3: signature does not verify".
    hunt_with(
        Family::Basic,
        1,
        0..20,
        "honest-sender",
        |c| c.byzantine = vec![(0, "forge-request".to_string())],
        |c| c.planted_request_check_skippers = Some(2),
    );
}
