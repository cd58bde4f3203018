//! `bftnode testnet init --k8s`: the manifests of a Kubernetes deployment of a
//! testnet whose replicas are named `bft-I.bft` (the pods of StatefulSet `bft`
//! behind headless Service `bft`). Writes `DIR/k8s/`: the templates of
//! `deploy/k8s/` with the group's size filled in, a ConfigMap with the validator
//! set and each replica's config, a Secret with each replica's key, and a
//! `kustomization.yaml` listing them (`kubectl apply -k DIR/k8s`).

use crate::config::NodeConfig;
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::Path;

/// The pattern of the replicas' host names in a cluster.
pub const HOSTNAMES: &str = "bft-{i}.bft";
/// Where a pod's entry point copies its key (an in-memory `emptyDir`).
const KEY_PATH: &str = "/var/run/bftnode/replica.key";

/// The templates, with `__REPLICAS__` and `__MAX_UNAVAILABLE__` to fill in.
const TEMPLATES: [(&str, &str); 4] = [
    (
        "service.yaml",
        include_str!("../../deploy/k8s/service.yaml"),
    ),
    (
        "statefulset.yaml",
        include_str!("../../deploy/k8s/statefulset.yaml"),
    ),
    ("pdb.yaml", include_str!("../../deploy/k8s/pdb.yaml")),
    (
        "networkpolicy.yaml",
        include_str!("../../deploy/k8s/networkpolicy.yaml"),
    ),
];

/// Write `dir/k8s/` for the `n` replicas `testnet init` just wrote to `dir`.
///
/// # Errors
/// Unreadable node configs or keys, I/O errors.
pub fn write(dir: &Path, n: usize) -> anyhow::Result<()> {
    let out = dir.join("k8s");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let f = (n - 1) / 3;
    let mut resources = Vec::new();
    for (name, template) in TEMPLATES {
        let text = template
            .replace("__REPLICAS__", &n.to_string())
            .replace("__MAX_UNAVAILABLE__", &f.to_string());
        std::fs::write(out.join(name), text)?;
        resources.push(name);
    }

    let mut files = vec![(
        "validators.toml".to_string(),
        std::fs::read_to_string(dir.join("validators.toml"))?,
    )];
    let mut keys = Vec::new();
    for i in 0..n {
        let node = dir.join(format!("node{i}"));
        let text = std::fs::read_to_string(node.join("config.toml"))?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("bad config in {}", node.display()))?;
        cfg.node.key_file = KEY_PATH.into();
        cfg.network.validators_file = Some("validators.toml".into());
        // The admin routes switch behaviours: off unless an operator sets a token.
        cfg.http.admin_token = None;
        files.push((format!("node{i}.toml"), toml::to_string(&cfg)?));
        let key = std::fs::read_to_string(node.join("replica.key"))?;
        keys.push((format!("node{i}.key"), key.trim().to_string()));
    }

    let mut config = header("ConfigMap", "bft-config");
    config.push_str("data:\n");
    for (name, text) in &files {
        block(&mut config, name, text);
    }
    std::fs::write(out.join("config.yaml"), config)?;
    resources.push("config.yaml");

    let mut secret = header("Secret", "bft-keys");
    secret.push_str("type: Opaque\nstringData:\n");
    for (name, key) in &keys {
        writeln!(secret, "  {name}: \"{key}\"")?;
    }
    std::fs::write(out.join("keys.yaml"), secret)?;
    resources.push("keys.yaml");

    let mut kustomization = String::from(
        "# kubectl apply -k .  (the image: set `images:` here, or load bftnode:latest into the cluster)\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for r in &resources {
        writeln!(kustomization, "  - {r}")?;
    }
    std::fs::write(out.join("kustomization.yaml"), kustomization)?;
    println!(
        "  Kubernetes manifests: {} (kubectl apply -k {})",
        out.display(),
        out.display()
    );
    Ok(())
}

fn header(kind: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  labels:\n    app.kubernetes.io/name: bftnode\n"
    )
}

/// `  name: |` and the text indented under it (a YAML literal block).
fn block(out: &mut String, name: &str, text: &str) {
    out.push_str(&format!("  {name}: |\n"));
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
}
