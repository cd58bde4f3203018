//! RocksDB storage of what the core marks durable (DESIGN.md "Persistence").
//!
//! Keys: `view`, `vc` (the view-change sent), `nv` (the new-view entered), `stable`
//! (the stable checkpoint with its 2f+1 proof), and per sequence number `a/`, `p/`,
//! `c/` + big-endian seq for the accepted pre-prepare (with batch), the prepared
//! certificate and the commit decision, and `format` (the layout's version, so a
//! store written by another version is refused with a clear error rather than
//! misread). A prepared certificate is stored without its batch when the accepted
//! entry of its seq holds the same one (nearly always: the replica accepted the
//! pre-prepare it then prepared), so each batch is written once, not twice (issue
//! 13); the batch is joined back in at load. The application's data lives in the stable
//! checkpoint's snapshot plus the committed batches above it, which a restarted
//! replica re-executes.
//!
//! All records of one or more event-loop turns go in one `WriteBatch` written with
//! `sync`, before any message of those turns leaves (see `runtime::persister`).
//!
//! A stable checkpoint the replica reached by executing is the exception (the core
//! emits it as `Output::PersistApart`), because its snapshot is the whole state
//! (megabytes) and writing it in a turn's batch held every later message back for
//! tens of milliseconds. [`StableWriter`] writes it apart: the snapshot to its own
//! file (`snapshots/<seq>` in the store's directory, synced, then renamed into
//! place), then `stable` (without the snapshot) and the garbage collection of the
//! log below it, in one synced write. No message waits for it, and none needs to: a
//! checkpoint only lets the log below it go, and until `stable` is written the old
//! checkpoint and the whole log above it stay on disk, so a replica that crashes in
//! between recovers from the old checkpoint and re-executes (or fetches) the rest.
//! A checkpoint installed by state transfer has no log below it on disk, so it is
//! written the same way but in its turn, before the turn's messages leave.

use bft_consensus::messages::{Batch, PrePrepare, Prepare, PreparedCert};
use bft_consensus::{DurableState, PersistRecord, Seq, StableCheckpoint};
use bft_crypto::Signed;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("rocksdb at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("rocksdb write: {0}")]
    Write(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("snapshot file {path}: {reason}")]
    Snapshot { path: String, reason: String },
    #[error(
        "the store at {path} has layout {found}, this build reads layout {FORMAT_VERSION}: \
         it was written by another version of bftnode; run the version that wrote it \
         (starting this replica afresh would forget the votes the store holds)"
    )]
    Format { path: String, found: String },
}

/// The layout of the records this build writes; see [`check_format`]. 3: a
/// request names the replica that replies in full (digest replies), so batches
/// and snapshots of layout 2 no longer decode. 4: a request's digest covers its
/// signature (`request_checks`), so the batch digests that layout 3's accepted,
/// prepared and committed records name are no longer the digests of their batches.
/// 5: a client signs its request's digest (`Signable::PREHASHED`), so the requests
/// inside layout 4's batches no longer carry valid signatures.
const FORMAT_VERSION: u32 = 5;
const FORMAT: &[u8] = b"format";

/// The memtable's size, drawn anew at every open from this range (RocksDB's
/// default is 64 MiB). A memtable that fills up is flushed: the store switches
/// to a new log, writes and syncs a table file and its manifest, and deletes the
/// old log, and meanwhile the replica's own synced writes wait behind that I/O.
/// Replicas of one group write the same records, so with one size they all
/// flushed at the same moment, about every 10 s at 10,000 req/s, and the group
/// (which needs 2f+1 of them) stalled for 0.1-0.5 s, the more so on the local
/// testnet's one disk. Drawn sizes spread their flushes apart, so a flush slows
/// one replica, which the others' quorum does not wait for.
/// Issue 13, twenty-sixth round: 30-second runs at 10,000 req/s, three
/// alternating pairs, p99 36.8-50.4 ms against 60.9-509 ms.
const MEMTABLE_BYTES: std::ops::Range<usize> = (48 << 20)..(80 << 20);

fn memtable_bytes() -> usize {
    use rand::Rng as _;
    rand::thread_rng().gen_range(MEMTABLE_BYTES)
}

