//! Issue 4's multi-process drills: the behaviours of docs/INTERFACE.md run by f replicas
//! (the view-0 primary among them) of a 4- and a 7-replica testnet; switching a
//! behaviour at runtime under load; generals rounds with traitors; and more than f
//! replicas down.

mod common;

use bft_client::{ClientError, KvClient};
use bft_consensus::KvResult;
use bftnode::status::Status;
use common::{
    bftnode, load, load_to_end, read_back, serial, tokio_rt, wait_for_writes, Accepted, Testnet,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Replicas 0..f run `behaviour`; two clients write 40 values each. Every write must
/// be accepted and read back, and the honest replicas must agree.
fn drill(behaviour: &str, n: usize) -> (Testnet, Vec<Status>) {
    let f = (n - 1) / 3;
    let faulty: Vec<(u32, &str)> = (0..f as u32).map(|id| (id, behaviour)).collect();
    let net = Testnet::start_with(n, &[], &faulty);
    let rt = tokio_rt();
    let writes = load_to_end(&net, &rt, 2, 40);
    assert_eq!(writes.len(), 80);
    read_back(&net, &rt, &writes);
    let honest: Vec<usize> = (f..n).collect();
    let statuses = net.wait_agree(&honest, Duration::from_secs(60));
    for s in &statuses {
        assert_eq!(s.behaviour, "none");
    }
    net.assert_committed_prefixes(&honest, 1);
    println!(
        "{behaviour} x{f} of {n}: honest replicas at seq {} view {}",
        statuses[0].last_executed, statuses[0].view
    );
    (net, statuses)
}

fn faulty_ids(n: usize) -> Vec<u32> {
    (0..((n - 1) / 3) as u32).collect()
}

/// The faulty primary was replaced by a view change.
fn assert_replaced(statuses: &[Status], n: usize) {
    let faulty = faulty_ids(n);
    for s in statuses {
        assert!(
            s.view >= 1 && !faulty.contains(&s.primary),
            "faulty primary not replaced: {s:?}"
        );
    }
}

/// Honest replicas counted invalid messages from the faulty ones.
fn assert_counted(net: &Testnet, n: usize, reasons: &[&str]) {
    let f = (n - 1) / 3;
    let mut total = 0.0;
    for i in f..n {
        for peer in faulty_ids(n) {
            for reason in reasons {
                total += net.metric_sum(
                    i,
                    "bft_invalid_messages_total",
                    &[&format!("peer=\"{peer}\""), &format!("reason=\"{reason}\"")],
                );
            }
        }
    }
    assert!(
        total > 0.0,
        "no {reasons:?} counted from the faulty replicas"
    );
    println!("{total} invalid messages {reasons:?} counted from the faulty replicas");
}

macro_rules! drills {
    ($($name:ident: $behaviour:literal, $n:literal => $check:expr;)*) => {$(
        #[test]
        fn $name() {
            let _serial = serial();
            let (net, statuses) = drill($behaviour, $n);
            let check: &dyn Fn(&Testnet, &[Status], usize) = &$check;
            check(&net, &statuses, $n);
        }
    )*};
}

fn nothing_more(_: &Testnet, _: &[Status], _: usize) {}

drills! {
    silent_primary_4: "silent", 4 => |net, s, n| {
        assert_replaced(s, n);
        let suspected = (1..n).any(|i| net.status(i).is_some_and(|s| s.suspected.contains(&0)));
        assert!(suspected, "no honest replica suspects the silent primary");
    };
    silent_primary_7: "silent", 7 => |_, s, n| assert_replaced(s, n);
    crash_primary_4: "crash", 4 => |net, s, n| {
        assert_replaced(s, n);
        net.wait_status(&[1, 2, 3], Duration::from_secs(10), "suspect 0", |s| s.suspected.contains(&0));
    };
    crash_primary_7: "crash", 7 => |net, s, n| {
        assert_replaced(s, n);
        net.wait_status(&[2, 3, 4, 5, 6], Duration::from_secs(10), "suspect 0 and 1", |s| {
            s.suspected.contains(&0) && s.suspected.contains(&1)
        });
    };
    delay_4: "delay", 4 => nothing_more;
    delay_7: "delay", 7 => nothing_more;
    equivocating_primary_4: "equivocate", 4 => |_, s, n| assert_replaced(s, n);
    equivocating_primary_7: "equivocate", 7 => |_, s, n| assert_replaced(s, n);
    bad_signature_4: "bad-signature", 4 => |net, s, n| {
        assert_replaced(s, n);
        assert_counted(net, n, &["bad_signature"]);
    };
    bad_signature_7: "bad-signature", 7 => |net, s, n| {
        assert_replaced(s, n);
        assert_counted(net, n, &["bad_signature"]);
    };
    wrong_digest_4: "wrong-digest", 4 => nothing_more;
    wrong_digest_7: "wrong-digest", 7 => nothing_more;
    lying_checkpoint_4: "lying-checkpoint", 4 => assert_checkpoints_honest;
    lying_checkpoint_7: "lying-checkpoint", 7 => assert_checkpoints_honest;
    forged_view_changes_4: "forge-view-change", 4 => |net, _, n| {
        assert_counted(net, n, &["invalid_view_change", "invalid_prepared_cert", "invalid_checkpoint_proof"]);
    };
    forged_view_changes_7: "forge-view-change", 7 => |net, _, n| {
        assert_counted(net, n, &["invalid_view_change", "invalid_prepared_cert", "invalid_checkpoint_proof"]);
    };
    replay_4: "replay", 4 => nothing_more;
    replay_7: "replay", 7 => nothing_more;
    censoring_primary_4: "censor", 4 => |_, s, n| assert_replaced(s, n);
    censoring_primary_7: "censor", 7 => |_, s, n| assert_replaced(s, n);
    flood_4: "flood", 4 => |net, _, n| {
        assert_counted(net, n, &["bad_signature", "signer_mismatch", "out_of_window"]);
    };
    flood_7: "flood", 7 => |net, _, n| {
        assert_counted(net, n, &["bad_signature", "signer_mismatch", "out_of_window"]);
    };
    traitor_relay_4: "traitor-relay", 4 => nothing_more;
    traitor_relay_7: "traitor-relay", 7 => nothing_more;
}

/// Digest replies (TOCS §5.1.1) against a lying backup: replica 1 returns another
/// result in every reply, in full or as a digest. Three clients that designate
/// replica 1 each overwrite a key of their own with 64-byte values, so every result
/// after the first (the value replaced) is longer than a digest. The second write's
/// result only replica 1 sends in full, wrongly: each client must wait, retransmit,
/// take the true result from the others' full answers, and designate another
/// replica, so its later writes need no retransmission.
#[test]
fn digest_replies_with_a_lying_designated_backup_still_give_true_results() {
    let _serial = serial();
    let net = Testnet::start_with(4, &[], &[(1, "wrong-results")]);
    // Each write's retransmission is counted below: no write may wait on a link
    // still being dialled.
    net.wait_mesh();
    let rt = tokio_rt();
    let seeds: Vec<u8> = (1..=u8::MAX)
        .filter(|s| {
            let cfg = net.client(*s);
            let client = bft_consensus::Client::new(
                cfg.key.clone(),
                cfg.validators.membership(),
                1,
                Duration::from_secs(1),
            );
            client.designated() == Some(1)
        })
        .take(3)
        .collect();
    assert_eq!(seeds.len(), 3, "clients that designate replica 1");
    rt.block_on(async {
        let tasks: Vec<_> = seeds
            .iter()
            .map(|&seed| {
                let cfg = net.client(seed);
                tokio::spawn(async move {
                    let mut client = KvClient::connect(&cfg).unwrap();
                    assert!(client.wait_connected(2, Duration::from_secs(10)).await);
                    let key = format!("digest-{seed}");
                    let mut previous = None;
                    for i in 0..6u8 {
                        let value = vec![b'a' + i; 64];
                        match client.put(key.as_bytes(), &value).await {
                            Ok(KvResult::Done { previous: got }) => {
                                assert_eq!(got, previous, "client {seed}, write {i}");
                            }
                            other => panic!("client {seed}, write {i}: {other:?}"),
                        }
                        previous = Some(value);
                    }
                    let retransmitted = client.retransmissions();
                    assert!(
                        (1..=2).contains(&retransmitted),
                        "client {seed}: {retransmitted} retransmissions"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    net.assert_committed_prefixes(&[0, 2, 3], 1);
}

/// A lying checkpoint never becomes stable: the honest replicas come to hold the
/// same stable checkpoint, past genesis, with the honest digest. (They need every
/// honest vote when f lie; one lost on the way is resent from the heartbeats.)
fn assert_checkpoints_honest(net: &Testnet, _: &[Status], n: usize) {
    let f = (n - 1) / 3;
    let honest: Vec<usize> = (f..n).collect();
    net.wait_like_first(
        &honest,
        Duration::from_secs(10),
        "one stable checkpoint",
        |first| first.last_stable_checkpoint > 0,
        |s, first| {
            s.last_stable_checkpoint == first.last_stable_checkpoint
                && s.stable_checkpoint_digest == first.stable_checkpoint_digest
        },
    );
}

fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = bftnode(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn behaviour_switched_at_runtime_under_load_and_back() {
    let _serial = serial();
    let net = Testnet::start(4);
    let token = net.admin_token();
    let url0 = net.url(0);
    let pid = net.pid(0);
    let rt = tokio_rt();
    let accepted: Accepted = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&net, &rt, 3, 100_000, stop.clone(), accepted.clone());
    wait_for_writes(&accepted, 100, Duration::from_secs(30));

    // Refusals first: no token, a wrong token, an unknown behaviour.
    let (ok, _, err) = run_cli(&[
        "byzantine",
        "set",
        "--node",
        &url0,
        "--token",
        "nope",
        "equivocate",
    ]);
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (code, _) = bftnode::http_client::request(
        "PUT",
        &url0,
        "/byzantine",
        Some(r#"{"behaviour":"equivocate"}"#),
        &[],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (ok, _, err) = run_cli(&[
        "byzantine",
        "set",
        "--node",
        &url0,
        "--token",
        &token,
        "gossip",
    ]);
    assert!(!ok && err.contains("unknown behaviour"), "{err}");

    // The primary starts equivocating: the others replace it.
    let (ok, out, err) = run_cli(&[
        "byzantine",
        "set",
        "--node",
        &url0,
        "--token",
        &token,
        "equivocate",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("equivocate"));
    assert_eq!(net.status(0).unwrap().behaviour, "equivocate");
    assert!(net
        .metrics(0)
        .contains("bft_byzantine_behaviour{behaviour=\"equivocate\"} 1"));
    net.wait_status(&[1, 2, 3], Duration::from_secs(30), "view change", |s| {
        s.view >= 1
    });
    let at_switch = accepted.lock().unwrap().len();
    wait_for_writes(&accepted, at_switch + 100, Duration::from_secs(60));

    // Back to honest, through the environment variable this time.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bftnode"))
        .args(["byzantine", "clear", "--node", &url0])
        .env("BFTNODE_ADMIN_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(net.status(0).unwrap().behaviour, "none");
    let at_clear = accepted.lock().unwrap().len();
    wait_for_writes(&accepted, at_clear + 100, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(net.pid(0), pid, "the replica was restarted");
    assert!(bftnode::testnet::alive(pid));
    // Honest again, replica 0 rejoins and agrees with everyone.
    net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(60));
    let writes = accepted.lock().unwrap().clone();
    read_back(&net, &rt, &writes);
}

/// `generals propose` on replica `commander`; returns the instance id and the
/// printed lines.
fn propose(net: &Testnet, commander: usize, value: &str) -> (String, Vec<String>) {
    let (ok, out, err) = run_cli(&[
        "generals",
        "propose",
        "--node",
        &net.url(commander),
        "--token",
        &net.admin_token(),
        value,
    ]);
    assert!(ok, "{err}");
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("instance "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no instance id in {out}"))
        .to_string();
    (id, out.lines().skip(1).map(str::to_string).collect())
}

/// Replica `i`'s own decision for instance `id` (from `GET /generals/{id}`).
fn decision(net: &Testnet, i: usize, id: &str) -> Option<String> {
    let (code, body) = bftnode::http_client::get(
        &net.url(i),
        &format!("/generals/{id}"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 200, "replica {i}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["done"], true, "replica {i} has not decided: {body}");
    v["decided"].as_str().map(str::to_string)
}

#[test]
fn generals_traitor_commander_loyal_lieutenants_agree() {
    let _serial = serial();
    let net = Testnet::start_with(4, &[], &[(0, "equivocate")]);
    // Rounds are timed: every link up before the commander speaks.
    net.wait_mesh();
    let (id, lines) = propose(&net, 0, "attack");
    assert_eq!(lines.len(), 4, "{lines:?}");
    let decisions: Vec<_> = (1..4).map(|i| decision(&net, i, &id)).collect();
    println!("traitor commander: loyal lieutenants decided {decisions:?}");
    assert!(
        decisions.iter().all(|d| *d == decisions[0]),
        "{decisions:?}"
    );
    // The commander told half of them "attack" and the rest something else: with
    // two values in V, every loyal lieutenant falls back to none.
    assert_eq!(decisions[0], None);
    let m = net.metric_sum(1, "bft_generals_decisions_total", &["outcome=\"none\""]);
    assert!(m >= 1.0);
}

#[test]
fn generals_loyal_commander_is_followed_despite_a_traitor_relay() {
    let _serial = serial();
    let net = Testnet::start_with(4, &[], &[(1, "traitor-relay")]);
    // Rounds are timed: every link up before the commander speaks.
    net.wait_mesh();
    let (id, lines) = propose(&net, 0, "attack");
    for i in [0, 2, 3] {
        assert!(lines.contains(&format!("replica {i}: attack")), "{lines:?}");
        assert_eq!(decision(&net, i, &id).as_deref(), Some("attack"));
    }
    let refused: f64 = [2, 3]
        .iter()
        .map(|i| {
            net.metric_sum(
                *i,
                "bft_invalid_messages_total",
                &["peer=\"1\"", "reason=\"invalid_generals_chain\""],
            )
        })
        .sum();
    assert!(refused > 0.0, "the altered relays were not refused");
}

#[test]
fn more_than_f_down_stops_commits_and_loses_nothing_on_return() {
    let _serial = serial();
    let net = Testnet::start(4);
    let rt = tokio_rt();
    let writes = load_to_end(&net, &rt, 2, 50);
    net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(30));
    net.kill9(2);
    net.kill9(3);
    // Two of four are gone: no quorum, no commit.
    let mut cfg = net.client(77);
    cfg.timeout = Duration::from_secs(4);
    let stuck = rt.block_on(async {
        let mut client = KvClient::connect(&cfg).unwrap();
        assert!(client.wait_connected(2, Duration::from_secs(10)).await);
        client.put(b"during-outage", b"x").await
    });
    assert!(matches!(stuck, Err(ClientError::Timeout(_))), "{stuck:?}");
    let before: Vec<Status> = [0, 1].iter().map(|i| net.status(*i).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(2));
    for (i, b) in [0, 1].iter().zip(&before) {
        let now = net.status(*i).unwrap();
        assert_eq!(
            now.last_executed, b.last_executed,
            "replica {i} executed without a quorum"
        );
        assert_eq!(now.app_digest, b.app_digest);
    }
    assert_eq!(before[0].app_digest, before[1].app_digest);
    // They come back: writes resume and nothing accepted is lost.
    net.up();
    let after = rt.block_on(async {
        let mut client = KvClient::connect(&net.client(78)).unwrap();
        assert!(client.wait_connected(3, Duration::from_secs(10)).await);
        client.put(b"after-outage", b"y").await
    });
    assert!(matches!(after, Ok(KvResult::Done { .. })), "{after:?}");
    net.wait_agree(&[0, 1, 2, 3], Duration::from_secs(60));
    read_back(&net, &rt, &writes);
}
