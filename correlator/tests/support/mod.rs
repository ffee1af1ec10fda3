//! Helpers shared by the correlator's integration tests: the scenario fixtures decoded by the
//! real ingest decoders, and positions to feed them to the engine.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::path::Path;

use tidemark_correlator::engine::Position;
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::{RawPointer, Signal};

/// A time after every scenario, so that nothing is in the future.
pub(crate) const NOW: i64 = 1_893_456_000_000_000_000;

/// Every scenario file in `fixtures/scenarios/`.
pub(crate) const SCENARIOS: [&str; 5] = [
    "public-image.ndjson",
    "exec-into-approved.ndjson",
    "repush-rollout.ndjson",
    "ecs-revision-swap.ndjson",
    "benign.ndjson",
];

/// Decodes a scenario file in file order, as ingest would deliver it, in cluster `prod-eu`.
pub(crate) fn scenario(name: &str) -> Vec<Signal> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/scenarios")
        .join(name);
    let content = std::fs::read(&path).unwrap();
    let mut signals = Vec::new();
    for piece in input::split(&content) {
        let Piece::Record { line, bytes } = piece else {
            panic!("{name}: invalid JSON")
        };
        let pointer = RawPointer {
            topic: name.to_owned(),
            line,
            ..Default::default()
        };
        let mut ctx = RecordContext::new(pointer, NOW);
        ctx.cluster = "prod-eu".to_owned();
        signals.extend(
            decode::decode(bytes, InputFormat::Auto, &ctx)
                .unwrap()
                .signals,
        );
    }
    assert!(!signals.is_empty(), "{name} holds no signal");
    signals
}

/// Pairs signals with consecutive offsets of partition 0 of `topic`.
pub(crate) fn at_offsets(topic: &str, signals: &[Signal]) -> Vec<(Position, Signal)> {
    signals
        .iter()
        .cloned()
        .zip(0..)
        .map(|(signal, offset)| {
            (
                Position {
                    topic: topic.to_owned(),
                    partition: 0,
                    offset,
                },
                signal,
            )
        })
        .collect()
}
