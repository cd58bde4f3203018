//! The PBFT core alone: 4 in-process replicas, signatures on, 512-byte requests.
//! Reports committed requests per second (criterion's "elements").

use bft_bench::{signed_requests, InProcessCluster};
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

criterion_group!(benches, core);
criterion_main!(benches);
