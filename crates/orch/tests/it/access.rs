//! Who may do what: the control token (only the CLI's), the registry token (only the
//! instances that register themselves), where the CLI finds the control token (never from
//! a server), and what the open reads show.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use kit::testing::eventually;
use serde_json::{Value, json};

use crate::{Cluster, DEADLINE, ORCH, manifest, stderr, stdout, web};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The `KEY=VALUE` entries of a process's environment.
fn environ(pid: u32) -> Vec<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|&b| b == 0).map(|kv| String::from_utf8_lossy(kv).into_owned()).collect()
}

#[tokio::test]
async fn mutations_and_private_reads_need_the_control_token() {
    let yaml = web(1).replace("      replicas: 1\n", "      replicas: 1\n      env: { API_SECRET: hunter2-in-env }\n");
    let cluster = Cluster::start(&yaml).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let http = reqwest::Client::new();
    let control = cluster.control_token();
    let registry = cluster.registry_token();
    assert_ne!(control, registry);
    for name in ["control-token", "registry-token"] {
        assert_eq!(mode(&cluster.path("data").join(name)), 0o600, "{name}");
    }
    assert!(!cluster.path("data/cluster-token").exists());

    let posts = ["/api/scale", "/api/restart", "/api/apply", "/api/down", "/api/chaos"];
    let reads = ["/api/instances/web-1", "/api/logs/web-1"];
    for token in [None, Some("wrong"), Some(registry.as_str())] {
        for path in posts {
            let mut req = http.post(format!("{}{path}", cluster.url)).json(&json!({}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{path} with {token:?}");
            let body: Value = res.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
        for path in reads {
            let mut req = http.get(format!("{}{path}", cluster.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{path} with {token:?}");
            let body: Value = res.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }
    // With the control token: the spec, environment included, and the log.
    let res = http.get(format!("{}/api/instances/web-1", cluster.url)).bearer_auth(&control).send().await.unwrap();
    let detail: Value = res.json().await.unwrap();
    assert_eq!(detail["spec"]["env"]["API_SECRET"], "hunter2-in-env");
    let res = http.get(format!("{}/api/logs/web-1", cluster.url)).bearer_auth(&control).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("started web-1"));
    // The open reads (what the detector polls) hold no environment value.
    for path in ["/api/instances", "/api/events?since=0", "/api/cluster", "/api/chaos"] {
        let res = http.get(format!("{}{path}", cluster.url)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let text = res.text().await.unwrap();
        assert!(!text.contains("hunter2"), "{path}: {text}");
    }
    let res = http
        .post(format!("{}/api/scale", cluster.url))
        .bearer_auth(&control)
        .json(&json!({"service": "web", "replicas": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http
        .post(format!("{}/api/apply", cluster.url))
        .bearer_auth(&control)
        .json(&json!({"path": "relative.yaml"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Unknown routes and bad queries are JSON errors too.
    let res = http.get(format!("{}/api/nothing", cluster.url)).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let res = http.get(format!("{}/api/events?wait=soon", cluster.url)).send().await.unwrap();
    assert_eq!(res.status(), 400);
    // Components get the control URL and the registry token, never the control token.
    let env = environ(cluster.pid("web-1").await);
    assert!(env.iter().any(|kv| *kv == format!("ORCH_CONTROL_URL={}", cluster.url)));
    assert!(env.iter().any(|kv| *kv == format!("ORCH_CLUSTER_TOKEN={registry}")));
    assert!(env.iter().all(|kv| !kv.contains(&control)), "{env:?}");
    assert!(env.iter().any(|kv| kv == "ORCH_MANAGED=1"));
    assert!(env.iter().any(|kv| kv == "SERVICE_TYPE=web"));
}

#[tokio::test]
async fn a_command_gets_the_registry_token_only_when_it_registers_itself() {
    // Each command writes its environment to a file, then stays up.
    let dump = |name: &str, extra: &str| {
        format!(
            "    - name: {name}\n      command: [sh, -c, 'env > {{dataDir}}/env-{{name}}; exec sleep 300']\n      readiness: {{ enabled: false }}\n{extra}"
        )
    };
    let yaml = manifest(&format!(
        "    - name: registry\n      component: registry\n{}{}{}",
        dump("plain", ""),
        dump("selfreg", "      registers: true\n"),
        dump("byorch", "      register: true\n")
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    // A user who exported a control token for the CLI, and an old registry token.
    let exported = "exported-control-token-of-the-user";
    let cluster = Cluster::start_with_env(
        dir,
        &[("ORCH_CONTROL_TOKEN", exported), ("ORCH_CLUSTER_TOKEN", "stale-registry-token")],
    )
    .await;
    cluster.wait_ready(&["registry-1", "plain-1", "selfreg-1", "byorch-1"]).await;
    let read = |name: &str| {
        let path = cluster.path(&format!("data/env-{name}"));
        async move {
            let text = std::fs::read_to_string(path).ok()?;
            text.contains("ORCH_CLUSTER_ID=").then_some(text)
        }
    };
    let control = cluster.control_token();
    let registry = cluster.registry_token();
    for (name, gets_it) in [("plain-1", false), ("selfreg-1", true), ("byorch-1", false)] {
        let env = eventually(DEADLINE, &format!("the environment of {name}"), || read(name)).await;
        let lines: Vec<&str> = env.lines().collect();
        assert_eq!(lines.contains(&format!("ORCH_CLUSTER_TOKEN={registry}").as_str()), gets_it, "{name}: {env}");
        assert!(!env.contains("ORCH_CLUSTER_TOKEN=stale"), "{name}: {env}");
        assert!(!env.contains(&control) && !env.contains(exported), "{name} has a control token: {env}");
        assert!(!env.contains("ORCH_CONTROL_TOKEN"), "{name}: {env}");
    }
}

#[tokio::test]
async fn the_tokens_are_new_at_every_start_and_the_old_ones_are_refused() {
    let mut cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let (control, registry) = (cluster.control_token(), cluster.registry_token());
    cluster.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(cluster.wait_exit(DEADLINE).expect("orch stops").success());
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    drop(cluster);

    let cluster = Cluster::start_in(dir).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    assert_ne!(cluster.control_token(), control);
    assert_ne!(cluster.registry_token(), registry);
    let http = reqwest::Client::new();
    let detail = |token: String| {
        let req = http.get(format!("{}/api/instances/web-1", cluster.url)).bearer_auth(token);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(detail(control).await, 401);
    assert_eq!(detail(cluster.control_token()).await, 200);
    // The registry refuses the old registry token too.
    let registry_url = cluster.url_of("registry-1").await;
    let register = |token: String| {
        let req = http
            .post(format!("{registry_url}/api/registry/register"))
            .bearer_auth(token)
            .json(&json!({"serviceId": "x-1", "serviceType": "x", "url": "http://localhost:1"}));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(register(registry).await, 401);
    assert!(register(cluster.registry_token()).await.is_success());
}

/// A server that answers every request like an orch would, naming `data_dir` as its data
/// dir, and records each request's line and `Authorization` header.
async fn fake_orch(data_dir: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::extract::Request;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let record = record.clone();
        let data_dir = data_dir.clone();
        async move {
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap_or("?").to_owned());
            record.lock().unwrap().push(format!("{} {} {auth:?}", req.method(), req.uri()));
            axum::Json(json!({
                "name": "test", "dataDir": data_dir, "services": [], "instances": [], "events": [], "next": 0,
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Runs the CLI in `dir` with `HOME` = `home` and no token in the environment.
fn cli(dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(ORCH)
        .args(args)
        .current_dir(dir)
        .env_remove("ORCH_CONTROL_URL")
        .env_remove("ORCH_CONTROL_TOKEN")
        .env("HOME", home)
        .output()
        .unwrap()
}

// The fake orch answers on other threads while the CLI runs (blocking) on this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_sends_a_token_to_a_server_that_named_a_data_dir() {
    // A real cluster (its data dir holds a live orch.json and the control token), and a
    // fake orch on another port that claims that data dir as its own.
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let victim = cluster.path("data");
    let secret = cluster.control_token();
    let (fake, seen) = fake_orch(victim.clone()).await;
    let fake_port = fake.rsplit(':').next().unwrap().to_owned();
    let dir = cluster.dir.path();
    let verbs: &[&[&str]] = &[
        &["scale", "web=2"],
        &["restart", "web"],
        &["down"],
        &["chaos", "kill", "web-1"],
        &["describe", "web-1"],
        &["logs", "web-1"],
    ];
    // The user's HOME has the record of the real cluster only.
    for verb in verbs {
        let out = cli(dir, dir, &[verb, &["--control", &fake][..]].concat());
        assert_eq!(out.status.code(), Some(2), "{verb:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("no control token") && err.contains("--token-file"), "{verb:?}: {err}");
    }
    // Given the manifest, or a record for the fake port naming the real data dir (and a
    // live pid): the data dir's orch listens elsewhere, so its token stays home.
    let out = cli(dir, dir, &["scale", "web=2", "--manifest", "m.yaml", "--control", &fake]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("listens at"), "{}", stderr(&out));
    let home = tempfile::tempdir().unwrap();
    let clusters = home.path().join(".orch/clusters");
    std::fs::create_dir_all(&clusters).unwrap();
    std::fs::set_permissions(home.path().join(".orch"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let me = std::process::id();
    let start: u64 = std::fs::read_to_string(format!("/proc/{me}/stat"))
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let record = json!({"pid": me, "startTime": start, "dataDir": victim, "controlUrl": fake, "manifest": "/m.yaml"});
    let record_path = clusters.join(format!("{fake_port}.json"));
    std::fs::write(&record_path, record.to_string()).unwrap();
    std::fs::set_permissions(&record_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli(dir, home.path(), &["down", "--control", &fake]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("listens at"), "{}", stderr(&out));
    // A hand-over of the real manifest to the fake: refused, nothing sent.
    let out = cli(dir, dir, &["apply", "m.yaml", "--control", &fake]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|r| !r.contains(&secret) && r.ends_with("None")), "{seen:#?}");
    // Nothing happened to the real cluster.
    assert_eq!(cluster.wait_ready(&["registry-1", "web-1"]).await.len(), 2);
}

#[tokio::test]
async fn the_cli_finds_the_control_token_locally() {
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let dir = cluster.dir.path();
    let empty = tempfile::tempdir().unwrap();
    let url = cluster.url.as_str();
    // The record `orch apply` wrote (private), through ORCH_CONTROL_URL or --control.
    let record = dir.join(format!(".orch/clusters/{}.json", url.rsplit(':').next().unwrap()));
    assert_eq!(mode(&record), 0o600);
    assert_eq!(mode(record.parent().unwrap()), 0o700);
    let out = cli(dir, dir, &["describe", "web-1", "--control", url]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The manifest (its controlPort is 0: the URL comes from its data dir's orch.json).
    let out = cli(dir, empty.path(), &["describe", "web-1", "--manifest", "m.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A token file, and the environment.
    let token_file = dir.join("data/control-token");
    let out =
        cli(dir, empty.path(), &["logs", "web-1", "--control", url, "--token-file", token_file.to_str().unwrap()]);
    assert!(stdout(&out).contains("started web-1"), "{}", stderr(&out));
    let out = Command::new(ORCH)
        .args(["scale", "web=2", "--control", url])
        .env("HOME", empty.path())
        .env("ORCH_CONTROL_TOKEN", cluster.control_token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing local: a clear refusal that says what to do.
    let out = cli(dir, empty.path(), &["scale", "web=1", "--control", url]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for hint in ["--manifest FILE", "--token-file", "ORCH_CONTROL_TOKEN", "~/.orch/clusters/"] {
        assert!(err.contains(hint), "{hint}: {err}");
    }
    // A record readable by others is not trusted.
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(dir, dir, &["scale", "web=1", "--control", url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a private file"), "{}", stderr(&out));
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A clean stop removes the record.
    let out = cli(dir, dir, &["down", "--control", url]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(DEADLINE, "the record removed", || async { (!record.exists()).then_some(()) }).await;
}
