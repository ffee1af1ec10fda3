//! Kill-chain stages, and the classification of one signal into the stages it supports.
//!
//! Classification is pure: it reads one signal and the policy, nothing else. What needs memory
//! (a tag re-pushed with a new digest, a rollout after a push) is the engine's business; here
//! each signal only says what it shows on its own, with a reason an analyst can read and a
//! strength: strong evidence (a stratum URL, a known pool) can open an incident alone, weak
//! evidence (an exec, an untrusted push) only adds to one.

use std::fmt;
use std::net::IpAddr;

use tidemark_proto::v1::signal::Fact;
use tidemark_proto::v1::{
    ContainerAccess, Image, NetworkConnection, ProcessExecuted, RuntimeAlert, Signal,
    WorkloadChanged,
};

use crate::policy::{ImageVerdict, Policy};

/// A stage of the kill chain, in the order an attack goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// A registry push by an untrusted identity, to an unapproved repository, or a tag re-pushed
    /// with a new digest.
    Image,
    /// A workload created or changed with an image the policy does not approve.
    Deploy,
    /// A change to a running workload: image swap, exec or attach, ephemeral container, command
    /// override, a binary that is not part of the image.
    Implant,
    /// A miner process.
    Execution,
    /// Connections to mining pools.
    Impact,
}

impl Stage {
    /// Every stage, in kill-chain order.
    pub const ALL: [Stage; 5] = [
        Stage::Image,
        Stage::Deploy,
        Stage::Implant,
        Stage::Execution,
        Stage::Impact,
    ];

    /// Returns the stage's name as it appears in incidents (`image`, `deploy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Image => "image",
            Stage::Deploy => "deploy",
            Stage::Implant => "implant",
            Stage::Execution => "execution",
            Stage::Impact => "impact",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a finding weighs on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strength {
    /// Suspicious in context only (an exec, an untrusted push, a pool port).
    Weak,
    /// Enough on its own (a stratum URL, a known miner, a known pool, an unapproved image).
    Strong,
}

/// What one signal shows about one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The stage supported.
    pub stage: Stage,
    /// How much it weighs alone.
    pub strength: Strength,
    /// Why, in words an analyst reads (`kswapd0 started from /tmp with stratum arguments`).
    pub reason: String,
    /// The MITRE ATT&CK technique shown.
    pub technique: &'static str,
}

/// ATT&CK technique ids used in findings.
pub mod technique {
    /// Implant Internal Image.
    pub const IMPLANT_INTERNAL_IMAGE: &str = "T1525";
    /// Deploy Container.
    pub const DEPLOY_CONTAINER: &str = "T1610";
    /// Container Administration Command (exec, attach, ECS Exec).
    pub const CONTAINER_ADMINISTRATION_COMMAND: &str = "T1609";
    /// Ingress Tool Transfer (a binary written into a running container).
    pub const INGRESS_TOOL_TRANSFER: &str = "T1105";
    /// Resource Hijacking: Compute Hijacking.
    pub const COMPUTE_HIJACKING: &str = "T1496.001";
}

/// Falco rules whose firing is itself a finding, beyond the facts the alert carries.
const RULE_FINDINGS: [(&str, Stage, Strength); 8] = [
    (
        "Detect crypto miners using the Stratum protocol",
        Stage::Execution,
        Strength::Strong,
    ),
    (
        "Known Cryptominer Process Executed",
        Stage::Execution,
        Strength::Strong,
    ),
    (
        "Detect outbound connections to common miner pool ports",
        Stage::Impact,
        Strength::Strong,
    ),
    (
        "Drop and execute new binary in container",
        Stage::Implant,
        Strength::Weak,
    ),
    (
        "Container Drift Detected (chmod)",
        Stage::Implant,
        Strength::Weak,
    ),
    (
        "Container Drift Detected (open+create)",
        Stage::Implant,
        Strength::Weak,
    ),
    ("Execution from /dev/shm", Stage::Implant, Strength::Weak),
    ("Launch Disallowed Container", Stage::Deploy, Strength::Weak),
];

