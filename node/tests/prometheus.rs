//! Issue 5's dashboard check: a real Prometheus (Debian's `prometheus`, installed
//! here if missing) scrapes a 4-process testnet under load with the `prometheus.yml`
//! that `testnet init` wrote, and every PromQL expression of the Grafana dashboard
//! in configs/grafana/ must return data through Prometheus's HTTP API.

mod common;

use common::{load, serial, tokio_rt, wait_for_writes, Accepted, Testnet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The window substituted for Grafana's `$__rate_interval`: many 1 s scrapes.
const RATE_INTERVAL: &str = "20s";

/// `prometheus` on the PATH, installing Debian's package when it is missing.
fn ensure_prometheus() {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return;
    }
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("apt-get is needed to install prometheus");
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", "prometheus"]);
    let ok = Command::new("prometheus").arg("--version").output();
    assert!(ok.is_ok(), "prometheus still missing after apt-get install");
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Prometheus {
    fn start(config: &Path, log: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !matches!(
            bftnode::http_client::get(&p.url, "/-/ready", Duration::from_secs(2)),
            Ok((200, _))
        ) {
            assert!(Instant::now() < end, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The result vector of an instant query, or the API's error.
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (code, body) = bftnode::http_client::get(&self.url, &path, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// How many targets Prometheus sees up.
    fn targets_up(&self) -> usize {
        self.query("up == 1").map_or(0, |r| r.len())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every `expr` of every panel target of the dashboard, with Grafana's interval
/// variable replaced.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grafana/dashboards/bftnode.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                expr.replace("$__rate_interval", RATE_INTERVAL),
            ));
        }
    }
    out
}

/// A sample's value is a finite number (not NaN from a quantile over nothing).
fn has_finite_value(results: &[serde_json::Value]) -> bool {
    results.iter().any(|r| {
        r["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let _serial = serial();
    ensure_prometheus();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "the dashboard lost panels: {exprs:?}");
    // Replica 3 floods, so the invalid-message panel has something to show.
    let net = Testnet::start_with(4, &[], &[(3, "flood")]);
    let prometheus = Prometheus::start(
        &net.dir.join("prometheus.yml"),
        &net.dir.join("prometheus.log"),
    );
    let end = Instant::now() + Duration::from_secs(30);
    while prometheus.targets_up() < 4 {
        assert!(
            Instant::now() < end,
            "prometheus does not scrape all 4 replicas"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&net, &rt, 3, 1_000_000, stop.clone(), accepted.clone());
    wait_for_writes(&accepted, 200, Duration::from_secs(30));

    // Under load, poll until every expression has data (rates need two scrapes
    // inside their window), for at most a minute.
    let mut missing: Vec<(String, String, String)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        missing.clear();
        for (title, expr) in &exprs {
            match prometheus.query(expr) {
                Ok(r) if has_finite_value(&r) => {}
                Ok(r) => missing.push((title.clone(), expr.clone(), format!("{r:?}"))),
                Err(e) => missing.push((title.clone(), expr.clone(), e)),
            }
        }
        if missing.is_empty() || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(
        missing.is_empty(),
        "{} of {} dashboard expressions returned no data:\n{missing:#?}",
        missing.len(),
        exprs.len()
    );
    println!(
        "{} dashboard expressions returned data; {} writes committed meanwhile",
        exprs.len(),
        accepted.lock().unwrap().len()
    );
}
