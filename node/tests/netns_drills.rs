//! Network fault drills (issue 14): a testnet of separate hosts on this machine
//! (`testnet init --netns`, each replica in its own network namespace), real link
//! faults set inside the namespaces (partitions and random loss with iptables, a
//! slow link with tc's token bucket, a delayed link through a proxy), combined
//! with kill -9, SIGSTOP and restart, at most f faulty replicas at a time, and one
//! quorum loss that must stall and recover.
//!
//! After each drill: the committed logs of all replicas agree wherever two list the
//! same sequence number (`GET /committed`), every replica converges on the same
//! state, every acknowledged write reads back, and the group resumed within the
//! bound the drill states. Each drill prints its recovery time (run with
//! `--nocapture` to see them).
//!
//! Needs root, `ip` and `iptables` (`.ci/run` installs them). Set
//! `BFTNODE_SKIP_NETNS_DRILLS=1` to skip them on a machine without.

mod common;

use bftnode::netns::NetnsPlan;
use bftnode::testnet::signal;
use common::delay_proxy::DelayProxy;
use common::{load, read_back, serial, tokio_rt, wait_for_writes, Accepted, Testnet};
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes that must be acknowledged after a fault or a heal for the group to
/// count as resumed.
const RESUMED_AFTER: usize = 20;

fn skipped() -> bool {
    if std::env::var_os("BFTNODE_SKIP_NETNS_DRILLS").is_some() {
        eprintln!("network drills skipped: BFTNODE_SKIP_NETNS_DRILLS is set");
        return true;
    }
    false
}

/// A namespace testnet under closed-loop load from `clients` writers.
struct Drill {
    net: Testnet,
    plan: NetnsPlan,
    rt: tokio::runtime::Runtime,
    accepted: Accepted,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    name: &'static str,
    /// Lines reported so far (the first one starts the report file afresh).
    reports: std::cell::Cell<usize>,
}

impl Drill {
    /// Set up the namespaces, let `before_up` set faults that must precede the
    /// replicas' first connections, start them and the load, and wait for
    /// `warm` acknowledged writes.
    fn start(name: &'static str, before_up: impl FnOnce(&NetnsPlan)) -> Self {
        let mut net = Testnet::init(4, &["--netns"]);
        // Longer than any bound below, so a slow recovery fails at its bound
        // with the drill's message rather than as a client's timeout.
        net.client_timeout = Duration::from_secs(150);
        let plan = NetnsPlan::load(&net.dir)
            .unwrap()
            .expect("a --netns testnet writes its plan");
        plan.create().unwrap();
        before_up(&plan);
        net.up();
        // Every replica reaches every other before the drill begins.
        net.wait_status(&[0, 1, 2, 3], Duration::from_secs(30), "a full mesh", |s| {
            s.peers_connected == 3
        });
        let rt = tokio_rt();
        let accepted: Accepted = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(&net, &rt, 3, 1_000_000, stop.clone(), accepted.clone());
        wait_for_writes(&accepted, 50, Duration::from_secs(30));
        Self {
            net,
            plan,
            rt,
            accepted,
            stop,
            tasks,
            name,
            reports: std::cell::Cell::new(0),
        }
    }

