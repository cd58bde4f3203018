//! Batch verification of signatures of any types at once, with the same rule as a
//! single check (ZIP-215, see [`crate::signed`]), so a batch says yes exactly when
//! every one of its signatures would on its own.
//!
//! A batch holds signatures of two kinds. Those it only has to vouch for (nested
//! proofs inside a certificate) are queued by reference with
//! [`SignatureBatch::queue`]. Those that must come out as a [`Verified<T>`] are
//! handed over with [`SignatureBatch::take`], which returns a [`Pending<T>`]; only a
//! successful [`SignatureBatch::verify`] of that very batch turns it into a
//! `Verified<T>`, so an unchecked signature still cannot become a verified one.
//!
//! The equation is ed25519-zebra's batch equation (its `batch::Verifier`), checked
//! here with the signers' points decompressed once per process ([`UsableKey`]):
//! zebra's verifier decompresses every signer again in every batch, and with one
//! client key per request that was a field square root per request on top of the
//! nonce point's, about a third of a replica's verification time (issue 13).
//!
//! A batch of one signature checks that signature's own equation instead, as
//! ed25519-zebra's single check does (`VerificationKey::verify_prehashed`: R
//! decoded, s canonical, `[8](R - ([s]B - [k]A)) = 0`): for one signature the batch
//! equation says the same, and the single equation is cheaper (below the peak most
//! frames reach a replica alone).

use crate::keys::UsableKey;
use crate::seen::{SeenKey, SeenSignatures};
use crate::signed::try_signing_bytes;
use crate::{CryptoError, Signable, Signed, Verified};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand::RngCore;
use sha2::{Digest as _, Sha512};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Tells batches apart, so a pending signature is confirmed only by its own batch.
static NEXT_BATCH: AtomicU64 = AtomicU64::new(1);

/// One queued signature: its nonce point and scalar as encoded, and the challenge
/// `k = H(R || A || M)` (computed at queueing, while the message is at hand).
struct Entry {
    r: [u8; 32],
    s: [u8; 32],
    k: Scalar,
    /// Index of its signer in [`SignatureBatch::signers`].
    signer: usize,
}

impl Entry {
    /// The nonce point and scalar as ZIP-215 reads them: R any encoding that
    /// decodes (non-canonical ones included), s canonical.
    fn decode(&self) -> Result<(EdwardsPoint, Scalar), CryptoError> {
        let r = CompressedEdwardsY(self.r)
            .decompress()
            .ok_or(CryptoError::BadSignature)?;
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(self.s))
            .ok_or(CryptoError::BadSignature)?;
        Ok((r, s))
    }
}

/// Signatures waiting to be checked together.
pub struct SignatureBatch {
    id: u64,
    entries: Vec<Entry>,
    /// Distinct signers, each with its decompressed point: the `z_i k_i` of one
    /// signer's signatures add up to one coefficient (a replica's votes, a client's
    /// requests), as zebra's verifier does.
    signers: Vec<EdwardsPoint>,
    /// Their keys as encoded, in the same order (to remember what verified).
    signer_keys: Vec<[u8; 32]>,
    signer_index: HashMap<[u8; 32], usize>,
    /// Signatures checked lately: one found there is not checked again, and
    /// this batch's are added once it verifies.
    seen: Option<Arc<SeenSignatures>>,
}

impl Default for SignatureBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SignatureBatch {
    #[must_use]
    pub fn new() -> Self {
        Self {
            id: NEXT_BATCH.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
            signers: Vec::new(),
            signer_keys: Vec::new(),
            signer_index: HashMap::new(),
            seen: None,
        }
    }

    /// A batch that skips signatures `seen` holds (their equations held for the
    /// same key, nonce, scalar and challenge: see `seen.rs`) and, once it
    /// verifies, adds its own to `seen`.
    #[must_use]
    pub fn remembering(seen: Arc<SeenSignatures>) -> Self {
        Self {
            seen: Some(seen),
            ..Self::new()
        }
    }

