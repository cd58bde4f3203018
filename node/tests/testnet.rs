//! Multi-process testnets on 127.0.0.1 (issue 3's "must show"): every replica is a
//! real `bftnode start` process; load comes from the client library over libp2p.

mod common;

use common::{load, read_back, serial, tokio_rt, wait_for_writes, Accepted, Testnet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn four_processes_commit_1000_writes_and_agree() {
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
    let net = Testnet::start_with(4, &["--transport", "quic"], &[]);
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
