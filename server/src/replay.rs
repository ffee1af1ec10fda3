//! `tidemark replay`: the whole path offline. Decodes raw telemetry files, correlates them in
//! event-time order over RocksDB state, and prints the final incidents.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tidemark_correlator::engine::Engine;
use tidemark_correlator::model::Incident;
use tidemark_correlator::policy::Policy;
use tidemark_correlator::replay::replay;
use tidemark_correlator::state::RocksStore;
use tidemark_ingest::decode::InputFormat;
use tidemark_proto::v1::Signal;

use crate::normalize::decode_content;
use tracing::info;

/// How incidents are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// One JSON incident per line.
    Json,
    /// A table and the summaries, for people.
    Table,
}

/// What `replay` was asked to do.
pub(crate) struct ReplayArgs {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) policy: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) cluster: String,
    pub(crate) output: OutputFormat,
}

/// Loads the detection policy from `path`, or the built-in one without a path, and says when it
/// judges no deployed image.
pub(crate) fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    let policy = match path {
        Some(path) => Policy::load(path)?,
        None => Policy::builtin()?,
    };
    if !policy.judges_images() {
        info!("the policy approves no registry or digest: deployed images are not judged");
    }
    Ok(policy)
}

/// Runs a replay. Returns whether every record decoded and was correlated.
pub(crate) fn run(args: &ReplayArgs) -> anyhow::Result<bool> {
    let policy = load_policy(args.policy.as_deref())?;
    let now = tidemark_common::time::now_unix_nano();

    let mut stderr = std::io::stderr().lock();
    let mut all_ok = true;
    let mut signals: Vec<Signal> = Vec::new();
    for file in &args.files {
        let (name, content) = crate::normalize::read(file)?;
        // One record a line in NDJSON: reserving for them up front spares the repeated copies
        // of a growing vector of large signals (a tenth of a replay's time on a large backfill).
        // Only lines that open an object are counted, so the many lines of a pretty-printed
        // document do not reserve room for signals that never come.
        signals.reserve(memchr::memmem::find_iter(&content, b"\n{").count() + 1);
        let format = InputFormat::Auto;
        all_ok &= decode_content(
            &name,
            &content,
            format,
            &args.cluster,
            now,
            &mut stderr,
            |s| {
                signals.push(s);
                Ok(())
            },
        )?;
    }

    // Without --state-dir the state lives in a temporary directory removed at the end.
    let temporary;
    let state_dir: &Path = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create state directory `{}`", dir.display()))?;
            dir
        }
        None => {
            temporary = tempfile::tempdir().context("failed to create a temporary state dir")?;
            temporary.path()
        }
    };
    let store = RocksStore::open(state_dir)
        .with_context(|| format!("failed to open the state in `{}`", state_dir.display()))?;
    let engine = Engine::new(policy, store);
    let num_signals = signals.len();
    let report = replay(&engine, signals, now).context("correlation failed")?;
    for rejected in report.future.iter().chain(&report.late) {
        all_ok = false;
        let raw = rejected.signal.raw.clone().unwrap_or_default();
        let what = if rejected.reason == "future" {
            "event time is too far in the future (more than max_future_skew ahead of now)"
        } else {
            "event time is older than the state's watermark minus allowed_lateness"
        };
        writeln!(stderr, "{}:{}: {what}", raw.topic, raw.line)?;
    }
    info!(
        num_signals,
        num_applied = report.num_applied,
        num_incidents = report.incidents.len(),
        "replay finished"
    );

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match args.output {
        OutputFormat::Json => {
            for incident in &report.incidents {
                serde_json::to_writer(&mut out, incident)?;
                out.write_all(b"\n")?;
            }
        }
        OutputFormat::Table => write_table(&mut out, &report.incidents)?,
    }
    out.flush()?;
    Ok(all_ok)
}

/// Writes one row per incident, then each incident's summary.
fn write_table(out: &mut impl Write, incidents: &[Incident]) -> std::io::Result<()> {
    if incidents.is_empty() {
        return writeln!(out, "no incident");
    }
    writeln!(
        out,
        "{:<16}  {:<8}  {:>3}  {:<40}  {:<24}  STAGES",
        "ID", "SEVERITY", "VER", "WORKLOAD", "FIRST SEEN"
    )?;
    for incident in incidents {
        let severity = serde_json::to_value(incident.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<16}  {:<8}  {:>3}  {:<40}  {:<24}  {}",
            incident.id,
            severity,
            incident.version,
            incident.workload.key,
            incident.first_seen,
            incident.stages.join(",")
        )?;
    }
    for incident in incidents {
        writeln!(out)?;
        writeln!(out, "{}: {}", incident.id, incident.summary)?;
    }
    Ok(())
}
