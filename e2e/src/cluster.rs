//! A whole cluster run by the real `orch apply`, as a user runs it: a manifest in a
//! temporary directory (automatic ports: `controlPort: 0`, no `port:`), its data dir beside
//! it, and the control URL read from `DATA_DIR/orch.json`. Ended by its PID when dropped.
//!
//! orch and the CLI run with `HOME` set to that directory: `orch apply` records the
//! cluster in `HOME/.orch/clusters/`, where the CLI finds the control token as a user's
//! CLI would (no token from the environment). The test's own requests send the control
//! token read from `DATA_DIR/control-token`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{eventually, eventually_every, orch_bin};

/// How long a cluster test waits for anything before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How often the waits on instances poll orch and the balancer, unless
/// [`Cluster::poll_every`] says otherwise.
pub const POLL: Duration = Duration::from_millis(10);

/// Whether process `pid` is gone (or a zombie waiting to be reaped: dead all the same).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A cluster run by a foreground `orch apply` the test started; ended by its PID.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub orch: Child,
    pub url: String,
    pub http: reqwest::Client,
    /// The pause between two checks of the waits on instances ([`POLL`] by default).
    poll: Duration,
}

impl Cluster {
    /// Writes `yaml` as `m.yaml` in a new temporary dir and runs `orch apply m.yaml`.
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with_env(dir, &[]).await
    }

    /// Like [`start_in`](Self::start_in), with `env` added to orch's environment.
    pub async fn start_with_env(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let out = std::fs::File::create(dir.path().join("orch.out")).unwrap();
        let orch = Command::new(orch_bin())
            .args(["apply", "m.yaml"])
            .current_dir(dir.path())
            .env_remove("ORCH_CONTROL_URL")
            .env_remove("ORCH_CONTROL_TOKEN")
            .env("HOME", dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = orch.id();
        let data = dir.path().join("data");
        // orch writes its control URL to DATA_DIR/orch.json once the API listens.
        let url = eventually(DEADLINE, "orch.json with the control URL", || {
            let path = data.join("orch.json");
            async move {
                let record: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
                (record["pid"].as_u64() == Some(u64::from(pid)))
                    .then(|| record["controlUrl"].as_str().unwrap().to_owned())
            }
        })
        .await;
        Self { dir, orch, url, http: reqwest::Client::new(), poll: POLL }
    }

    /// Polls tighter (or looser) in the waits on instances: the benchmark times them.
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the manifest file, as an editor saving it would.
    pub fn edit(&self, yaml: &str) {
        let tmp = self.path("m.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.path("m.yaml")).unwrap();
    }

    /// A GET of the control API, with the control token.
    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.control_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn instances(&self) -> Vec<Value> {
        self.get("/api/instances").await["instances"].as_array().unwrap().clone()
    }

    /// `name -> (pid, ready)` of every instance.
    pub async fn pids(&self) -> Vec<(String, Option<u64>, bool)> {
        self.instances()
            .await
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i["pid"].as_u64(), i["ready"] == true))
            .collect()
    }

    pub async fn pid(&self, name: &str) -> u32 {
        let list = self.pids().await;
        list.iter()
            .find(|(n, ..)| n == name)
            .and_then(|(_, pid, _)| *pid)
            .unwrap_or_else(|| panic!("{name} has no pid")) as u32
    }

    /// Waits until exactly `names` exist, every one running and ready.
    pub async fn wait_ready(&self, names: &[&str]) -> Vec<(String, Option<u64>, bool)> {
        let what = format!("instances {names:?} ready");
        eventually_every(self.poll, DEADLINE, &what, || async {
            let list = self.pids().await;
            let ok = list.len() == names.len()
                && list.iter().all(|(n, pid, ready)| names.contains(&n.as_str()) && pid.is_some() && *ready);
            ok.then_some(list)
        })
        .await
    }

    /// One instance as orch reports it (`GET /api/instances/:name`).
    pub async fn instance(&self, name: &str) -> Value {
        self.get(&format!("/api/instances/{name}")).await
    }

    /// Waits until instance `name` runs and is ready; returns it as orch reports it.
    pub async fn wait_instance_ready(&self, name: &str) -> Value {
        eventually_every(self.poll, DEADLINE, &format!("{name} running and ready"), || async {
            let i = self.instance(name).await;
            (i["status"] == "running" && i["ready"] == true && i["pid"].is_u64()).then_some(i)
        })
        .await
    }

    /// `http://127.0.0.1:<port>` of instance `name` (orch reports `localhost`, which may
    /// resolve to `::1` first; instances listen on 127.0.0.1).
    pub async fn url_of(&self, name: &str) -> String {
        let list = self.instances().await;
        let port = list
            .iter()
            .find(|i| i["name"] == name)
            .and_then(|i| i["port"].as_u64())
            .unwrap_or_else(|| panic!("{name} has no port: {list:?}"));
        format!("http://127.0.0.1:{port}")
    }

    /// orch's control token (`DATA_DIR/control-token`, new at every start): for its
    /// mutations, instance details and logs.
    pub fn control_token(&self) -> String {
        std::fs::read_to_string(self.path("data/control-token")).unwrap_or_default().trim().to_owned()
    }

    /// The registry token (`DATA_DIR/registry-token`, new at every start): for the
    /// registry's and the balancer's mutations.
    pub fn registry_token(&self) -> String {
        std::fs::read_to_string(self.path("data/registry-token")).unwrap().trim().to_owned()
    }

    /// Sends SIGKILL to instance `name` by the pid orch reports; returns that pid.
    pub async fn kill(&self, name: &str) -> u32 {
        let pid = self.pid(name).await;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {name} ({pid}): {e}"));
        pid
    }

    /// Waits until instance `name` runs again under another pid than `old`, ready; returns it.
    pub async fn wait_replaced(&self, name: &str, old: u32) -> Value {
        let what = format!("{name} running again under a new pid (was {old})");
        eventually_every(self.poll, DEADLINE, &what, || async {
            let i = self.get(&format!("/api/instances/{name}")).await;
            let pid = i["pid"].as_u64()?;
            (pid != u64::from(old) && i["status"] == "running" && i["ready"] == true).then_some(i)
        })
        .await
    }

    /// Waits until the balancer (instance `balancer-1`) lists exactly `names` across its
    /// pools, each healthy: it routes to them and to no other instance. Returns its `/status`.
    pub async fn wait_routed(&self, names: &[String]) -> Value {
        let url = format!("{}/status", self.url_of("balancer-1").await);
        let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
        expected.sort_unstable();
        let what = format!("the balancer routing to exactly {expected:?}");
        eventually_every(self.poll, DEADLINE, &what, || async {
            let status: Value = self.http.get(&url).send().await.ok()?.json().await.ok()?;
            let mut listed = Vec::new();
            for pool in status["services"].as_object()?.values() {
                for i in pool["instances"].as_array()? {
                    if i["healthy"] != true || i["ejected"] == true {
                        return None;
                    }
                    listed.push(i["id"].as_str()?.to_owned());
                }
            }
            listed.sort_unstable();
            (listed == expected).then_some(status)
        })
        .await
    }

    /// Every event so far.
    pub async fn events(&self) -> Vec<Value> {
        self.get("/api/events?since=0&limit=10000").await["events"].as_array().unwrap().clone()
    }

    /// The seq of the latest event.
    pub async fn latest_event(&self) -> u64 {
        self.get("/api/events?since=0&limit=10000").await["next"].as_u64().unwrap()
    }

    /// Waits for an event of `kind` about `instance` whose message contains `text`.
    pub async fn wait_event(&self, kind: &str, instance: Option<&str>, text: &str) -> Value {
        self.wait_event_after(0, kind, instance, text).await
    }

    /// Like [`wait_event`](Self::wait_event), among events after `seq`.
    pub async fn wait_event_after(&self, seq: u64, kind: &str, instance: Option<&str>, text: &str) -> Value {
        let what = format!("a {kind} event of {instance:?} containing {text:?}");
        eventually(DEADLINE, &what, || async {
            self.events().await.into_iter().find(|e| {
                e["seq"].as_u64().unwrap() > seq
                    && e["type"] == kind
                    && e["instance"].as_str() == instance
                    && e["message"].as_str().is_some_and(|m| m.contains(text))
            })
        })
        .await
    }

    /// Runs the CLI against this cluster (it finds the control token in the record `orch
    /// apply` wrote under `HOME`).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(orch_bin())
            .args(args)
            .arg("--control")
            .arg(&self.url)
            .current_dir(self.dir.path())
            .env_remove("ORCH_CONTROL_TOKEN")
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    /// Waits for the orch process to exit, at most `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.orch.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.orch.id() as i32), signal);
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.path("orch.out")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.orch.try_wait(), Ok(None)) {
            // A graceful stop first; the children die with orch in any case.
            self.signal(Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                self.signal(Signal::SIGKILL);
                let _ = self.orch.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- orch output ---\n{}", self.output());
        }
    }
}

/// Runs `orch` with `args` in `dir`, which is also its `HOME`.
pub fn run_orch(dir: &Path, args: &[&str]) -> Output {
    Command::new(orch_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("ORCH_CONTROL_URL")
        .env_remove("ORCH_CONTROL_TOKEN")
        .env("HOME", dir)
        .output()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
