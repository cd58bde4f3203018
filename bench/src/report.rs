//! Results of load runs: the SUMMARY block, the JSON of INTERFACE.md, CSV rows.

use crate::cpu::PerRequest;
use crate::loadgen::{LoadConfig, LoadResult, Mode, WriteOp};
use crate::timeline::Windows;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Quantiles in milliseconds of a histogram in microseconds (zeros if empty).
    #[must_use]
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: if h.is_empty() { 0.0 } else { ms(h.max()) },
        }
    }
}

/// What a run is aimed at, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// "replicated" (a PBFT testnet) or "unreplicated" (the baseline server).
    pub kind: String,
    pub replicas: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    #[serde(flatten)]
    pub load: LoadConfig,
    #[serde(flatten)]
    pub target: Target,
}

/// One run, as `--json` writes it (INTERFACE.md, `bftnode bench`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub throughput_rps: f64,
    pub latency_ms: Latency,
    pub sent: u64,
    pub committed: u64,
    pub errors: u64,
    /// Requests a client sent again to every replica after its retransmission
    /// timeout (whole run).
    pub retransmissions: u64,
    /// CPU microseconds per committed request, for the machine and each process the
    /// benchmark started or targets (replicas, load generator, baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<PerRequest>,
    /// The served processes' CPU per request (replicas, or the baseline) over the
    /// load generator's: a control for the host's drift (`PerRequest::servers_over_loadgen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_servers_per_loadgen: Option<f64>,
    /// Context switches per committed request, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_switches_per_request: Option<PerRequest>,
    /// Each replica's event-loop CPU by phase, µs per committed request
    /// (`replica -> phase -> µs`, from `bft_loop_cpu_seconds_total`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub loop_cpu_us_per_request: BTreeMap<String, BTreeMap<String, f64>>,
    /// Open loop only: time requests waited in the load generator for a free client
    /// (PBFT clients have one request outstanding each). Included in `latency_ms`,
    /// which counts from when a request was due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_wait_ms: Option<Latency>,
    /// Open loop only: the most the clients could carry at the latency the replicas
    /// gave them (clients / mean service time). Below the offered rate, the run
    /// measured the load generator's queue, not the replicas: add clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_capacity_rps: Option<f64>,
    /// With reads mixed in (`--read-ratio`): the latency of the read-only gets and
    /// of the writes, each alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_latency_ms: Option<Latency>,
    /// Requests accepted per 100 ms window of the measurement: its median, its lowest
    /// and when, and how many windows fell below half the median (a stall of the
    /// group, such as a checkpoint, shows there before it shows in p99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_windows: Option<Windows>,
    /// With `--compare-with`: which build's replicas ran, `old` or `new`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    pub config: RunConfig,
}

impl Summary {
    #[must_use]
    pub fn new(result: &LoadResult, load: &LoadConfig, target: &Target) -> Self {
        let open = matches!(load.mode, Mode::OpenLoop { .. });
        let mean_service_s = result.service_us.mean() / 1e6;
        Self {
            throughput_rps: result.throughput(),
            latency_ms: Latency::of(&result.latency_us),
            sent: result.sent,
            committed: result.committed,
            errors: result.errors,
            retransmissions: result.retransmissions,
            cpu_us_per_request: result.cpu.as_ref().map(|u| u.cpu_us.clone()),
            cpu_servers_per_loadgen: result
                .cpu
                .as_ref()
                .and_then(|u| u.cpu_us.servers_over_loadgen()),
            context_switches_per_request: result.cpu.as_ref().map(|u| u.switches.clone()),
            loop_cpu_us_per_request: result
                .cpu
                .as_ref()
                .map(|u| u.loop_cpu_us.clone())
                .unwrap_or_default(),
            client_wait_ms: open.then(|| Latency::of(&result.client_wait_us)),
            client_capacity_rps: (open && mean_service_s > 0.0)
                .then(|| load.clients as f64 / mean_service_s),
            read_latency_ms: (load.read_ratio > 0.0).then(|| Latency::of(&result.read_latency_us)),
            write_latency_ms: (load.read_ratio > 0.0)
                .then(|| Latency::of(&result.write_latency_us)),
            commit_windows: result.timeline.summary(),
            build: None,
            config: RunConfig {
                load: load.clone(),
                target: target.clone(),
            },
        }
    }