/// Ports on which a pool port alone says nothing (web traffic).
const ORDINARY_PORTS: [u32; 4] = [80, 443, 8080, 8443];

/// Classifies one signal into the stages it supports, strongest first within a stage.
pub fn classify(signal: &Signal, policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let actor = signal
        .actor
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or_default();
    // An assumed role acts as a session (`arn:aws:sts::...:assumed-role/ci-deployer/run-42`);
    // the role it acts for is what policies name.
    let on_behalf_of = signal
        .actor
        .as_ref()
        .map(|a| a.on_behalf_of.as_str())
        .unwrap_or_default();
    let trusted = |check: fn(&Policy, &str) -> bool| {
        check(policy, actor) || (!on_behalf_of.is_empty() && check(policy, on_behalf_of))
    };
    match &signal.fact {
        Some(Fact::ImagePushed(_)) => {
            if let Some(image) = &signal.image {
                let trusted_pusher = trusted(Policy::is_trusted_pusher);
                push_findings(image, actor, trusted_pusher, policy, &mut findings);
            }
        }
        Some(Fact::WorkloadChanged(change)) => {
            let trusted_deployer = trusted(Policy::is_trusted_deployer);
            change_findings(change, actor, trusted_deployer, policy, &mut findings);
        }
        Some(Fact::ContainerAccess(access)) => {
            access_findings(access, actor, policy, &mut findings)
        }
        Some(Fact::ProcessExecuted(process)) => process_findings(process, policy, &mut findings),
        Some(Fact::NetworkConnection(connection)) => {
            connection_findings(connection, policy, &mut findings);
        }
        Some(Fact::RuntimeAlert(alert)) => alert_findings(alert, policy, &mut findings),
        Some(Fact::ContainerStarted(_)) | None => {}
    }
    findings.sort_by(|a, b| a.stage.cmp(&b.stage).then(b.strength.cmp(&a.strength)));
    findings
}

fn finding(stage: Stage, strength: Strength, technique: &'static str, reason: String) -> Finding {
    Finding {
        stage,
        strength,
        reason,
        technique,
    }
}

fn push_findings(
    image: &Image,
    actor: &str,
    trusted: bool,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    if !actor.is_empty() && !trusted {
        findings.push(finding(
            Stage::Image,
            Strength::Weak,
            technique::IMPLANT_INTERNAL_IMAGE,
            format!(
                "{} pushed by {actor}, not a trusted pusher",
                image.reference
            ),
        ));
    }
    if policy.judge_image(image) == ImageVerdict::Unapproved {
        findings.push(finding(
            Stage::Image,
            Strength::Weak,
            technique::IMPLANT_INTERNAL_IMAGE,
            format!(
                "{} pushed to a repository the policy does not approve",
                image.reference
            ),
        ));
    }
}

