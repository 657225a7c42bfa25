//! The CLI verbs that talk to a running orch through its control API, and `orch apply`
//! (its hand-over to a running orch, `orch diff` and the detached start are in `apply`).
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
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kit::orch_api::{self, EventPage, InstanceDetail, InstanceList, Message, RestartRequest, ScaleRequest, Scaled};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use kit::secret::Secret;

use crate::access::Sources;
use crate::manifest::Manifest;

mod apply;
pub mod autoscale;
pub mod chaos;
pub mod export;
pub mod resources;
pub mod rollout;

pub use apply::{detach, diff, hand_over};

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

#[cfg(test)]
mod tests;
