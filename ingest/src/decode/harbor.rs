//! Harbor webhooks, in the default payload format (`type`, `occur_at`, `operator`, `event_data`)
//! and the CloudEvents format (`specversion`, `type: harbor.artifact.pushed`, `time`, `data`).
//!
//! `PUSH_ARTIFACT` gives one [`ImagePushed`] per pushed resource; other event types are skipped.
//! When an artifact is pushed by digest (replication does so), Harbor puts the digest in `tag`;
//! such a tag is dropped.

use serde::Deserialize;
use tidemark_proto::v1::{
    Actor, Format, ImagePushed, WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::Harbor;

#[derive(Deserialize)]
struct Webhook {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default, deserialize_with = "json::integer")]
    occur_at: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    time: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    operator: Option<String>,
    #[serde(default)]
    event_data: Option<EventData>,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    #[serde(default, deserialize_with = "json::list")]
    resources: Vec<Resource>,
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default, deserialize_with = "json::text")]
    digest: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    tag: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default, deserialize_with = "json::text")]
    repo_full_name: Option<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let webhook: Webhook =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    if !matches!(
        webhook.event_type.as_str(),
        "PUSH_ARTIFACT" | "harbor.artifact.pushed"
    ) {
        decoded.skip(0, "registry event is not a push");
        return Ok(());
    }
    let time = match (webhook.occur_at, webhook.time.as_deref()) {
        (Some(seconds), _) => normalize::seconds_to_nanos(seconds),
        (None, Some(time)) => normalize::parse_rfc3339(time),
        (None, None) => None,
    }
    .ok_or_else(|| DecodeError::new(Some(FORMAT), "no valid `occur_at` or `time`"))?;
    let data = webhook
        .event_data
        .or(webhook.data)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "push without `event_data`"))?;
    let repository = data.repository.and_then(|r| r.repo_full_name);
    for (index, resource) in data.resources.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let digest = resource
            .digest
            .as_deref()
            .and_then(normalize::normalize_digest);
        let tag = resource
            .tag
            .filter(|t| normalize::normalize_digest(t).is_none())
            .unwrap_or_default();
        let image = resource
            .resource_url
            .as_deref()
            .and_then(normalize::parse_image)
            .or_else(|| repository.as_deref().and_then(normalize::parse_image))
            .ok_or_else(|| {
                DecodeError::new(
                    Some(FORMAT),
                    format!("resources[{index}]: no image reference"),
                )
            })?;
        let mut signal = ctx.signal(Format::Harbor, time, index);
        signal.source_event = webhook.event_type.clone();
        if let Some(id) = &webhook.id {
            signal.dedup_key = format!("harbor/{id}/{index}");
        }
        let tag = if tag.is_empty() && image.tag != "latest" {
            image.tag.clone()
        } else {
            tag
        };
        signal.image = Some(normalize::build_image(
            image.registry,
            image.repository,
            tag.clone(),
            digest.unwrap_or(image.digest),
        ));
        signal.workload = Some(WorkloadKey {
            resolution: WorkloadResolution::None as i32,
            ..Default::default()
        });
        signal.actor = Some(Actor {
            name: webhook.operator.clone().unwrap_or_default(),
            kind: "registry".into(),
            ..Default::default()
        });
        signal.fact = Some(Fact::ImagePushed(ImagePushed {
            media_type: String::new(),
            tags: if tag.is_empty() {
                Vec::new()
            } else {
                vec![tag]
            },
        }));
        decoded.signals.push(signal);
    }
    Ok(())
}
