//! The load test's run against Kafka, small: generated telemetry through tidemark's roles, each a
//! process of its own on the embedded broker, finds every injected chain with all its stages and
//! raises nothing else, and a benign-only fleet raises no incident. Only detection is asserted;
//! the speed figures are for benchmarks.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_tidemark-loadtest")).with_file_name(name);
    assert!(
        path.exists(),
        "`{}` is missing: build the workspace (`cargo build --workspace`) first",
        path.display()
    );
    path
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn generate_and_run(attacks: u32, port: u16) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let fleet = work.path().join("fleet");
    let loadtest = binary("tidemark-loadtest");
    let generated = Command::new(&loadtest)
        .args([
            "generate",
            "--seed",
            "11",
            "--events",
            "4000",
            "--namespaces",
            "20",
        ])
        .args(["--attacks", &attacks.to_string(), "--out"])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    let report = work.path().join("report.json");
    let run = Command::new(&loadtest)
        .arg("run")
        .arg("--input")
        .arg(&fleet)
        .arg("--tidemark")
        .arg(binary("tidemark"))
        .arg("--policy")
        .arg(repo("config/policy.example.yaml"))
        .args([
            "--timeout",
            "300",
            "--grpc-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_injected_chain_is_found_through_kafka_with_all_its_stages() {
    let report = generate_and_run(8, free_port());
    assert_eq!(report["records"], 4000);
    assert_eq!(report["attacks"], 8);
    assert_eq!(report["detected"], 8, "{report:#}");
    assert_eq!(report["incidents"], 8, "{report:#}");
    assert_eq!(report["incidents_on_attacked_workloads"], 8);
    assert_eq!(report["dead_letters"], 0);
    assert_eq!(report["raw_records_dropped"], 0);
    for attack in report["per_attack"].as_array().unwrap() {
        assert!(attack["latency_secs"].as_f64().is_some(), "{attack:#}");
    }
}

#[test]
fn a_benign_fleet_raises_no_incident_through_kafka() {
    let report = generate_and_run(0, free_port());
    assert_eq!(report["attacks"], 0);
    assert_eq!(report["incidents"], 0, "{report:#}");
    assert_eq!(report["dead_letters"], 0);
}
