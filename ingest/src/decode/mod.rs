//! Decoders: one module per source format, each turning a raw record into normalized signals.
//!
//! A raw record is the bytes of one Kafka message or one document of a file. [`decode`] detects
//! its format from its top-level keys (or takes the format configured for its topic), decodes it
//! with that format's module and returns the signals it holds. Envelopes (a Kubernetes audit
//! `EventList`, a CloudWatch Logs subscription record, a Distribution notification, CloudTrail's
//! `Records`, EventBridge) are opened here too, so one record may give several signals.
//!
//! Decoding never panics on hostile input: a record that cannot be decoded gives a
//! [`DecodeError`] with a reason, which the caller routes to the dead-letter topic. Events that
//! decode but carry nothing tidemark correlates (a `get` in the audit log, a layer push, a
//! process exit) are reported as [`Skip`]s, so that they are counted rather than lost silently.

mod cloudtrail;
mod distribution;
mod dockerhub;
mod eventbridge;
mod falco;
mod github;
mod harbor;
mod json;
mod k8s_audit;
pub(crate) mod normalize;
mod quay;
mod tetragon;
mod tracee;

use std::fmt;
use std::io::Read;
use std::sync::LazyLock;

use memchr::memmem;
use serde::{Deserialize, Serialize};
use tidemark_proto::v1::{Format, RawPointer, Signal, SourceKind};

/// Largest record accepted by default, in bytes (after decompression).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Deepest nesting of objects and arrays accepted. Real records nest a dozen levels (a pod spec
/// inside an audit event inside an envelope); far deeper input is hostile. serde_json enforces a
/// limit on what it deserializes into types but skips ignored and raw values iteratively, so the
/// limit is checked here for the whole record.
pub const MAX_NESTING_DEPTH: usize = 100;

/// The input format of a raw record, as configured per topic or detected per record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// Detect the format of every record from its top-level keys.
    #[default]
    Auto,
    /// Falco JSON alerts, as Falco writes them and falcosidekick forwards them.
    Falco,
    /// Tetragon JSON export (`process_exec`, `process_kprobe`, ...).
    Tetragon,
    /// Tracee JSON events and signature findings.
    Tracee,
    /// Kubernetes audit `Event` or `EventList`.
    K8sAudit,
    /// EKS control-plane logs through a CloudWatch Logs subscription (plain or gzip).
    CloudwatchLogs,
    /// AKS diagnostic records (`kube-audit` category), plain or in an Event Hub `records` batch.
    AksDiagnostic,
    /// AWS CloudTrail records, one per message or in a `Records` batch.
    Cloudtrail,
    /// Amazon EventBridge events: CloudTrail API calls, ECS task state changes, ECR image actions.
    Eventbridge,
    /// CNCF Distribution (registry v2) notification envelopes.
    Distribution,
    /// Harbor webhooks, default or CloudEvents format.
    Harbor,
    /// Docker Hub webhooks.
    DockerHub,
    /// GitHub `package` / `registry_package` webhooks.
    GithubPackage,
    /// Quay `repo_push` notifications.
    Quay,
}

impl InputFormat {
    /// Every format that can be configured, in the order detection tries them.
    pub const ALL: [InputFormat; 14] = [
        InputFormat::Auto,
        InputFormat::Falco,
        InputFormat::Tetragon,
        InputFormat::Tracee,
        InputFormat::K8sAudit,
        InputFormat::CloudwatchLogs,
        InputFormat::AksDiagnostic,
        InputFormat::Cloudtrail,
        InputFormat::Eventbridge,
        InputFormat::Distribution,
        InputFormat::Harbor,
        InputFormat::DockerHub,
        InputFormat::GithubPackage,
        InputFormat::Quay,
    ];

    /// Returns the configuration name of the format (`k8s-audit`, `falco`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Falco => "falco",
            InputFormat::Tetragon => "tetragon",
            InputFormat::Tracee => "tracee",
            InputFormat::K8sAudit => "k8s-audit",
            InputFormat::CloudwatchLogs => "cloudwatch-logs",
            InputFormat::AksDiagnostic => "aks-diagnostic",
            InputFormat::Cloudtrail => "cloudtrail",
            InputFormat::Eventbridge => "eventbridge",
            InputFormat::Distribution => "distribution",
            InputFormat::Harbor => "harbor",
            InputFormat::DockerHub => "docker-hub",
            InputFormat::GithubPackage => "github-package",
            InputFormat::Quay => "quay",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record could not be decoded. The record goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .format { Some(format) => format!("`{format}`: {}", .reason), None => .reason.clone() })]
