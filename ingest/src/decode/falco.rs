//! Falco JSON alerts, as Falco writes them with `json_output: true` and falcosidekick forwards them.
//!
//! Top level: `time`, `rule`, `priority`, `source`, `hostname`, `output`, `tags`, `output_fields`
//! (and `uuid` from falcosidekick). `output_fields` holds only what the rule's output names plus
//! appended fields, so every field below is optional; `k8s.*` and `container.image.*` appear only
//! when Falco is configured to append them. Every alert becomes a [`RuntimeAlert`] carrying the
//! process and connection it is about, so the correlator can judge both the rule and the facts.

use serde::Deserialize;
use tidemark_proto::v1::{
    Actor, Container, Format, NetworkConnection, ProcessExecuted, RuntimeAlert, signal::Fact,
};

use super::json;
use super::normalize::{self, base_name};
use super::{DecodeError, Decoded, InputFormat, RecordContext};

/// Rules whose firing means the executable is not part of the image.
const DRIFT_RULES: [&str; 4] = [
    "Drop and execute new binary in container",
    "Container Drift Detected (chmod)",
    "Container Drift Detected (open+create)",
    "Execution from /dev/shm",
];

#[derive(Deserialize)]
struct Alert {
    rule: String,
    #[serde(default, deserialize_with = "json::text")]
    time: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    priority: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    source: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    hostname: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    output: Option<String>,
    #[serde(default, deserialize_with = "json::strings")]
    tags: Vec<String>,
    #[serde(default, deserialize_with = "json::text")]
    uuid: Option<String>,
    #[serde(default)]
    output_fields: Option<OutputFields>,
}

