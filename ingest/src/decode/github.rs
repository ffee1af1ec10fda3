//! GitHub Packages webhooks (`package`, and the legacy `registry_package`) for container images
//! on ghcr.io.
//!
//! `published` and `updated` actions on container packages give an [`ImagePushed`] with the
//! sender as pusher. GitHub's own examples are inconsistent (`package_type: npm` beside
//! `ecosystem: docker`, zero timestamps, empty tags), so a package counts as a container when any
//! of those fields says so, and a zero timestamp falls back to the record's time.

use serde::Deserialize;
use tidemark_proto::v1::{
    Actor, Format, ImagePushed, WorkloadKey, WorkloadResolution, signal::Fact,
};

use super::json;
use super::normalize;
use super::{DecodeError, Decoded, InputFormat, RecordContext};

const FORMAT: InputFormat = InputFormat::GithubPackage;

#[derive(Deserialize)]
struct Webhook {
    #[serde(default, deserialize_with = "json::text")]
    action: Option<String>,
    #[serde(default)]
    package: Option<Package>,
    #[serde(default)]
    registry_package: Option<Package>,
    #[serde(default)]
    sender: Option<Sender>,
}

#[derive(Deserialize)]
struct Package {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    ecosystem: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    package_type: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    updated_at: Option<String>,
    #[serde(default)]
    owner: Option<Sender>,
    #[serde(default)]
    package_version: Option<PackageVersion>,
    #[serde(default)]
    registry: Option<Registry>,
}

#[derive(Deserialize)]
struct PackageVersion {
    #[serde(default, deserialize_with = "json::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    version: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    package_url: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    updated_at: Option<String>,
    #[serde(default)]
    container_metadata: Option<ContainerMetadata>,
}

#[derive(Deserialize)]
struct ContainerMetadata {
    #[serde(default)]
    tag: Option<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(default, deserialize_with = "json::text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::text")]
    digest: Option<String>,
}

#[derive(Deserialize)]
struct Registry {
    #[serde(rename = "type", default, deserialize_with = "json::text")]
    registry_type: Option<String>,
}

#[derive(Deserialize)]
struct Sender {
    #[serde(default, deserialize_with = "json::text")]
    login: Option<String>,
}

pub(crate) fn decode(
    body: &[u8],
    ctx: &RecordContext,
    decoded: &mut Decoded,
) -> Result<(), DecodeError> {
    let webhook: Webhook =
        serde_json::from_slice(body).map_err(|e| DecodeError::json(FORMAT, &e))?;
    if !matches!(webhook.action.as_deref(), Some("published" | "updated")) {
        decoded.skip(0, "package event is not a publish");
        return Ok(());
    }
    let package = webhook
        .package
        .or(webhook.registry_package)
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no `package` or `registry_package`"))?;
    let is_container = [&package.ecosystem, &package.package_type]
        .into_iter()
        .flatten()
        .any(|kind| kind.eq_ignore_ascii_case("docker") || kind.eq_ignore_ascii_case("container"))
        || package
            .registry
            .as_ref()
            .and_then(|r| r.registry_type.as_deref())
            == Some("CONTAINER");
    if !is_container {
        decoded.skip(0, "package is not a container image");
        return Ok(());
    }
    let version = package
        .package_version
        .ok_or_else(|| DecodeError::new(Some(FORMAT), "no `package_version`"))?;
    // A year-1 timestamp is GitHub's placeholder for "unknown".
    let time = [&version.updated_at, &package.updated_at]
        .into_iter()
        .flatten()
        .filter_map(|t| normalize::parse_rfc3339(t))
        .find(|t| *t > 0)
        .unwrap_or(ctx.fallback_time_unix_nano);
    let tag_metadata = version.container_metadata.and_then(|m| m.tag);
    let digest = [
        version.version.as_deref(),
        tag_metadata.as_ref().and_then(|t| t.digest.as_deref()),
    ]
    .into_iter()
    .flatten()
    .find_map(normalize::normalize_digest)
    .unwrap_or_default();
    let tag = tag_metadata.and_then(|t| t.name).unwrap_or_default();
    // `package_url` is `ghcr.io/<owner>/<name>:<tag>`, with an empty tag when none was pushed.
    let url = version.package_url.unwrap_or_default();
    let path = url.trim_end_matches(':');
    let path = match path.rsplit_once(':') {
        Some((name, _)) if !name.ends_with('/') && !name.contains('/') => path,
        Some((name, _)) => name,
        None => path,
    };
    let (registry, repository) = match path.split_once('/') {
        Some((host, repository)) if host.contains('.') => (host.to_owned(), repository.to_owned()),
        _ => {
            let owner = package.owner.and_then(|o| o.login).unwrap_or_default();
            let name = package.name.unwrap_or_default();
            ("ghcr.io".to_owned(), format!("{owner}/{name}"))
        }
    };
    let mut signal = ctx.signal(Format::GithubPackage, time, 0);
    signal.source_event = webhook.action.unwrap_or_default();
    if let Some(id) = version.id {
        signal.dedup_key = format!("github-package/{id}");
    }
    signal.image = Some(normalize::build_image(
        registry,
        repository.to_ascii_lowercase(),
        tag.clone(),
        digest,
    ));
    signal.workload = Some(WorkloadKey {
        resolution: WorkloadResolution::None as i32,
        ..Default::default()
    });
    signal.actor = Some(Actor {
        name: webhook.sender.and_then(|s| s.login).unwrap_or_default(),
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
    Ok(())
}
