//! `tidemark run`: every role in one process — ingest, correlate and api — for a laptop, a
//! demo or a small site.
//!
//! Without `--brokers` it starts an embedded Kafka broker (librdkafka's mock cluster) on
//! 127.0.0.1 and creates the topics, so the roles run their production code paths unchanged.
//! The embedded broker keeps nothing across restarts: its topics live in memory. Because the
//! correlator and the api store their Kafka positions with their state, `run` clears their state
//! directories at start when the broker is embedded. With `--brokers` it joins a real cluster
//! (the topics must exist) and keeps its state.
//!
//! `tidemark broker` starts the same embedded broker and topics without the roles, so that each
//! role can run as a process of its own against it.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tidemark_api::config::ApiConfig;
use tidemark_correlator::config::CorrelateConfig;
use tidemark_correlator::engine::Engine;
use tidemark_correlator::state::RocksStore;
use tidemark_correlator::worker::CorrelateWorker;
use tidemark_ingest::config::IngestConfig;
use tidemark_ingest::worker::IngestWorker;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::publish;

/// What `run` was asked to do.
pub(crate) struct RunArgs {
    pub(crate) data_dir: PathBuf,
    pub(crate) grpc_listen: String,
    pub(crate) policy: Option<PathBuf>,
    pub(crate) replay: Vec<PathBuf>,
    pub(crate) brokers: Option<String>,
    pub(crate) cluster: String,
    pub(crate) env: Vec<(String, String)>,
}

/// Partitions of each topic but the raw ones on the embedded broker.
const EMBEDDED_PARTITIONS: i32 = 3;

/// Why a role stopped.
struct Stopped {
    role: &'static str,
    result: anyhow::Result<()>,
}

/// Runs every role until Ctrl-C or SIGTERM, or until one of them fails.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut ingest = IngestConfig::load(None, args.env.clone())
        .context("failed to load the ingest configuration")?;
    let mut correlate = CorrelateConfig::load(None, args.env.clone())
        .context("failed to load the correlate configuration")?;
    let mut api =
        ApiConfig::load(None, args.env.clone()).context("failed to load the api configuration")?;

    for file in &args.replay {
        if file != std::path::Path::new("-") && !file.is_file() {
            anyhow::bail!(
                "replay file `{}` does not exist or is not a file",
                file.display()
            );
        }
    }
    let (embedded, brokers): (Option<MockCluster<'static, DefaultProducerContext>>, String) =
        match &args.brokers {
            Some(brokers) => (None, brokers.clone()),
            None => {
                let cluster = start_embedded(&ingest, &correlate, &api)?;
                let brokers = cluster.bootstrap_servers();
                (Some(cluster), brokers)
            }
        };

    let correlate_dir = args.data_dir.join("correlate");
    let api_dir = args.data_dir.join("api");
    if embedded.is_some() {
        for dir in [&correlate_dir, &api_dir] {
            if dir.exists() {
                info!(dir = %dir.display(), "clearing state left from an earlier run: the embedded broker starts empty");
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("failed to clear `{}`", dir.display()))?;
            }
        }
    }
    ingest.kafka.brokers.clone_from(&brokers);
    if !args.cluster.is_empty() {
        for raw in &mut ingest.topics.raw {
            raw.cluster.clone_from(&args.cluster);
        }
    }
    ingest.validate()?;
    correlate.kafka.brokers.clone_from(&brokers);
    correlate.state.dir = correlate_dir;
    if args.policy.is_some() {
        correlate.state.policy.clone_from(&args.policy);
    }
    correlate.validate()?;
    api.kafka.brokers.clone_from(&brokers);
    // The api reads what the other roles in this process write.
    api.topics.incidents.clone_from(&correlate.topics.incidents);
    api.topics.signals.clone_from(&ingest.topics.signals);
    api.store.dir = api_dir;
    api.server.listen.clone_from(&args.grpc_listen);
    api.validate()?;
    let raw_topic = ingest
        .topics
        .raw
        .first()
        .map(|raw| raw.name.clone())
        .context("no raw topic is configured")?;

    let policy = crate::replay::load_policy(correlate.state.policy.as_deref())?;
    std::fs::create_dir_all(&correlate.state.dir)
        .with_context(|| format!("failed to create `{}`", correlate.state.dir.display()))?;
    let store = RocksStore::open(&correlate.state.dir)
        .with_context(|| format!("failed to open `{}`", correlate.state.dir.display()))?;
    let mut correlator = CorrelateWorker::try_new(correlate, Engine::new(policy, store))
        .context("failed to start the correlator")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async move {
        let listener = tidemark_api::server::bind(&api).await?;
        let address = listener.local_addr().context("listener has no address")?;
        let (stop, stopped) = watch::channel(false);
        let (report, mut reports) = mpsc::channel::<Stopped>(4);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which is a stop too.
            stopped.wait_for(|stop| *stop).await.ok();
        };

        let ingest_worker =
            IngestWorker::try_new(ingest).context("failed to start the ingest worker")?;
        let ingest_report = report.clone();
        let ingest_stop = until_stopped(stopped.clone());
        tokio::spawn(async move {
            let result = ingest_worker.run(ingest_stop).await;
            let result = result.map(|_| ()).context("ingest stopped");
            ingest_report.send(Stopped { role: "ingest", result }).await.ok();
        });

        let correlate_stop = Arc::new(AtomicBool::new(false));
        let correlate_flag = Arc::clone(&correlate_stop);
        let correlate_report = report.clone();
        let correlate_thread = std::thread::Builder::new()
            .name("correlate".to_owned())
            .spawn(move || {
                let result = correlator.run(&correlate_flag).context("correlator stopped");
                correlate_report
                    .blocking_send(Stopped { role: "correlate", result })
                    .ok();
            })
            .context("failed to start the correlator thread")?;

        let api_report = report.clone();
        let api_stop = until_stopped(stopped.clone());
        tokio::spawn(async move {
            let result = tidemark_api::server::run(api, listener, api_stop)
                .await
                .context("api stopped");
            api_report.send(Stopped { role: "api", result }).await.ok();
        });
        if !args.replay.is_empty() {
            // Published beside the roles, so that Ctrl-C and a failing role are heeded while a
            // long replay is under way; a failed replay stops everything like a failed role.
            let replay_report = report.clone();
            let replay_brokers = brokers.clone();
            let replay_topic = raw_topic.clone();
            let files = args.replay.clone();
            tokio::spawn(async move {
                let result = async {
                    let producer = publish::producer(&replay_brokers, &[])?;
                    let published = publish::publish(
                        &producer,
                        &replay_topic,
                        &files,
                        publish::Order::EventTime,
                    )
                    .await?;
                    info!(
                        num_records = published.num_records,
                        num_invalid = published.num_invalid,
                        num_failed = published.num_failed,
                        topic = replay_topic,
                        "replay files published"
                    );
                    anyhow::Ok(())
                }
                .await;
                if let Err(error) = result {
                    replay_report
                        .send(Stopped {
                            role: "replay",
                            result: Err(error.context("replay failed")),
                        })
                        .await
                        .ok();
                }
            });
        }
        drop(report);

        banner(&brokers, embedded.is_some(), &address.to_string(), &raw_topic)?;

        let mut failure = None;
        tokio::select! {
            () = crate::shutdown_signal() => {}
            Some(stopped) = reports.recv() => {
                match stopped.result {
                    Ok(()) => warn!(role = stopped.role, "a role stopped; stopping the others"),
                    Err(error) => {
                        error!(role = stopped.role, error = format!("{error:#}"), "a role failed; stopping the others");
                        failure = Some(error);
                    }
                }
            }
        }
        stop.send_replace(true);
        correlate_stop.store(true, Ordering::Relaxed);
        while let Some(stopped) = reports.recv().await {
            if let Err(error) = stopped.result {
                error!(role = stopped.role, error = format!("{error:#}"), "stopped with an error");
                failure.get_or_insert(error);
            }
        }
        tokio::task::spawn_blocking(move || correlate_thread.join())
            .await
            .ok();
        drop(embedded);
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    })
}

