//! `tidemark replay` as a user runs it: telemetry files in, incidents out as NDJSON or a table,
//! the same incidents whatever the order of the records, errors with file and line on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tidemark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env("TIDEMARK_LOG", "warn")
        .output()
        .unwrap()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

fn scenario_files() -> Vec<String> {
    [
        "public-image.ndjson",
        "exec-into-approved.ndjson",
        "repush-rollout.ndjson",
        "ecs-revision-swap.ndjson",
        "benign.ndjson",
    ]
    .iter()
    .map(|name| repo(&format!("fixtures/scenarios/{name}")))
    .collect()
}

fn replay(extra: &[&str], files: &[String]) -> Output {
    let policy = repo("config/policy.example.yaml");
    let mut args = vec!["replay", "--policy", &policy, "--cluster", "prod-eu"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(String::as_str));
    tidemark(&args)
}

fn incidents(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// What an incident says, without the raw pointers (which name the file and line read).
fn essence(incident: &Value) -> Value {
    let mut incident = incident.clone();
    for evidence in incident["evidence"].as_array_mut().unwrap() {
        evidence.as_object_mut().unwrap().remove("raw");
    }
    incident
}

#[test]
fn replaying_the_scenarios_prints_one_incident_per_attacked_workload() {
    let output = replay(&[], &scenario_files());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let incidents = incidents(&output);
    let mut workloads: Vec<&str> = incidents
        .iter()
        .map(|i| i["workload"]["key"].as_str().unwrap())
        .collect();
    workloads.sort_unstable();
    assert_eq!(
        workloads,
        [
            "ecs/111122223333/us-east-1/payments",
            "k8s/prod-eu/shop/api",
            "k8s/prod-eu/shop/miner-web",
            "k8s/prod-eu/shop/web",
        ]
    );
    for incident in &incidents {
        assert!(!incident["summary"].as_str().unwrap().is_empty());
        assert!(incident["version"].as_u64().unwrap() >= 1);
        let evidence = incident["evidence"].as_array().unwrap();
        assert!(
            evidence
                .iter()
                .all(|e| e["raw"]["line"].as_u64().unwrap() >= 1)
        );
    }
}

#[test]
fn shuffled_and_merged_records_give_the_same_incidents() {
    let reference: Vec<Value> = incidents(&replay(&[], &scenario_files()))
        .iter()
        .map(essence)
        .collect();
    // Every record of every scenario in one file, in reverse order, then rotated.
    let mut lines: Vec<String> = scenario_files()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.reverse();
    let dir = tempfile::tempdir().unwrap();
    for rotation in [0, 7, 13] {
        lines.rotate_left(rotation);
        let merged: PathBuf = dir.path().join(format!("merged-{rotation}.ndjson"));
        std::fs::write(&merged, lines.join("\n")).unwrap();
        let output = replay(&[], &[merged.display().to_string()]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let shuffled: Vec<Value> = incidents(&output).iter().map(essence).collect();
        assert_eq!(shuffled, reference, "rotation {rotation}");
    }
}

#[test]
fn undecodable_records_are_reported_with_file_and_line_and_the_rest_still_correlate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.ndjson");
    let mut content =
        std::fs::read_to_string(repo("fixtures/scenarios/public-image.ndjson")).unwrap();
    content.insert_str(0, "{\"not\": \"telemetry\"}\n{truncated\n");
    std::fs::write(&file, content).unwrap();
    let output = replay(&[], &[file.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = file.display().to_string();
    assert!(stderr.contains(&format!("{name}:1:")), "{stderr}");
    assert!(stderr.contains(&format!("{name}:2:")), "{stderr}");
    let incidents = incidents(&output);
    assert_eq!(
        incidents.len(),
        1,
        "the valid records still make their incident"
    );
    assert_eq!(
        incidents[0]["workload"]["key"],
        "k8s/prod-eu/shop/miner-web"
    );
}

#[test]
fn table_format_shows_a_row_and_a_summary_per_incident() {
    let output = replay(&["--format", "table"], &scenario_files());
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("critical"), "{text}");
    assert!(text.contains("k8s/prod-eu/shop/web"), "{text}");
    assert!(
        text.contains("tag 1.4 re-pushed by ci-legacy from 198.51.100.23"),
        "{text}"
    );
}

#[test]
fn replaying_again_into_the_same_state_dir_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let first = replay(&["--state-dir", &state], &scenario_files());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = replay(&["--state-dir", &state], &scenario_files());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        incidents(&second),
        incidents(&first),
        "no duplicate evidence, same versions"
    );
}

#[test]
fn an_invalid_policy_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "approved_registrys: [registry.corp.example]\n").unwrap();
    let output = tidemark(&[
        "replay",
        "--policy",
        &policy.display().to_string(),
        &scenario_files()[0],
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("approved_registrys"), "{stderr}");
}
