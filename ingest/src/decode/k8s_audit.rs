//! Kubernetes audit events (`audit.k8s.io/v1` and `v1beta1`), alone, in an `EventList` (webhook
//! backend), in an EKS CloudWatch Logs subscription record, or in an AKS diagnostic record.
//!
//! One signal per audit request: a request is logged once per stage, so only the stage that
//! carries the outcome is used (`ResponseStarted` for exec, attach and port-forward, whose
//! `ResponseComplete` comes when the session ends; `ResponseComplete` otherwise), duplicates of
//! an `auditID` inside one envelope are dropped, and every signal carries `k8s-audit/<auditID>`
//! as its de-duplication key for what stage selection cannot catch. Read-only and failed
//! requests are skipped.
//!
//! What each request gives:
//! - create, update, patch or delete of a workload object (pods, deployments, replicasets,
//!   statefulsets, daemonsets, jobs, cronjobs, Argo workflows) gives a [`WorkloadChanged`] with
//!   the images per container. A patch body lists only what it changes, so it is marked
//!   `partial`; when the response object is logged (RequestResponse level) the full object is
//!   used instead.
//! - `pods/exec`, `pods/attach`, `pods/portforward` and `pods/ephemeralcontainers` give a
//!   [`ContainerAccess`], with the command from the request URI.
//! - kubelet's `pods/status` patches give a [`ContainerStarted`] binding container ids to the pod
//!   and the resolved image digest.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use tidemark_proto::v1::{
    Actor, ContainerAccess, ContainerImage, ContainerStarted, Format, Image, Platform,
    StartedContainer, WorkloadChanged, WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::K8sAudit;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[serde(rename = "auditID")]
    audit_id: String,
    verb: String,
    #[serde(default, deserialize_with = "json::text")]
    stage: Option<String>,
    #[serde(rename = "requestURI", default, deserialize_with = "json::text")]
    request_uri: Option<String>,
    #[serde(default)]
    user: Option<UserInfo>,
    #[serde(default)]
    impersonated_user: Option<UserInfo>,
    #[serde(rename = "sourceIPs", default, deserialize_with = "json::strings")]
    source_ips: Vec<String>,
    #[serde(default, deserialize_with = "json::text")]
    user_agent: Option<String>,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default, borrow)]
    request_object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    response_object: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "json::text")]
    request_received_timestamp: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    stage_timestamp: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
struct UserInfo {
    #[serde(default, deserialize_with = "json::text")]
    username: Option<String>,
    #[serde(default, deserialize_with = "json::strings")]
    groups: Vec<String>,
    #[serde(default)]
    extra: Option<UserExtra>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UserExtra {
    #[serde(default, deserialize_with = "json::strings")]
    canonical_arn: Vec<String>,
    #[serde(default, deserialize_with = "json::strings")]
    arn: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default, deserialize_with = "json::text")]
    resource: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    subresource: Option<String>,
}

#[derive(Deserialize, Default)]
struct ResponseStatus {
    #[serde(default, deserialize_with = "json::integer")]
    code: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Object {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize, Default)]
struct OwnerReference {
    #[serde(default, deserialize_with = "json::text")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::boolean")]
    controller: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, deserialize_with = "json::list")]
    containers: Vec<ContainerSpec>,
    #[serde(default, deserialize_with = "json::list")]
    init_containers: Vec<ContainerSpec>,
    #[serde(default, deserialize_with = "json::list")]
    ephemeral_containers: Vec<ContainerSpec>,
    #[serde(default)]
    template: Option<Box<Template>>,
    #[serde(default)]
    job_template: Option<Box<Template>>,
    #[serde(default)]
    workflow_spec: Option<Box<Spec>>,
    #[serde(default, deserialize_with = "json::list")]
    templates: Vec<ArgoTemplate>,
    #[serde(default, deserialize_with = "json::integer")]
    replicas: Option<i64>,
    #[serde(default, deserialize_with = "json::boolean")]
    host_network: Option<bool>,
    #[serde(rename = "hostPID", default, deserialize_with = "json::boolean")]
    host_pid: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Template {
    #[serde(default)]
    spec: Option<Box<Spec>>,
}

