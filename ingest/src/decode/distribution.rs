//! CNCF Distribution (registry v2) notifications: `{"events":[...]}`, posted with media type
//! `application/vnd.docker.distribution.events.v2+json`.
//!
//! One push gives one event for the manifest and one per layer blob; only manifest pushes
//! (image manifests, OCI manifests, indexes and manifest lists) become [`ImagePushed`] signals.
//! Pulls, mounts, deletes and layer pushes are skipped. The registry host is the request's
//! `host`, or the host of the target URL. The pusher's address is `request.addr`, which the
//! registry fills with the client's `ip:port` unless a proxy header names the client; the port
//! is dropped so that the address compares with the source IPs of other sources.

use serde::Deserialize;
use tidemark_proto::v1::{
    Actor, Format, ImagePushed, WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::Distribution;

/// Media types of manifests; every other media type in a push event is a blob.
const MANIFEST_MEDIA_TYPES: [&str; 5] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default, deserialize_with = "json::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    timestamp: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    action: Option<String>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    actor: Option<EventActor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default, deserialize_with = "json::text")]
    media_type: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    digest: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    repository: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    url: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "json::text")]
    addr: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    host: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    useragent: Option<String>,
}

#[derive(Deserialize)]
struct EventActor {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    for (index, event) in envelope.events.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if event.action.as_deref() != Some("push") {
            decoded.skip(index, "registry event is not a push");
            continue;
        }
        let Some(target) = event.target else {
            return Err(DecodeError::new(
                Some(FORMAT),
                format!("events[{index}]: push without `target`"),
            ));
        };
        let media_type = target.media_type.unwrap_or_default();
        if !MANIFEST_MEDIA_TYPES.contains(&media_type.as_str()) {
            decoded.skip(index, "registry push of a layer");
            continue;
        }
        let time = event
            .timestamp
            .as_deref()
            .and_then(normalize::parse_rfc3339)
            .ok_or_else(|| {
                DecodeError::new(
                    Some(FORMAT),
                    format!("events[{index}]: no valid `timestamp`"),
                )
            })?;
        let repository = target.repository.filter(|r| !r.is_empty()).ok_or_else(|| {
            DecodeError::new(
                Some(FORMAT),
                format!("events[{index}]: no `target.repository`"),
            )
        })?;
        let request = event.request;
        let registry = request
            .as_ref()
            .and_then(|r| r.host.clone())
            .or_else(|| target.url.as_deref().and_then(url_host))
            .unwrap_or_default();
        let digest = target
            .digest
            .as_deref()
            .and_then(normalize::normalize_digest)
            .unwrap_or_default();
        let tag = target.tag.unwrap_or_default();
        let mut signal = ctx.signal(Format::Distribution, time, index);
        signal.source_event = "push".into();
        signal.dedup_key = event
            .id
            .map(|id| format!("distribution/{id}"))
            .unwrap_or_default();
        signal.image = Some(normalize::build_image(
            registry,
            repository,
            tag.clone(),
            digest,
        ));
        signal.workload = Some(WorkloadKey {
            resolution: WorkloadResolution::None as i32,
            ..Default::default()
        });
        signal.actor = Some(Actor {
            name: event.actor.and_then(|a| a.name).unwrap_or_default(),
            kind: "registry".into(),
            source_address: request
                .as_ref()
                .and_then(|r| r.addr.as_deref())
                .map(source_ip)
                .unwrap_or_default(),
            user_agent: request.and_then(|r| r.useragent).unwrap_or_default(),
            ..Default::default()
        });
        signal.fact = Some(Fact::ImagePushed(ImagePushed {
            media_type,
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

/// Returns the IP of a socket address (`198.51.100.7:42961`, `[2001:db8::7]:443`); any other
/// address (a bare IP, a host name) is returned as it is.
fn source_ip(addr: &str) -> String {
    match addr.trim().parse::<std::net::SocketAddr>() {
        Ok(socket) => socket.ip().to_string(),
        Err(_) => addr.trim().to_owned(),
    }
}

/// Returns the `host[:port]` of an `http(s)://host[:port]/path` URL.
pub(crate) fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| host.to_owned())
}
