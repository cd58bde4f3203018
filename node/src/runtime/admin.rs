//! Admin commands: switch the behaviour in force, start and query generals rounds;
//! and read-only queries of what only the loop holds (the committed log).

use super::Runtime;
use crate::control::Control;
use bft_consensus::byzantine::build;

impl Runtime {
    pub(super) fn on_control(&mut self, cmd: Control) {
        match cmd {
            Control::SetBehaviour {
                name,
                params,
                reply,
            } => {
                let seed = u64::from(self.me()) ^ 0xB1A5;
                let result = build(&name, seed, &params).map(|b| {
                    self.replica.set_behaviour(b);
                    self.generals.set_behaviour(&name);
                    self.metrics.set_behaviour(&name);
                    tracing::warn!(replica = self.me(), behaviour = %name, ?params, "behaviour switched");
                    self.behaviour = (name, params);
                    if self.replica.send_delay().is_zero() {
                        self.release_all_delayed();
                    }
                    self.refresh_status();
                });
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Control::ProposeGeneral { value, m, reply } => {
                let bound = self.replica.replica().failure_detector().delay_bound();
                let result = self.generals.propose(value, m, bound).map(|(id, out)| {
                    self.generals_outputs(out);
                    self.generals.view(&id).expect("just proposed")
                });
                let _ = reply.send(result);
            }
            Control::GetGeneral { id, reply } => {
                let _ = reply.send(self.generals.view(&id));
            }
            Control::Status { reply } => {
                let _ = reply.send(self.status_now());
            }
            Control::Committed { from, limit, reply } => {
                let _ = reply.send(self.committed.page(from, limit));
            }
        }
    }

    /// Leaving `delay`: what was held back goes with this turn, in order, through
    /// the persister like every frame (its turn's records may not be durable yet).
    fn release_all_delayed(&mut self) {
        let held = std::mem::take(&mut self.delayed);
        self.outbox.extend(held.into_values());
    }
}
