//! The simulator has teeth: with a planted bug (commit on f+1 matching commits
//! instead of 2f+1) and one replica that votes eagerly, it finds an agreement
//! violation; the very same seed with the correct quorum passes.

use bft_consensus::sim::{run, SimConfig};

fn hunt_config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::randomized(seed, 1);
    cfg.byzantine = vec![(3, "eager-vote".to_string())];
    cfg.faults.drop = cfg.faults.drop.max(0.2);
    cfg.faults.crash = 0.0;
    cfg
}

#[test]
fn planted_f_plus_1_commit_quorum_is_caught_as_an_agreement_violation() {
    let found = (0..400u64).find_map(|seed| {
        let mut cfg = hunt_config(seed);
        cfg.planted_commit_quorum = Some(2);
        match run(&cfg) {
            Err(failure) if failure.violation.invariant == "agreement" => Some((seed, failure)),
            _ => None,
        }
    });
    let (seed, failure) =
        found.expect("the simulator should find the planted agreement bug within 400 seeds");
    println!("planted bug found: {failure}");
    // The same seed with the real 2f+1 quorum is safe and live.
    let correct = run(&hunt_config(seed));
    assert!(
        correct.is_ok(),
        "seed {seed} fails even without the planted bug: {}",
        correct.unwrap_err()
    );
}
