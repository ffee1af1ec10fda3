//! `tidemark-loadtest generate`: telemetry for a fleet, in the formats the sources really emit,
//! with attack chains injected at known times and a ground-truth file.
//!
//! # How records are made
//!
//! Every record starts from one of the hand-checked records of `fixtures/scenarios/` (real wire
//! formats: Falco, Tetragon, Kubernetes audit, CloudTrail, EventBridge, Distribution, Harbor),
//! which the correlator's tests pin to known stages under `config/policy.example.yaml`. A copy
//! is made real for its place in the fleet:
//!
//! - identity: the Kubernetes namespace (`shop`) becomes the copy's namespace, and the ECS
//!   task-definition family (`payments`) the copy's family, everywhere they appear (audit URIs,
//!   Falco fields, pod metadata, image repositories, registry events), so that one copy is one
//!   workload and its pushes name its own repository;
//! - time: every timestamp (RFC 3339 strings, Falco's `evt.time` and `output` prefix, Harbor's
//!   `occur_at`) moves by the copy's offset, plus the clock skew of the record's source;
//! - ids: every UUID (Falco `uuid`, `auditID`, CloudTrail `eventID`, event ids) is replaced,
//!   consistently within the copy, so de-duplication sees distinct events.
//!
//! An attack is a copy of a whole scenario (one of the design's patterns and evasions) in a
//! namespace or family of its own, placed at a random time; benign noise is single records of
//! the benign scenario (rollouts by a trusted deployer, pushes by the CI account, an admin's
//! `sh`, a busy `ffmpeg`, HTTPS to ordinary hosts) spread over the benign namespaces and the
//! whole duration, weighted as production telemetry is: node sensors 90% (Tetragon 60, Falco
//! 30), Kubernetes audit 6%, registry pushes 4%.
//!
//! # Delivery
//!
//! Each source has a clock skew (up to two seconds either way) and a delivery delay drawn per
//! record from its own range: node sensors within a second, registries within two, EventBridge
//! within ten, Kubernetes audit batches within a minute, CloudTrail within five minutes. Each
//! output file is in arrival order, so sources are out of order with each other as they are on
//! the raw topics, and within the correlator's default allowed lateness.
//!
//! Everything is drawn from one generator seeded by `--seed`: the same options give the same
//! bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::time::{NANOS_PER_SEC, format_rfc3339, format_time_of_day, parse_rfc3339};

const PUBLIC_IMAGE: &str = include_str!("../../fixtures/scenarios/public-image.ndjson");
const EXEC_INTO_APPROVED: &str = include_str!("../../fixtures/scenarios/exec-into-approved.ndjson");
const REPUSH_ROLLOUT: &str = include_str!("../../fixtures/scenarios/repush-rollout.ndjson");
const ECS_REVISION_SWAP: &str = include_str!("../../fixtures/scenarios/ecs-revision-swap.ndjson");
const BENIGN: &str = include_str!("../../fixtures/scenarios/benign.ndjson");

/// When the scenario records start (their earliest record but the day-old push of the re-push
/// scenario): copies are placed relative to it.
const TEMPLATE_START: &str = "2026-11-20T02:00:00Z";
/// How long a scenario lasts, at most, from [`TEMPLATE_START`].
const TEMPLATE_SPAN_SECS: i64 = 3_600;
/// The Kubernetes namespace of the scenario records.
const TEMPLATE_NAMESPACE: &str = "shop";
/// The ECS task-definition family of the ECS scenario.
const TEMPLATE_FAMILY: &str = "payments";
/// The AWS account and region of the ECS scenario.
const ECS_ACCOUNT_REGION: &str = "111122223333/us-east-1";

/// Longest period generated: ten years.
const MAX_DURATION_SECS: u64 = 10 * 366 * 86_400;
/// Earliest and latest start, nanoseconds since the epoch (1971-01-01 to 2200-01-01): every
/// shifted timestamp stays far inside `i64` nanoseconds.
const START_RANGE: (i64, i64) = (31_536_000 * NANOS_PER_SEC, 7_258_118_400 * NANOS_PER_SEC);
/// Most attack chains in one run.
const MAX_ATTACKS: u32 = 1_000_000;

