//! The PBFT client (OSDI'99 §4.1) as a sans-IO state machine: sign a request with a
//! fresh timestamp, send it to the primary it believes in, accept a result once f+1
//! replicas sent matching replies, and on timeout retransmit to every replica.

use crate::messages::{Message, Request};
use crate::reply::VerifiedReply;
use crate::types::{Membership, ReplicaId, View};
use bft_crypto::{KeyPair, Signed};
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
    /// f+1 replicas agreed on this result.
    Accepted {
        timestamp: u64,
        result: Vec<u8>,
    },
}

struct Outstanding {
    request: Signed<Request>,
    /// Each replica's latest reply for this request: (view, result).
    replies: BTreeMap<ReplicaId, (View, Vec<u8>)>,
    deadline: Duration,
}

pub struct Client {
    key: KeyPair,
    members: Membership,
    view: View,
    next_timestamp: u64,
    retransmit_timeout: Duration,
    outstanding: Option<Outstanding>,
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
            key,
            members,
            view: 0,
            next_timestamp: first_timestamp,
            retransmit_timeout,
            outstanding: None,
        }
    }

    #[must_use]
    pub fn id(&self) -> bft_crypto::PublicKey {
        self.key.public()
    }

    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The view the client believes current (learned from accepted replies).
    #[must_use]
    pub fn view(&self) -> View {
        self.view
    }

    /// The outstanding request's timestamp.
    #[must_use]
    pub fn outstanding_timestamp(&self) -> Option<u64> {
        self.outstanding
            .as_ref()
            .map(|o| o.request.payload.timestamp)
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
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        let request = Signed::sign(
            Request {
                timestamp,
                operation,
            },
            &self.key,
        );
        let deadline = now + self.retransmit_timeout;
        let to = self.members.primary(self.view);
        let out = vec![
            ClientOutput::Send {
                to,
                message: Message::Request(request.clone()),
            },
            ClientOutput::SetTimer { at: deadline },
        ];
        self.outstanding = Some(Outstanding {
            request,
            replies: BTreeMap::new(),
            deadline,
        });
        Ok(out)
    }

    /// A verified reply. Accept once f+1 distinct replicas sent the same result.
    pub fn on_reply(&mut self, reply: &VerifiedReply) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        if reply.client != self.key.public()
            || reply.timestamp != o.request.payload.timestamp
            || self.members.key(reply.replica) != Some(reply.signer())
        {
            return Vec::new();
        }
        o.replies
            .insert(reply.replica, (reply.view, reply.result.clone()));
        let matching: Vec<View> = o
            .replies
            .values()
            .filter(|(_, r)| *r == reply.result)
            .map(|(v, _)| *v)
            .collect();
        if matching.len() < self.members.weak_quorum() {
            return Vec::new();
        }
        // f+1 replies include a correct replica's, so the lowest of their views is at
        // most the current one: a safe primary guess for the next request.
        let view = matching.iter().copied().min().unwrap_or(self.view);
        self.view = self.view.max(view);
        let timestamp = o.request.payload.timestamp;
        self.outstanding = None;
        vec![ClientOutput::Accepted {
            timestamp,
            result: reply.result.clone(),
        }]
    }

    /// Stop waiting for the outstanding request: the caller's own deadline passed.
    /// The request may still execute later; the next one carries a higher timestamp,
    /// so exactly-once execution still holds and late replies for this one are
    /// ignored.
    pub fn abandon(&mut self) {
        self.outstanding = None;
    }

    /// Retransmit to all replicas (the primary may be faulty; §4.1).
    pub fn on_timeout(&mut self, now: Duration) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        if now < o.deadline {
            return Vec::new();
        }
        o.deadline = now + self.retransmit_timeout;
        vec![
            ClientOutput::Broadcast {
                message: Message::Request(o.request.clone()),
            },
            ClientOutput::SetTimer { at: o.deadline },
        ]
    }
}
