//! Every real sample in `fixtures/samples` decodes to the signals an analyst would expect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tidemark_ingest::decode::{self, Decoded, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::signal::Fact;
use tidemark_proto::v1::{Format, RawPointer, Signal, SourceKind, WorkloadResolution};

fn decode_sample(path: &str) -> (Vec<Signal>, Vec<Decoded>) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/samples")
        .join(path);
    let content = std::fs::read(&full).unwrap();
    let mut signals = Vec::new();
    let mut all = Vec::new();
    for piece in input::split(&content) {
        let Piece::Record { line, bytes } = piece else {
            panic!("{path}: invalid JSON piece {piece:?}");
        };
        let pointer = RawPointer {
            topic: path.to_owned(),
            line,
            ..Default::default()
        };
        let mut ctx = RecordContext::new(pointer, 1);
        ctx.cluster = "lab".to_owned();
        let decoded = decode::decode(bytes, InputFormat::Auto, &ctx)
            .unwrap_or_else(|e| panic!("{path}:{line}: {e}"));
        signals.extend(decoded.signals.iter().cloned());
        all.push(decoded);
    }
    (signals, all)
}

fn only(path: &str) -> Signal {
    let (mut signals, _) = decode_sample(path);
    assert_eq!(signals.len(), 1, "{path} gives one signal");
    signals.remove(0)
}

const NGINX_POD_DIGEST: &str =
    "sha256:8e86f744bfea165fd4ce68caa05abc96500f40130b857773186401926af7e9e6";

#[test]
fn falco_terminal_shell_alert_names_pod_image_and_process() {
    let signal = only("falco/channels.md.line170.json");
    assert_eq!(signal.format, Format::Falco as i32);
    assert_eq!(signal.source, SourceKind::Node as i32);
    assert_eq!(signal.event_time_unix_nano, 1_685_022_245_478_445_995);
    let workload = signal.workload.as_ref().unwrap();
    assert_eq!(
        (workload.namespace.as_str(), workload.name.as_str()),
        ("default", "kubecon")
    );
    assert_eq!(workload.cluster, "lab");
    assert_eq!(workload.resolution, WorkloadResolution::Instance as i32);
    assert_eq!(
        signal.image.as_ref().unwrap().reference,
        "docker.io/library/alpine:latest"
    );
    let container = signal.container.as_ref().unwrap();
    assert_eq!(
        (container.id.as_str(), container.node.as_str()),
        ("ee97d9c4186f", "falco-xczjd")
    );
    assert_eq!(signal.actor.as_ref().unwrap().name, "root");
    let Some(Fact::RuntimeAlert(alert)) = &signal.fact else {
        panic!("not an alert")
    };
    assert_eq!(alert.rule, "Terminal shell in container");
    assert_eq!(alert.priority, "Critical");
    assert_eq!(alert.tags, ["container", "mitre_execution", "shell"]);
    let process = alert.process.as_ref().unwrap();
    assert_eq!(process.name, "sh");
    assert_eq!(process.command_line, "sh -c clear; (bash || ash || sh)");
    assert_eq!(process.arguments, "-c clear; (bash || ash || sh)");
    assert_eq!(process.parent_binary, "runc");
    assert!(!process.drift);
}

#[test]
fn falco_old_format_alerts_decode_one_per_line() {
    let (signals, _) = decode_sample("falco/single_rule_with_cat_write.json");
    assert_eq!(signals.len(), 8);
    for (i, signal) in signals.iter().enumerate() {
        assert_eq!(signal.raw.as_ref().unwrap().line, i as u64 + 1);
        let Some(Fact::RuntimeAlert(alert)) = &signal.fact else {
            panic!("not an alert")
        };
        assert_eq!(alert.rule, "open_from_cat");
        assert_eq!(
            alert.process.as_ref().unwrap().command_line,
            "cat /dev/null"
        );
        // Host events name no container and so no workload.
        assert!(signal.workload.is_none());
        assert_eq!(signal.partition_key(), "_");
    }
}

#[test]
fn tetragon_exec_names_pod_container_image_and_digest() {
    let (signals, _) = decode_sample("tetragon/events.json");
    assert_eq!(signals.len(), 3);
    let first = &signals[0];
    assert_eq!(first.event_time_unix_nano, 1_666_062_978_273_546_829);
    let workload = first.workload.as_ref().unwrap();
    assert_eq!(
        (workload.namespace.as_str(), workload.name.as_str()),
        ("default", "tiefighter")
    );
    let image = first.image.as_ref().unwrap();
    assert_eq!(image.registry, "docker.io");
    assert_eq!(image.repository, "tgraf/netperf");
    assert_eq!(image.tag, "latest");
    assert_eq!(image.digest, NGINX_POD_DIGEST);
    let container = first.container.as_ref().unwrap();
    assert_eq!(
        container.id,
        "19a02291e106ce6227b684197be232ea57c4e1a5ab2604a12608c325d701c7f4"
    );
    assert_eq!(container.node, "my-node");
    let Some(Fact::ProcessExecuted(process)) = &first.fact else {
        panic!("not an exec")
    };
    assert_eq!(process.binary, "/usr/bin/netserver");
    assert_eq!(process.arguments, "-D");
    assert_eq!(process.command_line, "/usr/bin/netserver -D");
    assert_eq!(process.parent_binary, "/usr/bin/containerd-shim-runc-v2");
    assert!(!process.exec_id.is_empty());
}

