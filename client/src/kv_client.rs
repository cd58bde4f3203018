//! A key-value client (used by `bftnode client` and the benchmark): the sans-IO
//! PBFT [`Client`] inside, a session of a [`Gateway`] outside, and a loop that
//! submits, retransmits and waits for f+1 matching replies (2f+1 for a read-only
//! get, see [`KvClient::read`]).

use crate::config::ResolvedClient;
use crate::gateway::{Gateway, Incoming, Session};
use crate::{poll_until, wall_clock_micros, ROOT_CACHE};
use bft_consensus::client::{Client, ClientOutput};
use bft_consensus::{KvOp, KvResult, Message, ReplicaConfig, RootCache, Validator, VerifiedReply};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("transport: {0}")]
    Net(#[from] bft_net::NetError),
    #[error("no quorum reached within {0:?} (are the replicas running?)")]
    Timeout(Duration),
    #[error("replicas answered with bytes that are not a KV result")]
    BadResult,
    #[error("the request was executed, but its reply is no longer held by the replicas")]
    ReplyLost,
    #[error("the request expired after a retransmission: it may or may not have executed")]
    OutcomeUnknown,
}

/// How an operation is sent.
#[derive(Clone, Copy)]
enum Path {
    Ordered,
    ReadOnly,
}

pub struct KvClient {
    session: Session,
    core: Client,
    validator: Validator,
    start: Instant,
    timeout: Duration,
    /// Reply roots already verified, possibly shared with other clients of this
    /// process (see [`KvClient::share_root_cache`]).
    roots: Arc<RootCache>,
    /// Requests sent again to every replica after the retransmission timeout.
    retransmissions: u64,
}

impl KvClient {
    /// Start a gateway of the client's own (its transport identity is the
    /// client's key) and dial the replicas. Must run inside tokio.
    ///
    /// # Errors
    /// If the transport cannot start.
    pub fn connect(cfg: &ResolvedClient) -> Result<Self, ClientError> {
        let gateway = Gateway::connect_as(&cfg.validators, cfg.key.clone())?;
        Ok(Self::via(&gateway, cfg))
    }

    /// A client with key `cfg.key` behind `gateway`, shared with other clients.
    /// One client per key: a second with the same key takes the replies over from
    /// the first.
    #[must_use]
    pub fn via(gateway: &Gateway, cfg: &ResolvedClient) -> Self {
        let members = cfg.validators.membership();
        let validator = Validator::new(&ReplicaConfig::new(0, members.clone()));
        // At most half the time the caller waits: every request that goes
        // unanswered is sent to every replica before the caller gives up.
        let core = Client::new(
            cfg.key.clone(),
            members,
            wall_clock_micros(),
            cfg.retransmit,
        )
        .with_retransmit_ceiling(cfg.timeout / 2);
        Self {
            session: gateway.session(&cfg.key),
            core,
            validator,
            start: Instant::now(),
            timeout: cfg.timeout,
            roots: Arc::new(RootCache::new(ROOT_CACHE)),
            retransmissions: 0,
        }
    }

    /// Check reply roots through `cache`, shared with other clients of this process:
    /// replies to requests batched together arrive under the same signed root, so
    /// its signature is checked once, not once per client.
    pub fn share_root_cache(&mut self, cache: Arc<RootCache>) {
        self.roots = cache;
    }

