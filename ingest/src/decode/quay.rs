//! Quay `repo_push` notifications: `repository`, `namespace`, `name`, `docker_url`,
//! `updated_tags`.
//!
//! Quay sends neither the pusher nor a digest nor a time: the [`ImagePushed`] it gives names the
//! image and its updated tags, at the record's time (the Kafka timestamp when there is one).

use serde::Deserialize;
use tidemark_proto::v1::{Format, ImagePushed, WorkloadKey, WorkloadResolution, signal::Fact};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::Quay;

#[derive(Deserialize)]
struct Notification {
    docker_url: String,
    #[serde(default, deserialize_with = "json::strings")]
    updated_tags: Vec<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let notification: Notification =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    let first_tag = notification
        .updated_tags
        .first()
        .cloned()
        .unwrap_or_default();
    let reference = if first_tag.is_empty() {
        notification.docker_url.clone()
    } else {
        format!("{}:{first_tag}", notification.docker_url)
    };
    let image = normalize::parse_image(&reference)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "invalid `docker_url`"))?;
    let mut signal = ctx.signal(Format::Quay, ctx.fallback_time_unix_nano, 0);
    signal.source_event = "repo_push".into();
    signal.image = Some(image);
    signal.workload = Some(WorkloadKey {
        resolution: WorkloadResolution::None as i32,
        ..Default::default()
    });
    signal.fact = Some(Fact::ImagePushed(ImagePushed {
        media_type: String::new(),
        tags: notification.updated_tags,
    }));
    decoded.signals.push(signal);
    Ok(())
}