    /// Signatures queued so far and still to be checked (a remembering batch
    /// does not count those it found checked already).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add `signed` to the batch, to be vouched for by [`SignatureBatch::verify`].
    ///
    /// # Errors
    /// At once, without queueing, for what no signature can fix: a signer that is not
    /// a usable key (undecodable or of small order), or a payload that cannot encode.
    pub fn queue<T: Signable>(&mut self, signed: &Signed<T>) -> Result<(), CryptoError> {
        let UsableKey { point, .. } = signed.signer.verification_key()?;
        let bytes = try_signing_bytes(&signed.payload)?;
        let r = signed.signature.r_bytes();
        let a = &signed.signer.0;
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(a)
                .chain_update(&bytes)
                .finalize()
                .into(),
        );
        if let Some(seen) = &self.seen {
            if seen.holds(&(*a, *r, *signed.signature.s_bytes()), &k.to_bytes()) {
                return Ok(());
            }
        }
        let signer = *self.signer_index.entry(*a).or_insert_with(|| {
            self.signers.push(point);
            self.signer_keys.push(*a);
            self.signers.len() - 1
        });
        self.entries.push(Entry {
            r: *r,
            s: *signed.signature.s_bytes(),
            k,
            signer,
        });
        Ok(())
    }

    /// Add `signed` and keep it, to become a [`Verified<T>`] once this batch verifies.
    ///
    /// # Errors
    /// As [`SignatureBatch::queue`] (no signature can make such a value valid).
    pub fn take<T: Signable>(&mut self, signed: Signed<T>) -> Result<Pending<T>, CryptoError> {
        self.queue(&signed)?;
        Ok(Pending {
            signed,
            batch: self.id,
        })
    }

    /// Check every queued signature at once (an empty batch is trivially fine):
    /// `[8]( -(sum z_i s_i) B + sum z_i R_i + sum_A (sum_{i by A} z_i k_i) A ) = 0`
    /// with random 128-bit `z_i`, every `s_i` canonical and every `R_i` a point
    /// (non-canonical encodings accepted), as ZIP-215 and zebra's verifier require.
    /// A batch of one checks `[8](R + k A - s B) = 0` (see `one_holds`).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if any of them is bad: check them one by one (or
    /// in smaller batches) to find which.
    pub fn verify(self) -> Result<BatchOk, CryptoError> {
        let holds = match self.entries.as_slice() {
            [] => return Ok(BatchOk { batch: self.id }),
            [one] => self.one_holds(one)?,
            _ => self.all_hold()?,
        };
        if holds {
            if let Some(seen) = &self.seen {
                seen.remember(self.entries.iter().map(|e| {
                    let key: SeenKey = (self.signer_keys[e.signer], e.r, e.s);
                    (key, e.k.to_bytes())
                }));
            }
            Ok(BatchOk { batch: self.id })
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// The single signature's own equation, `[8](R + k A - s B) = 0`: the batch
    /// equation without its random factor, which for one signature says the same
    /// (a nonzero `z` times a point of the prime-order subgroup is zero only if
    /// the point is). Checked as a lone signature is, with the basepoint's
    /// precomputed table: below the peak most frames reach a replica alone (a
    /// vote), and a batch of one through the general multiscalar multiplication
    /// cost a third more (`cargo bench -p bft-bench --bench crypto --
    /// batch_of_one`, against `verify_512B`).
    fn one_holds(&self, e: &Entry) -> Result<bool, CryptoError> {
        let (r, s) = e.decode()?;
        let minus_a = -self.signers[e.signer];
        // [k](-A) + [s]B
        let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&e.k, &minus_a, &s);
        Ok((r - sb_minus_ka).mul_by_cofactor().is_identity())
    }

    /// The batch equation over every queued signature, with random 128-bit `z_i`.
    fn all_hold(&self) -> Result<bool, CryptoError> {
        let mut rng = rand::thread_rng();
        let mut b_coeff = Scalar::ZERO;
        let mut a_coeffs = vec![Scalar::ZERO; self.signers.len()];
        let mut r_coeffs = Vec::with_capacity(self.entries.len());
        let mut r_points = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let (r, s) = e.decode()?;
            let mut z = [0u8; 16];
            rng.fill_bytes(&mut z);
            let z = Scalar::from(u128::from_le_bytes(z));
            b_coeff -= z * s;
            a_coeffs[e.signer] += z * e.k;
            r_coeffs.push(z);
            r_points.push(r);
        }
        let check = EdwardsPoint::vartime_multiscalar_mul(
            std::iter::once(&b_coeff)
                .chain(a_coeffs.iter())
                .chain(r_coeffs.iter()),
            std::iter::once(&ED25519_BASEPOINT_POINT)
                .chain(self.signers.iter())
                .chain(r_points.iter()),
        );
        Ok(check.mul_by_cofactor().is_identity())
    }
}

/// Proof that one [`SignatureBatch`] verified. Only this module makes one.
#[derive(Debug)]
pub struct BatchOk {
    batch: u64,
}

/// A signature handed to a batch, not yet known to be good.
#[derive(Clone)]
pub struct Pending<T> {
    signed: Signed<T>,
    batch: u64,
}

impl<T> Pending<T> {
    /// The signed value was checked by the batch that `ok` proves.
    ///
    /// # Panics
    /// If `ok` is another batch's: that is a bug in the caller, and letting it pass
    /// would mark an unchecked signature verified.
    #[must_use]
    pub fn confirm(self, ok: &BatchOk) -> Verified<T> {
        assert_eq!(
            self.batch, ok.batch,
            "a signature confirmed by a batch it was not in"
        );
        Verified::checked(self.signed)
    }

    /// Give the value back unchecked (its batch failed; check it some other way).
    #[must_use]
    pub fn into_signed(self) -> Signed<T> {
        self.signed
    }

    #[must_use]
    pub fn signed(&self) -> &Signed<T> {
        &self.signed
    }
}

