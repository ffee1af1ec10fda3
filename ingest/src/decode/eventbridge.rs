//! Amazon EventBridge events: the envelope `version`, `id`, `detail-type`, `source`, `account`,
//! `time`, `region`, `detail`.
//!
//! - `AWS API Call via CloudTrail`: `detail` is a CloudTrail record, decoded by
//!   [`super::cloudtrail`].
//! - `ECS Task State Change`: a [`ContainerStarted`] binding each container's runtime id to the
//!   task-definition family and the image (with its digest for ECR images).
//! - `ECR Image Action`: an [`ImagePushed`] for a successful `PUSH`. The event has no actor;
//!   CloudTrail `PutImage` carries the pusher.
//!
//! Other detail types are skipped.

use serde::Deserialize;
use serde_json::value::RawValue;
use tidemark_proto::v1::{
    ContainerStarted, Format, ImagePushed, Platform, StartedContainer, WorkloadKey,
    WorkloadResolution, signal::Fact,
};

use super::cloudtrail::{self, family_of, short_name};
use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::Eventbridge;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default, deserialize_with = "json::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    account: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    region: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    time: Option<String>,
    #[serde(borrow)]
    detail: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskStateChange {
    #[serde(default, deserialize_with = "json::text")]
    cluster_arn: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    task_arn: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    task_definition_arn: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    group: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    last_status: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    updated_at: Option<String>,
    #[serde(default, deserialize_with = "json::list")]
    containers: Vec<TaskContainer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskContainer {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    image_digest: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    runtime_id: Option<String>,
}

#[derive(Deserialize)]
struct EcrImageAction {
    #[serde(default, deserialize_with = "json::text")]
    result: Option<String>,
    #[serde(rename = "repository-name")]
    repository_name: String,
    #[serde(rename = "image-digest", default, deserialize_with = "json::text")]
    image_digest: Option<String>,
    #[serde(rename = "action-type", default, deserialize_with = "json::text")]
    action_type: Option<String>,
    #[serde(rename = "image-tag", default, deserialize_with = "json::text")]
    image_tag: Option<String>,
    #[serde(
        rename = "manifest-media-type",
        default,
        deserialize_with = "json::text"
    )]
    manifest_media_type: Option<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    let detail = envelope.detail.get().as_bytes();
    match envelope.detail_type.as_str() {
        "AWS API Call via CloudTrail" => {
            return cloudtrail::decode_record(detail, 0, envelope.account.as_deref(), ctx, decoded);
        }
        "ECS Task State Change" | "ECR Image Action" => {}
        _ => {
            decoded.skip(0, "eventbridge detail type not correlated");
            return Ok(());
        }
    }
    let account = envelope.account.clone().unwrap_or_default();
    let region = envelope.region.clone().unwrap_or_default();
    let envelope_time = envelope.time.as_deref().and_then(normalize::parse_rfc3339);
    let dedup_key = envelope
        .id
        .as_deref()
        .map(|id| format!("eventbridge/{id}"))
        .unwrap_or_default();

    if envelope.detail_type == "ECR Image Action" {
        let action: EcrImageAction =
            serde_json::from_slice(detail).map_err(|e| DecodeError::json(FORMAT, &e))?;
        if action.action_type.as_deref() != Some("PUSH")
            || action.result.as_deref() != Some("SUCCESS")
        {
            decoded.skip(0, "ecr action is not a successful push");
            return Ok(());
        }
        let time =
            envelope_time.ok_or_else(|| DecodeError::new(Some(FORMAT), "no valid `time`"))?;
        let mut signal = ctx.signal(Format::EcrImageAction, time, 0);
        signal.dedup_key = dedup_key;
        signal.source_event = envelope.detail_type.clone();
        let tag = action.image_tag.unwrap_or_default();
        let digest = action
            .image_digest
            .as_deref()
            .and_then(normalize::normalize_digest);
        let registry = format!("{account}.dkr.ecr.{region}.amazonaws.com");
        signal.image = Some(normalize::build_image(
            registry,
            action.repository_name,
            tag.clone(),
            digest.unwrap_or_default(),
        ));
        signal.workload = Some(WorkloadKey {
            resolution: WorkloadResolution::None as i32,
            ..Default::default()
        });
        signal.fact = Some(Fact::ImagePushed(ImagePushed {
            media_type: action.manifest_media_type.unwrap_or_default(),
            tags: if tag.is_empty() {
                Vec::new()
            } else {
                vec![tag]
            },
        }));
        decoded.signals.push(signal);
        return Ok(());
    }

    let task: TaskStateChange =
        serde_json::from_slice(detail).map_err(|e| DecodeError::json(FORMAT, &e))?;
    let time = task
        .updated_at
        .as_deref()
        .and_then(normalize::parse_rfc3339)
        .or(envelope_time)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no valid `time`"))?;
    let group = task.group.as_deref().unwrap_or_default();
    let family = task
        .task_definition_arn
        .as_deref()
        .and_then(family_of)
        .or_else(|| group.strip_prefix("family:"))
        .ok_or_else(|| {
            DecodeError::new(
                Some(FORMAT),
                "task state change without `taskDefinitionArn`",
            )
        })?;
    let mut signal = ctx.signal(Format::EcsTaskState, time, 0);
    signal.dedup_key = dedup_key;
    signal.source_event = envelope.detail_type.clone();
    signal.workload = Some(WorkloadKey {
        platform: Platform::Ecs as i32,
        cluster: task
            .cluster_arn
            .as_deref()
            .map(short_name)
            .unwrap_or_default()
            .to_owned(),
        kind: "TaskFamily".into(),
        name: family.to_owned(),
        account,
        region,
        resolution: WorkloadResolution::Explicit as i32,
        instance: task.task_arn.clone().unwrap_or_default(),
        service: group
            .strip_prefix("service:")
            .unwrap_or_default()
            .to_owned(),
        ..Default::default()
    });
    let containers: Vec<StartedContainer> = task
        .containers
        .into_iter()
        .map(|c| {
            let digest = c
                .image_digest
                .as_deref()
                .and_then(normalize::normalize_digest);
            StartedContainer {
                id: c
                    .runtime_id
                    .as_deref()
                    .and_then(normalize::container_id)
                    .unwrap_or_default(),
                name: c.name.unwrap_or_default(),
                image: c
                    .image
                    .as_deref()
                    .and_then(normalize::parse_image)
                    .map(|i| normalize::with_digest(i, digest)),
            }
        })
        .collect();
    signal.image = containers.first().and_then(|c| c.image.clone());
    signal.fact = Some(Fact::ContainerStarted(ContainerStarted {
        status: task.last_status.unwrap_or_default(),
        containers,
    }));
    decoded.signals.push(signal);
    Ok(())
}
