//! Which backups check the client signatures inside a pre-prepare.
//!
//! Every client request a batch carries must be signed by its client (Validity:
//! only requests a client issued are ever executed). The primary checks each
//! request when it arrives; each backup checked each again inside the pre-prepare,
//! so a request's signature was verified n times, about a sixth of the machine's
//! CPU at the peak (issue 13, ninth round). Not every backup needs to.
//!
//! **The rule.** For each (view, seq), `quorum - (f+1)` backups (f when
//! n = 3f+1) accept the pre-prepare's batch without checking its requests'
//! signatures; the other backups and the primary check them as before. Which
//! backups skip rotates with the sequence number, so each backup skips about one
//! batch in three and the work is shared evenly.
//!
//! **Why it is safe.** A batch with a forged request can reach a prepared
//! certificate only if a quorum of replicas (the primary and quorum-1 backups)
//! accepted its pre-prepare. A correct replica that checks refuses it, so all the
//! quorum would have to be faulty replicas (at most f) and correct skippers (at
//! most quorum-f-1 for that sequence number): at most quorum-1, one short. With no
//! prepared certificate there is no commit, no tentative execution and no
//! certificate in a view-change, and nothing else takes requests from a
//! pre-prepare (a backup does not queue the requests it sees there). View-changes
//! and new-views still check every request of every batch they carry. A skipping
//! replica that accepted a forged batch is in the position of one an equivocating
//! primary misled, which the protocol already recovers from; and because a
//! request's digest covers its signature (`messages::request_digest`), the forged
//! batch is another batch, never the agreed one with a bad signature inside.

use crate::types::{Membership, ReplicaId, Seq, View};

/// How many backups skip the checks for each sequence number: quorum - (f+1).
#[must_use]
pub fn skippers(members: &Membership) -> usize {
    members.quorum() - members.weak_quorum()
}

/// How many replicas check each request of a batch: the primary and every
/// backup that does not skip, `n - skippers` (n - f when n = 3f+1). The
/// benchmark's ratio at the baseline's costs counts this many checks a request.
#[must_use]
pub fn checkers(members: &Membership) -> usize {
    members.n() - skippers(members)
}

/// Whether replica `me` skips the client-signature checks of the pre-prepare for
/// (`view`, `seq`), when `skippers` backups skip for each sequence number. The
/// primary never skips.
#[must_use]
pub fn skips(members: &Membership, skippers: usize, view: View, seq: Seq, me: ReplicaId) -> bool {
    let n = members.n() as u64;
    let primary = u64::from(members.primary(view));
    let me = u64::from(me);
    if skippers == 0 || me >= n || me == primary {
        return false;
    }
    let backups = n - 1;
    // The backups in order after the primary: 0 for the next one, and so on.
    let position = (me + n - primary - 1) % n;
    (position + seq % backups) % backups < skippers as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_crypto::KeyPair;
    use proptest::prelude::*;

    fn members(n: usize) -> Membership {
        Membership::new(
            (0..n)
                .map(|i| KeyPair::from_seed([i as u8 + 1; 32]).public())
                .collect(),
        )
    }

    #[test]
    fn one_backup_in_four_replicas_skips_and_it_rotates() {
        let m = members(4);
        assert_eq!(skippers(&m), 1);
        let who = |view, seq| {
            m.ids()
                .filter(|r| skips(&m, 1, view, seq, *r))
                .collect::<Vec<_>>()
        };
        assert_eq!(who(0, 1), vec![3]);
        assert_eq!(who(0, 2), vec![2]);
        assert_eq!(who(0, 3), vec![1]);
        assert_eq!(who(1, 3), vec![2]);
    }

    #[test]
    fn checkers_are_the_replicas_no_rule_excuses() {
        // n = 3f+1: n - f.
        assert_eq!(checkers(&members(4)), 3);
        assert_eq!(checkers(&members(7)), 5);
        // n = 5, f = 1: a quorum of 4, so two backups skip and three replicas check.
        assert_eq!(checkers(&members(5)), 3);
        assert_eq!(checkers(&members(1)), 1);
    }

    #[test]
    fn a_group_too_small_for_faults_never_skips() {
        let m = members(1);
        assert_eq!(skippers(&m), 0);
        assert!(!skips(&m, 0, 0, 1, 0));
    }

    proptest! {
        /// Exactly quorum-(f+1) backups skip each sequence number, never the
        /// primary; with the f faulty replicas they stay one short of a quorum.
        #[test]
        fn skippers_and_faulty_replicas_never_make_a_quorum(
            n in 1usize..30, view in 0u64..100, seq in 0u64..1000
        ) {
            let m = members(n);
            let k = skippers(&m);
            let skipping: Vec<ReplicaId> =
                m.ids().filter(|r| skips(&m, k, view, seq, *r)).collect();
            prop_assert_eq!(skipping.len(), k);
            prop_assert!(!skipping.contains(&m.primary(view)));
            prop_assert!(k + m.f() < m.quorum());
        }

        /// Over n-1 consecutive sequence numbers every backup skips equally often.
        #[test]
        fn the_work_is_shared_evenly(n in 4usize..30, view in 0u64..100, from in 0u64..1000) {
            let m = members(n);
            let k = skippers(&m);
            for r in m.ids().filter(|r| *r != m.primary(view)) {
                let times = (from..from + n as u64 - 1)
                    .filter(|s| skips(&m, k, view, *s, r))
                    .count();
                prop_assert_eq!(times, k);
            }
        }
    }
}
