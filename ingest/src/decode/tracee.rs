//! Aqua Tracee JSON output (`trace.Event`), events and signature findings.
//!
//! `sched_process_exec` becomes a [`ProcessExecuted`]; `net_tcp_connect` and
//! `security_socket_connect` become a [`NetworkConnection`]; a signature finding (an event with
//! `metadata.Properties.signatureName`) becomes a [`RuntimeAlert`]. Other events are skipped.
//! Tracee's `hostName` is the UTS name of the traced process (the pod name inside a pod), not the
//! node, so it is not used as the node. Both the current nested `container`/`kubernetes` objects
//! and the older flat `containerImage`/`containerName`/`podName`/`podNamespace` fields are read.

use serde::Deserialize;
use serde_json::value::RawValue;
use tidemark_proto::v1::{
    Container, Format, NetworkConnection, ProcessExecuted, RuntimeAlert, signal::Fact,
};

use super::json;
use super::normalize::{self, base_name};
use super::{DecodeError, Decoded, InputFormat, RecordContext};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[serde(deserialize_with = "json::integer", default)]
    timestamp: Option<i64>,
    event_name: String,
    #[serde(default, deserialize_with = "json::integer")]
    host_process_id: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    process_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    user_id: Option<String>,
    #[serde(default)]
    executable: Option<Executable>,
    #[serde(default, deserialize_with = "json::text")]
    container_id: Option<String>,
    #[serde(default)]
    container: Option<TraceeContainer>,
    #[serde(default)]
    kubernetes: Option<Kubernetes>,
    #[serde(default, deserialize_with = "json::text")]
    container_image: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    container_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    pod_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    pod_namespace: Option<String>,
    #[serde(default, borrow, deserialize_with = "json::list")]
    args: Vec<Arg<'a>>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Executable {
    #[serde(default, deserialize_with = "json::text")]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceeContainer {
    #[serde(default, deserialize_with = "json::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image_digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kubernetes {
    #[serde(default, deserialize_with = "json::text")]
    pod_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    pod_namespace: Option<String>,
}

#[derive(Deserialize)]
struct Arg<'a> {
    name: String,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    #[serde(default, deserialize_with = "json::text")]
    description: Option<String>,
    #[serde(default)]
    properties: Option<Properties>,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(rename = "signatureName", default, deserialize_with = "json::text")]
    signature_name: Option<String>,
    #[serde(rename = "signatureID", default, deserialize_with = "json::text")]
    signature_id: Option<String>,
    #[serde(rename = "Severity", default, deserialize_with = "json::text")]
    severity: Option<String>,
    #[serde(rename = "Category", default, deserialize_with = "json::text")]
    category: Option<String>,
    #[serde(rename = "external_id", default, deserialize_with = "json::text")]
    external_id: Option<String>,
}

