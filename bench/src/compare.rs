//! Two builds of the replica, back to back: `bftnode-bench --compare-with OLD`.
//!
//! Why: this VM's speed drifts by ±15 % from one run to the next, more than most
//! changes move anything, so one run of each build proves nothing. The judging
//! procedure of the README ("Performance") is paired runs in ABBA order (old then
//! new, then new then old, ...), each on a fresh testnet with the same load
//! generator, compared pair by pair: a change that lowers CPU per request lowers
//! it in most pairs, whatever the hour did. This module does the arithmetic and
//! the report; the binary runs the pairs.

use crate::report::Summary;
use std::fmt::Write as _;

/// Which build runs first in pair `pair` (0-based): the old one in even pairs,
/// the new one in odd pairs (ABBA), so that a drift within the session weighs on
/// both builds alike.
#[must_use]
pub fn old_runs_first(pair: usize) -> bool {
    pair.is_multiple_of(2)
}

/// One measure over all pairs: the means of each build and the paired change.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub name: String,
    pub old_mean: f64,
    pub new_mean: f64,
    /// The mean over pairs of (new - old) / old, in per cent, over the pairs whose
    /// old figure is positive (`changed` of them); `None` if there are none.
    pub change_percent: Option<f64>,
    pub changed: usize,
    /// Pairs in which the new build's figure was lower.
    pub new_lower: usize,
    pub pairs: usize,
}

/// A figure both builds' summaries report.
#[derive(Clone, Debug, PartialEq)]
enum Measure {
    MachineCpu,
    CpuRatio,
    ProcessCpu(String),
    Throughput,
    P50,
    P99,
}

impl Measure {
    /// The machine, the ratio, each process the old build's first run accounted
    /// for, throughput and latency.
    fn all(old: &[Summary]) -> Vec<Self> {
        let mut out = vec![Self::MachineCpu, Self::CpuRatio];
        if let Some(cpu) = old.first().and_then(|s| s.cpu_us_per_request.as_ref()) {
            out.extend(cpu.processes.keys().cloned().map(Self::ProcessCpu));
        }
        out.extend([Self::Throughput, Self::P50, Self::P99]);
        out
    }

    fn name(&self) -> String {
        match self {
            Self::MachineCpu => "cpu machine (us/request)".into(),
            Self::CpuRatio => "cpu ratio (servers / loadgen)".into(),
            Self::ProcessCpu(process) => format!("cpu {process} (us/request)"),
            Self::Throughput => "throughput (req/s)".into(),
            Self::P50 => "latency p50 (ms)".into(),
            Self::P99 => "latency p99 (ms)".into(),
        }
    }

    fn read(&self, s: &Summary) -> Option<f64> {
        match self {
            Self::MachineCpu => s.cpu_us_per_request.as_ref().map(|c| c.machine),
            Self::CpuRatio => s.cpu_servers_per_loadgen,
            Self::ProcessCpu(process) => s
                .cpu_us_per_request
                .as_ref()?
                .processes
                .get(process)
                .copied(),
            Self::Throughput => Some(s.throughput_rps),
            Self::P50 => Some(s.latency_ms.p50),
            Self::P99 => Some(s.latency_ms.p99),
        }
    }
}

/// Compare `old[i]` with `new[i]` for every pair: each measure both builds report
/// in every pair, in order. Measures missing from any run are left out.
///
/// # Panics
/// If `old` and `new` differ in length (a bug in the caller).
#[must_use]
pub fn compare(old: &[Summary], new: &[Summary]) -> Vec<Paired> {
    assert_eq!(old.len(), new.len(), "runs come in pairs");
    let mut out = Vec::new();
    for measure in Measure::all(old) {
        let values: Option<Vec<(f64, f64)>> = old
            .iter()
            .zip(new)
            .map(|(o, n)| Some((measure.read(o)?, measure.read(n)?)))
            .collect();
        let Some(values) = values.filter(|v| !v.is_empty()) else {
            continue;
        };
        let pairs = values.len();
        let mean = |f: fn(&(f64, f64)) -> f64| values.iter().map(f).sum::<f64>() / pairs as f64;
        let changes: Vec<f64> = values
            .iter()
            .filter(|(o, _)| *o > 0.0)
            .map(|(o, n)| 100.0 * (n - o) / o)
            .collect();
        out.push(Paired {
            name: measure.name(),
            old_mean: mean(|v| v.0),
            new_mean: mean(|v| v.1),
            change_percent: (!changes.is_empty())
                .then(|| changes.iter().sum::<f64>() / changes.len() as f64),
            changed: changes.len(),
            new_lower: values.iter().filter(|(o, n)| n < o).count(),
            pairs,
        });
    }
    out
}

