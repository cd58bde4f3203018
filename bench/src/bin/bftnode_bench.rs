//! `bftnode-bench` (also reachable as `bftnode bench`): the load generator of
//! INTERFACE.md. Starts its own testnet (or targets one with `--testnet`), or the
//! unreplicated baseline; runs one load or a sweep of rates; prints a SUMMARY per
//! run and writes JSON, CSV and an SVG latency-versus-throughput plot.

use anyhow::{bail, Context as _};
use bft_bench::cpu::{Probe, Source, BASELINE, BASELINE_THREAD_PREFIX};
use bft_bench::loadgen::{self, LoadConfig, Mode, WriteOp};
use bft_bench::orphans::kill_orphans;
use bft_bench::report::{self, Summary, Target};
use bft_bench::{compare, plot, unreplicated::Unreplicated};
use bft_client::config::{load_validators, ValidatorSet};
use bft_consensus::{request_checks, Membership};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bftnode-bench",
    version,
    about = "Load generator for bftnode testnets"
)]
struct Args {
    /// Start a testnet of N replicas for the run (ignored with --testnet).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Target an existing testnet directory (from `bftnode testnet init`) instead.
    #[arg(long, conflicts_with = "unreplicated")]
    testnet: Option<PathBuf>,
    /// Open loop: requests per second offered.
    #[arg(long, conflicts_with_all = ["outstanding", "sweep"])]
    rate: Option<f64>,
    /// Closed loop: requests in flight (one per client). The default mode, with 64.
    #[arg(long, conflicts_with = "sweep")]
    outstanding: Option<usize>,
    /// Open-loop sweep: run at each of these rates (comma-separated req/s).
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Clients (distinct keys) in open-loop mode.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share (each a gateway hosting clients round robin;
    /// replicas route their replies there). As many as clients gives each its own.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Value size of each write, in bytes.
    #[arg(long, default_value_t = 512)]
    payload: usize,
    /// Distinct keys the writes cycle through.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Share of requests that are read-only gets (0 to 1), the rest writes.
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Order those gets like writes instead of sending them read-only.
    #[arg(long)]
    ordered_reads: bool,
    /// What each write is: `set` (answered "written") or `put` (answered with
    /// the value it replaced).
    #[arg(long, value_enum, default_value_t = WriteOp::Set)]
    write: WriteOp,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// A request not accepted within this many seconds counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Run against the unreplicated baseline instead of a testnet.
    #[arg(long)]
    unreplicated: bool,
    /// Also run every load against the unreplicated baseline and report the ratio.
    #[arg(long, conflicts_with = "unreplicated")]
    baseline: bool,
    /// Write the summary (an array for several runs) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per run.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an SVG plot of latency against throughput (most useful with --sweep).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// Compare this build's replicas with the `bftnode` binary at PATH: run the
    /// load `--pairs` times on each, in ABBA order, each run on a fresh testnet
    /// of `--replicas`, and print the paired comparison (CPU per request by
    /// process, the servers / loadgen ratio, throughput, latency).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["testnet", "unreplicated", "baseline", "sweep", "csv", "plot"]
    )]
    compare_with: Option<PathBuf>,
    /// Pairs of runs for --compare-with (even, so each build runs first as often).
    #[arg(long, default_value_t = 4, requires = "compare_with")]
    pairs: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The loads to run, in order.
