//! `forge-request`: as primary, it puts a request no client signed into the
//! batches it proposes.
//!
//! Some backups take a pre-prepare's requests unchecked (`request_checks`); this
//! behaviour is what they must withstand. Each batch it proposes is changed one of
//! two ways, re-digested and re-signed:
//! - the first request replaced by a copy with its timestamp far ahead (no client
//!   issued it, so executing it breaks Validity) and the copied signature, which no
//!   longer verifies; replaced rather than added, so the batch stays within the
//!   limits every backup checks, the skipping ones too;
//! - the first request's signature broken, everything else the same (the agreed
//!   digest must not be reachable with a bad signature inside: see
//!   `messages::request_digest`).
//!
//! The forged batch goes either to every backup (the checking ones refuse it) or
//! only to the backups that skip the checks at that sequence number, the others
//! getting the honest one: an equivocation aimed at the skippers.

use super::behaviours::{flip, fork_pre_prepares};
use super::{Behaviour, Ctx, SplitMix64};
use crate::io::Output;
use crate::messages::{Batch, Message, PrePrepare};
use crate::request_checks;
use bft_crypto::Signed;
use std::sync::Arc;

/// How far ahead of the copied request the forged one's timestamp is.
const FORGED_TIMESTAMP_LEAD: u64 = 1 << 40;

pub struct ForgeRequest(SplitMix64);

impl ForgeRequest {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// `batch` with a request its client did not sign.
    fn forge(&mut self, batch: &Batch) -> Batch {
        let mut requests = batch.requests.as_ref().clone();
        if self.0.chance(0.5) {
            let first = &mut requests[0].payload;
            first.timestamp = first.timestamp.saturating_add(FORGED_TIMESTAMP_LEAD);
        } else {
            flip(&mut requests[0].signature);
        }
        Batch {
            requests: Arc::new(requests),
        }
    }
}

impl Behaviour for ForgeRequest {
    fn name(&self) -> &'static str {
        "forge-request"
    }

    fn outputs(&mut self, ctx: &Ctx<'_>, outputs: Vec<Output>) -> Vec<Output> {
        fork_pre_prepares(outputs, |pp, batch| {
            if batch.is_empty() {
                let message = Message::PrePrepare(pp, batch);
                return vec![Output::Broadcast { message }];
            }
            let forged = self.forge(&batch);
            let forged_pp = Signed::sign(
                PrePrepare {
                    digest: forged.digest(),
                    ..pp.payload.clone()
                },
                ctx.key,
            );
            let only_skippers = self.0.chance(0.5);
            let skippers = request_checks::skippers(ctx.members);
            let (view, seq) = (pp.payload.view, pp.payload.seq);
            ctx.others()
                .into_iter()
                .map(|to| {
                    let skips = request_checks::skips(ctx.members, skippers, view, seq, to);
                    let message = if skips || !only_skippers {
                        Message::PrePrepare(forged_pp.clone(), forged.clone())
                    } else {
                        Message::PrePrepare(pp.clone(), batch.clone())
                    };
                    Output::Send { to, message }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Request;
    use crate::validate::Validator;
    use crate::{ReplicaConfig, VerifiedMessage};
    use bft_crypto::KeyPair;

    #[test]
    fn only_the_backups_that_skip_the_checks_accept_the_forged_batches() {
        let (keys, members) = super::super::four_replicas();
        let client = KeyPair::from_seed([9; 32]);
        let request = Signed::sign(
            Request {
                timestamp: 1,
                horizon: 10,
                operation: b"op".to_vec(),
                replier: None,
            },
            &client,
        );
        let ctx = super::super::test_ctx(0, &members, &keys[0]);
        let mut forge = ForgeRequest::new(7);
        let mut forged_seen = 0;
        for seq in 1..=12 {
            let batch = Batch::new(vec![request.clone()]);
            let pp = Signed::sign(
                PrePrepare {
                    view: 0,
                    seq,
                    digest: batch.digest(),
                    replica: 0,
                },
                &keys[0],
            );
            let honest = vec![Output::Broadcast {
                message: Message::PrePrepare(pp, batch.clone()),
            }];
            for o in forge.outputs(&ctx, honest) {
                let Output::Send { to, message } = o else {
                    panic!("pre-prepares go to each backup")
                };
                let Message::PrePrepare(_, sent) = &message else {
                    panic!("a pre-prepare")
                };
                let forged = *sent != batch;
                forged_seen += usize::from(forged);
                let config = ReplicaConfig::new(to, members.clone());
                let skips = request_checks::skips(&members, 1, 0, seq, to);
                // A replica's own validator takes a forged batch only where the
                // rule lets it skip; one that checks everything never does.
                let own = Validator::for_replica(&config).verify(message.clone());
                assert_eq!(own.is_ok(), !forged || skips, "seq {seq} to {to}");
                let full = Validator::new(&config).verify(message);
                assert_eq!(full.is_ok(), !forged, "seq {seq} to {to}");
                if let Ok(v) = own {
                    assert!(matches!(v, VerifiedMessage::PrePrepare(..)));
                }
            }
        }
        assert!(forged_seen > 0);
    }
}