#[derive(Deserialize, Default)]
struct ArgoTemplate {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default)]
    container: Option<ContainerSpec>,
    #[serde(default)]
    script: Option<ContainerSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerSpec {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image: Option<String>,
    #[serde(default, deserialize_with = "json::strings")]
    command: Vec<String>,
    #[serde(default, deserialize_with = "json::strings")]
    args: Vec<String>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
    #[serde(default, deserialize_with = "json::boolean")]
    stdin: Option<bool>,
    #[serde(default, deserialize_with = "json::boolean")]
    tty: Option<bool>,
}

#[derive(Deserialize, Default)]
struct SecurityContext {
    #[serde(default, deserialize_with = "json::boolean")]
    privileged: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, deserialize_with = "json::text")]
    phase: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "json::list")]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "json::list")]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Default)]
struct ContainerStatus {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image: Option<String>,
    #[serde(rename = "imageID", default, deserialize_with = "json::text")]
    image_id: Option<String>,
    #[serde(rename = "containerID", default, deserialize_with = "json::text")]
    container_id: Option<String>,
}

#[derive(Deserialize)]
struct JsonPatchOp<'a> {
    #[serde(default, deserialize_with = "json::text")]
    path: Option<String>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
}

/// Peeks at whether a document is an `EventList` or a single `Event`.
#[derive(Deserialize)]
struct ListProbe<'a> {
    #[serde(default, deserialize_with = "json::text")]
    kind: Option<String>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// Decodes a Kubernetes audit `Event` or `EventList`.
pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let mut seen = HashSet::new();
    if memchr::memmem::find(body, b"\"EventList\"").is_some() {
        let list: ListProbe<'_> =
            serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
        if list.kind.as_deref() == Some("EventList") {
            for (index, item) in list.items.unwrap_or_default().into_iter().enumerate() {
                let index = index_u32(index);
                decode_event(
                    item.get().as_bytes(),
                    &ctx.cluster,
                    index,
                    ctx,
                    decoded,
                    &mut seen,
                )
                .map_err(|e| in_envelope("items", index, e))?;
            }
            return Ok(());
        }
    }
    decode_event(body, &ctx.cluster, 0, ctx, decoded, &mut seen)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudWatchEnvelope {
    #[serde(default, deserialize_with = "json::text")]
    message_type: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    log_group: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    log_stream: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    log_events: Vec<CloudWatchLogEvent>,
}

#[derive(Deserialize)]
struct CloudWatchLogEvent {
    message: String,
}

/// Decodes an EKS control-plane CloudWatch Logs subscription record: the audit events are the
/// `logEvents[].message` strings; the cluster is named by the log group
/// `/aws/eks/<cluster>/cluster`.
pub(crate) fn decode_cloudwatch(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let format = InputFormat::CloudwatchLogs;
    let envelope: CloudWatchEnvelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(format, &e))?;
    if envelope.message_type.as_deref() == Some("CONTROL_MESSAGE") {
        decoded.skip(0, "cloudwatch control message");
        return Ok(());
    }
    let cluster = envelope
        .log_group
        .as_deref()
        .and_then(|group| group.strip_prefix("/aws/eks/"))
        .and_then(|rest| rest.strip_suffix("/cluster"))
        .map_or_else(|| ctx.cluster.clone(), str::to_owned);
    let is_audit = envelope
        .log_stream
        .as_deref()
        .is_none_or(|s| s.starts_with("kube-apiserver-audit"));
    let mut seen = HashSet::new();
    for (index, event) in envelope.log_events.iter().enumerate() {
        let index = index_u32(index);
        if !is_audit {
            decoded.skip(index, "cloudwatch stream is not an audit log");
            continue;
        }
        decode_event(
            event.message.as_bytes(),
            &cluster,
            index,
            ctx,
            decoded,
            &mut seen,
        )
        .map_err(|e| in_envelope("logEvents", index, e))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct AksBatch<'a> {
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AksRecord<'a> {
    #[serde(default, deserialize_with = "json::text")]
    category: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    resource_id: Option<String>,
    #[serde(default, borrow)]
    properties: Option<AksProperties<'a>>,
}

#[derive(Deserialize)]
struct AksProperties<'a> {
    #[serde(default, borrow)]
    log: Option<&'a RawValue>,
}

