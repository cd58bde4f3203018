//! Fault families: each draws its runs from a seed in its own way, so one sweep
//! attacks one kind of fault hard (issue 12). `bft-sim --family NAME` runs one.

use super::config::SimConfig;
use std::fmt;
use std::str::FromStr;

/// A kind of run the simulator sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// Lossy, duplicating, reordering network with partitions; crashes at any output
    /// boundary with restart from what was durable; up to f Byzantine replicas
    /// running any behaviour of INTERFACE.md.
    Basic,
    /// The node's storage: durable writes grouped as the persist thread groups
    /// them, crashes between any two writes, lost in-flight writes, damaged
    /// snapshot files and wiped data directories; timers at skewed rates.
    Storage,
    /// Exactly f Byzantine replicas, mostly adversarial-but-valid (hidden
    /// certificates, stale checkpoints, proposals at or below min-s, split
    /// new-views, off-by-one mutations), crashing too; Byzantine clients.
    Adversarial,
    /// Twins: one replica runs as two honest twins sharing its key, under
    /// partitions drawn per round, then a synchronous suffix.
    Twins,
    /// The basic family's faults, and replicas (the primary in half the cases)
    /// that stall for up to a few seconds, then find everything that queued.
    Stalls,
}

impl Family {
    /// Every family, in the order `--help` lists them.
    pub const ALL: [Family; 5] = [
        Family::Basic,
        Family::Storage,
        Family::Adversarial,
        Family::Twins,
        Family::Stalls,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Family::Basic => "basic",
            Family::Storage => "storage",
            Family::Adversarial => "adversarial",
            Family::Twins => "twins",
            Family::Stalls => "stalls",
        }
    }

    /// One line for `--help`.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Family::Basic => {
                "lossy network, partitions, crashes, up to f Byzantine replicas (any behaviour)"
            }
            Family::Storage => {
                "grouped writes, crashes between writes, lost in-flight writes, damaged \
                 snapshots, wiped data directories, skewed clocks"
            }
            Family::Adversarial => {
                "f Byzantine replicas sending valid but hostile messages (hidden certificates, \
                 stale checkpoints, proposals below min-s, split new-views, ByzzFuzz mutations, \
                 wrong results), crashing too; Byzantine clients"
            }
            Family::Twins => {
                "one replica runs as two twins with one key; partitions drawn per round, then \
                 a synchronous suffix"
            }
            Family::Stalls => {
                "the basic family's faults, and replicas (the primary half the time) that \
                 stall for up to seconds, then find their inputs queued and timers due"
            }
        }
    }

    /// The run of `seed` with `f` tolerated faults.
    #[must_use]
    pub fn config(self, seed: u64, f: usize) -> SimConfig {
        let mut cfg = match self {
            Family::Basic => SimConfig::randomized(seed, f),
            Family::Storage => SimConfig::storage(seed, f),
            Family::Adversarial => SimConfig::adversarial(seed, f),
            Family::Twins => SimConfig::twins(seed, f),
            Family::Stalls => SimConfig::stalls(seed, f),
        };
        cfg.replay_args = format!("--family {self} --seed {seed} --f {f}");
        cfg
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
                format!("unknown family {s:?} (known: {})", known.join(", "))
            })
    }
}
