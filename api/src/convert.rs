//! Conversions between the correlator's incident JSON (the incidents topic) and the API's
//! protobuf types.

use tidemark_correlator::model;
use tidemark_proto::v1;

/// Converts a correlator incident into the API type. Status history and update time are the
/// store's to fill in.
pub fn incident_from_model(incident: &model::Incident) -> v1::Incident {
    let w = &incident.workload;
    v1::Incident {
        id: incident.id.clone(),
        version: incident.version,
        status: status_from_model(incident.status) as i32,
        severity: severity_from_model(incident.severity) as i32,
        score: incident.score,
        workload: Some(v1::IncidentWorkload {
            key: w.key.clone(),
            platform: w.platform.clone(),
            cluster: w.cluster.clone(),
            namespace: w.namespace.clone(),
            kind: w.kind.clone(),
            name: w.name.clone(),
            account: w.account.clone(),
            region: w.region.clone(),
        }),
        stages: incident.stages.clone(),
        techniques: incident.techniques.clone(),
        first_seen_unix_nano: incident
            .evidence
            .iter()
            .map(|e| e.time_unix_nano)
            .min()
            .unwrap_or_else(|| parse_time(&incident.first_seen)),
        last_seen_unix_nano: incident
            .evidence
            .iter()
            .map(|e| e.time_unix_nano)
            .max()
            .unwrap_or_else(|| parse_time(&incident.last_seen)),
        summary: incident.summary.clone(),
        num_evidence: u32::try_from(incident.evidence.len()).unwrap_or(u32::MAX),
        evidence: incident.evidence.iter().map(evidence_from_model).collect(),
        num_evidence_omitted: incident.num_evidence_omitted,
        status_history: Vec::new(),
        updated_unix_nano: 0,
    }
}

fn parse_time(text: &str) -> i64 {
    tidemark_common::time::parse_rfc3339(text).unwrap_or(0)
}

fn evidence_from_model(evidence: &model::Evidence) -> v1::Evidence {
    v1::Evidence {
        stage: evidence.stage.clone(),
        strength: evidence.strength.clone(),
        reason: evidence.reason.clone(),
        technique: evidence.technique.clone(),
        time_unix_nano: evidence.time_unix_nano,
        format: evidence.format.clone(),
        source_event: evidence.source_event.clone(),
        actor: evidence.actor.clone(),
        image: evidence.image.clone(),
        raw: Some(v1::RawPointer {
            topic: evidence.raw.topic.clone(),
            partition: evidence.raw.partition,
            offset: evidence.raw.offset,
            line: evidence.raw.line,
            index: evidence.raw.index,
        }),
    }
}

fn severity_from_model(severity: model::Severity) -> v1::Severity {
    match severity {
        model::Severity::Low => v1::Severity::Low,
        model::Severity::Medium => v1::Severity::Medium,
        model::Severity::High => v1::Severity::High,
        model::Severity::Critical => v1::Severity::Critical,
    }
}

fn status_from_model(status: model::Status) -> v1::IncidentStatus {
    match status {
        model::Status::Open => v1::IncidentStatus::Open,
        model::Status::Acknowledged => v1::IncidentStatus::Acknowledged,
        model::Status::Resolved => v1::IncidentStatus::Resolved,
    }
}

/// The status an action leads to.
pub fn status_after(action: v1::StatusAction) -> Option<v1::IncidentStatus> {
    match action {
        v1::StatusAction::Acknowledge => Some(v1::IncidentStatus::Acknowledged),
        v1::StatusAction::Resolve => Some(v1::IncidentStatus::Resolved),
        v1::StatusAction::Reopen => Some(v1::IncidentStatus::Open),
        v1::StatusAction::Unspecified => None,
    }
}

/// Short lower-case name of a severity (`high`), for tables and Arrow.
pub fn severity_name(severity: i32) -> &'static str {
    match v1::Severity::try_from(severity).unwrap_or(v1::Severity::Unspecified) {
        v1::Severity::Low => "low",
        v1::Severity::Medium => "medium",
        v1::Severity::High => "high",
        v1::Severity::Critical => "critical",
        v1::Severity::Unspecified => "unspecified",
    }
}

/// Short lower-case name of a status (`acknowledged`), for tables and Arrow.
pub fn status_name(status: i32) -> &'static str {
    match v1::IncidentStatus::try_from(status).unwrap_or(v1::IncidentStatus::Unspecified) {
        v1::IncidentStatus::Open => "open",
        v1::IncidentStatus::Acknowledged => "acknowledged",
        v1::IncidentStatus::Resolved => "resolved",
        v1::IncidentStatus::Unspecified => "unspecified",
    }
}