/// The attack patterns of the design, each from its scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// A never-approved image deployed straight from a public registry, running a miner.
    PublicImage,
    /// An approved workload; a renamed miner started through `kubectl exec`, reaching a pool on
    /// port 443 known only by its domain.
    ExecIntoApproved,
    /// An approved tag re-pushed with a new digest by an untrusted account, then a rollout
    /// restart swaps it in and the miner runs.
    RepushRollout,
    /// An ECS task-definition revision that swaps in an unapproved image with a miner command.
    EcsRevisionSwap,
}

impl Pattern {
    /// Every pattern, in the order attacks cycle through them.
    pub const ALL: [Pattern; 4] = [
        Pattern::PublicImage,
        Pattern::ExecIntoApproved,
        Pattern::RepushRollout,
        Pattern::EcsRevisionSwap,
    ];

    /// The pattern's name in the ground truth.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::PublicImage => "public-image",
            Pattern::ExecIntoApproved => "exec-into-approved",
            Pattern::RepushRollout => "repush-rollout",
            Pattern::EcsRevisionSwap => "ecs-revision-swap",
        }
    }

    /// The stages the correlator must find, under `config/policy.example.yaml`.
    pub fn stages(self) -> &'static [&'static str] {
        match self {
            Pattern::PublicImage => &["deploy", "execution", "impact"],
            Pattern::ExecIntoApproved => &["implant", "execution", "impact"],
            Pattern::RepushRollout => &["image", "implant", "execution"],
            Pattern::EcsRevisionSwap => &["deploy", "execution"],
        }
    }

    fn template(self) -> &'static str {
        match self {
            Pattern::PublicImage => PUBLIC_IMAGE,
            Pattern::ExecIntoApproved => EXEC_INTO_APPROVED,
            Pattern::RepushRollout => REPUSH_ROLLOUT,
            Pattern::EcsRevisionSwap => ECS_REVISION_SWAP,
        }
    }

    /// The attacked workload's name in the scenario.
    fn workload(self) -> &'static str {
        match self {
            Pattern::PublicImage => "miner-web",
            Pattern::ExecIntoApproved => "api",
            Pattern::RepushRollout => "web",
            Pattern::EcsRevisionSwap => TEMPLATE_FAMILY,
        }
    }
}