pub struct DecodeError {
    /// The format the record was decoded as, when one was detected or configured.
    pub format: Option<InputFormat>,
    /// What is wrong with the record, in words an operator can act on.
    pub reason: String,
}

impl DecodeError {
    fn new(format: Option<InputFormat>, reason: impl Into<String>) -> Self {
        DecodeError {
            format,
            reason: reason.into(),
        }
    }

    fn json(format: InputFormat, error: &impl fmt::Display) -> Self {
        DecodeError::new(
            Some(format),
            format!("invalid JSON for this format: {error}"),
        )
    }
}

/// An event that decoded but carries nothing to correlate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    /// Position of the event in its envelope (0 for records holding one event).
    pub index: u32,
    /// Why it was skipped; a short constant usable as a metric label.
    pub reason: &'static str,
}

/// What one raw record gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    /// The format the record was decoded as.
    pub format: Option<InputFormat>,
    /// The signals, in the order of the events in the record.
    pub signals: Vec<Signal>,
    /// Events of the record that were skipped, with the reason.
    pub skipped: Vec<Skip>,
}

impl Decoded {
    fn skip(&mut self, index: u32, reason: &'static str) {
        self.skipped.push(Skip { index, reason });
    }
}

/// Where a record came from and what the decoder may assume about it.
#[derive(Debug, Clone)]
pub struct RecordContext {
    /// Topic (or file), partition, offset (or line) of the record.
    pub pointer: RawPointer,
    /// When the record was decoded, in nanoseconds since the epoch.
    pub ingest_time_unix_nano: i64,
    /// Event time for sources that carry none (Quay): the Kafka message timestamp when there is
    /// one, otherwise the ingest time.
    pub fallback_time_unix_nano: i64,
    /// Cluster name for sources whose events do not name their cluster (Falco, vanilla audit
    /// logs); configured per topic.
    pub cluster: String,
    /// Records larger than this, after decompression, are rejected.
    pub max_record_bytes: usize,
}

