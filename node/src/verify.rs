//! Signature verification off the event loop: a pool of threads decodes frames and
//! checks signatures (client requests batched), so the loop only runs the state
//! machine and verification scales with cores.

use bft_consensus::messages::MAX_MESSAGE_BYTES;
use bft_consensus::validate::claimed_sender;
use bft_consensus::{Message, Rejection, ReplicaId, Validator, VerifiedMessage};
use bft_net::{Inbound, PeerId};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A frame after decoding and verification.
#[derive(Debug)]
pub struct Checked {
    pub peer: PeerId,
    pub kind: &'static str,
    /// The replica the message claims to be from (for attributing rejections).
    pub claimed: Option<ReplicaId>,
    pub result: Result<VerifiedMessage, Rejection>,
}

/// Frames handed to one worker at once (client requests in them are batch-verified).
const BATCH: usize = 256;

/// The verify threads. Each takes a batch straight from the network's inbound queue
/// (one thread at a time holds the queue while it gathers), checks it and hands the
/// results to the event loop. The event loop never touches raw frames, and a frame
/// crosses only two thread boundaries on its way in: network to verifier, verifier
/// to loop.
pub struct VerifyPool;

impl VerifyPool {
    /// Start `threads` workers reading `inbound` and sending results to `out`.
    /// Everything stops once `inbound` closes or `out` is dropped.
    pub fn start(
        threads: usize,
        validator: Arc<Validator>,
        inbound: mpsc::Receiver<Inbound>,
        out: mpsc::Sender<Vec<Checked>>,
    ) {
        let inbound = Arc::new(Mutex::new(inbound));
        for i in 0..threads.max(1) {
            let inbound = inbound.clone();
            let validator = validator.clone();
            let out = out.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let Some(batch) = next_batch(&inbound) else {
                        return;
                    };
                    if out.blocking_send(check(&validator, batch)).is_err() {
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

fn check(validator: &Validator, batch: Vec<Inbound>) -> Vec<Checked> {
    let mut decoded = Vec::with_capacity(batch.len());
    let mut failed = Vec::new();
    for inbound in batch {
        match bft_crypto::decode::<Message>(&inbound.bytes, MAX_MESSAGE_BYTES) {
            Ok(msg) => decoded.push((inbound.peer, msg.kind(), claimed_sender(&msg), msg)),
            Err(e) => failed.push(Checked {
                peer: inbound.peer,
                kind: "malformed",
                claimed: None,
                result: Err(Rejection::Malformed(e.to_string())),
            }),
        }
    }
    let meta: Vec<_> = decoded.iter().map(|(p, k, c, _)| (*p, *k, *c)).collect();
    let results = validator.verify_many(decoded.into_iter().map(|(.., m)| m).collect());
    meta.into_iter()
        .zip(results)
        .map(|((peer, kind, claimed), result)| Checked {
            peer,
            kind,
            claimed,
            result,
        })
        .chain(failed)
        .collect()
}