/// The sources, one output file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Falco alerts, as falcosidekick forwards them.
    Falco,
    /// Tetragon JSON export.
    Tetragon,
    /// Kubernetes audit events (log backend).
    K8sAudit,
    /// CloudTrail records.
    CloudTrail,
    /// EventBridge events.
    EventBridge,
    /// CNCF Distribution notifications.
    Distribution,
    /// Harbor webhooks.
    Harbor,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 7] = [
        Source::Falco,
        Source::Tetragon,
        Source::K8sAudit,
        Source::CloudTrail,
        Source::EventBridge,
        Source::Distribution,
        Source::Harbor,
    ];

    /// The source's name: its file is `NAME.ndjson`, and it is the `tidemark ingest` format
    /// that reads it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Falco => "falco",
            Source::Tetragon => "tetragon",
            Source::K8sAudit => "k8s-audit",
            Source::CloudTrail => "cloudtrail",
            Source::EventBridge => "eventbridge",
            Source::Distribution => "distribution",
            Source::Harbor => "harbor",
        }
    }

    /// Range of the delivery delay, in milliseconds.
    fn delay_ms(self) -> (u64, u64) {
        match self {
            Source::Falco | Source::Tetragon => (50, 1_000),
            Source::Distribution | Source::Harbor => (100, 2_000),
            Source::EventBridge => (500, 10_000),
            Source::K8sAudit => (1_000, 60_000),
            Source::CloudTrail => (30_000, 300_000),
        }
    }

    /// The source of a scenario record, from its top-level keys.
    fn of(record: &Value) -> Option<Source> {
        let has = |key: &str| record.get(key).is_some();
        if has("process_exec") || has("process_kprobe") {
            Some(Source::Tetragon)
        } else if has("rule") && has("output") {
            Some(Source::Falco)
        } else if record.get("kind").and_then(Value::as_str) == Some("Event") {
            Some(Source::K8sAudit)
        } else if has("eventVersion") {
            Some(Source::CloudTrail)
        } else if has("detail-type") {
            Some(Source::EventBridge)
        } else if has("events") {
            Some(Source::Distribution)
        } else if has("occur_at") || has("specversion") {
            Some(Source::Harbor)
        } else {
            None
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Records to write in all, attacks included.
    pub events: u64,
    /// Output directory (created when missing).
    pub out: PathBuf,
    /// Start of the generated period, nanoseconds since the epoch.
    pub start_unix_nano: i64,
    /// Length of the generated period, in seconds (at least one hour: a chain takes up to one).
    pub duration_secs: u64,
    /// Number of attack chains; they cycle through the patterns.
    pub attacks: u32,
    /// Number of namespaces with benign activity only.
    pub namespaces: u32,
    /// Name of the Kubernetes cluster: the sources name none, so it is what ingest is told for
    /// their topics (and `replay --cluster`), and what the ground truth's keys say.
    pub cluster: String,
}

impl GenerateOptions {
    /// Checks the options, naming the first that is wrong.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Invalid`] for an empty cluster name, a period under an hour, no benign
    /// namespace, or too few events for the attacks asked for.
    pub fn validate(&self) -> Result<()> {
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return Err(Error::Invalid(
                "`--cluster` must be a non-empty name without `/`".to_owned(),
            ));
        }
        if self.duration_secs < TEMPLATE_SPAN_SECS.unsigned_abs() {
            return Err(Error::Invalid(format!(
                "`--duration` must be at least {TEMPLATE_SPAN_SECS}s: an attack chain spans up to an hour"
            )));
        }
        if self.duration_secs > MAX_DURATION_SECS {
            return Err(Error::Invalid(format!(
                "`--duration` must be at most {MAX_DURATION_SECS}s (ten years)"
            )));
        }
        let (earliest, latest) = START_RANGE;
        if !(earliest..=latest).contains(&self.start_unix_nano) {
            return Err(Error::Invalid(
                "`--start` must be between 1971 and 2200".to_owned(),
            ));
        }
        if self.attacks > MAX_ATTACKS {
            return Err(Error::Invalid(format!(
                "`--attacks` must be at most {MAX_ATTACKS}"
            )));
        }
        if self.namespaces == 0 {
            return Err(Error::Invalid(
                "`--namespaces` must be at least 1".to_owned(),
            ));
        }
        let needed = attack_records(self.attacks);
        if self.events < needed {
            return Err(Error::Invalid(format!(
                "`--events` must be at least {needed} to hold {} attacks",
                self.attacks
            )));
        }
        Ok(())
    }
}

/// One injected attack, as written to the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attack {
    /// The attacked workload's key, as the correlator names it.
    pub workload: String,
    /// The pattern.
    pub pattern: &'static str,
    /// The stages the correlator must find.
    pub stages: &'static [&'static str],
    /// Event time of the chain's first record, RFC 3339.
    pub first_event: String,
    /// Event time of the chain's last record, RFC 3339: from then on, all its evidence exists.
    pub last_event: String,
    /// Event time of the chain's last record, nanoseconds since the epoch.
    pub last_event_unix_nano: i64,
    /// Records the chain has.
    pub records: usize,
}

/// Clock skew and delivery of one source, as written to the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceTruth {
    /// The file, in the output directory.
    pub file: String,
    /// Records written.
    pub records: u64,
    /// Clock skew of the source, milliseconds (added to every event time it writes).
    pub skew_ms: i64,
    /// Range of the delivery delay, milliseconds.
    pub delay_ms: (u64, u64),
}

