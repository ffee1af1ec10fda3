//! The attack patterns and evasions of the design, and benign activity, in real formats
//! (`fixtures/scenarios/`), correlated into incidents under the documented example policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

mod support;

use support::{NOW, scenario};
use tidemark_correlator::engine::{Engine, Position};
use tidemark_correlator::model::{Incident, Severity};
use tidemark_correlator::policy::Policy;
use tidemark_correlator::replay::replay;
use tidemark_correlator::state::MemoryStore;
use tidemark_proto::v1::signal::Fact;

fn example_policy() -> Policy {
    Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.example.yaml"))
        .unwrap()
}

fn only_incident(name: &str) -> Incident {
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let mut incidents = replay(&engine, scenario(name), NOW).unwrap().incidents;
    assert_eq!(incidents.len(), 1, "{name}: {incidents:#?}");
    incidents.remove(0)
}

fn reasons(incident: &Incident, stage: &str) -> Vec<String> {
    incident
        .evidence
        .iter()
        .filter(|e| e.stage == stage)
        .map(|e| e.reason.clone())
        .collect()
}

#[test]
fn never_approved_public_image_running_a_miner_is_a_critical_incident() {
    let incident = only_incident("public-image.ndjson");
    assert_eq!(incident.workload.key, "k8s/prod-eu/shop/miner-web");
    assert_eq!(incident.workload.kind, "Deployment");
    assert_eq!(incident.stages, ["deploy", "execution", "impact"]);
    assert_eq!(incident.severity, Severity::Critical);
    assert!(
        incident.techniques.contains(&"T1610".to_owned()),
        "{:?}",
        incident.techniques
    );
    assert!(
        incident.techniques.contains(&"T1496.001".to_owned()),
        "{:?}",
        incident.techniques
    );
    let deploy = reasons(&incident, "deploy");
    assert!(
        deploy
            .iter()
            .any(|r| r.contains("docker.io/xmrigorg/xmrig:6.21.0") && r.contains("not approved")),
        "{deploy:?}"
    );
    let impact = reasons(&incident, "impact");
    assert!(
        impact.iter().any(|r| r.contains("198.51.100.77:3333")),
        "{impact:?}"
    );
    // Every piece of evidence points back to its line in the scenario file.
    for evidence in &incident.evidence {
        assert_eq!(evidence.raw.topic, "public-image.ndjson");
        assert!(evidence.raw.line >= 1, "{evidence:?}");
    }
}

#[test]
fn renamed_miner_started_through_exec_into_an_approved_pod_is_caught_by_arguments_and_pool_domain()
{
    let incident = only_incident("exec-into-approved.ndjson");
    assert_eq!(incident.workload.key, "k8s/prod-eu/shop/api");
    assert_eq!(incident.stages, ["implant", "execution", "impact"]);
    assert_eq!(incident.severity, Severity::Critical);
    let implant = reasons(&incident, "implant");
    assert!(
        implant
            .iter()
            .any(|r| r.contains("exec by mallory@corp.example")),
        "{implant:?}"
    );
    let execution = reasons(&incident, "execution");
    assert!(
        execution
            .iter()
            .any(|r| r.starts_with("kworkerds started from /tmp with miner arguments")),
        "{execution:?}"
    );
    let impact = reasons(&incident, "impact");
    assert!(
        impact.iter().any(|r| r.contains("pool.minexmr.com:443")),
        "{impact:?}"
    );
    // The approved image deployed by Argo CD is context, not evidence.
    assert!(reasons(&incident, "deploy").is_empty());
    assert!(!incident.summary.contains("argocd"), "{}", incident.summary);
}

#[test]
fn retagged_image_picked_up_by_a_rollout_restart_links_the_push_the_rollout_and_the_miner() {
    let incident = only_incident("repush-rollout.ndjson");
    assert_eq!(incident.workload.key, "k8s/prod-eu/shop/web");
    assert_eq!(incident.stages, ["image", "implant", "execution"]);
    assert_eq!(incident.severity, Severity::Critical);
    assert!(
        incident.techniques.contains(&"T1525".to_owned()),
        "{:?}",
        incident.techniques
    );
    let image = reasons(&incident, "image");
    assert!(
        image
            .iter()
            .any(|r| r.contains("re-pushed by ci-legacy from 198.51.100.23 with a new digest")),
        "{image:?}"
    );
    let implant = reasons(&incident, "implant");
    assert!(
        implant
            .iter()
            .any(|r| r.contains("rollout by ops-oncall@corp.example picked up")),
        "{implant:?}"
    );
    // The summary reads as the chain: push, rollout, miner, with their times.
    let summary = &incident.summary;
    assert!(
        summary
            .starts_with("Deployment shop/web in cluster prod-eu: tag 1.4 re-pushed by ci-legacy"),
        "{summary}"
    );
    let push = summary.find("02:10:12").expect("push time");
    let rollout = summary.find("02:14:02").expect("rollout time");
    let miner = summary.find("kswapd0 started from /tmp").expect("miner");
    assert!(push < rollout && rollout < miner, "{summary}");
    // The trusted push of the day before is history, not evidence.
    assert!(
        incident.evidence.iter().all(|e| e.actor != "ci-bot"),
        "{:#?}",
        incident.evidence
    );
}

