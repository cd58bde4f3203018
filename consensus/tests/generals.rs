//! Signed-message Byzantine generals, SM(m): IC1 (loyal lieutenants agree) and IC2
//! (they follow a loyal commander) for any m traitors with n >= m+2, checked in the
//! simulator exhaustively over the traitor strategy space for n <= 4 and over random
//! strategies for n = 5..7; plus the chain verification rules one by one.

use bft_consensus::generals::{
    verify_chain, Chain, Generals, GeneralsOutput, Instance, InstanceId,
};
use bft_consensus::sim::generals::{
    random_strategy, run_generals, strategies, GeneralsScenario, Traitor, ROUND_MS,
};
use bft_consensus::types::{Membership, ReplicaId};
use bft_consensus::Rejection;
use bft_crypto::KeyPair;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// Every subset of 0..n with at most `max` members.
fn traitor_sets(n: usize, max: usize) -> Vec<Vec<ReplicaId>> {
    (0u32..(1 << n))
        .filter(|s| s.count_ones() as usize <= max)
        .map(|s| (0..n as ReplicaId).filter(|i| s & (1 << i) != 0).collect())
        .collect()
}

/// Every assignment of strategies to `traitors`.
fn assignments(
    n: usize,
    commander: ReplicaId,
    traitors: &[ReplicaId],
) -> Vec<BTreeMap<ReplicaId, Traitor>> {
    let commander_traitor = traitors.contains(&commander);
    let mut out = vec![BTreeMap::new()];
    for t in traitors {
        let options = strategies(n, commander, *t, commander_traitor);
        out = out
            .into_iter()
            .flat_map(|a| {
                options.iter().map(move |s| {
                    let mut a = a.clone();
                    a.insert(*t, s.clone());
                    a
                })
            })
            .collect();
    }
    out
}

fn exhaustive(n: usize) -> usize {
    let m = (n - 2) as u32;
    let mut runs = 0;
    let mut rejected = 0;
    for commander in 0..n as ReplicaId {
        for traitors in traitor_sets(n, m as usize) {
            for (i, assignment) in assignments(n, commander, &traitors).into_iter().enumerate() {
                let s = GeneralsScenario {
                    n,
                    m,
                    commander,
                    traitors: assignment,
                    seed: (runs + i) as u64,
                };
                let outcome = run_generals(&s).unwrap_or_else(|e| panic!("{e}"));
                rejected += outcome.rejected;
                runs += 1;
            }
        }
    }
    assert!(
        rejected > 0,
        "no altered relay was ever refused: the space is too small"
    );
    runs
}

#[test]
fn ic1_and_ic2_hold_exhaustively_for_n3_with_one_traitor() {
    let runs = exhaustive(3);
    println!("n=3, m=1: {runs} scenarios");
    assert!(runs > 100);
}

#[test]
fn ic1_and_ic2_hold_exhaustively_for_n4_with_up_to_two_traitors() {
    let runs = exhaustive(4);
    println!("n=4, m=2: {runs} scenarios");
    assert!(runs > 5_000);
}

