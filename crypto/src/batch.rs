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

use crate::signed::try_signing_bytes;
use crate::{CryptoError, Signable, Signed, Verified};
use ed25519_zebra::batch::{Item, Verifier};
use ed25519_zebra::VerificationKeyBytes;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells batches apart, so a pending signature is confirmed only by its own batch.
static NEXT_BATCH: AtomicU64 = AtomicU64::new(1);

/// Signatures waiting to be checked together.
pub struct SignatureBatch {
    id: u64,
    verifier: Verifier,
    len: usize,
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
            verifier: Verifier::new(),
            len: 0,
        }
    }

    /// Signatures queued so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `signed` to the batch, to be vouched for by [`SignatureBatch::verify`].
    ///
    /// # Errors
    /// At once, without queueing, for what no signature can fix: a signer that is not
    /// a usable key (undecodable or of small order), or a payload that cannot encode.
    pub fn queue<T: Signable>(&mut self, signed: &Signed<T>) -> Result<(), CryptoError> {
        signed.signer.verification_key()?;
        let bytes = try_signing_bytes(&signed.payload)?;
        let key = VerificationKeyBytes::from(signed.signer.0);
        self.verifier
            .queue(Item::from((key, signed.signature, &bytes[..])));
        self.len += 1;
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

    /// Check every queued signature at once (an empty batch is trivially fine).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if any of them is bad: check them one by one (or
    /// in smaller batches) to find which.
    pub fn verify(self) -> Result<BatchOk, CryptoError> {
        if self.len > 0 {
            self.verifier
                .verify(rand::thread_rng())
                .map_err(|_| CryptoError::BadSignature)?;
        }
        Ok(BatchOk { batch: self.id })
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

    #[test]
    #[should_panic(expected = "a signature confirmed by a batch it was not in")]
    fn a_pending_signature_is_confirmed_only_by_its_own_batch() {
        let mut mine = SignatureBatch::new();
        let pending = mine.take(vote(1)).unwrap();
        let other = SignatureBatch::new().verify().unwrap();
        let _ = pending.confirm(&other);
    }
}