#[test]
fn tetragon_pretty_printed_exec_and_connect_share_the_exec_id() {
    let exec = only("tetragon/nc_process_exec.json");
    let connect = only("tetragon/nc_process_connect.json");
    for signal in [&exec, &connect] {
        let workload = signal.workload.as_ref().unwrap();
        assert_eq!(workload.namespace, "tenant-jobs");
        assert_eq!(workload.name, "elasticsearch");
        assert_eq!(workload.kind, "Deployment");
        assert_eq!(workload.instance, "elasticsearch-56f8fc6988-65smb");
        let image = signal.image.as_ref().unwrap();
        assert_eq!(image.registry, "quay.io");
        assert_eq!(image.repository, "isovalent/jobs-app-elasticsearch");
        assert!(image.digest.starts_with("sha256:ff3aa5862fd1"));
        assert!(
            signal
                .container
                .as_ref()
                .unwrap()
                .id
                .starts_with("e6af4dff4ea3")
        );
    }
    let Some(Fact::ProcessExecuted(process)) = &exec.fact else {
        panic!("not an exec")
    };
    assert_eq!(process.binary, "/usr/bin/nc");
    let Some(Fact::NetworkConnection(connection)) = &connect.fact else {
        panic!("not a connect")
    };
    assert_eq!(connection.destination_address, "64.225.45.153");
    assert_eq!(connection.destination_port, 443);
    assert_eq!(connection.protocol, "TCP");
    assert_eq!(
        connection.process.as_ref().unwrap().exec_id,
        process.exec_id
    );
    assert_eq!(exec.partition_key(), connect.partition_key());
}

#[test]
fn audit_deployment_create_names_actor_and_image() {
    let signal = only("k8s-audit/create_deployment.json");
    assert_eq!(signal.format, Format::K8sAudit as i32);
    let workload = signal.workload.as_ref().unwrap();
    assert_eq!(workload.kind, "Deployment");
    assert_eq!(workload.name, "nginx-deployment");
    assert_eq!(workload.resolution, WorkloadResolution::Explicit as i32);
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(actor.name, "minikube-user");
    assert_eq!(actor.source_address, "192.168.99.1");
    assert!(actor.groups.contains(&"system:masters".to_owned()));
    assert_eq!(
        signal.dedup_key,
        "k8s-audit/c5be68f4-80b8-4159-adc4-76ddb195334e"
    );
    let Some(Fact::WorkloadChanged(change)) = &signal.fact else {
        panic!("not a change")
    };
    assert_eq!(
        (change.verb.as_str(), change.resource.as_str()),
        ("create", "deployments")
    );
    assert!(!change.partial);
    assert_eq!(change.containers.len(), 1);
    let container = &change.containers[0];
    assert_eq!(
        container.image.as_ref().unwrap().reference,
        "docker.io/library/nginx:latest"
    );
}

#[test]
fn audit_pod_create_by_controller_belongs_to_the_deployment() {
    for (path, privileged) in [
        ("k8s-audit/create_nginx_pod_unprivileged.json", false),
        ("k8s-audit/create_nginx_pod_privileged.json", true),
    ] {
        let signal = only(path);
        let workload = signal.workload.as_ref().unwrap();
        assert_eq!(workload.kind, "Deployment", "{path}");
        assert_eq!(workload.name, "nginx-deployment", "{path}");
        assert_eq!(
            workload.resolution,
            WorkloadResolution::Explicit as i32,
            "{path}"
        );
        assert!(workload.instance.starts_with("nginx-deployment-"), "{path}");
        let actor = signal.actor.as_ref().unwrap();
        assert_eq!(
            actor.name,
            "system:serviceaccount:kube-system:replicaset-controller"
        );
        assert_eq!(actor.kind, "service-account");
        let Some(Fact::WorkloadChanged(change)) = &signal.fact else {
            panic!("not a change")
        };
        assert_eq!(change.privileged, privileged, "{path}");
        assert_eq!(signal.partition_key(), "k8s/lab/default/nginx-deployment");
    }
}