fn change_findings(
    change: &WorkloadChanged,
    actor: &str,
    trusted: bool,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    if change.verb == "delete" {
        return;
    }
    for container in &change.containers {
        let Some(image) = &container.image else {
            continue;
        };
        if policy.judge_image(image) == ImageVerdict::Unapproved {
            findings.push(finding(
                Stage::Deploy,
                Strength::Strong,
                technique::DEPLOY_CONTAINER,
                format!(
                    "{} {} image {} in container {}, not approved",
                    actor_or_unknown(actor),
                    verb_phrase(&change.verb),
                    image.reference,
                    display_name(&container.name)
                ),
            ));
        }
    }
    let changes_running_workload =
        matches!(change.verb.as_str(), "patch" | "update" | "UpdateService");
    if changes_running_workload && !change.containers.is_empty() && !trusted {
        let images: Vec<&str> = change
            .containers
            .iter()
            .filter_map(|c| c.image.as_ref().map(|i| i.reference.as_str()))
            .collect();
        if !images.is_empty() {
            findings.push(finding(
                Stage::Implant,
                Strength::Weak,
                technique::IMPLANT_INTERNAL_IMAGE,
                format!(
                    "image set to {} by {}, not a trusted deployer",
                    images.join(", "),
                    actor_or_unknown(actor)
                ),
            ));
        }
    }
    for command in &change.commands {
        if let Some(marker) = policy.miner.command_marker(command) {
            findings.push(finding(
                Stage::Execution,
                Strength::Strong,
                technique::COMPUTE_HIJACKING,
                format!(
                    "container command `{}` carries miner marker `{marker}`",
                    truncate(command)
                ),
            ));
        } else if (change.verb == "RunTask" || change.verb == "StartTask") && !trusted {
            findings.push(finding(
                Stage::Implant,
                Strength::Weak,
                technique::DEPLOY_CONTAINER,
                format!("task started with command override `{}`", truncate(command)),
            ));
        }
    }
    if change.privileged && !trusted {
        findings.push(finding(
            Stage::Deploy,
            Strength::Weak,
            technique::DEPLOY_CONTAINER,
            format!(
                "privileged or host-namespace container in a {} by {}",
                change.verb,
                actor_or_unknown(actor)
            ),
        ));
    }
}

fn access_findings(
    access: &ContainerAccess,
    actor: &str,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    let command = if access.command.is_empty() {
        "a session".to_owned()
    } else {
        format!("`{}`", truncate(&access.command))
    };
    let what = match access.kind.as_str() {
        "ephemeral" => "ephemeral container started",
        "ecs-execute-command" => "ECS Exec",
        "attach" => "attach",
        "portforward" => "port-forward",
        _ => "exec",
    };
    let technique = if access.kind == "ephemeral" {
        technique::DEPLOY_CONTAINER
    } else {
        technique::CONTAINER_ADMINISTRATION_COMMAND
    };
    findings.push(finding(
        Stage::Implant,
        Strength::Weak,
        technique,
        format!("{what} by {} running {command}", actor_or_unknown(actor)),
    ));
    if let Some(marker) = policy.miner.command_marker(&access.command) {
        findings.push(finding(
            Stage::Execution,
            Strength::Strong,
            technique::COMPUTE_HIJACKING,
            format!("{what} command carries miner marker `{marker}`"),
        ));
    }
}

fn process_findings(process: &ProcessExecuted, policy: &Policy, findings: &mut Vec<Finding>) {
    let name = if process.name.is_empty() {
        base_name(&process.binary)
    } else {
        process.name.as_str()
    };
    let location = if process.binary.is_empty() {
        String::new()
    } else {
        format!(" from {}", parent_dir(&process.binary))
    };
    if policy.miner.binaries.contains(&name.to_ascii_lowercase()) {
        findings.push(finding(
            Stage::Execution,
            Strength::Strong,
            technique::COMPUTE_HIJACKING,
            format!("known miner {name} started{location}"),
        ));
    }
    let command_line = if process.command_line.is_empty() {
        process.arguments.as_str()
    } else {
        process.command_line.as_str()
    };
    if let Some(marker) = policy.miner.command_marker(command_line) {
        findings.push(finding(
            Stage::Execution,
            Strength::Strong,
            technique::COMPUTE_HIJACKING,
            format!("{name} started{location} with miner arguments (`{marker}`)"),
        ));
    }
    let dir = parent_dir(&process.binary);
    let writable_dir =
        dir.starts_with("/tmp") || dir.starts_with("/dev/shm") || dir.starts_with("/var/tmp");
    if process.drift || writable_dir {
        let why = if process.drift {
            "not part of the image"
        } else {
            "in a writable temporary directory"
        };
        findings.push(finding(
            Stage::Implant,
            Strength::Weak,
            technique::INGRESS_TOOL_TRANSFER,
            format!(
                "{name} executed from {}, {why}",
                if process.binary.is_empty() {
                    name
                } else {
                    &process.binary
                }
            ),
        ));
    }
}

