//! Normalization shared by every decoder: image references, container ids, pod owners, times.
//!
//! Sources name the same thing in different ways (`nginx` in a pod spec, `docker.io/library/nginx:latest`
//! from the runtime, `docker-pullable://...@sha256:...` from some kubelets). Everything a decoder
//! puts into a signal goes through here, so that the correlator compares like with like.

use tidemark_proto::v1::{Image, Platform, WorkloadKey, WorkloadResolution};

/// Registry host that Docker Hub short names resolve to.
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// Runtime prefixes that some sources put in front of image references or container ids.
const REFERENCE_PREFIXES: [&str; 5] = [
    "docker-pullable://",
    "docker://",
    "containerd://",
    "cri-o://",
    "crio://",
];

/// Parses an image reference the way container runtimes do.
///
/// `nginx` becomes `docker.io/library/nginx:latest`, `bob/app` becomes `docker.io/bob/app:latest`,
/// `index.docker.io/...` becomes `docker.io/...`, and a reference pinned by digest keeps the digest
/// (and no implied `latest` tag). Returns `None` for an empty or obviously malformed reference.
pub(crate) fn parse_image(raw: &str) -> Option<Image> {
    let mut rest = raw.trim();
    for prefix in REFERENCE_PREFIXES {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            rest = stripped;
        }
    }
    if rest.is_empty() || rest.len() > 1024 || rest.contains(char::is_whitespace) {
        return None;
    }
    // A bare digest names content, not a repository: keep the digest alone.
    if let Some(digest) = normalize_digest(rest) {
        return Some(Image {
            reference: digest.clone(),
            digest,
            ..Image::default()
        });
    }
    let (name_and_tag, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, normalize_digest(digest)),
        None => (rest, None),
    };
    // A tag is the text after the last `:` of the last path component (a `:` earlier is a port).
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_and_tag[..last_slash + i],
            &name_and_tag[last_slash + i + 1..],
        ),
        None => (name_and_tag, ""),
    };
    if name.is_empty() || name.ends_with('/') {
        return None;
    }
    let (registry, repository) = split_registry(name);
    let tag = match (tag.is_empty(), digest.is_some()) {
        (true, false) => "latest".to_owned(),
        _ => tag.to_owned(),
    };
    Some(build_image(
        registry,
        repository,
        tag,
        digest.unwrap_or_default(),
    ))
}

/// Builds an image from its parts, normalizing the registry host and filling `reference`.
pub(crate) fn build_image(
    registry: String,
    repository: String,
    tag: String,
    digest: String,
) -> Image {
    let mut registry = registry.to_ascii_lowercase();
    let mut repository = repository;
    if registry == "index.docker.io" || registry == "registry-1.docker.io" || registry.is_empty() {
        registry = DOCKER_HUB.to_owned();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository.insert_str(0, "library/");
    }
    let mut reference = String::with_capacity(registry.len() + repository.len() + 80);
    reference.push_str(&registry);
    reference.push('/');
    reference.push_str(&repository);
    if !tag.is_empty() {
        reference.push(':');
        reference.push_str(&tag);
    }
    if !digest.is_empty() {
        reference.push('@');
        reference.push_str(&digest);
    }
    Image {
        reference,
        registry,
        repository,
        tag,
        digest,
    }
}

/// Splits `host[:port]/path` into registry and repository, following the Docker rule: the first
/// component is a registry only if it has a `.` or a `:`, or is `localhost`.
fn split_registry(name: &str) -> (String, String) {
    if let Some((first, rest)) = name.split_once('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        return (first.to_owned(), rest.to_owned());
    }
    (DOCKER_HUB.to_owned(), name.to_owned())
}

/// Returns `algo:hex` when `raw` is a well-formed content digest (`sha256` with 64 hex digits or
/// `sha512` with 128), lower-cased; `None` otherwise.
pub(crate) fn normalize_digest(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (algorithm, hex) = raw.split_once(':')?;
    let expected = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    if hex.len() != expected || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{algorithm}:{}", hex.to_ascii_lowercase()))
}

/// Returns the digest part of `repo@sha256:...` (Tetragon `image.id`, kubelet `imageID`).
pub(crate) fn digest_of_reference(raw: &str) -> Option<String> {
    // A bare `sha256:...` (the image id some runtimes report) is the digest of the image's
    // configuration, not of the manifest a registry push names: it is not a repository digest.
    let (_, digest) = raw.rsplit_once('@')?;
    normalize_digest(digest)
}

/// Normalizes a container id: strips the runtime prefix and lower-cases it. Returns `None` when
/// what is left is not hex (ids of any length are accepted, since sources truncate them
/// differently: 12 hex in Falco, 31 in Tetragon's `docker` field, 64 elsewhere).
pub(crate) fn container_id(raw: &str) -> Option<String> {
    let mut id = raw.trim();
    for prefix in REFERENCE_PREFIXES {
        if let Some(stripped) = id.strip_prefix(prefix) {
            id = stripped;
        }
    }
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(id.to_ascii_lowercase())
}

