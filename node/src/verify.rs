//! Signature verification: frames from the network pass through the shared
//! [`Ingress`] (frame bound, decoding, sender rule, batched signature checks: the
//! same code the simulator runs) either on a pool of threads, so the loop only
//! runs the state machine and verification scales with cores, or on the event
//! loop itself ([`InlineVerifier`]), where replicas share too few cores for a
//! thread each to pay: every hand-off between threads is a wakeup, and the pool
//! costs one more per batch (the verify thread's) than the loop alone.
//!
//! Frames from the other replicas lead each batch, ahead of client frames (the
//! network queues them apart; see [`take`] for the share clients keep): under a flood of client requests, and of their
//! retransmissions, votes and heartbeats must not wait behind thousands of
//! requests, or the group stops executing and the failure detector suspects
//! everyone (4,096 clients on a cold machine: 45,000 retransmissions, views 3 and
//! 4, nothing committed after the fourth second).

use crate::loop_cpu::PhaseClock;
use bft_consensus::{Admitted, Ingress, Origin, Rejection, ReplicaId, VerifiedFrame};
use bft_net::{Inbound, PeerId};
use prometheus::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A frame after the ingress.
#[derive(Debug)]
pub struct Checked {
    pub peer: PeerId,
    pub origin: Origin,
    pub kind: &'static str,
    pub result: Result<VerifiedFrame, Rejection>,
}

impl Checked {
    fn new(peer: PeerId, a: Admitted) -> Self {
        Self {
            peer,
            origin: a.origin,
            kind: a.kind,
            result: a.result,
        }
    }
}

/// What verification reports: each batch's size, and the CPU its checks took
/// (`bft_verify_batch_frames`, `bft_loop_cpu_seconds_total{phase="verify"}`).
#[derive(Clone)]
pub struct VerifyMetrics {
    pub batch_frames: Histogram,
    pub cpu: PhaseClock,
}

impl VerifyMetrics {
    /// [`check`] `batch`, its size and CPU counted: what a verify thread and the
    /// inline verifier each do with a batch.
    fn check(
        &self,
        ingress: &Ingress,
        replicas: &HashMap<PeerId, ReplicaId>,
        batch: &[Inbound],
    ) -> Vec<Checked> {
        self.batch_frames.observe(batch.len() as f64);
        self.cpu.time(|| check(ingress, replicas, batch))
    }
}

/// Frames handed to one worker at once (their signatures are batch-verified).
const BATCH: usize = 256;

/// The verify threads. Each takes a batch straight from the network's inbound queue
/// (one thread at a time holds the queue while it gathers), admits it and hands the
/// results to the event loop. The event loop never touches raw frames, and a frame
/// crosses only two thread boundaries on its way in: network to verifier, verifier
/// to loop.
pub struct VerifyPool;

impl VerifyPool {
    /// Start `threads` workers reading `inbound` (the replicas' frames, or all)
    /// and `others` (the clients', if the network keeps them apart) and sending
    /// results to `out`. `replicas` tells which transport peers are replicas (the
    /// rest are clients). Each batch's size and CPU go to `metrics`. Everything
    /// stops once the replicas' queue closes or `out` is dropped.
    pub fn start(
        threads: usize,
        ingress: Arc<Ingress>,
        replicas: Arc<HashMap<PeerId, ReplicaId>>,
        inbound: mpsc::Receiver<Inbound>,
        others: Option<mpsc::Receiver<Inbound>>,
        out: mpsc::Sender<Vec<Checked>>,
        metrics: VerifyMetrics,
    ) {
        let inbound = Arc::new(Mutex::new(Queues {
            replicas: inbound,
            others,
        }));
        for i in 0..threads.max(1) {
            let inbound = inbound.clone();
            let ingress = ingress.clone();
            let replicas = replicas.clone();
            let out = out.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let Some(batch) = next_batch(&inbound) else {
                        return;
                    };
                    let checked = metrics.check(&ingress, &replicas, &batch);
                    if out.blocking_send(checked).is_err() {
                        return;
                    }
                })
                .expect("spawn verify thread");
        }
    }
}

/// Where the event loop takes its checked frames from.
pub enum Frames {
    /// A [`VerifyPool`]'s results.
    Pool(mpsc::Receiver<Vec<Checked>>),
    /// The network's queues, checked on the loop.
    Inline(InlineVerifier),
}