/// Decodes AKS diagnostic records of the `kube-audit` and `kube-audit-admin` categories, alone or
/// in an Event Hub `{"records":[...]}` batch. The audit event is `properties.log`, normally a
/// JSON string; the cluster is the last segment of `resourceId`.
pub(crate) fn decode_aks(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let format = InputFormat::AksDiagnostic;
    let mut seen = HashSet::new();
    if memchr::memmem::find(body, b"\"records\"").is_some()
        && let Ok(batch) = serde_json::from_slice::<AksBatch<'_>>(body)
    {
        for (index, record) in batch.records.iter().enumerate() {
            let index = index_u32(index);
            decode_aks_record(record.get().as_bytes(), index, ctx, decoded, &mut seen)
                .map_err(|e| in_envelope("records", index, e))?;
        }
        return Ok(());
    }
    decode_aks_record(body, 0, ctx, decoded, &mut seen).map_err(|e| DecodeError {
        format: Some(format),
        ..e
    })
}

fn decode_aks_record(
    body: &[u8],
    index: u32,
    ctx: &RecordContext,
    decoded: &mut Decoded,
    seen: &mut HashSet<String>,
) -> Result<(), DecodeError> {
    let format = InputFormat::AksDiagnostic;
    let record: AksRecord<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(format, &e))?;
    if !matches!(
        record.category.as_deref(),
        Some("kube-audit" | "kube-audit-admin")
    ) {
        decoded.skip(index, "aks category is not an audit log");
        return Ok(());
    }
    let cluster = record
        .resource_id
        .as_deref()
        .and_then(|id| id.rsplit('/').next())
        .filter(|name| !name.is_empty())
        .map_or_else(|| ctx.cluster.clone(), str::to_ascii_lowercase);
    let log = record
        .properties
        .and_then(|p| p.log)
        .ok_or_else(|| DecodeError::new(Some(format), "missing `properties.log`"))?;
    let text = log.get();
    if text.starts_with('"') {
        let inner: String =
            serde_json::from_str(text).map_err(|e| DecodeError::json(format, &e))?;
        decode_event(inner.as_bytes(), &cluster, index, ctx, decoded, seen)
    } else {
        decode_event(text.as_bytes(), &cluster, index, ctx, decoded, seen)
    }
}

fn in_envelope(field: &str, index: u32, error: DecodeError) -> DecodeError {
    DecodeError {
        reason: format!("{field}[{index}]: {}", error.reason),
        ..error
    }
}

fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Decodes one audit event at `index` of its envelope.
fn decode_event(
    body: &[u8],
    cluster: &str,
    index: u32,
    ctx: &RecordContext,
    decoded: &mut Decoded,
    seen: &mut HashSet<String>,
) -> Result<(), DecodeError> {
    let mut event: Event<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    let object_ref = event.object_ref.take().unwrap_or_default();
    let resource = object_ref.resource.as_deref().unwrap_or_default();
    let subresource = object_ref.subresource.as_deref().unwrap_or_default();
    let streaming = resource == "pods" && matches!(subresource, "exec" | "attach" | "portforward");
    let wanted_stage = if streaming {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    match event.stage.as_deref() {
        None => {}
        Some(stage) if stage == wanted_stage => {}
        Some(_) => {
            decoded.skip(index, "audit stage not used");
            return Ok(());
        }
    }
    if !seen.insert(event.audit_id.clone()) {
        decoded.skip(index, "audit request already seen");
        return Ok(());
    }
    let code = event
        .response_status
        .as_ref()
        .and_then(|s| s.code)
        .unwrap_or(0);
    if code >= 300 && code != 101 {
        decoded.skip(index, "audit request failed");
        return Ok(());
    }
    let verb = event.verb.as_str();
    if !streaming && !matches!(verb, "create" | "update" | "patch" | "delete") {
        decoded.skip(index, "audit request is read-only");
        return Ok(());
    }
    let time = event
        .request_received_timestamp
        .as_deref()
        .or(event.stage_timestamp.as_deref())
        .or(event.timestamp.as_deref())
        .and_then(normalize::parse_rfc3339)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no valid `requestReceivedTimestamp`"))?;

    let namespace = object_ref.namespace.clone().unwrap_or_default();
    let mut signal = ctx.signal(Format::K8sAudit, time, index);
    signal.dedup_key = format!("k8s-audit/{}", event.audit_id);
    signal.source_event = if subresource.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{subresource}")
    };
    signal.actor = Some(actor(&event));

    let fact = match (resource, subresource) {
        ("pods", "exec" | "attach" | "portforward") => {
            let pod = object_ref.name.clone().unwrap_or_default();
            signal.workload = Some(normalize::kubernetes_pod_workload(
                cluster, &namespace, &pod, None,
            ));
            Fact::ContainerAccess(access(
                subresource,
                event.request_uri.as_deref().unwrap_or_default(),
            ))
        }
        ("pods", "ephemeralcontainers") => {
            let pod = object_ref.name.clone().unwrap_or_default();
            signal.workload = Some(normalize::kubernetes_pod_workload(
                cluster, &namespace, &pod, None,
            ));
            let object = parse_object(event.response_object.or(event.request_object))?;
            let spec = object.spec.unwrap_or_default();
            let Some(container) = spec.ephemeral_containers.last() else {
                decoded.skip(index, "ephemeral container request without a container");
                return Ok(());
            };
            signal.image = container.image.as_deref().and_then(normalize::parse_image);
            Fact::ContainerAccess(ContainerAccess {
                kind: "ephemeral".into(),
                command: command_of(container),
                container: container.name.clone().unwrap_or_default(),
                interactive: container.stdin == Some(true) && container.tty == Some(true),
            })
        }
        ("pods", "status") => {
            let pod = object_ref.name.clone().unwrap_or_default();
            let object = parse_object(event.request_object.or(event.response_object))?;
            let Some(started) = started_containers(object.status.unwrap_or_default()) else {
                decoded.skip(index, "pod status without container ids");
                return Ok(());
            };
            signal.workload = Some(normalize::kubernetes_pod_workload(
                cluster, &namespace, &pod, None,
            ));
            signal.image = started.containers.first().and_then(|c| c.image.clone());
            Fact::ContainerStarted(started)
        }
        (_, "") if workload_kind(resource).is_some() => {
            let Some(change) = workload_change(&event, &object_ref, cluster, &mut signal)? else {
                decoded.skip(index, "workload request without a workload name");
                return Ok(());
            };
            Fact::WorkloadChanged(change)
        }
        _ => {
            decoded.skip(index, "audit resource not correlated");
            return Ok(());
        }
    };
    signal.fact = Some(fact);
    decoded.signals.push(signal);
    Ok(())
}

/// Maps an audited resource to the controller kind it is.
fn workload_kind(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "pods" => "Pod",
        "deployments" => "Deployment",
        "replicasets" => "ReplicaSet",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        "replicationcontrollers" => "ReplicationController",
        "workflows" => "Workflow",
        "cronworkflows" => "CronWorkflow",
        "workflowtemplates" => "WorkflowTemplate",
        _ => return None,
    })
}

