//! `tidemark incidents list|get|watch|ack|resolve|reopen`: the analyst's command line over the
//! gRPC API. A readable table by default; `--json` prints one JSON object per line (protobuf's
//! canonical JSON mapping of the `tidemark.v1` messages).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tidemark_api::convert::{severity_name, status_name};
use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_client::IncidentServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach the API.
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// API address, `HOST:PORT`.
    #[arg(
        long,
        global = true,
        env = "TIDEMARK_API",
        default_value = "127.0.0.1:50051"
    )]
    api: String,
    /// Bearer token.
    #[arg(long, global = true, env = "TIDEMARK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Use TLS, trusting this CA certificate (PEM).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long, global = true, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// Server name to verify, when it differs from the host in `--api`.
    #[arg(long, global = true)]
    tls_domain: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List incidents, newest first.
    List {
        /// Only these severities (`low`, `medium`, `high`, `critical`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        severity: Vec<String>,
        /// Only these statuses (`open`, `acknowledged`, `resolved`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only this cluster.
        #[arg(long, default_value = "")]
        cluster: String,
        /// Only this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Only this workload (key, or controller name / ECS family).
        #[arg(long, default_value = "")]
        workload: String,
        /// Only incidents with evidence of this stage.
        #[arg(long, default_value = "")]
        stage: String,
        /// Only incidents showing this ATT&CK technique.
        #[arg(long, default_value = "")]
        technique: String,
        /// Evidence at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Evidence before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Most incidents printed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one incident with its evidence timeline.
    Get {
        /// Incident id.
        id: String,
    },
    /// Print incident changes as they happen, until interrupted.
    Watch {
        /// Resume after this cursor (printed with every change in `--json` output).
        #[arg(long, default_value = "")]
        cursor: String,
        /// Start with every change the server holds.
        #[arg(long)]
        from_start: bool,
    },
    /// Acknowledge an incident.
    Ack {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Resolve an incident.
    Resolve {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Reopen an acknowledged or resolved incident.
    Reopen {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long, short, default_value = "")]
        comment: String,
    },
}

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client =
    IncidentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn connect(connection: &Connection) -> anyhow::Result<Client> {
    let scheme = if connection.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", connection.api))
        .with_context(|| format!("`{}` is not HOST:PORT", connection.api))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &connection.tls_ca {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("failed to read `{}`", path.display()))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&connection.tls_cert, &connection.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &connection.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the tidemark API at `{}`", connection.api))?;
    let token = match &connection.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token holds characters a header cannot carry")?,
        ),
        None => None,
    };
    Ok(IncidentServiceClient::with_interceptor(
        channel,
        Bearer(token),
    ))
}

fn parse_enum<T>(
    values: &[String],
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| parse(&v.to_ascii_lowercase()).with_context(|| format!("unknown {name} `{v}`")))
        .collect()
}

fn parse_time(value: Option<&String>) -> anyhow::Result<i64> {
    match value {
        None => Ok(0),
        Some(text) => tidemark_common::time::parse_rfc3339(text)
            .with_context(|| format!("`{text}` is not an RFC 3339 time (2026-11-20T02:00:00Z)")),
    }
}

fn time(unix_nano: i64) -> String {
    tidemark_common::time::format_rfc3339(unix_nano, 0)
}

/// Runs one CLI action; a gRPC error becomes `CODE: message`.
pub(crate) async fn run(connection: Connection, action: Action) -> anyhow::Result<()> {
    run_action(connection, action).await.map_err(|error| {
        match error.downcast_ref::<tonic::Status>() {
            Some(status) => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
            None => error,
        }
    })
}