    fn acknowledged(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Time until [`RESUMED_AFTER`] more writes are acknowledged; fails the drill
    /// if that takes longer than `bound`.
    fn resumed(&self, what: &str, bound: Duration) -> Duration {
        let t0 = Instant::now();
        let target = self.acknowledged() + RESUMED_AFTER;
        while self.acknowledged() < target {
            assert!(
                t0.elapsed() < bound,
                "{}: not resumed {bound:?} after {what} ({} acknowledged, want {target})\n{}",
                self.name,
                self.acknowledged(),
                self.net.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = t0.elapsed();
        self.report(&format!("resumed {took:.2?} after {what}"));
        took
    }

    /// Print a measurement and keep it in `target/tmp/netns-drill-NAME.txt`,
    /// which `.ci/run` prints (the test harness keeps a passing test's output).
    fn report(&self, line: &str) {
        println!("drill {}: {line}", self.name);
        let path =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("netns-drill-{}.txt", self.name));
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if self.reports.replace(self.reports.get() + 1) == 0 {
            text.clear();
        }
        text.push_str(&format!("drill {}: {line}\n", self.name));
        std::fs::write(&path, text).unwrap();
    }

    /// `n` more acknowledged writes within `bound`.
    fn more_writes(&self, n: usize, bound: Duration) {
        wait_for_writes(&self.accepted, self.acknowledged() + n, bound);
    }

    /// Poll until all four replicas report one state and a quorum works in one
    /// view (see [`Self::finish`]); fails the drill after `bound`.
    fn converged(&self, bound: Duration) -> Vec<bftnode::status::Status> {
        self.net.wait_until(
            &[0, 1, 2, 3],
            bound,
            "one state with a working quorum",
            |all| {
                let Some(first) = all[0].as_ref() else {
                    return false;
                };
                let statuses: Vec<_> = all.iter().flatten().cloned().collect();
                statuses.len() == 4
                    && first.last_executed > 0
                    && statuses.iter().all(|s| {
                        s.last_executed == first.last_executed && s.app_digest == first.app_digest
                    })
                    && quorum_view(&statuses).1 >= 3
            },
        )
    }

    /// Heal every link, stop the load, and check the outcome: all replicas
    /// converge within `bound` (timed from the heal and printed), their committed
    /// logs agree, and every acknowledged write reads back.
    fn finish(mut self, bound: Duration) {
        self.plan.heal_all().unwrap();
        let healed = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut self.tasks);
        self.rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        // All four on one state. A replica that was cut off may have left the view
        // alone (its request timer fired on a client's retransmission) and stay
        // in that view change: PBFT never takes a view change back (its
        // view-change message may still be used), so it rejoins the consensus at
        // the group's next view change, and meanwhile executes what the group
        // commits from the certificates relayed to it. So: one state for all, and
        // a quorum (2f+1) working in one view.
        let statuses = self.converged(bound);
        let (view, working) = quorum_view(&statuses);
        let stranded: Vec<String> = statuses
            .iter()
            .filter(|s| s.view != view || s.in_view_change)
            .map(|s| format!("replica {} alone in view {}", s.id, s.view))
            .collect();
        self.report(&format!(
            "all 4 replicas on one state {:.2?} after the heal, at seq {}; {working} working in view {view}{}",
            healed.elapsed(),
            statuses[0].last_executed,
            if stranded.is_empty() {
                String::new()
            } else {
                format!(" ({}: it rejoins at the next view change)", stranded.join(", "))
            }
        ));
        let compared = self.net.assert_committed_prefixes(&[0, 1, 2, 3], 1);
        let writes = self.accepted.lock().unwrap().clone();
        read_back(&self.net, &self.rt, &writes);
        self.report(&format!(
            "{} acknowledged writes read back; {compared} committed (seq, digest) pairs compared",
            writes.len()
        ));
    }
}

#[test]
fn the_isolated_primary_is_replaced_then_killed_restarted_and_caught_up() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let d = Drill::start("isolate-primary", |_| {});
    d.plan.isolate(0).unwrap();
    d.resumed("isolating the primary", Duration::from_secs(30));
    // (`/status` is refreshed every 100 ms: it may lag the writes a little.)
    d.net
        .wait_status(&[1, 2, 3], Duration::from_secs(5), "a new primary", |s| {
            s.view >= 1 && s.primary != 0 && !s.in_view_change
        });
    // While cut off it falls behind; then it crashes, the link heals and it
    // restarts from its disk.
    d.net.kill9(0);
    d.plan.heal_all().unwrap();
    d.net.up();
    d.more_writes(100, Duration::from_secs(60));
    d.finish(Duration::from_secs(60));
}

#[test]
fn a_two_two_split_stalls_without_a_quorum_and_resumes_on_heal() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let d = Drill::start("split-2-2", |_| {});
    d.plan.partition(&[&[0, 1], &[2, 3]]).unwrap();
    // What was in flight settles; after that no side has 2f+1 replicas.
    std::thread::sleep(Duration::from_secs(2));
    let (writes, seqs) = (d.acknowledged(), executed(&d.net));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        d.acknowledged(),
        writes,
        "a write was acknowledged without a quorum"
    );
    assert_eq!(executed(&d.net), seqs, "a batch executed without a quorum");
    for i in 0..4 {
        let (code, _) =
            bftnode::http_client::get(&d.net.url(i), "/health", Duration::from_secs(2)).unwrap();
        assert_eq!(code, 200, "replica {i} unhealthy during the split");
    }
    d.plan.heal_all().unwrap();
    d.resumed("healing a 2/2 split", Duration::from_secs(60));
    d.finish(Duration::from_secs(60));
}

