//! The replicated application: anything deterministic.

use bft_crypto::Digest;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("cannot restore snapshot: {0}")]
pub struct RestoreError(pub String);

/// A deterministic state machine replicated by PBFT. Every correct replica applies
/// the same operations in the same order, so they must reach the same state and
/// results: no clocks, randomness or iteration over unordered maps inside.
pub trait Application {
    /// Apply one operation and return its result. Invalid operations must return an
    /// error *result* (bytes), deterministically, never panic.
    fn execute(&mut self, operation: &[u8]) -> Vec<u8>;

    /// Apply a batch in order. Override to amortise per-batch work.
    fn execute_batch(&mut self, operations: &[&[u8]]) -> Vec<Vec<u8>> {
        operations.iter().map(|op| self.execute(op)).collect()
    }

    /// The whole state, deterministically encoded (equal states, equal bytes).
    fn snapshot(&self) -> Vec<u8>;

    /// Replace the state with a snapshot taken by [`Application::snapshot`].
    ///
    /// # Errors
    /// If the bytes are not a snapshot of this application.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// A digest of the state (for `/status` and tests).
    fn digest(&self) -> Digest;
}
