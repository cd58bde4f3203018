//! One verification rule for single and batch checks (issue 11, defect 2).
//!
//! The project verifies ed25519 under ZIP-215 (cofactored equation, non-canonical
//! point encodings decoded, s < l required) both one by one and in batches, so the
//! two always give the same answer. Before, single checks were ed25519-dalek's
//! `verify_strict` and batches its cofactorless batch equation: a crafted signature
//! with R = identity passed any batch and failed every single check, which let a
//! client slip one request past an honest primary's batched check and then make
//! every backup blame the primary (a view change per request).
//!
//! The crafted signatures below are built from the primitives (the secret scalar
//! and curve arithmetic); the cases follow the edge cases of Chalkias, Garillot and
//! Nikolaenko, "Taming the many EdDSAs" (2020), and ZIP-215's small-order vectors.

use bft_crypto::{
    all_valid, signing_bytes, verify_batch, KeyPair, PublicKey, SeenSignatures, Signable,
    SignatureBatch, Signed,
};
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    text: String,
}
impl Signable for Note {
    const DOMAIN: &'static str = "test/note";
}

fn note(text: &str) -> Note {
    Note { text: text.into() }
}

/// The secret scalar `a` of a key (RFC 8032 §5.1.5: clamped low half of SHA-512(seed)).
fn secret_scalar(key: &KeyPair) -> Scalar {
    let h = Sha512::digest(key.secret_bytes());
    let mut a: [u8; 32] = h[..32].try_into().unwrap();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

/// k = H(R || A || M) mod l.
fn challenge(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(a);
    h.update(msg);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

fn signature(r: [u8; 32], s: [u8; 32]) -> bft_crypto::Signature {
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&r);
    bytes[32..].copy_from_slice(&s);
    bft_crypto::Signature::from_bytes(&bytes)
}

/// A signature by `key` on `payload` whose nonce point is `R = r·B + torsion`
/// (s = r + k·a: valid under the cofactored equation for any torsion point).
fn crafted(key: &KeyPair, payload: Note, r: Scalar, torsion: EdwardsPoint) -> Signed<Note> {
    let big_r = (r * B + torsion).compress().to_bytes();
    let a = key.public().0;
    let k = challenge(&big_r, &a, &signing_bytes(&payload));
    let s = r + k * secret_scalar(key);
    Signed {
        payload,
        signer: key.public(),
        signature: signature(big_r, s.to_bytes()),
    }
}

/// What a lone check says, and what a batch of it beside a good signature says.
fn single_and_batch(crafted: &Signed<Note>) -> (bool, bool, bool) {
    let honest = Signed::sign(note("beside it"), &KeyPair::from_seed([42; 32]));
    let single = crafted.clone().verify().is_ok();
    let together = [crafted.clone(), honest];
    let batch = verify_batch(together.to_vec());
    assert!(batch[1].is_ok(), "the honest signature always verifies");
    (single, batch[0].is_ok(), all_valid(&together))
}

/// What a batch that remembers its checks says of it (beside a good signature), the
/// first time and again: the second answer may come from what the first remembered.
fn remembered_twice(crafted: &Signed<Note>) -> (bool, bool) {
    let seen = Arc::new(SeenSignatures::new(64));
    let honest = Signed::sign(note("beside it"), &KeyPair::from_seed([42; 32]));
    let judge = || {
        let mut batch = SignatureBatch::remembering(seen.clone());
        let queued = batch.queue(crafted).is_ok() && batch.queue(&honest).is_ok();
        queued && batch.verify().is_ok()
    };
    (judge(), judge())
}

/// What a batch holding only the case says (it takes the lone signature's own
/// equation, not the batch's random combination), and a remembering one alone,
/// the first time and again.
fn alone_in_a_batch(crafted: &Signed<Note>) -> (bool, bool, bool) {
    let mut batch = SignatureBatch::new();
    let plain = batch.queue(crafted).is_ok() && batch.verify().is_ok();
    let seen = Arc::new(SeenSignatures::new(64));
    let judge = || {
        let mut batch = SignatureBatch::remembering(seen.clone());
        batch.queue(crafted).is_ok() && batch.verify().is_ok()
    };
    (plain, judge(), judge())
}

/// Good signatures by 120 distinct keys, made once: beside them a case's batch
/// multiplies over 190 points, which curve25519-dalek does by Pippenger's method
/// (and, on a processor with AVX-512 IFMA, with that backend) where a batch of two
/// takes Straus's.
fn crowd() -> &'static [Signed<Note>] {
    static CROWD: std::sync::OnceLock<Vec<Signed<Note>>> = std::sync::OnceLock::new();
    CROWD.get_or_init(|| {
        (0..120u8)
            .map(|i| {
                let mut seed = [0xc3; 32];
                seed[0] = i;
                Signed::sign(note(&format!("crowd {i}")), &KeyPair::from_seed(seed))
            })
            .collect()
    })
}