    /// How many times this client has sent a request again to every replica
    /// because no quorum answered within its retransmission timeout. Under load a
    /// count that grows means the replicas' latency exceeds the clients' timeout:
    /// each retransmission costs every replica a decode and a lookup (the replicas
    /// remember signatures they checked), and a backup that never saw the request a
    /// signature check.
    #[must_use]
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// Replicas currently connected.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.session.connected()
    }

    /// Run one operation to completion: the result f+1 replicas agree on.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if no quorum answers in time.
    pub async fn execute(&mut self, op: &KvOp) -> Result<KvResult, ClientError> {
        let bytes = self.run(op.encode(), Path::Ordered).await?;
        KvResult::decode(&bytes).map_err(|_| ClientError::BadResult)
    }

    /// Run a read-only operation without ordering it (TOCS §5.1.3): sent to every
    /// replica, accepted on 2f+1 matching results; ordered after all (with a newer
    /// timestamp) if those cannot be had within the retransmission timeout.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if no quorum answers in time.
    pub async fn read(&mut self, op: &KvOp) -> Result<KvResult, ClientError> {
        let bytes = self.run(op.encode(), Path::ReadOnly).await?;
        KvResult::decode(&bytes).map_err(|_| ClientError::BadResult)
    }

    /// Cancel-safe: if an earlier call's future was dropped mid-request, that
    /// request is abandoned here (it may still execute; this one gets a new
    /// timestamp), so the next call never finds the core busy.
    async fn run(&mut self, operation: Vec<u8>, path: Path) -> Result<Vec<u8>, ClientError> {
        if self.core.outstanding_timestamp().is_some() {
            self.core.abandon();
        }
        let result = self.wait_for_quorum(operation, path).await;
        if result.is_err() {
            // Free the client for the next operation (which gets a new timestamp).
            self.core.abandon();
        }
        result
    }

    async fn wait_for_quorum(
        &mut self,
        operation: Vec<u8>,
        path: Path,
    ) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let now = self.start.elapsed();
        let out = match path {
            Path::Ordered => self.core.submit(now, operation),
            Path::ReadOnly => self.core.submit_read(now, operation),
        }
        .expect("nothing is outstanding: run abandoned it");
        let mut retransmit_at = None;
        if let Some(done) = self.perform(out, &mut retransmit_at) {
            return done;
        }
        // One timer for the whole request, moved only when the wake-up moves: a
        // fresh one per reply cost a timer-wheel insertion and removal for each of
        // the ~4 replies a request gets (issue 13).
        let timer = tokio::time::sleep_until(deadline.into());
        tokio::pin!(timer);
        loop {
            let wake = tokio::time::Instant::from_std(
                retransmit_at.map_or(deadline, |r: Instant| r.min(deadline)),
            );
            if timer.deadline() != wake || timer.is_elapsed() {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                r = self.session.next_reply() => {
                    for reply in self.checked(r) {
                        let out = self.core.on_reply_at(self.start.elapsed(), &reply);
                        if let Some(done) = self.perform(out, &mut retransmit_at) {
                            return done;
                        }
                    }
                }
                () = &mut timer => {
                    if Instant::now() >= deadline {
                        return Err(ClientError::Timeout(self.timeout));
                    }
                    let out = self.core.on_timeout(self.start.elapsed());
                    if out.iter().any(|o| matches!(o, ClientOutput::Broadcast { .. })) {
                        self.retransmissions += 1;
                    }
                    self.perform(out, &mut retransmit_at);
                }
            }
        }
    }

    /// The verified replies in `r` that answer the outstanding request. Late replies
    /// to earlier requests are skipped before paying for a check; a bad one is
    /// dropped (the core needs only f+1 good ones).
    fn checked(&self, r: Incoming) -> Vec<VerifiedReply> {
        let awaited = self.core.outstanding_timestamp();
        let me = self.core.id();
        let answers = |v: &VerifiedReply| Some(v.timestamp) == awaited && v.client == me;
        match r {
            Incoming::Signed(r) if Some(r.reply.timestamp) == awaited => self
                .validator
                .verify_reply(r, Some(&self.roots))
                .into_iter()
                .collect(),
            Incoming::Signed(_) => Vec::new(),
            Incoming::Verified(v) => answers(&v).then_some(v).into_iter().collect(),
        }
    }

    /// Carry out the core's outputs; `Some` once the request is over.
    fn perform(
        &self,
        out: Vec<ClientOutput>,
        retransmit_at: &mut Option<Instant>,
    ) -> Option<Result<Vec<u8>, ClientError>> {
        let mut accepted = None;
        for o in out {
            match o {
                ClientOutput::Send { to, message } => {
                    let frame = Arc::new(bft_consensus::frame::encode_pbft(&message));
                    self.session.send(to, frame);
                }
                // A read goes to every replica the first time; it needs no route
                // again (the session sent it, and a retransmission resends it).
                ClientOutput::Broadcast {
                    message: message @ Message::Read(_),
                } => {
                    let frame = Arc::new(bft_consensus::frame::encode_pbft(&message));
                    self.session.send_all(&frame);
                }
                ClientOutput::Broadcast { message } => {
                    let frame = Arc::new(bft_consensus::frame::encode_pbft(&message));
                    self.session.broadcast(&frame);
                }
                ClientOutput::SetTimer { at } => *retransmit_at = Some(self.start + at),
                ClientOutput::Accepted { result, .. } => accepted = Some(Ok(result)),
                ClientOutput::Lost { .. } => accepted = Some(Err(ClientError::ReplyLost)),
                ClientOutput::Unknown { .. } => accepted = Some(Err(ClientError::OutcomeUnknown)),
                ClientOutput::Reissued { timestamp } => {
                    tracing::debug!(
                        timestamp,
                        "request signed again (expired, or a read ordered)"
                    );
                }
            }
        }
        accepted
    }

    /// Write `value` under `key`; the result carries the value replaced.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<KvResult, ClientError> {
        self.execute(&KvOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    /// Write `value` under `key`; the result only says it was written
    /// ([`KvResult::Written`]), a smaller reply than a put's.
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<KvResult, ClientError> {
        self.execute(&KvOp::Set {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    /// A read-only get (2f+1 matching replies; ordered if those cannot be had).
    pub async fn get(&mut self, key: &[u8]) -> Result<KvResult, ClientError> {
        self.read(&KvOp::Get { key: key.to_vec() }).await
    }

    /// A get ordered like a write (f+1 matching replies after three phases).
    pub async fn get_ordered(&mut self, key: &[u8]) -> Result<KvResult, ClientError> {
        self.execute(&KvOp::Get { key: key.to_vec() }).await
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<KvResult, ClientError> {
        self.execute(&KvOp::Delete { key: key.to_vec() }).await
    }

    /// Wait until at least `n` replicas are connected, or `within` passes.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> bool {
        poll_until(within, || self.connected() >= n).await
    }
}
