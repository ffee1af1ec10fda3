//! Incidents and their evidence as Arrow record batches, written as an Arrow IPC stream, for
//! analytics (pyarrow's `pa.ipc.open_stream`, DuckDB, Polars, Spark).
//!
//! Two tables: `incidents` (one row per incident, without evidence) and `evidence` (one row per
//! evidence item, with its incident id). Times are `timestamp[ns, tz=UTC]`.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use tidemark_proto::v1;

use crate::convert::{severity_name, status_name};

/// Rows per record batch.
const BATCH_ROWS: usize = 4096;

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// Schema of the `incidents` table.
pub fn incidents_schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("id"),
        Field::new("version", DataType::UInt64, false),
        text("status"),
        text("severity"),
        Field::new("score", DataType::UInt32, false),
        text("workload_key"),
        text("platform"),
        text("cluster"),
        text("namespace"),
        text("kind"),
        text("name"),
        text("account"),
        text("region"),
        Field::new("stages", utf8_list(), false),
        Field::new("techniques", utf8_list(), false),
        Field::new("first_seen", timestamp(), false),
        Field::new("last_seen", timestamp(), false),
        text("summary"),
        Field::new("num_evidence", DataType::UInt32, false),
        Field::new("num_evidence_omitted", DataType::UInt64, false),
        Field::new("updated", timestamp(), false),
    ]))
}

/// Schema of the `evidence` table.
pub fn evidence_schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("incident_id"),
        text("stage"),
        text("strength"),
        text("reason"),
        text("technique"),
        Field::new("time", timestamp(), false),
        text("format"),
        text("source_event"),
        text("actor"),
        text("image"),
        text("raw_topic"),
        Field::new("raw_partition", DataType::Int32, false),
        Field::new("raw_offset", DataType::Int64, false),
        Field::new("raw_line", DataType::UInt64, false),
        Field::new("raw_index", DataType::UInt32, false),
    ]))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn string_lists<'a>(values: impl Iterator<Item = &'a [String]>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    for list in values {
        for value in list {
            builder.values().append_value(value);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// One record batch of incidents.
///
/// # Errors
///
/// Returns [`ArrowError`] if the columns do not fit the schema (a bug).
pub fn incidents_batch(incidents: &[v1::Incident]) -> Result<RecordBatch, ArrowError> {
    let default_workload = v1::IncidentWorkload::default();
    let workloads: Vec<&v1::IncidentWorkload> = incidents
        .iter()
        .map(|i| i.workload.as_ref().unwrap_or(&default_workload))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        strings(incidents.iter().map(|i| i.id.as_str())),
        Arc::new(UInt64Array::from_iter_values(
            incidents.iter().map(|i| i.version),
        )),
        strings(incidents.iter().map(|i| status_name(i.status))),
        strings(incidents.iter().map(|i| severity_name(i.severity))),
        Arc::new(UInt32Array::from_iter_values(
            incidents.iter().map(|i| i.score),
        )),
        strings(workloads.iter().map(|w| w.key.as_str())),
        strings(workloads.iter().map(|w| w.platform.as_str())),
        strings(workloads.iter().map(|w| w.cluster.as_str())),
        strings(workloads.iter().map(|w| w.namespace.as_str())),
        strings(workloads.iter().map(|w| w.kind.as_str())),
        strings(workloads.iter().map(|w| w.name.as_str())),
        strings(workloads.iter().map(|w| w.account.as_str())),
        strings(workloads.iter().map(|w| w.region.as_str())),
        string_lists(incidents.iter().map(|i| i.stages.as_slice())),
        string_lists(incidents.iter().map(|i| i.techniques.as_slice())),
        times(incidents.iter().map(|i| i.first_seen_unix_nano)),
        times(incidents.iter().map(|i| i.last_seen_unix_nano)),
        strings(incidents.iter().map(|i| i.summary.as_str())),
        Arc::new(UInt32Array::from_iter_values(
            incidents.iter().map(|i| i.num_evidence),
        )),
        Arc::new(UInt64Array::from_iter_values(
            incidents.iter().map(|i| i.num_evidence_omitted),
        )),
        times(incidents.iter().map(|i| i.updated_unix_nano)),
    ];
    RecordBatch::try_new(incidents_schema(), columns)
}

/// One record batch of evidence rows: (incident id, evidence).
///
/// # Errors
///
/// Returns [`ArrowError`] if the columns do not fit the schema (a bug).
pub fn evidence_batch(rows: &[(&str, &v1::Evidence)]) -> Result<RecordBatch, ArrowError> {
    let default_raw = v1::RawPointer::default();
    let raws: Vec<&v1::RawPointer> = rows
        .iter()
        .map(|(_, e)| e.raw.as_ref().unwrap_or(&default_raw))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|(id, _)| *id)),
        strings(rows.iter().map(|(_, e)| e.stage.as_str())),
        strings(rows.iter().map(|(_, e)| e.strength.as_str())),
        strings(rows.iter().map(|(_, e)| e.reason.as_str())),
        strings(rows.iter().map(|(_, e)| e.technique.as_str())),
        times(rows.iter().map(|(_, e)| e.time_unix_nano)),
        strings(rows.iter().map(|(_, e)| e.format.as_str())),
        strings(rows.iter().map(|(_, e)| e.source_event.as_str())),
        strings(rows.iter().map(|(_, e)| e.actor.as_str())),
        strings(rows.iter().map(|(_, e)| e.image.as_str())),
        strings(raws.iter().map(|r| r.topic.as_str())),
        Arc::new(Int32Array::from_iter_values(
            raws.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(raws.iter().map(|r| r.offset))),
        Arc::new(UInt64Array::from_iter_values(raws.iter().map(|r| r.line))),
        Arc::new(UInt32Array::from_iter_values(raws.iter().map(|r| r.index))),
    ];
    RecordBatch::try_new(evidence_schema(), columns)
}

/// Which table to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per incident.
    Incidents,
    /// One row per evidence item.
    Evidence,
}

/// Writes `incidents` as one Arrow IPC stream of the chosen table.
///
/// # Errors
///
/// Returns [`ArrowError`] if encoding fails.
pub fn write_stream(table: Table, incidents: &[v1::Incident]) -> Result<Vec<u8>, ArrowError> {
    let schema = match table {
        Table::Incidents => incidents_schema(),
        Table::Evidence => evidence_schema(),
    };
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
    match table {
        Table::Incidents => {
            for chunk in incidents.chunks(BATCH_ROWS) {
                let without: Vec<v1::Incident> =
                    chunk.iter().map(crate::store::without_evidence).collect();
                writer.write(&incidents_batch(&without)?)?;
            }
        }
        Table::Evidence => {
            let rows: Vec<(&str, &v1::Evidence)> = incidents
                .iter()
                .flat_map(|i| i.evidence.iter().map(move |e| (i.id.as_str(), e)))
                .collect();
            for chunk in rows.chunks(BATCH_ROWS) {
                writer.write(&evidence_batch(chunk)?)?;
            }
        }
    }
    writer.finish()?;
    writer.into_inner()
}
