//! Multi-process testnets on 127.0.0.1 (issue 3's "must show"): every replica is a
//! real `bftnode start` process; load comes from the client library over libp2p.

use bft_consensus::KvResult;
use bftnode::client::KvClient;
use bftnode::config::{load_validators, ResolvedClient};
use bftnode::status::Status;
use bftnode::testnet::{alive, fetch_status, http_url, signal};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The testnets share 2 cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Testnet {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    n: usize,
}

fn bftnode(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bftnode"))
        .args(args)
        .output()
        .expect("run bftnode")
}

impl Testnet {
    fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// A testnet whose `testnet init` gets `extra` arguments too.
    fn start_with(n: usize, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let n_arg = n.to_string();
        let mut args = vec![
            "testnet",
            "init",
            "--replicas",
            &n_arg,
            "--dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = bftnode(&args);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Small checkpoint interval so restarted replicas catch up quickly.
        for i in 0..n {
            let p = dir.join(format!("node{i}/config.toml"));
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text
                .replace("checkpoint_interval = 128", "checkpoint_interval = 16")
                .replace("window = 512", "window = 64");
            std::fs::write(&p, text).unwrap();
        }
        let t = Self { _tmp: tmp, dir, n };
        t.up();
        t
    }

    fn up(&self) {
        let out = bftnode(&["testnet", "up", "--dir", self.dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "up: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    fn node(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    fn pid(&self, i: usize) -> u32 {
        std::fs::read_to_string(self.node(i).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn kill9(&self, i: usize) {
        let pid = self.pid(i);
        signal(pid, "KILL");
        let end = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "replica {i} survived kill -9");
    }

    fn status(&self, i: usize) -> Option<Status> {
        fetch_status(&http_url(&self.node(i)).ok()?).ok()
    }

    fn logs(&self) -> String {
        (0..self.n)
            .map(|i| {
                let log =
                    std::fs::read_to_string(self.node(i).join("node.log")).unwrap_or_default();
                let tail: Vec<_> = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("--- node{i} ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until the given replicas report the same last_executed and state digest.
    fn wait_agree(&self, ids: &[usize], within: Duration) -> Vec<Status> {
        let end = Instant::now() + within;
        loop {
            let all: Vec<Option<Status>> = ids.iter().map(|i| self.status(*i)).collect();
            if let Some(first) = all[0].as_ref() {
                let agree = all.iter().all(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.last_executed == first.last_executed
                            && s.state_digest == first.state_digest
                            && !s.in_view_change
                    })
                });
                if agree && first.last_executed > 0 {
                    return all.into_iter().flatten().collect();
                }
            }
            assert!(
                Instant::now() < end,
                "replicas {ids:?} did not converge: {all:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn client(&self, seed: u8) -> ResolvedClient {
        ResolvedClient {
            key: bft_crypto::KeyPair::from_seed([seed; 32]),
            validators: load_validators(&self.dir.join("validators.toml")).unwrap(),
            timeout: Duration::from_secs(30),
            retransmit: Duration::from_millis(800),
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = bftnode(&["testnet", "down", "--dir", self.dir.to_str().unwrap()]);
    }
}

/// Accepted writes, shared by the load tasks.
type Accepted = Arc<Mutex<Vec<(String, String)>>>;

/// `clients` closed-loop writers; each stops after `per_client` writes or when
/// `stop` is set. Returns the writes the clients saw accepted.
fn load(
    net: &Testnet,
    rt: &tokio::runtime::Runtime,
    clients: u8,
    per_client: usize,
    stop: Arc<AtomicBool>,
    accepted: Accepted,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let cfg = net.client(c + 1);
            let stop = stop.clone();
            let accepted = accepted.clone();
            rt.spawn(async move {
                let mut client = KvClient::connect(&cfg).unwrap();
                assert!(client.wait_connected(2, Duration::from_secs(10)).await);
                for i in 0..per_client {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (k, v) = (format!("c{c}-k{i}"), format!("v{i}"));
                    match client.put(k.as_bytes(), v.as_bytes()).await {
                        Ok(KvResult::Done { .. }) => accepted.lock().unwrap().push((k, v)),
                        Ok(other) => panic!("unexpected result {other:?}"),
                        Err(e) => panic!("client {c}: write {i} failed: {e}"),
                    }
                }
            })
        })
        .collect()
}

fn wait_for_writes(accepted: &Accepted, at_least: usize, within: Duration) {
    let end = Instant::now() + within;
    while accepted.lock().unwrap().len() < at_least {
        assert!(
            Instant::now() < end,
            "only {} of {at_least} writes accepted",
            accepted.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every accepted write reads back with its value.
fn read_back(net: &Testnet, rt: &tokio::runtime::Runtime, writes: &[(String, String)]) {
    let cfg = net.client(200);
    rt.block_on(async {
        let mut client = KvClient::connect(&cfg).unwrap();
        assert!(client.wait_connected(2, Duration::from_secs(10)).await);
        for (k, v) in writes {
            let got = client.get(k.as_bytes()).await.unwrap();
            assert_eq!(
                got,
                KvResult::Value(Some(v.as_bytes().to_vec())),
                "key {k} lost"
            );
        }
    });
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn four_processes_commit_1000_writes_and_agree() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Testnet::start(4);
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let tasks = load(&net, &rt, 4, 250, Arc::default(), accepted.clone());
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(accepted.lock().unwrap().len(), 1000);
    let statuses = net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(30));
    assert!(statuses.iter().all(|s| s.last_stable_checkpoint > 0));
    println!(
        "1000 writes; replicas at seq {} digest {}",
        statuses[0].last_executed, statuses[0].state_digest
    );
}

#[test]
fn killed_backup_catches_up_after_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Testnet::start(4);
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&net, &rt, 3, 100_000, stop.clone(), accepted.clone());
    wait_for_writes(&accepted, 100, Duration::from_secs(30));
    net.kill9(3);
    let at_kill = accepted.lock().unwrap().len();
    wait_for_writes(&accepted, at_kill + 300, Duration::from_secs(60));
    net.up(); // restarts replica 3 only
    let at_restart = accepted.lock().unwrap().len();
    wait_for_writes(&accepted, at_restart + 300, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let statuses = net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(60));
    println!("backup rejoined at seq {}", statuses[3].last_executed);
    let writes = accepted.lock().unwrap().clone();
    read_back(&net, &rt, &writes);
}

#[test]
fn killed_primary_is_replaced_and_no_accepted_write_is_lost() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Testnet::start(4);
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&net, &rt, 3, 100_000, stop.clone(), accepted.clone());
    wait_for_writes(&accepted, 100, Duration::from_secs(30));
    assert_eq!(net.status(1).unwrap().primary, 0);
    net.kill9(0);
    let at_kill = accepted.lock().unwrap().len();
    wait_for_writes(&accepted, at_kill + 200, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let statuses = net.wait_agree(&[1, 2, 3], Duration::from_secs(60));
    assert!(
        statuses.iter().all(|s| s.view >= 1 && s.primary != 0),
        "no view change: {statuses:#?}"
    );
    let writes = accepted.lock().unwrap().clone();
    read_back(&net, &rt, &writes);
}

#[test]
fn whole_testnet_killed_and_restarted_keeps_every_accepted_write() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Testnet::start(4);
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let tasks = load(&net, &rt, 3, 150, Arc::default(), accepted.clone());
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    for i in 0..4 {
        net.kill9(i);
    }
    net.up();
    let statuses = net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(60));
    println!("after restart: seq {}", statuses[0].last_executed);
    let writes = accepted.lock().unwrap().clone();
    assert_eq!(writes.len(), 450);
    read_back(&net, &rt, &writes);
    net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(30));
}

#[test]
fn quic_testnet_commits_writes_and_agrees() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Testnet::start_with(4, &["--transport", "quic"]);
    let validators = std::fs::read_to_string(net.dir.join("validators.toml")).unwrap();
    assert!(validators.contains("/quic-v1"), "{validators}");
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let tasks = load(&net, &rt, 2, 100, Arc::default(), accepted.clone());
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(accepted.lock().unwrap().len(), 200);
    net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(30));
    let writes = accepted.lock().unwrap().clone();
    read_back(&net, &rt, &writes);
}