impl Frames {
    /// Verification for the event loop: on `threads` verify threads, or on the
    /// loop itself if 0. Arguments as for [`VerifyPool::start`].
    #[must_use]
    pub fn start(
        threads: usize,
        ingress: Arc<Ingress>,
        replicas: Arc<HashMap<PeerId, ReplicaId>>,
        inbound: mpsc::Receiver<Inbound>,
        others: Option<mpsc::Receiver<Inbound>>,
        metrics: VerifyMetrics,
    ) -> Self {
        if threads == 0 {
            return Self::Inline(InlineVerifier::new(
                ingress, replicas, inbound, others, metrics,
            ));
        }
        // Small: frames should wait before verification, where batches are ordered.
        let (out, results) = mpsc::channel(64);
        VerifyPool::start(threads, ingress, replicas, inbound, others, out, metrics);
        Self::Pool(results)
    }

    /// The next batch of checked frames; None once the network is gone.
    ///
    /// Cancel-safe (the event loop selects over it): it awaits only before it
    /// has taken a frame, and everything after runs within the same poll.
    pub async fn next(&mut self) -> Option<Vec<Checked>> {
        match self {
            Self::Pool(rx) => rx.recv().await,
            Self::Inline(v) => v.next().await,
        }
    }
}

/// The verify pool's work done by the event loop: batches taken by the same rules
/// ([`take`]), admitted by the same [`Ingress`].
pub struct InlineVerifier {
    queues: Queues,
    ingress: Arc<Ingress>,
    replicas: Arc<HashMap<PeerId, ReplicaId>>,
    metrics: VerifyMetrics,
}

impl InlineVerifier {
    /// Read `inbound` (the replicas' frames, or all) and `others` (the clients',
    /// if the network keeps them apart); arguments as for [`VerifyPool::start`].
    #[must_use]
    pub fn new(
        ingress: Arc<Ingress>,
        replicas: Arc<HashMap<PeerId, ReplicaId>>,
        inbound: mpsc::Receiver<Inbound>,
        others: Option<mpsc::Receiver<Inbound>>,
        metrics: VerifyMetrics,
    ) -> Self {
        Self {
            queues: Queues {
                replicas: inbound,
                others,
            },
            ingress,
            replicas,
            metrics,
        }
    }

    async fn next(&mut self) -> Option<Vec<Checked>> {
        // Frames already queued are taken without a wait, so a flood (refused
        // garbage included) would keep the loop's task from ever giving way to
        // the runtime's others (the HTTP server, the timer driver); this yields
        // once the task's budget is spent, as a channel's receive does. First,
        // before anything is taken, so the future stays cancel-safe.
        tokio::task::consume_budget().await;
        let batch = take(&mut self.queues).await?;
        Some(self.metrics.check(&self.ingress, &self.replicas, &batch))
    }
}

/// The network's inbound queues: the replicas' (or every frame), and the clients'.
struct Queues {
    replicas: mpsc::Receiver<Inbound>,
    others: Option<mpsc::Receiver<Inbound>>,
}

/// A verify thread's batch: [`take`], with the queues held while it gathers.
fn next_batch(queues: &Mutex<Queues>) -> Option<Vec<Inbound>> {
    let mut q = queues
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    futures::executor::block_on(take(&mut q))
}

/// Take what is queued, up to [`BATCH`]: the replicas' frames first (at most
/// [`REPLICAS_FIRST`]), then the clients', then more of the replicas' if room is
/// left. With nothing queued, wait for the first frame of either. None once the
/// network is gone (the replicas' queue closed); a clients' queue that closes
/// alone is dropped and the replicas' still served.
///
/// Not strict priority: a faulty replica flooding the replicas' queue would then
/// starve every client. Each batch gives the clients at least half while both
/// queues are busy, and a replica's frame waits for at most one batch of clients'.
///
/// Cancel-safe: it waits only while it holds nothing, on receives that are.
async fn take(queues: &mut Queues) -> Option<Vec<Inbound>> {
    let Queues { replicas, others } = queues;
    let mut batch = Vec::new();
    loop {
        fill(replicas, others.as_mut(), &mut batch);
        if !batch.is_empty() {
            return Some(batch);
        }
        let Some(clients) = others.as_mut() else {
            batch.push(replicas.recv().await?);
            continue;
        };
        let (from_replicas, first) = tokio::select! {
            biased;
            f = replicas.recv() => (true, f),
            f = clients.recv() => (false, f),
        };
        match first {
            Some(f) => batch.push(f),
            None if from_replicas => return None,
            None => *others = None,
        }
    }
}

