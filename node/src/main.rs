//! `bftnode`: the command line (INTERFACE.md). Every failure is one line on stderr
//! and a non-zero exit code.

use anyhow::{bail, Context as _};
use bft_client::KvClient;
use bftnode::config::{ClientConfig, NodeConfig};
use bftnode::{admin_client, testnet};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bftnode",
    version,
    about = "A Byzantine fault-tolerant (PBFT) replicated key-value node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an ed25519 key pair (secret 0600) and print its public key and PeerId.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// File name of the secret key inside DIR.
        #[arg(long, default_value = "replica.key")]
        name: String,
    },
    /// Run one replica in the foreground until SIGINT/SIGTERM.
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Run this behaviour instead of the config's [byzantine] one.
        #[arg(long)]
        behaviour: Option<String>,
    },
    /// A local multi-process testnet.
    Testnet {
        #[command(subcommand)]
        action: TestnetCmd,
    },
    /// Send one signed request and print the result the replicas agree on (f+1
    /// committed replies, 2f+1 tentative ones, or 2f+1 for a read-only get).
    Client {
        #[arg(long)]
        config: PathBuf,
        /// Give up after this many milliseconds without a quorum.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(subcommand)]
        op: ClientOp,
    },
    /// Show a node's /status.
    Status {
        #[arg(long)]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// The load generator: runs `bftnode-bench` (built beside this binary) with
    /// these arguments; `bftnode bench --help` lists them.
    // `--help` too goes to bftnode-bench, whose help lists its options.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Switch a replica's Byzantine behaviour at runtime (admin token needed).
    Byzantine {
        #[command(subcommand)]
        action: ByzantineCmd,
    },
    /// Signed-message Byzantine generals (Lamport-Shostak-Pease SM(m)).
    Generals {
        #[command(subcommand)]
        action: GeneralsCmd,
    },
}