/// The COMPARISON block printed after the pairs.
#[must_use]
pub fn text(old_build: &str, rows: &[Paired]) -> String {
    let pairs = rows.first().map_or(0, |r| r.pairs);
    let mut out = format!(
        "COMPARISON  this build (new) against {old_build} (old), {pairs} pair{} in ABBA order\n",
        if pairs == 1 { "" } else { "s" }
    );
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in rows {
        // Small figures (the ratio, latencies of a few ms) need more digits.
        let digits = if r.old_mean.abs() < 10.0 { 3 } else { 1 };
        let change = match r.change_percent {
            Some(c) if r.changed == r.pairs => format!("{c:>+6.1} %"),
            Some(c) => format!("{c:>+6.1} % (of {} pairs)", r.changed),
            None => "   n/a  ".into(),
        };
        let _ = writeln!(
            out,
            "  {:width$}  old {:>9.digits$}  new {:>9.digits$}  paired {change}  new lower in {} of {}",
            r.name, r.old_mean, r.new_mean, r.new_lower, r.pairs
        );
    }
    out
}

/// What makes a comparison doubtful, one line each: runs with errors or
/// retransmissions (they measured the clients' timeouts as much as the builds),
/// runs that lack a CPU figure another run has (a process that exited or could not
/// be read: the machine's figure and the ratio then cover less in that run), an
/// odd number of pairs (the old build ran first once more than the new), and a
/// load generator whose own CPU per request moved (the ratio then moved with it).
#[must_use]
pub fn warnings(old: &[Summary], new: &[Summary], rows: &[Paired]) -> Vec<String> {
    let mut out = Vec::new();
    let names = |s: &Summary| -> Vec<String> {
        s.cpu_us_per_request
            .as_ref()
            .map(|c| c.processes.keys().cloned().collect())
            .unwrap_or_default()
    };
    let all: std::collections::BTreeSet<String> = old.iter().chain(new).flat_map(&names).collect();
    for (build, runs) in [("old", old), ("new", new)] {
        for (pair, s) in runs.iter().enumerate() {
            let run = format!("pair {} ({build})", pair + 1);
            if s.errors > 0 || s.retransmissions > 0 {
                out.push(format!(
                    "{run}: {} errors, {} retransmissions",
                    s.errors, s.retransmissions
                ));
            }
            let has = names(s);
            let missing: Vec<&str> = all
                .iter()
                .filter(|n| !has.contains(n))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                out.push(format!("{run}: no CPU figure for {}", missing.join(", ")));
            }
        }
    }
    if old.len() % 2 == 1 {
        out.push("an odd number of pairs: the old build ran first once more".into());
    }
    let loadgen = Measure::ProcessCpu(crate::cpu::LOADGEN.into()).name();
    let moved = rows
        .iter()
        .find(|r| r.name == loadgen)
        .and_then(|r| r.change_percent)
        .filter(|c| c.abs() > 5.0);
    if let Some(change) = moved {
        out.push(format!(
            "the load generator's own CPU per request moved {change:+.1} %: the cpu ratio moved with it"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::PerRequest;
    use crate::loadgen::{LoadConfig, Mode};
    use crate::report::{Latency, RunConfig, Target};

    fn run(machine: f64, loadgen: f64, replica: f64, rps: f64) -> Summary {
        let cpu = PerRequest {
            machine,
            processes: [
                ("loadgen".to_string(), loadgen),
                ("replica0".into(), replica),
            ]
            .into_iter()
            .collect(),
        };
        Summary {
            throughput_rps: rps,
            latency_ms: Latency {
                p50: 10.0,
                p90: 20.0,
                p99: 30.0,
                max: 40.0,
            },
            sent: 1,
            committed: 1,
            errors: 0,
            retransmissions: 0,
            cpu_servers_per_loadgen: cpu.servers_over_loadgen(),
            cpu_us_per_request: Some(cpu),
            context_switches_per_request: None,
            loop_cpu_us_per_request: std::collections::BTreeMap::new(),
            client_wait_ms: None,
            client_capacity_rps: None,
            read_latency_ms: None,
            write_latency_ms: None,
            commit_windows: None,
            build: None,
            config: RunConfig {
                load: LoadConfig::for_tests(Mode::ClosedLoop { outstanding: 1 }, 1),
                target: Target {
                    kind: "replicated".into(),
                    replicas: 1,
                },
            },
        }
    }

    fn row<'a>(rows: &'a [Paired], name: &str) -> &'a Paired {
        rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn pairs_alternate_which_build_runs_first() {
        let order: Vec<bool> = (0..4).map(old_runs_first).collect();
        assert_eq!(order, vec![true, false, true, false]);
    }

    #[test]
    fn a_change_is_judged_pair_by_pair_not_by_the_means() {
        // The host slowed down between the pairs: the second pair's figures are
        // twice the first's for both builds. The new build is 10 % cheaper in each.
        let old = [
            run(100.0, 40.0, 60.0, 1000.0),
            run(200.0, 80.0, 120.0, 500.0),
        ];
        let new = [
            run(90.0, 40.0, 54.0, 1100.0),
            run(180.0, 80.0, 108.0, 550.0),
        ];
        let rows = compare(&old, &new);
        let machine = row(&rows, "cpu machine (us/request)");
        assert_eq!((machine.old_mean, machine.new_mean), (150.0, 135.0));
        assert!(
            (machine.change_percent.unwrap() + 10.0).abs() < 1e-9,
            "{machine:?}"
        );
        assert_eq!((machine.new_lower, machine.pairs), (2, 2));
        // The load generator did not change; the ratio moved by the replica's 10 %.
        let ratio = row(&rows, "cpu ratio (servers / loadgen)");
        assert!(
            (ratio.change_percent.unwrap() + 10.0).abs() < 1e-9,
            "{ratio:?}"
        );
        let loadgen = row(&rows, "cpu loadgen (us/request)");
        assert_eq!((loadgen.change_percent, loadgen.new_lower), (Some(0.0), 0));
        let replica = row(&rows, "cpu replica0 (us/request)");
        assert_eq!((replica.old_mean, replica.new_mean), (90.0, 81.0));
        let rps = row(&rows, "throughput (req/s)");
        assert!((rps.change_percent.unwrap() - 10.0).abs() < 1e-9, "{rps:?}");
        assert_eq!(rps.new_lower, 0);

        let report = text("old/bftnode", &rows);
        assert!(report.starts_with("COMPARISON"), "{report}");
        assert!(report.contains("2 pairs"), "{report}");
        assert!(
            report.contains("paired  -10.0 %  new lower in 2 of 2"),
            "{report}"
        );
        assert!(warnings(&old, &new, &rows).is_empty());
    }

    #[test]
    fn doubtful_runs_are_named() {
        let old = [run(100.0, 40.0, 60.0, 1000.0)];
        let mut new = [run(90.0, 50.0, 54.0, 1100.0)];
        new[0].errors = 3;
        // The replica's figure is missing from the new run.
        if let Some(cpu) = new[0].cpu_us_per_request.as_mut() {
            cpu.processes.remove("replica0");
        }
        let rows = compare(&old, &new);
        assert!(rows.iter().all(|r| r.name != "cpu replica0 (us/request)"));
        let w = warnings(&old, &new, &rows);
        assert!(
            w.contains(&"pair 1 (new): 3 errors, 0 retransmissions".to_string()),
            "{w:?}"
        );
        assert!(
            w.contains(&"pair 1 (new): no CPU figure for replica0".to_string()),
            "{w:?}"
        );
        assert!(
            w.iter().any(|l| l.starts_with("an odd number of pairs")),
            "{w:?}"
        );
        // The load generator moved +25 %.
        assert!(w.iter().any(|l| l.contains("+25.0 %")), "{w:?}");
    }

    #[test]
    fn a_change_over_no_positive_old_figure_is_not_reported_as_zero() {
        let old = [run(100.0, 40.0, 0.0, 1000.0)];
        let new = [run(90.0, 40.0, 54.0, 1100.0)];
        let rows = compare(&old, &new);
        let replica = row(&rows, "cpu replica0 (us/request)");
        assert_eq!((replica.change_percent, replica.changed), (None, 0));
        assert!(text("old", &rows).contains("n/a"));
    }

    #[test]
    fn measures_a_run_lacks_are_left_out() {
        let mut old = run(100.0, 40.0, 60.0, 1000.0);
        old.cpu_us_per_request = None;
        old.cpu_servers_per_loadgen = None;
        let new = run(90.0, 40.0, 54.0, 1100.0);
        let rows = compare(&[old], &[new]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["throughput (req/s)", "latency p50 (ms)", "latency p99 (ms)"]
        );
    }
}
