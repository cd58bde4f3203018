//! The PBFT client (OSDI'99 §4.1) as a sans-IO state machine: sign a request with a
//! fresh timestamp, send it to the primary it believes in, accept a result once f+1
//! replicas sent matching replies, and on timeout retransmit to every replica.
//!
//! Replies may be tentative (TOCS §5.1.2, `replica/tentative.rs`): 2f+1 matching
//! ones from one view are accepted as f+1 committed ones are.
//!
//! Replies are matched by the digest of their result (TOCS §5.1.1, see
//! [`crate::reply_result`]): each request designates one backup to send the result
//! in full, the others send its digest, and the client accepts once the quorum
//! matches and a full result hashes to their digest.
//!
//! A read-only operation (TOCS §5.1.3, [`Client::submit_read`]) goes to every
//! replica instead and is accepted once 2f+1 replicas gave the same result, which
//! the replicas make linearizable (see `replica/reads.rs`). When that can no longer
//! happen (the replies disagree, or the timeout passes) the client falls back to
//! an ordered request with a newer timestamp.
//!
//! The retransmission timeout adapts to the latency the client sees (RFC 6298's
//! estimator with Karn's rule), never below the configured one. A fixed timeout
//! turned overload into collapse: with 4,096 clients queued at the primary every
//! request outlived the 1 s timer, so each was sent again to every replica, and the
//! backups spent their cores verifying copies (issue 13: 2,444 req/s with no view
//! change, against 6,000 at 1,024 clients).
//!
//! Each expiry doubles the timeout (RFC 6298 §5.5), and the doubled value stands
//! until a request answered without retransmission gives a fresh sample (§5.7,
//! Karn): a client has no sample before its first answer, and 4,096 of them whose
//! first requests all outlived the 1 s floor would otherwise send each again every
//! second, to every replica, for as long as the queue they form lasts.

use crate::messages::{Message, ReadRequest, Refusal, Request};
use crate::reply::VerifiedReply;
use crate::types::{Membership, ReplicaId, Seq, View};
use bft_crypto::{Digest, KeyPair, Signed};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    #[error("a request is already outstanding (one at a time per client, as in PBFT)")]
    Busy,
}

/// What the client asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    Send {
        to: ReplicaId,
        message: Message,
    },
    /// Send to every replica.
    Broadcast {
        message: Message,
    },
    /// Call [`Client::on_timeout`] at this time (replaces the previous deadline).
    SetTimer {
        at: Duration,
    },
    /// The quorum agreed on this result (f+1 committed replies, 2f+1 tentative ones
    /// from one view, or 2f+1 read-only ones), and it hashes to their digest.
    Accepted {
        timestamp: u64,
        result: Vec<u8>,
    },
    /// f+1 replicas refused the request as expired (its horizon had passed, see
    /// `client_table`): the same operation was signed again with this timestamp and
    /// a fresh horizon, and sent to every replica. Also: a read-only request could
    /// not gather 2f+1 matching replies, and its operation was signed again as an
    /// ordered request with this timestamp.
    Reissued {
        timestamp: u64,
    },
    /// f+1 replicas said the request was executed but its reply is no longer held:
    /// the client asked again too late. The request is over; its result is unknown.
    Lost {
        timestamp: u64,
    },
    /// f+1 replicas refused the request as expired after it had been retransmitted:
    /// an earlier copy may have executed long ago (its entry since forgotten), so
    /// signing it again could execute it twice. The request is over; whether it
    /// executed is unknown.
    Unknown {
        timestamp: u64,
    },
}

/// What a replica answered: the digest of the result (see
/// [`crate::reply_result`]) or why there is none, and its seq.
type Answer = (Digest, Option<Refusal>, Seq);

/// Largest retransmission timeout, as a multiple of the configured one.
const MAX_RTO_FACTOR: u32 = 32;
/// Doublings counted at most (the ceiling caps the timeout long before).
const MAX_BACKOFF_DOUBLINGS: u32 = 16;

