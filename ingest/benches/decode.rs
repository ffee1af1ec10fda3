#![allow(clippy::print_stderr)]
//! Decode + normalize throughput on a realistic mix of ~1 KB records.
//!
//! The mix (see `support/mix.rs`) follows what a cluster's raw topics carry.
//! Run with `cargo bench -p tidemark-ingest --bench decode`; the figure to read is the
//! `elements/s` of `decode/mix`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_proto::v1::RawPointer;

#[path = "support/mix.rs"]
mod mix;

use mix::{audit_patch, cloudtrail_run_task, falco_miner, mix, tetragon_connect};

/// The allocator the `tidemark` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn decode_benches(c: &mut Criterion) {
    let records = mix(2_000);
    let total_bytes: usize = records.iter().map(Vec::len).sum();
    let ctx = RecordContext::new(
        RawPointer {
            topic: "raw".into(),
            ..Default::default()
        },
        1,
    );
    for record in &records {
        decode::decode(record, InputFormat::Auto, &ctx).expect("bench records decode");
    }
    eprintln!(
        "decode mix: {} records, mean {} bytes",
        records.len(),
        total_bytes / records.len()
    );

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("mix", |b| {
        b.iter(|| {
            for record in &records {
                black_box(decode::decode(black_box(record), InputFormat::Auto, &ctx).ok());
            }
        });
    });
    let singles = [
        ("tetragon_connect", tetragon_connect(1)),
        ("falco_miner", falco_miner(1)),
        ("k8s_audit_patch", audit_patch(1)),
        ("cloudtrail_run_task", cloudtrail_run_task(1)),
    ];
    group.throughput(Throughput::Elements(1));
    for (name, record) in singles {
        let bytes = record.into_bytes();
        group.bench_function(name, |b| {
            b.iter(|| black_box(decode::decode(black_box(&bytes), InputFormat::Auto, &ctx).ok()));
        });
    }
    group.finish();
}

criterion_group!(benches, decode_benches);
criterion_main!(benches);
