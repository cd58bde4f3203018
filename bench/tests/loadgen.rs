//! The load generator end to end: against the in-process unreplicated baseline,
//! and as the `bftnode-bench` binary against a testnet it starts itself, checking
//! the JSON of INTERFACE.md, the CSV and the plot.

use bft_bench::loadgen::{self, LoadConfig, Mode, WriteOp};
use bft_bench::unreplicated::Unreplicated;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The tests that measure run one at a time: `cargo test` runs a binary's tests
/// in parallel, and the open-loop rate and the clients' capacity asserted below
/// hold on a quiet machine, not beside a four-replica testnet on the same 2 cores.
static MEASURING: Mutex<()> = Mutex::new(());

fn measuring() -> MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The standard output of a command that must have succeeded (else its output).
fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn config(mode: Mode) -> LoadConfig {
    LoadConfig {
        mode,
        clients: 4,
        // Two clients per connection: replies to both find their way back.
        connections: 2,
        payload: 512,
        keys: 100,
        read_ratio: 0.0,
        ordered_reads: false,
        write: WriteOp::Set,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
        progress: false,
    }
}

#[test]
fn closed_and_open_loop_against_the_baseline() {
    let _quiet = measuring();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = Unreplicated::start().unwrap();
        let closed = loadgen::run(
            &server.validators,
            &config(Mode::ClosedLoop { outstanding: 4 }),
            None,
        )
        .await
        .unwrap();
        assert_eq!(closed.errors, 0);
        assert!(closed.measured > 0 && closed.committed >= closed.measured);
        assert_eq!(closed.latency_us.len(), closed.measured);
        assert!(closed.sent >= closed.committed);

        // Open loop at 200 req/s for 2.5 s offers about 500 requests, no more.
        let open = loadgen::run(
            &server.validators,
            &config(Mode::OpenLoop { rate: 200.0 }),
            None,
        )
        .await
        .unwrap();
        assert_eq!(open.errors, 0);
        assert!((450..=505).contains(&open.sent), "sent {}", open.sent);
        let rps = open.throughput();
        assert!(
            (150.0..=250.0).contains(&rps),
            "{rps} req/s at an offered 200"
        );
        assert_eq!(open.read_latency_us.len(), 0);

        // A quarter reads: each client's every fourth request is a read-only get.
        let mixed = LoadConfig {
            read_ratio: 0.25,
            ..config(Mode::ClosedLoop { outstanding: 4 })
        };
        let mixed = loadgen::run(&server.validators, &mixed, None)
            .await
            .unwrap();
        assert_eq!(mixed.errors, 0);
        let (reads, writes) = (mixed.read_latency_us.len(), mixed.write_latency_us.len());
        assert_eq!(reads + writes, mixed.measured);
        let share = reads as f64 / mixed.measured as f64;
        assert!(
            (0.2..=0.3).contains(&share),
            "{reads} reads of {}",
            mixed.measured
        );
    });
}

/// `bftnode bench --help` is the load generator's own help (issue 16: it showed
/// only `[ARGS]...`). The replicas' binary sits beside the bench's, as in a build.
#[test]
fn bftnode_bench_help_lists_the_load_generators_options() {
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_bftnode-bench"));
    let out = Command::new(bench.with_file_name("bftnode"))
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for option in [
        "--outstanding",
        "--rate",
        "--testnet",
        "--clients",
        "--json",
    ] {
        assert!(stdout.contains(option), "{option} not in:\n{stdout}");
    }
}

