//! State transfer (TOCS'02 §6.2, simplified to whole snapshots): a replica that
//! learns of a stable checkpoint beyond what it executed fetches the state from a
//! peer, checks it against the 2f+1 proof and installs it.

use super::checkpoint::Written;
use super::Replica;
use crate::app::Application;
use crate::client_table::{Freshness, ReplicaSnapshot};
use crate::durable::StableCheckpoint;
use crate::io::{Output, Timer};
use crate::messages::{FetchState, Message, StateSnapshot};
use crate::rejection::Rejection;
use crate::types::{ReplicaId, Seq};
use bft_crypto::Verified;

/// An outstanding fetch: the least checkpoint we need and whom to ask next.
#[derive(Clone, Debug)]
pub(crate) struct Fetch {
    pub min_seq: Seq,
    peers: Vec<ReplicaId>,
    next: usize,
    /// Requests left; `None` means keep asking until it arrives.
    attempts_left: Option<usize>,
}

impl Fetch {
    /// A fetch for a checkpoint proven stable (not a restart's speculative probe).
    pub fn is_proven(&self) -> bool {
        self.attempts_left.is_none()
    }
}

impl<A: Application> Replica<A> {
    /// Fetch a checkpoint of at least `min_seq` from `peers` (e.g. its proof's signers).
    pub(super) fn start_fetch(&mut self, min_seq: Seq, peers: Vec<ReplicaId>) {
        self.begin_fetch(min_seq, peers, None);
    }

    pub(super) fn begin_fetch(
        &mut self,
        min_seq: Seq,
        peers: Vec<ReplicaId>,
        attempts_left: Option<usize>,
    ) {
        if self.fetch.as_ref().is_some_and(|f| f.min_seq >= min_seq) {
            return;
        }
        let me = self.me();
        let peers: Vec<_> = peers.into_iter().filter(|p| *p != me).collect();
        if peers.is_empty() {
            return;
        }
        // Start with a different peer on each replica so one slow peer is not everyone's first choice.
        let next = me as usize % peers.len();
        self.fetch = Some(Fetch {
            min_seq,
            peers,
            next,
            attempts_left,
        });
        self.ask_next_peer();
    }

    pub(super) fn ask_next_peer(&mut self) {
        let me = self.me();
        let Some(fetch) = self.fetch.as_mut() else {
            return;
        };
        if fetch.min_seq <= self.last_executed {
            self.fetch = None;
            return;
        }
        if let Some(left) = fetch.attempts_left.as_mut() {
            if *left == 0 {
                self.fetch = None;
                return;
            }
            *left -= 1;
        }
        let peer = fetch.peers[fetch.next % fetch.peers.len()];
        fetch.next += 1;
        let min_seq = fetch.min_seq;
        let req = self.sign(FetchState {
            seq: min_seq,
            replica: me,
        });
        self.emit(Output::Send {
            to: peer,
            message: Message::FetchState(req),
        });
        self.set_timer(Timer::StateFetch, self.cfg.state_fetch_timeout);
    }

    /// Serve our stable checkpoint if it is recent enough: signed once per
    /// checkpoint, the same one sent to each peer at most once per fetch timeout (a
    /// peer asking again sooner is replaying, or has not waited for our answer).
    pub(super) fn on_fetch_state(&mut self, f: &Verified<FetchState>) {
        if self.stable.seq == 0 || self.stable.seq < f.seq || f.replica == self.me() {
            return;
        }
        let (seq, gap) = (self.stable.seq, self.cfg.state_fetch_timeout);
        if !self.state_served.allow(f.replica, seq, self.now, gap) {
            return;
        }
        if self
            .signed_state
            .as_ref()
            .is_none_or(|s| s.payload.seq != seq)
        {
            self.signed_state = Some(self.sign(StateSnapshot {
                seq,
                proof: self.stable.proof.clone(),
                snapshot: self.stable.snapshot.clone(),
                replica: self.me(),
            }));
        }
        let state = self.signed_state.clone().expect("signed just above");
        self.emit(Output::Send {
            to: f.replica,
            message: Message::State(state),
        });
    }

    /// Install a proven snapshot (the validator checked proof and digest).
    pub(super) fn on_state(&mut self, s: Verified<StateSnapshot>) {
        if self.fetch.is_none() || s.seq <= self.last_executed {
            return;
        }
        let decoded: Result<ReplicaSnapshot, _> = bft_crypto::decode(&s.snapshot, usize::MAX);
        let Ok(decoded) = decoded else {
            return self.reject(Some(s.replica), Rejection::BadSnapshot);
        };
        // The snapshot replaces the committed state, not a tentative one on top.
        self.roll_back_tentative();
        if self.app.restore(&decoded.app).is_err() {
            return self.reject(Some(s.replica), Rejection::BadSnapshot);
        }
        self.clients = decoded.clients;
        let seq = s.seq;
        let digest = s.proof[0].payload.snapshot_digest;
        self.last_executed = seq;
        let clients = &self.clients;
        self.waiting
            .retain(|c, r| clients.freshness(c, r.payload.timestamp) == Freshness::New);
        if self.fetch.as_ref().is_some_and(|f| f.min_seq <= seq) {
            self.fetch = None;
            self.deadlines.remove(&Timer::StateFetch);
        }
        let s = s.into_signed().payload;
        self.emit(Output::StateInstalled { seq, digest });
        let cp = StableCheckpoint {
            seq,
            digest,
            proof: s.proof,
            snapshot: s.snapshot,
        };
        // Durable before we send anything more: the log below it was never on our
        // disk (simulator, seeds 111 f=1 and 277 f=2, before this was so).
        let written = if self.cfg.transfer_written_apart {
            Written::Apart
        } else {
            Written::BeforeNextSend
        };
        self.install_stable(cp, written);
        self.try_execute();
    }
}