fn connection_findings(
    connection: &NetworkConnection,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    let port = connection.destination_port;
    let address: Option<IpAddr> = connection.destination_address.parse().ok();
    let target = match (connection.domain.is_empty(), port) {
        (false, 0) => connection.domain.clone(),
        (false, _) => format!("{}:{port}", connection.domain),
        (true, 0) => connection.destination_address.clone(),
        (true, _) => format!("{}:{port}", connection.destination_address),
    };
    let pool_domain = (!connection.domain.is_empty())
        .then(|| policy.miner.pool_domain_of(&connection.domain))
        .flatten();
    let known_endpoint = address.is_some_and(|a| {
        policy.miner.pool_addresses.contains(&a)
            || u16::try_from(port).is_ok_and(|p| policy.miner.pool_endpoints.contains(&(a, p)))
    });
    if let Some(domain) = pool_domain {
        findings.push(finding(
            Stage::Impact,
            Strength::Strong,
            technique::COMPUTE_HIJACKING,
            format!("connection to mining pool {target} (listed pool domain {domain})"),
        ));
    } else if known_endpoint {
        findings.push(finding(
            Stage::Impact,
            Strength::Strong,
            technique::COMPUTE_HIJACKING,
            format!("connection to listed mining pool address {target}"),
        ));
    } else if u16::try_from(port).is_ok_and(|p| policy.miner.pool_ports.contains(&p))
        && !ORDINARY_PORTS.contains(&port)
        && address.is_none_or(is_public)
    {
        findings.push(finding(
            Stage::Impact,
            Strength::Weak,
            technique::COMPUTE_HIJACKING,
            format!("connection to {target}, a common mining pool port"),
        ));
    }
    if let Some(process) = &connection.process {
        process_findings(process, policy, findings);
    }
}

fn alert_findings(alert: &RuntimeAlert, policy: &Policy, findings: &mut Vec<Finding>) {
    let before = findings.len();
    if let Some(process) = &alert.process {
        process_findings(process, policy, findings);
    }
    if let Some(connection) = &alert.connection {
        connection_findings(connection, policy, findings);
    }
    if let Some((_, stage, strength)) = RULE_FINDINGS
        .iter()
        .find(|(rule, _, _)| *rule == alert.rule)
    {
        // The alert's own facts say more than the rule's name (`kswapd0 started from /tmp with
        // miner arguments`); the rule is a finding of its own only when they say less.
        let covered = findings[before..]
            .iter()
            .any(|f| f.stage == *stage && f.strength >= *strength);
        if !covered {
            let technique = match stage {
                Stage::Execution | Stage::Impact => technique::COMPUTE_HIJACKING,
                Stage::Deploy => technique::DEPLOY_CONTAINER,
                Stage::Implant | Stage::Image => technique::INGRESS_TOOL_TRANSFER,
            };
            let reason = format!("Falco rule \"{}\" fired", alert.rule);
            findings.push(finding(*stage, *strength, technique, reason));
        }
    }
}

/// Whether an address is routable on the internet: pools are never in private ranges.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00)
        }
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent_dir(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => "",
    }
}

fn actor_or_unknown(actor: &str) -> &str {
    if actor.is_empty() {
        "an unknown identity"
    } else {
        actor
    }
}

fn display_name(name: &str) -> &str {
    if name.is_empty() { "(unnamed)" } else { name }
}

fn verb_phrase(verb: &str) -> &str {
    match verb {
        "create" => "created a workload with",
        "patch" | "update" => "changed a workload to",
        "RegisterTaskDefinition" => "registered a task definition with",
        "RunTask" | "StartTask" => "started a task with",
        "CreateService" => "created a service with",
        "UpdateService" => "updated a service to",
        _ => "deployed",
    }
}

/// Cuts long command lines for reasons; the full line stays in the signal.
fn truncate(text: &str) -> String {
    const MAX: usize = 160;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