fn workload_change(
    event: &Event<'_>,
    object_ref: &ObjectRef,
    cluster: &str,
    signal: &mut tidemark_proto::v1::Signal,
) -> Result<Option<WorkloadChanged>, DecodeError> {
    let resource = object_ref.resource.as_deref().unwrap_or_default();
    let namespace = object_ref.namespace.clone().unwrap_or_default();
    let verb = event.verb.as_str();
    // The response holds the whole object after the change; a patch request holds only the patch.
    let (raw_object, partial) = match (event.response_object, event.request_object) {
        (Some(response), _) if verb != "delete" && response.get().starts_with('{') => {
            (Some(response), false)
        }
        (_, Some(request)) => (Some(request), verb == "patch"),
        (_, None) => (None, verb == "patch"),
    };
    let (object, patched) = match raw_object {
        Some(raw) if raw.get().starts_with('[') => (Object::default(), json_patch_images(raw)?),
        other => (parse_object(other)?, Vec::new()),
    };
    let metadata = object.metadata.unwrap_or_default();
    let object_name = object_ref
        .name
        .clone()
        .or_else(|| metadata.name.clone())
        .filter(|name| !name.is_empty());
    let owner = metadata
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| metadata.owner_references.first())
        .and_then(|o| Some((o.kind.clone()?, o.name.clone()?)));

    let kind = workload_kind(resource).unwrap_or_default();
    let workload = match (kind, &owner, &object_name) {
        ("Pod", owner, Some(pod)) => {
            let owner = owner
                .as_ref()
                .map(|(kind, name)| (kind.as_str(), name.as_str()));
            normalize::kubernetes_pod_workload(cluster, &namespace, pod, owner)
        }
        (_, Some((owner_kind, owner_name)), name) => {
            let (owner_kind, owner_name) = normalize::top_controller(owner_kind, owner_name);
            WorkloadKey {
                platform: Platform::Kubernetes as i32,
                cluster: cluster.to_owned(),
                namespace: namespace.clone(),
                kind: owner_kind.to_owned(),
                name: owner_name.to_owned(),
                resolution: WorkloadResolution::Explicit as i32,
                instance: name.clone().unwrap_or_default(),
                ..Default::default()
            }
        }
        (kind, None, Some(name)) => {
            // An object logged without its ownerReferences (Metadata level, or a patch body) is
            // keyed by the controller its name implies, as its pods are.
            let (top_kind, top_name) = normalize::top_controller(kind, name);
            let (resolution, instance) = if top_name == name {
                (WorkloadResolution::Explicit, String::new())
            } else {
                (WorkloadResolution::PodName, name.clone())
            };
            WorkloadKey {
                platform: Platform::Kubernetes as i32,
                cluster: cluster.to_owned(),
                namespace: namespace.clone(),
                kind: top_kind.to_owned(),
                name: top_name.to_owned(),
                resolution: resolution as i32,
                instance,
                ..Default::default()
            }
        }
        (_, None, None) => return Ok(None),
    };
    signal.workload = Some(workload);

    let spec = object.spec.unwrap_or_default();
    let mut change = WorkloadChanged {
        verb: verb.to_owned(),
        resource: resource.to_owned(),
        partial,
        ..Default::default()
    };
    let mut privileged = false;
    collect_containers(&spec, &mut change, &mut privileged);
    change.containers.extend(patched);
    change.privileged = privileged;
    change.replicas = spec.replicas.unwrap_or_default();
    signal.image = change
        .containers
        .iter()
        .find(|c| c.role == "container")
        .or_else(|| change.containers.first())
        .and_then(|c| c.image.clone());
    Ok(Some(change))
}

fn parse_object(raw: Option<&RawValue>) -> Result<Object, DecodeError> {
    match raw {
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str(raw.get()).map_err(|e| {
            DecodeError::new(
                Some(FORMAT),
                format!("invalid request or response object: {e}"),
            )
        }),
        _ => Ok(Object::default()),
    }
}

/// Collects the containers of a pod spec, at whatever depth the resource keeps its pod template.
fn collect_containers(spec: &Spec, change: &mut WorkloadChanged, privileged: &mut bool) {
    *privileged |= spec.host_network == Some(true) || spec.host_pid == Some(true);
    let roles = [
        ("container", &spec.containers),
        ("init", &spec.init_containers),
        ("ephemeral", &spec.ephemeral_containers),
    ];
    for (role, containers) in roles {
        for container in containers {
            push_container(container, role, change, privileged);
        }
    }
    for template in &spec.templates {
        for container in [&template.container, &template.script]
            .into_iter()
            .flatten()
        {
            let mut container_name = container.name.clone();
            if container_name.is_none() {
                container_name = template.name.clone();
            }
            let named = ContainerSpec {
                name: container_name,
                image: container.image.clone(),
                command: container.command.clone(),
                args: container.args.clone(),
                ..ContainerSpec::default()
            };
            push_container(&named, "container", change, privileged);
        }
    }
    let nested = [&spec.template, &spec.job_template];
    for template in nested.into_iter().flatten() {
        if let Some(inner) = &template.spec {
            collect_containers(inner, change, privileged);
        }
    }
    if let Some(inner) = &spec.workflow_spec {
        collect_containers(inner, change, privileged);
    }
}

fn push_container(
    container: &ContainerSpec,
    role: &str,
    change: &mut WorkloadChanged,
    privileged: &mut bool,
) {
    *privileged |= container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    let command = command_of(container);
    if !command.is_empty() {
        change.commands.push(command.clone());
    }
    change.containers.push(ContainerImage {
        name: container.name.clone().unwrap_or_default(),
        image: container.image.as_deref().and_then(normalize::parse_image),
        role: role.to_owned(),
        command,
    });
}