/// What one batch of the case in the middle of [`crowd`] says.
fn in_a_large_batch(case: &Signed<Note>) -> bool {
    let mut items = crowd().to_vec();
    items.insert(items.len() / 2, case.clone());
    all_valid(&items)
}

fn assert_agree(name: &str, case: &Signed<Note>, expect_valid: bool) {
    assert_eq!(
        in_a_large_batch(case),
        expect_valid,
        "{name}: a batch of 121 must say {expect_valid}"
    );
    let (single, batch, all) = single_and_batch(case);
    assert_eq!(
        (single, batch, all),
        (expect_valid, expect_valid, expect_valid),
        "{name}: single, batch and all_valid must all say {expect_valid}"
    );
    assert_eq!(
        remembered_twice(case),
        (expect_valid, expect_valid),
        "{name}: a remembering batch must say {expect_valid}, and again"
    );
    assert_eq!(
        alone_in_a_batch(case),
        (expect_valid, expect_valid, expect_valid),
        "{name}: a batch of it alone must say {expect_valid}, remembering or not"
    );
}

#[test]
fn identity_nonce_point_is_judged_the_same_alone_and_in_a_batch() {
    let key = KeyPair::from_seed([1; 32]);
    // R = identity, s = k·a: [s]B = R + [k]A holds exactly.
    let case = crafted(
        &key,
        note("identity R"),
        Scalar::ZERO,
        EdwardsPoint::default(),
    );
    assert_agree("identity R", &case, true);
}

#[test]
fn mixed_order_nonce_point_is_judged_the_same_alone_and_in_a_batch() {
    let key = KeyPair::from_seed([2; 32]);
    // Over many torsion points and nonces: a cofactorless batch equation accepts
    // these only when its random coefficient cancels the torsion; the rule must not
    // depend on luck.
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        for r in 1..4u64 {
            let case = crafted(&key, note(&format!("mixed {i} {r}")), Scalar::from(r), *t);
            for _ in 0..4 {
                assert_agree(&format!("torsion {i}, r {r}"), &case, true);
            }
        }
    }
}

