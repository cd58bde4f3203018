//! `wrong-results`: a replica that lies about every result it returns.
//!
//! Each reply it sends carries another result than the one it executed: in full,
//! the bytes with one more byte; as a digest (TOCS §5.1.1), another digest. It
//! re-signs the replies it changed, so they are well formed and signed, and only
//! the client's rule stands between it and a wrong answer: f+1 (or 2f+1) replicas
//! must vouch for one digest, and the result accepted must hash to it. As the
//! replica a request designates, it never gives that result: its client has to
//! retransmit to get it in full from the others.

use super::{Behaviour, Ctx};
use crate::io::Output;
use crate::messages::ReplyResult;
use crate::reply::sign_reply_batch;

pub struct WrongResults;

impl Behaviour for WrongResults {
    fn name(&self) -> &'static str {
        "wrong-results"
    }

    fn outputs(&mut self, ctx: &Ctx<'_>, mut outputs: Vec<Output>) -> Vec<Output> {
        for o in &mut outputs {
            let Output::Replies(signed) = o else {
                continue;
            };
            let mut replies = signed.replies.clone();
            for reply in replies.iter_mut().filter(|r| r.refusal.is_none()) {
                reply.result = match &reply.result {
                    ReplyResult::Full(bytes) => {
                        let mut lie = bytes.clone();
                        lie.push(0x5a);
                        ReplyResult::Full(lie)
                    }
                    ReplyResult::Digest(d) => {
                        let mut lie = *d;
                        lie.0[0] ^= 0xff;
                        ReplyResult::Digest(lie)
                    }
                };
            }
            *signed = sign_reply_batch(ctx.key, signed.root.payload.view, ctx.id, replies);
        }
        outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Reply;
    use crate::reply_bundle::verify_bundle;
    use bft_crypto::KeyPair;

    #[test]
    fn every_result_is_changed_and_the_replies_still_verify() {
        let (keys, members) = super::super::four_replicas();
        let client = KeyPair::from_seed([9; 32]).public();
        let reply = |ts: u64, result: ReplyResult| Reply {
            view: 0,
            timestamp: ts,
            client,
            replica: 1,
            result,
            refusal: None,
            seq: 1,
            tentative: false,
        };
        let honest = vec![
            reply(1, ReplyResult::Full(vec![1; 40])),
            reply(
                2,
                ReplyResult::Digest(crate::reply_result::result_digest(&[2; 40])),
            ),
        ];
        let ctx = super::super::test_ctx(1, &members, &keys[1]);
        let signed = sign_reply_batch(&keys[1], 0, 1, honest.clone());
        let out = WrongResults.outputs(&ctx, vec![Output::Replies(signed)]);
        let [Output::Replies(lied)] = &out[..] else {
            panic!("one batch of replies: {out:?}");
        };
        for (lie, truth) in lied.replies.iter().zip(&honest) {
            assert_ne!(lie.result.digest(), truth.result.digest());
        }
        let routed = lied.clone().address(|_| Some(0u8));
        let [(_, crate::messages::Message::Replies(bundle))] = &routed[..] else {
            panic!("one bundle: {routed:?}");
        };
        assert_eq!(verify_bundle(bundle.clone(), None).unwrap().len(), 2);
    }
}