fn command_of(container: &ContainerSpec) -> String {
    let mut words = container.command.clone();
    words.extend(container.args.iter().cloned());
    words.join(" ")
}

/// Reads the images a JSON patch (RFC 6902) sets: `replace` or `add` on `.../image`, or a whole
/// container added at `.../containers/N`.
fn json_patch_images(raw: &RawValue) -> Result<Vec<ContainerImage>, DecodeError> {
    let ops: Vec<JsonPatchOp<'_>> = serde_json::from_str(raw.get())
        .map_err(|e| DecodeError::new(Some(FORMAT), format!("invalid JSON patch: {e}")))?;
    let mut containers = Vec::new();
    for op in ops {
        let (Some(path), Some(value)) = (op.path, op.value) else {
            continue;
        };
        if path.ends_with("/image") {
            let image: Option<String> = serde_json::from_str(value.get()).ok();
            containers.push(ContainerImage {
                image: image.as_deref().and_then(normalize::parse_image),
                role: "container".into(),
                ..Default::default()
            });
        } else if path.contains("ontainers/")
            && value.get().starts_with('{')
            && let Ok(container) = serde_json::from_str::<ContainerSpec>(value.get())
        {
            containers.push(ContainerImage {
                name: container.name.clone().unwrap_or_default(),
                image: container.image.as_deref().and_then(normalize::parse_image),
                role: "container".into(),
                command: command_of(&container),
            });
        }
    }
    Ok(containers)
}

fn started_containers(status: PodStatus) -> Option<ContainerStarted> {
    let statuses = status
        .container_statuses
        .into_iter()
        .chain(status.init_container_statuses)
        .chain(status.ephemeral_container_statuses);
    let containers: Vec<StartedContainer> = statuses
        .filter_map(|s| {
            let id = s
                .container_id
                .as_deref()
                .and_then(normalize::container_id)?;
            let digest = s
                .image_id
                .as_deref()
                .and_then(normalize::digest_of_reference);
            let image: Option<Image> = s
                .image
                .as_deref()
                .and_then(normalize::parse_image)
                .map(|image| normalize::with_digest(image, digest));
            Some(StartedContainer {
                id,
                name: s.name.unwrap_or_default(),
                image,
            })
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(ContainerStarted {
        status: status.phase.unwrap_or_default(),
        containers,
    })
}

fn actor(event: &Event<'_>) -> Actor {
    let user = event.user.as_ref();
    let name = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let kind = if name.starts_with("system:serviceaccount:") {
        "service-account"
    } else if name.starts_with("system:node:") {
        "node"
    } else {
        "kubernetes-user"
    };
    let extra = user.and_then(|u| u.extra.as_ref());
    let on_behalf_of = event
        .impersonated_user
        .as_ref()
        .and_then(|u| u.username.clone())
        .or_else(|| extra.and_then(|e| e.canonical_arn.first().or(e.arn.first()).cloned()))
        .unwrap_or_default();
    Actor {
        name,
        kind: kind.to_owned(),
        source_address: event.source_ips.first().cloned().unwrap_or_default(),
        user_agent: event.user_agent.clone().unwrap_or_default(),
        groups: user.map(|u| u.groups.clone()).unwrap_or_default(),
        on_behalf_of,
    }
}

/// Reads the command and target container of an exec or attach from its request URI
/// (`/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&container=web&stdin=true`).
fn access(subresource: &str, request_uri: &str) -> ContainerAccess {
    let query = request_uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    let mut command = Vec::new();
    let mut container = String::new();
    let (mut stdin, mut tty) = (false, false);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "command" => command.push(value),
            "container" => container = value,
            "stdin" => stdin = value == "true" || value == "1",
            "tty" => tty = value == "true" || value == "1",
            _ => {}
        }
    }
    ContainerAccess {
        kind: subresource.to_owned(),
        command: command.join(" "),
        container,
        interactive: stdin && tty,
    }
}

/// Decodes `%XX` escapes and `+` in a URL query value; malformed escapes are kept as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_command_comes_from_the_query() {
        let access = access(
            "exec",
            "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=curl%20x%7Csh&container=web&stdin=true&tty=true",
        );
        assert_eq!(access.command, "sh -c curl x|sh");
        assert_eq!(access.container, "web");
        assert!(access.interactive);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%41+b"), "A b");
    }
}
