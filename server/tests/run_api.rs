//! End to end through the real binary: `tidemark run` on its embedded broker (raw records in,
//! ingest, correlate, api), `tidemark publish` for evidence that arrives later, a second
//! `tidemark api` replica, and a gRPC client that lists, watches, resumes and acknowledges.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_client::IncidentServiceClient;
use tonic::transport::Channel;

const TIMEOUT: Duration = Duration::from_secs(120);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when dropped, with its standard error forwarded line by line.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(command: &mut Command) -> Process {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("  | {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    /// Waits for a line containing `needle` and returns it.
    fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no line with `{needle}` on standard error");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn connect(port: u16) -> IncidentServiceClient<Channel> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match IncidentServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return client,
            Err(error) if Instant::now() > deadline => panic!("cannot connect: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls until `check` accepts the incident with `id`.
async fn wait_for_incident(
    client: &mut IncidentServiceClient<Channel>,
    id: &str,
    check: impl Fn(&v1::Incident) -> bool,
) -> v1::Incident {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let request = v1::GetIncidentRequest { id: id.to_owned() };
        if let Ok(response) = client.get_incident(request).await {
            let incident = response.into_inner();
            if check(&incident) {
                return incident;
            }
        }
        assert!(Instant::now() < deadline, "incident `{id}` never matched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What identifies a change independently of the cursor.
fn identity(change: &v1::IncidentChange) -> (String, u64, i32, i32) {
    let incident = change.incident.as_ref().unwrap();
    (
        incident.id.clone(),
        incident.version,
        change.kind,
        incident.status,
    )
}

/// Watches from `cursor` (or from the start) and collects changes until none comes for three
/// seconds.
async fn watch_until_idle(
    client: &mut IncidentServiceClient<Channel>,
    cursor: String,
) -> Vec<v1::IncidentChange> {
    let from_start = cursor.is_empty();
    let mut stream = client
        .watch_incidents(v1::WatchIncidentsRequest { cursor, from_start })
        .await
        .unwrap()
        .into_inner();
    let mut changes = Vec::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
        match message.unwrap() {
            Some(change) => changes.push(change),
            None => break,
        }
    }
    changes
}

fn tidemark() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_flows_from_raw_records_to_watchers_and_status_reaches_every_replica() {
    let work = tempfile::tempdir().unwrap();
    let lines: Vec<String> =
        std::fs::read_to_string(repo("fixtures/scenarios/public-image.ndjson"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    // The Falco alert and the deployment first; the pool connection (Tetragon) later.
    let first = work.path().join("first.ndjson");
    std::fs::write(&first, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let later = work.path().join("later.ndjson");
    std::fs::write(&later, format!("{}\n", lines[2])).unwrap();

    let port = free_port();
    let run = Process::start(
        tidemark()
            .args(["run", "--cluster", "prod-eu", "--grpc-listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .arg("--policy")
            .arg(repo("config/policy.example.yaml"))
            .arg("--replay")
            .arg(&first)
            .env("TIDEMARK_LOG", "info"),
    );
    let started = run.wait_for_line("embedded Kafka broker started");
    let brokers = started
        .split("brokers=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    let mut client = connect(port).await;
    // The incident appears: deploy of a public image, then the miner.
    let id = loop {
        let page = client
            .list_incidents(v1::ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner();
        if let Some(incident) = page.incidents.first() {
            break incident.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let opened = wait_for_incident(&mut client, &id, |i| {
        i.stages.contains(&"execution".to_owned()) && i.stages.contains(&"deploy".to_owned())
    })
    .await;
    assert_eq!(opened.workload.unwrap().key, "k8s/prod-eu/shop/miner-web");
    assert!(!opened.stages.contains(&"impact".to_owned()));
    let raw = opened.evidence[0].raw.clone().unwrap();
    assert_eq!(raw.topic, "tidemark.raw");

    // A watcher sees every change so far, then disconnects.
    let seen = watch_until_idle(&mut client, String::new()).await;
    assert!(!seen.is_empty());
    assert_eq!(seen[0].kind, v1::ChangeKind::Opened as i32);
    let cursor = seen.last().unwrap().cursor.clone();

    // Late evidence arrives while nobody watches: the pool connection.
    let status = tidemark()
        .args(["publish", "--brokers", &brokers, "--topic", "tidemark.raw"])
        .arg(&later)
        .status()
        .unwrap();
    assert!(status.success());
    let amended = wait_for_incident(&mut client, &id, |i| {
        i.stages.contains(&"impact".to_owned())
    })
    .await;
    assert!(amended.version > opened.version);

    // A second replica, from the same topics.
    let replica_port = free_port();
    let replica_dir = work.path().join("replica");
    let replica = Process::start(
        tidemark()
            .arg("api")
            .env("TIDEMARK_API__KAFKA__BROKERS", &brokers)
            .env("TIDEMARK_API__STORE__DIR", &replica_dir)
            .env(
                "TIDEMARK_API__SERVER__LISTEN",
                format!("127.0.0.1:{replica_port}"),
            ),
    );
    let mut replica_client = connect(replica_port).await;
    wait_for_incident(&mut replica_client, &id, |i| i.version == amended.version).await;

    // Acknowledged on the first replica, seen on the second.
    let acknowledged = client
        .update_incident_status(v1::UpdateIncidentStatusRequest {
            id: id.clone(),
            action: v1::StatusAction::Acknowledge as i32,
            comment: "isolating the node".to_owned(),
            actor: "analyst@corp.example".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acknowledged.status, v1::IncidentStatus::Acknowledged as i32);
    let on_replica = wait_for_incident(&mut replica_client, &id, |i| {
        i.status == v1::IncidentStatus::Acknowledged as i32
    })
    .await;
    let event = on_replica.status_history.last().unwrap();
    assert_eq!(event.actor, "analyst@corp.example");
    assert_eq!(event.comment, "isolating the node");

    // The resumed watch, on the other replica, gets exactly the missed changes: together with
    // what was seen before the disconnect, the same sequence as one uninterrupted watch.
    let after = watch_until_idle(&mut replica_client, cursor).await;
    assert!(
        after
            .iter()
            .any(|c| c.kind == v1::ChangeKind::Amended as i32),
        "the amendment made during the disconnect is delivered"
    );
    assert_eq!(
        after.last().map(|c| c.kind),
        Some(v1::ChangeKind::Status as i32)
    );
    let uninterrupted: Vec<_> = watch_until_idle(&mut replica_client, String::new())
        .await
        .iter()
        .map(identity)
        .collect();
    let pieced: Vec<_> = seen.iter().chain(after.iter()).map(identity).collect();
    let mut sorted_pieced = pieced.clone();
    sorted_pieced.sort();
    sorted_pieced.dedup();
    assert_eq!(
        sorted_pieced.len(),
        pieced.len(),
        "no change is delivered twice"
    );
    let mut sorted_full = uninterrupted.clone();
    sorted_full.sort();
    assert_eq!(sorted_pieced, sorted_full, "no change is missed");

    drop(replica);
    drop(run);
}

#[test]
fn api_refuses_a_non_loopback_address_without_tls_and_tokens() {
    let work = tempfile::tempdir().unwrap();
    let output = tidemark()
        .arg("api")
        .env("TIDEMARK_API__STORE__DIR", work.path())
        .env("TIDEMARK_API__SERVER__LISTEN", "0.0.0.0:50999")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(
        std::fs::read_dir(work.path()).unwrap().next().is_none(),
        "nothing was opened before the refusal"
    );
}