#[test]
fn audit_exec_and_attach_are_container_access() {
    let exec = only("k8s-audit/exec_pod.json");
    let Some(Fact::ContainerAccess(access)) = &exec.fact else {
        panic!("not an access")
    };
    assert_eq!(access.kind, "exec");
    assert_eq!(access.command, "bash");
    assert_eq!(access.container, "nginx1");
    assert!(access.interactive);
    let workload = exec.workload.as_ref().unwrap();
    assert_eq!(workload.name, "nginx-deployment");
    assert_eq!(workload.instance, "nginx-deployment-7998647bdf-phvq7");
    assert_eq!(workload.resolution, WorkloadResolution::PodName as i32);

    let attach = only("k8s-audit/attach_pod.json");
    let Some(Fact::ContainerAccess(access)) = &attach.fact else {
        panic!("not an access")
    };
    assert_eq!(access.kind, "attach");
    assert_eq!(attach.partition_key(), exec.partition_key());
}

#[test]
fn audit_delete_is_a_workload_change_without_images() {
    let signal = only("k8s-audit/delete_deployment.json");
    let Some(Fact::WorkloadChanged(change)) = &signal.fact else {
        panic!("not a change")
    };
    assert_eq!(change.verb, "delete");
    assert!(change.containers.is_empty());
}

#[test]
fn distribution_envelope_gives_the_manifest_push_only() {
    let (signals, decoded) = decode_sample("distribution/notifications.md.push-envelope.json");
    assert_eq!(signals.len(), 1, "one manifest, two layers");
    assert_eq!(decoded[0].skipped.len(), 2);
    let signal = &signals[0];
    assert_eq!(signal.source, SourceKind::Registry as i32);
    let image = signal.image.as_ref().unwrap();
    assert_eq!(image.registry, "registrycluster.local");
    assert_eq!(image.repository, "library/test");
    assert_eq!(
        image.digest,
        "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf"
    );
    let actor = signal.actor.as_ref().unwrap();
    assert_eq!(
        (actor.name.as_str(), actor.source_address.as_str()),
        ("test-actor", "client.local")
    );
    let Some(Fact::ImagePushed(push)) = &signal.fact else {
        panic!("not a push")
    };
    assert_eq!(
        push.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn distribution_pull_is_skipped_not_lost() {
    let (signals, decoded) = decode_sample("distribution/notifications.md.pull-event.json");
    assert!(signals.is_empty());
    assert_eq!(decoded[0].skipped[0].reason, "registry event is not a push");
}

#[test]
fn harbor_pushes_carry_operator_and_digest() {
    let signal = only("harbor/configure-webhooks.md.push-artifact-default.json");
    let image = signal.image.as_ref().unwrap();
    assert_eq!(image.registry, "localhost");
    assert_eq!(image.repository, "harbor/alpine");
    assert_eq!(image.tag, "", "a digest in `tag` is not a tag");
    assert!(image.digest.starts_with("sha256:954b378c"));
    assert_eq!(signal.actor.as_ref().unwrap().name, "harbor-jobservice");
    assert_eq!(signal.event_time_unix_nano, 1_680_501_893_000_000_000);

    let signal = only("harbor/configure-webhooks.md.push-artifact-v2.0-doc.json");
    let image = signal.image.as_ref().unwrap();
    assert_eq!(
        image.reference.split('@').next(),
        Some("hub.harbor.com/test-webhook/debian:latest")
    );
    assert!(image.digest.starts_with("sha256:8a9e9863"));
    assert_eq!(signal.actor.as_ref().unwrap().name, "admin");
}

#[test]
fn docker_hub_push_has_pusher_but_no_digest() {
    let signal = only("dockerhub/webhooks.md.example-payload.json");
    let image = signal.image.as_ref().unwrap();
    assert_eq!(image.reference, "docker.io/svendowideit/testhook:latest");
    assert!(image.digest.is_empty());
    assert_eq!(signal.actor.as_ref().unwrap().name, "trustedbuilder");
    assert_eq!(signal.event_time_unix_nano, 1_417_566_161_000_000_000);
}

#[test]
fn github_package_events_give_ghcr_pushes() {
    for path in [
        "github-registry-package/package/published.docker.payload.json",
        "github-registry-package/registry_package/published.docker.payload.json",
    ] {
        let signal = only(path);
        assert_eq!(signal.format, Format::GithubPackage as i32);
        let image = signal.image.as_ref().unwrap();
        assert_eq!(image.registry, "ghcr.io", "{path}");
        assert_eq!(image.repository, "codertocat/hello-world", "{path}");
        // The manifest digest in the fixture is 40 hex long and so no valid sha256; the package
        // version is.
        assert!(image.digest.starts_with("sha256:3da1996a"), "{path}");
        assert!(image.tag.is_empty(), "{path}");
        assert!(!signal.actor.as_ref().unwrap().name.is_empty());
        assert!(signal.event_time_unix_nano > 0);
    }
}
