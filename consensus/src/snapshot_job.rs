//! A checkpoint's snapshot, captured on the replica's event loop and encoded and
//! hashed wherever the driver likes (issue 13, twenty-fifth round).
//!
//! At every checkpoint each replica used to encode its whole state and hash it on
//! its event loop: for the benchmark's 5.3 MB state about 9 ms of CPU (encoding
//! about 6, SHA-256 about 3), in all four replicas at once, and commits fell to a
//! third of their rate for the 100 ms around it. That was the tail at 10,000
//! req/s. Now the replica only captures its state ([`Application::capture`]:
//! shared values, no copies), hands the driver an [`Output::TakeSnapshot`] with
//! this job, and goes on. The driver runs [`SnapshotJob::run`] (the node on a
//! thread of its own, the simulator after a drawn delay, tests at once) and feeds
//! the result back as [`Input::SnapshotTaken`]; only then does the replica sign its
//! checkpoint (OSDI'99 §4.3). The bytes and the digest are those the loop wrote
//! before: [`crate::replica`]'s one encoder writes both.
//!
//! [`Application::capture`]: crate::app::Application::capture
//! [`Output::TakeSnapshot`]: crate::io::Output::TakeSnapshot
//! [`Input::SnapshotTaken`]: crate::io::Input::SnapshotTaken

use crate::app::CapturedState;
use crate::messages::snapshot_digest;
use crate::replica::{encode_snapshot_parts, Part, LIKELY_PREFIX};
use crate::types::Seq;
use bft_crypto::Digest;
use std::fmt;
use std::sync::Arc;

/// The state at checkpoint `seq`, to be encoded and hashed.
#[derive(Clone)]
pub struct SnapshotJob {
    seq: Seq,
    state: Arc<dyn CapturedState>,
    /// The client table, encoded on the loop: a few hundred kilobytes at most
    /// (`client_table::MAX_TABLE_BYTES`), and cheaper to encode than to copy.
    clients: Arc<Vec<u8>>,
    /// The buffer of the stable checkpoint before last, to write into if nobody
    /// holds it any more by the time the job runs (see
    /// [`crate::encode_snapshot_into`]).
    reuse: Option<Arc<Vec<u8>>>,
}

impl SnapshotJob {
    /// The job for checkpoint `seq`: `state` as captured, the client table's
    /// bytes, and the buffer of an older snapshot to write into if nobody holds it
    /// any more. The replica makes these; public so that a driver's own tests can
    /// make one (a driver only runs jobs and feeds back their results).
    #[must_use]
    pub fn new(
        seq: Seq,
        state: Arc<dyn CapturedState>,
        clients: Vec<u8>,
        reuse: Option<Arc<Vec<u8>>>,
    ) -> Self {
        Self {
            seq,
            state,
            clients: Arc::new(clients),
            reuse,
        }
    }

    /// The checkpoint's sequence number.
    #[must_use]
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Encode and hash the snapshot: the slow part, for the driver to run off the
    /// replica's loop.
    #[must_use]
    pub fn run(self) -> SnapshotTaken {
        let buf = self.reuse.and_then(Arc::into_inner).unwrap_or_default();
        let state = &self.state;
        let clients = &self.clients;
        let snapshot = encode_snapshot_parts(
            Part {
                bound: state.encoded_bound(),
                write: |out: &mut Vec<u8>| state.encode_into(out),
            },
            Part {
                bound: clients.len(),
                write: |out: &mut Vec<u8>| out.extend_from_slice(clients),
            },
            buf,
            LIKELY_PREFIX,
        );
        let digest = snapshot_digest(&snapshot);
        SnapshotTaken {
            seq: self.seq,
            digest,
            snapshot: Arc::new(snapshot),
        }
    }
}

impl fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("seq", &self.seq)
            .field("state_bound", &self.state.encoded_bound())
            .field("clients_bytes", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// A finished [`SnapshotJob`]: the snapshot of checkpoint `seq` and its digest.
#[derive(Clone)]
pub struct SnapshotTaken {
    pub seq: Seq,
    pub digest: Digest,
    pub snapshot: Arc<Vec<u8>>,
}

impl fmt::Debug for SnapshotTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTaken")
            .field("seq", &self.seq)
            .field("digest", &self.digest)
            .field("bytes", &self.snapshot.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Application;
    use crate::client_table::ClientTable;
    use crate::kv::{KvOp, KvStore};
    use bft_crypto::KeyPair;

    /// The job writes exactly what the loop used to write, and hashes it the same
    /// way: for an empty state and for states whose length prefix is 1, 3 and 5
    /// bytes, into a fresh buffer and into a reused one holding garbage.
    #[test]
    fn a_job_writes_the_bytes_and_the_digest_the_loop_wrote() {
        for (keys, value_len) in [(0u8, 0usize), (3, 10), (20, 400), (200, 400)] {
            let mut app = KvStore::new();
            let mut clients = ClientTable::new(100);
            for i in 0..keys {
                let op = KvOp::Set {
                    key: vec![i % 7, i],
                    value: vec![i; value_len],
                };
                let result = app.execute(&op.encode());
                clients.record(KeyPair::from_seed([i; 32]).public(), 1, result, 5);
            }
            let expected = crate::encode_snapshot(&app, &clients);
            let garbage = Some(Arc::new(vec![0xAB; expected.len() * 2 + 7]));
            for reuse in [None, garbage] {
                let table = bft_crypto::encode(&clients).unwrap();
                let taken = SnapshotJob::new(9, app.capture(), table, reuse).run();
                assert_eq!(taken.seq, 9);
                assert_eq!(
                    *taken.snapshot, expected,
                    "{keys} keys of {value_len} bytes"
                );
                assert_eq!(taken.digest, snapshot_digest(&expected));
            }
        }
    }
}
