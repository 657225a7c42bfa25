//! The CLI verbs that talk to a running orch through its control API, and `orch apply`.
//!
//! The running orch is found at `--control URL` (or `ORCH_CONTROL_URL`), else — for verbs
//! given a manifest — at the manifest's `spec.controlPort` or, when that is 0, at the URL
//! the running orch wrote to `DATA_DIR/orch.json`; else at `http://127.0.0.1:3006`.
//! Mutations, instance details and logs send the control token, found from local
//! knowledge only ([`crate::access::Sources`]), never from what a server says.
//!
//! Exit codes: 0 ok; 1 a runtime failure (including "not found"); 2 bad usage or an
//! invalid manifest; 3 orch cannot be reached. `orch diff` follows `kubectl diff`: 0 no
//! differences, 1 differences.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kit::orch_api::{
    self, ApplyRequest, ApplyResult, Change, ChangeKind, EventPage, InstanceDetail, InstanceList, Message,
    RestartRequest, ScaleRequest, Scaled,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use kit::secret::Secret;

use crate::access::{self, Sources};
use crate::manifest::{self, Manifest};

pub mod autoscale;
pub mod chaos;
pub mod export;
pub mod resources;
pub mod rollout;

pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:3006";

/// `-o table|json`: how a verb prints what it gets.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A CLI failure, with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or invalid input (exit 2).
    Usage(String),
    /// A runtime failure (exit 1).
    Runtime(String),
    /// orch does not answer (exit 3).
    Unreachable(String),
}

impl Failure {
    pub fn exit(&self) -> ExitCode {
        let (code, message) = match self {
            Failure::Usage(m) => (2, m),
            Failure::Runtime(m) => (1, m),
            Failure::Unreachable(m) => (3, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

pub type Outcome = Result<ExitCode, Failure>;

/// A client of one orch's control API.
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    access: Sources,
}

impl Client {
    pub fn new(base: &str, access: Sources) -> Self {
        let http = kit::http::client_builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        Self { base: base.trim_end_matches('/').to_owned(), http, access }
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        Failure::Unreachable(format!(
            "cannot reach orch at {} ({}); is the cluster running? (`orch apply FILE` starts it; --control URL or ORCH_CONTROL_URL points elsewhere)",
            self.base,
            root_cause(e)
        ))
    }

    /// The answer of a call as `T`, or the failure its `{"error": ...}` tells.
    async fn answer<T: DeserializeOwned>(res: reqwest::Response) -> Result<T, Failure> {
        let status = res.status();
        let body = res.bytes().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| Failure::Runtime(format!("orch answered something this orch cannot read: {e}")));
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let message =
            serde_json::from_slice::<ErrorBody>(&body).map_or_else(|_| "request failed".to_owned(), |b| b.error);
        Err(match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Failure::Usage(message),
            _ => Failure::Runtime(message),
        })
    }

    /// An open read, as the wire type `T`.
    pub async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let res = self.http.get(format!("{}{path}", self.base)).send().await.map_err(|e| self.unreachable(&e))?;
        Self::answer(res).await
    }

    /// Whether an orch answers (quickly) at this address.
    pub async fn cluster(&self) -> Option<orch_api::Cluster> {
        let res =
            self.http.get(format!("{}/api/cluster", self.base)).timeout(Duration::from_secs(2)).send().await.ok()?;
        res.status().is_success().then_some(())?;
        res.json().await.ok()
    }

    /// The control token for this orch, from local knowledge only.
    fn token(&self) -> Result<Secret, Failure> {
        self.access.control_token(&self.base).map_err(Failure::Usage)
    }