#[test]
fn ecs_revision_with_an_unapproved_image_and_miner_command_is_an_incident_on_the_family() {
    let incident = only_incident("ecs-revision-swap.ndjson");
    assert_eq!(incident.workload.key, "ecs/111122223333/us-east-1/payments");
    assert_eq!(incident.workload.platform, "ecs");
    assert_eq!(incident.stages, ["deploy", "execution"]);
    assert_eq!(incident.severity, Severity::High);
    let deploy = reasons(&incident, "deploy");
    assert!(
        deploy
            .iter()
            .any(|r| r.contains("docker.io/kdevtmpfsi/kinsing:latest")),
        "{deploy:?}"
    );
    // Revision 7, registered by the trusted deployer role through an assumed-role session, is
    // not evidence.
    assert!(
        incident
            .evidence
            .iter()
            .all(|e| !e.actor.contains("ci-deployer")),
        "{incident:#?}"
    );
}

#[test]
fn benign_rollouts_pushes_admin_exec_busy_processes_and_https_raise_nothing() {
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let report = replay(&engine, scenario("benign.ndjson"), NOW).unwrap();
    assert!(report.incidents.is_empty(), "{:#?}", report.incidents);
    assert_eq!(report.num_applied, scenario("benign.ndjson").len() as u64);
}

#[test]
fn audit_records_arriving_minutes_after_the_runtime_events_still_join_the_chain() {
    // Streamed in file order, as Kafka would deliver it: the miner alert first, the rollout
    // audit record last. Pushes travel on the image-facts topic, as ingest publishes them.
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let mut published = Vec::new();
    for (offset, signal) in (0..).zip(scenario("repush-rollout.ndjson")) {
        let topic = if matches!(signal.fact, Some(Fact::ImagePushed(_))) {
            "image-facts"
        } else {
            "signals"
        };
        let position = Position {
            topic: topic.to_owned(),
            partition: 0,
            offset,
        };
        let outcome = engine.apply(&[(position, signal)], NOW).unwrap();
        assert!(
            outcome.late.is_empty(),
            "nothing is late within 15 minutes: {outcome:?}"
        );
        published.extend(outcome.incidents);
    }
    let first = published
        .first()
        .expect("the miner alert opens the incident");
    // The alert alone: a miner from /tmp (execution), a binary in a writable directory (implant).
    assert_eq!(first.stages, ["implant", "execution"]);
    let last = published.last().unwrap();
    assert_eq!(last.id, first.id, "amendments keep the incident id");
    assert_eq!(last.stages, ["image", "implant", "execution"]);
    let versions: Vec<u64> = published.iter().map(|i| i.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions increase: {versions:?}"
    );
    assert_eq!(
        engine.incidents().unwrap(),
        vec![only_incident("repush-rollout.ndjson")]
    );
}

#[test]
fn evidence_older_than_the_allowed_lateness_is_returned_as_late_not_dropped() {
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let signals = scenario("public-image.ndjson");
    let position = |offset| Position {
        topic: "signals".to_owned(),
        partition: 0,
        offset,
    };
    let newest = signals
        .iter()
        .map(|s| s.event_time_unix_nano)
        .max()
        .unwrap();
    let mut ahead = signals[0].clone();
    ahead.event_time_unix_nano = newest + 3_600 * 1_000_000_000;
    engine.apply(&[(position(0), ahead)], NOW).unwrap();
    // An hour behind the watermark, over the 15 minutes allowed.
    let outcome = engine
        .apply(&[(position(1), signals[1].clone())], NOW)
        .unwrap();
    assert_eq!(outcome.late.len(), 1);
    assert_eq!(outcome.late[0].reason, "late");
    assert_eq!(outcome.num_applied, 0);
    assert_eq!(
        engine.next_offset("signals", 0).unwrap(),
        Some(2),
        "late records are consumed"
    );
}

#[test]
fn event_time_far_ahead_of_the_ingest_time_is_bad_input() {
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let mut signal = scenario("public-image.ndjson").remove(0);
    // Ingest decoded the record an hour before the time it claims: beyond `max_future_skew`.
    signal.ingest_time_unix_nano = signal.event_time_unix_nano - 3_600 * 1_000_000_000;
    let position = Position {
        topic: "signals".to_owned(),
        partition: 0,
        offset: 0,
    };
    let outcome = engine.apply(&[(position, signal)], NOW).unwrap();
    assert_eq!(outcome.future.len(), 1);
    assert!(outcome.incidents.is_empty());
    assert!(engine.incidents().unwrap().is_empty());
}

#[test]
fn a_signal_without_ingest_time_is_judged_against_the_correlators_clock() {
    let engine = Engine::new(example_policy(), MemoryStore::new());
    let mut signal = scenario("public-image.ndjson").remove(0);
    signal.ingest_time_unix_nano = 0;
    let now = signal.event_time_unix_nano - 3_600 * 1_000_000_000;
    let position = Position {
        topic: "signals".to_owned(),
        partition: 0,
        offset: 0,
    };
    let outcome = engine.apply(&[(position, signal)], now).unwrap();
    assert_eq!(outcome.future.len(), 1);
}
