//! `tidemark api`: the store, the Kafka reader that fills it, and the gRPC server, together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use tidemark_proto::v1::incident_service_server::IncidentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info};

use crate::auth::Authenticator;
use crate::config::ApiConfig;
use crate::error::{Error, Result};
use crate::materialize::Materializer;
use crate::service::IncidentApi;
use crate::store::Store;

/// Binds the configured listen address. `ApiConfig::validate` has already refused a
/// non-loopback address without protection.
///
/// # Errors
///
/// Returns [`Error::Listen`] when the address cannot be bound.
pub async fn bind(config: &ApiConfig) -> Result<TcpListener> {
    let address = config.listen_address()?;
    TcpListener::bind(address)
        .await
        .map_err(|error| Error::Listen {
            address: address.to_string(),
            reason: error.to_string(),
        })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::TlsRead {
        path: path.to_owned(),
        source,
    })
}

/// Runs the api until `shutdown` completes or the Kafka reader fails: opens the store in
/// `config.store.dir`, reads the topics into it, and serves gRPC on `listener`.
///
/// Health (`grpc.health.v1.Health`) reports NOT_SERVING until the store has read every
/// partition up to where it ended at start, then SERVING.
///
/// # Errors
///
/// Returns the first failure of the store, the Kafka reader or the server.
pub async fn run(
    config: ApiConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&config.store.dir).map_err(|error| Error::Start {
        what: "store directory",
        reason: format!("cannot create `{}`: {error}", config.store.dir.display()),
    })?;
    let retention = Duration::from_secs(config.store.timeline_retention_hours * 3600);
    let store = Arc::new(Store::open(&config.store.dir, retention)?);
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A status change that Kafka has not taken within 10 s fails instead of hanging.
        .set("message.timeout.ms", "10000");
    for (key, value) in &config.kafka.properties {
        producer_config.set(key, value);
    }
    let producer: FutureProducer = producer_config.create().map_err(|source| Error::Kafka {
        operation: "producer creation",
        source,
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_sender, ready) = watch::channel(false);
    let (exited_sender, exited) = oneshot::channel::<()>();
    let mut materializer = Materializer::try_new(&config, Arc::clone(&store))?;
    let reader_stop = Arc::clone(&stop);
    let reader = std::thread::Builder::new()
        .name("api-reader".to_owned())
        .spawn(move || {
            let result = materializer.run(&reader_stop, move || {
                ready_sender.send_replace(true);
            });
            if let Err(error) = &result {
                error!(error = %error, "incident reader stopped; stopping the server");
            }
            drop(exited_sender);
            result
        })
        .map_err(|error| Error::Start {
            what: "reader thread",
            reason: error.to_string(),
        })?;
    // The server stops on shutdown, and also when the reader stops: an API whose store no
    // longer follows Kafka must not go on answering.
    let stopping = async move {
        tokio::select! {
            () = shutdown => {}
            _ = exited => {}
        }
    };
    let served = serve(&config, store, producer, listener, ready, stopping).await;
    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || reader.join()).await;
    served?;
    match joined {
        Ok(Ok(result)) => result,
        _ => Err(Error::Start {
            what: "reader thread",
            reason: "panicked".to_owned(),
        }),
    }
}

/// Serves the incident service, health and reflection on `listener` until `shutdown`.
///
/// # Errors
///
/// Returns [`Error::TlsRead`] when a TLS file cannot be read and [`Error::Transport`] when the
/// server fails.
pub async fn serve(
    config: &ApiConfig,
    store: Arc<Store>,
    producer: FutureProducer,
    listener: TcpListener,
    mut ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = &config.server.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let authenticated = !config.server.tokens.is_empty()
        || config
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
    let authenticator = Authenticator::new(
        config.server.tokens.clone(),
        config
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some()),
    );
    // Open watches end when the server stops; graceful shutdown waits for them otherwise.
    let (stopping_sender, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stopping_sender.send_replace(true);
    };
    let api = IncidentApi::new(
        Arc::clone(&store),
        producer,
        config.topics.status.clone(),
        config.server.max_page_size,
        authenticated,
    )
    .with_stopping(stopping);
    let incidents = InterceptedService::new(
        IncidentServiceServer::new(api).max_decoding_message_size(config.server.max_request_bytes),
        move |request| authenticator.check(request),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<IncidentServiceServer<IncidentApi>>()
        .await;
    tokio::spawn(async move {
        if ready.wait_for(|ready| *ready).await.is_ok() {
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            health
                .set_serving::<IncidentServiceServer<IncidentApi>>()
                .await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tidemark_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Start {
            what: "reflection descriptors",
            reason: error.to_string(),
        })?;
    info!(
        address = ?address,
        tls = config.server.tls.is_some(),
        client_certificates = config.server.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        tokens = config.server.tokens.len(),
        "serving the incident API"
    );
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(incidents)
        // `Server::tcp_nodelay` is ignored for an incoming stream; without TCP_NODELAY a response
        // waits for the client's delayed ACK (about 40 ms on Linux).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    info!("incident API stopped");
    Ok(())
}