    /// The block printed after each run.
    #[must_use]
    pub fn text(&self) -> String {
        let c = &self.config;
        let mode = match c.load.mode {
            Mode::OpenLoop { rate } => {
                format!("open loop at {rate} req/s, {} clients", c.load.clients)
            }
            Mode::ClosedLoop { outstanding } => format!("closed loop, {outstanding} outstanding"),
        };
        let mut text = format!(
            "SUMMARY\n  target      {} ({} replica{})\n  load        {mode}, {}-byte writes ({}) to {} keys, {:.0}s after {:.0}s warm-up\n  throughput  {:.0} req/s\n  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  requests    sent {}  committed {}  errors {}  retransmitted {}\n",
            c.target.kind,
            c.target.replicas,
            if c.target.replicas == 1 { "" } else { "s" },
            c.load.payload,
            match c.load.write {
                WriteOp::Set => "set",
                WriteOp::Put => "put",
            },
            c.load.keys,
            c.load.duration.as_secs_f64(),
            c.load.warmup.as_secs_f64(),
            self.throughput_rps,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.sent,
            self.committed,
            self.errors,
            self.retransmissions,
        );
        if let (Some(r), Some(w)) = (&self.read_latency_ms, &self.write_latency_ms) {
            text.push_str(&format!(
                "  reads       {:.0} % read-only gets: p50 {:.2} ms  p99 {:.2} ms; writes p50 {:.2} ms  p99 {:.2} ms\n",
                c.load.read_ratio * 100.0,
                r.p50,
                r.p99,
                w.p50,
                w.p99
            ));
        }
        if let Some(w) = &self.commit_windows {
            text.push_str(&format!(
                "  windows     {} ms: median {} accepted, lowest {} at {:.1} s, {} of {} below half the median\n",
                w.window_ms, w.median, w.lowest, w.lowest_at_s, w.below_half_median, w.windows
            ));
        }
        if let Some(cpu) = &self.cpu_us_per_request {
            text.push_str(&format!(
                "  cpu         {:.1} us/request on the machine; {}\n",
                cpu.machine,
                per_process(cpu, 1)
            ));
        }
        if let Some(ratio) = self.cpu_servers_per_loadgen {
            text.push_str(&format!(
                "  cpu ratio   {ratio:.3} (the {} over the load generator's)\n",
                if c.target.kind == "unreplicated" {
                    "baseline's CPU per request"
                } else {
                    "replicas' CPU per request"
                }
            ));
        }
        if !self.loop_cpu_us_per_request.is_empty() {
            let replicas: Vec<String> = self
                .loop_cpu_us_per_request
                .iter()
                .map(|(replica, phases)| {
                    let phases: Vec<String> = phases
                        .iter()
                        .map(|(phase, us)| format!("{phase} {us:.1}"))
                        .collect();
                    format!("{replica} {}", phases.join(" "))
                })
                .collect();
            text.push_str(&format!(
                "  loop cpu    us/request by phase; {}\n",
                replicas.join(", ")
            ));
        }
        if let Some(sw) = &self.context_switches_per_request {
            text.push_str(&format!(
                "  switches    {:.2} per request on the machine; {}\n",
                sw.machine,
                per_process(sw, 2)
            ));
        }
        if let Some(wait) = &self.client_wait_ms {
            text.push_str(&format!(
                "  client wait p50 {:.2} ms  p99 {:.2} ms (requests due, waiting for a free client)\n",
                wait.p50, wait.p99
            ));
        }
        if let Some(warning) = self.client_limit_warning() {
            text.push_str(&format!("  WARNING     {warning}\n"));
        }
        text
    }

