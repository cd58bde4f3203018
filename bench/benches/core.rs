//! The PBFT core alone: 4 in-process replicas, signatures on, 512-byte requests.
//! Reports committed requests per second (criterion's "elements").

use bft_bench::{signed_requests, InProcessCluster};
use bft_consensus::{Application, KvOp, KvStore};
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

criterion_group!(benches, core, kv_put);
criterion_main!(benches);
