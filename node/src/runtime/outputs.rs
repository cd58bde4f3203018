//! Performing the replica's and the generals engine's outputs. A turn's records and
//! frames go to the persister together (it sends the frames once the records are
//! durable); frames held back under `delay` join a later turn's.

use super::Runtime;
use bft_consensus::generals::GeneralsOutput;
use bft_consensus::{Frame, Message, Output, ReplicaId};
use bft_net::PeerId;
use std::sync::Arc;
use std::time::Instant;

impl Runtime {
    /// Hand this turn's records and frames to the persister: the frames leave once
    /// the records (and every earlier turn's) are durable.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        let out = std::mem::take(&mut self.pending);
        let mut records = Vec::new();
        let mut apart = Vec::new();
        let mut jobs = Vec::new();
        let clock = self.outputs_cpu.clone();
        let perform = !out.is_empty(); // an idle turn costs no clock reads
        clock.time_if(perform, || {
            for o in out {
                match o {
                    Output::Persist(r) => records.push(r),
                    Output::PersistApart(r) => apart.push(r),
                    Output::TakeSnapshot(job) => jobs.push(job),
                    other => self.perform(other),
                }
            }
        });
        // The replica signs its checkpoint only when the job is done: a node whose
        // snapshot thread is gone must stop rather than look alive and never vote a
        // checkpoint again.
        for job in jobs {
            self.snapshotter.submit(job).await?;
        }
        let frames = std::mem::take(&mut self.outbox);
        self.persister.submit(records, apart, frames).await
    }

    fn perform(&mut self, o: Output) {
        let me = self.me();
        match o {
            Output::Send { to, message } => self.send(to, &message),
            Output::Broadcast { message } => {
                let frame = encode(&message);
                for to in 0..self.peers.len() as ReplicaId {
                    if to != me {
                        self.send_frame(self.peers[to as usize], frame.clone(), message.kind());
                    }
                }
            }
            Output::Replies(replies) => {
                let routes = &self.routes;
                for (peer, message) in replies.address(|client| routes.peer_for(client)) {
                    self.send_frame(peer, encode(&message), message.kind());
                }
            }
            Output::Persist(_) | Output::PersistApart(_) => {}
            Output::TakeSnapshot(_) => {} // in `flush`
            Output::SetTimer { timer, at } => {
                self.timers.insert(timer, self.start + at);
            }
            Output::Rejected { peer, reason } => {
                tracing::debug!(?peer, %reason, "rejected");
                self.count_invalid(peer, reason.label());
            }
            Output::Executed(e) => {
                let now = Instant::now();
                let m = &self.metrics;
                m.committed_batches.inc();
                m.committed_requests.inc_by(e.requests.len() as u64);
                m.batch_size.observe(e.batch_len as f64);
                for (id, _) in &e.requests {
                    if let Some(seen) = self.first_seen.remove(id) {
                        m.request_latency
                            .observe(now.duration_since(seen).as_secs_f64());
                    }
                }
                self.committed_requests += e.requests.len() as u64;
                self.committed.record(e.seq, e.digest);
                tracing::debug!(
                    replica = me,
                    view = e.view,
                    seq = e.seq,
                    requests = e.requests.len(),
                    "executed"
                );
            }
            Output::ReadsAnswered { count } => {
                self.metrics.read_only_requests.inc_by(count as u64);
            }
            Output::TentativelyExecuted { seq, requests } => {
                self.metrics.tentative_executions.inc();
                tracing::trace!(replica = me, seq, requests, "executed tentatively");
            }
            Output::RolledBack { seq } => {
                self.metrics.rollbacks.inc();
                tracing::info!(replica = me, seq, "tentative execution rolled back");
            }
            Output::ViewEntered { view, primary } => {
                self.metrics.view_changes.inc();
                tracing::info!(replica = me, view, primary, "entered view");
            }
            Output::ViewChangeStarted { view } => {
                tracing::info!(replica = me, view, "view change started");
            }
            Output::CheckpointStable { seq, .. } => {
                tracing::debug!(replica = me, seq, "checkpoint stable");
            }
            Output::StateInstalled { seq, .. } => {
                self.metrics.state_transfers.inc();
                tracing::info!(replica = me, seq, "state transfer installed");
            }
            Output::Suspected(peers) => {
                tracing::info!(replica = me, suspected = ?peers, "suspected set changed");
            }
        }
    }

    /// Perform the generals engine's outputs (already through its behaviour).
    pub(super) fn generals_outputs(&mut self, out: Vec<GeneralsOutput>) {
        let me = self.me();
        for o in out {
            match o {
                GeneralsOutput::Send { to, chain } => {
                    self.send_node_frame(to, &Frame::Generals(chain))
                }
                GeneralsOutput::Report { to, report } if to == me => {
                    self.generals.on_report(&report.payload);
                }
                GeneralsOutput::Report { to, report } => {
                    self.send_node_frame(to, &Frame::GeneralsReport(report));
                }
                GeneralsOutput::SetTimer { .. } => {} // the loop asks for the next deadline
                GeneralsOutput::Decided { id, value } => {
                    let outcome = if value.is_some() { "value" } else { "none" };
                    self.metrics
                        .generals_decisions
                        .with_label_values(&[outcome])
                        .inc();
                    tracing::info!(replica = me, instance = %id, ?value, "generals decided");
                }
                GeneralsOutput::Ignored { id, why } => {
                    tracing::debug!(replica = me, instance = %id, why, "generals chain ignored");
                }
            }
        }
    }

    fn send(&mut self, to: ReplicaId, message: &Message) {
        if let Some(peer) = self.peers.get(to as usize).copied() {
            self.send_frame(peer, encode(message), message.kind());
        }
    }

    /// One of the node's own frames (generals), through the same outbox as PBFT.
    fn send_node_frame(&mut self, to: ReplicaId, frame: &Frame) {
        if let Some(peer) = self.peers.get(to as usize).copied() {
            let bytes = Arc::new(bft_consensus::frame::encode(frame));
            self.send_frame(peer, bytes, frame.kind());
        }
    }

    /// Queue a frame for `peer` (it leaves at the end of the turn, once the turn is
    /// durable), or hold it back while `delay` is in force.
    fn send_frame(&mut self, peer: PeerId, frame: Arc<Vec<u8>>, kind: &'static str) {
        let delay = self.replica.send_delay();
        if delay.is_zero() {
            self.outbox.push((peer, frame));
        } else if self.delayed.len() >= super::MAX_DELAYED_FRAMES {
            tracing::debug!(
                kind,
                "delay behaviour holds too many frames; this one dropped"
            );
            return;
        } else {
            self.delayed_tie += 1;
            self.delayed
                .insert((Instant::now() + delay, self.delayed_tie), (peer, frame));
        }
        self.metrics.messages_sent.with_label_values(&[kind]).inc();
    }

    /// Queue the held-back frames that are due (they leave with this turn).
    pub(super) fn release_delayed(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.outbox.push(entry.remove());
        }
    }
}

fn encode(message: &Message) -> Arc<Vec<u8>> {
    Arc::new(bft_consensus::frame::encode_pbft(message))
}