async fn run_action(connection: Connection, action: Action) -> anyhow::Result<()> {
    let mut client = connect(&connection).await?;
    let mut out = std::io::stdout().lock();
    match action {
        Action::List {
            severity,
            status,
            cluster,
            namespace,
            workload,
            stage,
            technique,
            since,
            until,
            limit,
        } => {
            let severities = parse_enum(&severity, "severity", |v| {
                v1::Severity::from_str_name(&format!("SEVERITY_{}", v.to_ascii_uppercase()))
                    .filter(|s| *s != v1::Severity::Unspecified)
                    .map(|s| s as i32)
            })?;
            let statuses = parse_enum(&status, "status", |v| {
                v1::IncidentStatus::from_str_name(&format!(
                    "INCIDENT_STATUS_{}",
                    v.to_ascii_uppercase()
                ))
                .filter(|s| *s != v1::IncidentStatus::Unspecified)
                .map(|s| s as i32)
            })?;
            let mut request = v1::ListIncidentsRequest {
                start_unix_nano: parse_time(since.as_ref())?,
                end_unix_nano: parse_time(until.as_ref())?,
                severities,
                statuses,
                cluster,
                namespace,
                workload,
                stage,
                technique,
                page_size: u32::try_from(limit.min(1000)).unwrap_or(1000),
                page_token: String::new(),
            };
            let mut printed = 0;
            if !connection.json {
                writeln!(
                    out,
                    "{:<16}  {:<8}  {:<12}  {:>3}  {:<20}  {:<44}  STAGES",
                    "ID", "SEVERITY", "STATUS", "VER", "FIRST SEEN", "WORKLOAD"
                )?;
            }
            loop {
                let response = client.list_incidents(request.clone()).await?.into_inner();
                for incident in &response.incidents {
                    if printed == limit {
                        return Ok(());
                    }
                    print_row(&mut out, incident, connection.json)?;
                    printed += 1;
                }
                if response.next_page_token.is_empty() || printed == limit {
                    return Ok(());
                }
                request.page_token = response.next_page_token;
            }
        }
        Action::Get { id } => {
            let incident = client
                .get_incident(v1::GetIncidentRequest { id })
                .await?
                .into_inner();
            if connection.json {
                serde_json::to_writer(&mut out, &incident)?;
                writeln!(out)?;
            } else {
                print_incident(&mut out, &incident)?;
            }
            Ok(())
        }
        Action::Watch { cursor, from_start } => {
            let mut stream = client
                .watch_incidents(v1::WatchIncidentsRequest { cursor, from_start })
                .await?
                .into_inner();
            while let Some(change) = stream.message().await? {
                if connection.json {
                    serde_json::to_writer(&mut out, &change)?;
                    writeln!(out)?;
                } else if let Some(incident) = &change.incident {
                    let kind = match v1::ChangeKind::try_from(change.kind) {
                        Ok(v1::ChangeKind::Opened) => "opened",
                        Ok(v1::ChangeKind::Amended) => "amended",
                        Ok(v1::ChangeKind::Status) => "status",
                        _ => "changed",
                    };
                    write!(out, "{kind:<8}  ")?;
                    print_row(&mut out, incident, false)?;
                }
                out.flush()?;
            }
            bail!("the server closed the watch")
        }
        Action::Ack { id, comment } => {
            update(
                &mut client,
                &mut out,
                id,
                v1::StatusAction::Acknowledge,
                comment,
                connection.json,
            )
            .await
        }
        Action::Resolve { id, comment } => {
            update(
                &mut client,
                &mut out,
                id,
                v1::StatusAction::Resolve,
                comment,
                connection.json,
            )
            .await
        }
        Action::Reopen { id, comment } => {
            update(
                &mut client,
                &mut out,
                id,
                v1::StatusAction::Reopen,
                comment,
                connection.json,
            )
            .await
        }
    }
}

async fn update(
    client: &mut Client,
    out: &mut impl Write,
    id: String,
    action: v1::StatusAction,
    comment: String,
    json: bool,
) -> anyhow::Result<()> {
    let actor = std::env::var("USER").unwrap_or_default();
    let incident = client
        .update_incident_status(v1::UpdateIncidentStatusRequest {
            id,
            action: action as i32,
            comment,
            actor,
        })
        .await?
        .into_inner();
    if json {
        serde_json::to_writer(
            &mut *out,
            &v1::Incident {
                evidence: Vec::new(),
                ..incident
            },
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{} is now {}",
            incident.id,
            status_name(incident.status)
        )?;
    }
    Ok(())
}

fn print_row(out: &mut impl Write, incident: &v1::Incident, json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, incident)?;
        writeln!(out)?;
        return Ok(());
    }
    let workload = incident
        .workload
        .as_ref()
        .map(|w| w.key.as_str())
        .unwrap_or("");
    writeln!(
        out,
        "{:<16}  {:<8}  {:<12}  {:>3}  {:<20}  {:<44}  {}",
        incident.id,
        severity_name(incident.severity),
        status_name(incident.status),
        incident.version,
        time(incident.first_seen_unix_nano),
        workload,
        incident.stages.join(",")
    )?;
    Ok(())
}

fn print_incident(out: &mut impl Write, incident: &v1::Incident) -> anyhow::Result<()> {
    let workload = incident.workload.clone().unwrap_or_default();
    writeln!(
        out,
        "incident   {} (version {})",
        incident.id, incident.version
    )?;
    writeln!(
        out,
        "severity   {} (score {}), {}",
        severity_name(incident.severity),
        incident.score,
        status_name(incident.status)
    )?;
    writeln!(
        out,
        "workload   {} ({} {})",
        workload.key, workload.kind, workload.name
    )?;
    writeln!(out, "stages     {}", incident.stages.join(", "))?;
    writeln!(out, "techniques {}", incident.techniques.join(", "))?;
    writeln!(
        out,
        "seen       {} to {}",
        time(incident.first_seen_unix_nano),
        time(incident.last_seen_unix_nano)
    )?;
    writeln!(out, "\n{}\n", incident.summary)?;
    writeln!(out, "evidence:")?;
    for evidence in &incident.evidence {
        let raw = evidence.raw.clone().unwrap_or_default();
        let place = if raw.line > 0 {
            format!("{}:{}", raw.topic, raw.line)
        } else {
            format!("{}/{}@{}", raw.topic, raw.partition, raw.offset)
        };
        writeln!(
            out,
            "  {}  {:<9}  {:<6}  {}  [{} {}; {}]",
            tidemark_common::time::format_rfc3339(evidence.time_unix_nano, 3),
            evidence.stage,
            evidence.strength,
            evidence.reason,
            evidence.format,
            evidence.source_event,
            place
        )?;
    }
    if incident.num_evidence_omitted > 0 {
        writeln!(
            out,
            "  ({} more items omitted)",
            incident.num_evidence_omitted
        )?;
    }
    if !incident.status_history.is_empty() {
        writeln!(out, "\nstatus history:")?;
        for event in &incident.status_history {
            writeln!(
                out,
                "  {}  {:<12}  by {}  {}",
                time(event.time_unix_nano),
                status_name(event.status),
                event.actor,
                event.comment
            )?;
        }
    }
    Ok(())
}
