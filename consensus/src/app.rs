//! The replicated application: anything deterministic.

use bft_crypto::Digest;
use std::sync::Arc;
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

    /// Answer `operation` from the current state without changing it, if it is
    /// read-only; `None` if it is not (or the application has no read-only
    /// operations). Replicas answer read-only requests through this, outside the
    /// order (TOCS §5.1.3), so it must never change the state: a replica that
    /// did would diverge from the others. The default has none.
    fn execute_read_only(&self, _operation: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Start tentative execution (TOCS §5.1.2): from now on, remember how to undo
    /// what executes, until [`Application::commit_tentative`] or
    /// [`Application::rollback_tentative`]. Returns false if the application
    /// cannot undo; the replica then executes only committed requests. The default
    /// cannot.
    fn begin_tentative(&mut self) -> bool {
        false
    }

    /// What executed since [`Application::begin_tentative`] committed: forget how
    /// to undo it.
    fn commit_tentative(&mut self) {}

    /// What executed since [`Application::begin_tentative`] was aborted (a view
    /// change did not keep it): put the state back exactly as it was then.
    fn rollback_tentative(&mut self) {}

    /// The whole state, deterministically encoded (equal states, equal bytes),
    /// appended to `out`. A checkpoint writes the state straight into the buffer of
    /// the replica's snapshot, which is reused from checkpoint to checkpoint: a
    /// state of megabytes is then neither copied from a buffer of its own nor
    /// written into freshly mapped pages (issue 13).
    fn snapshot_into(&self, out: &mut Vec<u8>);

    /// At least as many bytes as [`Application::snapshot_into`] would append now,
    /// so that the snapshot's buffer is sized once (0: unknown).
    fn snapshot_bound(&self) -> usize {
        0
    }

    /// [`Application::snapshot_into`]'s bytes in a buffer of their own.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.snapshot_bound());
        self.snapshot_into(&mut out);
        out
    }

    /// The state as it is now, held so that [`CapturedState::encode_into`] can
    /// write [`Application::snapshot_into`]'s bytes later, on another thread, while
    /// this application goes on executing. A checkpoint captures its state on the
    /// replica's event loop and has it encoded and hashed off the loop: for a state
    /// of megabytes that took the loop about 9 ms at every checkpoint, and commits
    /// stalled meanwhile (issue 13). An application that shares its values (as
    /// [`crate::KvStore`] does) captures them for the cost of a walk over its
    /// entries; the default encodes the state now, which is correct but saves
    /// nothing.
    fn capture(&self) -> Arc<dyn CapturedState> {
        Arc::new(EncodedState(self.snapshot()))
    }

    /// Replace the state with a snapshot taken by [`Application::snapshot`].
    ///
    /// # Errors
    /// If the bytes are not a snapshot of this application.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// A digest of the state (for `/status` and tests).
    fn digest(&self) -> Digest;
}

/// A state captured by [`Application::capture`]: it writes the bytes
/// [`Application::snapshot_into`] wrote at the capture, whatever the application
/// did since.
pub trait CapturedState: Send + Sync + std::fmt::Debug {
    /// Append the state's bytes to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);

    /// At least as many bytes as [`CapturedState::encode_into`] appends (0: unknown).
    fn encoded_bound(&self) -> usize;
}

/// [`Application::capture`]'s default: the state encoded at the capture.
#[derive(Debug)]
pub struct EncodedState(pub Vec<u8>);

impl CapturedState for EncodedState {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn encoded_bound(&self) -> usize {
        self.0.len()
    }
}