const VIEW: &[u8] = b"view";
const VIEW_CHANGE: &[u8] = b"vc";
const NEW_VIEW: &[u8] = b"nv";
const STABLE: &[u8] = b"stable";
const ACCEPTED: &[u8] = b"a/";
const PREPARED: &[u8] = b"p/";
const COMMITTED: &[u8] = b"c/";

fn seq_key(prefix: &[u8], seq: Seq) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bft_crypto::encode(v).expect("records always encode")
}

pub struct Storage {
    durable: DurableState,
    writer: StableWriter,
    /// A file beside the data directory, made at the first write: a store found
    /// empty while it exists was lost (see `Replica::check_not_wiped`).
    marker: PathBuf,
    persisted_before: bool,
    /// Records were written since the last sync (see [`Storage::write_unsynced`]).
    unsynced: bool,
}

impl Storage {
    /// Open (creating if needed) and load the durable state; the marker of earlier
    /// writes is `<path>.persisted`, beside the store.
    ///
    /// # Errors
    /// If RocksDB cannot open the directory (e.g. another process holds its lock) or a
    /// record does not decode.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with_marker(path, &path.with_extension("persisted"))
    }

    /// As [`Storage::open`], with the marker of earlier writes at `marker`.
    ///
    /// # Errors
    /// As [`Storage::open`].
    pub fn open_with_marker(path: &Path, marker: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(memtable_bytes());
        let db = DB::open(&opts, path).map_err(|e| StorageError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        check_format(&db, path)?;
        let snapshots = path.join(SNAPSHOTS);
        if !snapshots.is_dir() {
            // The new directory's entry must itself be durable before a record
            // points into it.
            std::fs::create_dir_all(&snapshots)
                .and_then(|()| std::fs::File::open(path)?.sync_all())
                .map_err(|e| snapshot_error(&snapshots, &e))?;
        }
        let durable = load(&db, &snapshots)?;
        let stored = durable.stable.as_ref().map_or(0, |s| s.seq);
        let writer = StableWriter {
            db: Arc::new(db),
            snapshots,
            stored: Arc::new(Mutex::new(stored)),
        };
        let mut storage = Self {
            durable,
            writer,
            marker: marker.to_path_buf(),
            persisted_before: marker.exists(),
            unsynced: false,
        };
        if !storage.persisted_before && storage.durable != DurableState::default() {
            // Records written unsynced, and never synced, by a process that was
            // killed: the kernel kept them, and from now on they are the store's
            // (the replica acts on them). Synced and marked now, so that losing
            // the directory from here on is told apart from a new store.
            storage.unsynced = true;
            storage.sync()?;
        }
        Ok(storage)
    }

    /// Whether this store was written to before (its marker exists).
    #[must_use]
    pub fn persisted_before(&self) -> bool {
        self.persisted_before
    }

    /// The writer of stable checkpoints for this store (see the module doc); its
    /// clones share one lock, so they write one at a time and never an older
    /// checkpoint over a newer one.
    #[must_use]
    pub fn stable_writer(&self) -> StableWriter {
        self.writer.clone()
    }

    #[must_use]
    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// Make `records` durable: one synced write batch, then any stable checkpoint
    /// among them (the replica marks one so when it came by state transfer, see
    /// `Output::Persist`) written by the [`StableWriter`] before returning.
    ///
    /// # Errors
    /// If a write fails (the node must stop: it cannot promise durability).
    pub fn persist(&mut self, records: &[PersistRecord]) -> Result<(), StorageError> {
        self.write(records, true)
    }

    /// Write `records` without waiting for the disk: nothing is sent on their
    /// account until a later [`Storage::persist`] or [`Storage::sync`] makes them
    /// durable with whatever follows them (see `runtime::persister`). A crash
    /// before then may lose them, and only them and what came after. Stable
    /// checkpoints are not written this way (their writer always syncs).
    ///
    /// # Errors
    /// If the write fails (the node must stop: it cannot promise durability).
    pub fn write_unsynced(&mut self, records: &[PersistRecord]) -> Result<(), StorageError> {
        assert!(
            !records
                .iter()
                .any(|r| matches!(r, PersistRecord::Stable(_))),
            "a stable checkpoint is always written synced"
        );
        self.write(records, false)
    }

    /// Make every record written so far durable (RocksDB syncs its log files).
    ///
    /// # Errors
    /// If the sync fails (the node must stop: it cannot promise durability).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if !self.unsynced {
            return Ok(());
        }
        self.writer
            .db
            .flush_wal(true)
            .map_err(|e| StorageError::Write(e.to_string()))?;
        self.unsynced = false;
        self.mark_persisted()
    }

    fn write(&mut self, records: &[PersistRecord], sync: bool) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut stable = Vec::new();
        let mut batch = WriteBatch::default();
        for r in records {
            self.durable.apply(r);
            let d = &self.durable;
            match r {
                PersistRecord::View { .. } => batch.put(VIEW, enc(&(d.view, d.changing))),
                PersistRecord::Accepted { pre_prepare, .. } => {
                    let seq = pre_prepare.payload.seq;
                    if let Some(v) = d.accepted.get(&seq) {
                        batch.put(seq_key(ACCEPTED, seq), enc(v));
                        // The stored certificate may have left its batch to the
                        // entry just replaced: store it again against the new one.
                        if let Some(cert) = d.prepared.get(&seq) {
                            batch.put(seq_key(PREPARED, seq), enc_prepared(d, cert));
                        }
                    }
                }
                PersistRecord::Prepared(cert) => {
                    if let Some(v) = d.prepared.get(&cert.seq()) {
                        batch.put(seq_key(PREPARED, cert.seq()), enc_prepared(d, v));
                    }
                }
                PersistRecord::Committed { seq, .. } => {
                    if let Some(v) = d.committed.get(seq) {
                        batch.put(seq_key(COMMITTED, *seq), enc(v));
                    }
                }
                PersistRecord::ViewChangeSent(..) => {
                    if let Some(vc) = &d.view_change {
                        batch.put(VIEW_CHANGE, enc(vc));
                    }
                }
                PersistRecord::NewViewEntered(..) => {
                    if let Some(nv) = &d.new_view {
                        batch.put(NEW_VIEW, enc(nv));
                    }
                }
                PersistRecord::Stable(cp) => stable.push(cp),
            }
        }
        if !batch.is_empty() {
            let mut opts = WriteOptions::default();
            // A synced write syncs the log files, so it makes every earlier
            // unsynced write durable too.
            opts.set_sync(sync);
            self.writer
                .db
                .write_opt(batch, &opts)
                .map_err(|e| StorageError::Write(e.to_string()))?;
            self.unsynced = !sync;
            if sync {
                self.mark_persisted()?;
            }
        }
        for cp in stable {
            self.writer.write(cp)?;
        }
        if sync {
            // Nothing of these records needed writing (say, below the stable
            // checkpoint): earlier unsynced records still must be durable now.
            self.sync()?;
        }
        Ok(())
    }

    /// Make the marker durable the first time anything is written (before the
    /// messages that depend on the write leave).
    fn mark_persisted(&mut self) -> Result<(), StorageError> {
        if self.persisted_before {
            return Ok(());
        }
        write_synced(
            &self.marker,
            b"this replica has written to its data directory\n",
        )
        .and_then(|()| match self.marker.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
            _ => Ok(()),
        })
        .map_err(|e| snapshot_error(&self.marker, &e))?;
        self.persisted_before = true;
        Ok(())
    }

    /// Take in records the replica lets be written apart (`Output::PersistApart`):
    /// folded into what this store knows at once, so its view of the log is
    /// collected, and the stable checkpoints among them returned for a
    /// [`StableWriter`] to write when it can.
    pub fn note_apart(&mut self, records: Vec<PersistRecord>) -> Vec<StableCheckpoint> {
        let mut stable = Vec::new();
        for r in records {
            self.durable.apply(&r);
            match r {
                PersistRecord::Stable(cp) => stable.push(cp),
                other => unreachable!("only stable checkpoints are written apart, not {other:?}"),
            }
        }
        stable
    }
}

