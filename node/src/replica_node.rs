//! `bftnode start`: wire one replica together and run it until SIGINT/SIGTERM.

use crate::config::Resolved;
use crate::generals_node::GeneralsNode;
use crate::http::{router, HttpState};
use crate::loop_cpu::Phase;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeParts};
use crate::status::Status;
use crate::storage::Storage;
use crate::verify::{Frames, VerifyMetrics};
use anyhow::Context as _;
use bft_consensus::byzantine::{build, Params, Wrapped};
use bft_consensus::messages::MAX_MESSAGE_BYTES;
use bft_consensus::{DurableState, Ingress, KvStore, Replica, Validator};
use bft_net::{IngressLimits, NetConfig, Network};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Fail early, with one clear line, if the libp2p port (TCP, or UDP for QUIC) is taken.
fn check_port_free(addr: &Multiaddr) -> anyhow::Result<()> {
    let mut ip = None;
    let mut port = None;
    for p in addr {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some((p, false)),
            Protocol::Udp(p) => port = Some((p, true)),
            _ => {}
        }
    }
    if let (Some(ip), Some((port, udp))) = (ip, port) {
        if port != 0 {
            let bound = if udp {
                std::net::UdpSocket::bind((ip, port)).map(drop)
            } else {
                std::net::TcpListener::bind((ip, port)).map(drop)
            };
            bound.with_context(|| {
                format!("network.listen {addr}: port {port} is in use or cannot be bound")
            })?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// Run the replica described by `res` until a shutdown signal. `behaviour`
/// overrides the config's `[byzantine]` section (name, with no parameters).
///
/// # Errors
/// Ports in use, an unopenable data directory, a storage failure while running.
pub async fn run(res: Resolved, behaviour: Option<String>) -> anyhow::Result<()> {
    let http_listener = tokio::net::TcpListener::bind(res.http)
        .await
        .with_context(|| format!("http.listen {}: port in use or cannot be bound", res.http))?;
    check_port_free(&res.listen)?;
    std::fs::create_dir_all(&res.data_dir)
        .with_context(|| format!("cannot create data_dir {}", res.data_dir.display()))?;
    // The marker of earlier writes lives beside the data directory, so that losing
    // the directory does not lose it.
    let marker = res.data_dir.with_extension("persisted");
    let storage = Storage::open_with_marker(&res.data_dir.join("db"), &marker)?;
    let start = Instant::now();
    let id = res.replica.id;
    let (name, params) = match behaviour {
        Some(name) => (name, Params::new()),
        None => (
            res.file.byzantine.behaviour.clone(),
            res.file.byzantine.numeric_params()?,
        ),
    };
    let wrapper = build(&name, u64::from(id) ^ 0xB1A5, &params)
        .map_err(|e| anyhow::anyhow!("[byzantine]: {e}"))?;
    if name != "none" {
        tracing::warn!(replica = id, behaviour = %name, "running a Byzantine behaviour");
    }
    Replica::<KvStore>::check_not_wiped(storage.durable(), storage.persisted_before())
        .with_context(|| format!("data_dir {}", res.data_dir.display()))?;
    let mut initial = Vec::new();
    let replica = if *storage.durable() == DurableState::default() {
        let replica = Replica::new(res.replica.clone(), res.key.clone(), KvStore::new());
        let mut replica = Wrapped::new(replica, wrapper);
        replica.start(start.elapsed(), &mut initial);
        replica
    } else {
        let (r, out) = Replica::recover(
            res.replica.clone(),
            res.key.clone(),
            KvStore::new(),
            storage.durable(),
            start.elapsed(),
        )?;
        tracing::info!(
            replica = id,
            view = r.view(),
            last_executed = r.last_executed(),
            "recovered from disk"
        );
        initial = out;
        Wrapped::new(r, wrapper)
    };
    let peers: Vec<_> = res.validators.validators.iter().map(|v| v.peer).collect();
    let others = res
        .validators
        .validators
        .iter()
        .filter(|v| v.id != id)
        .map(|v| (v.peer, v.address.clone()))
        .collect();
    let net = Network::start(NetConfig {
        key: res.key.clone(),
        listen: Some(res.listen.clone()),
        peers: others,
        max_frame_bytes: MAX_MESSAGE_BYTES,
        peer_queue: 16 * 1024,
        inbound_queue: 16 * 1024,
        // Clients' frames apart, so the replicas' can lead each verify batch (see `verify`).
        others_queue: Some(8 * 1024),
        limits: IngressLimits::default(),
        coalesce_writes: false,
    })?;
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (control_tx, control_rx) = mpsc::channel(64);
    let heartbeat = Arc::new(AtomicU64::new(0));
    let metrics = Arc::new(Metrics::for_group(res.replica.members.n() as u32, id));
    let http = HttpState {
        status: status_rx,
        heartbeat: heartbeat.clone(),
        start,
        quorum: res.replica.members.quorum(),
        metrics: metrics.clone(),
        control: control_tx,
        admin_token: res.file.http.admin_token.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, router(http)).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    let ingress = Arc::new(Ingress::new(Validator::for_replica(&res.replica)));
    let replica_peers: HashMap<_, _> = res
        .validators
        .validators
        .iter()
        .map(|v| (v.peer, v.id))
        .collect();
    let frames = Frames::start(
        verify_threads(),
        ingress,
        Arc::new(replica_peers),
        net.inbound,
        net.others,
        VerifyMetrics {
            batch_frames: metrics.verify_batch_frames.clone(),
            cpu: metrics.phase_clock(Phase::Verify),
        },
    );
    let generals = GeneralsNode::new(id, res.validators.n(), res.key.clone(), &name);
    let mut runtime = Runtime::new(RuntimeParts {
        replica,
        generals,
        behaviour: (name, params),
        storage,
        net: net.handle.clone(),
        peers,
        start,
        status: status_tx,
        heartbeat,
        metrics,
        validators_digest: res.validators.digest(),
    });
    runtime.push_outputs(initial);
    tracing::info!(replica = id, listen = %res.listen, http = %res.http, "replica started");
    // The loop runs as a task on the runtime's workers, not on the thread that
    // called `block_on`: a frame read by a connection's task then wakes the loop
    // on the same worker (tokio's LIFO slot) instead of waking a parked thread
    // through a futex, and the frames a turn sends wake their writers the same
    // way. Issue 13, twenty-sixth round: at 10,000 req/s, 8 alternating pairs,
    // p50 -11 % and context switches -18 %, the peak unchanged.
    let result =
        tokio::spawn(async move { runtime.run(frames, control_rx, shutdown_signal()).await })
            .await
            .map_err(|e| anyhow::anyhow!("the event loop's task failed: {e}"))
            .and_then(|r| r);
    net.handle.shutdown();
    result
}

/// Environment variable setting the number of verify threads.
pub const VERIFY_THREADS_ENV: &str = "BFTNODE_VERIFY_THREADS";

/// Verify threads: `BFTNODE_VERIFY_THREADS` if set to a number, else one per core;
/// 0 verifies on the event loop. A replica alone on its machine wants every core;
/// replicas sharing one (the local testnet) each get their share, or their threads
/// only fight over the cores (measured on 2 cores, 4 replicas: one thread each
/// instead of two, ~8 % more throughput).
fn verify_threads() -> usize {
    std::env::var(VERIFY_THREADS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}