/// The retransmission timeout: the smoothed round trip plus four deviations
/// (RFC 6298 §2), doubled for each expiry of an ordered request since the last
/// sample (§5.5), between the configured timeout and a ceiling ([`MAX_RTO_FACTOR`]
/// times it unless the driver sets a lower one, see
/// [`Client::with_retransmit_ceiling`]).
#[derive(Clone, Debug)]
struct RetransmitTimeout {
    floor: Duration,
    ceiling: Duration,
    smoothed: Option<Duration>,
    deviation: Duration,
    /// Expiries since the last sample: the timeout is doubled this many times.
    backoff: u32,
}

impl RetransmitTimeout {
    fn new(floor: Duration) -> Self {
        Self {
            floor,
            ceiling: floor.saturating_mul(MAX_RTO_FACTOR),
            smoothed: None,
            deviation: Duration::ZERO,
            backoff: 0,
        }
    }

    fn current(&self) -> Duration {
        let estimate = self.smoothed.map_or(self.floor, |s| {
            s.saturating_add(self.deviation.saturating_mul(4))
        });
        let backed_off = estimate
            .max(self.floor)
            .saturating_mul(1 << self.backoff.min(MAX_BACKOFF_DOUBLINGS));
        backed_off.clamp(self.floor, self.ceiling.max(self.floor))
    }

    /// The timer expired (RFC 6298 §5.5): double the timeout until a fresh sample.
    fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF_DOUBLINGS);
    }

    /// Forget what was learnt (RFC 6298 §5.7): a request went unanswered, so the
    /// primary may be gone, and the next one must reach every replica soon.
    fn reset(&mut self) {
        self.smoothed = None;
        self.deviation = Duration::ZERO;
        self.backoff = 0;
    }

    /// A round trip of a request that was sent once (Karn: a retransmitted one
    /// cannot tell which copy was answered).
    fn sample(&mut self, rtt: Duration) {
        self.backoff = 0;
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.deviation = rtt / 2;
            }
            Some(s) => {
                self.deviation = (self.deviation * 3 + s.abs_diff(rtt)) / 4;
                self.smoothed = Some((s * 7 + rtt) / 8);
            }
        }
    }
}

/// What the outstanding request was sent as.
enum Sent {
    Ordered(Signed<Request>),
    /// Read-only, answered outside the order (2f+1 matching results needed).
    Read(Signed<ReadRequest>),
}

impl Sent {
    fn timestamp(&self) -> u64 {
        match self {
            Sent::Ordered(r) => r.payload.timestamp,
            Sent::Read(r) => r.payload.timestamp,
        }
    }

    fn operation(&self) -> &[u8] {
        match self {
            Sent::Ordered(r) => &r.payload.operation,
            Sent::Read(r) => &r.payload.operation,
        }
    }
}

struct Outstanding {
    request: Sent,
    /// When it was sent, if its round trip can be measured (not after a reissue,
    /// which signed the operation again after a first round).
    sent_at: Option<Duration>,
    /// Each replica's latest reply for this request: (view, result or refusal,
    /// tentative).
    replies: BTreeMap<ReplicaId, (View, Answer, bool)>,
    /// The full results heard, by replica, with their digests (a digest reply
    /// carries none; see [`crate::reply_result`]).
    full: BTreeMap<ReplicaId, (Digest, Vec<u8>)>,
    deadline: Duration,
    /// Sent to every replica after a timeout (so it may have been ordered twice).
    retransmitted: bool,
    /// When the quorum first agreed on a digest with no full result for it yet
    /// (zero if the driver gives no clock): from then on the client waits for the
    /// designated replica (see [`Client::replier_grace`]).
    full_missing_since: Option<Duration>,
}

impl Outstanding {
    fn new(request: Sent, sent_at: Option<Duration>, deadline: Duration) -> Self {
        Self {
            request,
            sent_at,
            replies: BTreeMap::new(),
            full: BTreeMap::new(),
            deadline,
            retransmitted: false,
            full_missing_since: None,
        }
    }
}