/// Writes stable checkpoints apart from the turns' records (see the module doc).
/// It may run on its own thread, beside the writer of the records.
#[derive(Clone)]
pub struct StableWriter {
    db: Arc<DB>,
    snapshots: PathBuf,
    /// The seq of the stable checkpoint on disk; held while writing one.
    stored: Arc<Mutex<Seq>>,
}

impl StableWriter {
    /// Make `cp` the stored stable checkpoint: its snapshot file first (synced and
    /// renamed into place), then the `stable` record and the log garbage collection
    /// in one synced write, then older snapshot files go. Nothing happens if the
    /// stored one is already as new (a checkpoint written apart that lands after a
    /// newer one written in a turn).
    ///
    /// # Errors
    /// If a write fails (the node must stop: it cannot promise durability).
    pub fn write(&self, cp: &StableCheckpoint) -> Result<(), StorageError> {
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        if cp.seq <= *stored {
            return Ok(());
        }
        let name = cp.seq.to_string();
        let path = self.snapshots.join(&name);
        let tmp = self.snapshots.join(format!("{}.tmp", cp.seq));
        write_synced(&tmp, &cp.snapshot).map_err(|e| snapshot_error(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| snapshot_error(&path, &e))?;
        std::fs::File::open(&self.snapshots)
            .and_then(|d| d.sync_all())
            .map_err(|e| snapshot_error(&self.snapshots, &e))?;

        let record = StableCheckpoint {
            snapshot: std::sync::Arc::default(),
            ..cp.clone()
        };
        let mut batch = WriteBatch::default();
        batch.put(STABLE, enc(&record));
        for prefix in [ACCEPTED, PREPARED, COMMITTED] {
            batch.delete_range(seq_key(prefix, 0), seq_key(prefix, cp.seq + 1));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| StorageError::Write(e.to_string()))?;

        *stored = cp.seq;
        // Older snapshots (and any partial one a crash left) are no longer needed.
        let entries =
            std::fs::read_dir(&self.snapshots).map_err(|e| snapshot_error(&self.snapshots, &e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_str() != Some(name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// The directory of snapshot files, inside the store's own.
const SNAPSHOTS: &str = "snapshots";

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn snapshot_error(path: &Path, e: &std::io::Error) -> StorageError {
    StorageError::Snapshot {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn get<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match db.get(key).map_err(|e| corrupt(e.to_string()))? {
        None => Ok(None),
        Some(bytes) => bft_crypto::decode(&bytes, usize::MAX)
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
    }
}

fn scan<T: serde::de::DeserializeOwned>(
    db: &DB,
    prefix: &[u8],
) -> Result<Vec<(Seq, T)>, StorageError> {
    let mut out = Vec::new();
    for item in db.prefix_iterator(prefix) {
        let (k, v) = item.map_err(|e| StorageError::Corrupt {
            key: "scan".into(),
            reason: e.to_string(),
        })?;
        if !k.starts_with(prefix) {
            break;
        }
        let corrupt = |reason: String| StorageError::Corrupt {
            key: format!("{:?}", &k[..]),
            reason,
        };
        let seq_bytes: [u8; 8] = k[prefix.len()..]
            .try_into()
            .map_err(|_| corrupt("bad key length".into()))?;
        let value = bft_crypto::decode(&v, usize::MAX).map_err(|e| corrupt(e.to_string()))?;
        out.push((Seq::from_be_bytes(seq_bytes), value));
    }
    Ok(out)
}

/// A prepared certificate as stored: its batch only when the accepted entry of its
/// seq does not hold the same one (see the module doc).
#[derive(Serialize)]
struct StoredPreparedRef<'a> {
    pre_prepare: &'a Signed<PrePrepare>,
    batch: Option<&'a Batch>,
    prepares: &'a [Signed<Prepare>],
}

#[derive(Deserialize)]
struct StoredPrepared {
    pre_prepare: Signed<PrePrepare>,
    batch: Option<Batch>,
    prepares: Vec<Signed<Prepare>>,
}

fn enc_prepared(d: &DurableState, cert: &PreparedCert) -> Vec<u8> {
    let shared = d
        .accepted
        .get(&cert.seq())
        .is_some_and(|(pp, _)| pp.payload.digest == cert.pre_prepare.payload.digest);
    enc(&StoredPreparedRef {
        pre_prepare: &cert.pre_prepare,
        batch: (!shared).then_some(&cert.batch),
        prepares: &cert.prepares,
    })
}

/// Refuse a store of another layout; mark a new, empty one with this build's.
fn check_format(db: &DB, path: &Path) -> Result<(), StorageError> {
    let refuse = |found: String| StorageError::Format {
        path: path.display().to_string(),
        found,
    };
    match db.get(FORMAT).map_err(|e| StorageError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    })? {
        Some(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_be_bytes) {
            Ok(FORMAT_VERSION) => Ok(()),
            Ok(other) => Err(refuse(other.to_string())),
            Err(_) => Err(refuse(format!("{bytes:?} (unreadable)"))),
        },
        None if db.iterator(rocksdb::IteratorMode::Start).next().is_none() => {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_opt(FORMAT, FORMAT_VERSION.to_be_bytes(), &opts)
                .map_err(|e| StorageError::Write(e.to_string()))
        }
        None => Err(refuse(
            "1 (no format record: written before layouts were versioned)".into(),
        )),
    }
}

fn load(db: &DB, snapshots: &Path) -> Result<DurableState, StorageError> {
    let mut d = DurableState::default();
    if let Some((view, changing)) = get(db, VIEW)? {
        d.view = view;
        d.changing = changing;
    }
    d.view_change = get(db, VIEW_CHANGE)?;
    d.new_view = get(db, NEW_VIEW)?;
    d.stable = get(db, STABLE)?;
    if let Some(stable) = d.stable.as_mut() {
        // Stores written before snapshots had files of their own carry it inline.
        if stable.snapshot.is_empty() {
            let path = snapshots.join(stable.seq.to_string());
            stable.snapshot = std::fs::read(&path)
                .map_err(|e| snapshot_error(&path, &e))?
                .into();
        }
    }
    d.accepted = scan(db, ACCEPTED)?.into_iter().collect();
    for (seq, stored) in scan::<StoredPrepared>(db, PREPARED)? {
        let batch = match stored.batch {
            Some(batch) => batch,
            None => match d.accepted.get(&seq) {
                Some((pp, batch)) if pp.payload.digest == stored.pre_prepare.payload.digest => {
                    batch.clone()
                }
                _ => {
                    return Err(StorageError::Corrupt {
                        key: format!("prepared {seq}"),
                        reason: "stored without its batch, and no accepted entry holds it".into(),
                    })
                }
            },
        };
        d.prepared.insert(
            seq,
            PreparedCert {
                pre_prepare: stored.pre_prepare,
                batch,
                prepares: stored.prepares,
            },
        );
    }
    d.committed = scan(db, COMMITTED)?.into_iter().collect();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_consensus::messages::Request;
    use bft_crypto::{Digest, KeyPair};

    /// A batch of one request whose operation is `tag`: batches of other tags differ.
    fn batch_of(tag: u8) -> Batch {
        let client = KeyPair::from_seed([9; 32]);
        Batch::new(vec![Signed::sign(
            Request {
                timestamp: 1,
                operation: vec![tag],
                horizon: 0,
                replier: None,
            },
            &client,
        )])
    }

    fn pre_prepare(seq: Seq, view: u64, batch: &Batch) -> Signed<PrePrepare> {
        Signed::sign(
            PrePrepare {
                view,
                seq,
                digest: batch.digest(),
                replica: 0,
            },
            &KeyPair::from_seed([1; 32]),
        )
    }

    fn prepared(seq: Seq, view: u64, batch: &Batch) -> PersistRecord {
        let pp = pre_prepare(seq, view, batch);
        let prepares = (1..3)
            .map(|i| {
                Signed::sign(
                    Prepare {
                        view,
                        seq,
                        digest: batch.digest(),
                        replica: i,
                    },
                    &KeyPair::from_seed([i as u8 + 1; 32]),
                )
            })
            .collect();
        PersistRecord::Prepared(PreparedCert {
            pre_prepare: pp,
            batch: batch.clone(),
            prepares,
        })
    }

    /// The memtable size RocksDB runs with, as its options file records it.
    fn memtable_size_in_use(db_dir: &Path) -> usize {
        let options = std::fs::read_dir(db_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .max()
            .expect("RocksDB writes an options file at open");
        let text = std::fs::read_to_string(options).unwrap();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("write_buffer_size="))
            .expect("the options file names the memtable size")
            .parse()
            .unwrap()
    }

    /// Stores opened one after another run with memtable sizes drawn from
    /// `MEMTABLE_BYTES`, not one size: a group whose replicas all flushed at the
    /// same moment stalled together (see `MEMTABLE_BYTES`).
    #[test]
    fn each_store_runs_with_its_own_drawn_memtable_size() {
        let dir = tempfile::tempdir().unwrap();
        let sizes: std::collections::BTreeSet<usize> = (0..8)
            .map(|i| {
                let path = dir.path().join(format!("db{i}"));
                drop(Storage::open(&path).unwrap());
                memtable_size_in_use(&path)
            })
            .collect();
        assert!(
            sizes.iter().all(|s| MEMTABLE_BYTES.contains(s)),
            "{sizes:?}"
        );
        assert!(sizes.len() > 1, "eight stores, one size: {sizes:?}");
    }

    /// Random turns of accepted, prepared, committed and stable records (views and
    /// batches that change under a seq, as view changes make them): after each turn
    /// the store, reopened, holds exactly what the records fold to.
    #[test]
    fn a_reopened_store_holds_what_its_records_fold_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % below
        };
        let mut expected = DurableState::default();
        let mut stable = 0;
        let (mut shared, mut apart) = (0, 0);
        for _turn in 0..60 {
            let mut records = Vec::new();
            for _ in 0..=next(4) {
                let seq = stable + 1 + next(6);
                let view = next(3);
                let batch = batch_of(next(3) as u8);
                records.push(match next(10) {
                    0..=3 => PersistRecord::Accepted {
                        pre_prepare: pre_prepare(seq, view, &batch),
                        batch,
                    },
                    4..=7 => prepared(seq, view, &batch),
                    8 => PersistRecord::Committed {
                        seq,
                        view,
                        digest: batch.digest(),
                    },
                    _ => {
                        stable = seq;
                        PersistRecord::Stable(StableCheckpoint {
                            seq,
                            digest: Digest([seq as u8; 32]),
                            proof: vec![],
                            snapshot: vec![seq as u8; 8].into(),
                        })
                    }
                });
            }
            let mut s = Storage::open(&path).unwrap();
            s.persist(&records).unwrap();
            drop(s);
            for r in &records {
                expected.apply(r);
            }
            for (seq, cert) in &expected.prepared {
                match expected.accepted.get(seq) {
                    Some((pp, _)) if pp.payload.digest == cert.pre_prepare.payload.digest => {
                        shared += 1;
                    }
                    _ => apart += 1,
                }
            }
            let reopened = Storage::open(&path).unwrap();
            assert_eq!(*reopened.durable(), expected);
        }
        assert!(
            shared > 20 && apart > 20,
            "both kinds of stored certificate were reached ({shared} shared, {apart} apart)"
        );
    }

    #[test]
    fn a_prepared_certificate_is_stored_without_the_batch_its_accepted_entry_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let big = Batch::new(vec![batch_of(1).requests[0].clone(); 100]);
        let stored_len = |s: &Storage| {
            s.writer
                .db
                .get(seq_key(PREPARED, 4))
                .unwrap()
                .unwrap()
                .len()
        };
        let (whole, shared) = {
            let mut s = Storage::open(&path).unwrap();
            s.persist(&[prepared(4, 0, &big)]).unwrap();
            let whole = stored_len(&s);
            s.persist(&[PersistRecord::Accepted {
                pre_prepare: pre_prepare(4, 0, &big),
                batch: big.clone(),
            }])
            .unwrap();
            let shared = stored_len(&s);
            (whole, shared)
        };
        assert_eq!(
            whole - shared,
            enc(&big).len(),
            "the batch left the certificate ({whole} bytes with it, {shared} without)"
        );
        let s = Storage::open(&path).unwrap();
        assert_eq!(s.durable().prepared[&4].batch, big, "joined back at load");
    }

    #[test]
    fn a_store_of_another_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(Storage::open(&path).unwrap());
        {
            let db = DB::open_default(&path).unwrap();
            db.put(FORMAT, 1_u32.to_be_bytes()).unwrap();
        }
        let refused = Storage::open(&path)
            .err()
            .expect("another layout is refused");
        assert!(matches!(&refused, StorageError::Format { found, .. } if found == "1"));
        assert!(refused.to_string().contains("another version of bftnode"));

        let unversioned = dir.path().join("old");
        {
            let db = DB::open_default(&unversioned).unwrap();
            db.put(VIEW, enc(&(3_u64, false))).unwrap();
        }
        assert!(matches!(
            Storage::open(&unversioned),
            Err(StorageError::Format { .. })
        ));
    }

    fn accepted(seq: Seq, view: u64) -> PersistRecord {
        let key = KeyPair::from_seed([1; 32]);
        let batch = Batch::default();
        let pp = Signed::sign(
            PrePrepare {
                view,
                seq,
                digest: batch.digest(),
                replica: 0,
            },
            &key,
        );
        PersistRecord::Accepted {
            pre_prepare: pp,
            batch,
        }
    }

    #[test]
    fn records_survive_reopen_and_stable_checkpoints_collect_garbage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Storage::open(&dir.path().join("db")).unwrap();
            s.persist(&[
                PersistRecord::View {
                    view: 3,
                    changing: true,
                },
                accepted(5, 3),
                accepted(9, 3),
            ])
            .unwrap();
            s.persist(&[PersistRecord::Committed {
                seq: 5,
                view: 3,
                digest: Digest([2; 32]),
            }])
            .unwrap();
        }
        let mut s = Storage::open(&dir.path().join("db")).unwrap();
        let d = s.durable().clone();
        assert_eq!((d.view, d.changing), (3, true));
        assert_eq!(d.accepted.keys().copied().collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(d.committed.get(&5), Some(&(3, Digest([2; 32]))));
        let cp = StableCheckpoint {
            seq: 8,
            digest: Digest([3; 32]),
            proof: vec![],
            snapshot: vec![1, 2, 3].into(),
        };
        s.persist(&[PersistRecord::Stable(cp.clone())]).unwrap();
        drop(s);
        let s = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.durable().stable, Some(cp));
        assert_eq!(
            s.durable().accepted.keys().copied().collect::<Vec<_>>(),
            vec![9]
        );
        assert!(s.durable().committed.is_empty());
    }

    #[test]
    fn a_checkpoint_not_yet_written_leaves_the_old_one_and_the_log_whole() {
        let cp = |seq: Seq, byte: u8| StableCheckpoint {
            seq,
            digest: Digest([byte; 32]),
            proof: vec![],
            snapshot: vec![byte; 1000].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Storage::open(&dir.path().join("db")).unwrap();
            s.persist(&[
                accepted(3, 0),
                PersistRecord::Stable(cp(4, 4)),
                accepted(5, 0),
            ])
            .unwrap();
            // Checkpoint 8 is stable in memory, but its writer has not run (a crash
            // now): the records of its turn are durable, the checkpoint is not.
            s.persist(&[accepted(9, 0)]).unwrap();
            let deferred = s.note_apart(vec![PersistRecord::Stable(cp(8, 8))]);
            assert_eq!(deferred, vec![cp(8, 8)]);
        }
        {
            let s = Storage::open(&dir.path().join("db")).unwrap();
            let d = s.durable();
            assert_eq!(
                d.stable,
                Some(cp(4, 4)),
                "the old checkpoint, snapshot and all"
            );
            assert_eq!(d.accepted.keys().copied().collect::<Vec<_>>(), vec![5, 9]);
            s.stable_writer().write(&cp(8, 8)).unwrap();
        }
        let s = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.durable().stable, Some(cp(8, 8)));
        assert_eq!(
            s.durable().accepted.keys().copied().collect::<Vec<_>>(),
            vec![9]
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("db").join(SNAPSHOTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec!["8".to_string()], "older snapshots are removed");
    }

    /// A checkpoint written apart can land after a newer one came by state transfer
    /// and was written in its turn: the newer one stays.
    #[test]
    fn an_older_checkpoint_never_overwrites_a_newer_one() {
        let cp = |seq: Seq| StableCheckpoint {
            seq,
            digest: Digest([seq as u8; 32]),
            proof: vec![],
            snapshot: vec![seq as u8; 10].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Storage::open(&dir.path().join("db")).unwrap();
            let apart = s.note_apart(vec![PersistRecord::Stable(cp(8))]);
            s.persist(&[accepted(20, 1), PersistRecord::Stable(cp(16))])
                .unwrap();
            for late in apart {
                s.stable_writer().write(&late).unwrap();
            }
        }
        let s = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.durable().stable, Some(cp(16)));
        assert_eq!(
            s.durable().accepted.keys().copied().collect::<Vec<_>>(),
            vec![20]
        );
    }

    #[test]
    fn the_latest_new_view_survives_reopen() {
        use bft_consensus::messages::NewView;
        let key = KeyPair::from_seed([1; 32]);
        let nv = |view| {
            Signed::sign(
                NewView {
                    view,
                    view_changes: vec![],
                    pre_prepares: vec![],
                    replica: 1,
                },
                &key,
            )
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Storage::open(&dir.path().join("db")).unwrap();
            s.persist(&[PersistRecord::NewViewEntered(nv(5), vec![])])
                .unwrap();
            s.persist(&[PersistRecord::NewViewEntered(nv(2), vec![])])
                .unwrap();
        }
        let s = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(
            s.durable().new_view,
            Some((nv(5), vec![])),
            "an older view never wins"
        );
    }

    /// A store found empty while its marker says it was written to was lost: the
    /// replica must not start afresh (issue 12: a wiped data directory).
    #[test]
    fn a_wiped_store_is_told_apart_from_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data").join("db");
        let marker = dir.path().join("data.persisted");
        {
            let s = Storage::open_with_marker(&db, &marker).unwrap();
            assert!(!s.persisted_before(), "a new store");
        }
        {
            let mut s = Storage::open_with_marker(&db, &marker).unwrap();
            assert!(!s.persisted_before(), "opened, but nothing written yet");
            s.persist(&[accepted(1, 0)]).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        let s = Storage::open_with_marker(&db, &marker).unwrap();
        assert!(s.persisted_before());
        assert_eq!(*s.durable(), DurableState::default());
        let refused = bft_consensus::Replica::<bft_consensus::KvStore>::check_not_wiped(
            s.durable(),
            s.persisted_before(),
        );
        assert!(matches!(
            refused,
            Err(bft_consensus::RecoveryError::DataLost)
        ));
    }

    /// An unsynced write is a write like any other once the store reopens (a
    /// process that stops keeps what the kernel holds), but it does not count as
    /// the store having been written to until a sync made it durable: the marker
    /// would otherwise refuse the restart of a machine that lost it.
    #[test]
    fn unsynced_records_leave_no_marker_until_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let marker = dir.path().join("db.persisted");
        {
            let mut s = Storage::open_with_marker(&db, &marker).unwrap();
            s.write_unsynced(&[accepted(1, 0)]).unwrap();
            assert!(!marker.exists(), "no sync yet, no marker");
            s.write_unsynced(&[accepted(2, 0)]).unwrap();
            s.sync().unwrap();
            assert!(marker.exists(), "synced: the store was written to");
        }
        let s = Storage::open_with_marker(&db, &marker).unwrap();
        assert_eq!(
            s.durable().accepted.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );

        // A process killed before any sync: the kernel kept its write, and the
        // store found holding it at the next start is synced and marked then.
        let db = dir.path().join("killed");
        let marker = dir.path().join("killed.persisted");
        {
            let mut s = Storage::open_with_marker(&db, &marker).unwrap();
            s.write_unsynced(&[accepted(3, 0)]).unwrap();
        }
        assert!(!marker.exists());
        let s = Storage::open_with_marker(&db, &marker).unwrap();
        assert_eq!(
            s.durable().accepted.keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert!(
            marker.exists(),
            "records found without the marker are marked at open"
        );
    }

    /// A synced write whose records all fold to nothing (here a commit at seq 0,
    /// at or below the stable checkpoint) still syncs what was written unsynced
    /// before it: the frames of its group are about to leave on that promise.
    #[test]
    fn a_synced_write_of_nothing_new_still_syncs_earlier_unsynced_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let marker = dir.path().join("db.persisted");
        let mut s = Storage::open_with_marker(&db, &marker).unwrap();
        s.write_unsynced(&[accepted(1, 0)]).unwrap();
        assert!(!marker.exists());
        s.persist(&[PersistRecord::Committed {
            seq: 0,
            view: 0,
            digest: Digest([2; 32]),
        }])
        .unwrap();
        assert!(marker.exists(), "the sync asked for happened");
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Storage::open(&dir.path().join("db")).unwrap();
        assert!(matches!(
            Storage::open(&dir.path().join("db")),
            Err(StorageError::Open { .. })
        ));
    }
}
