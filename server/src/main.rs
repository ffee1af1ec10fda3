//! The `tidemark` binary: one executable, one subcommand per role.
//!
//! - `tidemark ingest`: a member of the ingest consumer group on Kafka.
//! - `tidemark normalize FILE...`: decodes telemetry files offline and prints one normalized
//!   signal per line, to check a feed before wiring it to Kafka.
//! - `tidemark correlate`: a member of the correlator group on Kafka, with state in RocksDB.
//! - `tidemark replay FILE...`: decodes and correlates telemetry files offline and prints the
//!   incidents, for backfill and forensics.

mod normalize;
mod replay;

/// Decoding allocates many small strings per record; mimalloc serves them markedly faster than
/// the system allocator (see the decode benchmark, which uses it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidemark_correlator::config::CorrelateConfig;
use tidemark_correlator::engine::Engine;
use tidemark_correlator::state::RocksStore;
use tidemark_correlator::worker::CorrelateWorker;
use tidemark_ingest::config::IngestConfig;
use tidemark_ingest::worker::IngestWorker;
use tracing::{error, info};

/// tidemark correlates container telemetry into cryptomining kill chains.
#[derive(Parser)]
#[command(name = "tidemark", version, about)]
struct Cli {
    /// Log filter, in `tracing` env-filter syntax (`info`, `tidemark_ingest=debug`).
    #[arg(long, global = true, env = "TIDEMARK_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume raw telemetry topics and produce signals, image facts and dead letters.
    Ingest {
        /// Configuration file (YAML); without it the defaults apply. `TIDEMARK_INGEST__*`
        /// environment variables override keys (`TIDEMARK_INGEST__KAFKA__BROKERS=host:9092`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decode telemetry files and print one normalized signal per line as JSON.
    ///
    /// Files may hold NDJSON, one JSON document, or arrays and envelopes of records; `-` reads
    /// standard input. Records that cannot be decoded are reported on standard error with their
    /// file and line; the exit status is 1 if any was.
    Normalize {
        /// Files to decode; `-` for standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Decode every record as this format instead of detecting it (`falco`, `k8s-audit`, ...).
        #[arg(long, default_value = "auto")]
        format: String,
        /// Cluster name for records that do not name their cluster.
        #[arg(long, default_value = "")]
        cluster: String,
    },
    /// Correlate the signals topic into incidents on Kafka, with state in RocksDB.
    ///
    /// Joins the correlator group on the signals topic, reads the whole image-facts topic, and
    /// publishes every new incident version to the incidents topic (JSON, keyed by incident
    /// id). State, consumed offsets and outputs are stored together; a restart resumes from
    /// them and publishes nothing twice.
    Correlate {
        /// Configuration file (YAML); without it the defaults apply. `TIDEMARK_CORRELATE__*`
        /// environment variables override keys (`TIDEMARK_CORRELATE__STATE__DIR=/data`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decode and correlate telemetry files offline; print the final incidents.
    ///
    /// Records may come from any supported source, mixed in one file and in any order: they
    /// are correlated in event-time order, so the same records in any order give the same
    /// incidents. Records that cannot be decoded are reported on standard error; the exit
    /// status is 1 if any was.
    Replay {
        /// Telemetry files; `-` for standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Detection policy (YAML); without it the built-in indicators apply and deployed
        /// images are not judged (no registry is approved).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Keep the correlator's RocksDB state in this directory (created if missing); a later
        /// replay into the same directory adds to it. Default: a temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Cluster name for records that do not name their cluster.
        #[arg(long, default_value = "")]
        cluster: String,
        /// Output: `json` (one incident per line) or `table`.
        #[arg(long, value_enum, default_value = "json")]
        format: replay::OutputFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        Command::Ingest { config } => run_ingest(config),
        Command::Normalize {
            files,
            format,
            cluster,
        } => normalize::run(&files, &format, &cluster).map(|all_decoded| {
            if all_decoded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Command::Correlate { config } => run_correlate(config),
        Command::Replay {
            files,
            policy,
            state_dir,
            cluster,
            format,
        } => replay::run(&replay::ReplayArgs {
            files,
            policy,
            state_dir,
            cluster,
            output: format,
        })
        .map(|all_ok| {
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            error!(error = format!("{error:#}"), "tidemark failed");
            ExitCode::from(2)
        }
    }
}

fn run_ingest(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = IngestConfig::load(config_path.as_deref(), tidemark_env()?)
        .context("failed to load the ingest configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let worker = IngestWorker::try_new(config).context("failed to start the ingest worker")?;
        let stats = worker
            .run(shutdown_signal())
            .await
            .context("ingest worker stopped")?;
        info!(
            num_records = stats.num_records,
            num_retired = stats.num_retired,
            "ingest exited"
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn run_correlate(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = CorrelateConfig::load(config_path.as_deref(), tidemark_env()?)
        .context("failed to load the correlate configuration")?;
    let policy = replay::load_policy(config.state.policy.as_deref())?;
    let dir = &config.state.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create state directory `{}`", dir.display()))?;
    let store = RocksStore::open(dir)
        .with_context(|| format!("failed to open the state in `{}`", dir.display()))?;
    let mut worker = CorrelateWorker::try_new(config, Engine::new(policy, store))
        .context("failed to start the correlator")?;
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let stopper = Arc::clone(&stop);
    std::thread::spawn(move || {
        runtime.block_on(shutdown_signal());
        info!("stopping after the batch in progress");
        stopper.store(true, Ordering::Relaxed);
    });
    worker.run(&stop).context("correlator stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// The `TIDEMARK_*` environment variables, which override configuration keys. Other variables
/// are not read, so a non-UTF-8 value elsewhere in the environment does no harm; a non-UTF-8
/// `TIDEMARK_*` variable is an error rather than an override silently ignored.
fn tidemark_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut variables = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !name.as_encoded_bytes().starts_with(b"TIDEMARK_") {
            continue;
        }
        let (Some(name_text), Some(value_text)) = (name.to_str(), value.to_str()) else {
            anyhow::bail!("environment variable {name:?} is not valid UTF-8");
        };
        variables.push((name_text.to_owned(), value_text.to_owned()));
    }
    Ok(variables)
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops ingest");
                    if let Err(error) = ctrl_c.await {
                        error!(%error, "cannot listen for Ctrl-C either; stopping now");
                    }
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested");
    }
    #[cfg(not(unix))]
    if let Err(error) = ctrl_c.await {
        error!(%error, "cannot listen for Ctrl-C; stopping now");
    }
}