/// Characters Kubernetes uses for generated name suffixes (`rand.SafeEncodeString`): no vowels,
/// no `0`, `1` or `3`, so that suffixes never spell words.
fn is_generated_char(b: u8) -> bool {
    matches!(b, b'b'..=b'd' | b'f'..=b'h' | b'j'..=b'n' | b'p'..=b't' | b'v' | b'w' | b'x' | b'z')
        || matches!(b, b'2' | b'4'..=b'9')
}

fn is_generated_suffix(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(is_generated_char)
}

/// Fewest digits of the suffix the CronJob controller gives the Jobs it creates: the scheduled
/// time in minutes since the epoch, which has eight digits from 1989 until 2160.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

/// Returns whether `s` is the scheduled-time suffix of a CronJob-created Job.
fn is_cronjob_suffix(s: &str) -> bool {
    s.len() >= CRONJOB_SUFFIX_MIN_DIGITS && s.bytes().all(|b| b.is_ascii_digit())
}

/// Returns whether `s` is a StatefulSet ordinal: decimal digits without a leading zero, and
/// fewer digits than a CronJob suffix, so that the two suffix families never overlap.
fn is_ordinal(s: &str) -> bool {
    (1..CRONJOB_SUFFIX_MIN_DIGITS).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// Returns whether `s` could be the random suffix of a generated name when what precedes it is
/// already known to be generated: any five lowercase letters or digits.
fn is_loose_suffix(s: &str) -> bool {
    s.len() == 5
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Derives the controller that owns a pod from the pod's generated name.
///
/// Controllers name their pods in three ways, told apart by the last one or two segments:
/// - `<job>-<5 chars>`: the 5-character random suffix the API server appends for `generateName`.
///   What precedes it is a ReplicaSet (`web-7c9d9f6b8-x2l4p`: the pod-template hash, so
///   Deployment `web`), a CronJob-created Job (`backup-29012345-x2l4p`: the scheduled time in
///   minutes, 8 or more digits, so CronJob `backup`), or the controller itself
///   (`node-exporter-x2l4p`: a DaemonSet, Job or bare ReplicaSet, kind left empty).
/// - `<statefulset>-<ordinal>` (`db-0`, `kafka-12`): StatefulSet `db`. An ordinal has no leading
///   zero and fewer than 8 digits.
/// - anything else (`kubecon`, `redis-alpha`) is taken to be a bare pod, keyed by itself.
///
/// Random suffixes use only consonants and the digits 2 and 4 to 9, so a 5-digit suffix made of
/// those (`db-24567`) reads as random, not as an ordinal; both give the same name `db`. A
/// pod-template hash can also be all digits; an all-digit segment of 8 or more digits is read as
/// a CronJob schedule time, which is far commoner, and gives the same name either way. A bare pod
/// named like a StatefulSet pod (`test-1`) is taken for one: every source that knows only the pod
/// name makes the same guess, so its evidence still shares one key.
pub(crate) fn owner_from_pod_name(pod: &str) -> (String, &'static str, WorkloadResolution) {
    if let Some((head, suffix)) = pod.rsplit_once('-') {
        if let Some((base, segment)) = head.rsplit_once('-')
            && !base.is_empty()
            && is_loose_suffix(suffix)
        {
            if is_cronjob_suffix(segment) {
                return (base.to_owned(), "CronJob", WorkloadResolution::PodName);
            }
            if is_generated_suffix(suffix, 5, 5) && is_generated_suffix(segment, 6, 10) {
                return (base.to_owned(), "Deployment", WorkloadResolution::PodName);
            }
        }
        if !head.is_empty() && is_generated_suffix(suffix, 5, 5) {
            return (head.to_owned(), "", WorkloadResolution::PodName);
        }
        if !head.is_empty() && is_ordinal(suffix) {
            return (head.to_owned(), "StatefulSet", WorkloadResolution::PodName);
        }
    }
    (pod.to_owned(), "Pod", WorkloadResolution::Instance)
}

/// Derives the Deployment that owns a ReplicaSet (`web-7c9d9f6b8` belongs to `web`).
pub(crate) fn deployment_from_replicaset(replicaset: &str) -> Option<&str> {
    let (base, hash) = replicaset.rsplit_once('-')?;
    (is_generated_suffix(hash, 6, 10) && !base.is_empty()).then_some(base)
}

/// Derives the CronJob that created a Job from the Job's name (`backup-29012345` belongs to
/// `backup`): the CronJob controller names each Job `<cronjob>-<scheduled time in minutes>`.
pub(crate) fn cronjob_from_job(job: &str) -> Option<&str> {
    let (base, time) = job.rsplit_once('-')?;
    (is_cronjob_suffix(time) && !base.is_empty()).then_some(base)
}

/// Returns the controller at the top of the ownership chain that a named controller belongs to,
/// as far as names tell: a ReplicaSet named with a pod-template hash belongs to its Deployment,
/// a Job named with a schedule time to its CronJob. Other controllers are their own top.
///
/// Every owner a decoder reads (ownerReferences, Tetragon `workload`, Falco k8smeta fields) goes
/// through here, so that it names the same workload as the owner derived from the pod name.
pub(crate) fn top_controller<'a>(kind: &'a str, name: &'a str) -> (&'a str, &'a str) {
    match kind {
        "ReplicaSet" => {
            deployment_from_replicaset(name).map_or((kind, name), |d| ("Deployment", d))
        }
        "Job" => cronjob_from_job(name).map_or((kind, name), |c| ("CronJob", c)),
        _ => (kind, name),
    }
}

/// Builds the workload key of a Kubernetes pod, preferring an explicit owner when the source
/// gives one.
pub(crate) fn kubernetes_pod_workload(
    cluster: &str,
    namespace: &str,
    pod: &str,
    explicit_owner: Option<(&str, &str)>,
) -> WorkloadKey {
    let (name, kind, resolution) = match explicit_owner {
        Some((kind, name)) if !name.is_empty() => {
            let (kind, name) = top_controller(kind, name);
            (
                name.to_owned(),
                kind.to_owned(),
                WorkloadResolution::Explicit,
            )
        }
        _ => {
            let (name, kind, resolution) = owner_from_pod_name(pod);
            (name, kind.to_owned(), resolution)
        }
    };
    WorkloadKey {
        platform: Platform::Kubernetes as i32,
        cluster: cluster.to_owned(),
        namespace: namespace.to_owned(),
        kind,
        name,
        resolution: resolution as i32,
        instance: pod.to_owned(),
        ..Default::default()
    }
}

/// Builds the workload key of a record that names only a container.
pub(crate) fn container_workload(cluster: &str, id: &str) -> WorkloadKey {
    WorkloadKey {
        platform: Platform::Kubernetes as i32,
        cluster: cluster.to_owned(),
        name: id.to_owned(),
        resolution: WorkloadResolution::Container as i32,
        ..Default::default()
    }
}

pub(crate) use tidemark_common::time::parse_rfc3339;

/// Converts whole seconds since the epoch to nanoseconds, rejecting values out of range.
pub(crate) fn seconds_to_nanos(seconds: i64) -> Option<i64> {
    seconds.checked_mul(1_000_000_000)
}

/// Adds `digest` to `image` unless the image already names one.
pub(crate) fn with_digest(image: Image, digest: Option<String>) -> Image {
    match digest {
        Some(digest) if image.digest.is_empty() => {
            build_image(image.registry, image.repository, image.tag, digest)
        }
        _ => image,
    }
}

/// Converts a port read from JSON to a port number; out-of-range values give 0 (unknown).
pub(crate) fn port(value: Option<i64>) -> u32 {
    value
        .and_then(|port| u32::try_from(port).ok())
        .filter(|port| *port <= 65_535)
        .unwrap_or(0)
}

/// Returns the last path segment of a binary path (`/usr/bin/xmrig` gives `xmrig`).
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(raw: &str) -> String {
        parse_image(raw)
            .map(|image| image.reference)
            .unwrap_or_default()
    }

    #[test]
    fn bare_digest_is_an_image_pinned_by_digest_alone() {
        let hex = "ff3aa5862fd17f8695984609743f4523188984adbcd25cf5ac4224b71084558c";
        let image = parse_image(&format!("sha256:{hex}")).expect("a bare digest parses");
        assert_eq!(image.digest, format!("sha256:{hex}"));
        assert_eq!(image.repository, "");
        assert_eq!(image.tag, "");
    }

    #[test]
    fn only_repository_digests_count_as_image_digests() {
        let hex = "ff3aa5862fd17f8695984609743f4523188984adbcd25cf5ac4224b71084558c";
        assert_eq!(
            digest_of_reference(&format!("docker-pullable://quay.io/app@sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_of_reference(&format!("sha256:{hex}")), None);
    }

    #[test]
    fn short_names_expand_to_docker_hub_library() {
        assert_eq!(reference("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(reference("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(
            reference("docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            reference("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(reference("yzsqbe/ka:si"), "docker.io/yzsqbe/ka:si");
    }

    #[test]
    fn registry_with_port_is_not_a_tag() {
        let image = parse_image("registry.corp.example:5000/team/web").unwrap();
        assert_eq!(image.registry, "registry.corp.example:5000");
        assert_eq!(image.repository, "team/web");
        assert_eq!(image.tag, "latest");
        let image = parse_image("localhost/harbor/alpine:3.19").unwrap();
        assert_eq!(image.registry, "localhost");
        assert_eq!(image.repository, "harbor/alpine");
    }

    #[test]
    fn digest_pins_without_implied_latest() {
        let digest = "sha256:8e86f744bfea165fd4ce68caa05abc96500f40130b857773186401926af7e9e6";
        let image = parse_image(&format!("docker-pullable://quay.io/isovalent/app@{digest}"));
        let image = image.unwrap();
        assert_eq!(image.registry, "quay.io");
        assert_eq!(image.tag, "");
        assert_eq!(image.digest, digest);
        assert_eq!(image.reference, format!("quay.io/isovalent/app@{digest}"));
    }

    #[test]
    fn malformed_digests_are_dropped() {
        assert_eq!(
            normalize_digest("sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"),
            None
        );
        assert_eq!(normalize_digest("md5:abc"), None);
        assert!(normalize_digest(&format!("sha256:{}", "A".repeat(64))).is_some());
    }

    #[test]
    fn garbage_references_are_rejected() {
        assert!(parse_image("").is_none());
        assert!(parse_image("a b").is_none());
        assert!(parse_image("registry.example/").is_none());
    }

    #[test]
    fn container_ids_lose_runtime_prefix() {
        assert_eq!(
            container_id("containerd://ABCdef0123").as_deref(),
            Some("abcdef0123")
        );
        assert_eq!(
            container_id("cri-o://3ad7b26ded6d").as_deref(),
            Some("3ad7b26ded6d")
        );
        assert_eq!(container_id("not-hex"), None);
    }

    #[test]
    fn pod_names_resolve_to_their_controller() {
        assert_eq!(
            owner_from_pod_name("web-7c9d9f6b8-x2l4p"),
            ("web".to_owned(), "Deployment", WorkloadResolution::PodName)
        );
        assert_eq!(
            owner_from_pod_name("nginx-deployment-78f5d695bd-nxqz5"),
            (
                "nginx-deployment".to_owned(),
                "Deployment",
                WorkloadResolution::PodName
            )
        );
        assert_eq!(
            owner_from_pod_name("node-exporter-x2l4p"),
            ("node-exporter".to_owned(), "", WorkloadResolution::PodName)
        );
        assert_eq!(
            owner_from_pod_name("backup-29012345-x2l4p"),
            ("backup".to_owned(), "CronJob", WorkloadResolution::PodName)
        );
        assert_eq!(
            owner_from_pod_name("kubecon"),
            ("kubecon".to_owned(), "Pod", WorkloadResolution::Instance)
        );
        // A vowel cannot appear in a generated suffix: `redis-alpha` is a plain pod name.
        assert_eq!(
            owner_from_pod_name("redis-alpha").2,
            WorkloadResolution::Instance
        );
    }

    #[test]
    fn statefulset_ordinals_resolve_to_the_statefulset() {
        assert_eq!(
            owner_from_pod_name("db-0"),
            ("db".to_owned(), "StatefulSet", WorkloadResolution::PodName)
        );
        assert_eq!(
            owner_from_pod_name("kafka-broker-12"),
            (
                "kafka-broker".to_owned(),
                "StatefulSet",
                WorkloadResolution::PodName
            )
        );
        // A leading zero is no ordinal, and eight digits are a CronJob schedule time.
        assert_eq!(owner_from_pod_name("db-01").1, "Pod");
        assert_eq!(owner_from_pod_name("report-29012345").1, "Pod");
    }

    #[test]
    fn explicit_owners_resolve_to_the_top_controller() {
        assert_eq!(
            top_controller("ReplicaSet", "web-7c9d9f6b8"),
            ("Deployment", "web")
        );
        assert_eq!(
            top_controller("Job", "backup-29012345"),
            ("CronJob", "backup")
        );
        assert_eq!(top_controller("Job", "migrate-db"), ("Job", "migrate-db"));
        assert_eq!(
            top_controller("DaemonSet", "node-exporter"),
            ("DaemonSet", "node-exporter")
        );
        let pod_of_job = kubernetes_pod_workload(
            "prod",
            "ops",
            "backup-29012345-x2l4p",
            Some(("Job", "backup-29012345")),
        );
        assert_eq!(
            (pod_of_job.kind.as_str(), pod_of_job.name.as_str()),
            ("CronJob", "backup")
        );
    }

    #[test]
    fn replicaset_owner_maps_to_deployment() {
        let key = kubernetes_pod_workload(
            "prod",
            "default",
            "nginx-deployment-78f5d695bd-nxqz5",
            Some(("ReplicaSet", "nginx-deployment-78f5d695bd")),
        );
        assert_eq!(key.kind, "Deployment");
        assert_eq!(key.name, "nginx-deployment");
        assert_eq!(key.resolution, WorkloadResolution::Explicit as i32);
    }
}
