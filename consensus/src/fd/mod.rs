//! Failure detection (sans-IO): heartbeats between replicas feed two detectors,
//! and the replica adds progress-based suspicion of the primary.
//!
//! - [`EventuallyPerfect`]: a timeout per peer that grows on every false suspicion,
//!   so under a stable network false suspicions die out (◇P).
//! - [`PhiAccrual`]: φ per peer from heartbeat inter-arrival times.
//! - Progress: a primary that heartbeats but leaves requests unordered is suspected
//!   by the replica's request timer (PBFT §4.4). That, not heartbeats alone, starts
//!   a view change; a heartbeat suspicion of the primary only makes the replica
//!   stop waiting once requests are pending (see `Replica::on_suspicion`).
//!
//! [`FailureDetector`] combines them; the replica owns one and drives it from its
//! heartbeat timer, so the node and the simulator run the same code.

mod eventually_perfect;
mod phi;

pub use eventually_perfect::{EventuallyPerfect, Verdict};
pub use phi::{phi_of, PhiAccrual, PHI_MAX};

use crate::types::{ReplicaId, Seq, View};
use bft_crypto::Signable;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// <HEARTBEAT, i, incarnation, counter, progress>σi. `(incarnation, counter)` only
/// grows for one replica, so a duplicated or replayed heartbeat is recognised and
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub replica: ReplicaId,
    /// Differs after every restart (the node uses its start time).
    pub incarnation: u64,
    pub counter: u64,
    /// Where the sender stands; the detector ignores it, the replica uses it to help
    /// a peer that stopped executing (the role of the BFT library's status messages).
    pub progress: Progress,
}

/// A replica's position, piggybacked on its heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub view: View,
    /// Changing into `view` (a view-change sent, its new-view not yet seen).
    pub changing: bool,
    pub last_executed: Seq,
    /// Its stable checkpoint: a peer whose heartbeats show it stuck below ours
    /// lost checkpoint votes, and gets the proof (see `replica::retransmit`).
    pub stable: Seq,
}

impl Signable for Heartbeat {
    const DOMAIN: &'static str = "bftnode/heartbeat/v3";
}

/// Tunables (the node's `[failure_detector]` section).
#[derive(Clone, Debug, PartialEq)]
pub struct FdConfig {
    /// How often a replica sends a heartbeat (and checks its peers).
    pub heartbeat_interval: Duration,
    /// A peer silent this long is suspected, at first.
    pub initial_timeout: Duration,
    /// Added to a peer's timeout after each false suspicion.
    pub timeout_increment: Duration,
    pub max_timeout: Duration,
    /// φ above which a peer counts as suspected.
    pub phi_threshold: f64,
    /// Heartbeat intervals remembered per peer for φ.
    pub phi_window: usize,
}

impl FdConfig {
    /// Defaults derived from the heartbeat interval: suspect after four missed
    /// heartbeats, grow by one interval per false suspicion, cap at 50.
    #[must_use]
    pub fn with_interval(heartbeat_interval: Duration) -> Self {
        Self {
            heartbeat_interval,
            initial_timeout: heartbeat_interval * 4,
            timeout_increment: heartbeat_interval,
            max_timeout: heartbeat_interval * 50,
            phi_threshold: 8.0,
            phi_window: 200,
        }
    }
}

/// Why a peer is suspected (a peer may be suspected for several reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Silent for longer than its ◇P timeout.
    Timeout,
    /// φ above the threshold.
    Phi,
    /// As primary, left pending requests unordered until the request timer fired.
    NoProgress,
}

/// Heartbeat-based detection of every other replica, plus the progress suspicions
/// the replica reports.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    cfg: FdConfig,
    me: ReplicaId,
    incarnation: u64,
    counter: u64,
    ep: EventuallyPerfect,
    phi: BTreeMap<ReplicaId, PhiAccrual>,
    /// The newest (incarnation, counter) seen per peer.
    seen: BTreeMap<ReplicaId, (u64, u64)>,
    phi_suspects: BTreeSet<ReplicaId>,
    /// Per-peer φ threshold: the configured one, raised after each false φ
    /// suspicion above the φ that silence reached (plus [`PHI_THRESHOLD_STEP`]), as
    /// ◇P lengthens a timeout. A normal model underestimates rare long pauses;
    /// without this, a network with periodic stalls would be suspected forever.
    phi_thresholds: BTreeMap<ReplicaId, f64>,
    no_progress: BTreeSet<ReplicaId>,
}

/// How much a false φ suspicion raises that peer's threshold.
pub const PHI_THRESHOLD_STEP: f64 = 1.0;

