//! Twins (Bano, Sonnino, Chursin, Perelman, Li, Sun, Malkhi: "Twins: BFT Systems
//! Made Robust", OPODIS 2021): a Byzantine replica made of two honest replicas that
//! share one key and identity. Each twin follows the protocol; together they sign
//! whatever two honest replicas in different partitions would, which covers
//! equivocation, amnesia and double voting without writing any of them by hand.
//!
//! The replica the driver runs is the first twin; this behaviour carries the second
//! and a schedule of partitions: in each round every node (the n replicas, and the
//! second twin as node n) is in one group, and messages only flow within a group.
//! The driver partitions the other replicas by the same schedule; this behaviour
//! routes the twins' own traffic, since the driver sees them as one replica.

use super::{Behaviour, Ctx};
use crate::io::{Input, Output, Timer};
use crate::kv::KvStore;
use crate::replica::Replica;
use crate::types::ReplicaId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Partitions by round: `rounds[r][node]` is the group of `node` (0..n the
/// replicas, n the second twin) during round `r`. After the last round every
/// node is in one group (the synchronous suffix in which liveness is judged).
#[derive(Clone, Debug)]
pub struct TwinsSchedule {
    /// The replica that has a twin.
    pub twinned: ReplicaId,
    pub round: Duration,
    pub rounds: Vec<Vec<u8>>,
}

impl TwinsSchedule {
    /// The node index of the second twin.
    #[must_use]
    pub fn second_twin(&self) -> usize {
        self.rounds.first().map_or(0, |g| g.len() - 1)
    }

    /// The group of `node` at `now`.
    #[must_use]
    pub fn group(&self, node: usize, now: Duration) -> u8 {
        let round = now.as_nanos() / self.round.as_nanos().max(1);
        usize::try_from(round)
            .ok()
            .and_then(|r| self.rounds.get(r))
            .and_then(|g| g.get(node).copied())
            .unwrap_or(0)
    }

    /// When the partitions end.
    #[must_use]
    pub fn end(&self) -> Duration {
        self.round * u32::try_from(self.rounds.len()).unwrap_or(u32::MAX)
    }

    /// Whether nodes `a` and `b` can talk at `now`.
    #[must_use]
    pub fn connected(&self, a: usize, b: usize, now: Duration) -> bool {
        self.group(a, now) == self.group(b, now)
    }
}

/// The behaviour `twin` (simulator only: it needs the driver to share the
/// schedule): carries the second twin.
pub struct Twin {
    other: Replica<KvStore>,
    schedule: Arc<TwinsSchedule>,
    started: bool,
    /// The second twin's timers (the driver only knows the first twin's); they
    /// fire at the next input at or after their deadline.
    timers: BTreeMap<Timer, Duration>,
    /// The second twin's outputs, waiting to go out with the first twin's.
    pending: Vec<Output>,
}

impl Twin {
    #[must_use]
    pub fn new(other: Replica<KvStore>, schedule: Arc<TwinsSchedule>) -> Self {
        Self {
            other,
            schedule,
            started: false,
            timers: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    /// Keep what node `node` may send at `now`: a broadcast becomes sends to the
    /// replicas in its group; persistence and timers are the caller's business.
    fn route(&self, ctx: &Ctx<'_>, node: usize, outputs: Vec<Output>, out: &mut Vec<Output>) {
        let reach = |to: ReplicaId| self.schedule.connected(node, to as usize, ctx.now);
        for o in outputs {
            match o {
                Output::Broadcast { message } => {
                    for to in ctx.others().into_iter().filter(|t| reach(*t)) {
                        out.push(Output::Send {
                            to,
                            message: message.clone(),
                        });
                    }
                }
                Output::Send { to, message } => {
                    if reach(to) {
                        out.push(Output::Send { to, message });
                    }
                }
                other => out.push(other),
            }
        }
    }

    /// Run the second twin on `input`; keep its network outputs and its timers.
    fn run_other(&mut self, ctx: &Ctx<'_>, input: Option<Input>) {
        let mut outs = Vec::new();
        if !self.started {
            self.started = true;
            self.other.start(ctx.now, &mut outs);
        }
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= ctx.now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            self.other.handle(ctx.now, Input::Timer(timer), &mut outs);
        }
        if let Some(input) = input {
            self.other.handle(ctx.now, input, &mut outs);
        }
        let mut kept = Vec::new();
        // The second twin's snapshot jobs run at once: the driver does not know it
        // exists, and its checkpoint votes are what matters, not when.
        let mut outs = std::collections::VecDeque::from(outs);
        while let Some(o) = outs.pop_front() {
            match o {
                Output::TakeSnapshot(job) => {
                    let mut more = Vec::new();
                    let taken = Input::SnapshotTaken(job.run());
                    self.other.handle(ctx.now, taken, &mut more);
                    outs.extend(more);
                }
                Output::SetTimer { timer, at } => {
                    self.timers.insert(timer, at);
                }
                // Its store is its own and never read again: it never restarts.
                Output::Persist(_) | Output::PersistApart(_) => {}
                Output::Send { .. } | Output::Broadcast { .. } | Output::Replies(_) => {
                    kept.push(o);
                }
                _ => {}
            }
        }
        let node = self.schedule.second_twin();
        let mut routed = Vec::new();
        self.route(ctx, node, kept, &mut routed);
        self.pending.extend(routed);
    }
}

impl Behaviour for Twin {
    fn name(&self) -> &'static str {
        "twin"
    }

    fn filter_input(&mut self, ctx: &Ctx<'_>, input: Input) -> Option<Input> {
        let second = self.schedule.second_twin();
        let (to_first, to_second) = match &input {
            Input::Timer(_) | Input::SnapshotTaken(_) => (true, false),
            Input::Message(m) => match m.sender() {
                // Clients are outside the partitions.
                None => (true, true),
                Some(from) => (
                    self.schedule
                        .connected(from as usize, ctx.id as usize, ctx.now),
                    self.schedule.connected(from as usize, second, ctx.now),
                ),
            },
        };
        let for_second = to_second.then(|| input.clone());
        self.run_other(ctx, for_second);
        to_first.then_some(input)
    }

    fn on_dropped_input(&mut self, _ctx: &Ctx<'_>) -> Vec<Output> {
        std::mem::take(&mut self.pending)
    }

    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        let mut out = Vec::with_capacity(outputs.len() + self.pending.len());
        self.route(ctx, ctx.id as usize, outputs, &mut out);
        out.append(&mut self.pending);
        out
    }
}
