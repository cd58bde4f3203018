//! Signature verification off the event loop: a pool of threads takes frames from
//! the network and passes them through the shared [`Ingress`] (frame bound,
//! decoding, sender rule, batched signature checks: the same code the simulator
//! runs), so the loop only runs the state machine and verification scales with
//! cores.

use bft_consensus::{Admitted, Ingress, Origin, Rejection, ReplicaId, VerifiedMessage};
use bft_net::{Inbound, PeerId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A frame after the ingress.
#[derive(Debug)]
pub struct Checked {
    pub peer: PeerId,
    pub origin: Origin,
    pub kind: &'static str,
    pub result: Result<VerifiedMessage, Rejection>,
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

/// Frames handed to one worker at once (their signatures are batch-verified).
const BATCH: usize = 256;

/// The verify threads. Each takes a batch straight from the network's inbound queue
/// (one thread at a time holds the queue while it gathers), admits it and hands the
/// results to the event loop. The event loop never touches raw frames, and a frame
/// crosses only two thread boundaries on its way in: network to verifier, verifier
/// to loop.
pub struct VerifyPool;

impl VerifyPool {
    /// Start `threads` workers reading `inbound` and sending results to `out`.
    /// `replicas` tells which transport peers are replicas (the rest are clients).
    /// Everything stops once `inbound` closes or `out` is dropped.
    pub fn start(
        threads: usize,
        ingress: Arc<Ingress>,
        replicas: Arc<HashMap<PeerId, ReplicaId>>,
        inbound: mpsc::Receiver<Inbound>,
        out: mpsc::Sender<Vec<Checked>>,
    ) {
        let inbound = Arc::new(Mutex::new(inbound));
        for i in 0..threads.max(1) {
            let inbound = inbound.clone();
            let ingress = ingress.clone();
            let replicas = replicas.clone();
            let out = out.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let Some(batch) = next_batch(&inbound) else {
                        return;
                    };
                    if out
                        .blocking_send(check(&ingress, &replicas, &batch))
                        .is_err()
                    {
                        return;
                    }
                })
                .expect("spawn verify thread");
        }
    }
}

/// Wait for a frame, then take whatever else is already queued, up to [`BATCH`].
/// None once the network is gone.
fn next_batch(inbound: &Mutex<mpsc::Receiver<Inbound>>) -> Option<Vec<Inbound>> {
    let mut rx = inbound
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let first = rx.blocking_recv()?;
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(f) => batch.push(f),
            Err(_) => break,
        }
    }
    Some(batch)
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