pub struct Client {
    key: KeyPair,
    members: Membership,
    view: View,
    /// The highest sequence number f+1 replicas reported: the next request's horizon.
    horizon: Seq,
    next_timestamp: u64,
    retransmit_timeout: RetransmitTimeout,
    /// Matching replies a read-only request needs: 2f+1.
    read_quorum: usize,
    outstanding: Option<Outstanding>,
    /// Which backup the next request designates to send its result in full
    /// (counted among the replicas other than the primary, modulo their number).
    /// Starts from the client's key, so a process's clients spread the full
    /// results over the backups, and moves on whenever the client had to wait for
    /// the designated replica's result (see [`Client::replier_grace`]).
    replier_turn: usize,
}

impl Client {
    /// `first_timestamp` must exceed any timestamp this key used before (the node
    /// seeds it from the wall clock so a restarted client never reuses one).
    #[must_use]
    pub fn new(
        key: KeyPair,
        members: Membership,
        first_timestamp: u64,
        retransmit_timeout: Duration,
    ) -> Self {
        Self {
            replier_turn: usize::from(key.public().0[0]),
            key,
            read_quorum: members.quorum(),
            members,
            view: 0,
            horizon: 0,
            next_timestamp: first_timestamp,
            retransmit_timeout: RetransmitTimeout::new(retransmit_timeout),
            outstanding: None,
        }
    }

    /// Keep the retransmission timeout at most `ceiling` (at least the configured
    /// one). A driver that gives up on a request after some time must set it below
    /// that time: a client that never retransmits never makes the backups wait for
    /// its request, and then nothing replaces a crashed primary (§4.1, §4.4).
    #[must_use]
    pub fn with_retransmit_ceiling(mut self, ceiling: Duration) -> Self {
        self.retransmit_timeout.ceiling = ceiling;
        self
    }

    #[must_use]
    pub fn id(&self) -> bft_crypto::PublicKey {
        self.key.public()
    }

    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Accept read-only results on `quorum` matching replies instead of 2f+1.
    /// Anything below 2f+1 is a planted bug: the simulator's test that its
    /// linearizability checker catches stale reads (a faulty replica and a correct
    /// one that had not executed a write yet suffice for f+1).
    #[must_use]
    pub fn with_planted_read_quorum(mut self, quorum: usize) -> Self {
        self.read_quorum = quorum;
        self
    }

    /// The view the client believes current (learned from accepted replies).
    #[must_use]
    pub fn view(&self) -> View {
        self.view
    }

    /// The outstanding request's timestamp.
    #[must_use]
    pub fn outstanding_timestamp(&self) -> Option<u64> {
        self.outstanding.as_ref().map(|o| o.request.timestamp())
    }

    /// Sign and send `operation` to the primary.
    ///
    /// # Errors
    /// [`ClientError::Busy`] while another request is outstanding.
    pub fn submit(
        &mut self,
        now: Duration,
        operation: Vec<u8>,
    ) -> Result<Vec<ClientOutput>, ClientError> {
        if self.outstanding.is_some() {
            return Err(ClientError::Busy);
        }
        let request = self.sign_next(operation);
        let deadline = now + self.retransmit_timeout.current();
        let to = self.members.primary(self.view);
        let out = vec![
            ClientOutput::Send {
                to,
                message: Message::Request(request.clone()),
            },
            ClientOutput::SetTimer { at: deadline },
        ];
        self.outstanding = Some(Outstanding::new(
            Sent::Ordered(request),
            Some(now),
            deadline,
        ));
        Ok(out)
    }

