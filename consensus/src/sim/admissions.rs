//! The simulator admits each frame once.
//!
//! A broadcast puts one frame (one `Arc`) on the wire to n-1 replicas, and the
//! network duplicates some; every receiver would check the same signatures on the
//! same bytes, and signature checks are most of a sweep's time. The ingress is a
//! pure function of the frame's origin and bytes (`Ingress::admit_many` takes
//! `&self` and keeps nothing), so its answer for a frame already admitted from
//! that origin is the answer it would give again: this memo keeps it, keyed by
//! the frame's allocation, and holds the frame so the allocation cannot be reused
//! while its key is remembered. Each distinct frame still goes through the real
//! ingress (decoding, the sender rule, batched ZIP-215 checks) exactly once.
//!
//! The shared ingress checks everything. A replica's own checks less: it takes
//! some pre-prepares' requests unchecked (`request_checks`), so it accepts all
//! that the shared ingress accepts and perhaps more. A pre-prepare the shared
//! ingress refused is therefore admitted again through the receiving replica's
//! own ingress, whose answer is the one the replica gets.

use crate::ingress::{Admitted, Ingress, Origin};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Frames remembered; the oldest is forgotten first.
const REMEMBERED: usize = 4096;

type Key = (usize, Origin);

#[derive(Default)]
pub struct Admissions {
    known: BTreeMap<Key, (Arc<Vec<u8>>, Admitted)>,
    order: VecDeque<Key>,
}

impl Admissions {
    /// What the receiving replica's ingress says of each frame, in order: `ingress`
    /// (which checks everything) admits frames not seen before from their origin
    /// together, as one batch; `own` (the replica's) admits again the pre-prepares
    /// `ingress` refused.
    pub fn admit(
        &mut self,
        ingress: &Ingress,
        own: &Ingress,
        frames: &[(Origin, Arc<Vec<u8>>)],
    ) -> Vec<Admitted> {
        let key = |(origin, frame): &(Origin, Arc<Vec<u8>>)| (Arc::as_ptr(frame) as usize, *origin);
        let fresh: Vec<&(Origin, Arc<Vec<u8>>)> = {
            let mut seen = std::collections::BTreeSet::new();
            frames
                .iter()
                .filter(|f| !self.known.contains_key(&key(f)) && seen.insert(key(f)))
                .collect()
        };
        let answers = ingress.admit_many(fresh.iter().map(|(o, f)| (*o, f.as_slice())).collect());
        for (frame, admitted) in fresh.into_iter().zip(answers) {
            let k = key(frame);
            self.known.insert(k, (Arc::clone(&frame.1), admitted));
            self.order.push_back(k);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
        frames
            .iter()
            .map(|f| match self.known.get(&key(f)) {
                Some((_, admitted))
                    if admitted.result.is_err() && admitted.kind == "pre_prepare" =>
                {
                    own.admit(f.0, &f.1)
                }
                Some((_, admitted)) => admitted.clone(),
                // Only if one batch held more new frames than the memo keeps.
                None => own.admit(f.0, &f.1),
            })
            .collect()
    }
}