/// The ground truth: what was generated, and which workloads are attacked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Truth {
    /// The seed.
    pub seed: u64,
    /// Records written in all.
    pub events: u64,
    /// Kubernetes cluster name the keys use.
    pub cluster: String,
    /// Start of the period, RFC 3339.
    pub start: String,
    /// Length of the period, seconds.
    pub duration_secs: u64,
    /// Number of benign namespaces.
    pub benign_namespaces: u32,
    /// The sources.
    pub sources: BTreeMap<&'static str, SourceTruth>,
    /// The attacks, by start time.
    pub attacks: Vec<Attack>,
}

/// Name of the ground-truth file in the output directory.
pub const TRUTH_FILE: &str = "truth.json";

/// A small, fast, deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high` (`low` when `high` is not above it).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        match (high - low).checked_add(1) {
            Some(width) => low + self.next_u64() % width,
            // The whole range of u64.
            None => self.next_u64(),
        }
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

/// A scenario's records, parsed, with their sources.
struct Template {
    records: Vec<(Source, Value)>,
}

impl Template {
    fn parse(text: &str) -> Result<Template> {
        let mut records = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record: Value = serde_json::from_str(line).map_err(|error| {
                Error::Template(format!("a scenario record is not JSON: {error}"))
            })?;
            let source = Source::of(&record).ok_or_else(|| {
                Error::Template(format!("a scenario record has no known source: {line:.80}"))
            })?;
            records.push((source, record));
        }
        Ok(Template { records })
    }
}

/// How one copy of a record is made real.
struct Placement<'a> {
    /// Offset added to every timestamp, nanoseconds (the copy's offset plus the source's skew).
    shift_nano: i64,
    /// Words replaced, whole-word, in every string.
    words: &'a [(&'a str, String)],
    /// UUIDs already replaced in this copy.
    uuids: &'a mut BTreeMap<String, String>,
}

/// One copy of a scenario, or of one benign record, placed in the fleet: its identity word, its
/// offset in time, and the UUIDs it has replaced so far.
struct Instance<'a> {
    /// Offset of the copy from the scenario records, nanoseconds.
    offset_nano: i64,
    /// Where the scenario records start, nanoseconds since the epoch.
    template_start: i64,
    /// The identity word replaced, and its replacement.
    words: [(&'static str, String); 1],
    uuids: BTreeMap<String, String>,
    skews: &'a BTreeMap<Source, i64>,
}

impl Instance<'_> {
    /// Returns a placed copy of a template record of `source` and its event time.
    fn copy(&mut self, source: Source, record: &Value, rng: &mut Rng) -> (Value, i64) {
        let mut placement = Placement {
            shift_nano: self.offset_nano + self.skews[&source] * 1_000_000,
            words: &self.words,
            uuids: &mut self.uuids,
        };
        let mut copy = record.clone();
        place(&mut copy, None, &mut placement, rng);
        // Every template record has a time field (a unit test checks it).
        let event_nano = event_time(&copy).unwrap_or(self.offset_nano + self.template_start);
        (copy, event_nano)
    }
}