#[test]
fn an_isolated_backup_falls_behind_and_catches_up_on_heal() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let d = Drill::start("isolate-backup", |_| {});
    d.plan.isolate(3).unwrap();
    d.resumed("isolating a backup", Duration::from_secs(30));
    // Far enough for several checkpoints (interval 16 in these testnets).
    d.more_writes(300, Duration::from_secs(60));
    let behind = d.net.status(3).unwrap().last_executed;
    let ahead = d.net.status(0).unwrap().last_executed;
    assert!(
        behind < ahead,
        "the isolated backup kept up: {behind} vs {ahead}"
    );
    d.finish(Duration::from_secs(60));
}

#[test]
fn twenty_percent_loss_on_every_link_with_a_backup_killed_and_restarted() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let d = Drill::start("loss-20", |_| {});
    for i in 0..4 {
        d.plan.lose(i, 0.2).unwrap();
    }
    d.resumed("20% loss on every link", Duration::from_secs(60));
    d.net.kill9(2);
    d.resumed("kill -9 of a backup under loss", Duration::from_secs(60));
    d.net.up();
    d.more_writes(100, Duration::from_secs(120));
    d.finish(Duration::from_secs(90));
}

#[test]
fn a_delayed_link_between_primary_and_backup_with_a_backup_paused() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let mut proxies = Vec::new();
    let d = Drill::start("delay-50ms", |plan| {
        // 50 ms +- 20 ms each way on the link between replicas 0 and 1: each
        // one's connections to the other go through a delaying proxy on the host.
        for (from, to) in [(0, 1), (1, 0)] {
            let target = SocketAddrV4::new(plan.replica[to].address, 7000);
            let proxy = DelayProxy::start(
                SocketAddrV4::new(plan.host_address, 0),
                target,
                Duration::from_millis(50),
                Duration::from_millis(20),
            );
            plan.redirect(from, to, 7000, proxy.addr).unwrap();
            proxies.push(proxy);
        }
    });
    d.resumed("a 50 ms link", Duration::from_secs(30));
    // A backup stops (SIGSTOP) for 3 s: the primary's quorum then needs the
    // delayed backup.
    let pid = d.net.pid(2);
    signal(pid, "STOP");
    d.resumed(
        "pausing a backup beside the delayed link",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));
    signal(pid, "CONT");
    d.more_writes(100, Duration::from_secs(60));
    let carried: u64 = proxies
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum();
    assert!(
        carried > 10_000,
        "the delayed link carried only {carried} bytes"
    );
    d.report(&format!("{carried} bytes through the delayed link"));
    d.finish(Duration::from_secs(60));
}

#[test]
fn a_slow_link_from_the_primary_with_a_backup_killed_and_restarted() {
    if skipped() {
        return;
    }
    let _serial = serial();
    let d = Drill::start("slow-primary", |_| {});
    // 1 Mbit/s out of the primary, to replicas and clients alike.
    d.plan.slow(0, 1_000).unwrap();
    d.resumed("slowing the primary's link", Duration::from_secs(30));
    d.net.kill9(3);
    d.resumed(
        "kill -9 of a backup beside a slow primary",
        Duration::from_secs(60),
    );
    d.net.up();
    d.more_writes(100, Duration::from_secs(60));
    // The token bucket held packets back: the link really was the bottleneck.
    let held = overlimits(&d.plan, 0);
    assert!(held > 0, "the slow link never held a packet back");
    d.report(&format!("{held} packets held back by the 1 Mbit/s bucket"));
    d.finish(Duration::from_secs(60));
}

/// The view most replicas work in (not changing view), and how many do.
fn quorum_view(statuses: &[bftnode::status::Status]) -> (u64, usize) {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses.iter().filter(|s| !s.in_view_change) {
        *counts.entry(s.view).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).unwrap_or((0, 0))
}

/// How often replica `i`'s queueing discipline held a packet back.
fn overlimits(plan: &NetnsPlan, i: usize) -> u64 {
    let ns = &plan.replica[i].namespace;
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", "eth0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("overlimits ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overlimits in tc's statistics: {text}"))
}

/// Each replica's last executed sequence number.
fn executed(net: &Testnet) -> Vec<u64> {
    (0..net.n)
        .map(|i| {
            // A status fetch may time out on a loaded machine: ask again.
            (0..5)
                .find_map(|_| net.status(i))
                .unwrap_or_else(|| panic!("replica {i} gives no status"))
                .last_executed
        })
        .collect()
}
