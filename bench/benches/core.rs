//! The PBFT core alone: 4 in-process replicas, signatures on, 512-byte requests.
//! Reports committed requests per second (criterion's "elements").

use bft_bench::{signed_requests, InProcessCluster};
use bft_consensus::{Application, KvOp, KvStore, ProtocolParams};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const REQUESTS: usize = 2_000;

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("pbft_core_4_replicas_512B");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.sample_size(10);
    for batch in [16usize, 64, 256] {
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    (
                        InProcessCluster::new(4, batch),
                        signed_requests(REQUESTS, 500, 512),
                    )
                },
                |(mut cluster, reqs)| {
                    let executed = cluster.order_all(reqs);
                    assert!(executed > 0);
                    cluster
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// One replica's execution of a put: the load generator's workload (512-byte
/// values written round robin over a bounded set of keys, so every put after the
/// first round overwrites, and the state digest takes one entry out and one in).
fn kv_put(c: &mut Criterion) {
    const KEYS: usize = 1_000;
    let mut group = c.benchmark_group("kv_put_overwrite_512B");
    group.throughput(Throughput::Elements(KEYS as u64));
    let ops: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| {
            KvOp::Put {
                key: format!("bench-{i}").into_bytes(),
                value: vec![(i % 251) as u8; 512],
            }
            .encode()
        })
        .collect();
    let mut kv = KvStore::new();
    for op in &ops {
        kv.execute(op);
    }
    group.bench_function("execute", |b| {
        b.iter(|| {
            for op in &ops {
                criterion::black_box(kv.execute(op));
            }
        });
    });
    // As a replica executes a batch: tentatively, each key's old value kept in the
    // undo journal until the batch commits (batches of about 180 puts).
    group.bench_function("execute_tentatively", |b| {
        b.iter(|| {
            for batch in ops.chunks(180) {
                assert!(kv.begin_tentative());
                for op in batch {
                    criterion::black_box(kv.execute(op));
                }
                kv.commit_tentative();
            }
        });
    });
    group.finish();
}

/// What a replica does at every checkpoint (every 128 sequence numbers), with the
/// load generator's state: 10,000 keys of 512 bytes and 1,024 clients' last
/// replies. Every replica takes it at the same sequence number, so what of it runs
/// on the event loop is a stall of the whole group (README, "Performance", issue
/// 13's twenty-first and twenty-fourth rounds). Since the twenty-fifth round the
/// loop only captures the state (`capture_on_loop_cold`); encoding and hashing it
/// (the `encode_*` and `digest` entries) run on the snapshot thread.
fn checkpoint(c: &mut Criterion) {
    use bft_consensus::client_table::{ClientTable, ReplicaSnapshot};
    use bft_consensus::messages::snapshot_digest;
    const KEYS: usize = 10_000;
    const CLIENTS: u64 = 1_024;
    let mut kv = KvStore::new();
    for i in 0..KEYS {
        kv.execute(
            &KvOp::Put {
                key: format!("bench-{i}").into_bytes(),
                value: vec![(i % 251) as u8; 512],
            }
            .encode(),
        );
    }
    let mut clients = ClientTable::new(ProtocolParams::default().request_horizon);
    for (seq, client) in (1..=CLIENTS).map(|s| (s, bft_crypto::KeyPair::generate().public())) {
        clients.record(client, 1, b"written".to_vec(), seq);
    }
    let bytes = bft_consensus::encode_snapshot(&kv, &clients);
    // The replica's encoding is a ReplicaSnapshot's, written without cloning.
    let decoded: ReplicaSnapshot = bft_crypto::decode(&bytes, usize::MAX).unwrap();
    assert_eq!(decoded.app, kv.snapshot());
    let mut group = c.benchmark_group("checkpoint_10k_keys_512B_1024_clients");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("encode_store", |b| b.iter(|| kv.snapshot()));
    group.bench_function("digest", |b| b.iter(|| snapshot_digest(&bytes)));
    // The store's encoding inside the snapshot's, into a fresh buffer, then its
    // digest.
    group.bench_function("encode_snapshot_and_digest", |b| {
        b.iter(|| snapshot_digest(&bft_consensus::encode_snapshot(&kv, &clients)));
    });
    // As `take_checkpoint` does: into the buffer of the checkpoint before last.
    group.bench_function("encode_snapshot_reused_and_digest", |b| {
        let mut spare = Vec::new();
        b.iter(|| {
            let bytes =
                bft_consensus::encode_snapshot_into(&kv, &clients, std::mem::take(&mut spare));
            let digest = snapshot_digest(&bytes);
            spare = bytes;
            digest
        });
    });
    // As in a replica after a while: every key overwritten a few times, in a
    // scattered order, among other allocations (so values lie all over the heap),
    // and the caches holding other data when the checkpoint comes.
    let mut aged = kv.clone();
    let mut other: Vec<Vec<u8>> = Vec::new();
    for round in 0..4usize {
        for j in 0..KEYS {
            let i = (j * 7_919 + round * 13) % KEYS;
            aged.execute(
                &KvOp::Put {
                    key: format!("bench-{i}").into_bytes(),
                    value: vec![(i % 251) as u8; 512],
                }
                .encode(),
            );
            if j % 64 == 0 {
                other.push(vec![1u8; 48 * 1024]);
                if other.len() > 32 {
                    other.remove(j % other.len());
                }
            }
        }
    }
    assert_eq!(
        bft_consensus::encode_snapshot(&aged, &clients),
        bft_consensus::encode_snapshot(&kv, &clients)
    );
    let mut evict = vec![0u8; 64 << 20];
    group.bench_function("encode_snapshot_reused_and_digest_cold", |b| {
        let mut spare = Vec::new();
        b.iter_batched(
            || evict_caches(&mut evict),
            |()| {
                let bytes = bft_consensus::encode_snapshot_into(
                    &aged,
                    &clients,
                    std::mem::take(&mut spare),
                );
                let digest = snapshot_digest(&bytes);
                spare = bytes;
                digest
            },
            BatchSize::PerIteration,
        );
    });
    // What the event loop does at a checkpoint now: capture the store (a reference
    // to each value, in key order) and encode the client table.
    group.bench_function("capture_on_loop_cold", |b| {
        b.iter_batched(
            || evict_caches(&mut evict),
            |()| (aged.capture(), bft_crypto::encode(&clients).unwrap().len()),
            BatchSize::PerIteration,
        );
    });
    // The store's part alone, cold, into a reused buffer.
    group.bench_function("encode_store_reused_cold", |b| {
        let mut out = Vec::new();
        b.iter_batched(
            || evict_caches(&mut evict),
            |()| {
                out.clear();
                aged.snapshot_into(&mut out);
                out.len()
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Touch a buffer larger than the caches, so that what a benchmark reads next comes
/// from memory, as a checkpoint's does in a replica busy with everything else.
fn evict_caches(buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate().step_by(64) {
        *byte = byte.wrapping_add(i as u8);
    }
}

criterion_group!(benches, core, kv_put, checkpoint);
criterion_main!(benches);
