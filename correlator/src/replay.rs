//! Offline correlation of a finite set of signals, for backfill and forensics.
//!
//! [`replay`] orders the signals by event time before correlating them, so the delivery order
//! of the input does not matter: the same records in any order give the same incidents. Ties on
//! event time are broken by the signal's content (not by where it was read), which keeps the
//! order stable when the input files are shuffled.
//!
//! All signals are held in memory while sorted (a replay of a million generated records, most
//! of them node-sensor events, peaked at 3.6 GiB); a backfill larger than memory has to be split
//! by time range.

use prost::Message as _;
use tidemark_proto::v1::Signal;

use crate::engine::{Engine, EngineError, Position, Rejected};
use crate::model::Incident;
use crate::state::StateStore;

/// The topic name replayed signals are applied under.
pub const REPLAY_TOPIC: &str = "replay";

/// The tie-break hash of a signal's encoding: CRC-32, a fixed standard, so that the replay order
/// of signals with equal event times does not depend on the toolchain that built tidemark (the
/// standard library's hasher may change between Rust releases). A collision costs nothing but a
/// comparison of the encodings themselves.
fn tie_break_hash(bytes: &[u8]) -> u64 {
    u64::from(crc32fast::hash(bytes))
}

/// Signals applied per state batch.
const BATCH_SIZE: usize = 4096;

/// What a replay produced.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// The final version of every incident, ordered by id.
    pub incidents: Vec<Incident>,
    /// Signals correlated.
    pub num_applied: u64,
    /// Signals with event times too far in the future (bad input).
    pub future: Vec<Rejected>,
    /// Signals refused as late; empty, since a replay is sorted by event time and applied on
    /// a partition of its own.
    pub late: Vec<Rejected>,
}

/// Correlates `signals` in event-time order and returns the final incidents.
///
/// # Errors
///
/// Returns [`EngineError`] when the state store fails or holds corrupted state.
pub fn replay<S: StateStore>(
    engine: &Engine<S>,
    mut signals: Vec<Signal>,
    now_unix_nano: i64,
) -> Result<ReplayReport, EngineError> {
    // Ties in event time are broken by the signal's content without its raw pointer and ingest
    // time, which differ between deliveries of the same record. The sort key holds a hash of
    // that encoding, not the encoding itself, so sorting a large backfill costs one reusable
    // buffer instead of a second copy of every signal; runs of equal time and hash (identical
    // content, or a hash collision) are then ordered by the encoding itself. Only the keys are
    // sorted; each signal is taken from its place when its batch is applied.
    let mut buffer = Vec::new();
    let mut order: Vec<(i64, u64, usize)> = signals
        .iter_mut()
        .enumerate()
        .map(|(index, signal)| {
            let content = content_encoding(signal, &mut buffer);
            (signal.event_time_unix_nano, tie_break_hash(content), index)
        })
        .collect();
    order.sort_unstable();
    let mut start = 0;
    while start < order.len() {
        let key = (order[start].0, order[start].1);
        let end = start + order[start..].partition_point(|e| (e.0, e.1) == key);
        if end - start > 1 {
            let run = &mut order[start..end];
            let mut encoded: Vec<(Vec<u8>, usize)> = run
                .iter()
                .map(|e| {
                    (
                        content_encoding(&mut signals[e.2], &mut buffer).to_vec(),
                        e.2,
                    )
                })
                .collect();
            encoded.sort();
            for (slot, (_, index)) in run.iter_mut().zip(encoded) {
                slot.2 = index;
            }
        }
        start = end;
    }
    // Each replay into a store is a partition of its own, with its own watermark: a later
    // replay of older files is not late, it fills in history. Evidence already in the store
    // (the same records replayed again) is recognized and not added twice.
    let mut partition = 0;
    while engine.next_offset(REPLAY_TOPIC, partition)?.is_some() {
        partition += 1;
    }
    let mut report = ReplayReport::default();
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    for (offset, (_, _, index)) in (0..).zip(order) {
        let position = Position {
            topic: REPLAY_TOPIC.to_owned(),
            partition,
            offset,
        };
        batch.push((position, std::mem::take(&mut signals[index])));
        if batch.len() == BATCH_SIZE {
            apply_batch(engine, &batch, now_unix_nano, &mut report)?;
            batch.clear();
        }
    }
    apply_batch(engine, &batch, now_unix_nano, &mut report)?;
    report.incidents = engine.incidents()?;
    Ok(report)
}

/// Encodes `signal` without the fields that differ between deliveries of the same record (its
/// raw pointer and ingest time) into `buffer`, and returns the encoding.
fn content_encoding<'a>(signal: &mut Signal, buffer: &'a mut Vec<u8>) -> &'a [u8] {
    let raw = signal.raw.take();
    let ingest_time = std::mem::take(&mut signal.ingest_time_unix_nano);
    buffer.clear();
    signal
        .encode(buffer)
        .expect("encoding into a Vec cannot run out of room: it grows");
    signal.raw = raw;
    signal.ingest_time_unix_nano = ingest_time;
    buffer
}

fn apply_batch<S: StateStore>(
    engine: &Engine<S>,
    batch: &[(Position, Signal)],
    now_unix_nano: i64,
    report: &mut ReplayReport,
) -> Result<(), EngineError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcome = engine.apply(batch, now_unix_nano)?;
    report.num_applied += outcome.num_applied;
    report.future.extend(outcome.future);
    report.late.extend(outcome.late);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tie_break_hash;

    #[test]
    fn tie_break_hash_is_the_standard_crc32() {
        assert_eq!(tie_break_hash(b""), 0);
        assert_eq!(tie_break_hash(b"123456789"), 0xcbf4_3926);
    }
}
