//! Results of load runs: the SUMMARY block, the JSON of INTERFACE.md, CSV rows.

use crate::loadgen::{LoadConfig, LoadResult, Mode};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
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
    pub config: RunConfig,
}

impl Summary {
    #[must_use]
    pub fn new(result: &LoadResult, load: &LoadConfig, target: &Target) -> Self {
        let h = &result.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        Self {
            throughput_rps: result.throughput(),
            latency_ms: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                max: if h.is_empty() { 0.0 } else { ms(h.max()) },
            },
            sent: result.sent,
            committed: result.committed,
            errors: result.errors,
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
        format!(
            "SUMMARY\n  target      {} ({} replica{})\n  load        {mode}, {}-byte writes to {} keys, {:.0}s after {:.0}s warm-up\n  throughput  {:.0} req/s\n  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  requests    sent {}  committed {}  errors {}\n",
            c.target.kind,
            c.target.replicas,
            if c.target.replicas == 1 { "" } else { "s" },
            c.load.payload,
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
        )
    }

    fn csv_row(&self) -> String {
        let c = &self.config;
        let (rate, outstanding) = match c.load.mode {
            Mode::OpenLoop { rate } => (rate.to_string(), String::new()),
            Mode::ClosedLoop { outstanding } => (String::new(), outstanding.to_string()),
        };
        format!(
            "{},{},{rate},{outstanding},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{},{},{}",
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
            self.errors
        )
    }
}

pub const CSV_HEADER: &str = "target,replicas,rate,outstanding,clients,payload,throughput_rps,p50_ms,p90_ms,p99_ms,max_ms,sent,committed,errors";

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
