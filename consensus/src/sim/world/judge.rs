//! When a simulated run is done (every honest replica caught up, every client
//! answered), and what to report when it never gets there.

use super::*;

impl World {
    pub(super) fn liveness_failure(&self) -> Violation {
        let status: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| r.node.as_ref().map(|n| (r.honest, n.replica())))
            .map(|(h, r)| {
                format!(
                    "r{}{}: view {}{} exec {} stable {} pending {}",
                    r.id(),
                    if h { "" } else { "(byz)" },
                    r.view(),
                    if r.in_view_change() { "*" } else { "" },
                    r.last_executed(),
                    r.stable_checkpoint().seq,
                    r.pending_requests()
                )
            })
            .collect();
        let remaining: usize = self
            .clients
            .iter()
            .map(|c| c.remaining + usize::from(c.client.is_busy()))
            .sum();
        Violation {
            invariant: "liveness",
            detail: format!(
                "{} requests unfinished {:?} after the heal at {:?}; {}",
                remaining,
                self.cfg.liveness_budget,
                self.heal_at,
                status.join("; ")
            ),
        }
    }

    /// Finished when every client is done and every honest replica has caught up to
    /// the prefix committed when the workload ended (through execution or state
    /// transfer). Until then a trickle of requests keeps new checkpoints coming, which
    /// is how a replica that fell behind (even one stuck alone in a view change) learns
    /// of newer stable state.
    pub(super) fn done(&mut self) -> Result<bool, Violation> {
        if self
            .clients
            .iter()
            .any(|c| c.remaining > 0 || c.client.is_busy())
        {
            return Ok(false);
        }
        // A result accepted on tentative replies must still commit: the run is not
        // over before it does (or the liveness budget runs out).
        if self.checker.has_pending() {
            return Ok(false);
        }
        if self.cfg.clear_byzantine_at.is_some_and(|at| self.now < at) {
            return Ok(false); // the cleared replicas are judged from the clear on
        }
        let honest: Vec<&Replica<KvStore>> = self
            .replicas
            .iter()
            .filter(|r| r.honest)
            .filter_map(|r| r.node.as_ref().map(Wrapped::replica))
            .collect();
        let highest = honest
            .iter()
            .map(|r| r.last_executed())
            .max()
            .unwrap_or(0)
            .max(self.checker.highest_accepted_seq());
        let (target, quiet_since) = *self.catch_up_target.get_or_insert((highest, self.now));
        if honest.iter().all(|r| r.last_executed() >= target) {
            let mut digests: BTreeMap<Seq, bft_crypto::Digest> = BTreeMap::new();
            // (A replica's state includes a tentatively executed batch, if any.)
            for r in honest.iter().filter(|r| r.tentative_seq().is_none()) {
                if let Some(d) = digests.insert(r.last_executed(), r.app_digest()) {
                    if d != r.app_digest() {
                        return Err(Violation {
                            invariant: "agreement",
                            detail: format!(
                                "replicas at seq {} hold different states",
                                r.last_executed()
                            ),
                        });
                    }
                }
            }
            // Their stable checkpoints converge too, without new requests: a replica
            // that lost some checkpoint votes gets the proof from its peers'
            // heartbeats (see `replica::retransmit`).
            if let Some(v) = Self::stable_behind(&honest) {
                let since = *self.stable_wait_since.get_or_insert(self.now);
                if self.now < since + CATCH_UP_GRACE {
                    return Ok(false);
                }
                return Err(v);
            }
            // Every accepted request survives in the honest order (the tail's last ones
            // may not have reached the laggards yet; all earlier ones have: `target`).
            let upto = honest.iter().map(|r| r.last_executed()).max().unwrap_or(0);
            self.checker.check_durable(upto)?;
            return Ok(true);
        }
        // First give retransmission alone a chance to bring laggards up (see
        // `replica::retransmit`); only then keep new checkpoints coming.
        if self.now < quiet_since + CATCH_UP_GRACE {
            return Ok(false);
        }
        if self.tail_requests == 0 {
            Self::nobody_lags(&honest, target)?;
        }
        if self.tail_requests < 400 {
            self.tail_requests += 1;
            self.report.catch_up_requests += 1;
            self.clients[0].remaining += 1;
            self.schedule(Duration::from_millis(5), Event::ClientNext { client: 0 });
        }
        Ok(false)
    }

    /// An honest replica whose stable checkpoint is below another's, though it has
    /// executed past that one.
    pub(super) fn stable_behind(honest: &[&Replica<KvStore>]) -> Option<Violation> {
        let highest = honest.iter().map(|r| r.stable_checkpoint().seq).max()?;
        let r = honest
            .iter()
            .find(|r| r.stable_checkpoint().seq < highest && r.last_executed() >= highest)?;
        Some(Violation {
            invariant: "liveness",
            detail: format!(
                "r{} executed to seq {} but its stable checkpoint stayed at {} for {:?} \
                 while another replica's is {}: retransmission did not bring the proof",
                r.id(),
                r.last_executed(),
                r.stable_checkpoint().seq,
                CATCH_UP_GRACE,
                highest
            ),
        })
    }

    /// Retransmission brings every honest laggard up without new requests, a replica
    /// alone in a higher view included: it executes what it can prove committed
    /// (2f+1 commits, or a stable checkpoint) while it waits for the others.
    pub(super) fn nobody_lags(honest: &[&Replica<KvStore>], target: Seq) -> Step {
        let group_view = honest
            .iter()
            .filter(|r| r.last_executed() >= target)
            .map(|r| r.view())
            .max()
            .unwrap_or(0);
        match honest.iter().find(|r| r.last_executed() < target) {
            None => Ok(()),
            Some(r) => Err(Violation {
                invariant: "liveness",
                detail: format!(
                    "r{} stayed at seq {} (view {}{}) for {:?} with no new requests while \
                     others reached {} in view {}: retransmission did not bring it up",
                    r.id(),
                    r.last_executed(),
                    r.view(),
                    if r.in_view_change() { "*" } else { "" },
                    CATCH_UP_GRACE,
                    target,
                    group_view
                ),
            }),
        }
    }
}
