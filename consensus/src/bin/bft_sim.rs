//! Run or replay simulator seeds, one fault family at a time.
//!
//! `bft-sim --family storage --seeds 1000 --f 2` runs seeds 0..1000 of the storage
//! family and prints `1000 seeds passed (f=2)` or the first failure with the command
//! that replays it; `bft-sim --seed 42 --f 1 --trace` replays one seed, printing
//! every event. `--help` lists the families and the test-only planted bugs.

use bft_consensus::sim::{run, Family, SimConfig};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bft-sim",
    about = "Deterministic PBFT simulation: sweep or replay seeds"
)]
struct Args {
    /// The fault family (listed below).
    #[arg(long, default_value = "basic")]
    family: Family,
    /// Tolerated faults: n = 3f+1 replicas.
    #[arg(long, default_value_t = 1)]
    f: usize,
    /// Run this one seed (and print its report).
    #[arg(long, conflicts_with_all = ["seeds", "first"])]
    seed: Option<u64>,
    /// How many seeds to sweep, from `--first`.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Print every event.
    #[arg(long)]
    trace: bool,
    /// A fault-free run instead of the family's (with the three options below).
    #[arg(long)]
    calm: bool,
    #[arg(long, requires = "calm")]
    clients: Option<usize>,
    #[arg(long, requires = "calm")]
    requests: Option<usize>,
    #[arg(long, requires = "calm", default_value_t = 0)]
    client_gap_ms: u64,
    /// ID=BEHAVIOUR[,ID=BEHAVIOUR...]: replaces the seed's Byzantine replicas.
    #[arg(long)]
    byzantine: Option<String>,
    /// Switch every Byzantine replica back to honest at this time.
    #[arg(long, value_name = "MS")]
    clear_byzantine_at: Option<u64>,
    /// Planted bug (tests only): commit on this many commits instead of 2f+1.
    #[arg(long, value_name = "QUORUM")]
    planted_commit_quorum: Option<usize>,
    /// Planted bug: the node's old sender rule, which undid every relay.
    #[arg(long)]
    planted_relay_rule: bool,
    /// Planted bug: checkpoints installed by state transfer written apart.
    #[arg(long)]
    planted_transfer_apart: bool,
    /// Planted bug: admit client requests larger than a batch may be.
    #[arg(long)]
    planted_no_request_size_check: bool,
    /// Replicas execute only committed batches (no tentative execution).
    #[arg(long)]
    no_tentative: bool,
    /// Planted bug: clients accept read-only results on this many matching replies
    /// instead of 2f+1.
    #[arg(long, value_name = "QUORUM")]
    planted_read_quorum: Option<usize>,
    /// Planted bug: this many backups per sequence number accept a pre-prepare
    /// without checking its requests' client signatures (the rule allows
    /// quorum - (f+1)).
    #[arg(long, value_name = "BACKUPS")]
    planted_request_check_skippers: Option<usize>,
    /// Replaces the seed's bound on batches in flight (the planted-bug hunts pin
    /// it to 1).
    #[arg(long, value_name = "N")]
    batches_in_flight: Option<u64>,
    /// Replicas' processes or disks stall (the stalls family's fault), each for
    /// 20 ms up to this long, over a chaos phase of at least 6 s; with `--calm`,
    /// stalls are the only fault. Turns on grouped writes, which disk stalls hold up.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..))]
    stall_ms: Option<u64>,
}