    /// Open loop: a warning when the clients could not carry the offered rate at the
    /// service time the replicas gave them, so latency measured the load
    /// generator's queue rather than the replicas.
    #[must_use]
    pub fn client_limit_warning(&self) -> Option<String> {
        let Mode::OpenLoop { rate } = self.config.load.mode else {
            return None;
        };
        let capacity = self.client_capacity_rps?;
        (capacity < rate).then(|| {
            format!(
                "{} clients carry at most {capacity:.0} req/s at this service time, below the \
                 {rate} offered: latency includes queueing in the load generator (raise --clients)",
                self.config.load.clients
            )
        })
    }

    fn csv_row(&self) -> String {
        let c = &self.config;
        let (rate, outstanding) = match c.load.mode {
            Mode::OpenLoop { rate } => (rate.to_string(), String::new()),
            Mode::ClosedLoop { outstanding } => (String::new(), outstanding.to_string()),
        };
        format!(
            "{},{},{rate},{outstanding},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{},{},{},{}",
            c.target.kind,
            c.target.replicas,
            c.load.clients,
            c.load.payload,
            self.throughput_rps,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.sent,
            self.committed,
            self.errors,
            self.cpu_us_per_request
                .as_ref()
                .map_or(String::new(), |c| format!("{:.1}", c.machine)),
        )
    }
}

