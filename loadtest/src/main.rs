//! `tidemark-loadtest`: generates realistic telemetry with injected attack chains.

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