/// A nonce point of small order, as R = 0·B + T for each torsion point T and as
/// each non-canonical encoding of a small-order point, under an ordinary key with
/// s = k·a, k hashed over R's bytes as sent: the cofactored equation holds, so
/// ZIP-215 accepts every one of them, alone and in any batch. And an R that does
/// not decode is refused by every check.
#[test]
fn small_order_and_non_canonical_nonce_points_are_judged_the_same_alone_and_in_a_batch() {
    let key = KeyPair::from_seed([6; 32]);
    let a = secret_scalar(&key);
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        let case = crafted(&key, note(&format!("small-order R {i}")), Scalar::ZERO, *t);
        assert_agree(&format!("R = torsion {i}"), &case, true);
    }
    let canonical: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|p| p.compress().to_bytes())
        .collect();
    let non_canonical: Vec<[u8; 32]> = small_order_encodings()
        .into_iter()
        .filter(|e| !canonical.contains(e))
        .collect();
    assert_eq!(non_canonical.len(), 6);
    for big_r in non_canonical {
        let payload = note(&format!("R encoded {}", hex::encode(big_r)));
        let k = challenge(&big_r, &key.public().0, &signing_bytes(&payload));
        let case = Signed {
            payload,
            signer: key.public(),
            signature: signature(big_r, (k * a).to_bytes()),
        };
        assert_agree(&format!("R encoded {}", hex::encode(big_r)), &case, true);
    }
    let mut undecodable = Signed::sign(note("R off the curve"), &key);
    let mut y2 = [0u8; 32];
    y2[0] = 2;
    assert!(CompressedEdwardsY(y2).decompress().is_none());
    undecodable.signature = signature(y2, *undecodable.signature.s_bytes());
    assert_agree("R off the curve", &undecodable, false);
}

#[test]
fn non_canonical_s_is_refused_alone_and_in_a_batch() {
    let key = KeyPair::from_seed([3; 32]);
    let good = Signed::sign(note("s + l"), &key);
    let s = Scalar::from_canonical_bytes(good.signature.s_bytes()[..].try_into().unwrap()).unwrap();
    // s + l as 32 bytes (it fits: l < 2^253).
    let l_minus_1 = -Scalar::ONE;
    let mut plus_l = [0u8; 32];
    let mut carry = 0u16;
    let (sb, lb) = (s.to_bytes(), (l_minus_1).to_bytes());
    for i in 0..32 {
        let extra = u16::from(i == 0); // l = (l - 1) + 1
        let v = u16::from(sb[i]) + u16::from(lb[i]) + extra + carry;
        plus_l[i] = v as u8;
        carry = v >> 8;
    }
    let mut bad = good.clone();
    bad.signature = signature(good.signature.r_bytes().to_owned(), plus_l);
    assert_agree("s + l", &bad, false);
    assert_agree("the original", &good, true);
}

#[test]
fn mixed_order_public_key_is_judged_the_same_alone_and_in_a_batch() {
    // A = a·B + T: not of small order, so not refused as weak; a signature made
    // with `a` satisfies the cofactored equation.
    let key = KeyPair::from_seed([4; 32]);
    let a = secret_scalar(&key);
    let t = EIGHT_TORSION[1];
    let big_a = (a * B + t).compress().to_bytes();
    let payload = note("mixed A");
    let r = Scalar::from(7u64);
    let big_r = (r * B).compress().to_bytes();
    let k = challenge(&big_r, &big_a, &signing_bytes(&payload));
    let case = Signed {
        payload,
        signer: PublicKey(big_a),
        signature: signature(big_r, (r + k * a).to_bytes()),
    };
    assert_agree("mixed-order A", &case, true);
}

/// ZIP-215's vectors: every pair of small-order encodings (canonical, and the six
/// low-order non-canonical ones) as A and R, with s = 0. The equation holds for all
/// of them, so anybody can make such a "signature" for any message: a small-order
/// key is refused outright, alone and in a batch alike.
#[test]
fn small_order_keys_are_refused_alone_and_in_a_batch() {
    let encodings = small_order_encodings();
    assert_eq!(encodings.len(), 14);
    for a in &encodings {
        assert!(PublicKey(*a).is_small_order(), "{}", hex::encode(a));
        for r in &encodings {
            let case = Signed {
                payload: note("anything at all"),
                signer: PublicKey(*a),
                signature: signature(*r, [0; 32]),
            };
            assert_agree(
                &format!("A {} R {}", hex::encode(a), hex::encode(r)),
                &case,
                false,
            );
        }
    }
    assert!(!KeyPair::from_seed([5; 32]).public().is_small_order());
}

