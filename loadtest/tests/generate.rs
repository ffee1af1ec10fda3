//! Generated telemetry as the product reads it: every record decodes, and correlating all of it
//! under the example policy finds exactly the attacks of the ground truth, with their stages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use tidemark_correlator::engine::Engine;
use tidemark_correlator::policy::Policy;
use tidemark_correlator::replay::replay;
use tidemark_correlator::state::MemoryStore;
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_loadtest::generate::{GenerateOptions, Source, TRUTH_FILE, Truth, generate};
use tidemark_loadtest::time::parse_rfc3339;
use tidemark_proto::v1::{RawPointer, Signal};

/// After every generated event time, so none is in the future.
const NOW: i64 = 1_893_456_000_000_000_000;

fn options(out: &Path, seed: u64) -> GenerateOptions {
    GenerateOptions {
        seed,
        events: 3_000,
        out: out.to_owned(),
        start_unix_nano: parse_rfc3339("2026-11-20T00:00:00Z").unwrap().unix_nano,
        duration_secs: 4 * 3_600,
        attacks: 8,
        namespaces: 20,
        cluster: "prod-eu".to_owned(),
    }
}

fn read_all(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Decodes every generated file as `tidemark replay --cluster prod-eu` does.
fn decode_dir(dir: &Path, truth: &Truth) -> Vec<Signal> {
    let mut signals = Vec::new();
    for source in truth.sources.values() {
        let content = std::fs::read(dir.join(&source.file)).unwrap();
        for (index, line) in content.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let pointer = RawPointer {
                topic: source.file.clone(),
                line: index as u64 + 1,
                ..Default::default()
            };
            let mut ctx = RecordContext::new(pointer, NOW);
            ctx.cluster.clone_from(&truth.cluster);
            let decoded = decode::decode(line, InputFormat::Auto, &ctx)
                .unwrap_or_else(|error| panic!("{}:{}: {error}", source.file, index + 1));
            signals.extend(decoded.signals);
        }
    }
    signals
}

#[test]
fn correlating_generated_telemetry_finds_every_injected_chain_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let truth = generate(&options(dir.path(), 11)).unwrap();
    assert_eq!(truth.attacks.len(), 8);
    let written: u64 = truth.sources.values().map(|s| s.records).sum();
    assert_eq!(written, 3_000);
    for source in Source::ALL {
        assert!(
            truth.sources[source.name()].records > 0,
            "{} has no record",
            source.name()
        );
    }
    let text = std::fs::read_to_string(dir.path().join(TRUTH_FILE)).unwrap();
    let on_disk: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(on_disk["attacks"].as_array().unwrap().len(), 8);
    assert_eq!(
        on_disk["attacks"][0]["workload"],
        truth.attacks[0].workload.as_str()
    );

    let signals = decode_dir(dir.path(), &truth);
    let policy =
        Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.example.yaml"))
            .unwrap();
    let engine = Engine::new(policy, MemoryStore::new());
    let report = replay(&engine, signals, NOW).unwrap();
    assert!(report.late.is_empty(), "{} late signals", report.late.len());
    assert!(report.future.is_empty());

    let found: BTreeMap<&str, Vec<String>> = report
        .incidents
        .iter()
        .map(|i| (i.workload.key.as_str(), i.stages.clone()))
        .collect();
    assert_eq!(
        found.len(),
        report.incidents.len(),
        "one incident per workload"
    );
    let expected: BTreeMap<&str, Vec<String>> = truth
        .attacks
        .iter()
        .map(|a| {
            (
                a.workload.as_str(),
                a.stages.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn the_same_seed_gives_the_same_files_and_another_seed_other_files() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&options(a.path(), 5)).unwrap();
    generate(&options(b.path(), 5)).unwrap();
    generate(&options(c.path(), 6)).unwrap();
    assert_eq!(read_all(a.path()), read_all(b.path()));
    assert_ne!(read_all(a.path()), read_all(c.path()));
}

#[test]
fn files_are_in_arrival_order_within_the_delivery_delay() {
    let dir = tempfile::tempdir().unwrap();
    let truth = generate(&options(dir.path(), 3)).unwrap();
    let falco = std::fs::read_to_string(dir.path().join("falco.ndjson")).unwrap();
    let times: Vec<i64> = falco
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            parse_rfc3339(record["time"].as_str().unwrap())
                .unwrap()
                .unix_nano
        })
        .collect();
    let (_, max_delay_ms) = truth.sources["falco"].delay_ms;
    let max_delay = i64::try_from(max_delay_ms).unwrap() * 1_000_000;
    let mut latest = times[0];
    for time in times {
        // A record may be older than one before it, but never by more than the delay range.
        assert!(
            time > latest - max_delay,
            "out of order beyond the delivery delay"
        );
        latest = latest.max(time);
    }
}

#[test]
fn too_few_events_for_the_attacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), 1);
    options.events = 10;
    let error = generate(&options).unwrap_err();
    assert!(
        error.to_string().contains("`--events` must be at least"),
        "{error}"
    );
    options.events = 3_000;
    options.duration_secs = 60;
    assert!(generate(&options).is_err());
    options.duration_secs = u64::MAX;
    assert!(generate(&options).is_err());
    options.duration_secs = 4 * 3_600;
    options.start_unix_nano = i64::MAX - 1;
    let error = generate(&options).unwrap_err();
    assert!(error.to_string().contains("`--start`"), "{error}");
}
