//! Docker Hub webhooks: `push_data{pushed_at, pusher, tag}` and `repository{repo_name, ...}`.
//!
//! Docker Hub sends only pushes, and **no digest**: the [`ImagePushed`] it gives names the tag
//! and the pusher, and the correlator must take the digest from the runtime.

use serde::Deserialize;
use tidemark_proto::v1::{
    Actor, Format, ImagePushed, WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::DockerHub;

#[derive(Deserialize)]
struct Webhook {
    push_data: PushData,
    repository: Repository,
}

#[derive(Deserialize)]
struct PushData {
    #[serde(default, deserialize_with = "json::integer")]
    pushed_at: Option<i64>,
    #[serde(default, deserialize_with = "json::text")]
    pusher: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default, deserialize_with = "json::text")]
    repo_name: Option<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let webhook: Webhook =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    let time = webhook
        .push_data
        .pushed_at
        .and_then(normalize::seconds_to_nanos)
        .unwrap_or(ctx.fallback_time_unix_nano);
    let repository = webhook
        .repository
        .repo_name
        .filter(|name| !name.is_empty())
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no `repository.repo_name`"))?;
    let tag = webhook
        .push_data
        .tag
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "latest".into());
    let mut signal = ctx.signal(Format::DockerHub, time, 0);
    signal.source_event = "push".into();
    signal.image = Some(normalize::build_image(
        normalize::DOCKER_HUB.to_owned(),
        repository,
        tag.clone(),
        String::new(),
    ));
    signal.workload = Some(WorkloadKey {
        resolution: WorkloadResolution::None as i32,
        ..Default::default()
    });
    signal.actor = Some(Actor {
        name: webhook.push_data.pusher.unwrap_or_default(),
        kind: "registry".into(),
        ..Default::default()
    });
    signal.fact = Some(Fact::ImagePushed(ImagePushed {
        media_type: String::new(),
        tags: vec![tag],
    }));
    decoded.signals.push(signal);
    Ok(())
}
