//! The `tidemark` binary: one executable, one subcommand per role.
//!
//! - `tidemark ingest`: a member of the ingest consumer group on Kafka.
//! - `tidemark normalize FILE...`: decodes telemetry files offline and prints one normalized
//!   signal per line, to check a feed before wiring it to Kafka.
//! - `tidemark correlate`: a member of the correlator group on Kafka, with state in RocksDB.
//! - `tidemark replay FILE...`: decodes and correlates telemetry files offline and prints the
//!   incidents, for backfill and forensics.
//! - `tidemark api`: serves incidents over gRPC from its own store of the incidents topic.
//! - `tidemark run`: ingest, correlate and api in one process, on an embedded broker by default.
//! - `tidemark broker`: the embedded broker alone, for roles run as separate processes on one
//!   machine (the loadtest runs them so, to measure each one).
//! - `tidemark publish FILE...`: sends telemetry files to a raw topic.
//! - `tidemark incidents ...`: the analyst's command line over the API.

mod incidents;
mod normalize;
mod publish;
mod replay;
mod run;

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
    /// Serve incidents over gRPC (ListIncidents, GetIncident, WatchIncidents,
    /// UpdateIncidentStatus, GetWorkloadTimeline, ExportIncidents), with health and reflection.
    ///
    /// Reads the incidents, status and signals topics into its own RocksDB store; replicas run
    /// side by side, each with its own store, and agree through the status topic.
    Api {
        /// Configuration file (YAML); without it the defaults apply. `TIDEMARK_API__*`
        /// environment variables override keys (`TIDEMARK_API__SERVER__LISTEN=0.0.0.0:50051`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run ingest, correlate and api in one process.
    ///
    /// Without `--brokers` it starts an embedded Kafka broker on 127.0.0.1 (in memory: it keeps
    /// nothing across restarts, and the state directories are cleared at start) and creates
    /// the topics. `TIDEMARK_INGEST__*`, `TIDEMARK_CORRELATE__*` and `TIDEMARK_API__*` variables
    /// override the roles' configuration.
    Run {
        /// Directory for the correlator's and the api's RocksDB stores.
        #[arg(long, default_value = "tidemark-data")]
        data_dir: PathBuf,
        /// gRPC address of the API.
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_listen: String,
        /// Detection policy (YAML); without it the built-in indicators apply and deployed
        /// images are not judged.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Telemetry files to publish to the raw topic once everything has started, all records
        /// in event-time order (as a live feed would deliver them).
        #[arg(long, num_args = 1..)]
        replay: Vec<PathBuf>,
        /// Use this Kafka cluster instead of the embedded broker (the topics must exist).
        #[arg(long)]
        brokers: Option<String>,
        /// Cluster name for records that do not name their cluster.
        #[arg(long, default_value = "")]
        cluster: String,
    },
    /// Run only the embedded Kafka broker, with every topic the roles use, until Ctrl-C or
    /// SIGTERM.
    ///
    /// For running `tidemark ingest`, `correlate` and `api` as separate processes on one
    /// machine, as they run in production, without a Kafka cluster: point each role at the
    /// address it logs. The broker is librdkafka's mock cluster: in memory, nothing survives a
    /// restart. The topic names follow the roles' configuration (`TIDEMARK_INGEST__*`,
    /// `TIDEMARK_CORRELATE__*`, `TIDEMARK_API__*` variables).
    Broker,
    /// Send telemetry files to a raw topic, one Kafka record per JSON record.
    Publish {
        /// Bootstrap servers, comma-separated.
        #[arg(long, env = "TIDEMARK_BROKERS")]
        brokers: String,
        /// Raw topic to send to.
        #[arg(long, default_value = "tidemark.raw")]
        topic: String,
        /// Send order: `file` (as the files hold them) or `event-time` (all records sorted by
        /// the time of their events, as a live feed would deliver them).
        #[arg(long, value_enum, default_value = "file")]
        order: publish::Order,
        /// Extra librdkafka properties, `KEY=VALUE` (`security.protocol=SASL_SSL`).
        #[arg(long = "property", short = 'X', value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Files of NDJSON, JSON documents or arrays; `-` for standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Query and handle incidents through the API.
    Incidents {
        #[command(flatten)]
        connection: Box<incidents::Connection>,
        #[command(subcommand)]
        action: incidents::Action,
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
        Command::Api { config } => run_api(config),
        Command::Run {
            data_dir,
            grpc_listen,
            policy,
            replay,
            brokers,
            cluster,
        } => tidemark_env().and_then(|env| {
            run::run(run::RunArgs {
                data_dir,
                grpc_listen,
                policy,
                replay,
                brokers,
                cluster,
                env,
            })
            .map(|()| ExitCode::SUCCESS)
        }),
        Command::Broker => tidemark_env()
            .and_then(run::broker)
            .map(|()| ExitCode::SUCCESS),
        Command::Publish {
            brokers,
            topic,
            order,
            properties,
            files,
        } => run_publish(&brokers, &topic, order, &properties, &files),
        Command::Incidents { connection, action } => current_thread_runtime()
            .and_then(|runtime| runtime.block_on(incidents::run(*connection, action)))
            .map(|()| ExitCode::SUCCESS),
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

fn run_api(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = tidemark_api::config::ApiConfig::load(config_path.as_deref(), tidemark_env()?)
        .context("failed to load the api configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let listener = tidemark_api::server::bind(&config).await?;
        tidemark_api::server::run(config, listener, shutdown_signal())
            .await
            .context("api stopped")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_publish(
    brokers: &str,
    topic: &str,
    order: publish::Order,
    properties: &[(String, String)],
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let runtime = current_thread_runtime()?;
    runtime.block_on(async {
        let producer = publish::producer(brokers, properties)?;
        let published = publish::publish(&producer, topic, files, order).await?;
        info!(
            num_records = published.num_records,
            num_invalid = published.num_invalid,
            num_failed = published.num_failed,
            topic,
            "published"
        );
        Ok(if published.num_invalid == 0 && published.num_failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
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
pub(crate) async fn shutdown_signal() {
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
