//! The correlation engine over the scenario fixtures: incidents do not depend on delivery order
//! or batching, RocksDB and in-memory state agree, and a crash at any point between batches
//! resumes to the same incidents and versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{NOW, SCENARIOS, at_offsets, scenario};
use tidemark_correlator::engine::Engine;
use tidemark_correlator::model::Incident;
use tidemark_correlator::policy::Policy;
use tidemark_correlator::replay::replay;
use tidemark_correlator::state::{MemoryStore, RocksStore, StateStore};
use tidemark_proto::v1::Signal;

/// Every delivery order of a scenario is within this lateness, so none is refused as late.
const POLICY: &str = r#"
approved_registries: [registry.corp.example/]
trusted_pushers: [ci-bot]
trusted_deployers:
  - "system:serviceaccount:argocd:argocd-application-controller"
  - "arn:aws:iam::111122223333:role/ci-deployer"
allowed_lateness: 72h
"#;

fn policy() -> Policy {
    Policy::from_yaml(POLICY).unwrap()
}

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
    }
}

/// Streams `signals` in the given order through the engine, `batch` at a time, and returns the
/// final incidents and every version published on the way.
fn stream<S: StateStore>(
    engine: &Engine<S>,
    signals: &[Signal],
    batch: usize,
) -> (Vec<Incident>, Vec<(String, u64)>) {
    let inputs = at_offsets("signals", signals);
    let mut published = Vec::new();
    for chunk in inputs.chunks(batch) {
        let outcome = engine.apply(chunk, NOW).unwrap();
        assert!(
            outcome.late.is_empty() && outcome.future.is_empty(),
            "{outcome:?}"
        );
        published.extend(outcome.incidents.into_iter().map(|i| (i.id, i.version)));
    }
    (engine.incidents().unwrap(), published)
}

#[test]
fn every_attack_scenario_opens_exactly_one_incident_and_benign_opens_none() {
    for name in SCENARIOS {
        let engine = Engine::new(policy(), MemoryStore::new());
        let report = replay(&engine, scenario(name), NOW).unwrap();
        let expected = usize::from(name != "benign.ndjson");
        assert_eq!(
            report.incidents.len(),
            expected,
            "{name}: {:#?}",
            report.incidents
        );
    }
}

#[test]
fn any_delivery_order_gives_the_same_incidents() {
    for name in SCENARIOS {
        let signals = scenario(name);
        let reference = replay(
            &Engine::new(policy(), MemoryStore::new()),
            signals.clone(),
            NOW,
        )
        .unwrap()
        .incidents;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50 {
            let mut shuffled = signals.clone();
            rng.shuffle(&mut shuffled);
            let engine = Engine::new(policy(), MemoryStore::new());
            let incidents = replay(&engine, shuffled, NOW).unwrap().incidents;
            assert_eq!(incidents, reference, "{name}");
        }
    }
}

#[test]
fn streaming_in_any_order_within_lateness_gives_the_replayed_incidents() {
    for name in SCENARIOS {
        let signals = scenario(name);
        let reference = replay(
            &Engine::new(policy(), MemoryStore::new()),
            signals.clone(),
            NOW,
        )
        .unwrap()
        .incidents;
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for round in 0..30 {
            let mut shuffled = signals.clone();
            rng.shuffle(&mut shuffled);
            let batch = 1 + round % 4;
            let (incidents, _) =
                stream(&Engine::new(policy(), MemoryStore::new()), &shuffled, batch);
            assert_eq!(incidents, reference, "{name}, batch size {batch}");
        }
    }
}

#[test]
fn rocksdb_and_memory_state_give_the_same_incidents() {
    for name in SCENARIOS {
        let signals = scenario(name);
        let dir = tempfile::tempdir().unwrap();
        let rocks = Engine::new(policy(), RocksStore::open(dir.path()).unwrap());
        let memory = Engine::new(policy(), MemoryStore::new());
        assert_eq!(
            stream(&rocks, &signals, 3),
            stream(&memory, &signals, 3),
            "{name}"
        );
    }
}

#[test]
fn batching_does_not_change_the_versions_published() {
    let signals: Vec<Signal> = SCENARIOS.iter().flat_map(|name| scenario(name)).collect();
    let one_by_one = stream(&Engine::new(policy(), MemoryStore::new()), &signals, 1);
    for batch in [2, 5, 64] {
        let batched = stream(&Engine::new(policy(), MemoryStore::new()), &signals, batch);
        assert_eq!(batched, one_by_one, "batch size {batch}");
    }
    let versions: Vec<u64> = one_by_one.1.iter().map(|(_, v)| *v).collect();
    assert!(!versions.is_empty());
}

#[test]
fn a_crash_between_any_two_batches_resumes_to_the_same_incidents_and_versions() {
    let signals: Vec<Signal> = SCENARIOS.iter().flat_map(|name| scenario(name)).collect();
    let uninterrupted = stream(&Engine::new(policy(), MemoryStore::new()), &signals, 2);
    let inputs = at_offsets("signals", &signals);
    for crash_after in 0..inputs.len().div_ceil(2) {
        let dir = tempfile::tempdir().unwrap();
        let mut published = Vec::new();
        {
            let engine = Engine::new(policy(), RocksStore::open(dir.path()).unwrap());
            for chunk in inputs.chunks(2).take(crash_after) {
                let outcome = engine.apply(chunk, NOW).unwrap();
                published.extend(outcome.incidents.into_iter().map(|i| (i.id, i.version)));
            }
            // The process dies here: the engine and its database are dropped mid-stream.
        }
        let engine = Engine::new(policy(), RocksStore::open(dir.path()).unwrap());
        let resume = engine.next_offset("signals", 0).unwrap().unwrap_or(0);
        // Kafka redelivers from the last committed offset, which may be older than the state's:
        // start a few records early, as a consumer that had not committed yet would.
        let redelivered = usize::try_from(resume).unwrap().saturating_sub(3);
        for chunk in inputs[redelivered..].chunks(2) {
            let outcome = engine.apply(chunk, NOW).unwrap();
            published.extend(outcome.incidents.into_iter().map(|i| (i.id, i.version)));
        }
        assert_eq!(
            (engine.incidents().unwrap(), published),
            uninterrupted,
            "crash after {crash_after} batches"
        );
    }
}