#[derive(Deserialize)]
struct SockAddr {
    #[serde(default, deserialize_with = "json::text")]
    sin_addr: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    sin_port: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    sin6_addr: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    sin6_port: Option<i64>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let event: Event<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(InputFormat::Tracee, &e))?;
    let event_time = event
        .timestamp
        .filter(|t| *t > 0)
        .ok_or_else(|| DecodeError::new(Some(InputFormat::Tracee), "no valid `timestamp`"))?;
    let arg_text = |name: &str| -> Option<String> {
        let raw = event.args.iter().find(|arg| arg.name == name)?.value?;
        match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };

    let signature = event
        .metadata
        .as_ref()
        .and_then(|m| m.properties.as_ref())
        .and_then(|p| p.signature_name.clone().map(|name| (name, p)));
    let binary = arg_text("pathname")
        .or_else(|| event.executable.as_ref().and_then(|e| e.path.clone()))
        .unwrap_or_default();
    let command_line = arg_text("argv").unwrap_or_default();
    let process = ProcessExecuted {
        name: event
            .process_name
            .clone()
            .unwrap_or_else(|| base_name(&binary).to_owned()),
        arguments: command_line
            .split_once(' ')
            .map(|(_, a)| a.to_owned())
            .unwrap_or_default(),
        command_line,
        binary,
        pid: event.host_process_id.unwrap_or_default(),
        user: event.user_id.clone().unwrap_or_default(),
        ..Default::default()
    };

    let fact = if let Some((name, properties)) = signature {
        let mut tags: Vec<String> = [
            &properties.external_id,
            &properties.category,
            &properties.signature_id,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        tags.retain(|t| !t.is_empty());
        Fact::RuntimeAlert(RuntimeAlert {
            rule: name,
            priority: properties.severity.clone().unwrap_or_default(),
            tags,
            output: event
                .metadata
                .as_ref()
                .and_then(|m| m.description.clone())
                .unwrap_or_default(),
            process: Some(process),
            connection: None,
        })
    } else {
        match event.event_name.as_str() {
            "sched_process_exec" => Fact::ProcessExecuted(process),
            "net_tcp_connect" => Fact::NetworkConnection(NetworkConnection {
                destination_address: arg_text("dst")
                    .or_else(|| arg_text("dstIP"))
                    .unwrap_or_default(),
                destination_port: arg_text("dst_port")
                    .or_else(|| arg_text("dstPort"))
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p <= 65_535)
                    .unwrap_or(0),
                domain: arg_text("dst_dns")
                    .or_else(|| arg_text("results"))
                    .unwrap_or_default(),
                protocol: "TCP".to_owned(),
                process: Some(process),
                ..Default::default()
            }),
            "security_socket_connect" => {
                let addr = event
                    .args
                    .iter()
                    .find(|arg| arg.name == "remote_addr")
                    .and_then(|arg| arg.value)
                    .and_then(|raw| serde_json::from_str::<SockAddr>(raw.get()).ok());
                let Some(addr) = addr else {
                    decoded.skip(0, "tracee connect without a remote address");
                    return Ok(());
                };
                Fact::NetworkConnection(NetworkConnection {
                    destination_address: addr.sin_addr.or(addr.sin6_addr).unwrap_or_default(),
                    destination_port: normalize::port(addr.sin_port.or(addr.sin6_port)),
                    process: Some(process),
                    ..Default::default()
                })
            }
            _ => {
                decoded.skip(0, "tracee event type not correlated");
                return Ok(());
            }
        }
    };

    let mut signal = ctx.signal(Format::Tracee, event_time, 0);
    signal.source_event = event.event_name.clone();
    let container = event.container.as_ref();
    let container_id = container
        .and_then(|c| c.id.as_deref())
        .or(event.container_id.as_deref())
        .and_then(normalize::container_id);
    let kubernetes = event.kubernetes.as_ref();
    let namespace = kubernetes
        .and_then(|k| k.pod_namespace.clone())
        .or(event.pod_namespace.clone());
    let pod = kubernetes
        .and_then(|k| k.pod_name.clone())
        .or(event.pod_name.clone());
    signal.workload = match (namespace, pod) {
        (Some(namespace), Some(pod)) if !namespace.is_empty() && !pod.is_empty() => Some(
            normalize::kubernetes_pod_workload(&ctx.cluster, &namespace, &pod, None),
        ),
        _ => container_id
            .as_deref()
            .map(|id| normalize::container_workload(&ctx.cluster, id)),
    };
    let image_reference = container
        .and_then(|c| c.image.clone())
        .or(event.container_image.clone());
    let digest = container
        .and_then(|c| c.image_digest.as_deref())
        .and_then(normalize::normalize_digest);
    signal.image = image_reference
        .as_deref()
        .and_then(normalize::parse_image)
        .map(|image| normalize::with_digest(image, digest));
    signal.container = Some(Container {
        id: container_id.unwrap_or_default(),
        name: container
            .and_then(|c| c.name.clone())
            .or(event.container_name.clone())
            .unwrap_or_default(),
        node: String::new(),
    });
    signal.fact = Some(fact);
    decoded.signals.push(signal);
    Ok(())
}