/// The eight torsion points' canonical encodings, then the six non-canonical
/// encodings of small-order points that decode: x = 0 with the sign bit set (for
/// y = 1 and y = -1), and y + p for y = 0 and y = 1 with either sign.
fn small_order_encodings() -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|p| p.compress().to_bytes())
        .collect();
    let one = Scalar::ONE.to_bytes(); // y = 1, little-endian
    let minus_one = {
        // p - 1 = 2^255 - 20
        let mut b = [0xffu8; 32];
        b[0] = 0xec;
        b[31] = 0x7f;
        b
    };
    let p_plus = |y: u8| {
        // p + y = 2^255 - 19 + y
        let mut b = [0xffu8; 32];
        b[0] = 0xed + y;
        b[31] = 0x7f;
        b
    };
    let signed = |mut b: [u8; 32]| {
        b[31] |= 0x80;
        b
    };
    out.extend([
        signed(one),
        signed(minus_one),
        p_plus(0),
        signed(p_plus(0)),
        p_plus(1),
        signed(p_plus(1)),
    ]);
    for e in &out {
        let point = CompressedEdwardsY(*e).decompress().expect("decodes");
        assert!(point.is_small_order());
    }
    out
}

/// The batch equation is checked by this crate (with signers decompressed once per
/// process, issue 13) rather than by ed25519-zebra's `batch::Verifier`: on every
/// mix of honest, tampered and crafted signatures (keys of small order aside, which
/// this crate refuses outright), both give the same answer, and so does each
/// signature's single check.
#[test]
fn the_batch_equation_agrees_with_ed25519_zebras_batch_verifier() {
    use ed25519_zebra::batch::{Item, Verifier};
    use rand::{Rng as _, SeedableRng as _};
    let keys: Vec<KeyPair> = (10..14).map(|i| KeyPair::from_seed([i; 32])).collect();
    let mut cases: Vec<(Signed<Note>, bool)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for j in 0..2 {
            cases.push((Signed::sign(note(&format!("honest {i} {j}")), key), true));
        }
        let mut tampered = Signed::sign(note(&format!("tampered {i}")), key);
        tampered.payload.text.push('!');
        cases.push((tampered, false));
        for (t, torsion) in EIGHT_TORSION.iter().enumerate().step_by(3) {
            let r = Scalar::from(3 + t as u64);
            cases.push((
                crafted(key, note(&format!("torsion {i} {t}")), r, *torsion),
                true,
            ));
        }
    }
    // A signature whose R does not decode (y = 2 is not on the curve).
    let mut undecodable = Signed::sign(note("bad R"), &keys[0]);
    let mut y2 = [0u8; 32];
    y2[0] = 2;
    undecodable.signature = signature(y2, *undecodable.signature.s_bytes());
    assert!(CompressedEdwardsY(y2).decompress().is_none());
    cases.push((undecodable, false));
    for (case, valid) in &cases {
        assert_eq!(case.clone().verify().is_ok(), *valid, "{case:?}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for round in 0..300 {
        let len = rng.gen_range(1..=8);
        let picked: Vec<&(Signed<Note>, bool)> = (0..len)
            .map(|_| &cases[rng.gen_range(0..cases.len())])
            .collect();
        let expected = picked.iter().all(|(_, v)| *v);
        let items: Vec<Signed<Note>> = picked.iter().map(|(s, _)| s.clone()).collect();
        let mut zebra = Verifier::new();
        for s in &items {
            let key = ed25519_zebra::VerificationKeyBytes::from(s.signer.0);
            zebra.queue(Item::from((
                key,
                s.signature,
                &signing_bytes(&s.payload)[..],
            )));
        }
        let zebra_says = zebra.verify(rand::thread_rng()).is_ok();
        let ours = bft_crypto::SignatureBatch::new();
        let mut ours = ours;
        let queued = items.iter().all(|s| ours.queue(s).is_ok());
        let ours_says = queued && ours.verify().is_ok();
        assert_eq!(
            (ours_says, zebra_says),
            (expected, expected),
            "round {round}: {items:?}"
        );
        assert_eq!(all_valid(&items), expected, "round {round}");
    }
}
