//! Cilium Tetragon JSON export (`export-filename` or stdout): one `GetEventsResponse` per line.
//!
//! The envelope holds exactly one event (`process_exec`, `process_kprobe`, ...) beside
//! `node_name`, `time` and the optional `cluster_name`. `process_exec` becomes a
//! [`ProcessExecuted`]; a `process_kprobe` on `tcp_connect` (or any kprobe with a `sock_arg`) and
//! the legacy `process_connect` become a [`NetworkConnection`]. Exits, tracepoints and other
//! kprobes are skipped. Tetragon gives no DNS name for a destination address.

use std::borrow::Cow;

use serde::Deserialize;
use tidemark_proto::v1::{
    Container, Format, Image, NetworkConnection, ProcessExecuted, WorkloadKey, signal::Fact,
};

use super::json;
use super::normalize::{self, base_name};
use super::{DecodeError, Decoded, InputFormat, RecordContext};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    process_exec: Option<ProcessEvent<'a>>,
    #[serde(borrow, default)]
    process_kprobe: Option<KprobeEvent<'a>>,
    #[serde(borrow, default)]
    process_connect: Option<ConnectEvent<'a>>,
    #[serde(default, deserialize_with = "json::text")]
    node_name: Option<String>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    cluster_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    time: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ProcessEvent<'a> {
    #[serde(borrow)]
    process: Process<'a>,
    #[serde(default)]
    parent: Option<Parent>,
}

#[derive(Deserialize)]
struct KprobeEvent<'a> {
    #[serde(borrow)]
    process: Process<'a>,
    #[serde(default)]
    parent: Option<Parent>,
    #[serde(default, deserialize_with = "json::text")]
    function_name: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    args: Vec<KprobeArg>,
}

#[derive(Deserialize)]
struct KprobeArg {
    #[serde(default)]
    sock_arg: Option<SockArg>,
}

#[derive(Deserialize)]
struct SockArg {
    #[serde(default, deserialize_with = "json::text")]
    daddr: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    dport: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    saddr: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    sport: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct ConnectEvent<'a> {
    #[serde(borrow)]
    process: Process<'a>,
    #[serde(default)]
    parent: Option<Parent>,
    #[serde(default, deserialize_with = "json::text")]
    source_ip: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    source_port: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    destination_ip: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    destination_port: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct Process<'a> {
    #[serde(default, deserialize_with = "json::text")]
    exec_id: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    pid: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    uid: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    cwd: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    binary: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    arguments: Option<String>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    start_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pod: Option<Pod<'a>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    docker: Option<Cow<'a, str>>,
}

/// The parent process: only what names it is read; its pod repeats the child's.
#[derive(Deserialize)]
struct Parent {
    #[serde(default, deserialize_with = "json::text")]
    binary: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "json::cow")]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    container: Option<PodContainer<'a>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    workload: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    workload_kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PodContainer<'a> {
    #[serde(borrow, default, deserialize_with = "json::cow")]
    id: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(borrow, default)]
    image: Option<ContainerImage<'a>>,
}

