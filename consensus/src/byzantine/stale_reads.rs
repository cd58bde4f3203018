//! `stale-reads`: a replica that answers read-only requests from a stale cache.
//!
//! It answers each read-only operation with the result it gave the first time it
//! was asked that operation, however much was written since, re-signing the
//! replies it changed. Its replies are well formed and signed, so only the read
//! quorum stands between it and a client: with 2f+1 matching results a stale value
//! needs correct replicas that are behind, and the replicas' read rule (see
//! `replica/reads.rs`) makes sure enough of them are not; with f+1 a single correct
//! replica that is behind suffices (the simulator's planted-bug test).

use super::{Behaviour, Ctx};
use crate::io::{Input, Output};
use crate::messages::ReplyResult;
use crate::reply::sign_reply_batch;
use crate::types::ClientId;
use crate::validate::VerifiedMessage;
use std::collections::BTreeMap;

/// Bound on each table; at the bound it starts over (it forgets, stays stale).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct StaleReads {
    /// Read-only requests received and not answered yet: their operations.
    asked: BTreeMap<(ClientId, u64), Vec<u8>>,
    /// The first result given for each operation.
    first: BTreeMap<Vec<u8>, ReplyResult>,
}

impl Behaviour for StaleReads {
    fn name(&self) -> &'static str {
        "stale-reads"
    }

    fn on_input(&mut self, _ctx: &Ctx<'_>, input: &Input) -> Vec<Output> {
        if let Input::Message(VerifiedMessage::Read(r)) = input {
            if self.asked.len() >= MAX_ENTRIES {
                self.asked.clear();
            }
            self.asked
                .insert((r.signer(), r.timestamp), r.operation.clone());
        }
        Vec::new()
    }

    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            let Output::Replies(signed) = o else {
                continue;
            };
            let mut replies = signed.replies.clone();
            let mut changed = false;
            for reply in &mut replies {
                let Some(op) = self.asked.remove(&(reply.client, reply.timestamp)) else {
                    continue;
                };
                if reply.refusal.is_some() {
                    continue;
                }
                if self.first.len() >= MAX_ENTRIES {
                    self.first.clear();
                }
                let first = self.first.entry(op).or_insert_with(|| reply.result.clone());
                if *first != reply.result {
                    reply.result.clone_from(first);
                    changed = true;
                }
            }
            if changed {
                *signed = sign_reply_batch(ctx.key, signed.root.payload.view, ctx.id, replies);
            }
        }
        outputs
    }
}