    /// Sign `operation` as a read-only request and send it to every replica
    /// (TOCS §5.1.3). Only for operations the application answers without ordering
    /// them (`Application::execute_read_only`); replicas refuse others, and the
    /// client then orders it.
    ///
    /// # Errors
    /// [`ClientError::Busy`] while another request is outstanding.
    pub fn submit_read(
        &mut self,
        now: Duration,
        operation: Vec<u8>,
    ) -> Result<Vec<ClientOutput>, ClientError> {
        if self.outstanding.is_some() {
            return Err(ClientError::Busy);
        }
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        let read = Signed::sign(
            ReadRequest {
                timestamp,
                operation,
            },
            &self.key,
        );
        let deadline = now + self.retransmit_timeout.current();
        let out = vec![
            ClientOutput::Broadcast {
                message: Message::Read(read.clone()),
            },
            ClientOutput::SetTimer { at: deadline },
        ];
        // No round-trip sample: a read takes one round, an ordered request three,
        // and the timeout is for the latter.
        self.outstanding = Some(Outstanding::new(Sent::Read(read), None, deadline));
        Ok(out)
    }

    /// Order the outstanding operation anew, signed with a newer timestamp and the
    /// current horizon, keeping its deadline: a read-only request that cannot be
    /// accepted (sent to the primary, or to every replica if it went unanswered:
    /// the primary may be what is wrong), or a request refused as expired before
    /// it was ever sent twice (to every replica, as its retransmission would be).
    fn order_again(&mut self, to_all: bool) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.take() else {
            return Vec::new();
        };
        let request = self.sign_next(o.request.operation().to_vec());
        let timestamp = request.payload.timestamp;
        let message = Message::Request(request.clone());
        self.outstanding = Some(Outstanding::new(Sent::Ordered(request), None, o.deadline));
        let send = if to_all {
            ClientOutput::Broadcast { message }
        } else {
            ClientOutput::Send {
                to: self.members.primary(self.view),
                message,
            }
        };
        vec![ClientOutput::Reissued { timestamp }, send]
    }

    /// A reply to the outstanding read-only request: accept on `read_quorum`
    /// matching results (their sequence numbers and views may differ: each replica
    /// answers from wherever it is), fall back once no result can get there.
    fn on_read_reply(&mut self, reply: &VerifiedReply) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        let answer: Answer = (reply.result_digest(), reply.refusal, 0);
        o.replies.insert(reply.replica, (reply.view, answer, false));
        let count = |a: &Answer| o.replies.values().filter(|(_, b, _)| b == a).count();
        if answer.1.is_none() && count(&answer) >= self.read_quorum {
            // Replicas answer reads in full; one that sent only a digest is
            // faulty, and the correct ones in the quorum sent the result.
            if let Some(result) = Self::full_result(o, &answer.0) {
                let timestamp = o.request.timestamp();
                self.outstanding = None;
                return vec![ClientOutput::Accepted { timestamp, result }];
            }
        }
        let best = o
            .replies
            .values()
            .filter(|(_, a, _)| a.1.is_none())
            .map(|(_, a, _)| count(a))
            .max()
            .unwrap_or(0);
        let unheard = self.members.n().saturating_sub(o.replies.len());
        if best + unheard < self.read_quorum {
            return self.order_again(false);
        }
        Vec::new()
    }

    fn sign_next(&mut self, operation: Vec<u8>) -> Signed<Request> {
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        Signed::sign(
            Request {
                timestamp,
                operation,
                horizon: self.horizon,
                replier: self.designated(),
            },
            &self.key,
        )
    }

    /// The replica the next request designates to send its result in full: one of
    /// the replicas other than the primary the client believes in (the primary has
    /// the most to do), chosen by [`Client::replier_turn`].
    #[must_use]
    pub fn designated(&self) -> Option<ReplicaId> {
        let primary = self.members.primary(self.view);
        let others = self.members.n().saturating_sub(1);
        if others == 0 {
            return None;
        }
        let index = self.replier_turn % others;
        (0..self.members.n())
            .filter_map(|i| ReplicaId::try_from(i).ok())
            .filter(|r| *r != primary)
            .nth(index)
    }

    /// The full result heard that hashes to `digest`, if any.
    fn full_result(o: &Outstanding, digest: &Digest) -> Option<Vec<u8>> {
        o.full
            .values()
            .find(|(d, _)| d == digest)
            .map(|(_, bytes)| bytes.clone())
    }

    /// The designated replica did not deliver: designate the next one.
    fn designate_next(&mut self) {
        self.replier_turn = self.replier_turn.wrapping_add(1);
    }

    /// The retransmission timeout a request sent now would get.
    #[must_use]
    pub fn retransmit_timeout(&self) -> Duration {
        self.retransmit_timeout.current()
    }

    /// How long the designated replica's full result may come after the quorum
    /// agreed on its digest before the client designates another replica: a quarter
    /// of the configured timeout. Replies of one batch reach a client moments
    /// apart, in any order (a gateway hands them over one replica at a time), so
    /// the quorum often forms a moment before the full result, and blaming that
    /// would only move every client's full results onto one replica. A faulty
    /// designated replica can so delay its clients by at most this much per
    /// request; a longer delay or a timeout moves them away from it.
    #[must_use]
    pub fn replier_grace(&self) -> Duration {
        self.retransmit_timeout.floor / 4
    }

    /// A verified reply received at `now`. Accept as [`Client::on_reply`] does; a
    /// request accepted without retransmission teaches the client its round trip
    /// (unless it waited past [`Client::replier_grace`] for its full result: that
    /// measured the designated replica's delay, which may be deliberate).
    pub fn on_reply_at(&mut self, now: Duration, reply: &VerifiedReply) -> Vec<ClientOutput> {
        let once = self
            .outstanding
            .as_ref()
            .map(|o| (o.request.timestamp(), o.sent_at, o.retransmitted));
        let (out, slow) = self.reply(Some(now), reply);
        if slow {
            return out;
        }
        if let Some((timestamp, Some(sent_at), false)) = once {
            let accepted = out.iter().any(
                |o| matches!(o, ClientOutput::Accepted { timestamp: t, .. } if *t == timestamp),
            );
            if accepted {
                self.retransmit_timeout.sample(now.saturating_sub(sent_at));
            }
        }
        out
    }

    /// A verified reply (without a clock: no round-trip sample and no judging of
    /// the designated replica's delay, see [`Client::on_reply_at`]). Accept once
    /// f+1 distinct replicas sent matching committed replies (or 2f+1 matching ones
    /// from one view, tentative included) and a full result hashes to their digest.
    pub fn on_reply(&mut self, reply: &VerifiedReply) -> Vec<ClientOutput> {
        self.reply(None, reply).0
    }

    /// [`Client::on_reply`] at `now`, if known; also says whether the request was
    /// accepted only after the designated replica kept it waiting past the grace.
    fn reply(&mut self, now: Option<Duration>, reply: &VerifiedReply) -> (Vec<ClientOutput>, bool) {
        let grace = self.replier_grace();
        let Some(o) = self.outstanding.as_mut() else {
            return (Vec::new(), false);
        };
        if reply.client != self.key.public()
            || reply.timestamp != o.request.timestamp()
            || self.members.key(reply.replica) != Some(reply.signer())
        {
            return (Vec::new(), false);
        }
        if let Some(bytes) = reply.result.full() {
            o.full
                .insert(reply.replica, (reply.result_digest(), bytes.to_vec()));
        }
        if matches!(o.request, Sent::Read(_)) {
            return (self.on_read_reply(reply), false);
        }
        let answer = (reply.result_digest(), reply.refusal, reply.seq);
        o.replies
            .insert(reply.replica, (reply.view, answer, reply.tentative));
        // f+1 matching committed replies, or 2f+1 matching replies from one view,
        // tentative ones included (TOCS §5.1.2: 2f+1 replicas prepared it there, so
        // it commits at that sequence number in every later view).
        let committed: Vec<View> = o
            .replies
            .values()
            .filter(|(_, a, tentative)| *a == answer && !tentative)
            .map(|(v, ..)| *v)
            .collect();
        let in_view = o
            .replies
            .values()
            .filter(|(v, a, _)| *a == answer && *v == reply.view)
            .count();
        let matching = if committed.len() >= self.members.weak_quorum() {
            committed
        } else if in_view >= self.members.quorum() {
            vec![reply.view]
        } else {
            return (Vec::new(), false);
        };
        // f+1 replies include a correct replica's, so the lowest of their views is at
        // most the current one: a safe primary guess for the next request.
        let view = matching.iter().copied().min().unwrap_or(self.view);
        self.view = self.view.max(view);
        // f+1 agree on it, so a correct replica ordered something at `seq`.
        self.horizon = self.horizon.max(answer.2);
        let timestamp = o.request.timestamp();
        match answer {
            (digest, None, _) => {
                // The quorum vouches for the digest; the result is whichever full
                // one hashes to it. None yet: wait for the designated replica, or
                // retransmit on timeout and every replica answers in full.
                let Some(result) = Self::full_result(o, &digest) else {
                    o.full_missing_since.get_or_insert(now.unwrap_or_default());
                    return (Vec::new(), false);
                };
                // Waited past the grace (however it came at last, even from the
                // designated replica, which may be slowing this client down on
                // purpose): the next requests designate another replica.
                let slow = matches!(
                    (o.full_missing_since, now),
                    (Some(since), Some(now)) if now.saturating_sub(since) > grace
                );
                if slow {
                    self.designate_next();
                }
                self.outstanding = None;
                (vec![ClientOutput::Accepted { timestamp, result }], slow)
            }
            (_, Some(Refusal::Expired { .. }), _) if !o.retransmitted => {
                // The horizon had passed and it was sent only once, so it never
                // executed: sign it again with the fresh horizon.
                (self.order_again(true), false)
            }
            (_, Some(Refusal::Expired { .. }), _) => {
                self.outstanding = None;
                (vec![ClientOutput::Unknown { timestamp }], false)
            }
            (_, Some(Refusal::ReplyNotKept), _) => {
                self.outstanding = None;
                (vec![ClientOutput::Lost { timestamp }], false)
            }
            // Correct replicas refuse so only read-only requests, never this one:
            // f+1 such replies cannot happen with at most f faulty. Keep waiting.
            (_, Some(Refusal::NotReadOnly), _) => (Vec::new(), false),
        }
    }

    /// Stop waiting for the outstanding request: the caller's own deadline passed.
    /// The request may still execute later; the next one carries a higher timestamp,
    /// so exactly-once execution still holds and late replies for this one are
    /// ignored.
    pub fn abandon(&mut self) {
        let waiting_for_full = self
            .outstanding
            .take()
            .is_some_and(|o| o.full_missing_since.is_some());
        if waiting_for_full {
            self.designate_next();
        }
        self.retransmit_timeout.reset();
    }

    /// Retransmit to all replicas (the primary may be faulty; §4.1).
    pub fn on_timeout(&mut self, now: Duration) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        if now < o.deadline {
            return Vec::new();
        }
        let request = match &o.request {
            Sent::Ordered(r) => r.clone(),
            Sent::Read(_) => {
                // A read's expiry says nothing of the ordered round trip (reads
                // take no sample), so no back-off; and its fall-back goes to every
                // replica at once, so that backups hear of it within the caller's
                // deadline however far the timeout had backed off.
                o.deadline = now + self.retransmit_timeout.current();
                let timer = ClientOutput::SetTimer { at: o.deadline };
                let mut out = self.order_again(true);
                out.push(timer);
                return out;
            }
        };
        // The designated replica sent nothing, or not the full result the quorum
        // agreed on, within the timeout: the next requests designate another
        // (the retransmission gets the result in full from every replica).
        let designated = request.payload.replier;
        let replier_failed =
            o.full_missing_since.is_some() || designated.is_some_and(|d| !o.full.contains_key(&d));
        self.retransmit_timeout.back_off();
        o.deadline = now + self.retransmit_timeout.current();
        let timer = ClientOutput::SetTimer { at: o.deadline };
        o.retransmitted = true;
        if replier_failed {
            self.designate_next();
        }
        vec![
            ClientOutput::Broadcast {
                message: Message::Request(request),
            },
            timer,
        ]
    }
}