#[derive(Deserialize)]
struct ContainerImage<'a> {
    #[serde(borrow, default, deserialize_with = "json::cow")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::cow")]
    name: Option<Cow<'a, str>>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(InputFormat::Tetragon, &e))?;
    let node = envelope.node_name.unwrap_or_default();
    let cluster = envelope
        .cluster_name
        .as_deref()
        .filter(|c| !c.is_empty())
        .unwrap_or(&ctx.cluster);
    let time = envelope.time.as_deref().and_then(normalize::parse_rfc3339);

    let (process, parent, fact_kind, connection) = if let Some(exec) = envelope.process_exec {
        (exec.process, exec.parent, "process_exec", None)
    } else if let Some(kprobe) = envelope.process_kprobe {
        let sock = kprobe.args.into_iter().find_map(|arg| arg.sock_arg);
        let is_connect = kprobe
            .function_name
            .as_deref()
            .is_some_and(|f| f.contains("connect"));
        let Some(sock) = sock.filter(|_| is_connect) else {
            decoded.skip(0, "tetragon kprobe without a connect socket");
            return Ok(());
        };
        let connection = NetworkConnection {
            destination_address: sock.daddr.unwrap_or_default(),
            destination_port: normalize::port(sock.dport),
            domain: String::new(),
            protocol: sock.protocol.unwrap_or_default(),
            source_address: sock.saddr.unwrap_or_default(),
            source_port: normalize::port(sock.sport),
            process: None,
        };
        (
            kprobe.process,
            kprobe.parent,
            "process_kprobe",
            Some(connection),
        )
    } else if let Some(connect) = envelope.process_connect {
        let connection = NetworkConnection {
            destination_address: connect.destination_ip.unwrap_or_default(),
            destination_port: normalize::port(connect.destination_port),
            domain: String::new(),
            protocol: connect.protocol.unwrap_or_default(),
            source_address: connect.source_ip.unwrap_or_default(),
            source_port: normalize::port(connect.source_port),
            process: None,
        };
        (
            connect.process,
            connect.parent,
            "process_connect",
            Some(connection),
        )
    } else {
        decoded.skip(0, "tetragon event type not correlated");
        return Ok(());
    };

    let event_time = time
        .or_else(|| {
            process
                .start_time
                .as_deref()
                .and_then(normalize::parse_rfc3339)
        })
        .ok_or_else(|| DecodeError::new(Some(InputFormat::Tetragon), "no valid `time`"))?;
    let mut signal = ctx.signal(Format::Tetragon, event_time, 0);
    signal.source_event = fact_kind.to_owned();
    let pod = process.pod.as_ref();
    let container = pod.and_then(|pod| pod.container.as_ref());
    let container_id = container
        .and_then(|c| c.id.as_deref())
        .and_then(normalize::container_id)
        .or_else(|| process.docker.as_deref().and_then(normalize::container_id));
    signal.workload = workload(cluster, pod, container_id.as_deref());
    signal.image = container.and_then(|c| c.image.as_ref()).and_then(image);
    signal.container = Some(Container {
        id: container_id.unwrap_or_default(),
        name: container.and_then(|c| c.name.clone()).unwrap_or_default(),
        node,
    });
    let process = to_process(process, parent);
    if !process.exec_id.is_empty() {
        signal.dedup_key = format!("tetragon/{fact_kind}/{}/{event_time}", process.exec_id);
    }
    signal.fact = Some(match connection {
        Some(mut connection) => {
            connection.process = Some(process);
            Fact::NetworkConnection(connection)
        }
        None => Fact::ProcessExecuted(process),
    });
    decoded.signals.push(signal);
    Ok(())
}

fn workload(
    cluster: &str,
    pod: Option<&Pod<'_>>,
    container_id: Option<&str>,
) -> Option<WorkloadKey> {
    fn named<'v>(value: &'v Option<Cow<'_, str>>) -> Option<&'v str> {
        value.as_deref().filter(|v| !v.is_empty())
    }
    if let Some(pod) = pod
        && let (Some(namespace), Some(name)) = (named(&pod.namespace), named(&pod.name))
    {
        let owner = match (named(&pod.workload_kind), named(&pod.workload)) {
            (Some(kind), Some(workload)) if kind != "Pod" => Some((kind, workload)),
            _ => None,
        };
        return Some(normalize::kubernetes_pod_workload(
            cluster, namespace, name, owner,
        ));
    }
    container_id.map(|id| normalize::container_workload(cluster, id))
}

fn image(image: &ContainerImage<'_>) -> Option<Image> {
    let digest = image.id.as_deref().and_then(normalize::digest_of_reference);
    let parsed = image.name.as_deref().and_then(normalize::parse_image);
    match parsed {
        Some(parsed) => Some(normalize::with_digest(parsed, digest)),
        None => image.id.as_deref().and_then(normalize::parse_image),
    }
}

fn to_process(process: Process<'_>, parent: Option<Parent>) -> ProcessExecuted {
    let binary = process.binary.unwrap_or_default();
    let arguments = process.arguments.unwrap_or_default();
    let command_line = join_command(&binary, &arguments);
    let (parent_binary, parent_command_line) = match parent {
        Some(parent) => {
            let binary = parent.binary.unwrap_or_default();
            let command_line =
                join_command(&binary, parent.arguments.as_deref().unwrap_or_default());
            (binary, command_line)
        }
        None => (String::new(), String::new()),
    };
    ProcessExecuted {
        name: base_name(&binary).to_owned(),
        binary,
        arguments,
        command_line,
        parent_binary,
        parent_command_line,
        drift: false,
        cwd: process.cwd.unwrap_or_default(),
        pid: process.pid.unwrap_or_default(),
        user: process.uid.unwrap_or_default(),
        exec_id: process.exec_id.unwrap_or_default(),
    }
}

fn join_command(binary: &str, arguments: &str) -> String {
    if arguments.is_empty() {
        binary.to_owned()
    } else {
        format!("{binary} {arguments}")
    }
}
