//! A realistic mix of ~1 KB raw records in the formats sources really emit, shared by the
//! decode benchmark and the correlation benchmark.
//!
//! The mix follows what a cluster's raw topics carry: mostly node-sensor events (Tetragon execs
//! and connects, Falco alerts), then Kubernetes audit and CloudTrail, a few registry pushes.
//! Records are varied (pod names, container ids, times) so that nothing is decoded twice alike.

use std::path::Path;

fn sample(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/samples")
        .join(path);
    std::fs::read_to_string(full).expect("fixture exists")
}

/// Compacts a pretty-printed sample to one line, as it travels on Kafka.
fn compact(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).expect("fixture is JSON");
    serde_json::to_string(&value).expect("JSON serializes")
}

fn hex(seed: u64, len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(&format!("{state:016x}"));
    }
    out.truncate(len);
    out
}

pub(crate) fn falco_miner(i: u64) -> String {
    format!(
        r#"{{"hostname":"ip-10-0-3-{n}","priority":"Critical","rule":"Detect crypto miners using the Stratum protocol","source":"syscall","tags":["T1496","container","mitre_impact","process"],"time":"2026-03-02T10:15:{s:02}.112233445Z","output":"10:15:04.112233445: Critical Possible miner running (command=app{i} -a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -p x -t 16 pid=4711)","output_fields":{{"evt.time":1772446504112233445,"evt.type":"execve","evt.arg.flags":"EXE_WRITABLE|EXE_UPPER_LAYER","user.name":"root","user.uid":0,"proc.name":"app{i}","proc.exepath":"/xmrig-6.14.1/app{i}","proc.pname":"sh","proc.cmdline":"app{i} -a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -p x -t 16","container.id":"{cid}","container.name":"web","container.image.repository":"docker.io/yzsqbe/ka","container.image.tag":"si","k8s.ns.name":"shop","k8s.pod.name":"web-7c9d9f6b8-{pod}"}}}}"#,
        n = i % 250,
        s = i % 60,
        cid = hex(i, 12),
        pod = &hex(i + 7, 5).replace(['a', 'e', '0', '1', '3'], "x")
    )
}

pub(crate) fn tetragon_connect(i: u64) -> String {
    format!(
        r#"{{"process_kprobe":{{"process":{{"exec_id":"{exec}","pid":{pid},"uid":0,"cwd":"/","binary":"/usr/bin/curl","arguments":"-s https://api.example.com/v1/items","flags":"execve clone","start_time":"2026-03-02T10:15:03.000000000Z","auid":4294967295,"pod":{{"namespace":"shop","name":"api-5d8f7b9c6-{pod}","container":{{"id":"containerd://{cid}","name":"api","image":{{"id":"docker.io/acme/api@sha256:{digest}","name":"docker.io/acme/api:2.4.1"}},"start_time":"2026-03-02T09:00:00Z","pid":12}},"workload":"api","workload_kind":"Deployment"}},"docker":"{short}","parent_exec_id":"{exec}"}},"parent":{{"binary":"/bin/sh","arguments":"-c run.sh"}},"function_name":"tcp_connect","args":[{{"sock_arg":{{"family":"AF_INET","type":"SOCK_STREAM","protocol":"IPPROTO_TCP","saddr":"10.244.1.{n}","daddr":"203.0.113.{n}","sport":{sport},"dport":443,"state":"TCP_SYN_SENT"}}}}],"action":"KPROBE_ACTION_POST","policy_name":"connect"}},"node_name":"ip-10-0-3-17","time":"2026-03-02T10:15:04.{ns:09}Z"}}"#,
        exec = hex(i, 40),
        pid = 1000 + i % 30_000,
        pod = "x2l4p",
        cid = hex(i, 64),
        short = hex(i, 31),
        digest = hex(i / 100, 64),
        n = i % 250,
        sport = 30_000 + i % 30_000,
        ns = i % 1_000_000_000
    )
}

pub(crate) fn audit_patch(i: u64) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"{id}","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/shop/deployments/web{w}?fieldManager=kubectl-set","verb":"patch","user":{{"username":"dev-bob","groups":["system:authenticated"]}},"sourceIPs":["203.0.113.7"],"userAgent":"kubectl/v1.30.2 (linux/amd64) kubernetes/abcdef","objectRef":{{"resource":"deployments","namespace":"shop","name":"web{w}","apiGroup":"apps","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"spec":{{"template":{{"spec":{{"containers":[{{"name":"web","image":"registry.corp.example/shop/web:1.{w}"}}]}}}}}}}},"requestReceivedTimestamp":"2026-03-02T10:14:01.101000Z","stageTimestamp":"2026-03-02T10:14:01.130000Z","annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by RoleBinding"}}}}"#,
        id = hex(i, 32),
        w = i % 40
    )
}

pub(crate) fn cloudtrail_run_task(i: u64) -> String {
    format!(
        r#"{{"eventVersion":"1.09","userIdentity":{{"type":"IAMUser","principalId":"AIDAEXAMPLE","arn":"arn:aws:iam::111122223333:user/ci-deployer","accountId":"111122223333","userName":"ci-deployer"}},"eventTime":"2026-03-02T10:12:44Z","eventSource":"ecs.amazonaws.com","eventName":"RunTask","awsRegion":"eu-west-1","sourceIPAddress":"198.51.100.20","userAgent":"aws-cli/2.15.0","requestParameters":{{"cluster":"prod","taskDefinition":"web{w}:42","count":1,"launchType":"FARGATE"}},"responseElements":{{"tasks":[{{"taskArn":"arn:aws:ecs:eu-west-1:111122223333:task/prod/{t}","clusterArn":"arn:aws:ecs:eu-west-1:111122223333:cluster/prod","taskDefinitionArn":"arn:aws:ecs:eu-west-1:111122223333:task-definition/web{w}:42","containers":[{{"name":"web","image":"111122223333.dkr.ecr.eu-west-1.amazonaws.com/web:1.8.3","lastStatus":"PENDING"}}],"launchType":"FARGATE"}}],"failures":[]}},"requestID":"{t}","eventID":"{id}","readOnly":false,"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"111122223333"}}"#,
        w = i % 20,
        t = hex(i, 32),
        id = hex(i + 1, 32)
    )
}

/// Builds `count` records in the proportions of a real feed.
pub(crate) fn mix(count: u64) -> Vec<Vec<u8>> {
    let falco_shell = compact(&sample("falco/channels.md.line170.json"));
    let tetragon_exec: Vec<String> = sample("tetragon/events.json")
        .lines()
        .map(str::to_owned)
        .collect();
    let pod_create = compact(&sample("k8s-audit/create_nginx_pod_unprivileged.json"));
    let distribution = compact(&sample("distribution/notifications.md.push-envelope.json"));
    let harbor = compact(&sample(
        "harbor/configure-webhooks.md.push-artifact-default.json",
    ));
    (0..count)
        .map(|i| {
            let record = match i % 20 {
                0..=6 => tetragon_connect(i),
                7..=9 => tetragon_exec[(i % 3) as usize].clone(),
                10..=12 => falco_miner(i),
                13 | 14 => falco_shell.clone(),
                15 | 16 => audit_patch(i),
                17 => pod_create.clone(),
                18 => cloudtrail_run_task(i),
                _ if i % 40 == 19 => distribution.clone(),
                _ => harbor.clone(),
            };
            record.into_bytes()
        })
        .collect()
}
