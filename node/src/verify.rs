//! Signature verification off the event loop: a pool of threads decodes frames and
//! checks signatures (client requests batched), so the loop only runs the state
//! machine and verification scales with cores.

use bft_consensus::messages::MAX_MESSAGE_BYTES;
use bft_consensus::validate::claimed_sender;
use bft_consensus::{Message, Rejection, ReplicaId, Validator, VerifiedMessage};
use bft_net::{Inbound, PeerId};
use std::sync::mpsc as std_mpsc;
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

/// The verify threads: a feeder drains the network's inbound queue into batches, and
/// workers decode and verify them. The event loop never touches raw frames.
pub struct VerifyPool;

impl VerifyPool {
    /// Start a feeder reading `inbound` and `threads` workers that send results to
    /// `out`. Everything stops once `inbound` closes or `out` is dropped.
    pub fn start(
        threads: usize,
        validator: Arc<Validator>,
        mut inbound: mpsc::Receiver<Inbound>,
        out: mpsc::Sender<Vec<Checked>>,
    ) {
        let (tx, rx) = std_mpsc::sync_channel::<Vec<Inbound>>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let validator = validator.clone();
            let out = out.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let batch = match rx.lock().expect("verify queue lock").recv() {
                        Ok(b) => b,
                        Err(_) => return,
                    };
                    if out.blocking_send(check(&validator, batch)).is_err() {
                        return;
                    }
                })
                .expect("spawn verify thread");
        }
        std::thread::Builder::new()
            .name("verify-feed".into())
            .spawn(move || {
                while let Some(first) = inbound.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match inbound.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn verify feeder");
    }
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