    /// A read that needs the control token (an instance's details).
    pub async fn get_private<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send_with_token(self.http.get(format!("{}{path}", self.base))).await
    }

    /// A mutation with a JSON body, answered as the wire type `T`.
    pub async fn call<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, Failure> {
        self.send_with_token(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// A `DELETE`, answered as the wire type `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send_with_token(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// Sends `req` with the control token, found from local knowledge only.
    async fn send_with_token<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, Failure> {
        let token = self.token()?;
        let res = req.bearer_auth(token.expose()).send().await.map_err(|e| self.unreachable(&e))?;
        Self::answer(res).await
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// The control URL of the orch running `manifest`: its fixed port, or what it wrote to its
/// data dir.
pub fn control_url_of(manifest: &Manifest) -> Option<String> {
    if manifest.control_port != 0 {
        return Some(format!("http://127.0.0.1:{}", manifest.control_port));
    }
    crate::state::read(&manifest.data_dir).map(|r| r.control_url)
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// An aligned table, like kubectl's.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(headers.to_vec());
    for row in rows {
        push_row(row.iter().map(String::as_str).collect());
    }
    out
}

/// `5s`, `3m`, `2h`, `4d` since an ISO timestamp.
pub fn age(iso: Option<&str>) -> String {
    let Some(iso) = iso else { return "-".into() };
    let Ok(then) = time::OffsetDateTime::parse(iso, &time::format_description::well_known::Iso8601::DEFAULT) else {
        return "-".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - then).whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// A value of a table or a description, `-` when there is none.
fn cell(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

// ---------------------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------------------

pub async fn get(client: &Client, service: Option<&str>, json_out: bool) -> Outcome {
    let cluster: orch_api::Cluster = client.read("/api/cluster").await?;
    if let Some(s) = service
        && !cluster.services.iter().any(|x| x.name == s)
    {
        return Err(Failure::Runtime(format!("no service {s:?} in cluster {}", cluster.name)));
    }
    let query = service.map(|s| format!("?service={s}")).unwrap_or_default();
    let list: InstanceList = client.read(&format!("/api/instances{query}")).await?;
    if json_out {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(err) = &cluster.last_error {
        eprintln!("warning: the last manifest edit was rejected (nothing changed):\n{err}\n");
    }
    for note in rollout::pinned_notes(client, &cluster).await {
        eprintln!("{note}");
    }
    let rows: Vec<Vec<String>> = list
        .instances
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                cell(i.pid),
                i.port.to_string(),
                resources::status_cell(i),
                if i.ready { "yes".into() } else { "no".into() },
                i.restarts.to_string(),
                age(i.started_at.as_deref()),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "PID", "PORT", "STATUS", "READY", "RESTARTS", "AGE"], &rows));
    if let Some(scaled) = autoscale::table_of(&cluster, service) {
        print!("\n{scaled}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(client: &Client, name: &str, json_out: bool) -> Outcome {
    let detail: InstanceDetail = client.get_private(&format!("/api/instances/{name}")).await?;
    if json_out {
        print_json(&detail);
        return Ok(ExitCode::SUCCESS);
    }
    let i = &detail.instance;
    let mut out = String::new();
    let ready = if i.ready { "ready" } else { "not ready" };
    let _ = writeln!(out, "Name:       {}", i.name);
    let _ = writeln!(out, "Service:    {}", i.service);
    let _ = writeln!(out, "Status:     {} ({ready})", i.status);
    let _ = writeln!(out, "PID:        {}", cell(i.pid));
    let _ = writeln!(out, "Port:       {} ({})", i.port, i.url);
    let _ = writeln!(out, "Restarts:   {}", i.restarts);
    let _ = writeln!(out, "Started:    {} ({} ago)", cell(i.started_at.as_deref()), age(i.started_at.as_deref()));
    if let Some(last) = &i.last_exit {
        let how = match (last.code, &last.signal) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => cell(last.error.as_deref()),
        };
        let how = match last.reason {
            Some(reason) => format!("{}: {how}", reason.as_str()),
            None => how,
        };
        let _ = writeln!(out, "Last exit:  {how} at {}", last.at);
    }
    for line in i.usage.iter().flat_map(resources::usage_lines) {
        let _ = writeln!(out, "{line}");
    }
    let spec = serde_yaml::to_string(&detail.spec).unwrap_or_default();
    let _ = writeln!(out, "Spec:");
    for line in spec.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "Events:");
    for e in &detail.events {
        let _ = writeln!(out, "  {}", e.line());
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(client: &Client, name: &str, follow: bool, tail: Option<usize>) -> Outcome {
    let token = client.token()?;
    let mut url = format!("{}/api/logs/{name}?follow={follow}", client.base);
    if let Some(n) = tail {
        let _ = write!(url, "&tail={n}");
    }
    let mut res = client.http.get(url).bearer_auth(token.expose()).send().await.map_err(|e| client.unreachable(&e))?;
    if !res.status().is_success() {
        return Client::answer::<serde::de::IgnoredAny>(res).await.map(|_| ExitCode::SUCCESS);
    }
    let mut stdout = std::io::stdout();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                if stdout.write_all(&chunk).and_then(|()| stdout.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(_) if follow => return Err(Failure::Unreachable(format!("orch at {} went away", client.base))),
            Err(e) => return Err(Failure::Runtime(format!("reading the log: {e}"))),
        }
    }
}

/// `orch logs [NAME] --trace ID`: the lines of one trace, as `GET /api/logs?trace=` finds
/// them.
pub async fn trace_logs(client: &Client, name: Option<&str>, id: &str) -> Outcome {
    let id = kit::trace::parse_trace_id(id).map_err(Failure::Usage)?;
    let token = client.token()?;
    let mut query = vec![("trace", id.as_str())];
    query.extend(name.map(|n| ("name", n)));
    let req = client.http.get(format!("{}/api/logs", client.base)).query(&query).bearer_auth(token.expose());
    let res = req.send().await.map_err(|e| client.unreachable(&e))?;
    if !res.status().is_success() {
        return Client::answer::<serde::de::IgnoredAny>(res).await.map(|_| ExitCode::SUCCESS);
    }
    let text = res.bytes().await.map_err(|e| Failure::Runtime(format!("reading the log: {e}")))?;
    let _ = std::io::stdout().write_all(&text);
    Ok(ExitCode::SUCCESS)
}

pub async fn events(client: &Client, follow: bool, json_out: bool) -> Outcome {
    let mut since = 0u64;
    loop {
        let wait = if follow && since > 0 { "&wait=30s" } else { "" };
        let page: EventPage = match client.read(&format!("/api/events?since={since}{wait}")).await {
            Ok(p) => p,
            Err(Failure::Unreachable(_)) if follow && since > 0 => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e),
        };
        for e in &page.events {
            if json_out {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                println!("{}", e.line());
            }
        }
        since = page.next.max(since);
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        since = since.max(1);
    }
}

pub fn parse_scale(arg: &str) -> Result<(String, i64), Failure> {
    let usage = || Failure::Usage(format!("expected SERVICE=REPLICAS (like data=5), got {arg:?}"));
    let (service, n) = arg.split_once('=').ok_or_else(usage)?;
    let n: i64 = n.trim().parse().map_err(|_| usage())?;
    if service.trim().is_empty() {
        return Err(usage());
    }
    Ok((service.trim().to_owned(), n))
}

pub async fn scale(client: &Client, arg: &str) -> Outcome {
    let (service, replicas) = parse_scale(arg)?;
    let v: Scaled = client.call("/api/scale", &ScaleRequest { service, replicas }).await?;
    println!("{} scaled {} -> {}", v.service, v.from, v.replicas);
    Ok(ExitCode::SUCCESS)
}

pub async fn restart(client: &Client, target: &str) -> Outcome {
    let v: Message = client.call("/api/restart", &RestartRequest { target: target.to_owned() }).await?;
    println!("{}", v.message);
    Ok(ExitCode::SUCCESS)
}

/// `orch down`: stop everything in reverse dependency order, showing it happen.
pub async fn down(client: &Client) -> Outcome {
    // Asking from past the end answers at once with the latest seq.
    let latest = client.read::<EventPage>("/api/events?since=18446744073709551615").await?.next;
    client.call::<Message>("/api/down", &serde_json::Map::new()).await?;
    let started = Instant::now();
    let mut since = latest;
    loop {
        match client.read::<EventPage>(&format!("/api/events?since={since}&wait=5s")).await {
            Ok(page) => {
                for e in &page.events {
                    println!("{}", e.line());
                }
                since = page.next.max(since);
            }
            Err(Failure::Unreachable(_)) | Err(Failure::Runtime(_)) => break,
            Err(e) => return Err(e),
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(Failure::Runtime("the cluster is still stopping after 10 minutes".into()));
        }
    }
    // The API goes away just before the process ends.
    println!("cluster stopped");
    Ok(ExitCode::SUCCESS)
}

fn print_changes(changes: &[Change]) -> bool {
    if changes.is_empty() {
        println!("no changes");
        return false;
    }
    for c in changes {
        println!("{} {}", c.change.sign(), c.summary);
    }
    true
}

/// The running orch of `m`'s data dir, if it listens at `url` (or at the URL it recorded
/// when `url` is `None`): a client holding `m`'s data dir as where the control token is.
/// `Ok(None)`: no orch runs on that data dir.
fn running_orch(url: Option<&str>, sources: &Sources, m: &Manifest) -> Result<Option<Client>, Failure> {
    let Some(record) = crate::state::running(&m.data_dir) else { return Ok(None) };
    let url = url.unwrap_or(&record.control_url);
    let same = access::loopback_port(url).is_some_and(|p| access::loopback_port(&record.control_url) == Some(p));
    if !same {
        return Err(Failure::Runtime(format!(
            "the orch of the data dir {} (pid {}) listens at {}, not at {url}; drop --control, or point it there",
            m.data_dir.display(),
            record.pid,
            record.control_url
        )));
    }
    let access = Sources { data_dir: Some(m.data_dir.clone()), ..sources.clone() };
    Ok(Some(Client::new(url, access)))
}

/// `orch diff FILE`: what applying FILE would change (everything, if no orch runs).
pub async fn diff(control: Option<&str>, sources: &Sources, file: &Path, json_out: bool) -> Outcome {
    let m = manifest::load(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let url = control.map(str::to_owned).or_else(|| control_url_of(&m));
    let changes = match running_orch(url.as_deref(), sources, &m)? {
        Some(client) => {
            let request = ApplyRequest { path: Some(m.path.clone()), dry_run: true };
            client.call::<ApplyResult>("/api/apply", &request).await?.changes
        }
        None => m
            .services
            .iter()
            .map(|s| Change {
                service: s.name.clone(),
                change: ChangeKind::Create,
                from: None,
                to: Some(s.replicas),
                summary: format!(
                    "create {} ({} instance{}; no cluster runs from {})",
                    s.name,
                    s.replicas,
                    if s.replicas == 1 { "" } else { "s" },
                    m.data_dir.display()
                ),
            })
            .collect(),
    };
    let different = if json_out {
        #[derive(Serialize)]
        struct Changes<'a> {
            changes: &'a [Change],
        }
        print_json(&Changes { changes: &changes });
        !changes.is_empty()
    } else {
        print_changes(&changes)
    };
    Ok(if different { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `orch apply FILE` when an orch already runs this cluster (FILE's data dir): hand it the
/// file, with the control token of that data dir. `Ok(None)`: no orch runs it; start one.
/// With `wait`, follows the rollouts it started: exit 1 if one fails.
pub async fn hand_over(
    control: Option<&str>,
    sources: &Sources,
    m: &Manifest,
    wait: bool,
) -> Result<Option<ExitCode>, Failure> {
    let url = control.map(str::to_owned).or_else(|| control_url_of(m));
    let Some(client) = running_orch(url.as_deref(), sources, m)? else {
        // Nothing runs on this data dir; something else answering on the port is another
        // cluster (starting would fail on the port anyway, so say it plainly).
        if let Some(url) = url
            && let Some(cluster) = Client::new(&url, Sources::default()).cluster().await
        {
            return Err(Failure::Runtime(format!(
                "another orch (cluster {}) answers at {url}; stop it (`orch down --control {url}`) or give this manifest another spec.controlPort",
                cluster.name,
            )));
        }
        return Ok(None);
    };
    let v: ApplyResult =
        client.call("/api/apply", &ApplyRequest { path: Some(m.path.clone()), dry_run: false }).await?;
    println!("applied {} to the running cluster {} ({}):", m.path.display(), m.name, client.base);
    print_changes(&v.changes);
    if wait {
        let mut ok = true;
        for c in v.changes.iter().filter(|c| matches!(c.change, ChangeKind::Roll | ChangeKind::Create)) {
            let history: orch_api::RolloutHistory = client.read(&format!("/api/rollouts/{}", c.service)).await?;
            ok &= rollout::wait(&client, &c.service, history.current).await?;
        }
        if !ok {
            return Err(Failure::Runtime("a rollout failed (see `orch rollout history SERVICE`)".into()));
        }
    }
    Ok(Some(ExitCode::SUCCESS))
}

/// `orch apply -d`: runs the control plane detached (its own session, output to
/// `DATA_DIR/orch.log`) and returns once every instance is ready.
pub async fn detach(file: &Path, m: &Manifest) -> Outcome {
    let exe = std::env::current_exe().map_err(|e| Failure::Runtime(format!("cannot find the orch binary: {e}")))?;
    crate::plane::prepare_data_dir(&m.data_dir).map_err(|e| Failure::Runtime(format!("{e:#}")))?;
    let log_path = m.data_dir.join("orch.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Failure::Runtime(format!("cannot open {}: {e}", log_path.display())))?;
    let log_start = log.metadata().map(|md| md.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("apply")
        .arg(file)
        .arg("--serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| Failure::Runtime(e.to_string()))?)
        .stderr(log);
    new_session(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| Failure::Runtime(format!("cannot start the control plane: {e}")))?;
    let started = Instant::now();
    let mut last_shown = String::new();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read(&log_path)
                .ok()
                .map(|b| String::from_utf8_lossy(b.get(log_start as usize..).unwrap_or(&b)).into_owned());
            eprint!("{}", tail.unwrap_or_default());
            let code = status.code().unwrap_or(1);
            return Err(if code == 2 {
                Failure::Usage(format!("the control plane did not start (see {})", log_path.display()))
            } else {
                Failure::Runtime(format!("the control plane exited ({status}); see {}", log_path.display()))
            });
        }
        let record = crate::state::read(&m.data_dir).filter(|r| r.pid == child.id());
        if let Some(record) = record {
            let client = Client::new(&record.control_url, Sources::default());
            if let Some(cluster) = client.cluster().await {
                let total: u64 = cluster.services.iter().map(|s| u64::from(s.replicas)).sum();
                let ready: u64 = cluster.services.iter().map(|s| u64::from(s.ready)).sum();
                let shown = format!("{ready}/{total}");
                if shown != last_shown {
                    eprintln!("  {ready}/{total} ready");
                    last_shown = shown;
                }
                if ready == total {
                    println!(
                        "cluster {} running in the background (pid {}): {total} instances ready in {:.2} s",
                        cluster.name,
                        child.id(),
                        started.elapsed().as_secs_f64()
                    );
                    println!("control API {}  log {}", record.control_url, log_path.display());
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(Failure::Runtime(format!(
                "not every instance is ready after 120 s; the cluster keeps trying in the background (`orch get`, {})",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let rows = vec![
            vec!["web-1".into(), "12".into(), "running".into()],
            vec!["web-10".into(), "-".into(), "backoff".into()],
        ];
        assert_eq!(
            table(&["NAME", "PID", "STATUS"], &rows),
            "NAME     PID   STATUS\nweb-1    12    running\nweb-10   -     backoff\n"
        );
    }

    #[test]
    fn scale_arguments() {
        assert_eq!(parse_scale("data=5").unwrap(), ("data".into(), 5));
        assert_eq!(parse_scale("data=-1").unwrap(), ("data".into(), -1));
        assert!(matches!(parse_scale("data"), Err(Failure::Usage(_))));
        assert!(matches!(parse_scale("data=five"), Err(Failure::Usage(_))));
        assert!(matches!(parse_scale("=5"), Err(Failure::Usage(_))));
    }

    #[test]
    fn ages() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(&kit::time::now_iso())), "0s");
        assert_eq!(age(Some(&kit::time::iso_from_millis(kit::time::unix_millis() - 7_200_000))), "2h");
    }
}
