//! Run or replay simulator seeds.
//!
//! `bft-sim --seed 42 --f 1 --trace` replays one seed, printing every event;
//! `bft-sim --seeds 1000 --f 2` runs seeds 0..1000 and reports the first failure;
//! `--byzantine 3=eager-vote` overrides the seed's Byzantine replicas and
//! `--planted-commit-quorum 2` plants the test-only quorum bug and
//! `--planted-relay-rule` the node's old sender rule (no relays), and
//! `--planted-transfer-apart` state-transfer checkpoints written apart.
//! `--calm [--clients C --requests R --client-gap-ms G]` runs a fault-free configuration instead of the
//! seed's, and `--clear-byzantine-at MS` switches the Byzantine replicas back to
//! honest at that time.

use bft_consensus::sim::{run, SimConfig};
use std::process::ExitCode;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parse = |name: &str, default: u64| -> u64 {
        arg(&args, name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number"))
        })
    };
    let f = parse("--f", 1) as usize;
    let trace = args.iter().any(|a| a == "--trace");
    let planted =
        arg(&args, "--planted-commit-quorum").map(|v| v.parse::<usize>().expect("a number"));
    let (first, count) = match arg(&args, "--seed") {
        Some(s) => (s.parse().expect("--seed needs a number"), 1),
        None => (parse("--first", 0), parse("--seeds", 100)),
    };
    let mut failures = 0;
    for seed in first..first + count {
        let mut cfg = if args.iter().any(|a| a == "--calm") {
            let mut c = SimConfig::calm(seed, f);
            let number = |name: &str, default: usize| {
                arg(&args, name).map_or(default, |v| v.parse().expect("a number"))
            };
            c.clients = number("--clients", c.clients);
            c.requests_per_client = number("--requests", c.requests_per_client);
            c.client_start_gap =
                std::time::Duration::from_millis(number("--client-gap-ms", 0) as u64);
            c
        } else {
            SimConfig::randomized(seed, f)
        };
        cfg.trace = trace;
        cfg.planted_commit_quorum = planted;
        cfg.planted_relay_rule = args.iter().any(|a| a == "--planted-relay-rule");
        cfg.planted_transfer_apart = args.iter().any(|a| a == "--planted-transfer-apart");
        if let Some(ms) = arg(&args, "--clear-byzantine-at") {
            let ms: u64 = ms.parse().expect("--clear-byzantine-at needs milliseconds");
            cfg.clear_byzantine_at = Some(std::time::Duration::from_millis(ms));
        }
        if let Some(spec) = arg(&args, "--byzantine") {
            // ID=BEHAVIOUR[,ID=BEHAVIOUR...]: replaces the seed's own choice.
            cfg.byzantine = spec
                .split(',')
                .map(|one| {
                    let (id, name) = one.split_once('=').expect("--byzantine ID=BEHAVIOUR");
                    (id.parse().expect("replica id"), name.to_string())
                })
                .collect();
        }
        match run(&cfg) {
            Ok(r) => {
                if count == 1 || trace {
                    println!("seed {seed}: ok {r:?}");
                }
            }
            Err(fail) => {
                failures += 1;
                println!("{fail}");
                if count > 1 {
                    break;
                }
            }
        }
    }
    if failures == 0 {
        println!("{count} seeds passed (f={f})");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