#[test]
fn ic1_and_ic2_hold_for_n5_to_7_under_random_traitors() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6E4E);
    for n in 5..=7usize {
        let m = (n - 2) as u32;
        for run in 0..250u64 {
            let commander = rng.gen_range(0..n as ReplicaId);
            let count = rng.gen_range(0..=m as usize);
            let mut ids: Vec<ReplicaId> = (0..n as ReplicaId).collect();
            let mut traitors = BTreeMap::new();
            // Often include the commander: the interesting case for IC1.
            if count > 0 && rng.gen_bool(0.5) {
                ids.retain(|r| *r != commander);
                traitors.insert(commander, ());
            }
            while traitors.len() < count {
                let i = rng.gen_range(0..ids.len());
                traitors.insert(ids.remove(i), ());
            }
            let commander_traitor = traitors.contains_key(&commander);
            let traitors = traitors
                .into_keys()
                .map(|t| {
                    (
                        t,
                        random_strategy(&mut rng, n, commander, t, commander_traitor),
                    )
                })
                .collect();
            let s = GeneralsScenario {
                n,
                m,
                commander,
                traitors,
                seed: run,
            };
            run_generals(&s).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// The checker has teeth: run with m smaller than the number of traitors (two
/// traitors, m = 1) and it finds the IC1 violation the paper's bound predicts.
#[test]
fn too_few_rounds_for_the_traitors_is_caught() {
    let n = 4;
    let mut found = None;
    'search: for assignment in assignments(n, 0, &[0, 1]) {
        let s = GeneralsScenario {
            n,
            m: 1,
            commander: 0,
            traitors: assignment,
            seed: 7,
        };
        if let Err(e) = run_generals(&s) {
            found = Some(e);
            break 'search;
        }
    }
    let e = found.expect("m = 1 against two colluding traitors must break IC1");
    assert!(e.contains("IC1"), "{e}");
}

fn group(n: usize) -> (Vec<KeyPair>, Membership) {
    let keys: Vec<KeyPair> = (0..n)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let members = Membership::new(keys.iter().map(KeyPair::public).collect());
    (keys, members)
}

fn instance(m: u32) -> Instance {
    Instance {
        id: InstanceId {
            commander: 0,
            nonce: 9,
        },
        m,
        start_ms: 1_000,
        round_ms: ROUND_MS,
    }
}

fn refused(chain: Chain, members: &Membership) -> &'static str {
    match verify_chain(chain, members) {
        Err(Rejection::InvalidGeneralsChain(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn chains_that_were_edited_are_refused() {
    let (keys, members) = group(4);
    let order = Chain::order(instance(2), "A".into(), &keys[0]);
    let relayed = order.extended(1, &keys[1]);
    assert!(verify_chain(relayed.clone(), &members).is_ok());

    // Value altered by the relayer (its own link re-signed): the commander's breaks.
    let altered = bft_consensus::generals::behaviours::altered(&relayed, &keys[1]);
    assert_eq!(refused(altered, &members), "signature does not verify");

    // A relayer that changes only its own link's value.
    let mut mixed = order.clone();
    let mut link = relayed.links[1].payload.clone();
    link.value = "B".into();
    mixed.links.push(bft_crypto::Signed::sign(link, &keys[1]));
    assert_eq!(
        refused(mixed, &members),
        "links disagree on the instance or value"
    );

    // A lieutenant's "order": the commander must sign first.
    let fake = Chain::order(
        Instance {
            id: InstanceId {
                commander: 0,
                nonce: 9,
            },
            ..instance(2)
        },
        "B".into(),
        &keys[1],
    );
    assert_eq!(refused(fake, &members), "signer is not that replica");

    // A link dropped from the middle breaks the chain digest.
    let three = relayed.extended(2, &keys[2]);
    let mut dropped = three.clone();
    dropped.links.remove(1);
    assert_eq!(refused(dropped, &members), "link does not follow the chain");

    // One replica signing twice.
    let twice = relayed.extended(1, &keys[1]);
    assert_eq!(refused(twice, &members), "a replica signs twice");

    // m out of range for n.
    let too_many = Chain::order(instance(3), "A".into(), &keys[0]);
    assert_eq!(refused(too_many, &members), "m must satisfy n >= m + 2");

    assert_eq!(refused(Chain { links: vec![] }, &members), "empty chain");
}

#[test]
fn a_chain_is_only_counted_within_its_round() {
    let (keys, members) = group(4);
    let mut lieutenant = Generals::new(1, 4, keys[1].clone(), 1);
    let order = Chain::order(instance(2), "A".into(), &keys[0]);
    let verified = verify_chain(order.clone(), &members).unwrap();
    // Round 1 ends at start + 1 round: one millisecond later the order is late.
    let late = Duration::from_millis(1_000 + ROUND_MS + 1);
    let out = lieutenant.on_chain(late, verified);
    assert!(
        matches!(out.as_slice(), [GeneralsOutput::Ignored { .. }]),
        "{out:?}"
    );
    // In time, it is accepted and relayed to the two other lieutenants.
    let verified = verify_chain(order, &members).unwrap();
    let out = lieutenant.on_chain(Duration::from_millis(1_050), verified);
    let relays: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            GeneralsOutput::Send { to, chain } => Some((*to, chain.links.len())),
            _ => None,
        })
        .collect();
    assert_eq!(relays, vec![(2, 2), (3, 2)]);
    // It decides A after m+1 = 3 rounds, and reports to the commander.
    let out = lieutenant.on_timer(Duration::from_millis(1_000 + 3 * ROUND_MS));
    assert!(out.contains(&GeneralsOutput::Decided {
        id: instance(2).id,
        value: Some("A".into())
    }));
    assert!(out
        .iter()
        .any(|o| matches!(o, GeneralsOutput::Report { to: 0, .. })));
}
