//! The baseline: the same KV application on one server, unreplicated, behind the
//! same libp2p transport and the same client library. It does what a replica does
//! for a client minus agreement: verify the request signature (batched), execute
//! once per client timestamp (re-sending the last reply on retransmission), sign
//! the replies (one signature per batch taken from the network, as a replica signs
//! once per executed batch). The replicated/unreplicated
//! throughput ratio is then the cost of PBFT itself.
//!
//! It counts the CPU it spends decoding and checking requests
//! ([`Unreplicated::verify_cpu`], the `verify` a replica's
//! `bft_loop_cpu_seconds_total` counts): with it a `--baseline` run splits the
//! server's cost into signature checks and the rest, from which the benchmark
//! estimates the ratio if agreement itself cost nothing
//! (`crate::report::ratio_at_baseline_costs`).

use crate::cpu::BASELINE_THREAD_PREFIX;
use crate::loop_phases::LocalPhase;
use bft_client::config::{self, ValidatorSet};
use bft_consensus::messages::{Refusal, Reply, ReplyResult};
use bft_consensus::reply::sign_replies;
use bft_consensus::{
    Application, Frame, KvStore, Membership, Message, ReplicaConfig, Validator, VerifiedMessage,
};
use bft_crypto::{KeyPair, PublicKey};
use bft_net::{Inbound, IngressLimits, NetConfig, NetHandle, Network, PeerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Frames taken from the network per verification batch.
const BATCH: usize = 256;
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A running baseline server; stops when dropped.
///
/// It runs on a tokio runtime of its own, two threads named
/// [`BASELINE_THREAD_PREFIX`]`-*`, so the benchmark can tell its CPU time from the
/// load generator's although both live in one process, and so it has the two
/// cores a co-located set of replicas has.
pub struct Unreplicated {
    /// The one-member "validator set" clients connect to (f = 0: one reply suffices).
    pub validators: ValidatorSet,
    net: NetHandle,
    task: tokio::task::JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
    verify: LocalPhase,
}

impl Unreplicated {
    /// Listen on a free loopback TCP port.
    ///
    /// # Errors
    /// No free port, or the transport or its runtime cannot start.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(BASELINE_THREAD_PREFIX)
            .enable_all()
            .build()?;
        let entered = runtime.enter();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address: bft_net::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
        let key = KeyPair::generate();
        let net = Network::start(NetConfig {
            key: key.clone(),
            listen: Some(address.clone()),
            peers: Vec::new(),
            max_frame_bytes: MAX_FRAME_BYTES,
            peer_queue: 4096,
            inbound_queue: 16_384,
            others_queue: None,
            limits: IngressLimits::default(),
            coalesce_writes: false,
        })?;
        let validators = ValidatorSet {
            validators: vec![config::ValidatorPeer {
                id: 0,
                public_key: key.public(),
                peer: bft_net::peer_id_of(&key.public())
                    .ok_or_else(|| anyhow::anyhow!("bad key"))?,
                address,
            }],
            params: bft_consensus::ProtocolParams::default(),
        };
        let handle = net.handle.clone();
        let verify = LocalPhase::new();
        let task = tokio::spawn(serve(key, net.handle.clone(), net.inbound, verify.clone()));
        drop(entered);
        Ok(Self {
            validators,
            net: handle,
            task,
            runtime: Some(runtime),
            verify,
        })
    }

    /// The CPU the server has spent decoding and checking requests.
    #[must_use]
    pub fn verify_cpu(&self) -> LocalPhase {
        self.verify.clone()
    }
}

impl Drop for Unreplicated {
    fn drop(&mut self) {
        self.task.abort();
        self.net.shutdown();
        // Not a blocking shutdown: this may be dropped inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(
    key: KeyPair,
    net: NetHandle,
    mut inbound: mpsc::Receiver<Inbound>,
    verify: LocalPhase,
) {
    let validator = Validator::new(&ReplicaConfig::new(0, Membership::new(vec![key.public()])));
    let mut app = KvStore::new();
    // Each client's last timestamp and reply, re-sent on retransmission (as replicas do).
    let mut last_reply: BTreeMap<PublicKey, (u64, Arc<Vec<u8>>)> = BTreeMap::new();
    while let Some(first) = inbound.recv().await {
        let mut frames = vec![first];
        while frames.len() < BATCH {
            match inbound.try_recv() {
                Ok(f) => frames.push(f),
                Err(_) => break,
            }
        }
        // Replies go back over the connection the request came on: the client's own,
        // or the gateway's that hosts it (what a replica learns from a reply route).
        let (senders, checked) = verify.time(|| {
            let (senders, messages): (Vec<PeerId>, Vec<Message>) = frames
                .iter()
                .filter_map(|f| match bft_crypto::decode(&f.bytes, MAX_FRAME_BYTES) {
                    Ok(Frame::Pbft(m)) => Some((f.peer, m)),
                    _ => None, // reply routes: replies go back over the request's connection
                })
                .unzip();
            (senders, validator.verify_many(messages))
        });
        // Execute everything this batch holds, then sign its replies once, as a
        // replica signs the replies of one executed batch.
        let mut fresh: Vec<(PeerId, Reply)> = Vec::new();
        for (peer, checked) in senders.into_iter().zip(checked) {
            let request = match checked {
                Ok(VerifiedMessage::Request(request)) => request,
                // A read-only request: answered from the state, nothing recorded.
                Ok(VerifiedMessage::Read(read)) => {
                    let outcome = app.execute_read_only(&read.operation);
                    let reply = Reply {
                        view: 0,
                        timestamp: read.timestamp,
                        client: read.signer(),
                        replica: 0,
                        refusal: outcome.is_none().then_some(Refusal::NotReadOnly),
                        result: ReplyResult::Full(outcome.unwrap_or_default()),
                        seq: 0,
                        tentative: false,
                    };
                    fresh.push((peer, reply));
                    continue;
                }
                _ => continue,
            };
            let client = request.signer();
            match last_reply.get(&client) {
                Some((ts, reply)) if *ts == request.timestamp => {
                    let _ = net.send(peer, reply.clone());
                    continue;
                }
                Some((ts, _)) if *ts > request.timestamp => continue,
                _ => {}
            }
            let result = app.execute(&request.operation);
            let reply = Reply {
                view: 0,
                timestamp: request.timestamp,
                client,
                replica: 0,
                result: ReplyResult::Full(result),
                refusal: None,
                seq: 0,
                tentative: false,
            };
            fresh.push((peer, reply));
        }
        let peers: Vec<PeerId> = fresh.iter().map(|(p, _)| *p).collect();
        let replies = fresh.into_iter().map(|(_, r)| r).collect();
        for (peer, signed) in peers.into_iter().zip(sign_replies(&key, 0, 0, replies)) {
            let (client, ts) = (signed.reply.client, signed.reply.timestamp);
            let bytes = Arc::new(bft_consensus::frame::encode_pbft(&Message::Reply(signed)));
            last_reply.insert(client, (ts, bytes.clone()));
            let _ = net.send(peer, bytes);
        }
    }
}