/// Generates the files; returns the ground truth, which is also written to [`TRUTH_FILE`].
///
/// # Errors
///
/// Returns [`Error::Invalid`] for invalid options and [`Error::Io`] when a file cannot be
/// written.
pub fn generate(options: &GenerateOptions) -> Result<Truth> {
    options.validate()?;
    let mut rng = Rng::new(options.seed);
    let template_start = parse_rfc3339(TEMPLATE_START)
        .ok_or_else(|| Error::Template("template start is not RFC 3339".to_owned()))?
        .unix_nano;
    let skews: BTreeMap<Source, i64> = Source::ALL
        .iter()
        .map(|&s| (s, i64::try_from(rng.between(0, 4_000)).unwrap_or(0) - 2_000))
        .collect();
    let mut outputs: BTreeMap<Source, Vec<(i64, u64, String)>> = BTreeMap::new();
    let mut sequence = 0_u64;
    let mut emit = |rng: &mut Rng, source: Source, event_nano: i64, record: &Value| {
        let (low, high) = source.delay_ms();
        let delay = i64::try_from(rng.between(low, high)).unwrap_or(0) * 1_000_000;
        sequence += 1;
        outputs.entry(source).or_default().push((
            event_nano.saturating_add(delay),
            sequence,
            record.to_string(),
        ));
    };

    let span_nano =
        i64::try_from(options.duration_secs).unwrap_or(i64::MAX / NANOS_PER_SEC) * NANOS_PER_SEC;
    let chain_room = span_nano - TEMPLATE_SPAN_SECS * NANOS_PER_SEC;

    let mut attacks = Vec::new();
    let mut attack_records_written = 0_u64;
    for index in 0..options.attacks {
        let pattern = Pattern::ALL[index as usize % Pattern::ALL.len()];
        let template = Template::parse(pattern.template())?;
        let offset =
            options.start_unix_nano - template_start + random_below(&mut rng, chain_room.max(1));
        let (word, workload) = if pattern == Pattern::EcsRevisionSwap {
            let family = format!("{TEMPLATE_FAMILY}-{index:04}");
            let key = format!("ecs/{ECS_ACCOUNT_REGION}/{family}");
            ((TEMPLATE_FAMILY, family), key)
        } else {
            let namespace = format!("attack-{index:04}");
            let key = format!("k8s/{}/{namespace}/{}", options.cluster, pattern.workload());
            ((TEMPLATE_NAMESPACE, namespace), key)
        };
        let mut instance = Instance {
            offset_nano: offset,
            template_start,
            words: [word],
            uuids: BTreeMap::new(),
            skews: &skews,
        };
        let mut times = Vec::new();
        for (source, record) in &template.records {
            let (copy, event_nano) = instance.copy(*source, record, &mut rng);
            times.push(event_nano);
            emit(&mut rng, *source, event_nano, &copy);
            attack_records_written += 1;
        }
        let first = times.iter().copied().min().unwrap_or_default();
        let last = times.iter().copied().max().unwrap_or_default();
        attacks.push(Attack {
            workload,
            pattern: pattern.name(),
            stages: pattern.stages(),
            first_event: format_rfc3339(first, 3),
            last_event: format_rfc3339(last, 3),
            last_event_unix_nano: last,
            records: template.records.len(),
        });
    }

    let benign = Template::parse(BENIGN)?;
    let weights = benign_weights(&benign);
    let total_weight: u64 = weights.iter().sum();
    let benign_records = options.events - attack_records_written;
    for _ in 0..benign_records {
        let mut draw = rng.between(0, total_weight - 1);
        let pick = weights
            .iter()
            .position(|&w| {
                let hit = draw < w;
                draw = draw.saturating_sub(w);
                hit
            })
            .unwrap_or(0);
        let (source, record) = &benign.records[pick];
        let namespace = format!(
            "team-{:04}",
            rng.between(0, u64::from(options.namespaces) - 1)
        );
        let offset =
            options.start_unix_nano - template_start + random_below(&mut rng, chain_room.max(1));
        let (copy, event_nano) = Instance {
            offset_nano: offset,
            template_start,
            words: [(TEMPLATE_NAMESPACE, namespace)],
            uuids: BTreeMap::new(),
            skews: &skews,
        }
        .copy(*source, record, &mut rng);
        emit(&mut rng, *source, event_nano, &copy);
    }

    std::fs::create_dir_all(&options.out).map_err(|source| Error::Io {
        path: options.out.clone(),
        source,
    })?;
    let mut sources = BTreeMap::new();
    for source in Source::ALL {
        let mut records = outputs.remove(&source).unwrap_or_default();
        records.sort_unstable_by_key(|(arrival, sequence, _)| (*arrival, *sequence));
        let file = format!("{}.ndjson", source.name());
        write_lines(
            &options.out.join(&file),
            records.iter().map(|(_, _, l)| l.as_str()),
        )?;
        sources.insert(
            source.name(),
            SourceTruth {
                file,
                records: records.len() as u64,
                skew_ms: skews[&source],
                delay_ms: source.delay_ms(),
            },
        );
    }
    attacks.sort_by(|a, b| (&a.first_event, &a.workload).cmp(&(&b.first_event, &b.workload)));
    let truth = Truth {
        seed: options.seed,
        events: options.events,
        cluster: options.cluster.clone(),
        start: format_rfc3339(options.start_unix_nano, 0),
        duration_secs: options.duration_secs,
        benign_namespaces: options.namespaces,
        sources,
        attacks,
    };
    let path = options.out.join(TRUTH_FILE);
    let text = serde_json::to_string_pretty(&truth).map_err(|error| {
        Error::Template(format!("the ground truth does not serialize: {error}"))
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| Error::Io { path, source })?;
    Ok(truth)
}

/// Share of benign records per source, in percent: node sensors report every process and
/// connection, while control-plane writes and registry pushes are rare, as in a production
/// cluster's telemetry.
fn source_share(source: Source) -> u64 {
    match source {
        Source::Tetragon => 60,
        Source::Falco => 30,
        Source::K8sAudit => 6,
        Source::Harbor | Source::Distribution => 4,
        Source::CloudTrail | Source::EventBridge => 2,
    }
}

/// The weight of each benign template record: its source's share, split among the source's
/// records (scaled so that every record keeps a non-zero weight).
fn benign_weights(benign: &Template) -> Vec<u64> {
    benign
        .records
        .iter()
        .map(|(source, _)| {
            let siblings = benign.records.iter().filter(|(s, _)| s == source).count() as u64;
            (source_share(*source) * 1_000 / siblings.max(1)).max(1)
        })
        .collect()
}

/// How many records `attacks` attack chains take.
fn attack_records(attacks: u32) -> u64 {
    (0..attacks)
        .map(|index| {
            let pattern = Pattern::ALL[index as usize % Pattern::ALL.len()];
            pattern
                .template()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u64
        })
        .sum()
}

/// A number in `0..bound` nanoseconds.
fn random_below(rng: &mut Rng, bound: i64) -> i64 {
    i64::try_from(rng.next_u64() % bound.unsigned_abs()).unwrap_or(0)
}

/// The event time a placed record carries in the field its decoder reads.
fn event_time(record: &Value) -> Option<i64> {
    let text = [
        "time",
        "eventTime",
        "stageTimestamp",
        "requestReceivedTimestamp",
    ]
    .iter()
    .find_map(|key| record.get(*key).and_then(Value::as_str))
    .or_else(|| {
        record
            .pointer("/events/0/timestamp")
            .and_then(Value::as_str)
    });
    if let Some(text) = text {
        return parse_rfc3339(text).map(|t| t.unix_nano);
    }
    record
        .get("occur_at")
        .and_then(Value::as_i64)
        .map(|seconds| seconds * NANOS_PER_SEC)
}

/// Makes one copy of a record real: shifts its times, replaces its UUIDs and identity words.
fn place(value: &mut Value, key: Option<&str>, placement: &mut Placement<'_>, rng: &mut Rng) {
    match value {
        Value::String(text) => {
            if let Some(parsed) = parse_rfc3339(text) {
                *text = format_rfc3339(parsed.unix_nano + placement.shift_nano, parsed.digits);
            } else if key == Some("output") {
                *text = shift_output_prefix(text, placement.shift_nano);
                *text = replace_words(text, placement.words);
            } else if is_uuid(text) {
                let new = placement
                    .uuids
                    .entry(text.clone())
                    .or_insert_with(|| rng.uuid())
                    .clone();
                *text = new;
            } else {
                *text = replace_words(text, placement.words);
            }
        }
        Value::Number(number) => match key {
            Some("evt.time") => {
                if let Some(nano) = number.as_i64() {
                    *value = Value::from(nano + placement.shift_nano);
                }
            }
            Some("occur_at") => {
                if let Some(seconds) = number.as_i64() {
                    *value = Value::from(seconds + placement.shift_nano.div_euclid(NANOS_PER_SEC));
                }
            }
            _ => {}
        },
        Value::Array(items) => {
            for item in items {
                place(item, None, placement, rng);
            }
        }
        Value::Object(map) => {
            for (name, item) in map.iter_mut() {
                place(item, Some(name.as_str()), placement, rng);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// Moves the `HH:MM:SS.nnnnnnnnn:` time of day Falco starts its `output` with.
fn shift_output_prefix(output: &str, shift_nano: i64) -> String {
    let Some(prefix) = output.get(..18) else {
        return output.to_owned();
    };
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = prefix.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let bytes = prefix.as_bytes();
    let (Some(hours), Some(minutes), Some(seconds), Some(nanos)) =
        (digits(0..2), digits(3..5), digits(6..8), digits(9..18))
    else {
        return output.to_owned();
    };
    if bytes[2] != b':' || bytes[5] != b':' || bytes[8] != b'.' {
        return output.to_owned();
    }
    let of_day = (hours * 3_600 + minutes * 60 + seconds) * NANOS_PER_SEC + nanos;
    format!(
        "{}{}",
        format_time_of_day(of_day + shift_nano),
        &output[18..]
    )
}

/// Returns whether `text` is a UUID in its canonical form.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Replaces whole-word occurrences (bounded by anything but a letter, digit or `_`).
fn replace_words(text: &str, words: &[(&str, String)]) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut text = text.to_owned();
    for (from, to) in words {
        if !text.contains(from) {
            continue;
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut copied = 0;
        for (at, _) in text.match_indices(from) {
            let before = text[..at].chars().next_back();
            let after = text[at + from.len()..].chars().next();
            if !is_word(before) && !is_word(after) {
                out.push_str(&text[copied..at]);
                out.push_str(to);
                copied = at + from.len();
            }
        }
        out.push_str(&text[copied..]);
        text = out;
    }
    text
}

fn write_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    for line in lines {
        out.write_all(line.as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn identity_words_are_replaced_only_as_whole_words() {
        let words = [("shop", "attack-0001".to_owned())];
        assert_eq!(
            replace_words("/api/v1/namespaces/shop/pods/web-x", &words),
            "/api/v1/namespaces/attack-0001/pods/web-x"
        );
        assert_eq!(replace_words("shop", &words), "attack-0001");
        assert_eq!(
            replace_words("workshop shop_x shops", &words),
            "workshop shop_x shops"
        );
        assert_eq!(
            replace_words("registry.corp.example/shop/web:1.4", &words),
            "registry.corp.example/attack-0001/web:1.4"
        );
    }

    #[test]
    fn falco_output_time_of_day_moves_with_the_record() {
        let shifted = shift_output_prefix(
            "02:46:12.090871000: Notice Disallowed outbound",
            90 * NANOS_PER_SEC,
        );
        assert_eq!(shifted, "02:47:42.090871000: Notice Disallowed outbound");
        assert_eq!(shift_output_prefix("no time here", 5), "no time here");
    }

    #[test]
    fn every_scenario_record_has_a_source_and_an_event_time() {
        for text in [
            PUBLIC_IMAGE,
            EXEC_INTO_APPROVED,
            REPUSH_ROLLOUT,
            ECS_REVISION_SWAP,
            BENIGN,
        ] {
            for (_, record) in Template::parse(text).unwrap().records {
                assert!(event_time(&record).is_some(), "{record}");
            }
        }
    }

    #[test]
    fn generated_uuids_are_canonical() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            assert!(is_uuid(&rng.uuid()));
        }
    }
}