impl RecordContext {
    /// Returns a context for a record at `pointer` decoded now, with no configured cluster.
    pub fn new(pointer: RawPointer, now_unix_nano: i64) -> Self {
        RecordContext {
            pointer,
            ingest_time_unix_nano: now_unix_nano,
            fallback_time_unix_nano: now_unix_nano,
            cluster: String::new(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Starts a signal of `format` at `event_time_unix_nano`, for the event at `index` of the
    /// record, with the raw pointer and ingest time filled in.
    pub(crate) fn signal(&self, format: Format, event_time_unix_nano: i64, index: u32) -> Signal {
        let source = match format {
            Format::Falco | Format::Tetragon | Format::Tracee => SourceKind::Node,
            Format::K8sAudit | Format::Cloudtrail | Format::EcsTaskState => SourceKind::Audit,
            Format::Distribution
            | Format::Harbor
            | Format::EcrImageAction
            | Format::DockerHub
            | Format::GithubPackage
            | Format::Quay => SourceKind::Registry,
            Format::Unspecified => SourceKind::Unspecified,
        };
        Signal {
            source: source as i32,
            format: format as i32,
            event_time_unix_nano,
            ingest_time_unix_nano: self.ingest_time_unix_nano,
            raw: Some(RawPointer {
                index,
                ..self.pointer.clone()
            }),
            ..Default::default()
        }
    }
}

/// Decodes one raw record.
///
/// `format` is the format configured for the record's topic, or [`InputFormat::Auto`] to detect
/// it. Gzip-compressed records (CloudWatch Logs subscriptions deliver them so) are decompressed
/// first, up to `ctx.max_record_bytes`.
///
/// # Errors
///
/// Returns a [`DecodeError`] when the record is empty, too large, not JSON, of no known format,
/// or does not have the shape its format requires.
pub fn decode(
    bytes: &[u8],
    format: InputFormat,
    ctx: &RecordContext,
) -> Result<Decoded, DecodeError> {
    if bytes.len() > ctx.max_record_bytes {
        return Err(DecodeError::new(
            None,
            format!(
                "record of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                ctx.max_record_bytes
            ),
        ));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let inflated = gunzip(bytes, ctx.max_record_bytes)?;
        return decode_json(&inflated, format, ctx);
    }
    decode_json(bytes, format, ctx)
}

/// The earliest event time among the signals of a raw record, detecting its format; `None`
/// when it does not decode or yields no signal. Used to send files in event-time order.
pub fn earliest_event_time(bytes: &[u8], now_unix_nano: i64) -> Option<i64> {
    let context = RecordContext::new(RawPointer::default(), now_unix_nano);
    let decoded = decode(bytes, InputFormat::Auto, &context).ok()?;
    decoded.signals.iter().map(|s| s.event_time_unix_nano).min()
}

fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut inflated = Vec::new();
    let mut reader = flate2::read::MultiGzDecoder::new(bytes).take(limit as u64 + 1);
    reader
        .read_to_end(&mut inflated)
        .map_err(|error| DecodeError::new(None, format!("invalid gzip data: {error}")))?;
    if inflated.len() > limit {
        return Err(DecodeError::new(
            None,
            format!("record exceeds the limit of {limit} bytes once decompressed"),
        ));
    }
    Ok(inflated)
}

fn decode_json(
    bytes: &[u8],
    format: InputFormat,
    ctx: &RecordContext,
) -> Result<Decoded, DecodeError> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(DecodeError::new(None, "empty record"));
    };
    let body = &bytes[start..];
    if nesting_exceeds(body, MAX_NESTING_DEPTH) {
        return Err(DecodeError::new(
            None,
            format!("record nests objects or arrays deeper than {MAX_NESTING_DEPTH} levels"),
        ));
    }
    if body[0] == b'[' {
        return decode_array(body, format, ctx);
    }
    if body[0] != b'{' {
        return Err(DecodeError::new(None, "record is not a JSON object"));
    }
    let format = match format {
        InputFormat::Auto => detect(body).ok_or_else(|| {
            DecodeError::new(
                None,
                "unrecognized record: no known source format matches its keys",
            )
        })?,
        configured => configured,
    };
    let mut decoded = Decoded {
        format: Some(format),
        ..Default::default()
    };
    match format {
        InputFormat::Auto => unreachable!("detect never answers auto"),
        InputFormat::Falco => falco::decode(body, ctx, &mut decoded)?,
        InputFormat::Tetragon => tetragon::decode(body, ctx, &mut decoded)?,
        InputFormat::Tracee => tracee::decode(body, ctx, &mut decoded)?,
        InputFormat::K8sAudit => k8s_audit::decode(body, ctx, &mut decoded)?,
        InputFormat::CloudwatchLogs => k8s_audit::decode_cloudwatch(body, ctx, &mut decoded)?,
        InputFormat::AksDiagnostic => k8s_audit::decode_aks(body, ctx, &mut decoded)?,
        InputFormat::Cloudtrail => cloudtrail::decode(body, ctx, &mut decoded)?,
        InputFormat::Eventbridge => eventbridge::decode(body, ctx, &mut decoded)?,
        InputFormat::Distribution => distribution::decode(body, ctx, &mut decoded)?,
        InputFormat::Harbor => harbor::decode(body, ctx, &mut decoded)?,
        InputFormat::DockerHub => dockerhub::decode(body, ctx, &mut decoded)?,
        InputFormat::GithubPackage => github::decode(body, ctx, &mut decoded)?,
        InputFormat::Quay => quay::decode(body, ctx, &mut decoded)?,
    }
    Ok(decoded)
}

/// Decodes a top-level JSON array whose elements are records of their own (some exporters batch
/// events so). Each element keeps its position as the envelope index.
fn decode_array(
    body: &[u8],
    format: InputFormat,
    ctx: &RecordContext,
) -> Result<Decoded, DecodeError> {
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
        .map_err(|error| DecodeError::new(None, format!("invalid JSON array: {error}")))?;
    let mut decoded = Decoded::default();
    for (index, item) in items.iter().enumerate() {
        let item_bytes = item.get().as_bytes();
        if item_bytes.first() == Some(&b'[') {
            return Err(DecodeError::new(
                None,
                format!("element {index}: nested arrays are not records"),
            ));
        }
        let inner = decode_json(item_bytes, format, ctx).map_err(|error| {
            DecodeError::new(error.format, format!("element {index}: {}", error.reason))
        })?;
        decoded.format = decoded.format.or(inner.format);
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        for mut signal in inner.signals {
            if let Some(raw) = signal.raw.as_mut() {
                raw.index = index;
            }
            decoded.signals.push(signal);
        }
        decoded
            .skipped
            .extend(inner.skipped.into_iter().map(|skip| Skip { index, ..skip }));
    }
    Ok(decoded)
}