#[derive(Deserialize, Default)]
struct OutputFields {
    #[serde(rename = "evt.time", default, deserialize_with = "json::integer")]
    evt_time: Option<i64>,
    #[serde(
        rename = "evt.time.iso8601",
        default,
        deserialize_with = "json::integer"
    )]
    evt_time_iso8601: Option<i64>,
    #[serde(rename = "evt.type", default, deserialize_with = "json::text")]
    evt_type: Option<String>,
    #[serde(rename = "evt.arg.flags", default, deserialize_with = "json::text")]
    evt_arg_flags: Option<String>,
    #[serde(rename = "user.name", default, deserialize_with = "json::text")]
    user_name: Option<String>,
    #[serde(rename = "proc.name", default, deserialize_with = "json::text")]
    proc_name: Option<String>,
    #[serde(rename = "proc.exepath", default, deserialize_with = "json::text")]
    proc_exepath: Option<String>,
    #[serde(rename = "proc.exe", default, deserialize_with = "json::text")]
    proc_exe: Option<String>,
    #[serde(rename = "proc.cmdline", default, deserialize_with = "json::text")]
    proc_cmdline: Option<String>,
    #[serde(rename = "proc.pname", default, deserialize_with = "json::text")]
    proc_pname: Option<String>,
    #[serde(rename = "proc.pexe", default, deserialize_with = "json::text")]
    proc_pexe: Option<String>,
    #[serde(rename = "proc.pcmdline", default, deserialize_with = "json::text")]
    proc_pcmdline: Option<String>,
    #[serde(rename = "proc.cwd", default, deserialize_with = "json::text")]
    proc_cwd: Option<String>,
    #[serde(rename = "proc.pid", default, deserialize_with = "json::integer")]
    proc_pid: Option<i64>,
    #[serde(
        rename = "proc.is_exe_upper_layer",
        default,
        deserialize_with = "json::boolean"
    )]
    proc_is_exe_upper_layer: Option<bool>,
    #[serde(rename = "container.id", default, deserialize_with = "json::text")]
    container_id: Option<String>,
    #[serde(rename = "container.full_id", default, deserialize_with = "json::text")]
    container_full_id: Option<String>,
    #[serde(rename = "container.name", default, deserialize_with = "json::text")]
    container_name: Option<String>,
    #[serde(rename = "container.image", default, deserialize_with = "json::text")]
    container_image: Option<String>,
    #[serde(
        rename = "container.image.repository",
        default,
        deserialize_with = "json::text"
    )]
    container_image_repository: Option<String>,
    #[serde(
        rename = "container.image.tag",
        default,
        deserialize_with = "json::text"
    )]
    container_image_tag: Option<String>,
    #[serde(
        rename = "container.image.digest",
        default,
        deserialize_with = "json::text"
    )]
    container_image_digest: Option<String>,
    #[serde(rename = "k8s.ns.name", default, deserialize_with = "json::text")]
    k8s_ns_name: Option<String>,
    #[serde(rename = "k8s.pod.name", default, deserialize_with = "json::text")]
    k8s_pod_name: Option<String>,
    #[serde(
        rename = "k8smeta.deployment.name",
        default,
        deserialize_with = "json::text"
    )]
    k8smeta_deployment_name: Option<String>,
    #[serde(
        rename = "k8smeta.daemonset.name",
        default,
        deserialize_with = "json::text"
    )]
    k8smeta_daemonset_name: Option<String>,
    #[serde(
        rename = "k8smeta.statefulset.name",
        default,
        deserialize_with = "json::text"
    )]
    k8smeta_statefulset_name: Option<String>,
    #[serde(rename = "k8smeta.rs.name", default, deserialize_with = "json::text")]
    k8smeta_rs_name: Option<String>,
    #[serde(rename = "k8s.cluster.name", default, deserialize_with = "json::text")]
    k8s_cluster_name: Option<String>,
    #[serde(rename = "fd.rip", default, deserialize_with = "json::text")]
    fd_rip: Option<String>,
    #[serde(rename = "fd.rport", default, deserialize_with = "json::integer")]
    fd_rport: Option<i64>,
    #[serde(rename = "fd.sip.name", default, deserialize_with = "json::text")]
    fd_sip_name: Option<String>,
    #[serde(rename = "fd.l4proto", default, deserialize_with = "json::text")]
    fd_l4proto: Option<String>,
    #[serde(rename = "fd.lip", default, deserialize_with = "json::text")]
    fd_lip: Option<String>,
    #[serde(rename = "fd.lport", default, deserialize_with = "json::integer")]
    fd_lport: Option<i64>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let alert: Alert =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(InputFormat::Falco, &e))?;
    let fields = alert.output_fields.unwrap_or_default();
    let event_time = match alert.time.as_deref().and_then(normalize::parse_rfc3339) {
        Some(time) => time,
        None => fields.evt_time.or(fields.evt_time_iso8601).ok_or_else(|| {
            DecodeError::new(Some(InputFormat::Falco), "no valid `time` or `evt.time`")
        })?,
    };

    let mut signal = ctx.signal(Format::Falco, event_time, 0);
    signal.source_event = alert.rule.clone();
    signal.dedup_key = match &alert.uuid {
        Some(uuid) => format!("falco/{uuid}"),
        None => String::new(),
    };
    let cluster = fields.k8s_cluster_name.as_deref().unwrap_or(&ctx.cluster);
    let container_id = fields
        .container_full_id
        .as_deref()
        .and_then(normalize::container_id)
        // Falco reports `host` as the container id of processes outside containers: not hex.
        .or_else(|| {
            fields
                .container_id
                .as_deref()
                .and_then(normalize::container_id)
        });
    signal.workload = match (&fields.k8s_ns_name, &fields.k8s_pod_name) {
        (Some(namespace), Some(pod)) if !namespace.is_empty() && !pod.is_empty() => {
            let owner = explicit_owner(&fields);
            Some(normalize::kubernetes_pod_workload(
                cluster, namespace, pod, owner,
            ))
        }
        _ => container_id
            .as_deref()
            .map(|id| normalize::container_workload(cluster, id)),
    };
    signal.image = image(&fields);
    signal.container = Some(Container {
        id: container_id.unwrap_or_default(),
        name: fields.container_name.clone().unwrap_or_default(),
        node: alert.hostname.unwrap_or_default(),
    });
    if let Some(user) = &fields.user_name {
        signal.actor = Some(Actor {
            name: user.clone(),
            kind: "linux-user".into(),
            ..Default::default()
        });
    }

    let drift = fields.proc_is_exe_upper_layer == Some(true)
        || fields
            .evt_arg_flags
            .as_deref()
            .is_some_and(|flags| flags.contains("EXE_UPPER_LAYER"))
        || DRIFT_RULES.contains(&alert.rule.as_str());
    let process = process(&fields, drift);
    let connection = connection(&fields);
    signal.fact = Some(Fact::RuntimeAlert(RuntimeAlert {
        rule: alert.rule,
        priority: alert.priority.unwrap_or_default(),
        tags: alert.tags,
        output: alert.output.unwrap_or_default(),
        process,
        connection,
    }));
    if alert
        .source
        .as_deref()
        .is_some_and(|source| source != "syscall")
    {
        // Plugin sources (k8s_audit, cloudtrail) name other fields; the alert is kept as is.
        signal.container = None;
    }
    decoded.signals.push(signal);
    Ok(())
}

