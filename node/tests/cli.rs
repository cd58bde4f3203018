//! Bad input gets one clear line on stderr and a non-zero exit (issue 3).

use std::path::Path;
use std::process::{Command, Output};

fn bftnode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bftnode"))
        .args(args)
        .output()
        .expect("run bftnode")
}

/// Fails with exactly one stderr line containing `needle`.
fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {}", lines[0]);
}

fn init(dir: &Path) {
    let out = bftnode(&[
        "testnet",
        "init",
        "--replicas",
        "4",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let out = bftnode(&["keygen", "--out", d]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("public key: ") && stdout.contains("peer id:    12D3KooW"),
        "{stdout}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("replica.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    fails_with(&bftnode(&["keygen", "--out", d]), "refusing to overwrite");
}

#[test]
fn testnet_init_writes_everything_and_rejects_small_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    fails_with(
        &bftnode(&[
            "testnet",
            "init",
            "--replicas",
            "3",
            "--dir",
            dir.to_str().unwrap(),
        ]),
        "at least 4 replicas",
    );
    init(&dir);
    for f in [
        "validators.toml",
        "client.toml",
        "client.key",
        "prometheus.yml",
        "node3/config.toml",
        "node3/replica.key",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    fails_with(
        &bftnode(&[
            "testnet",
            "init",
            "--replicas",
            "4",
            "--dir",
            dir.to_str().unwrap(),
        ]),
        "already holds a testnet",
    );
}

#[test]
fn bad_configs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    init(&dir);
    let cfg = dir.join("node0/config.toml");
    let start = |p: &Path| bftnode(&["start", "--config", p.to_str().unwrap()]);

    fails_with(&start(&tmp.path().join("missing.toml")), "cannot read");

    let unknown = tmp.path().join("unknown.toml");
    std::fs::copy(&cfg, &unknown).unwrap();
    edit(&unknown, "[node]\n", "[node]\ncolour = \"blue\"\n");
    fails_with(&start(&unknown), "unknown field");

    let incomplete = dir.join("node0/incomplete.toml");
    std::fs::write(&incomplete, "[node]\nid = 0\n").unwrap();
    fails_with(&start(&incomplete), "missing field");

    // node1's key under node0's identity.
    std::fs::copy(dir.join("node1/replica.key"), dir.join("node0/other.key")).unwrap();
    let mismatched = dir.join("node0/mismatched.toml");
    std::fs::copy(&cfg, &mismatched).unwrap();
    edit(
        &mismatched,
        "key_file = \"replica.key\"",
        "key_file = \"other.key\"",
    );
    fails_with(&start(&mismatched), "does not match validator 0");

    let no_key = dir.join("node0/nokey.toml");
    std::fs::copy(&cfg, &no_key).unwrap();
    edit(
        &no_key,
        "key_file = \"replica.key\"",
        "key_file = \"absent.key\"",
    );
    fails_with(&start(&no_key), "absent.key");

    let bad_id = dir.join("node0/badid.toml");
    std::fs::copy(&cfg, &bad_id).unwrap();
    edit(&bad_id, "id = 0", "id = 9");
    fails_with(&start(&bad_id), "not in the validator set");

    let bad_behaviour = dir.join("node0/badb.toml");
    std::fs::copy(&cfg, &bad_behaviour).unwrap();
    edit(
        &bad_behaviour,
        "behaviour = \"none\"",
        "behaviour = \"teleport\"",
    );
    fails_with(&start(&bad_behaviour), "unknown");
}

/// Issue 11, defect 6: the protocol parameters are the validator set's. A replica
/// whose own config disagrees, or that was set up for another group (its pinned
/// digest differs), refuses to start instead of refusing its peers' messages.
#[test]
fn protocol_parameters_belong_to_the_validator_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    init(&dir);
    let start = |p: &Path| bftnode(&["start", "--config", p.to_str().unwrap()]);
    let cfg = dir.join("node0/config.toml");

    let own_window = dir.join("node0/window.toml");
    std::fs::copy(&cfg, &own_window).unwrap();
    edit(&own_window, "[consensus]\n", "[consensus]\nwindow = 512\n");
    fails_with(
        &start(&own_window),
        "window = 512 differs from the validator set's 256",
    );

    // The same group with another batch size: every replica's pinned digest refuses it.
    let validators = dir.join("validators.toml");
    edit(&validators, "batch_size = 512", "batch_size = 500");
    fails_with(&start(&cfg), "network.validators_digest");
    edit(&validators, "batch_size = 500", "batch_size = 512");

    // A window so large that a new-view could outgrow the frame bound.
    edit(&validators, "window = 256", "window = 1048576");
    fails_with(&start(&cfg), "frame bound");

    // A validator key of small order (the identity point): anybody could sign for it.
    edit(&validators, "window = 1048576", "window = 256");
    let text = std::fs::read_to_string(&validators).unwrap();
    let key0 = text
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let identity = format!("01{}", "00".repeat(31));
    edit(&validators, &key0, &identity);
    fails_with(&start(&cfg), "small order");
}

#[test]
fn a_port_in_use_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    init(&dir);
    let cfg = dir.join("node0/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let http = text
        .lines()
        .find(|l| l.starts_with("listen = \"127.0.0.1:"))
        .unwrap();
    let addr = http.trim_start_matches("listen = \"").trim_end_matches('"');
    let _hold = std::net::TcpListener::bind(addr).unwrap();
    fails_with(
        &bftnode(&["start", "--config", cfg.to_str().unwrap()]),
        "in use",
    );
}

#[test]
fn unreachable_nodes_are_reported() {
    fails_with(
        &bftnode(&["status", "--node", "http://127.0.0.1:1"]),
        "cannot reach",
    );
    fails_with(&bftnode(&["status", "--node", "localhost"]), "bad node URL");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    init(&dir);
    let client = dir.join("client.toml");
    let out = bftnode(&[
        "client",
        "--config",
        client.to_str().unwrap(),
        "--timeout",
        "1500",
        "get",
        "k",
    ]);
    fails_with(&out, "cannot reach");
    fails_with(
        &bftnode(&[
            "testnet",
            "up",
            "--dir",
            tmp.path().join("nothing").to_str().unwrap(),
        ]),
        "holds no testnet",
    );
}

#[test]
fn host_name_patterns_are_checked_and_such_a_testnet_is_not_started_here() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("named");
    let d = dir.to_str().unwrap();
    fails_with(
        &bftnode(&["testnet", "init", "--dir", d, "--hostnames", "replica"]),
        "must contain {i}",
    );
    fails_with(
        &bftnode(&["testnet", "init", "--dir", d, "--hostnames", "replica_{i}"]),
        "not a DNS name",
    );
    let out = bftnode(&["testnet", "init", "--dir", d, "--hostnames", "r{i}.bft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fails_with(
        &bftnode(&["testnet", "up", "--dir", d]),
        "is a testnet for hosts of their own",
    );
    // The Kubernetes manifests use fixed TCP ports.
    let other = tmp.path().join("k8s");
    let o = other.to_str().unwrap();
    for extra in [["--base-port", "8000"], ["--transport", "quic"]] {
        let mut args = vec!["testnet", "init", "--dir", o, "--k8s"];
        args.extend_from_slice(&extra);
        // (clap's own usage error: several lines.)
        let out = bftnode(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cannot be used with"),
            "{stderr}"
        );
    }
}