/// `name X, name Y, ...` with `digits` decimals.
fn per_process(p: &PerRequest, digits: usize) -> String {
    p.processes
        .iter()
        .map(|(name, v)| format!("{name} {v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub const CSV_HEADER: &str = "target,replicas,rate,outstanding,clients,payload,throughput_rps,p50_ms,p90_ms,p99_ms,max_ms,sent,committed,errors,cpu_us_per_request";

/// Signature checks a request costs a group of `replicas` in which `checkers`
/// check each ordered request (`request_checks::checkers`): a read-only request
/// goes to every replica and each checks it, so with `--read-ratio` r the
/// mean is `(1 − r)·checkers + r·replicas`.
#[must_use]
pub fn checks_per_request(run: &Summary, replicas: usize, checkers: usize) -> f64 {
    let reads = run.config.load.read_ratio.clamp(0.0, 1.0);
    (1.0 - reads) * checkers as f64 + reads * replicas as f64
}

/// The replicated/unreplicated ratio if agreement itself cost nothing, estimated
/// from a baseline run alone: `replicas` replicas each costing what the baseline
/// server spends on a request but its signature check, `checks` checks a request
/// ([`checks_per_request`]), and a client costing what the baseline's does. With
/// L the load generator's CPU per request, S the server's and V the server's
/// `verify`: `(L + S) / (L + checks·V + replicas·(S − V))`.
///
/// Why: it says how much of the gap to the unreplicated server is PBFT's own
/// work (pre-prepares, votes, persistence, more replies) and how much is only
/// that n replicas must each receive, execute and answer a request and as many
/// of them check its signature as the skip rule requires (issue 13's ratio
/// target). An estimate, not a bound: a backup takes requests inside
/// pre-prepares, not one frame each, and checks them in bigger batches; and
/// throughput follows CPU per request only while the machine is the limit.
/// `None` without the server's CPU, its `verify`, or the load generator's.
#[must_use]
pub fn ratio_at_baseline_costs(baseline: &Summary, replicas: usize, checks: f64) -> Option<f64> {
    let cpu = baseline.cpu_us_per_request.as_ref()?;
    let loadgen = *cpu.processes.get(crate::cpu::LOADGEN)?;
    let server = *cpu.processes.get(crate::cpu::BASELINE)?;
    // Two clocks (the thread's CPU clock, /proc's ticks): never more than all.
    let verify = baseline
        .loop_cpu_us_per_request
        .get(crate::cpu::BASELINE)?
        .get(crate::loop_phases::VERIFY)?
        .min(server);
    let replicated = loadgen + checks * verify + replicas as f64 * (server - verify);
    (replicated > 0.0).then(|| (loadgen + server) / replicated)
}

/// Write `runs` as JSON: one object for a single run, an array for a sweep.
///
/// # Errors
/// I/O errors.
pub fn write_json(path: &Path, runs: &[Summary]) -> std::io::Result<()> {
    let text = if let [one] = runs {
        serde_json::to_string_pretty(one)
    } else {
        serde_json::to_string_pretty(runs)
    }
    .map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Write `runs` as CSV with a header.
///
/// # Errors
/// I/O errors.
pub fn write_csv(path: &Path, runs: &[Summary]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(f, "{CSV_HEADER}")?;
    for r in runs {
        writeln!(f, "{}", r.csv_row())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(us: &[u64]) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).unwrap();
        for &v in us {
            h.record(v).unwrap();
        }
        h
    }

    fn summary(rate: f64, clients: usize, service_us: u64) -> Summary {
        summary_with_cpu(rate, clients, service_us, None)
    }

    fn summary_with_cpu(
        rate: f64,
        clients: usize,
        service_us: u64,
        cpu: Option<crate::cpu::Usage>,
    ) -> Summary {
        let load = LoadConfig::for_tests(Mode::OpenLoop { rate }, clients);
        let result = LoadResult {
            sent: 10,
            committed: 10,
            errors: 0,
            retransmissions: 0,
            measured: 10,
            measured_secs: 1.0,
            latency_us: histogram_of(&[service_us; 10]),
            service_us: histogram_of(&[service_us; 10]),
            client_wait_us: histogram_of(&[1; 10]),
            read_latency_us: histogram_of(&[]),
            write_latency_us: histogram_of(&[service_us; 10]),
            timeline: crate::timeline::stalled_once(),
            cpu,
        };
        let target = Target {
            kind: "replicated".into(),
            replicas: 4,
        };
        Summary::new(&result, &load, &target)
    }

    #[test]
    fn the_summary_and_the_json_show_the_stalled_window() {
        let s = summary(1_000.0, 64, 1_000);
        let text = s.text();
        assert!(
            text.contains("windows     100 ms: median 100 accepted, lowest 30 at 0.3 s, 1 of 10 below half the median"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let w = &json["commit_windows"];
        assert_eq!(w["median"], 100);
        assert_eq!(w["lowest"], 30);
        assert_eq!(w["below_half_median"], 1);
        assert_eq!(w["windows"], 10);
        assert_eq!(w["window_ms"], 100);
        assert_eq!(w["lowest_at_s"], 0.3);
    }

    #[test]
    fn open_loop_warns_when_the_clients_cannot_carry_the_offered_rate() {
        // 64 clients at 50 ms each carry 1,280 req/s: 10,000 offered is beyond them.
        let s = summary(10_000.0, 64, 50_000);
        let capacity = s.client_capacity_rps.unwrap();
        assert!((capacity - 1280.0).abs() < 5.0, "{capacity}");
        assert!(s.client_limit_warning().is_some());
        assert!(s.text().contains("WARNING"), "{}", s.text());
        // 1,024 clients at 50 ms carry 20,480 req/s: no warning.
        let s = summary(10_000.0, 1024, 50_000);
        assert!(s.client_limit_warning().is_none());
        assert!(!s.text().contains("WARNING"));
    }

    #[test]
    fn the_cpu_ratio_divides_the_served_processes_by_the_load_generator() {
        let s = summary(100.0, 8, 1_000);
        assert!(s.cpu_servers_per_loadgen.is_none());
        assert!(!s.text().contains("cpu ratio"));

        let per = |pairs: &[(&str, f64)]| PerRequest {
            machine: 200.0,
            processes: pairs.iter().map(|(n, v)| ((*n).to_string(), *v)).collect(),
        };
        let replicas = per(&[
            ("loadgen", 40.0),
            ("replica0", 40.0),
            ("replica1", 30.0),
            ("replica2", 30.0),
            ("replica3", 20.0),
        ]);
        assert_eq!(replicas.servers_over_loadgen(), Some(3.0));
        let baseline = per(&[("baseline", 30.0), ("loadgen", 40.0)]);
        assert_eq!(baseline.servers_over_loadgen(), Some(0.75));
        // Without the load generator, or with nothing it served, there is no ratio.
        assert_eq!(per(&[("replica0", 40.0)]).servers_over_loadgen(), None);
        assert_eq!(per(&[("loadgen", 40.0)]).servers_over_loadgen(), None);
        assert_eq!(
            per(&[("loadgen", 0.0), ("baseline", 1.0)]).servers_over_loadgen(),
            None
        );

        let usage = crate::cpu::Usage {
            cpu_us: replicas,
            switches: PerRequest::default(),
            loop_cpu_us: BTreeMap::new(),
        };
        let s = summary_with_cpu(100.0, 8, 1_000, Some(usage));
        assert!(
            s.text().contains("cpu ratio   3.000 (the replicas'"),
            "{}",
            s.text()
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["cpu_servers_per_loadgen"], 3.0);
    }

    #[test]
    fn each_replicas_phases_are_reported_per_request() {
        let usage = crate::cpu::Usage {
            loop_cpu_us: BTreeMap::from([(
                "replica0".to_string(),
                BTreeMap::from([("handle".to_string(), 4.3), ("verify".to_string(), 20.0)]),
            )]),
            ..crate::cpu::Usage::default()
        };
        let s = summary_with_cpu(100.0, 8, 1_000, Some(usage));
        assert!(
            s.text()
                .contains("loop cpu    us/request by phase; replica0 handle 4.3 verify 20.0"),
            "{}",
            s.text()
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["loop_cpu_us_per_request"]["replica0"]["verify"], 20.0);
        // A run without them (the baseline, replicas that could not be read) says
        // nothing of them.
        let none = summary(100.0, 8, 1_000);
        assert!(!none.text().contains("loop cpu"));
        assert!(serde_json::to_value(&none).unwrap()["loop_cpu_us_per_request"].is_null());
    }

    #[test]
    fn the_ratio_at_baseline_costs_counts_every_replica_and_the_checkers() {
        let baseline = |verify: Option<f64>| {
            let usage = crate::cpu::Usage {
                cpu_us: PerRequest {
                    machine: 60.0,
                    processes: [
                        ("baseline".to_string(), 30.0),
                        ("loadgen".to_string(), 30.0),
                    ]
                    .into(),
                },
                switches: PerRequest::default(),
                loop_cpu_us: verify
                    .map(|v| {
                        BTreeMap::from([(
                            "baseline".to_string(),
                            BTreeMap::from([("verify".to_string(), v)]),
                        )])
                    })
                    .unwrap_or_default(),
            };
            summary_with_cpu(100.0, 8, 1_000, Some(usage))
        };
        // L = 30, S = 30, V = 20: 4 replicas at 10 each but the checks, 3 checks
        // of 20: 60 / (30 + 60 + 40).
        let r = ratio_at_baseline_costs(&baseline(Some(20.0)), 4, 3.0).unwrap();
        assert!((r - 60.0 / 130.0).abs() < 1e-12, "{r}");
        // One replica that checks everything is the baseline itself.
        let one = ratio_at_baseline_costs(&baseline(Some(20.0)), 1, 1.0).unwrap();
        assert!((one - 1.0).abs() < 1e-12, "{one}");
        // A verify read above the server's whole figure counts as all of it.
        let all = ratio_at_baseline_costs(&baseline(Some(45.0)), 4, 3.0).unwrap();
        assert!((all - 60.0 / 120.0).abs() < 1e-12, "{all}");
        // Without the server's verify there is nothing to say.
        assert!(ratio_at_baseline_costs(&baseline(None), 4, 3.0).is_none());
        assert!(ratio_at_baseline_costs(&summary(100.0, 8, 1_000), 4, 3.0).is_none());
    }

    #[test]
    fn read_only_requests_are_checked_by_every_replica() {
        let mut run = summary(100.0, 8, 1_000);
        run.config.load.read_ratio = 0.0;
        assert_eq!(checks_per_request(&run, 4, 3), 3.0);
        run.config.load.read_ratio = 0.5;
        assert_eq!(checks_per_request(&run, 4, 3), 3.5);
        run.config.load.read_ratio = 1.0;
        assert_eq!(checks_per_request(&run, 4, 3), 4.0);
    }
}
