//! `bftnode testnet init|up|down|status`: a local multi-process testnet.

use crate::config::{
    ByzantineSection, ClientConfig, ConsensusSection, FailureDetectorSection, HttpSection,
    NetworkSection, NodeConfig, NodeSection, ValidatorEntry, ValidatorSet, ValidatorsFile,
};
use crate::http_client;
use crate::netns::{free_tag, NetnsPlan, PLAN_FILE};
use crate::replica_node::VERIFY_THREADS_ENV;
use crate::status::{fetch_status, table_header, table_row};
use anyhow::{bail, Context as _};
use bft_crypto::KeyPair;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// The libp2p transport a testnet's replicas use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// TCP + noise + yamux.
    #[default]
    Tcp,
    /// QUIC (UDP, TLS 1.3).
    Quic,
}

impl Transport {
    fn multiaddr(self, host: &HostAddr, port: u16) -> String {
        let (proto, h) = match host {
            HostAddr::Ip(ip) => ("ip4", ip.to_string()),
            HostAddr::Name(name) => ("dns4", name.clone()),
        };
        match self {
            Transport::Tcp => format!("/{proto}/{h}/tcp/{port}"),
            Transport::Quic => format!("/{proto}/{h}/udp/{port}/quic-v1"),
        }
    }
}

/// Where the replicas of a testnet live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hosts {
    /// Every replica on 127.0.0.1, each on its own ports.
    #[default]
    Loopback,
    /// Each replica in its own network namespace with its own address, all on the
    /// same ports (see [`crate::netns`]).
    Namespaces,
    /// Each replica on a host of its own reached by name: `{i}` in the pattern is
    /// the replica id (`replica{i}` for compose, `bft-{i}.bft` for a Kubernetes
    /// StatefulSet). Replicas listen on every interface, all on the same ports, and
    /// keep their data in [`CONTAINER_DATA_DIR`]; nothing is started here.
    Named(String),
}

/// A replica's address as the others dial it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostAddr {
    Ip(Ipv4Addr),
    Name(String),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Ip(ip) => ip.fmt(f),
            HostAddr::Name(n) => f.write_str(n),
        }
    }
}

/// One replica's addresses: how the others reach it, what it binds, its ports.
struct Endpoint {
    host: HostAddr,
    bind: Ipv4Addr,
    p2p: u16,
    http: u16,
}

/// The data directory of a replica on a named host (a container's volume).
pub const CONTAINER_DATA_DIR: &str = "/var/lib/bftnode/data";

/// The host names a pattern gives `n` replicas.
///
/// # Errors
/// A pattern without `{i}`, or one whose names are not DNS names.
pub fn host_names(pattern: &str, n: usize) -> anyhow::Result<Vec<String>> {
    if !pattern.contains("{i}") {
        bail!("--hostnames {pattern:?} must contain {{i}} (the replica id)");
    }
    let names: Vec<String> = (0..n)
        .map(|i| pattern.replace("{i}", &i.to_string()))
        .collect();
    for name in &names {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            bail!("--hostnames {pattern:?} gives {name:?}, which is not a DNS name");
        }
    }
    Ok(names)
}

/// The libp2p port of every replica of a testnet whose replicas have hosts of
/// their own (unless `--base-port`); HTTP is 100 above it.
const SHARED_P2P_PORT: u16 = 7000;

/// (libp2p, HTTP) ports shared by every replica on hosts of their own.
fn shared_ports(base_port: Option<u16>) -> anyhow::Result<(u16, u16)> {
    let p2p = base_port.unwrap_or(SHARED_P2P_PORT);
    let http = p2p.checked_add(100).context("--base-port too high")?;
    Ok((p2p, http))
}

/// Ports: `base..base+n` for libp2p and `base+100..` for HTTP, or free ones.
/// (A free TCP port is checked for UDP too, so either transport can use it.)
fn pick_ports(n: usize, base: Option<u16>) -> anyhow::Result<Vec<(u16, u16)>> {
    if let Some(base) = base {
        let mut out = Vec::new();
        for i in 0..n as u16 {
            let (p2p, http) = (base + i, base + 100 + i);
            for p in [p2p, http] {
                std::net::TcpListener::bind(("127.0.0.1", p))
                    .with_context(|| format!("port {p} is in use"))?;
            }
            out.push((p2p, http));
        }
        return Ok(out);
    }
    // Hold every listener until all are chosen so no port is picked twice.
    let listeners: Vec<_> = (0..2 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports")?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let _udp: Vec<_> = ports
        .iter()
        .map(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)))
        .collect::<Result<_, _>>()
        .context("a free TCP port is taken for UDP; run init again")?;
    Ok((0..n).map(|i| (ports[2 * i], ports[2 * i + 1])).collect())
}

