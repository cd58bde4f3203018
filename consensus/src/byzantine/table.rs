//! Every behaviour in one table: its name (docs/INTERFACE.md), which simulator
//! family draws it, and how it is built. The name lists the node, the metrics and
//! the simulator use are read from here, in table order (the simulator indexes
//! them with its seeded RNG, so the order is part of every pinned seed).

use super::BehaviourError;
use super::{
    BadSignature, Behaviour, BelowMinS, Censor, Crash, Delay, EagerVote, Equivocate, Flood,
    ForgeRequest, ForgeViewChange, HideCertificates, Honest, LyingCheckpoint, Mutate, OtherModule,
    Params, Replay, Silent, SplitNewView, StaleReads, WrongDigest, WrongResults,
};
use std::sync::LazyLock;
use std::time::Duration;

/// `delay`'s default when no `ms` is given.
pub const DEFAULT_DELAY_MS: u64 = 100;

/// Which simulator family draws a behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Changes PBFT traffic; every family draws it.
    Core,
    /// Adversarial but valid: every message passes the stateless checks (see
    /// `adversarial`); the adversarial family draws it.
    Adversarial,
    /// Changes only the generals protocol; the PBFT simulator never draws it.
    GeneralsOnly,
}

/// One behaviour: name, family, the parameters it takes, and its constructor
/// (`seed` drives its choices; `params` holds only names it takes).
struct Entry {
    name: &'static str,
    family: Family,
    params: &'static [&'static str],
    make: fn(u64, &Params) -> Box<dyn Behaviour>,
}

const TABLE: &[Entry] = &[
    entry("silent", Family::Core, |_, _| Box::new(Silent)),
    entry("crash", Family::Core, |_, _| Box::new(Crash)),
    Entry {
        name: "delay",
        family: Family::Core,
        params: &["ms"],
        make: |_, p| {
            Box::new(Delay {
                delay: Duration::from_millis(p.get("ms").copied().unwrap_or(DEFAULT_DELAY_MS)),
            })
        },
    },
    entry("equivocate", Family::Core, |_, _| Box::new(Equivocate)),
    entry("bad-signature", Family::Core, |_, _| Box::new(BadSignature)),
    entry("wrong-digest", Family::Core, |s, _| {
        Box::new(WrongDigest::new(s))
    }),
    entry("lying-checkpoint", Family::Core, |s, _| {
        Box::new(LyingCheckpoint::new(s))
    }),
    entry("forge-view-change", Family::Core, |s, _| {
        Box::new(ForgeViewChange::new(s))
    }),
    entry("replay", Family::Core, |s, _| Box::new(Replay::new(s))),
    entry("censor", Family::Core, |_, _| Box::new(Censor)),
    entry("flood", Family::Core, |s, _| Box::new(Flood::new(s))),
    entry("traitor-relay", Family::GeneralsOnly, |_, _| {
        Box::new(OtherModule("traitor-relay"))
    }),
    entry("eager-vote", Family::Core, |_, _| Box::new(EagerVote)),
    entry("hide-certificates", Family::Adversarial, |s, _| {
        Box::new(HideCertificates::new(s))
    }),
    entry("below-min-s", Family::Adversarial, |s, _| {
        Box::new(BelowMinS::new(s))
    }),
    entry("split-new-view", Family::Adversarial, |s, _| {
        Box::new(SplitNewView::new(s))
    }),
    entry("mutate", Family::Adversarial, |s, _| {
        Box::new(Mutate::new(s))
    }),
    entry("stale-reads", Family::Core, |_, _| {
        Box::new(StaleReads::default())
    }),
    entry("wrong-results", Family::Adversarial, |_, _| {
        Box::new(WrongResults)
    }),
    entry("forge-request", Family::Core, |s, _| {
        Box::new(ForgeRequest::new(s))
    }),
];

const fn entry(
    name: &'static str,
    family: Family,
    make: fn(u64, &Params) -> Box<dyn Behaviour>,
) -> Entry {
    Entry {
        name,
        family,
        params: &[],
        make,
    }
}

fn names(keep: impl Fn(Family) -> bool) -> Vec<&'static str> {
    TABLE
        .iter()
        .filter(|e| keep(e.family))
        .map(|e| e.name)
        .collect()
}

/// Every behaviour name but `none`.
pub static ALL_BEHAVIOURS: LazyLock<Vec<&'static str>> = LazyLock::new(|| names(|_| true));
/// The behaviours that change PBFT traffic: the ones every simulator family draws.
pub static CORE_BEHAVIOURS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| names(|f| f == Family::Core));
/// The adversarial-but-valid ones, which the adversarial family draws too.
pub static ADVERSARIAL_BEHAVIOURS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| names(|f| f == Family::Adversarial));

/// Build a behaviour from its name and parameters. `seed` drives its choices.
///
/// # Errors
/// An unknown name, or a parameter the behaviour does not take.
pub fn build(name: &str, seed: u64, params: &Params) -> Result<Box<dyn Behaviour>, BehaviourError> {
    let e = if name == NONE.name {
        &NONE
    } else {
        TABLE
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| BehaviourError::Unknown(name.to_string()))?
    };
    if let Some(p) = params.keys().find(|k| !e.params.contains(&k.as_str())) {
        return Err(BehaviourError::UnknownParam {
            behaviour: name.to_string(),
            param: p.clone(),
        });
    }
    Ok((e.make)(seed, params))
}

/// The honest replica: buildable by name, but no behaviour of the lists above.
const NONE: Entry = entry("none", Family::Core, |_, _| Box::new(Honest));

/// Build a behaviour with default parameters from its name (`none` included).
/// `seed` drives its choices.
#[must_use]
pub fn by_name(name: &str, seed: u64) -> Option<Box<dyn Behaviour>> {
    build(name, seed, &Params::new()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_a_behaviour_that_answers_to_it() {
        for name in ALL_BEHAVIOURS.iter() {
            let b = by_name(name, 7).unwrap_or_else(|| panic!("{name} does not build"));
            assert_eq!(b.name(), *name);
        }
        assert_eq!(by_name("none", 0).unwrap().name(), "none");
        assert!(by_name("nonsense", 0).is_none());
    }

    #[test]
    fn names_are_unique_and_the_families_split_them() {
        let mut all = ALL_BEHAVIOURS.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), TABLE.len());
        let split = CORE_BEHAVIOURS.len()
            + ADVERSARIAL_BEHAVIOURS.len()
            + names(|f| f == Family::GeneralsOnly).len();
        assert_eq!(split, TABLE.len());
    }

    #[test]
    fn only_delay_takes_a_parameter() {
        let ms = Params::from([("ms".to_string(), 5)]);
        assert_eq!(
            build("delay", 0, &ms).unwrap().send_delay(),
            Duration::from_millis(5)
        );
        assert!(matches!(
            build("silent", 0, &ms),
            Err(BehaviourError::UnknownParam { .. })
        ));
        assert!(matches!(
            build("none", 0, &ms),
            Err(BehaviourError::UnknownParam { .. })
        ));
    }
}
