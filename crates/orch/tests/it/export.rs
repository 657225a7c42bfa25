//! `orch export kubernetes`, the verb: what it writes (the Secret private, kept across
//! exports), `--check` on edited files, and the exported configuration run for real without
//! Kubernetes: each Deployment's pods started as plain `orch` processes on loopback with the
//! env, args and ports the export gives them, the downward API's values filled in (pod name,
//! pod IP = 127.0.0.1) and `$(VAR)` expanded as the kubelet does, each Service mapped to its
//! first pod's port. The cluster they form works: the registry fills, the balancer routes,
//! a register, a login and a data write succeed through it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

use super::{orch, stderr};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn export(dir: &Path, extra: &[&str]) -> std::process::Output {
    let manifest = repo().join("manifests/cluster.yaml");
    let out = dir.join("k8s");
    let mut args = vec!["export", "kubernetes", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend(extra);
    orch(dir, &args)
}

/// Every document of every file of `dir`, by kind.
fn documents(dir: &Path) -> Vec<Yaml> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            use serde::Deserialize as _;
            let value = Yaml::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn text(v: &Yaml) -> String {
    v.as_str().map(str::to_owned).or_else(|| v.as_u64().map(|n| n.to_string())).unwrap_or_default()
}

#[test]
fn the_secret_is_private_kept_across_exports_and_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = export(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pods do not share a file"), "{}", stderr(&out));
    assert!(!dir.path().join("k8s").exists(), "a refused export writes nothing");

    let url = "postgres://orch:pw@postgres/orch";
    let out = export(dir.path(), &["--database-url", url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: service auth: the readiness probe"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout when writing files");
    let secret_file = dir.path().join("k8s/20-secret.yaml");
    assert_eq!(fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let first = fs::read_to_string(&secret_file).unwrap();
    assert!(first.contains(url));

    let out = export(dir.path(), &["--database-url", url, "--ingress-host", "orch.example.com"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&secret_file).unwrap(), first, "a second export keeps the secrets");
    assert!(dir.path().join("k8s/50-ingress.yaml").exists());
    let out = export(dir.path(), &["--database-url", url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("k8s/50-ingress.yaml").exists(), "the file of a kind no longer exported is removed");
}

#[test]
fn check_validates_edited_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = export(dir.path(), &["--database-secret", "netsim-db", "--no-secrets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k8s = dir.path().join("k8s");
    assert!(!k8s.join("20-secret.yaml").exists(), "--no-secrets writes no Secret");
    let k8s_arg = k8s.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["export", "kubernetes", "--check", k8s_arg];
        args.extend(extra);
        orch(dir.path(), &args)
    };
    let out = check(&["--no-secrets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("14 objects, no problems"), "{}", stderr(&out));
    // Without saying the Secrets are the user's, their references do not resolve.
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("of Secret \"netsim-secrets\", which is not among the objects"), "{}", stderr(&out));

    // An edit that breaks a Service's selector, and one that is not YAML.
    let services = k8s.join("40-service.yaml");
    let text = fs::read_to_string(&services).unwrap();
    fs::write(&services, text.replace("app.kubernetes.io/name: auth\n", "app.kubernetes.io/name: authn\n")).unwrap();
    let out = check(&["--no-secrets"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("Service \"auth\": its selector matches the pod labels of no Deployment"),
        "{}",
        stderr(&out)
    );
    fs::write(&services, "kind: [").unwrap();
    let out = check(&["--no-secrets"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("40-service.yaml"), "{}", stderr(&out));
}

/// `-o -` keeps no secrets, so applying two runs would rotate them: it draws them only
/// when told to (`--new-secrets`), and says to write to a directory instead.
#[test]
fn a_stream_draws_new_secrets_only_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo().join("manifests/examples/minimal.yaml");
    let run = |extra: &[&str]| {
        let mut args = vec!["export", "kubernetes", manifest.to_str().unwrap(), "-o", "-"];
        args.extend(extra);
        orch(dir.path(), &args)
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("rotates JWT_SECRET") && stderr(&out).contains("-o DIR"), "{}", stderr(&out));
    let (first, second) = (run(&["--new-secrets"]), run(&["--new-secrets"]));
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("JWT_SECRET"));
    assert_ne!(first.stdout, second.stdout, "new secrets each time, as asked");
    let out = run(&["--new-secrets", "--no-secrets"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// After `-o DIR` only the files written are checked: a kustomization beside them is the
/// user's business.
#[test]
fn an_export_into_a_directory_checks_only_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("k8s");
    fs::create_dir(&k8s).unwrap();
    fs::write(k8s.join("kustomization.yaml"), "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
        .unwrap();
    fs::write(k8s.join("99-mine.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: mine}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {}\n").unwrap();
    let out = export(dir.path(), &["--database-url", "postgres://db/orch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --check DIR skips the kustomization with a note, and names the file it cannot read.
    let out = orch(dir.path(), &["export", "kubernetes", "--check", k8s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("99-mine.yaml"), "{}", stderr(&out));
    fs::remove_file(k8s.join("99-mine.yaml")).unwrap();
    let out = orch(dir.path(), &["export", "kubernetes", "--check", k8s.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("kustomization.yaml skipped"), "{}", stderr(&out));
}

#[test]
fn a_stream_on_stdout_holds_every_object() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo().join("manifests/examples/minimal.yaml");
    let out = orch(dir.path(), &["export", "kubernetes", manifest.to_str().unwrap(), "-o", "-", "--no-secrets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stream = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<&str> = stream.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "Deployment", "Service"]);
}

/// The pods started for the test, each ended by its PID when dropped.
struct Pods(Vec<e2e::Proc>);

impl Pods {
    /// Starts `orch ARGS` as pod `name` with exactly `env`, serving on `listener` (handed over
    /// as fd 3, as orch and systemd do: no port is ever free for another program to take).
    fn start(&mut self, name: &str, args: &[String], env: &BTreeMap<String, String>, listener: &std::net::TcpListener) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.0.push(e2e::Proc::activated(name, listener, &args, |cmd| {
            cmd.env_clear().envs(env);
        }));
    }

    /// Polls `check` until it gives a value; after `deadline`, fails with the pods' logs.
    async fn wait<T, F, Fut>(&self, deadline: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of each pod's log.
    fn logs(&self) -> String {
        let mut all = String::new();
        for pod in &self.0 {
            let log = fs::read_to_string(e2e::log_dir().join(format!("{}.log", pod.name))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            all.push_str(&format!("--- {}\n{}\n", pod.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        all
    }
}

/// `$(VAR)` references expanded from `vars` as the kubelet does; `$$` is a literal `$`.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')'))
            && let Some(value) = vars.get(name)
        {
            out.push_str(value);
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_exported_configuration_runs_as_a_working_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let out = export(dir.path(), &["--database-url", &db]);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs = documents(&dir.path().join("k8s"));

    let config_map = of_kind(&docs, "ConfigMap")[0];
    let secret = of_kind(&docs, "Secret")[0];
    let deployments = of_kind(&docs, "Deployment");

    // Two pods of each Deployment (enough to route over several), each its own listener.
    let mut pods = Vec::new();
    for d in &deployments {
        let replicas = d["spec"]["replicas"].as_u64().unwrap().min(2);
        for n in 1..=replicas {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            pods.push((*d, format!("{}-pod-{n}", text(&d["metadata"]["name"])), listener));
        }
    }
    // Each Service, by its in-cluster URL, maps to its first pod's port.
    let mut services = BTreeMap::new();
    for svc in of_kind(&docs, "Service") {
        let name = text(&svc["metadata"]["name"]);
        let port = text(&svc["spec"]["ports"][0]["port"]);
        let (_, _, first) = pods.iter().find(|(d, _, _)| text(&d["metadata"]["name"]) == name).unwrap();
        services.insert(format!("http://{name}:{port}"), format!("http://{}", first.local_addr().unwrap()));
    }
    let map_services = |value: String| services.iter().fold(value, |v, (from, to)| v.replace(from, to));

    let mut running = Pods(Vec::new());
    // Started dependents first: the services wait for their dependencies themselves.
    for (d, pod, listener) in pods.into_iter().rev() {
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_sequence().unwrap() {
            assert_eq!(text(&from["configMapRef"]["name"]), text(&config_map["metadata"]["name"]));
            for (k, v) in config_map["data"].as_mapping().unwrap() {
                env.insert(text(k), map_services(text(v)));
            }
        }
        for var in container["env"].as_sequence().unwrap() {
            let name = text(&var["name"]);
            let value = if let Some(value) = var.get("value") {
                map_services(expand(&text(value), &env))
            } else if let Some(field) = var["valueFrom"].get("fieldRef") {
                match text(&field["fieldPath"]).as_str() {
                    "metadata.name" => pod.clone(),
                    "status.podIP" => "127.0.0.1".to_owned(),
                    other => panic!("no downward API value for {other}"),
                }
            } else {
                let key_ref = &var["valueFrom"]["secretKeyRef"];
                assert_eq!(text(&key_ref["name"]), text(&secret["metadata"]["name"]));
                text(&secret["stringData"][key_ref["key"].as_str().unwrap()])
            };
            env.insert(name, value);
        }
        // What is replaced below must first be what Kubernetes needs: every address, and
        // the port the Service's targetPort and the probes reach.
        let name = &d["metadata"]["name"];
        let svc = of_kind(&docs, "Service").into_iter().find(|s| &s["metadata"]["name"] == name).unwrap();
        let container_port = text(&container["ports"][0]["containerPort"]);
        assert_eq!(env["PORT"], container_port, "{pod}: PORT is the container's port");
        assert_eq!(text(&svc["spec"]["ports"][0]["port"]), container_port, "{pod}: the Service's port");
        assert_eq!(env["BIND_ADDR"], "0.0.0.0", "{pod}: a pod is reached at its IP");
        // The pod's address is 127.0.0.1; its port is its own listener's; /tmp is the test's.
        env.insert("BIND_ADDR".into(), "127.0.0.1".into());
        env.insert("PORT".into(), listener.local_addr().unwrap().port().to_string());
        env.insert("DATA_DIR".into(), dir.path().display().to_string());
        let args: Vec<String> =
            container["args"].as_sequence().unwrap().iter().map(|a| expand(&text(a), &env)).collect();
        running.start(&pod, &args, &env, &listener);
    }

    let http = reqwest::Client::new();
    let registry = services["http://registry:3005"].clone();
    let balancer = services["http://balancer:3000"].clone();
    let deadline = Duration::from_secs(60);
    // The registry fills: both pods of auth, data and compute, healthy, under their pod names.
    let mut expected: Vec<String> =
        ["auth", "data", "compute"].iter().flat_map(|s| [format!("{s}-pod-1"), format!("{s}-pod-2")]).collect();
    expected.sort();
    let registry_fills = || async {
        let list: Value = http.get(format!("{registry}/api/registry/services")).send().await.ok()?.json().await.ok()?;
        let mut ids: Vec<String> = list["services"]
            .as_array()?
            .iter()
            .filter(|r| {
                r["healthy"] == true && ["auth", "data", "compute"].contains(&r["serviceType"].as_str().unwrap_or(""))
            })
            .map(|r| r["serviceId"].as_str().unwrap_or("").to_owned())
            .collect();
        ids.sort();
        (ids == expected).then_some(())
    };
    running.wait(deadline, "the registry to list every auth, data and compute pod", registry_fills).await;

    // Through the balancer: register, login, a data write and its read.
    let user = json!({"username": "ada", "email": "ada@example.com", "password": "correct horse"});
    let res = running
        .wait(deadline, "a register through the balancer", || async {
            let res = http.post(format!("{balancer}/api/auth/register")).json(&user).send().await.ok()?;
            (res.status() != 502 && res.status() != 503).then_some(res)
        })
        .await;
    assert_eq!(res.status(), 201, "{:?}\n{}", res.text().await, running.logs());
    let res = http
        .post(format!("{balancer}/api/auth/login"))
        .json(&json!({"username": "ada", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let upstream = res.headers()["x-upstream-instance"].to_str().unwrap().to_owned();
    assert!(upstream.starts_with("auth-pod-"), "the instance is named by its pod: {upstream}");
    let token = res.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();

    let item = json!({"key": "k8s", "value": {"exported": true}});
    let res = http.post(format!("{balancer}/api/data")).bearer_auth(&token).json(&item).send().await.unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    let read: Value =
        http.get(format!("{balancer}/api/data/k8s")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["value"], json!({"exported": true}));
    let res = http.post(format!("{balancer}/api/data")).json(&json!({"key": "x", "value": 1})).send().await.unwrap();
    assert_eq!(res.status(), 401, "auth.required carried over");
}

/// Secrets are never printed to a terminal: with stdout on a pseudo-terminal (util-linux's
/// `script`), the export refuses, and prints the stream with `--no-secrets`.
#[test]
fn secrets_are_never_printed_to_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(!e2e::under_ci(), "util-linux's `script` is missing (under CI): run scripts/deps.sh");
        eprintln!("SKIPPED: util-linux's `script` is missing (no pseudo-terminal to test with)");
        return;
    }
    let manifest = repo().join("manifests/examples/minimal.yaml");
    let on_terminal = |extra: &str| {
        let line = format!("'{}' export kubernetes '{}' {extra}", super::ORCH, manifest.display());
        Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).output().unwrap()
    };
    let out = on_terminal("--new-secrets");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(shown.contains("stdout is a terminal"), "{shown}");
    assert!(!shown.contains("JWT_SECRET"), "{shown}");
    let out = on_terminal("--no-secrets");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: Deployment"));
}

/// `--check` also holds the files against Kubernetes' schemas when `kubernetes-validate` is
/// at hand (`KUBERNETES_VALIDATE` here: the venv of `scripts/deps.sh`): an unknown field,
/// which the structural checks do not see, is reported.
#[test]
fn check_runs_the_schemas_when_the_validator_is_at_hand() {
    let validator = repo().join("target/k8s-validate/bin/kubernetes-validate");
    if !validator.is_file() {
        assert!(!e2e::under_ci(), "kubernetes-validate is missing (under CI): run scripts/deps.sh");
        eprintln!("SKIPPED: kubernetes-validate is missing; run scripts/deps.sh");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = export(dir.path(), &["--database-url", "postgres://db/orch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k8s = dir.path().join("k8s");
    let check = |version: &str| {
        Command::new(super::ORCH)
            .args(["export", "kubernetes", "--check", k8s.to_str().unwrap(), "--kube-version", version])
            .env("KUBERNETES_VALIDATE", &validator)
            .output()
            .unwrap()
    };
    for version in ["1.29", "1.37"] {
        let out = check(version);
        assert!(out.status.success(), "{version}: {}", stderr(&out));
    }
    let deployments = k8s.join("30-deployment.yaml");
    let text = fs::read_to_string(&deployments).unwrap();
    fs::write(&deployments, text.replacen("enableServiceLinks:", "enableServiceLink:", 1)).unwrap();
    let out = check("1.29");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'enableServiceLink' was unexpected"), "{}", stderr(&out));
}