fn loads(args: &Args) -> anyhow::Result<Vec<LoadConfig>> {
    if args.payload == 0
        || args.keys == 0
        || args.duration <= 0.0
        || args.warmup < 0.0
        || args.timeout <= 0.0
        || !(0.0..=1.0).contains(&args.read_ratio)
    {
        bail!(
            "--payload, --keys, --duration and --timeout must be positive, --warmup not negative, \
             --read-ratio between 0 and 1"
        );
    }
    let modes: Vec<Mode> = if !args.sweep.is_empty() {
        args.sweep
            .iter()
            .map(|&rate| Mode::OpenLoop { rate })
            .collect()
    } else if let Some(rate) = args.rate {
        vec![Mode::OpenLoop { rate }]
    } else {
        vec![Mode::ClosedLoop {
            outstanding: args.outstanding.unwrap_or(64),
        }]
    };
    for m in &modes {
        match *m {
            Mode::OpenLoop { rate } if !(rate > 0.0 && rate.is_finite()) => {
                bail!("rates must be positive; got {rate}")
            }
            Mode::ClosedLoop { outstanding: 0 } => bail!("--outstanding must be at least 1"),
            _ => {}
        }
    }
    Ok(modes
        .into_iter()
        .map(|mode| LoadConfig {
            mode,
            clients: args.clients,
            connections: args.connections,
            payload: args.payload,
            keys: args.keys,
            read_ratio: args.read_ratio,
            ordered_reads: args.ordered_reads,
            write: args.write,
            duration: Duration::from_secs_f64(args.duration),
            warmup: Duration::from_secs_f64(args.warmup),
            timeout: Duration::from_secs_f64(args.timeout),
            progress: !args.quiet,
        })
        .collect())
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let loads = loads(args)?;
    let mut summaries = Vec::new();
    if let Some(old) = &args.compare_with {
        // The pairs that completed are reported and written even if a later one
        // failed: they may have taken an hour.
        let outcome = compare_builds(args, old, &loads, &mut summaries).await;
        if let Some(path) = &args.json {
            report::write_json(path, &summaries)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return outcome;
    }
    // How many replicas the testnet has, and how many of them check each
    // request's signature (`request_checks`): the ratio at the baseline's costs.
    let mut group = None;
    if !args.unreplicated {
        let net = Testnet::open(args)?;
        let members = Membership::new(
            net.validators
                .validators
                .iter()
                .map(|v| v.public_key)
                .collect(),
        );
        group = Some((members.n(), request_checks::checkers(&members)));
        let result = run_replicated(&net, &loads, &mut summaries).await;
        drop(net);
        result?;
    }
    if args.unreplicated || args.baseline {
        let server = Unreplicated::start()?;
        let target = Target {
            kind: "unreplicated".into(),
            replicas: 1,
        };
        let probe = Probe::new()
            .with(bft_bench::cpu::LOADGEN, loadgen_threads())
            .with(
                BASELINE,
                Source::OwnThreads {
                    prefix: BASELINE_THREAD_PREFIX,
                    matching: true,
                },
            )
            .with_local_phase(
                BASELINE,
                bft_bench::loop_phases::VERIFY,
                server.verify_cpu(),
            );
        run_all(&server.validators, &target, &loads, &probe, &mut summaries).await?;
    }
    if args.baseline {
        let half = summaries.len() / 2;
        for (r, u) in summaries[..half].iter().zip(&summaries[half..]) {
            println!(
                "replicated / unreplicated: {:.0} / {:.0} req/s = {:.1}%",
                r.throughput_rps,
                u.throughput_rps,
                100.0 * r.throughput_rps / u.throughput_rps.max(1e-9)
            );
            let at_costs = group.and_then(|(replicas, checkers)| {
                let checks = report::checks_per_request(u, replicas, checkers);
                Some((
                    replicas,
                    checks,
                    report::ratio_at_baseline_costs(u, replicas, checks)?,
                ))
            });
            if let Some((replicas, checks, ratio)) = at_costs {
                println!(
                    "  at the baseline's costs: {:.1}% ({replicas} replicas each costing what the \
                     server spends but its signature checks, {checks:.2} checks a request: the \
                     estimated ratio if agreement cost nothing)",
                    100.0 * ratio
                );
            }
        }
    }
    if let Some(path) = &args.json {
        report::write_json(path, &summaries)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        report::write_csv(path, &summaries)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "bftnode: latency vs throughput ({}-byte writes)",
            args.payload
        );
        std::fs::write(path, plot::latency_vs_throughput(&title, &summaries))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Every load against `net`, each replica's CPU accounted by process.
async fn run_replicated(
    net: &Testnet,
    loads: &[LoadConfig],
    out: &mut Vec<Summary>,
) -> anyhow::Result<()> {
    let target = Target {
        kind: "replicated".into(),
        replicas: net.validators.validators.len(),
    };
    let mut probe = Probe::new().with(bft_bench::cpu::LOADGEN, loadgen_threads());
    for (i, pid) in net.replica_pids()?.into_iter().enumerate() {
        if let Some(pid) = pid {
            probe = probe.with(format!("replica{i}"), Source::Process(pid));
        }
    }
    for (i, base) in net.replica_http().into_iter().enumerate() {
        if let Some(base) = base {
            probe = probe.with_phases(format!("replica{i}"), base);
        }
    }
    run_all(&net.validators, &target, loads, &probe, out).await
}

/// `--compare-with OLD`: the load `--pairs` times on each build, ABBA, each run
/// on a fresh testnet, then the paired comparison (`bft_bench::compare`).
async fn compare_builds(
    args: &Args,
    old: &std::path::Path,
    loads: &[LoadConfig],
    out: &mut Vec<Summary>,
) -> anyhow::Result<()> {
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    // Absolute: a bare name would otherwise be looked up on PATH when run.
    let old = std::fs::canonicalize(old)
        .ok()
        .filter(|p| p.is_file())
        .with_context(|| format!("{} is not a bftnode binary", old.display()))?;
    let new = std::fs::canonicalize(this_build()?)?;
    if old == new {
        println!("WARNING     --compare-with names this build's own bftnode: both sides are the same binary");
    }
    let outcome = run_pairs(args, &old, &new, loads, out).await;
    let of = |build: &str| -> Vec<Summary> {
        out.iter()
            .filter(|s| s.build.as_deref() == Some(build))
            .cloned()
            .collect()
    };
    let (old_runs, new_runs) = (of("old"), of("new"));
    // Only whole pairs compare.
    let pairs = old_runs.len().min(new_runs.len());
    let (old_runs, new_runs) = (&old_runs[..pairs], &new_runs[..pairs]);
    if pairs > 0 {
        let rows = compare::compare(old_runs, new_runs);
        print!("{}", compare::text(&old.display().to_string(), &rows));
        for warning in compare::warnings(old_runs, new_runs, &rows) {
            println!("  WARNING   {warning}");
        }
    }
    outcome
}

/// The runs of `--compare-with`, pair by pair in ABBA order, each summary added to
/// `out`, labelled with its build, as it completes.
async fn run_pairs(
    args: &Args,
    old: &std::path::Path,
    new: &std::path::Path,
    loads: &[LoadConfig],
    out: &mut Vec<Summary>,
) -> anyhow::Result<()> {
    for pair in 0..args.pairs {
        let order = if compare::old_runs_first(pair) {
            [true, false]
        } else {
            [false, true]
        };
        for is_old in order {
            let (exe, build) = if is_old { (old, "old") } else { (new, "new") };
            println!(
                "pair {} of {}: {build} ({})",
                pair + 1,
                args.pairs,
                exe.display()
            );
            let net = Testnet::start(exe, args.replicas)?;
            let mut runs = Vec::new();
            let result = run_replicated(&net, loads, &mut runs).await;
            drop(net);
            result?;
            for mut summary in runs {
                summary.build = Some(build.into());
                out.push(summary);
            }
        }
    }
    Ok(())
}

/// The `bftnode` binary beside this one: the build under test.
fn this_build() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("bftnode");
    if !exe.exists() {
        bail!(
            "{} not found: build the workspace first (cargo build --release)",
            exe.display()
        );
    }
    Ok(exe)
}

/// The load generator: this process's threads but the in-process baseline's.
fn loadgen_threads() -> Source {
    Source::OwnThreads {
        prefix: BASELINE_THREAD_PREFIX,
        matching: false,
    }
}

async fn run_all(
    validators: &ValidatorSet,
    target: &Target,
    loads: &[LoadConfig],
    probe: &Probe,
    out: &mut Vec<Summary>,
) -> anyhow::Result<()> {
    for load in loads {
        let result = tokio::select! {
            r = loadgen::run(validators, load, Some(probe.clone())) => r?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        };
        let summary = Summary::new(&result, load, target);
        println!("{}", summary.text());
        out.push(summary);
    }
    Ok(())
}

/// The testnet a run targets: an existing one, or one started (and stopped on
/// drop) in a temporary directory.
struct Testnet {
    validators: ValidatorSet,
    dir: PathBuf,
    /// The temporary directory of a testnet this run started (and stops), and the
    /// `bftnode` binary that started it.
    owned: Option<(tempfile::TempDir, PathBuf)>,
}

impl Testnet {
    fn open(args: &Args) -> anyhow::Result<Self> {
        if let Some(dir) = &args.testnet {
            let validators = load_validators(&dir.join("validators.toml"))
                .with_context(|| format!("{} holds no testnet", dir.display()))?;
            return Ok(Self {
                validators,
                dir: dir.clone(),
                owned: None,
            });
        }
        Self::start(&this_build()?, args.replicas)
    }

    /// A fresh testnet of `replicas` started by the `bftnode` binary `exe`, in a
    /// temporary directory (stopped and removed on drop).
    fn start(exe: &std::path::Path, replicas: usize) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("testnet");
        let replicas = replicas.to_string();
        testnet(exe, &dir, &["init", "--replicas", &replicas])?;
        let net = Self {
            validators: load_validators(&dir.join("validators.toml"))?,
            dir: dir.clone(),
            owned: Some((tmp, exe.to_path_buf())),
        };
        testnet(exe, &dir, &["up"])?;
        Ok(net)
    }

    /// Each replica's HTTP server (`http://HOST:PORT`, from the `[http] listen` of
    /// its `node{i}/config.toml`), where its `/metrics` are; None where unreadable,
    /// or where it listens on every address (`0.0.0.0`: a testnet of named hosts,
    /// whose replicas share one port, so that address would reach one of them).
    fn replica_http(&self) -> Vec<Option<String>> {
        (0..self.validators.n())
            .map(|i| {
                let text =
                    std::fs::read_to_string(self.dir.join(format!("node{i}/config.toml"))).ok()?;
                let config: toml::Table = text.parse().ok()?;
                let listen: std::net::SocketAddr =
                    config.get("http")?.get("listen")?.as_str()?.parse().ok()?;
                (!listen.ip().is_unspecified()).then(|| format!("http://{listen}"))
            })
            .collect()
    }

    /// Each replica's process id (from the pid file `testnet up` writes in each
    /// replica's directory, `node{i}/pid`).
    fn replica_pids(&self) -> anyhow::Result<Vec<Option<u32>>> {
        let mut pids = Vec::new();
        for i in 0..self.validators.n() {
            let pid = std::fs::read_to_string(self.dir.join(format!("node{i}/pid")))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pids.push(pid);
        }
        Ok(pids)
    }
}

/// Run `bftnode testnet ACTION --dir DIR ...`: the testnet is the node's business
/// (its library builds RocksDB; the load generator does not link it).
fn testnet(exe: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let (action, rest) = args.split_first().context("an action")?;
    let out = std::process::Command::new(exe)
        .args(["testnet", action, "--dir"])
        .arg(dir)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "bftnode testnet {action} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for Testnet {
    /// Stop the testnet this run started. `down` removes the pid files, so they
    /// are read first: if `down` fails, the replicas still running are killed
    /// here, or they would outlive their removed directory (`orphans.rs`).
    fn drop(&mut self) {
        let Some((_, exe)) = &self.owned else {
            return;
        };
        let pids: Vec<u32> = self
            .replica_pids()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        if let Err(e) = testnet(exe, &self.dir, &["down"]) {
            let killed = kill_orphans(&self.dir, &pids);
            if killed.is_empty() {
                eprintln!("WARNING     {e:#}; no replica was still running");
            } else {
                eprintln!("WARNING     {e:#}; killed the replicas still running: pids {killed:?}");
            }
        }
    }
}
