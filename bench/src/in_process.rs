//! Benchmark harnesses for bftnode. This module drives the PBFT core alone: n
//! replicas in one process, every message encoded, decoded and signature-checked as
//! if it had crossed a network, but no network, disk or async runtime. It shows what
//! the core and the crypto cost, so the node's numbers can be read against it.

use bft_consensus::messages::Request;
use bft_consensus::{
    Input, KvOp, KvStore, Membership, Message, Output, Replica, ReplicaConfig, Validator,
};
use bft_crypto::{KeyPair, Signed};
use std::collections::VecDeque;
use std::time::Duration;

/// `count` signed KV puts of `payload` bytes from `clients` distinct clients
/// (timestamps increase per client, as PBFT requires).
#[must_use]
pub fn signed_requests(count: usize, clients: usize, payload: usize) -> Vec<Signed<Request>> {
    let keys: Vec<KeyPair> = (0..clients)
        .map(|i| KeyPair::from_seed(seed(1000 + i)))
        .collect();
    (0..count)
        .map(|i| {
            let op = KvOp::Put {
                key: format!("key-{}", i % 1024).into_bytes(),
                value: vec![b'x'; payload],
            };
            let client = &keys[i % clients];
            Signed::sign(
                Request {
                    timestamp: (i / clients) as u64 + 1,
                    operation: op.encode(),
                    horizon: 0,
                    replier: None,
                },
                client,
            )
        })
        .collect()
}

fn seed(i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

/// n replicas wired together in memory.
pub struct InProcessCluster {
    replicas: Vec<Replica<KvStore>>,
    /// Each replica's own, as the node builds them (backups share the checks of
    /// client signatures in pre-prepares; see `request_checks`).
    validators: Vec<Validator>,
    queue: VecDeque<(u32, Vec<u8>)>,
    now: Duration,
    /// Encoded bytes moved between replicas (a proxy for network load).
    pub bytes_moved: u64,
}

impl InProcessCluster {
    #[must_use]
    pub fn new(n: usize, batch_size: usize) -> Self {
        let keys: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed(seed(i))).collect();
        let members = Membership::new(keys.iter().map(KeyPair::public).collect());
        let config = |id: u32| {
            let mut c = ReplicaConfig::new(id, members.clone());
            c.params.batch_size = batch_size;
            c.params.checkpoint_interval = 128;
            c.params.window = 256;
            c.batch_timeout = std::time::Duration::from_millis(1);
            c
        };
        let validators = (0..n)
            .map(|i| Validator::for_replica(&config(i as u32)))
            .collect();
        let replicas = (0..n)
            .map(|i| Replica::new(config(i as u32), keys[i].clone(), KvStore::new()))
            .collect();
        Self {
            replicas,
            validators,
            queue: VecDeque::new(),
            now: Duration::ZERO,
            bytes_moved: 0,
        }
    }

    fn enqueue(&mut self, to: u32, msg: &Message) {
        let bytes = bft_consensus::frame::encode_pbft(msg);
        self.bytes_moved += bytes.len() as u64;
        self.queue.push_back((to, bytes));
    }

    fn perform(&mut self, from: u32, out: Vec<Output>) {
        let n = self.replicas.len() as u32;
        for o in out {
            match o {
                Output::Send { to, message } => self.enqueue(to, &message),
                Output::Broadcast { message } => {
                    let bytes = bft_consensus::frame::encode_pbft(&message);
                    for to in (0..n).filter(|t| *t != from) {
                        self.bytes_moved += bytes.len() as u64;
                        self.queue.push_back((to, bytes.clone()));
                    }
                }
                // The checkpoint's job runs at once, as part of the work counted
                // (the node runs it on a thread of its own).
                Output::TakeSnapshot(job) => {
                    let mut more = Vec::new();
                    let taken = Input::SnapshotTaken(job.run());
                    self.replicas[from as usize].handle(self.now, taken, &mut more);
                    self.perform(from, more);
                }
                // Replies are signed (that cost is counted) but no client reads them.
                _ => {}
            }
        }
    }

    /// Submit every request to the primary, deliver until quiet, and return how many
    /// requests replica 0 executed. The batch timer is fired whenever the system
    /// goes quiet with requests still queued.
    pub fn order_all(&mut self, requests: Vec<Signed<Request>>) -> u64 {
        let before = self.replicas[0].last_executed();
        for r in requests {
            self.enqueue(0, &Message::Request(r));
        }
        loop {
            while let Some((to, bytes)) = self.queue.pop_front() {
                let Ok(bft_consensus::Frame::Pbft(msg)) =
                    bft_crypto::decode(&bytes, bft_consensus::messages::MAX_MESSAGE_BYTES)
                else {
                    panic!("the benchmark's frames are PBFT")
                };
                let Ok(verified) = self.validators[to as usize].verify(msg) else {
                    panic!("invalid message in the benchmark")
                };
                let mut out = Vec::new();
                self.replicas[to as usize].handle(self.now, Input::Message(verified), &mut out);
                self.perform(to, out);
            }
            if self.replicas[0].pending_requests() == 0 {
                break;
            }
            self.now += Duration::from_millis(5);
            let mut out = Vec::new();
            self.replicas[0].handle(
                self.now,
                Input::Timer(bft_consensus::Timer::Batch),
                &mut out,
            );
            if out.is_empty() {
                break;
            }
            self.perform(0, out);
        }
        self.replicas[0].last_executed() - before
    }

    #[must_use]
    pub fn replica(&self, id: usize) -> &Replica<KvStore> {
        &self.replicas[id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_orders_everything_and_replicas_agree() {
        let mut c = InProcessCluster::new(4, 16);
        let seqs = c.order_all(signed_requests(200, 50, 512));
        assert!(seqs >= 200 / 16, "executed {seqs} batches");
        let d = c.replica(0).app_digest();
        for i in 1..4 {
            assert_eq!(c.replica(i).app_digest(), d);
            assert_eq!(c.replica(i).last_executed(), c.replica(0).last_executed());
        }
        assert_eq!(c.replica(0).app().len(), 200);
    }
}
