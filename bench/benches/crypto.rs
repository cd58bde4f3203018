//! ed25519 sign, verify and batch verify, SHA-256 of a 512-byte request.

use bft_consensus::messages::Request;
use bft_crypto::{sha256, verify_batch, KeyPair, SignatureBatch, Signed};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn request(i: u64) -> Request {
    Request {
        timestamp: i,
        operation: vec![7u8; 512],
        horizon: 0,
        replier: Some(1),
    }
}

fn crypto(c: &mut Criterion) {
    let key = KeyPair::from_seed([9; 32]);
    c.bench_function("ed25519_sign_512B_request", |b| {
        b.iter(|| Signed::sign(request(1), &key))
    });
    let signed = Signed::sign(request(1), &key);
    c.bench_function("ed25519_verify_512B_request", |b| {
        b.iter_batched(
            || signed.clone(),
            |s| s.verify().unwrap(),
            BatchSize::SmallInput,
        );
    });
    // How a replica checks a lone frame (most of them below the peak: a vote):
    // a signature batch holding one signature.
    c.bench_function("ed25519_signature_batch_of_one", |b| {
        b.iter(|| {
            let mut batch = SignatureBatch::new();
            batch.queue(&signed).unwrap();
            batch.verify().unwrap()
        });
    });
    batch_verify_group(c, "ed25519_batch_verify", |_| &key);
    // As a replica sees requests: each from its own client (a key seen before, so
    // decompressed once per process), checked in batches of a pre-prepare's size.
    let clients: Vec<KeyPair> = (0..256u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            KeyPair::from_seed(seed)
        })
        .collect();
    batch_verify_group(c, "ed25519_batch_verify_distinct_keys", |i| &clients[i]);
    let bytes = vec![1u8; 512];
    c.bench_function("sha256_512B", |b| b.iter(|| sha256(&bytes)));
}

/// Batch verification of 16, 64 and 256 signed requests, request `i` signed by
/// `signer(i)`.
fn batch_verify_group<'k>(c: &mut Criterion, name: &str, signer: impl Fn(usize) -> &'k KeyPair) {
    let mut group = c.benchmark_group(name);
    for n in [16usize, 64, 256] {
        let items: Vec<_> = (0..n)
            .map(|i| Signed::sign(request(i as u64), signer(i)))
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n}"), |b| {
            b.iter_batched(
                || items.clone(),
                |v| assert!(verify_batch(v).iter().all(Result::is_ok)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, crypto);
criterion_main!(benches);