impl FailureDetector {
    #[must_use]
    pub fn new(
        cfg: FdConfig,
        me: ReplicaId,
        peers: impl IntoIterator<Item = ReplicaId>,
        incarnation: u64,
        now: Duration,
    ) -> Self {
        let peers: Vec<ReplicaId> = peers.into_iter().filter(|p| *p != me).collect();
        let ep = EventuallyPerfect::new(
            peers.iter().copied(),
            now,
            cfg.initial_timeout,
            cfg.timeout_increment,
            cfg.max_timeout,
        );
        let phi = peers
            .iter()
            .map(|p| {
                (
                    *p,
                    PhiAccrual::new(now, cfg.heartbeat_interval, cfg.phi_window),
                )
            })
            .collect();
        Self {
            cfg,
            me,
            incarnation,
            counter: 0,
            ep,
            phi,
            seen: BTreeMap::new(),
            phi_suspects: BTreeSet::new(),
            phi_thresholds: BTreeMap::new(),
            no_progress: BTreeSet::new(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &FdConfig {
        &self.cfg
    }

    /// The next heartbeat to sign and broadcast, carrying the sender's `progress`.
    pub fn next_heartbeat(&mut self, progress: Progress) -> Heartbeat {
        self.counter += 1;
        Heartbeat {
            replica: self.me,
            incarnation: self.incarnation,
            counter: self.counter,
            progress,
        }
    }

    /// A (verified) heartbeat arrived. Returns whether it was fresh; stale ones
    /// (duplicates, replays, reordered) are ignored.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now: Duration) -> bool {
        let Some(phi) = self.phi.get_mut(&hb.replica) else {
            return false;
        };
        let stamp = (hb.incarnation, hb.counter);
        if self.seen.get(&hb.replica).is_some_and(|s| *s >= stamp) {
            return false;
        }
        self.seen.insert(hb.replica, stamp);
        let phi_reached = phi.phi(now);
        phi.heartbeat(now);
        self.ep.heard(hb.replica, now);
        // φ restarts from 0 on an arrival; a φ suspicion was false.
        if self.phi_suspects.remove(&hb.replica) {
            let t = self
                .phi_thresholds
                .entry(hb.replica)
                .or_insert(self.cfg.phi_threshold);
            *t = (t.max(phi_reached) + PHI_THRESHOLD_STEP).min(PHI_MAX);
        }
        true
    }

    /// Periodic check (on the heartbeat timer): newly silent peers become suspected.
    /// Returns the peers the ◇P detector newly suspects.
    pub fn check(&mut self, now: Duration) -> Vec<ReplicaId> {
        let newly = self
            .ep
            .check(now)
            .into_iter()
            .filter_map(|v| match v {
                Verdict::Suspected(p) => Some(p),
                Verdict::Trusted(_) => None,
            })
            .collect();
        self.phi_suspects = self
            .phi
            .iter()
            .filter(|(p, d)| d.phi(now) > self.phi_threshold(**p))
            .map(|(p, _)| *p)
            .collect();
        newly
    }

    /// The primary of an abandoned view left requests unordered.
    pub fn suspect_no_progress(&mut self, replica: ReplicaId) {
        if replica != self.me {
            self.no_progress.insert(replica);
        }
    }

    /// `replica`, as primary, got requests executed: it is making progress again.
    /// Returns whether that withdrew a suspicion.
    pub fn progress_by(&mut self, replica: ReplicaId) -> bool {
        self.no_progress.remove(&replica)
    }

    /// Suspected by the ◇P detector (the one the replica acts on).
    #[must_use]
    pub fn is_timed_out(&self, peer: ReplicaId) -> bool {
        self.ep.is_suspected(peer)
    }

    /// Every suspected peer with its reasons.
    #[must_use]
    pub fn suspicions(&self) -> BTreeMap<ReplicaId, BTreeSet<Reason>> {
        let mut out: BTreeMap<ReplicaId, BTreeSet<Reason>> = BTreeMap::new();
        for p in self.ep.suspected() {
            out.entry(p).or_default().insert(Reason::Timeout);
        }
        for p in &self.phi_suspects {
            out.entry(*p).or_default().insert(Reason::Phi);
        }
        for p in &self.no_progress {
            out.entry(*p).or_default().insert(Reason::NoProgress);
        }
        out
    }

    /// Suspected peers, for any reason, in id order.
    #[must_use]
    pub fn suspected(&self) -> Vec<ReplicaId> {
        self.suspicions().into_keys().collect()
    }

    /// φ of every peer at `now`.
    #[must_use]
    pub fn phi(&self, now: Duration) -> BTreeMap<ReplicaId, f64> {
        self.phi.iter().map(|(p, d)| (*p, d.phi(now))).collect()
    }

    /// The φ above which `peer` is suspected now.
    #[must_use]
    pub fn phi_threshold(&self, peer: ReplicaId) -> f64 {
        self.phi_thresholds
            .get(&peer)
            .copied()
            .unwrap_or(self.cfg.phi_threshold)
    }

    /// The ◇P timeout for `peer`.
    #[must_use]
    pub fn timeout(&self, peer: ReplicaId) -> Option<Duration> {
        self.ep.timeout(peer)
    }

    /// A bound on message delay learnt from the detector: the largest ◇P timeout.
    /// Synchronous protocols (the signed-message generals) time their rounds by it.
    #[must_use]
    pub fn delay_bound(&self) -> Duration {
        self.ep.max_timeout()
    }
}
