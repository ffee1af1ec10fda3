//! The incident model: evidence, incidents, severity. Serialized as JSON on the incidents topic
//! and by `tidemark replay`; `docs/incidents.md` documents the format.

use serde::{Deserialize, Serialize};

use crate::stage::{Finding, Stage, Strength};

/// One finding of one signal, kept as evidence of a workload's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The stage supported (`image`, `deploy`, `implant`, `execution`, `impact`).
    pub stage: String,
    /// `strong` or `weak`.
    pub strength: String,
    /// Why, in words.
    pub reason: String,
    /// MITRE ATT&CK technique id.
    pub technique: String,
    /// Event time, nanoseconds since the epoch.
    pub time_unix_nano: i64,
    /// Event time, RFC 3339.
    pub time: String,
    /// The signal's format (`FORMAT_FALCO`, ...).
    pub format: String,
    /// The source event (`Terminal shell in container`, `patch deployments`, `RunTask`).
    pub source_event: String,
    /// Who acted, when the source says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// The image involved, when the source says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Where the raw record is.
    pub raw: RawRef,
}

/// A pointer to the raw record behind a piece of evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RawRef {
    /// Kafka topic, or file.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// 1-based line in a file, 0 for Kafka.
    pub line: u64,
    /// Position inside an envelope.
    pub index: u32,
}

impl Evidence {
    /// Returns the stage of this evidence.
    pub fn stage(&self) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == self.stage)
    }

    /// Returns whether the evidence is strong.
    pub fn is_strong(&self) -> bool {
        self.strength == "strong"
    }

    /// Builds evidence from a finding and the signal facts around it.
    pub fn from_finding(finding: &Finding, context: EvidenceContext<'_>) -> Evidence {
        Evidence {
            stage: finding.stage.as_str().to_owned(),
            strength: match finding.strength {
                Strength::Strong => "strong",
                Strength::Weak => "weak",
            }
            .to_owned(),
            reason: finding.reason.clone(),
            technique: finding.technique.to_owned(),
            time_unix_nano: context.time_unix_nano,
            time: format_rfc3339(context.time_unix_nano),
            format: context.format.to_owned(),
            source_event: context.source_event.to_owned(),
            actor: context.actor.to_owned(),
            image: context.image.to_owned(),
            raw: context.raw,
        }
    }

    /// The order evidence is kept and shown in: by time, then by raw position, then by stage.
    pub fn sort_key(&self) -> (i64, &RawRef, &str, &str) {
        (self.time_unix_nano, &self.raw, &self.stage, &self.reason)
    }
}

/// What evidence needs from its signal besides the finding.
#[derive(Debug, Clone)]
pub struct EvidenceContext<'a> {
    /// Event time.
    pub time_unix_nano: i64,
    /// Format name.
    pub format: &'a str,
    /// Source event name.
    pub source_event: &'a str,
    /// Actor name.
    pub actor: &'a str,
    /// Image reference.
    pub image: &'a str,
    /// Raw pointer.
    pub raw: RawRef,
}

/// How bad an incident is, from how complete its chain is and how much evidence agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A precursor: an unapproved image deployed, nothing run yet.
    Low,
    /// A precursor with more than one stage, or a lone weak runtime chain.
    Medium,
    /// Mining evidence.
    High,
    /// Mining evidence and the way in (image, deploy or implant), from independent sources.
    Critical,
}

/// Lifecycle status of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Raised and not yet handled.
    Open,
    /// Seen by an analyst.
    Acknowledged,
    /// Closed.
    Resolved,
}

/// The workload an incident is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// The partition key (`k8s/<cluster>/<namespace>/<name>`, `ecs/<account>/<region>/<family>`).
    pub key: String,
    /// `kubernetes` or `ecs`.
    pub platform: String,
    /// Cluster name.
    pub cluster: String,
    /// Kubernetes namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Controller kind, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Controller name or ECS family.
    pub name: String,
    /// AWS account (ECS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
    /// AWS region (ECS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

/// One workload's kill chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id: the same chain always has the same id.
    pub id: String,
    /// Increases with every change; equals the number of evidence items in the chain.
    pub version: u64,
    /// Lifecycle status.
    pub status: Status,
    /// Severity.
    pub severity: Severity,
    /// The score severity is derived from (2 per strongly supported stage, 1 per weakly
    /// supported stage, 1 per extra independent source).
    pub score: u32,
    /// The workload.
    pub workload: WorkloadRef,
    /// Stages with evidence, in kill-chain order.
    pub stages: Vec<String>,
    /// ATT&CK technique ids shown, sorted.
    pub techniques: Vec<String>,
    /// Time of the earliest evidence, RFC 3339.
    pub first_seen: String,
    /// Time of the latest evidence, RFC 3339.
    pub last_seen: String,
    /// One paragraph for an analyst.
    pub summary: String,
    /// The evidence, in time order.
    pub evidence: Vec<Evidence>,
    /// Evidence items left out because the chain reached its size limit.
    #[serde(default)]
    pub num_evidence_omitted: u64,
}

/// Formats nanoseconds since the epoch as RFC 3339 with millisecond precision, UTC.
pub fn format_rfc3339(unix_nano: i64) -> String {
    tidemark_common::time::format_rfc3339(unix_nano, 3)
}

/// Formats the time of day, `HH:MM:SS` UTC, for summaries.
pub fn format_time_of_day(unix_nano: i64) -> String {
    let second_of_day = unix_nano.div_euclid(1_000_000_000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_685_022_245_478_445_995),
            "2023-05-25T13:44:05.478Z"
        );
        assert_eq!(
            format_rfc3339(1_772_446_504_112_233_445),
            "2026-03-02T10:15:04.112Z"
        );
        assert_eq!(format_time_of_day(1_772_446_504_112_233_445), "10:15:04");
    }
}
