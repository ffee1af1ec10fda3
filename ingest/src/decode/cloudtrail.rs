//! AWS CloudTrail records for ECS and ECR: one record per message, a `{"Records":[...]}` batch as
//! CloudTrail writes to S3, or (through [`super::eventbridge`]) an EventBridge "AWS API Call via
//! CloudTrail" event.
//!
//! ECS workloads are keyed by account, region and task-definition family, the one name that
//! `RegisterTaskDefinition`, `RunTask`, `CreateService`, `UpdateService` and task state changes
//! all carry. Calls that failed (`errorCode`) and calls tidemark does not correlate are skipped.
//!
//! | call | fact |
//! |---|---|
//! | `RegisterTaskDefinition` | workload changed: images and commands of the container definitions |
//! | `RunTask`, `StartTask` | workload changed: images of the started containers, command overrides |
//! | `CreateService`, `UpdateService` | workload changed: the task-definition revision deployed |
//! | `ExecuteCommand` | container access (ECS Exec) |
//! | ECR `PutImage` | image pushed, with the pusher's identity and the digest |

use serde::Deserialize;
use serde_json::value::RawValue;
use tidemark_proto::v1::{
    Actor, ContainerAccess, ContainerImage, Format, ImagePushed, Platform, WorkloadChanged,
    WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::Cloudtrail;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    event_source: String,
    event_name: String,
    #[serde(default, deserialize_with = "json::text")]
    event_time: Option<String>,
    #[serde(default)]
    user_identity: Option<UserIdentity>,
    #[serde(default, deserialize_with = "json::text")]
    aws_region: Option<String>,
    #[serde(rename = "sourceIPAddress", default, deserialize_with = "json::text")]
    source_ip_address: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    user_agent: Option<String>,
    #[serde(default, borrow)]
    request_parameters: Option<&'a RawValue>,
    #[serde(default, borrow)]
    response_elements: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "json::text")]
    error_code: Option<String>,
    #[serde(rename = "eventID", default, deserialize_with = "json::text")]
    event_id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    recipient_account_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UserIdentity {
    #[serde(rename = "type", default, deserialize_with = "json::text")]
    identity_type: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    arn: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    account_id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    user_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    principal_id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    invoked_by: Option<String>,
    #[serde(default)]
    session_context: Option<SessionContext>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SessionContext {
    #[serde(default)]
    session_issuer: Option<SessionIssuer>,
}

#[derive(Deserialize, Default)]
struct SessionIssuer {
    #[serde(default, deserialize_with = "json::text")]
    arn: Option<String>,
}

/// Request parameters and response elements of the ECS and ECR calls tidemark reads; each call
/// uses a subset.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    #[serde(default, deserialize_with = "json::text")]
    family: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    container_definitions: Vec<ContainerDefinition>,
    #[serde(default, deserialize_with = "json::text")]
    cluster: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    task_definition: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    service_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    service: Option<String>,
    #[serde(default, deserialize_with = "json::integer")]
    desired_count: Option<i64>,
    #[serde(default, deserialize_with = "json::integer")]
    count: Option<i64>,
    #[serde(default)]
    overrides: Option<Overrides>,
    #[serde(default, deserialize_with = "json::text")]
    task: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    container: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    command: Option<String>,
    #[serde(default, deserialize_with = "json::boolean")]
    interactive: Option<bool>,
    #[serde(default, deserialize_with = "json::text")]
    repository_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image_tag: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    registry_id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image_manifest_media_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerDefinition {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image: Option<String>,
    #[serde(default, deserialize_with = "json::strings")]
    command: Vec<String>,
    #[serde(default, deserialize_with = "json::strings")]
    entry_point: Vec<String>,
    #[serde(default, deserialize_with = "json::boolean")]
    privileged: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Overrides {
    #[serde(default, deserialize_with = "json::list")]
    container_overrides: Vec<ContainerDefinition>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    task_definition: Option<TaskDefinition>,
    #[serde(default, deserialize_with = "json::list")]
    tasks: Vec<Task>,
    #[serde(default)]
    service: Option<Service>,
    #[serde(default)]
    image: Option<EcrImage>,
    #[serde(default, deserialize_with = "json::text")]
    task_arn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TaskDefinition {
    #[serde(default, deserialize_with = "json::text")]
    task_definition_arn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Task {
    #[serde(default, deserialize_with = "json::text")]
    task_arn: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    task_definition_arn: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    containers: Vec<ContainerDefinition>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Service {
    #[serde(default, deserialize_with = "json::text")]
    service_name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    task_definition: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EcrImage {
    #[serde(default, deserialize_with = "json::text")]
    registry_id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    repository_name: Option<String>,
    #[serde(default)]
    image_id: Option<EcrImageId>,
    #[serde(default, deserialize_with = "json::text")]
    image_manifest_media_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EcrImageId {
    #[serde(default, deserialize_with = "json::text")]
    image_digest: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image_tag: Option<String>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

/// Decodes one CloudTrail record or a `Records` batch.
pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    if memchr::memmem::find(body, b"\"Records\"").is_some()
        && let Ok(batch) = serde_json::from_slice::<Batch<'_>>(body)
    {
        for (index, record) in batch.records.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            decode_record(record.get().as_bytes(), index, None, ctx, decoded).map_err(|e| {
                DecodeError {
                    reason: format!("Records[{index}]: {}", e.reason),
                    ..e
                }
            })?;
        }
        return Ok(());
    }
    decode_record(body, 0, None, ctx, decoded)
}

/// Decodes one CloudTrail record at `index` of its envelope. `account` names the account when
/// the envelope knows it better than the record (EventBridge).
pub(crate) fn decode_record(
    body: &[u8],
    index: u32,
    account: Option<&str>,
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let record: Record<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    if record
        .error_code
        .as_deref()
        .is_some_and(|code| !code.is_empty())
    {
        decoded.skip(index, "api call failed");
        return Ok(());
    }
    let correlated = matches!(
        (record.event_source.as_str(), record.event_name.as_str()),
        (
            "ecs.amazonaws.com",
            "RegisterTaskDefinition"
                | "RunTask"
                | "StartTask"
                | "CreateService"
                | "UpdateService"
                | "ExecuteCommand"
        ) | ("ecr.amazonaws.com" | "ecr-public.amazonaws.com", "PutImage")
    );
    if !correlated {
        decoded.skip(index, "api call not correlated");
        return Ok(());
    }
    let time = record
        .event_time
        .as_deref()
        .and_then(normalize::parse_rfc3339)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no valid `eventTime`"))?;
    let params: Params = parse(record.request_parameters, "requestParameters")?;
    let response: Response = parse(record.response_elements, "responseElements")?;
    let identity = record.user_identity.unwrap_or_default();
    let account = account
        .map(str::to_owned)
        .or(record.recipient_account_id.clone())
        .or(identity.account_id.clone())
        .unwrap_or_default();
    let region = record.aws_region.clone().unwrap_or_default();

    let mut signal = ctx.signal(Format::Cloudtrail, time, index);
    signal.source_event = record.event_name.clone();
    if let Some(id) = &record.event_id {
        signal.dedup_key = format!("cloudtrail/{id}");
    }
    signal.actor = Some(Actor {
        name: identity
            .arn
            .clone()
            .or(identity.user_name.clone())
            .or(identity.principal_id.clone())
            .or(identity.invoked_by.clone())
            .unwrap_or_default(),
        kind: format!(
            "iam:{}",
            identity.identity_type.as_deref().unwrap_or("unknown")
        ),
        source_address: record.source_ip_address.clone().unwrap_or_default(),
        user_agent: record.user_agent.clone().unwrap_or_default(),
        groups: Vec::new(),
        on_behalf_of: identity
            .session_context
            .and_then(|c| c.session_issuer)
            .and_then(|i| i.arn)
            .unwrap_or_default(),
    });
    let ecs_key = |cluster: Option<&str>, family: &str, service: Option<&str>| WorkloadKey {
        platform: Platform::Ecs as i32,
        cluster: cluster.map(short_name).unwrap_or_default().to_owned(),
        kind: "TaskFamily".into(),
        name: family.to_owned(),
        account: account.clone(),
        region: region.clone(),
        resolution: WorkloadResolution::Explicit as i32,
        service: service.map(short_name).unwrap_or_default().to_owned(),
        ..Default::default()
    };

    let fact = match record.event_name.as_str() {
        "RegisterTaskDefinition" => {
            let revision = response
                .task_definition
                .and_then(|t| t.task_definition_arn)
                .map(|arn| short_name(&arn).to_owned())
                .unwrap_or_default();
            let family = params
                .family
                .clone()
                .or_else(|| family_of(&revision).map(str::to_owned))
                .ok_or_else(|| {
                    DecodeError::new(Some(FORMAT), "RegisterTaskDefinition without `family`")
                })?;
            signal.workload = Some(ecs_key(None, &family, None));
            let mut change = ecs_change(&record.event_name, revision);
            for definition in &params.container_definitions {
                push_definition(definition, &mut change);
            }
            Fact::WorkloadChanged(change)
        }
        "RunTask" | "StartTask" => {
            let task = response.tasks.first();
            let revision = task
                .and_then(|t| t.task_definition_arn.as_deref())
                .or(params.task_definition.as_deref())
                .map(|td| short_name(td).to_owned())
                .unwrap_or_default();
            let family = family_of(&revision).ok_or_else(|| {
                DecodeError::new(Some(FORMAT), "RunTask without `taskDefinition`")
            })?;
            let mut key = ecs_key(params.cluster.as_deref(), family, None);
            key.instance = task.and_then(|t| t.task_arn.clone()).unwrap_or_default();
            signal.workload = Some(key);
            let mut change = ecs_change(&record.event_name, revision.clone());
            change.replicas = params
                .count
                .unwrap_or_else(|| i64::try_from(response.tasks.len()).unwrap_or(0));
            for container in response.tasks.iter().flat_map(|t| &t.containers) {
                push_definition(container, &mut change);
            }
            for container_override in params.overrides.iter().flat_map(|o| &o.container_overrides) {
                let command = command_of(container_override);
                if !command.is_empty() {
                    change.commands.push(command);
                }
            }
            Fact::WorkloadChanged(change)
        }
        "CreateService" | "UpdateService" => {
            let service_name = params
                .service_name
                .as_deref()
                .or(params.service.as_deref())
                .or(response
                    .service
                    .as_ref()
                    .and_then(|s| s.service_name.as_deref()));
            let revision = params
                .task_definition
                .as_deref()
                .or(response
                    .service
                    .as_ref()
                    .and_then(|s| s.task_definition.as_deref()))
                .map(|td| short_name(td).to_owned())
                .unwrap_or_default();
            let key = match family_of(&revision) {
                Some(family) => ecs_key(params.cluster.as_deref(), family, service_name),
                None => {
                    // A restart without a new task definition names only the service: the
                    // correlator binds it to its family from an earlier CreateService.
                    let service = service_name.map(short_name).ok_or_else(|| {
                        DecodeError::new(
                            Some(FORMAT),
                            "service call without service or task definition",
                        )
                    })?;
                    WorkloadKey {
                        kind: "Service".into(),
                        ..ecs_key(params.cluster.as_deref(), service, Some(service))
                    }
                }
            };
            signal.workload = Some(key);
            let mut change = ecs_change(&record.event_name, revision);
            change.replicas = params.desired_count.unwrap_or_default();
            Fact::WorkloadChanged(change)
        }
        "ExecuteCommand" => {
            let task = params
                .task
                .clone()
                .or(response.task_arn)
                .unwrap_or_default();
            // The record names the task, not its family: key the task by its id so that
            // sessions into different tasks never share one `_` workload.
            let task_id = task.rsplit('/').next().unwrap_or(&task).to_owned();
            signal.workload = Some(WorkloadKey {
                kind: "Task".into(),
                name: task_id,
                instance: task.clone(),
                resolution: WorkloadResolution::Instance as i32,
                ..ecs_key(params.cluster.as_deref(), "", None)
            });
            Fact::ContainerAccess(ContainerAccess {
                kind: "ecs-execute-command".into(),
                command: params.command.clone().unwrap_or_default(),
                container: params.container.clone().unwrap_or_default(),
                interactive: params.interactive.unwrap_or(false),
            })
        }
        _ => {
            // PutImage, the only correlated call left.
            let image = response.image.unwrap_or_default();
            let registry_id = image
                .registry_id
                .or(params.registry_id)
                .unwrap_or(account.clone());
            let repository = image
                .repository_name
                .or(params.repository_name)
                .ok_or_else(|| {
                    DecodeError::new(Some(FORMAT), "PutImage without `repositoryName`")
                })?;
            let image_id = image.image_id.unwrap_or_default();
            let tag = image_id.image_tag.or(params.image_tag).unwrap_or_default();
            let digest = image_id
                .image_digest
                .as_deref()
                .and_then(normalize::normalize_digest);
            let registry = if record.event_source.starts_with("ecr-public") {
                "public.ecr.aws".to_owned()
            } else {
                format!("{registry_id}.dkr.ecr.{region}.amazonaws.com")
            };
            signal.image = Some(normalize::build_image(
                registry,
                repository,
                tag.clone(),
                digest.unwrap_or_default(),
            ));
            signal.workload = Some(WorkloadKey {
                resolution: WorkloadResolution::None as i32,
                ..Default::default()
            });
            Fact::ImagePushed(ImagePushed {
                media_type: image
                    .image_manifest_media_type
                    .or(params.image_manifest_media_type)
                    .unwrap_or_default(),
                tags: if tag.is_empty() {
                    Vec::new()
                } else {
                    vec![tag]
                },
            })
        }
    };
    if signal.image.is_none()
        && let Fact::WorkloadChanged(change) = &fact
    {
        signal.image = change.containers.first().and_then(|c| c.image.clone());
    }
    signal.fact = Some(fact);
    decoded.signals.push(signal);
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de> + Default>(
    raw: Option<&RawValue>,
    field: &str,
) -> Result<T, DecodeError> {
    match raw {
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str(raw.get())
            .map_err(|e| DecodeError::new(Some(FORMAT), format!("invalid `{field}`: {e}"))),
        _ => Ok(T::default()),
    }
}

fn ecs_change(call: &str, revision: String) -> WorkloadChanged {
    WorkloadChanged {
        verb: call.to_owned(),
        resource: "ecs".into(),
        revision,
        ..Default::default()
    }
}

fn push_definition(definition: &ContainerDefinition, change: &mut WorkloadChanged) {
    change.privileged |= definition.privileged == Some(true);
    let command = command_of(definition);
    if !command.is_empty() {
        change.commands.push(command.clone());
    }
    change.containers.push(ContainerImage {
        name: definition.name.clone().unwrap_or_default(),
        image: definition.image.as_deref().and_then(normalize::parse_image),
        role: "container".into(),
        command,
    });
}

fn command_of(definition: &ContainerDefinition) -> String {
    let mut words = definition.entry_point.clone();
    words.extend(definition.command.iter().cloned());
    words.join(" ")
}

/// Returns the last segment of an ARN or path (`arn:...:cluster/prod` gives `prod`).
pub(crate) fn short_name(value: &str) -> &str {
    value.rsplit('/').next().unwrap_or(value)
}

/// Returns the family of a task definition `family[:revision]` or its ARN.
pub(crate) fn family_of(task_definition: &str) -> Option<&str> {
    let short = short_name(task_definition);
    let family = short.split(':').next().unwrap_or(short);
    (!family.is_empty()).then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_comes_from_revision_or_arn() {
        assert_eq!(family_of("web:42"), Some("web"));
        assert_eq!(
            family_of("arn:aws:ecs:eu-west-1:111122223333:task-definition/web:42"),
            Some("web")
        );
        assert_eq!(family_of("web"), Some("web"));
        assert_eq!(family_of(""), None);
    }
}