#[derive(Subcommand)]
enum ByzantineCmd {
    /// Switch to BEHAVIOUR (names in INTERFACE.md), e.g. `delay --param ms=50`.
    Set {
        #[arg(long)]
        node: String,
        /// Admin token (default: $BFTNODE_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
        behaviour: String,
        /// KEY=VALUE numeric parameters.
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// Back to honest (`none`).
    Clear {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum GeneralsCmd {
    /// Start a round with NODE as commander; print every replica's decision.
    Propose {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: Option<String>,
        /// Traitors to tolerate (default n-2).
        #[arg(long)]
        m: Option<u32>,
        value: String,
    },
}

#[derive(Subcommand)]
enum TestnetCmd {
    /// Write keys and configs for N replicas (N >= 4).
    Init {
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
        /// libp2p ports BASE.., HTTP ports BASE+100..; free ports if omitted (with
        /// --netns: every replica on BASE and BASE+100, default 7000).
        #[arg(long)]
        base_port: Option<u16>,
        /// libp2p transport between replicas and clients.
        #[arg(long, value_enum, default_value_t = testnet::Transport::Tcp)]
        transport: testnet::Transport,
        /// Each replica in its own network namespace with its own address on a
        /// bridge (10.213.T.0/24), created by `up` and removed by `down`; the plan
        /// is written to DIR/netns.toml. Needs root.
        #[arg(long, conflicts_with_all = ["hostnames", "k8s"])]
        netns: bool,
        /// Each replica on a host of its own named by PATTERN, `{i}` the replica
        /// id (e.g. `replica{i}` for the compose file of deploy/compose): replicas
        /// listen on every interface on the same ports, data in /var/lib/bftnode/data.
        #[arg(long, value_name = "PATTERN", conflicts_with = "k8s")]
        hostnames: Option<String>,
        /// As --hostnames 'bft-{i}.bft' (StatefulSet bft behind headless Service
        /// bft), plus Kubernetes manifests in DIR/k8s (kubectl apply -k DIR/k8s).
        /// The manifests use TCP ports 7000 and 7100.
        #[arg(long, conflicts_with_all = ["base_port", "transport"])]
        k8s: bool,
    },
    /// Start every replica that is not running; return once all are ready.
    Up {
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
        /// ID=BEHAVIOUR: start replica ID with that behaviour (repeatable).
        #[arg(long = "byzantine")]
        byzantine: Vec<String>,
    },
    /// Stop every replica (SIGTERM, then SIGKILL).
    Down {
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
    },
    /// Print a table of every replica's status.
    Status {
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientOp {
    /// Write a value; prints the one it replaced.
    Put {
        key: String,
        value: String,
    },
    /// Write a value; prints only that it was written.
    Set {
        key: String,
        value: String,
    },
    /// Read-only: sent to every replica, accepted on 2f+1 matching replies, ordered
    /// only if those cannot be had.
    Get {
        key: String,
        /// Order the get like a write (three phases, f+1 matching replies).
        #[arg(long)]
        ordered: bool,
    },
    Delete {
        key: String,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn show(result: &bft_consensus::KvResult) -> String {
    use bft_consensus::KvResult;
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match result {
        KvResult::Done { previous: Some(p) } => format!("ok (previous: {})", text(p)),
        KvResult::Done { previous: None } => "ok".into(),
        KvResult::Value(Some(v)) => text(v),
        KvResult::Value(None) => "(not found)".into(),
        KvResult::Swapped { swapped, current } => {
            format!(
                "swapped: {swapped} (was: {})",
                current.as_deref().map_or("(none)".into(), text)
            )
        }
        KvResult::Invalid => "invalid operation".into(),
        KvResult::Full => "refused: the store is full".into(),
        KvResult::Written => "ok".into(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out, name } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join(&name);
            if path.exists() {
                bail!("{} exists; refusing to overwrite a key", path.display());
            }
            let key = bft_crypto::KeyPair::generate();
            key.save(&path)?;
            let peer = bft_net::peer_id_of(&key.public()).expect("fresh keys are valid");
            println!("public key: {}", key.public().to_hex());
            println!("peer id:    {peer}");
            println!("secret key: {} (mode 0600)", path.display());
        }
        Command::Start { config, behaviour } => {
            init_logging("info");
            let resolved = NodeConfig::load(&config)?;
            runtime()?.block_on(bftnode::replica_node::run(resolved, behaviour))?;
        }
        Command::Testnet { action } => match action {
            TestnetCmd::Init {
                replicas,
                dir,
                base_port,
                transport,
                netns,
                hostnames,
                k8s,
            } => {
                let hosts = match (netns, hostnames, k8s) {
                    (true, _, _) => testnet::Hosts::Namespaces,
                    (_, _, true) => testnet::Hosts::Named(bftnode::k8s::HOSTNAMES.into()),
                    (_, Some(pattern), _) => testnet::Hosts::Named(pattern),
                    _ => testnet::Hosts::Loopback,
                };
                testnet::init(&dir, replicas, base_port, transport, hosts)?;
                if k8s {
                    bftnode::k8s::write(&dir, replicas)?;
                }
            }
            TestnetCmd::Up { dir, byzantine } => {
                testnet::up(&dir, &testnet::parse_byzantine(&byzantine)?)?;
            }
            TestnetCmd::Down { dir } => testnet::down(&dir)?,
            TestnetCmd::Status { dir } => testnet::status(&dir)?,
        },
        Command::Client {
            config,
            timeout,
            op,
        } => {
            init_logging("warn");
            let mut resolved = ClientConfig::load(&config)?;
            if let Some(ms) = timeout {
                resolved.timeout = Duration::from_millis(ms);
            }
            let result = runtime()?.block_on(async {
                let mut client = KvClient::connect(&resolved)?;
                let members = resolved.validators.membership();
                // A read-only get needs 2f+1 answers; anything else f+1.
                let quorum = match op {
                    ClientOp::Get { ordered: false, .. } => members.quorum(),
                    _ => members.weak_quorum(),
                };
                if !client.wait_connected(quorum, resolved.timeout).await {
                    bail!(
                        "cannot reach {quorum} replicas within {:?} (are they running?)",
                        resolved.timeout
                    );
                }
                let r = match &op {
                    ClientOp::Put { key, value } => {
                        client.put(key.as_bytes(), value.as_bytes()).await
                    }
                    ClientOp::Set { key, value } => {
                        client.set(key.as_bytes(), value.as_bytes()).await
                    }
                    ClientOp::Get {
                        key,
                        ordered: false,
                    } => client.get(key.as_bytes()).await,
                    ClientOp::Get { key, ordered: true } => {
                        client.get_ordered(key.as_bytes()).await
                    }
                    ClientOp::Delete { key } => client.delete(key.as_bytes()).await,
                };
                Ok(r?)
            })?;
            println!("{}", show(&result));
        }
        Command::Byzantine { action } => match action {
            ByzantineCmd::Set {
                node,
                token,
                behaviour,
                params,
            } => {
                let params = admin_client::parse_params(&params)?;
                let view = admin_client::set_behaviour(
                    &node,
                    &admin_client::token(token)?,
                    &behaviour,
                    &params,
                )?;
                println!("behaviour: {} {:?}", view.behaviour, view.params);
            }
            ByzantineCmd::Clear { node, token } => {
                let view = admin_client::set_behaviour(
                    &node,
                    &admin_client::token(token)?,
                    "none",
                    &std::collections::BTreeMap::new(),
                )?;
                println!("behaviour: {}", view.behaviour);
            }
        },
        Command::Generals { action } => match action {
            GeneralsCmd::Propose {
                node,
                token,
                m,
                value,
            } => {
                let view = admin_client::propose(&node, &admin_client::token(token)?, &value, m)?;
                println!(
                    "instance {} (m = {}, round {} ms)",
                    view.id, view.m, view.round_ms
                );
                for line in admin_client::decision_lines(&view) {
                    println!("{line}");
                }
            }
        },
        Command::Bench { args } => {
            let exe = std::env::current_exe()?.with_file_name("bftnode-bench");
            let status = std::process::Command::new(&exe)
                .args(&args)
                .status()
                .with_context(|| {
                    format!(
                        "cannot run {} (build it with cargo build --release -p bft-bench)",
                        exe.display()
                    )
                })?;
            if !status.success() {
                // bftnode-bench already printed its one-line error.
                std::process::exit(status.code().unwrap_or(1));
            }
        }
        Command::Status { node, json } => {
            let s = bftnode::status::fetch_status(&node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{}", bftnode::status::table_header());
                println!("{}", bftnode::status::table_row(&s));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