/// Replicas' frames taken before any client's in one batch.
const REPLICAS_FIRST: usize = BATCH / 2;

fn fill(
    replicas: &mut mpsc::Receiver<Inbound>,
    others: Option<&mut mpsc::Receiver<Inbound>>,
    batch: &mut Vec<Inbound>,
) {
    take_queued(replicas, batch, REPLICAS_FIRST);
    if let Some(others) = others {
        take_queued(others, batch, BATCH);
    }
    take_queued(replicas, batch, BATCH);
}

/// Move frames already waiting in `rx` into `batch` until it holds `upto`.
fn take_queued(rx: &mut mpsc::Receiver<Inbound>, batch: &mut Vec<Inbound>, upto: usize) {
    while batch.len() < upto {
        match rx.try_recv() {
            Ok(f) => batch.push(f),
            Err(_) => break,
        }
    }
}

fn check(
    ingress: &Ingress,
    replicas: &HashMap<PeerId, ReplicaId>,
    batch: &[Inbound],
) -> Vec<Checked> {
    let frames = batch
        .iter()
        .map(|f| {
            let origin = replicas
                .get(&f.peer)
                .map_or(Origin::Other, |r| Origin::Replica(*r));
            (origin, f.bytes.as_slice())
        })
        .collect();
    batch
        .iter()
        .zip(ingress.admit_many(frames))
        .map(|(f, a)| Checked::new(f.peer, a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(peer: PeerId, tag: u8) -> Inbound {
        Inbound {
            peer,
            bytes: vec![tag],
        }
    }

    /// A flood of client frames queued first does not put the replicas' frames
    /// behind it: they lead the next batch, and a batch holds at most BATCH frames.
    #[test]
    fn replica_frames_lead_each_batch_and_batches_are_bounded() {
        let (replica, client) = (PeerId::random(), PeerId::random());
        let (rtx, rrx) = mpsc::channel(16);
        let (ctx, crx) = mpsc::channel(2 * BATCH);
        for _ in 0..BATCH + 10 {
            ctx.try_send(frame(client, 0)).unwrap();
        }
        rtx.try_send(frame(replica, 1)).unwrap();
        rtx.try_send(frame(replica, 2)).unwrap();
        let queues = Mutex::new(Queues {
            replicas: rrx,
            others: Some(crx),
        });
        let batch = next_batch(&queues).unwrap();
        assert_eq!(batch.len(), BATCH);
        let tags: Vec<u8> = batch.iter().take(3).map(|f| f.bytes[0]).collect();
        assert_eq!(tags, vec![1, 2, 0]);
        assert!(batch[2..].iter().all(|f| f.peer == client));
        // The rest of the clients' flood comes next; a replica frame that arrived
        // meanwhile still goes first.
        rtx.try_send(frame(replica, 3)).unwrap();
        let batch = next_batch(&queues).unwrap();
        assert_eq!(
            batch.len(),
            13,
            "12 clients' frames left, and the replica's"
        );
        assert_eq!(batch[0].bytes, vec![3]);
        // Nothing queued: wait for whichever comes, and end when the network is gone.
        ctx.try_send(frame(client, 4)).unwrap();
        assert_eq!(next_batch(&queues).unwrap()[0].bytes, vec![4]);
        drop(rtx);
        assert!(next_batch(&queues).is_none());
    }

    /// The loop's own verification takes the batches the pool would (the replicas'
    /// frames first) and admits them through the same ingress: a replica's vote
    /// and a client's request pass, a garbage frame is refused; and it ends when
    /// the network is gone.
    #[test]
    fn inline_verification_orders_and_admits_as_the_pool_does() {
        use bft_consensus::messages::{Message, Prepare, Request};
        use bft_consensus::{Membership, ReplicaConfig, Validator};
        use bft_crypto::{Digest, KeyPair, Signed};
        use futures::FutureExt as _;
        let keys: Vec<_> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        let ingress = Arc::new(Ingress::new(Validator::for_replica(&ReplicaConfig::new(
            0, members,
        ))));
        let (replica, client) = (PeerId::random(), PeerId::random());
        let vote = Signed::sign(
            Prepare {
                view: 0,
                seq: 1,
                digest: Digest([7; 32]),
                replica: 2,
            },
            &keys[2],
        );
        let request = Signed::sign(
            Request {
                timestamp: 1,
                operation: vec![1],
                horizon: 0,
                replier: None,
            },
            &KeyPair::from_seed([9; 32]),
        );
        let (rtx, rrx) = mpsc::channel(16);
        let (ctx, crx) = mpsc::channel(16);
        let encode = bft_consensus::frame::encode_pbft;
        ctx.try_send(Inbound {
            peer: client,
            bytes: encode(&Message::Request(request)),
        })
        .unwrap();
        ctx.try_send(frame(client, 0xff)).unwrap();
        rtx.try_send(Inbound {
            peer: replica,
            bytes: encode(&Message::Prepare(vote)),
        })
        .unwrap();
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("f", "f")).unwrap();
        let cpu = prometheus::Counter::new("c", "c").unwrap();
        let mut frames = Frames::Inline(InlineVerifier::new(
            ingress,
            Arc::new(HashMap::from([(replica, 2)])),
            rrx,
            Some(crx),
            VerifyMetrics {
                batch_frames: histogram.clone(),
                cpu: PhaseClock::new(cpu.clone()),
            },
        ));
        let batch = futures::executor::block_on(frames.next()).unwrap();
        let seen: Vec<_> = batch
            .iter()
            .map(|c| (c.peer, c.origin, c.kind, c.result.is_ok()))
            .collect();
        assert_eq!(
            seen[..2],
            [
                (replica, Origin::Replica(2), "prepare", true),
                (client, Origin::Other, "request", true),
            ]
        );
        assert_eq!(seen.len(), 3);
        assert_eq!((seen[2].0, seen[2].3), (client, false), "garbage refused");
        assert_eq!(histogram.get_sample_count(), 1);
        assert!(
            cpu.get() > 0.0,
            "the checks' CPU is counted as the verify phase"
        );
        // Nothing queued: it waits, holding nothing (dropping the wait loses no
        // frame), and takes what came meanwhile, the replica's first.
        assert!(frames.next().now_or_never().is_none());
        ctx.try_send(frame(client, 0xfe)).unwrap();
        rtx.try_send(frame(replica, 0xfd)).unwrap();
        let batch = futures::executor::block_on(frames.next()).unwrap();
        let peers: Vec<_> = batch.iter().map(|c| c.peer).collect();
        assert_eq!(peers, [replica, client]);
        assert_eq!(histogram.get_sample_count(), 2);
        // The clients' queue closing alone does not end the stream: the replicas'
        // is still served. Both gone: None.
        drop(ctx);
        assert!(frames.next().now_or_never().is_none());
        rtx.try_send(frame(replica, 0xfc)).unwrap();
        let batch = futures::executor::block_on(frames.next()).unwrap();
        assert_eq!(batch.len(), 1);
        drop(rtx);
        assert!(futures::executor::block_on(frames.next()).is_none());
    }

    /// A replica flooding its queue (a faulty one can) does not starve the
    /// clients: while both queues are full, half of each batch is theirs.
    #[test]
    fn a_flood_of_replica_frames_leaves_the_clients_half_of_each_batch() {
        let (replica, client) = (PeerId::random(), PeerId::random());
        let (rtx, rrx) = mpsc::channel(4 * BATCH);
        let (ctx, crx) = mpsc::channel(4 * BATCH);
        for _ in 0..4 * BATCH {
            rtx.try_send(frame(replica, 1)).unwrap();
            ctx.try_send(frame(client, 0)).unwrap();
        }
        let queues = Mutex::new(Queues {
            replicas: rrx,
            others: Some(crx),
        });
        for _ in 0..4 {
            let batch = next_batch(&queues).unwrap();
            assert_eq!(batch.len(), BATCH);
            let clients = batch.iter().filter(|f| f.peer == client).count();
            assert_eq!(clients, BATCH - REPLICAS_FIRST);
        }
    }
}