impl<T> std::ops::Deref for Pending<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.signed.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Vote(u64);
    impl Signable for Vote {
        const DOMAIN: &'static str = "test/batch-vote";
    }

    fn vote(n: u64) -> Signed<Vote> {
        Signed::sign(Vote(n), &KeyPair::from_seed([n as u8; 32]))
    }

    #[test]
    fn a_verified_batch_confirms_what_it_took_and_vouches_for_what_it_queued() {
        let mut batch = SignatureBatch::new();
        let nested = vote(1);
        batch.queue(&nested).unwrap();
        let pending = batch.take(vote(2)).unwrap();
        assert_eq!(batch.len(), 2);
        let ok = batch.verify().unwrap();
        assert_eq!(pending.confirm(&ok).0, 2);
    }

    #[test]
    fn one_bad_signature_fails_the_batch() {
        let mut batch = SignatureBatch::new();
        let mut bad = vote(1);
        bad.payload.0 = 9;
        batch.queue(&vote(2)).unwrap();
        batch.queue(&bad).unwrap();
        assert_eq!(batch.verify().unwrap_err(), CryptoError::BadSignature);
    }

    /// Vote `n` signed by a key of its own (as requests come, one client each).
    fn vote_by_own_key(n: u64) -> Signed<Vote> {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        seed[31] = 0x5a;
        Signed::sign(Vote(n), &KeyPair::from_seed(seed))
    }

    /// curve25519-dalek multiplies fewer than 190 points by Straus's method and
    /// more by Pippenger's, on whichever vector unit the processor has (AVX2 or
    /// AVX-512 IFMA): a batch must say the same on every path. Two points per
    /// signature, so 3 and 60 signatures take Straus, 150 and 300 Pippenger.
    #[test]
    fn batches_of_every_size_accept_good_signatures_and_refuse_one_bad() {
        for n in [3u64, 60, 150, 300] {
            let votes: Vec<_> = (0..n).map(vote_by_own_key).collect();
            let mut good = SignatureBatch::new();
            for v in &votes {
                good.queue(v).unwrap();
            }
            assert!(good.verify().is_ok(), "{n} good signatures refused");
            for bad_at in [0, n / 2, n - 1] {
                let mut batch = SignatureBatch::new();
                let mut tampered = votes[bad_at as usize].clone();
                tampered.payload.0 += 1;
                for (i, v) in votes.iter().enumerate() {
                    let v = if i as u64 == bad_at { &tampered } else { v };
                    batch.queue(v).unwrap();
                }
                assert_eq!(
                    batch.verify().unwrap_err(),
                    CryptoError::BadSignature,
                    "a bad signature at {bad_at} of {n} accepted"
                );
            }
        }
    }

    #[test]
    fn a_remembered_signature_is_not_checked_again_but_still_binds_its_message() {
        let seen = Arc::new(SeenSignatures::new(64));
        let mut first = SignatureBatch::remembering(seen.clone());
        first.queue(&vote(1)).unwrap();
        first.queue(&vote(2)).unwrap();
        first.verify().unwrap();
        assert_eq!(seen.len(), 2);

        let mut again = SignatureBatch::remembering(seen.clone());
        let pending = again.take(vote(1)).unwrap();
        again.queue(&vote(3)).unwrap();
        assert_eq!(again.len(), 1, "only the new signature is left to check");
        let ok = again.verify().unwrap();
        assert_eq!(pending.confirm(&ok).0, 1);
        assert_eq!(seen.len(), 3);

        // The same signer and signature over another message: checked, and refused.
        let mut forged = vote(1);
        forged.payload.0 = 9;
        let mut third = SignatureBatch::remembering(seen.clone());
        third.queue(&forged).unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third.verify().unwrap_err(), CryptoError::BadSignature);
        // Claimed by another signer: checked, and refused.
        let mut stolen = vote(2);
        stolen.signer = KeyPair::from_seed([5; 32]).public();
        let mut fourth = SignatureBatch::remembering(seen);
        fourth.queue(&stolen).unwrap();
        assert_eq!(fourth.len(), 1);
        assert_eq!(fourth.verify().unwrap_err(), CryptoError::BadSignature);
    }

    #[test]
    fn a_batch_that_fails_teaches_nothing() {
        let seen = Arc::new(SeenSignatures::new(64));
        let mut bad = vote(1);
        bad.payload.0 = 9;
        let mut batch = SignatureBatch::remembering(seen.clone());
        batch.queue(&vote(2)).unwrap();
        batch.queue(&bad).unwrap();
        assert!(batch.verify().is_err());
        assert!(seen.is_empty());
        let mut again = SignatureBatch::remembering(seen);
        again.queue(&vote(2)).unwrap();
        assert_eq!(again.len(), 1, "the good one is checked again");
    }

    #[test]
    #[should_panic(expected = "a signature confirmed by a batch it was not in")]
    fn a_pending_signature_is_confirmed_only_by_its_own_batch() {
        let mut mine = SignatureBatch::new();
        let pending = mine.take(vote(1)).unwrap();
        let other = SignatureBatch::new().verify().unwrap();
        let _ = pending.confirm(&other);
    }
}