/// Returns whether `body` nests objects and arrays deeper than `limit`, ignoring brackets inside
/// strings. Records with fewer opening brackets than `limit` cannot, and are answered from a
/// count alone.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    // `[` (0x5B) and `{` (0x7B) differ only in bit 0x20, and no other byte maps to 0x7B with that
    // bit set. Counting in u8 lanes per chunk of 255 bytes lets the compiler vectorize the loop.
    let num_open: usize = body
        .chunks(255)
        .map(|chunk| {
            let count = chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{'));
            usize::from(count)
        })
        .sum();
    if num_open <= limit {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Tells the format of a JSON object from keys only that format has at its top level.
///
/// Envelopes are tried before the formats they wrap, since their payloads carry the wrapped
/// format's keys. A key can only match as a key or as a whole string value: inside a string an
/// embedded quote is escaped, so `"auditID"` never matches text nested in an escaped JSON string.
pub fn detect(body: &[u8]) -> Option<InputFormat> {
    // Tetragon's JSON export writes the event first: the commonest record needs one comparison.
    if body.starts_with(b"{\"process_") {
        return Some(InputFormat::Tetragon);
    }
    let has = |key: Key| FINDERS[key as usize].find(body).is_some();
    // No envelope carries Falco's `output_fields`, so Falco, the next commonest, goes first.
    if has(Key::OutputFields) && has(Key::Rule) {
        return Some(InputFormat::Falco);
    }
    if has(Key::LogEvents) && has(Key::LogGroup) {
        return Some(InputFormat::CloudwatchLogs);
    }
    if has(Key::DetailType) && has(Key::Detail) {
        return Some(InputFormat::Eventbridge);
    }
    if has(Key::OperationName) && (has(Key::Properties) || has(Key::LowerRecords)) {
        return Some(InputFormat::AksDiagnostic);
    }
    if has(Key::EventSource)
        && (has(Key::UpperRecords) || has(Key::EventTime) && has(Key::EventName))
    {
        return Some(InputFormat::Cloudtrail);
    }
    if has(Key::AuditId) || (has(Key::EventList) && has(Key::AuditApi)) {
        return Some(InputFormat::K8sAudit);
    }
    if TETRAGON_EVENTS.iter().any(|event| has(*event)) {
        return Some(InputFormat::Tetragon);
    }
    if has(Key::EventName) && (has(Key::EventId) || has(Key::ProcessName)) {
        return Some(InputFormat::Tracee);
    }
    if has(Key::Events) && has(Key::Action) && has(Key::Target) {
        return Some(InputFormat::Distribution);
    }
    if (has(Key::EventData) && has(Key::OccurAt)) || has(Key::HarborArtifact) {
        return Some(InputFormat::Harbor);
    }
    if has(Key::PushData) {
        return Some(InputFormat::DockerHub);
    }
    if has(Key::PackageVersion) && (has(Key::RegistryPackage) || has(Key::Package)) {
        return Some(InputFormat::GithubPackage);
    }
    if has(Key::DockerUrl) && has(Key::UpdatedTags) {
        return Some(InputFormat::Quay);
    }
    None
}

/// The quoted keys (and values) that tell formats apart; the order matches [`KEY_TEXTS`].
#[derive(Clone, Copy)]
enum Key {
    LogEvents,
    LogGroup,
    DetailType,
    Detail,
    OperationName,
    Properties,
    LowerRecords,
    UpperRecords,
    EventSource,
    EventName,
    EventTime,
    AuditId,
    EventList,
    AuditApi,
    OutputFields,
    Rule,
    ProcessExec,
    ProcessKprobe,
    ProcessExit,
    ProcessConnect,
    ProcessTracepoint,
    ProcessLsm,
    ProcessUprobe,
    EventId,
    ProcessName,
    Events,
    Action,
    Target,
    EventData,
    OccurAt,
    HarborArtifact,
    PushData,
    PackageVersion,
    RegistryPackage,
    Package,
    DockerUrl,
    UpdatedTags,
}

const KEY_TEXTS: [&str; 37] = [
    "\"logEvents\"",
    "\"logGroup\"",
    "\"detail-type\"",
    "\"detail\"",
    "\"operationName\"",
    "\"properties\"",
    "\"records\"",
    "\"Records\"",
    "\"eventSource\"",
    "\"eventName\"",
    "\"eventTime\"",
    "\"auditID\"",
    "\"EventList\"",
    "\"audit.k8s.io/",
    "\"output_fields\"",
    "\"rule\"",
    "\"process_exec\"",
    "\"process_kprobe\"",
    "\"process_exit\"",
    "\"process_connect\"",
    "\"process_tracepoint\"",
    "\"process_lsm\"",
    "\"process_uprobe\"",
    "\"eventId\"",
    "\"processName\"",
    "\"events\"",
    "\"action\"",
    "\"target\"",
    "\"event_data\"",
    "\"occur_at\"",
    "\"harbor.artifact.",
    "\"push_data\"",
    "\"package_version\"",
    "\"registry_package\"",
    "\"package\"",
    "\"docker_url\"",
    "\"updated_tags\"",
];

const TETRAGON_EVENTS: [Key; 7] = [
    Key::ProcessExec,
    Key::ProcessKprobe,
    Key::ProcessExit,
    Key::ProcessConnect,
    Key::ProcessTracepoint,
    Key::ProcessLsm,
    Key::ProcessUprobe,
];

/// Substring searchers for [`KEY_TEXTS`], built once.
static FINDERS: LazyLock<Vec<memmem::Finder<'static>>> = LazyLock::new(|| {
    KEY_TEXTS
        .iter()
        .map(|text| memmem::Finder::new(text.as_bytes()))
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RecordContext {
        RecordContext::new(
            RawPointer {
                topic: "t".into(),
                ..Default::default()
            },
            1,
        )
    }

    #[test]
    fn empty_and_blank_records_are_errors() {
        assert_eq!(
            decode(b"", InputFormat::Auto, &ctx()).unwrap_err().reason,
            "empty record"
        );
        assert_eq!(
            decode(b"  \n", InputFormat::Auto, &ctx())
                .unwrap_err()
                .reason,
            "empty record"
        );
    }

    #[test]
    fn bare_values_are_not_records() {
        for raw in [&b"42"[..], b"\"falco\"", b"null", b"true"] {
            let error = decode(raw, InputFormat::Auto, &ctx()).unwrap_err();
            assert_eq!(error.reason, "record is not a JSON object");
        }
    }

    #[test]
    fn unknown_objects_are_unrecognized() {
        let error = decode(br#"{"hello":"world"}"#, InputFormat::Auto, &ctx()).unwrap_err();
        assert!(error.reason.starts_with("unrecognized record"), "{error}");
    }

    #[test]
    fn oversized_records_are_rejected_before_parsing() {
        let mut context = ctx();
        context.max_record_bytes = 10;
        let error =
            decode(br#"{"auditID":"0123456789"}"#, InputFormat::Auto, &context).unwrap_err();
        assert!(error.reason.contains("exceeds the limit"), "{error}");
    }

    #[test]
    fn gzip_bombs_stop_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 4 * 1024 * 1024]).unwrap();
        let compressed = encoder.finish().unwrap();
        let error = decode(&compressed, InputFormat::Auto, &ctx()).unwrap_err();
        assert!(error.reason.contains("once decompressed"), "{error}");
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(nesting_exceeds(deep.as_bytes(), 100));
        let in_string = format!("{{\"a\":\"{}\"}}", "[".repeat(500));
        assert!(!nesting_exceeds(in_string.as_bytes(), 100));
        let escaped = format!("{{\"a\":\"\\\"{}\"}}", "{".repeat(500));
        assert!(!nesting_exceeds(escaped.as_bytes(), 100));
        let wide = format!("[{}1]", "[1],".repeat(500));
        assert!(!nesting_exceeds(wide.as_bytes(), 100));
    }

    #[test]
    fn error_names_the_format() {
        let error = DecodeError::new(Some(InputFormat::Falco), "missing field `rule`");
        assert_eq!(error.to_string(), "`falco`: missing field `rule`");
    }
}
