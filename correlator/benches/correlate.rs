#![allow(clippy::print_stderr, clippy::expect_used)]
//! Correlation throughput with RocksDB state, on the same realistic mix of ~1 KB raw records as
//! the decode benchmark (`ingest/benches/support/mix.rs`).
//!
//! - `pipeline/decode`: decode + normalize only, the baseline;
//! - `pipeline/decode_correlate`: decode, then correlate in batches over a fresh RocksDB store,
//!   each batch written atomically with its offsets (fsync'd), as the correlator runs;
//! - `correlate/apply`: correlation of already decoded signals.
//!
//! Run with `cargo bench -p tidemark-correlator --bench correlate`; read `elements/s`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tidemark_correlator::engine::{Engine, Position};
use tidemark_correlator::policy::Policy;
use tidemark_correlator::state::RocksStore;
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_proto::v1::{RawPointer, Signal};

#[allow(dead_code)]
#[path = "../../ingest/benches/support/mix.rs"]
mod mix;

/// The allocator the `tidemark` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: u64 = 20_000;
const BATCH: usize = 4096;
/// After every record's event time, so none is in the future.
const NOW: i64 = 1_893_456_000_000_000_000;

const POLICY: &str = r#"
approved_registries: [registry.corp.example/, 111122223333.dkr.ecr.eu-west-1.amazonaws.com/]
trusted_pushers: [ci-bot]
trusted_deployers: ["arn:aws:iam::111122223333:user/ci-deployer"]
"#;

fn decode_all(records: &[Vec<u8>]) -> Vec<(Position, Signal)> {
    let mut out = Vec::with_capacity(records.len());
    for (offset, record) in (0..).zip(records) {
        let pointer = RawPointer {
            topic: "raw".into(),
            offset,
            ..Default::default()
        };
        let ctx = RecordContext::new(pointer, NOW);
        let decoded =
            decode::decode(record, InputFormat::Auto, &ctx).expect("bench records decode");
        for signal in decoded.signals {
            let position = Position {
                topic: "signals".into(),
                partition: 0,
                offset: out.len() as i64,
            };
            out.push((position, signal));
        }
    }
    out
}

fn fresh_engine() -> (tempfile::TempDir, Engine<RocksStore>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = RocksStore::open(dir.path()).expect("RocksDB opens");
    let policy = Policy::from_yaml(POLICY).expect("bench policy is valid");
    (dir, Engine::new(policy, store))
}

fn correlate(engine: &Engine<RocksStore>, inputs: &[(Position, Signal)]) -> usize {
    let mut incidents = 0;
    for batch in inputs.chunks(BATCH) {
        incidents += engine
            .apply(batch, NOW)
            .expect("correlation succeeds")
            .incidents
            .len();
    }
    incidents
}

fn benches(c: &mut Criterion) {
    let records = mix::mix(RECORDS);
    let inputs = decode_all(&records);
    let (_dir, engine) = fresh_engine();
    let versions = correlate(&engine, &inputs);
    let incidents = engine.incidents().expect("incidents read back");
    eprintln!(
        "correlate mix: {} records, {} signals, {} incidents, {} versions published",
        records.len(),
        inputs.len(),
        incidents.len(),
        versions
    );

    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| black_box(decode_all(black_box(&records))))
    });
    group.bench_function("decode_correlate", |b| {
        b.iter_batched(
            fresh_engine,
            |(_dir, engine)| black_box(correlate(&engine, &decode_all(&records))),
            BatchSize::PerIteration,
        );
    });
    group.finish();

    let mut group = c.benchmark_group("correlate");
    group.sample_size(10);
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("apply", |b| {
        b.iter_batched(
            fresh_engine,
            |(_dir, engine)| black_box(correlate(&engine, &inputs)),
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(correlate_benches, benches);
criterion_main!(correlate_benches);