#[test]
fn two_builds_compare_pair_by_pair_in_abba_order() {
    let _quiet = measuring();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_bftnode-bench"));
    // The same code on both sides, the old one a copy elsewhere: what matters
    // here is the procedure, and that each side runs its own binary.
    let old = dir.path().join("bftnode-old");
    std::fs::copy(bench.with_file_name("bftnode"), &old).unwrap();
    let old = std::fs::canonicalize(&old).unwrap();
    let out = Command::new(&bench)
        .arg("--compare-with")
        .arg(&old)
        .args(["--pairs", "2", "--outstanding", "8", "--duration", "1"])
        .args(["--warmup", "0.5", "--quiet", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let order: Vec<&str> = stdout.lines().filter(|l| l.starts_with("pair ")).collect();
    assert_eq!(order.len(), 4, "{stdout}");
    assert_eq!(order[0], format!("pair 1 of 2: old ({})", old.display()));
    assert!(order[1].starts_with("pair 1 of 2: new (") && !order[1].contains("bftnode-old"));
    assert!(order[2].starts_with("pair 2 of 2: new ("), "{stdout}");
    assert!(order[3].starts_with("pair 2 of 2: old ("), "{stdout}");
    assert_eq!(stdout.matches("SUMMARY").count(), 4, "{stdout}");
    assert!(stdout.contains("COMPARISON"), "{stdout}");
    assert!(stdout.contains("2 pairs in ABBA order"), "{stdout}");
    let comparison = &stdout[stdout.find("COMPARISON").unwrap()..];
    for measure in [
        "cpu machine",
        "cpu ratio",
        "cpu replica0",
        "throughput",
        "latency p50",
    ] {
        let line = comparison
            .lines()
            .find(|l| l.trim_start().starts_with(measure))
            .unwrap_or_else(|| panic!("no {measure} line in {comparison}"));
        assert!(line.contains("of 2"), "{line}");
    }
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let builds: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["build"].as_str().unwrap())
        .collect();
    assert_eq!(builds, ["old", "new", "new", "old"]);
    assert!(runs.as_array().unwrap().iter().all(|r| r["errors"] == 0));

    // A path that is not a binary is refused before anything runs.
    let out = Command::new(&bench)
        .arg("--compare-with")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a bftnode binary"));
    // No pairs, or a sweep beside it, is refused too.
    for extra in [&["--pairs", "0"][..], &["--sweep", "100,200"][..]] {
        let out = Command::new(&bench)
            .arg("--compare-with")
            .arg(&old)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
    }
}

#[test]
fn the_binary_reports_json_csv_and_a_plot() {
    let _quiet = measuring();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let csv = dir.path().join("run.csv");
    let svg = dir.path().join("plot.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_bftnode-bench"))
        .args(["--replicas", "4", "--sweep", "100,200", "--clients", "8"])
        .args(["--duration", "2", "--warmup", "1", "--quiet", "--baseline"])
        .args(["--read-ratio", "0.5", "--write", "put"])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert_eq!(stdout.matches("SUMMARY").count(), 4, "{stdout}");
    assert!(stdout.contains("replicated / unreplicated"), "{stdout}");
    // Beside each ratio, the ratio if agreement cost nothing, for 4 replicas of
    // which 3 check each write and all 4 each read (half the requests here).
    let at_costs: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("at the baseline's costs: "))
        .inspect(|rest| {
            assert!(
                rest.contains("(4 replicas") && rest.contains("3.50 checks a request"),
                "{rest}"
            );
        })
        .map(|rest| rest.split('%').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(at_costs.len(), 2, "{stdout}");

    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        for key in ["throughput_rps", "sent", "committed", "errors", "config"] {
            assert!(!r[key].is_null(), "{key} missing in {r}");
        }
        for q in ["p50", "p90", "p99", "max"] {
            assert!(r["latency_ms"][q].as_f64().unwrap() > 0.0, "{r}");
        }
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["committed"].as_u64().unwrap() > 0);
        // Half the requests were read-only gets, and each kind is reported.
        assert_eq!(r["config"]["read_ratio"], 0.5, "{r}");
        // Its writes were puts (answered with what they replaced), the library's
        // runs above sets.
        assert_eq!(r["config"]["write"], "put", "{r}");
        for kind in ["read_latency_ms", "write_latency_ms"] {
            assert!(r[kind]["p50"].as_f64().unwrap() > 0.0, "{kind} in {r}");
        }
        // CPU per request: the machine's and each process's, all positive.
        let cpu = &r["cpu_us_per_request"];
        assert!(cpu["machine"].as_f64().unwrap() > 0.0, "{r}");
        let processes = cpu["processes"].as_object().unwrap();
        let expected: Vec<&str> = if r["config"]["kind"] == "replicated" {
            vec!["loadgen", "replica0", "replica1", "replica2", "replica3"]
        } else {
            vec!["baseline", "loadgen"]
        };
        assert_eq!(
            processes.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{r}"
        );
        // The machine ran these processes, so it was busy at least as long as they
        // were (half: /proc cuts each thread's user and system time to 10 ms).
        // Reading the busy time off the kernel's tick samples once gave 0.0 here
        // (src/cpu.rs).
        let theirs: f64 = processes.values().map(|v| v.as_f64().unwrap()).sum();
        assert!(cpu["machine"].as_f64().unwrap() >= theirs / 2.0, "{r}");
        // The replicas do real work for every request (10 ms ticks over 2 s).
        assert!(
            processes.values().all(|v| v.as_f64().unwrap() >= 0.0),
            "{r}"
        );
        let replicas_busy = processes
            .iter()
            .filter(|(k, _)| k.starts_with("replica") || *k == "baseline")
            .all(|(_, v)| v.as_f64().unwrap() > 0.0);
        assert!(replicas_busy, "{r}");
        // The drift control: the served processes' CPU over the load generator's.
        let ratio = &r["cpu_servers_per_loadgen"];
        let loadgen = processes["loadgen"].as_f64().unwrap();
        let served: f64 = processes
            .iter()
            .filter(|(k, _)| *k != "loadgen")
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        if loadgen > 0.0 {
            assert!(
                (ratio.as_f64().unwrap() - served / loadgen).abs() < 1e-9,
                "{r}"
            );
        } else {
            assert!(ratio.is_null(), "{r}");
        }
        assert!(
            r["context_switches_per_request"]["machine"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        // Each replica's phases, read from its /metrics: every replica checks
        // signatures (requests or votes), handles them and sends in the window.
        let phases = &r["loop_cpu_us_per_request"];
        if r["config"]["kind"] == "replicated" {
            let replicas = phases.as_object().unwrap();
            assert_eq!(
                replicas.keys().map(String::as_str).collect::<Vec<_>>(),
                ["replica0", "replica1", "replica2", "replica3"],
                "{r}"
            );
            for by_phase in replicas.values() {
                let by_phase = by_phase.as_object().unwrap();
                assert_eq!(
                    by_phase.keys().map(String::as_str).collect::<Vec<_>>(),
                    ["handle", "outputs", "verify"],
                    "{r}"
                );
                assert!(by_phase.values().all(|v| v.as_f64().unwrap() > 0.0), "{r}");
            }
        } else {
            // The baseline server's signature checks, from its threads' CPU clocks.
            let baseline = phases.as_object().unwrap();
            assert_eq!(baseline.keys().collect::<Vec<_>>(), ["baseline"], "{r}");
            assert!(phases["baseline"]["verify"].as_f64().unwrap() > 0.0, "{r}");
        }
        // Open loop at 100-200 req/s with 8 clients is far from their capacity.
        assert!(r["client_capacity_rps"].as_f64().unwrap() > 200.0, "{r}");
        assert!(r["client_wait_ms"]["p50"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(runs[0]["config"]["kind"], "replicated");
    assert_eq!(runs[0]["config"]["replicas"], 4);
    assert_eq!(runs[3]["config"]["kind"], "unreplicated");
    // Each printed figure is the unreplicated run's own, recomputed from its JSON:
    // (L + S) / (L + 3.5 V + 4 (S - V)), V at most S.
    for (printed, u) in at_costs.iter().zip(&runs[2..]) {
        let cpu = |name: &str| u["cpu_us_per_request"]["processes"][name].as_f64().unwrap();
        let (l, s) = (cpu("loadgen"), cpu("baseline"));
        let v = u["loop_cpu_us_per_request"]["baseline"]["verify"]
            .as_f64()
            .unwrap()
            .min(s);
        let expected = 100.0 * (l + s) / (l + 3.5 * v + 4.0 * (s - v));
        assert!(
            (printed - expected).abs() < 0.051,
            "{printed} against {expected} in {u}"
        );
    }

    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("target,replicas,rate"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "p50 and p99 per target"
    );
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_bftnode-bench"))
        .args(["--rate=-5", "--unreplicated"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rates must be positive"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
