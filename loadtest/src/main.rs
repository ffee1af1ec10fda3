//! `tidemark-loadtest`: generates realistic telemetry with injected attack chains, and drives it
//! through tidemark on Kafka to measure speed and detection quality.

mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidemark_loadtest::generate::{GenerateOptions, TRUTH_FILE, generate};
use tidemark_loadtest::time::parse_rfc3339;

#[derive(Parser)]
#[command(name = "tidemark-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a fleet's telemetry, one NDJSON file per source, and the ground truth.
    ///
    /// Attack chains (every pattern of the design, cycled) are injected at random times among
    /// benign activity; each file is in arrival order, with per-source clock skew and delivery
    /// delay. The same options give the same files.
    Generate {
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Records to write in all, attacks included.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Start of the period, RFC 3339 UTC.
        #[arg(long, default_value = "2026-11-20T00:00:00Z")]
        start: String,
        /// Length of the period in seconds (at least 3600).
        #[arg(long, default_value_t = 6 * 3_600)]
        duration: u64,
        /// Attack chains to inject.
        #[arg(long, default_value_t = 8)]
        attacks: u32,
        /// Namespaces with benign activity.
        #[arg(long, default_value_t = 200)]
        namespaces: u32,
        /// Kubernetes cluster name (the sources name none; give the same to ingest or replay).
        #[arg(long, default_value = "prod-eu")]
        cluster: String,
    },
    /// Drive generated telemetry through tidemark's roles on Kafka and measure it.
    ///
    /// Starts `tidemark broker` (an embedded broker on 127.0.0.1) unless `--brokers` is given,
    /// and `tidemark ingest`, `correlate` and `api`, each a process of its own; publishes every
    /// record of the generated files to the raw topic in event-time order, at `--rate` or flat
    /// out; watches the incident API; and reports throughput, CPU and memory of each process,
    /// detection latency, recall and precision against `truth.json`, and dead-letter and late
    /// counts.
    Run {
        /// Directory written by `generate`.
        #[arg(long)]
        input: PathBuf,
        /// The `tidemark` binary.
        #[arg(long, default_value = "target/release/tidemark")]
        tidemark: PathBuf,
        /// Detection policy for the correlator.
        #[arg(long, default_value = "config/policy.example.yaml")]
        policy: PathBuf,
        /// Records per second; 0 sends flat out.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Longest the run may take, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// gRPC address for the incident API.
        #[arg(long, default_value = "127.0.0.1:50071")]
        grpc_listen: String,
        /// Use this Kafka cluster instead of the embedded broker (create the topics first).
        #[arg(long)]
        brokers: Option<String>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tidemark-loadtest: {error:#}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            input,
            tidemark,
            policy,
            rate,
            timeout,
            grpc_listen,
            brokers,
            report,
        } => {
            let options = run::RunOptions {
                input,
                tidemark,
                policy,
                rate,
                timeout: std::time::Duration::from_secs(timeout),
                grpc_listen,
                brokers,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            let measured = runtime.block_on(run::run(&options))?;
            run::print(&measured, &mut std::io::stdout().lock())?;
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&measured)?)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            Ok(())
        }
        Command::Generate {
            seed,
            events,
            out,
            start,
            duration,
            attacks,
            namespaces,
            cluster,
        } => {
            let start_unix_nano = parse_rfc3339(&start)
                .with_context(|| format!("`--start` `{start}` is not an RFC 3339 UTC time"))?
                .unix_nano;
            let options = GenerateOptions {
                seed,
                events,
                out: out.clone(),
                start_unix_nano,
                duration_secs: duration,
                attacks,
                namespaces,
                cluster,
            };
            let truth = generate(&options).context("generation failed")?;
            #[allow(clippy::print_stdout)]
            {
                for (name, source) in &truth.sources {
                    println!("{name:<13} {:>10} records  {}", source.records, source.file);
                }
                println!(
                    "{} attacks; ground truth in {}",
                    truth.attacks.len(),
                    out.join(TRUTH_FILE).display()
                );
            }
            Ok(())
        }
    }
}
