//! `tidemark normalize` as a user runs it: files and stdin in, NDJSON out, errors with file and
//! line on stderr, a non-zero status when any record failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tidemark(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env("TIDEMARK_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn sample(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/samples")
        .join(path)
        .display()
        .to_string()
}

fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn samples_print_one_json_signal_per_line_and_succeed() {
    let files = [
        sample("falco/single_rule_with_cat_write.json"),
        sample("tetragon/nc_process_exec.json"),
        sample("k8s-audit/create_deployment.json"),
    ];
    let args: Vec<&str> = std::iter::once("normalize")
        .chain(files.iter().map(String::as_str))
        .collect();
    let output = tidemark(&args, None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signals = lines(&output.stdout);
    assert_eq!(signals.len(), 10);
    assert_eq!(signals[0]["format"], "FORMAT_FALCO");
    assert_eq!(signals[8]["processExecuted"]["binary"], "/usr/bin/nc");
    assert_eq!(signals[9]["workloadChanged"]["verb"], "create");
    assert_eq!(signals[9]["raw"]["topic"], files[2]);
}

#[test]
fn bad_records_are_reported_with_file_and_line_and_the_rest_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.ndjson");
    let good = std::fs::read_to_string(sample("falco/channels.md.line170.json")).unwrap();
    let content = format!(
        "{}\n{{\"rule\":\n42\n\n{}\n{{\"hello\":1}}\n",
        good.trim(),
        good.trim()
    );
    std::fs::write(&path, content).unwrap();
    let path = path.display().to_string();
    let output = tidemark(&["normalize", &path], None);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        lines(&output.stdout).len(),
        2,
        "both valid alerts are printed"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{path}:2: invalid JSON")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:3: record is not a JSON object")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:6: unrecognized record")),
        "{stderr}"
    );
}

#[test]
fn stdin_is_read_with_a_dash() {
    let good = std::fs::read(sample("dockerhub/webhooks.md.example-payload.json")).unwrap();
    let output = tidemark(&["normalize", "-"], Some(&good));
    assert!(output.status.success());
    let signals = lines(&output.stdout);
    assert_eq!(
        signals[0]["image"]["reference"],
        "docker.io/svendowideit/testhook:latest"
    );
    assert_eq!(signals[0]["raw"]["topic"], "-");
}

#[test]
fn unknown_format_and_missing_file_fail_clearly() {
    let output = tidemark(&["normalize", "--format", "syslog", "-"], Some(b""));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown format `syslog`"));
    let output = tidemark(&["normalize", "/nonexistent/feed.json"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/feed.json"));
}

#[test]
fn ingest_refuses_an_invalid_configuration_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.yaml");
    std::fs::write(&path, "kafka:\n  brokers: \"\"\n").unwrap();
    let output = tidemark(&["ingest", "--config", &path.display().to_string()], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`kafka.brokers` must not be empty"),
        "{stderr}"
    );
}