/// Write keys, one config per replica, the validator set, a client config and a
/// prometheus.yml into `dir`.
///
/// # Errors
/// Fewer than 4 replicas, an existing testnet in `dir`, ports in use, I/O errors.
pub fn init(
    dir: &Path,
    n: usize,
    base_port: Option<u16>,
    transport: Transport,
    hosts: Hosts,
) -> anyhow::Result<()> {
    if n < 4 {
        bail!("a testnet needs at least 4 replicas (n = 3f+1 with f >= 1); got {n}");
    }
    if dir.join("validators.toml").exists() {
        bail!(
            "{} already holds a testnet (remove it first)",
            dir.display()
        );
    }
    let (endpoints, plan) = match &hosts {
        Hosts::Loopback => {
            let ports = pick_ports(n, base_port)?;
            let loopback = Ipv4Addr::LOCALHOST;
            let e: Vec<_> = ports
                .iter()
                .map(|(p2p, http)| Endpoint {
                    host: HostAddr::Ip(loopback),
                    bind: loopback,
                    p2p: *p2p,
                    http: *http,
                })
                .collect();
            (e, None)
        }
        Hosts::Namespaces => {
            let plan = NetnsPlan::new(free_tag()?, n)?;
            let (p2p, http) = shared_ports(base_port)?;
            let e: Vec<_> = plan
                .replica
                .iter()
                .map(|h| Endpoint {
                    host: HostAddr::Ip(h.address),
                    bind: h.address,
                    p2p,
                    http,
                })
                .collect();
            (e, Some(plan))
        }
        Hosts::Named(pattern) => {
            let (p2p, http) = shared_ports(base_port)?;
            let e: Vec<_> = host_names(pattern, n)?
                .into_iter()
                .map(|name| Endpoint {
                    host: HostAddr::Name(name),
                    bind: Ipv4Addr::UNSPECIFIED,
                    p2p,
                    http,
                })
                .collect();
            (e, None)
        }
    };
    let data_dir: PathBuf = match hosts {
        Hosts::Named(_) => CONTAINER_DATA_DIR.into(),
        _ => "data".into(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(plan) = &plan {
        plan.save(dir)?;
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    let mut validators = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let node_dir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let key = KeyPair::generate();
        key.save(&node_dir.join("replica.key"))?;
        validators.push(ValidatorEntry {
            id: i as u32,
            public_key: key.public().to_hex(),
            address: transport.multiaddr(&e.host, e.p2p),
        });
    }
    let file = ValidatorsFile {
        consensus: bft_consensus::ProtocolParams::default(),
        validator: validators,
    };
    let digest = ValidatorSet::resolve(file.validator.clone(), file.consensus.clone())?.digest();
    write(&dir.join("validators.toml"), &toml::to_string(&file)?)?;
    for (i, e) in endpoints.iter().enumerate() {
        let cfg = NodeConfig {
            node: NodeSection {
                id: i as u32,
                data_dir: data_dir.clone(),
                key_file: "replica.key".into(),
            },
            network: NetworkSection {
                listen: transport.multiaddr(&HostAddr::Ip(e.bind), e.p2p),
                validators: Vec::new(),
                validators_file: Some("../validators.toml".into()),
                validators_digest: Some(digest.clone()),
            },
            consensus: ConsensusSection::default(),
            failure_detector: FailureDetectorSection::default(),
            http: HttpSection {
                listen: format!("{}:{}", e.bind, e.http),
                admin_token: Some(token.clone()),
            },
            byzantine: ByzantineSection::default(),
        };
        write(
            &dir.join(format!("node{i}/config.toml")),
            &toml::to_string(&cfg)?,
        )?;
    }
    KeyPair::generate().save(&dir.join("client.key"))?;
    let client = ClientConfig {
        key_file: "client.key".into(),
        validators_file: "validators.toml".into(),
        timeout_ms: 10_000,
        retransmit_ms: 1_000,
    };
    write(&dir.join("client.toml"), &toml::to_string(&client)?)?;
    write(&dir.join("prometheus.yml"), &prometheus_config(&endpoints))?;
    println!("testnet of {n} replicas written to {}", dir.display());
    for (i, e) in endpoints.iter().enumerate() {
        let addr = transport.multiaddr(&e.host, e.p2p);
        let ns = plan
            .as_ref()
            .map(|p| format!("  namespace {}", p.replica[i].namespace))
            .unwrap_or_default();
        println!(
            "  replica {i}: libp2p {addr}  http http://{}:{}{ns}",
            e.host, e.http
        );
    }
    if let Some(plan) = &plan {
        println!(
            "  bridge {} (host {}), created by `testnet up`, removed by `testnet down`; plan in {}",
            plan.bridge,
            plan.host_address,
            dir.join(PLAN_FILE).display()
        );
    }
    println!("  client config: {}", dir.join("client.toml").display());
    Ok(())
}

/// A Prometheus config scraping every replica's `/metrics` each second, each target
/// labelled with its replica id (the Grafana dashboard groups by `replica`).
fn prometheus_config(endpoints: &[Endpoint]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bftnode\n    static_configs:\n",
    );
    for (i, e) in endpoints.iter().enumerate() {
        out.push_str(&format!(
            "      - targets: ['{}:{}']\n        labels: {{replica: '{i}'}}\n",
            e.host, e.http
        ));
    }
    out
}

/// The node directories of a testnet, in id order.
fn nodes(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.join("validators.toml").exists() {
        bail!(
            "{} holds no testnet (run `bftnode testnet init` first)",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for i in 0.. {
        let d = dir.join(format!("node{i}"));
        if !d.join("config.toml").exists() {
            break;
        }
        out.push(d);
    }
    Ok(out)
}

/// The process id of each replica of a testnet, in id order (`None` for a
/// replica not started by `testnet up`, or whose pid file is gone).
///
/// # Errors
/// A directory that holds no testnet.
pub fn replica_pids(dir: &Path) -> anyhow::Result<Vec<Option<u32>>> {
    Ok(nodes(dir)?.iter().map(|n| pid_of(n)).collect())
}

fn pid_of(node: &Path) -> Option<u32> {
    std::fs::read_to_string(node.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Alive and not a zombie.
#[must_use]
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The HTTP base URL of a node, from its config.
///
/// # Errors
/// An unreadable config.
pub fn http_url(node: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(node.join("config.toml"))?;
    let cfg: NodeConfig =
        toml::from_str(&text).with_context(|| format!("bad config in {}", node.display()))?;
    Ok(format!("http://{}", cfg.http.listen))
}

/// Parse `ID=BEHAVIOUR` pairs.
///
/// # Errors
/// A malformed pair or an unknown behaviour.
pub fn parse_byzantine(pairs: &[String]) -> anyhow::Result<Vec<(u32, String)>> {
    pairs
        .iter()
        .map(|p| {
            let (id, name) = p
                .split_once('=')
                .with_context(|| format!("--byzantine {p:?} is not ID=BEHAVIOUR"))?;
            let id: u32 = id
                .parse()
                .with_context(|| format!("--byzantine {p:?}: {id:?} is not a replica id"))?;
            bft_consensus::byzantine::by_name(name, 0)
                .with_context(|| format!("--byzantine {p:?}: unknown behaviour {name:?}"))?;
            Ok((id, name.to_string()))
        })
        .collect()
}

/// Start every replica that is not running (those named in `byzantine` with that
/// behaviour), then wait until all are ready.
///
/// # Errors
/// No testnet in `dir`, a replica that cannot start, or not all ready in time.
pub fn up(dir: &Path, byzantine: &[(u32, String)]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the bftnode executable")?;
    up_with(&exe, dir, byzantine)
}

/// [`up`], starting each replica as `exe start --config ...` (the benchmark, a
/// different binary, passes the `bftnode` beside it).
///
/// # Errors
/// As [`up`].
pub fn up_with(exe: &Path, dir: &Path, byzantine: &[(u32, String)]) -> anyhow::Result<()> {
    let nodes = nodes(dir)?;
    if let Some((id, _)) = byzantine.iter().find(|(id, _)| *id as usize >= nodes.len()) {
        bail!(
            "--byzantine: no replica {id} in a testnet of {}",
            nodes.len()
        );
    }
    for node in &nodes {
        let text = std::fs::read_to_string(node.join("config.toml"))?;
        let cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("bad config in {}", node.display()))?;
        if cfg.node.data_dir == Path::new(CONTAINER_DATA_DIR) {
            bail!(
                "{} is a testnet for hosts of their own (init --hostnames or --k8s): start each replica on its host (deploy/compose, deploy/k8s)",
                dir.display()
            );
        }
    }
    let plan = NetnsPlan::load(dir)?;
    if let Some(plan) = &plan {
        plan.create()?;
    }
    for (i, node) in nodes.iter().enumerate() {
        if pid_of(node).is_some_and(alive) {
            continue;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.join("node.log"))?;
        // In its namespace, if it has one (`ip netns exec` execs the program, so the
        // pid written below is the replica's).
        let mut cmd = match &plan {
            Some(plan) => plan.exec(i, exe)?,
            None => Command::new(exe),
        };
        cmd.arg("start")
            .arg("--config")
            .arg(node.join("config.toml"));
        // The replicas share this machine: each verifies on its share of the cores,
        // or on its event loop when they outnumber the cores (unless the caller
        // chose a number). On 2 cores, 4 replicas verifying on their loops used
        // 8.6 % less CPU per request at one client than the build before (p50
        // −15.8 %), and 3.0 % less at the peak than a verify thread each in the
        // same build (issue 13, fifteenth round).
        if std::env::var_os(VERIFY_THREADS_ENV).is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cmd.env(VERIFY_THREADS_ENV, (cores / nodes.len()).to_string());
        }
        if let Some((_, b)) = byzantine.iter().find(|(id, _)| *id as usize == i) {
            cmd.arg("--behaviour").arg(b);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: signals aimed at the caller do not reach the replicas.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", node.display()))?;
        write(&node.join("pid"), &child.id().to_string())?;
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<&PathBuf> = nodes.iter().collect();
    while !waiting.is_empty() {
        if Instant::now() > deadline {
            let names: Vec<_> = waiting.iter().map(|n| n.display().to_string()).collect();
            bail!(
                "not ready after {READY_TIMEOUT:?}: {} (see node.log there)",
                names.join(", ")
            );
        }
        let mut still = Vec::new();
        for node in waiting {
            if pid_of(node).is_some_and(|p| !alive(p)) {
                let log = std::fs::read_to_string(node.join("node.log")).unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string();
                bail!("{} exited: {last}", node.display());
            }
            let url = http_url(node)?;
            match http_client::get(&url, "/ready", Duration::from_millis(500)) {
                Ok((200, _)) => {}
                _ => still.push(node),
            }
        }
        waiting = still;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{} replicas ready", nodes.len());
    Ok(())
}

/// Stop every replica: SIGTERM (graceful), then SIGKILL after a grace period.
///
/// # Errors
/// No testnet in `dir`.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let nodes = nodes(dir)?;
    let running: Vec<(PathBuf, u32)> = nodes
        .iter()
        .filter_map(|n| pid_of(n).filter(|p| alive(*p)).map(|p| (n.clone(), p)))
        .collect();
    for (_, pid) in &running {
        signal(*pid, "TERM");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (node, pid) in &running {
        while alive(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(*pid) {
            signal(*pid, "KILL");
        }
        let _ = std::fs::remove_file(node.join("pid"));
    }
    println!("{} replicas stopped", running.len());
    if let Some(plan) = NetnsPlan::load(dir)? {
        plan.destroy()?;
        println!("namespaces and bridge {} removed", plan.bridge);
    }
    Ok(())
}

/// Send a signal with the system's `kill`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Print the status table of every replica (a stopped one shows as down).
///
/// # Errors
/// No testnet in `dir`.
pub fn status(dir: &Path) -> anyhow::Result<()> {
    println!("{}", table_header());
    for (i, node) in nodes(dir)?.iter().enumerate() {
        match fetch_status(&http_url(node)?) {
            Ok(s) => println!("{}", table_row(&s)),
            Err(_) => println!("{i:>3} down"),
        }
    }
    Ok(())
}