/// Runs only the embedded broker, with every topic the roles use, until Ctrl-C or SIGTERM.
pub(crate) fn broker(env: Vec<(String, String)>) -> anyhow::Result<()> {
    let ingest =
        IngestConfig::load(None, env.clone()).context("failed to load the ingest configuration")?;
    let correlate = CorrelateConfig::load(None, env.clone())
        .context("failed to load the correlate configuration")?;
    let api = ApiConfig::load(None, env).context("failed to load the api configuration")?;
    let cluster = start_embedded(&ingest, &correlate, &api)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(crate::shutdown_signal());
    info!("stopping the embedded broker");
    drop(cluster);
    Ok(())
}

/// Starts the embedded broker and creates every topic the roles use.
fn start_embedded(
    ingest: &IngestConfig,
    correlate: &CorrelateConfig,
    api: &ApiConfig,
) -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(1).context("failed to start the embedded Kafka broker")?;
    // Raw topics get one partition: records sent without a key would otherwise be spread over
    // several and ingested in an interleaved order, and a replay of hours of telemetry in
    // seconds would then look late to the correlator.
    let mut topics: Vec<(&str, i32)> = ingest
        .topics
        .raw
        .iter()
        .map(|raw| (raw.name.as_str(), 1))
        .collect();
    for topic in [
        ingest.topics.signals.as_str(),
        ingest.topics.image_facts.as_str(),
        ingest.topics.dead_letters.as_str(),
        correlate.topics.incidents.as_str(),
        correlate.topics.late.as_str(),
        api.topics.status.as_str(),
    ] {
        topics.push((topic, EMBEDDED_PARTITIONS));
    }
    topics.sort_unstable();
    topics.dedup_by(|a, b| a.0 == b.0);
    for (topic, partitions) in topics {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("failed to create topic `{topic}` on the embedded broker"))?;
    }
    warn!(
        brokers = cluster.bootstrap_servers(),
        "embedded Kafka broker started; it keeps nothing across restarts"
    );
    Ok(cluster)
}

/// Tells the person at the terminal what is running and what to type next.
fn banner(brokers: &str, embedded: bool, api: &str, raw_topic: &str) -> anyhow::Result<()> {
    let kafka = if embedded {
        format!("embedded Kafka broker at {brokers} (in memory: nothing survives a restart)")
    } else {
        format!("Kafka at {brokers}")
    };
    let mut stderr = std::io::stderr().lock();
    writeln!(
        stderr,
        "\ntidemark is running: ingest, correlate and api on {kafka}.\n\
         \n  incidents API (gRPC):  {api}\
         \n  watch incidents:       tidemark incidents --api {api} watch --from-start\
         \n  list incidents:        tidemark incidents --api {api} list\
         \n  show one:              tidemark incidents --api {api} get ID\
         \n  send more telemetry:   tidemark publish --brokers {brokers} --topic {raw_topic} FILE...\
         \n\nStop with Ctrl-C.\n"
    )?;
    Ok(())
}