fn explicit_owner(fields: &OutputFields) -> Option<(&str, &str)> {
    fn named(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|name| !name.is_empty())
    }
    if let Some(name) = named(&fields.k8smeta_deployment_name) {
        return Some(("Deployment", name));
    }
    if let Some(name) = named(&fields.k8smeta_daemonset_name) {
        return Some(("DaemonSet", name));
    }
    if let Some(name) = named(&fields.k8smeta_statefulset_name) {
        return Some(("StatefulSet", name));
    }
    named(&fields.k8smeta_rs_name).map(|name| ("ReplicaSet", name))
}

fn image(fields: &OutputFields) -> Option<tidemark_proto::v1::Image> {
    let digest = fields
        .container_image_digest
        .as_deref()
        .and_then(normalize::normalize_digest);
    let image = match (&fields.container_image_repository, &fields.container_image) {
        (Some(repository), _) if !repository.is_empty() => {
            let tag = fields.container_image_tag.as_deref().unwrap_or_default();
            if tag.is_empty() {
                normalize::parse_image(repository)
            } else {
                normalize::parse_image(&format!("{repository}:{tag}"))
            }
        }
        (_, Some(reference)) => normalize::parse_image(reference),
        _ => None,
    }?;
    Some(normalize::with_digest(image, digest))
}

fn process(fields: &OutputFields, drift: bool) -> Option<ProcessExecuted> {
    if fields.proc_name.is_none() && fields.proc_cmdline.is_none() && fields.proc_exepath.is_none()
    {
        return None;
    }
    let binary = fields
        .proc_exepath
        .clone()
        .or_else(|| fields.proc_exe.clone())
        .unwrap_or_default();
    let command_line = fields.proc_cmdline.clone().unwrap_or_default();
    let name = match &fields.proc_name {
        Some(name) => name.clone(),
        None => base_name(command_line.split(' ').next().unwrap_or_default()).to_owned(),
    };
    // Falco's `proc.cmdline` is the process name followed by its arguments.
    let arguments = command_line
        .split_once(' ')
        .map(|(_, args)| args.to_owned())
        .unwrap_or_default();
    Some(ProcessExecuted {
        binary,
        name,
        arguments,
        command_line,
        parent_binary: fields
            .proc_pexe
            .clone()
            .or_else(|| fields.proc_pname.clone())
            .unwrap_or_default(),
        parent_command_line: fields.proc_pcmdline.clone().unwrap_or_default(),
        drift,
        cwd: fields.proc_cwd.clone().unwrap_or_default(),
        pid: fields.proc_pid.unwrap_or_default(),
        user: fields.user_name.clone().unwrap_or_default(),
        exec_id: String::new(),
    })
}

fn connection(fields: &OutputFields) -> Option<NetworkConnection> {
    let address = fields.fd_rip.clone().unwrap_or_default();
    let domain = fields.fd_sip_name.clone().unwrap_or_default();
    if address.is_empty() && domain.is_empty() {
        return None;
    }
    if fields
        .evt_type
        .as_deref()
        .is_some_and(|t| !matches!(t, "connect" | "sendto" | "sendmsg"))
    {
        return None;
    }
    Some(NetworkConnection {
        destination_address: address,
        destination_port: normalize::port(fields.fd_rport),
        domain,
        protocol: fields.fd_l4proto.clone().unwrap_or_default(),
        source_address: fields.fd_lip.clone().unwrap_or_default(),
        source_port: normalize::port(fields.fd_lport),
        process: None,
    })
}