impl Args {
    fn config(&self, seed: u64) -> Result<SimConfig, String> {
        let mut cfg = if self.calm {
            let mut c = SimConfig::calm(seed, self.f);
            c.clients = self.clients.unwrap_or(c.clients);
            c.requests_per_client = self.requests.unwrap_or(c.requests_per_client);
            c.client_start_gap = Duration::from_millis(self.client_gap_ms);
            c.replay_args = format!(
                "--calm --clients {} --requests {} --client-gap-ms {} --seed {seed} --f {}",
                c.clients, c.requests_per_client, self.client_gap_ms, self.f
            );
            c
        } else {
            self.family.config(seed, self.f)
        };
        cfg.trace = self.trace;
        cfg.planted_commit_quorum = self.planted_commit_quorum;
        cfg.planted_relay_rule = self.planted_relay_rule;
        cfg.planted_transfer_apart = self.planted_transfer_apart;
        cfg.planted_no_request_size_check = self.planted_no_request_size_check;
        cfg.planted_read_quorum = self.planted_read_quorum;
        cfg.planted_request_check_skippers = self.planted_request_check_skippers;
        if self.no_tentative {
            cfg.tentative_execution = false;
        }
        if let Some(n) = self.batches_in_flight {
            cfg.max_batches_in_flight = n;
        }
        if let Some(longest) = self.stall_ms {
            cfg.faults.stall_ms = Some((20, longest));
            cfg.faults.chaos = cfg.faults.chaos.max(Duration::from_secs(6));
            if !cfg.storage.grouped_writes {
                cfg.storage.grouped_writes = true;
                cfg.storage.flush_us = 500;
            }
        }
        cfg.clear_byzantine_at = self.clear_byzantine_at.map(Duration::from_millis);
        if let Some(spec) = &self.byzantine {
            cfg.byzantine = spec
                .split(',')
                .map(|one| {
                    let (id, name) = one
                        .split_once('=')
                        .ok_or_else(|| format!("--byzantine wants ID=BEHAVIOUR, not {one:?}"))?;
                    let id = id
                        .parse()
                        .map_err(|_| format!("not a replica id: {id:?}"))?;
                    Ok((id, name.to_string()))
                })
                .collect::<Result<_, String>>()?;
        }
        // Everything that changed the family's configuration, so the replay is exact.
        for (on, flag) in [
            (self.planted_relay_rule, "--planted-relay-rule".to_string()),
            (
                self.planted_no_request_size_check,
                "--planted-no-request-size-check".to_string(),
            ),
            (
                self.planted_transfer_apart,
                "--planted-transfer-apart".to_string(),
            ),
            (self.no_tentative, "--no-tentative".to_string()),
        ] {
            if on {
                cfg.replay_args = format!("{} {flag}", cfg.replay_args);
            }
        }
        if let Some(q) = self.planted_commit_quorum {
            cfg.replay_args = format!("{} --planted-commit-quorum {q}", cfg.replay_args);
        }
        if let Some(q) = self.planted_read_quorum {
            cfg.replay_args = format!("{} --planted-read-quorum {q}", cfg.replay_args);
        }
        if let Some(k) = self.planted_request_check_skippers {
            cfg.replay_args = format!("{} --planted-request-check-skippers {k}", cfg.replay_args);
        }
        if let Some(n) = self.batches_in_flight {
            cfg.replay_args = format!("{} --batches-in-flight {n}", cfg.replay_args);
        }
        if let Some(ms) = self.stall_ms {
            cfg.replay_args = format!("{} --stall-ms {ms}", cfg.replay_args);
        }
        if let Some(ms) = self.clear_byzantine_at {
            cfg.replay_args = format!("{} --clear-byzantine-at {ms}", cfg.replay_args);
        }
        if let Some(spec) = &self.byzantine {
            cfg.replay_args = format!("{} --byzantine {spec}", cfg.replay_args);
        }
        Ok(cfg)
    }
}

fn families_help() -> String {
    let mut help = String::from("Families:\n");
    for family in Family::ALL {
        help.push_str(&format!("  {:<12} {}\n", family.name(), family.describe()));
    }
    help
}

/// Print a line; false once stdout is gone (a closed pipe ends the run quietly).
fn say(line: &str) -> bool {
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

fn main() -> ExitCode {
    let matches = Args::command().after_help(families_help()).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first, args.seeds),
    };
    for seed in first..first.saturating_add(count) {
        let cfg = match args.config(seed) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("bft-sim: {e}");
                return ExitCode::from(2);
            }
        };
        match run(&cfg) {
            Ok(report) => {
                if (count == 1 || args.trace) && !say(&format!("seed {seed}: ok {report:?}")) {
                    return ExitCode::FAILURE;
                }
            }
            Err(fail) => {
                say(&fail.to_string());
                return ExitCode::FAILURE;
            }
        }
    }
    if say(&format!("{count} seeds passed (f={})", args.f)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
