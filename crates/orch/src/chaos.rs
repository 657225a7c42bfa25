//! `orch chaos`: fault injection on purpose — this is a network simulation, and breaking
//! it is the point.
//!
//! Four actions. `kill` SIGKILLs an instance (or a random running instance of a service);
//! `pause` SIGSTOPs one for a while (a hung process) and SIGCONTs it after; `latency` and
//! `errors` make the balancer delay, or answer with an error, the requests of a service
//! (through its `/api/faults`). A kill or pause happens once, or at once and then `every`
//! DUR until `for` ends; a balancer fault lasts `for`. Every injection is a `chaos` event.
//!
//! Theory of operation. An experiment is a record on the controller (the
//! [`Experiments`] it owns, changed by `controller::chaos`), plus one timer task that
//! calls the controller at each repeat and at the end. Signals are sent by the controller
//! itself, to the pid it holds for the instance at that moment, so a kill never meets a
//! process that is no longer that instance; a pause remembers the process generation it
//! stopped, and is resumed only if that process still runs. Talking to the balancer takes
//! time, so it happens in tasks between two calls to the controller ([`start`],
//! [`finish`]), never on the controller. When the cluster stops, every experiment ends:
//! paused processes are resumed, balancer faults removed.
//!
//! This module holds the pure parts (the request, its validation, durations, the record
//! and how it is shown), the tasks, and the `orch chaos` verbs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Client, Failure, Outcome};
use crate::controller::{CallError, Handle};
use crate::reconcile::InstanceId;

/// The longest `for` (and pause) an experiment may have.
pub const MAX_SPAN: Duration = Duration::from_secs(3600);
/// The shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_millis(100);
/// The most latency the balancer adds.
pub const MAX_LATENCY_MS: u64 = 600_000;
/// Experiments at once.
pub const MAX_EXPERIMENTS: usize = 100;

// ---------------------------------------------------------------------------------------
// The request and its validation
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Kill,
    Pause,
    Latency,
    Errors,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Latency => "latency",
            Action::Errors => "errors",
        }
    }

    /// Whether it acts on processes (else at the balancer).
    pub fn on_processes(self) -> bool {
        matches!(self, Action::Kill | Action::Pause)
    }
}

/// `POST /api/chaos`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub action: Option<Action>,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// How validation messages name the fields: as the API does, or as the CLI does.
#[derive(Clone, Copy)]
pub struct Names {
    every: &'static str,
    span: &'static str,
    duration: &'static str,
    latency: &'static str,
    percent: &'static str,
    status: &'static str,
}

impl Names {
    pub const API: Names = Names {
        every: "everyMs",
        span: "forMs",
        duration: "durationMs",
        latency: "latencyMs",
        percent: "percent",
        status: "status",
    };
    pub const CLI: Names = Names {
        every: "--every",
        span: "--for",
        duration: "--duration",
        latency: "--ms",
        percent: "--percent",
        status: "--status",
    };
}

/// A checked experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub action: Action,
    pub target: String,
    /// Repeat (kill, pause) this often, until `span` ends.
    pub every: Option<Duration>,
    /// How long it lasts: the repeats, or the balancer fault.
    pub span: Option<Duration>,
    /// How long each pause lasts.
    pub pause: Option<Duration>,
    pub latency_ms: u64,
    pub percent: f64,
    pub status: u16,
}

impl Spec {
    /// Checks a request; the error says what is wrong, naming fields as `n` does.
    pub fn parse(r: &Request, n: Names) -> Result<Spec, String> {
        let action = r.action.ok_or("action is required: kill, pause, latency or errors")?;
        let target = r.target.trim();
        if target.is_empty() || target.len() > 200 {
            return Err("target must name an instance (like data-2) or a service (like data)".into());
        }
        let ms = Duration::from_millis;
        let every = r.every_ms.map(ms);
        let span = r.for_ms.map(ms);
        let pause = r.duration_ms.map(ms);
        let within = |d: Duration, min: Duration, name: &str| {
            if d < min || d > MAX_SPAN {
                Err(format!("{name} must be from {} to {}, got {}", show(min), show(MAX_SPAN), show(d)))
            } else {
                Ok(())
            }
        };
        if let Some(d) = every {
            if !action.on_processes() {
                return Err(format!(
                    "{} applies to kill and pause only (a {} fault lasts {})",
                    n.every,
                    action.as_str(),
                    n.span
                ));
            }
            within(d, MIN_EVERY, n.every)?;
        }
        if let Some(d) = span {
            within(d, ms(1), n.span)?;
        }
        match (action.on_processes(), every.is_some(), span.is_some()) {
            (true, true, false) => {
                return Err(format!(
                    "{} needs {} (at most {}): a repeating experiment must end by itself",
                    n.every,
                    n.span,
                    show(MAX_SPAN)
                ));
            }
            (true, false, true) => {
                return Err(format!("{} bounds a repeating {}: give {} too", n.span, action.as_str(), n.every));
            }
            (false, _, false) => {
                return Err(format!(
                    "{} is required for {}: how long the fault lasts (at most {})",
                    n.span,
                    action.as_str(),
                    show(MAX_SPAN)
                ));
            }
            _ => {}
        }
        match (action, pause) {
            (Action::Pause, None) => {
                return Err(format!("{} is required for pause: how long each pause lasts", n.duration));
            }
            (Action::Pause, Some(d)) => within(d, ms(1), n.duration)?,
            (_, Some(_)) => return Err(format!("{} applies to pause only", n.duration)),
            (_, None) => {}
        }
        let latency_ms = match (action, r.latency_ms) {
            (Action::Latency, None) => {
                return Err(format!("{} is required for latency: the delay in milliseconds", n.latency));
            }
            (Action::Latency, Some(l)) if l == 0 || l > MAX_LATENCY_MS => {
                return Err(format!("{} must be from 1 to {MAX_LATENCY_MS}, got {l}", n.latency));
            }
            (Action::Latency, Some(l)) => l,
            (_, Some(_)) => return Err(format!("{} applies to latency only", n.latency)),
            (_, None) => 0,
        };
        let percent = match (action, r.percent) {
            (Action::Errors, None) => {
                return Err(format!("{} is required for errors: the share of requests that fail", n.percent));
            }
            (Action::Errors | Action::Latency, Some(p)) if !(p > 0.0 && p <= 100.0) => {
                return Err(format!("{} must be above 0 and at most 100, got {p}", n.percent));
            }
            (Action::Errors | Action::Latency, Some(p)) => p,
            (Action::Latency, None) => 100.0,
            (_, Some(_)) => return Err(format!("{} applies to latency and errors only", n.percent)),
            (_, None) => 0.0,
        };
        let status = match (action, r.status) {
            (Action::Errors, Some(s)) if !(400..=599).contains(&s) => {
                return Err(format!("{} must be from 400 to 599, got {s}", n.status));
            }
            (Action::Errors, s) => s.unwrap_or(503),
            (_, Some(_)) => return Err(format!("{} applies to errors only", n.status)),
            (_, None) => 0,
        };
        Ok(Spec { action, target: target.to_owned(), every, span, pause, latency_ms, percent, status })
    }

    /// How long the experiment lasts from its start; `None`: it is over at once (one kill).
    pub fn lasts(&self) -> Option<Duration> {
        match self.action {
            Action::Kill => self.span,
            Action::Pause => self.span.or(self.pause),
            Action::Latency | Action::Errors => self.span,
        }
    }

    /// The body of the balancer's `POST /api/faults` for `service`.
    pub fn fault_body(&self, service: &str, lasts: Duration) -> Value {
        let duration_ms = lasts.as_millis().max(1) as u64;
        match self.action {
            Action::Latency => json!({
                "service": service, "latencyMs": self.latency_ms, "latencyPercent": self.percent, "durationMs": duration_ms,
            }),
            _ => json!({
                "service": service, "errorPercent": self.percent, "errorStatus": self.status, "durationMs": duration_ms,
            }),
        }
    }

    /// What a balancer fault does, for events: `data +200 ms latency for 10s`.
    pub fn fault_effect(&self, service: &str) -> String {
        let span = self.span.map(show).unwrap_or_default();
        match self.action {
            Action::Latency if self.percent < 100.0 => {
                format!("{service} +{} ms latency on {}% for {span}", self.latency_ms, self.percent)
            }
            Action::Latency => format!("{service} +{} ms latency for {span}", self.latency_ms),
            _ => format!("{service} answers {}% {} for {span}", self.percent, self.status),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------

/// `500ms`, `2s`, `1m`, `1h` (a whole number and a unit).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let bad = || format!("invalid duration {raw:?}: use a whole number and a unit, like 500ms, 2s, 1m or 1h");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A duration as a person writes it: `500ms`, `2s`, `1m`, `1m30s`, `1h`, `1500ms`.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        _ => format!("{s}s"),
    }
}

// ---------------------------------------------------------------------------------------
// Experiments, as the controller keeps them
// ---------------------------------------------------------------------------------------

/// What an experiment acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One instance.
    Instance(InstanceId),
    /// A random running instance of the service each time (kill, pause), or the service at
    /// the balancer (latency, errors).
    Service(String),
}

impl Target {
    pub fn service(&self) -> &str {
        match self {
            Target::Instance(id) => &id.service,
            Target::Service(s) => s,
        }
    }

    pub fn instance(&self) -> Option<String> {
        match self {
            Target::Instance(id) => Some(id.to_string()),
            Target::Service(_) => None,
        }
    }
}

/// A process an experiment stopped, to be resumed if it still runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub instance: InstanceId,
    pub generation: u64,
}

/// A fault an experiment injected at one balancer instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedFault {
    /// The balancer instance, and the process generation that holds the fault.
    pub balancer: InstanceId,
    pub generation: u64,
    pub url: String,
    pub id: String,
}

pub struct Experiment {
    pub id: u64,
    pub spec: Spec,
    pub target: Target,
    pub started_at: SystemTime,
    pub ends_at: Option<SystemTime>,
    /// Injections so far: kills, pauses, faults posted.
    pub injected: u64,
    /// What the latest injection did.
    pub last: Option<String>,
    /// Cancelled when it ends: stops its timers.
    pub stop: CancellationToken,
    pub paused: Vec<Paused>,
    pub faults: Vec<PostedFault>,
    /// Being ended (its balancer faults are being removed).
    pub ending: bool,
}

impl Experiment {
    /// A new experiment, started at `started_at`, over after `lasts` (`None`: at once).
    pub fn new(id: u64, spec: Spec, target: Target, started_at: SystemTime, lasts: Option<Duration>) -> Self {
        Self {
            id,
            spec,
            target,
            started_at,
            ends_at: lasts.map(|d| started_at + d),
            injected: 0,
            last: None,
            stop: CancellationToken::new(),
            paused: Vec::new(),
            faults: Vec::new(),
            ending: false,
        }
    }

    /// `kill a random instance of data every 1s for 10s`.
    pub fn description(&self) -> String {
        let s = &self.spec;
        let who = match &self.target {
            Target::Instance(id) => id.to_string(),
            Target::Service(name) => format!("a random instance of {name}"),
        };
        let mut text = match s.action {
            Action::Kill => format!("kill {who}"),
            Action::Pause => format!("pause {who} for {}", s.pause.map(show).unwrap_or_default()),
            Action::Latency | Action::Errors => return s.fault_effect(self.target.service()),
        };
        if let (Some(every), Some(span)) = (s.every, s.span) {
            let _ = write!(text, " every {} for {}", show(every), show(span));
        }
        text
    }

    /// The API's experiment object.
    pub fn to_json(&self) -> Value {
        let s = &self.spec;
        let mut v = json!({
            "id": self.id.to_string(),
            "action": s.action,
            "target": s.target,
            "service": self.target.service(),
            "description": self.description(),
            "startedAt": kit::time::iso(self.started_at),
            "endsAt": self.ends_at.map(kit::time::iso),
            "injected": self.injected,
            "last": self.last,
        });
        let ms = |d: Duration| d.as_millis() as u64;
        if let Some(d) = s.every {
            v["everyMs"] = json!(ms(d));
        }
        if let Some(d) = s.span {
            v["forMs"] = json!(ms(d));
        }
        if let Some(d) = s.pause {
            v["durationMs"] = json!(ms(d));
            v["paused"] = json!(self.paused.iter().map(|p| p.instance.to_string()).collect::<Vec<_>>());
        }
        match s.action {
            Action::Latency => v["latencyMs"] = json!(s.latency_ms),
            Action::Errors => {
                v["percent"] = json!(s.percent);
                v["status"] = json!(s.status);
            }
            _ => {}
        }
        if !s.action.on_processes() {
            v["balancers"] = json!(self.faults.iter().map(|f| f.balancer.to_string()).collect::<Vec<_>>());
        }
        v
    }
}

/// The experiments of a cluster.
#[derive(Default)]
pub struct Experiments {
    pub next_id: u64,
    pub active: BTreeMap<u64, Experiment>,
}

impl Experiments {
    /// Whether some experiment holds `instance`'s process `generation` stopped.
    pub fn is_paused(&self, instance: &InstanceId, generation: u64) -> bool {
        self.active.values().any(|e| e.paused.iter().any(|p| p.instance == *instance && p.generation == generation))
    }

    pub fn to_json(&self) -> Value {
        json!({ "experiments": self.active.values().map(Experiment::to_json).collect::<Vec<_>>() })
    }
}

/// Why an experiment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its time is up.
    Expired,
    /// `orch chaos stop`.
    Stopped,
    /// The cluster stops.
    Shutdown,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Expired => "its time is up",
            Why::Stopped => "stopped",
            Why::Shutdown => "the cluster stops",
        }
    }
}

/// A random index below `n` (n > 0), without a dependency: std's hasher keys are random.
pub fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() % n.max(1) as u64) as usize
}

// ---------------------------------------------------------------------------------------
// Tasks: the API's side, the timer, the balancer
// ---------------------------------------------------------------------------------------

fn gone() -> CallError {
    CallError::Gone
}

/// What the controller answers when an experiment starts.
pub enum Begun {
    /// Done (kill, pause): the experiment object.
    Done(Value),
    /// A balancer fault to post to these balancer instances, then to report back with
    /// `chaos_faults_posted`.
    Faults { id: u64, balancers: Vec<Balancer>, body: Value, client: BalancerClient },
}

/// A running balancer instance that routes to a faulty service.
#[derive(Clone, Debug)]
pub struct Balancer {
    pub id: InstanceId,
    pub generation: u64,
    pub url: String,
}

/// The balancer's `/api/faults`, with the cluster token.
#[derive(Clone)]
pub struct BalancerClient {
    pub http: reqwest::Client,
    pub token: kit::secret::Secret,
}

impl BalancerClient {
    /// Posts a fault; the balancer's fault id, or why not.
    pub async fn post(&self, url: &str, body: &Value) -> Result<String, String> {
        let res = self
            .http
            .post(format!("{url}/api/faults"))
            .bearer_auth(self.token.expose())
            .json(body)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        match answer["id"].as_str() {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => Err(answer["error"].as_str().map_or_else(|| format!("status {status}"), str::to_owned)),
        }
    }

    /// Removes a fault (one the balancer no longer has is fine).
    pub async fn delete(&self, fault: &PostedFault) {
        let res = self
            .http
            .delete(format!("{}/api/faults/{}", fault.url, fault.id))
            .bearer_auth(self.token.expose())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => tracing::warn!(balancer = %fault.balancer, status = %r.status(), "cannot remove a chaos fault"),
            Err(e) => tracing::warn!(balancer = %fault.balancer, error = %e, "cannot remove a chaos fault"),
        }
    }

    pub async fn delete_all(&self, faults: &[PostedFault]) {
        futures_util::future::join_all(faults.iter().map(|f| self.delete(f))).await;
    }
}

/// `POST /api/chaos`: starts an experiment. Runs as its own task, so a client that goes
/// away midway leaves no half-started experiment.
pub async fn start(handle: Handle, spec: Spec) -> Result<Value, CallError> {
    let begun = handle.call(move |c| c.chaos_start(spec)).await.ok_or_else(gone)??;
    match begun {
        Begun::Done(v) => Ok(v),
        Begun::Faults { id, balancers, body, client } => {
            let posts = balancers.into_iter().map(|balancer| {
                let (client, body) = (client.clone(), &body);
                async move {
                    let result = client.post(&balancer.url, body).await;
                    (balancer, result)
                }
            });
            let results = futures_util::future::join_all(posts).await;
            handle.call(move |c| c.chaos_faults_posted(id, results, client)).await.ok_or_else(gone)?
        }
    }
}

/// Ends experiment `id`: the controller resumes what it paused and hands over its balancer
/// faults, which are removed before it is gone from the list. `None`: no such experiment
/// (`Some(None)`: it was already ending).
pub async fn finish(handle: &Handle, id: u64, why: Why) -> Option<Option<Value>> {
    let Some((faults, client)) = handle.call(move |c| c.chaos_ending(id, why)).await?? else {
        return Some(None);
    };
    client.delete_all(&faults).await;
    handle.call(move |c| c.chaos_ended(id, why)).await
}

/// An experiment's timer: repeats (at `every` after the start, while before `end`), then
/// the end. The first injection happened when it started.
pub async fn run(handle: Handle, id: u64, every: Option<Duration>, end: tokio::time::Instant, stop: CancellationToken) {
    if let Some(every) = every {
        let mut next = tokio::time::Instant::now() + every;
        while next < end {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            if handle.call(move |c| c.chaos_inject(id)).await.is_none() {
                return;
            }
            next += every;
        }
    }
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep_until(end) => {}
    }
    finish(&handle, id, Why::Expired).await;
}

/// Resumes a paused process after `after`, unless its experiment ends first (which resumes
/// it then).
pub async fn resume_later(handle: Handle, id: u64, paused: Paused, after: Duration, stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(after) => {
            handle.call(move |c| c.chaos_resume(id, &paused)).await;
        }
    }
}

/// `DELETE /api/chaos[/:id]`: ends one experiment, or all; the stopped ones.
pub async fn stop(handle: Handle, id: Option<String>) -> Result<Value, CallError> {
    let ids = match id {
        Some(raw) => {
            let known = handle.call(|c| c.chaos_ids()).await.ok_or_else(gone)?;
            let id = raw.parse::<u64>().ok().filter(|id| known.contains(id));
            vec![id.ok_or_else(|| CallError::NotFound(format!("no chaos experiment {raw:?}")))?]
        }
        None => handle.call(|c| c.chaos_ids()).await.ok_or_else(gone)?,
    };
    let ends = ids.iter().map(|&id| {
        let handle = handle.clone();
        async move { finish(&handle, id, Why::Stopped).await.flatten() }
    });
    let stopped: Vec<Value> = futures_util::future::join_all(ends).await.into_iter().flatten().collect();
    Ok(json!({ "stopped": stopped }))
}

// ---------------------------------------------------------------------------------------
// The verbs: `orch chaos ...`
// ---------------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum Command {
    /// SIGKILL an instance, or a random running instance of a service (orch restarts it).
    Kill {
        /// An instance (data-2), or a service (data): a random running instance of it each time.
        #[arg(value_name = "INSTANCE|SERVICE")]
        target: String,
        /// Again every DUR (like 500ms, 2s, 1m) until --for ends.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        every: Option<Duration>,
        /// How long to repeat (with --every; at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Option<Duration>,
    },
    /// SIGSTOP an instance (a hung process) and SIGCONT it after --duration.
    Pause {
        /// An instance (data-2), or a service (data): a random running instance of it each time.
        #[arg(value_name = "INSTANCE|SERVICE")]
        target: String,
        /// How long each pause lasts.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        duration: Duration,
        /// Again every DUR until --for ends.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        every: Option<Duration>,
        /// How long to repeat (with --every; at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Option<Duration>,
    },
    /// Added latency for P% (default all) of the requests the balancer routes to SERVICE.
    Latency {
        /// A service the balancer routes to.
        service: String,
        /// The delay in milliseconds.
        #[arg(long, value_name = "N")]
        ms: u64,
        /// The share of requests delayed (above 0, at most 100; default 100).
        #[arg(long, value_name = "P")]
        percent: Option<f64>,
        /// How long the fault lasts (at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Duration,
    },
    /// Injected HTTP errors, answered by the balancer, for P% of SERVICE's requests.
    Errors {
        /// A service the balancer routes to.
        service: String,
        /// The share of requests that fail (above 0, at most 100).
        #[arg(long, value_name = "P")]
        percent: f64,
        /// The status they get (400-599; default 503).
        #[arg(long, value_name = "CODE")]
        status: Option<u16>,
        /// How long the fault lasts (at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Duration,
    },
    /// The active experiments.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: crate::Output,
    },
    /// End an experiment (no ID: all of them); balancer faults are removed, paused
    /// processes resumed.
    Stop {
        id: Option<String>,
        /// Every experiment (the same as no ID).
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The API request for a verb that starts an experiment.
fn request(command: &Command) -> Option<Request> {
    let ms = |d: &Option<Duration>| d.map(millis);
    Some(match command {
        Command::Kill { target, every, span } => Request {
            action: Some(Action::Kill),
            target: target.clone(),
            every_ms: ms(every),
            for_ms: ms(span),
            ..Request::default()
        },
        Command::Pause { target, duration, every, span } => Request {
            action: Some(Action::Pause),
            target: target.clone(),
            every_ms: ms(every),
            for_ms: ms(span),
            duration_ms: Some(millis(*duration)),
            ..Request::default()
        },
        Command::Latency { service, ms: latency, percent, span } => Request {
            action: Some(Action::Latency),
            target: service.clone(),
            for_ms: Some(millis(*span)),
            latency_ms: Some(*latency),
            percent: *percent,
            ..Request::default()
        },
        Command::Errors { service, percent, status, span } => Request {
            action: Some(Action::Errors),
            target: service.clone(),
            for_ms: Some(millis(*span)),
            percent: Some(*percent),
            status: *status,
            ..Request::default()
        },
        Command::List { .. } | Command::Stop { .. } => return None,
    })
}

/// `orch chaos ...`.
pub async fn verb(client: &Client, command: Command) -> Outcome {
    if let Some(req) = request(&command) {
        // Checked here first, so a mistake is told in the CLI's words and nothing is sent.
        Spec::parse(&req, Names::CLI).map_err(Failure::Usage)?;
        let body = serde_json::to_value(&req).unwrap_or_default();
        let v = client.post("/api/chaos", body).await?;
        if v["endsAt"].is_null() {
            println!("chaos: {}", text(&v["last"]));
        } else {
            println!(
                "chaos experiment {} started: {}; ends in {} (`orch chaos stop {}` ends it sooner)",
                text(&v["id"]),
                text(&v["description"]),
                until(v["endsAt"].as_str()),
                text(&v["id"]),
            );
            if let Some(last) = v["last"].as_str() {
                println!("chaos: {last}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        Command::List { output } => {
            let v = client.get("/api/chaos").await?;
            if output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            let list = v["experiments"].as_array().map(|a| a.as_slice()).unwrap_or_default();
            if list.is_empty() {
                println!("no chaos experiment is running");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        text(&e["action"]),
                        text(&e["target"]),
                        text(&e["injected"]),
                        until(e["endsAt"].as_str()),
                        text(&e["description"]),
                    ]
                })
                .collect();
            print!("{}", cli::table(&["ID", "ACTION", "TARGET", "INJECTED", "ENDS IN", "WHAT"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { id, all: _ } => {
            let path = id.as_deref().map_or_else(|| "/api/chaos".to_owned(), |id| format!("/api/chaos/{id}"));
            let v = client.delete(&path).await?;
            let stopped = v["stopped"].as_array().map(|a| a.as_slice()).unwrap_or_default();
            if stopped.is_empty() {
                println!("no chaos experiment was running");
            }
            for e in stopped {
                println!(
                    "chaos experiment {} stopped ({}; {} injected)",
                    text(&e["id"]),
                    text(&e["description"]),
                    text(&e["injected"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("experiments are started above"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `4s` until an ISO timestamp.
fn until(iso: Option<&str>) -> String {
    let Some(iso) = iso else { return "-".into() };
    let Ok(at) = time::OffsetDateTime::parse(iso, &time::format_description::well_known::Iso8601::DEFAULT) else {
        return "-".into();
    };
    let left = (at - time::OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64;
    // Rounded up to whole seconds past a second.
    let ms = if left >= 1000 { left.div_ceil(1000) * 1000 } else { left };
    show(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (raw, ms) in [("500ms", 500), ("2s", 2000), ("1m", 60_000), ("1h", 3_600_000), ("0s", 0), (" 3s ", 3000)] {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for raw in ["", "5", "s", "1.5s", "2d", "-1s", "1m30s", "99999999999999999999h", "18446744073709551615h"] {
            let err = parse_duration(raw).unwrap_err();
            assert!(err.contains("like 500ms, 2s, 1m or 1h"), "{raw}: {err}");
        }
        for (ms, shown) in [(500, "500ms"), (1500, "1500ms"), (2000, "2s"), (60_000, "1m"), (90_000, "1m30s")] {
            assert_eq!(show(Duration::from_millis(ms)), shown);
        }
        assert_eq!(show(Duration::from_secs(3600)), "1h");
        assert_eq!(show(Duration::from_secs(3601)), "3601s");
    }

    fn req(json: Value) -> Request {
        serde_json::from_value(json).unwrap()
    }

    /// Each bad request, and the start of its message, for the API and the CLI.
    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            (json!({"target": "data"}), "action is required", "action is required"),
            (json!({"action": "kill", "target": " "}), "target must name", "target must name"),
            (
                json!({"action": "kill", "target": "data", "everyMs": 1000}),
                "everyMs needs forMs",
                "--every needs --for",
            ),
            (
                json!({"action": "kill", "target": "data", "forMs": 1000}),
                "forMs bounds a repeating kill: give everyMs too",
                "--for bounds a repeating kill: give --every too",
            ),
            (
                json!({"action": "kill", "target": "data", "everyMs": 10, "forMs": 1000}),
                "everyMs must be from 100ms to 1h, got 10ms",
                "--every must be from 100ms to 1h, got 10ms",
            ),
            (
                json!({"action": "kill", "target": "data", "everyMs": 1000, "forMs": 3_600_001}),
                "forMs must be from 1ms to 1h, got 3600001ms",
                "--for must be from 1ms to 1h",
            ),
            (
                json!({"action": "kill", "target": "data", "durationMs": 1000}),
                "durationMs applies to pause only",
                "--duration applies to pause only",
            ),
            (
                json!({"action": "pause", "target": "data"}),
                "durationMs is required for pause",
                "--duration is required",
            ),
            (
                json!({"action": "pause", "target": "data", "durationMs": 0}),
                "durationMs must be from 1ms to 1h, got 0ms",
                "--duration must be from 1ms",
            ),
            (
                json!({"action": "latency", "target": "data", "latencyMs": 200}),
                "forMs is required for latency",
                "--for is required for latency",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000}),
                "latencyMs is required for latency",
                "--ms is required for latency",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 600_001}),
                "latencyMs must be from 1 to 600000, got 600001",
                "--ms must be from 1 to 600000",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 5, "percent": 150}),
                "percent must be above 0 and at most 100, got 150",
                "--percent must be above 0 and at most 100, got 150",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 5, "everyMs": 500}),
                "everyMs applies to kill and pause only",
                "--every applies to kill and pause only",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000}),
                "percent is required for errors",
                "--percent is required",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 101}),
                "percent must be above 0 and at most 100, got 101",
                "--percent must be above 0 and at most 100, got 101",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 0}),
                "percent must be above 0 and at most 100, got 0",
                "--percent must be above 0",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 10, "status": 200}),
                "status must be from 400 to 599, got 200",
                "--status must be from 400 to 599, got 200",
            ),
            (
                json!({"action": "kill", "target": "data", "status": 500}),
                "status applies to errors only",
                "--status applies to errors only",
            ),
            (
                json!({"action": "pause", "target": "data", "durationMs": 5, "percent": 5}),
                "percent applies to latency and errors only",
                "--percent applies to latency and errors only",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 5, "latencyMs": 5}),
                "latencyMs applies to latency only",
                "--ms applies to latency only",
            ),
        ];
        for (json, api, cli) in cases {
            let r = req(json.clone());
            let err = Spec::parse(&r, Names::API).unwrap_err();
            assert!(err.starts_with(api), "{json}: {err}");
            let err = Spec::parse(&r, Names::CLI).unwrap_err();
            assert!(err.starts_with(cli), "{json}: {err}");
        }
        assert!(serde_json::from_value::<Request>(json!({"action": "nuke", "target": "x"})).is_err());
        assert!(serde_json::from_value::<Request>(json!({"action": "kill", "target": "x", "extra": 1})).is_err());
        let nan = Request { percent: Some(f64::NAN), ..req(json!({"action": "errors", "target": "d", "forMs": 5})) };
        assert!(Spec::parse(&nan, Names::API).is_err());
    }

    #[test]
    fn good_requests_and_what_they_say() {
        let kill = Spec::parse(&req(json!({"action": "kill", "target": "data-2"})), Names::API).unwrap();
        assert_eq!(kill.lasts(), None, "a single kill is over at once");
        let repeat = Spec::parse(
            &req(json!({"action": "kill", "target": "data", "everyMs": 1000, "forMs": 10_000})),
            Names::API,
        )
        .unwrap();
        assert_eq!(repeat.lasts(), Some(Duration::from_secs(10)));
        let pause =
            Spec::parse(&req(json!({"action": "pause", "target": "compute-1", "durationMs": 3000})), Names::API)
                .unwrap();
        assert_eq!(pause.lasts(), Some(Duration::from_secs(3)));
        let errors = Spec::parse(
            &req(json!({"action": "errors", "target": "data", "forMs": 10_000, "percent": 20})),
            Names::API,
        )
        .unwrap();
        assert_eq!(errors.status, 503, "the default status");
        assert_eq!(errors.fault_effect("data"), "data answers 20% 503 for 10s");
        assert_eq!(
            errors.fault_body("data", Duration::from_secs(10)),
            json!({"service": "data", "errorPercent": 20.0, "errorStatus": 503, "durationMs": 10_000})
        );
        let latency = Spec::parse(
            &req(json!({"action": "latency", "target": "data", "forMs": 10_000, "latencyMs": 200, "percent": 100})),
            Names::API,
        )
        .unwrap();
        assert_eq!(latency.fault_effect("data"), "data +200 ms latency for 10s");
        assert_eq!(
            latency.fault_body("data", Duration::from_secs(10)),
            json!({"service": "data", "latencyMs": 200, "latencyPercent": 100.0, "durationMs": 10_000})
        );
        let some = Spec::parse(
            &req(json!({"action": "latency", "target": "data", "forMs": 10_000, "latencyMs": 200, "percent": 25})),
            Names::API,
        )
        .unwrap();
        assert_eq!(some.fault_effect("data"), "data +200 ms latency on 25% for 10s");
        assert_eq!(some.fault_body("data", Duration::from_secs(1))["latencyPercent"], json!(25.0));

        let experiment = |spec: Spec, target: Target| Experiment::new(3, spec, target, SystemTime::UNIX_EPOCH, None);
        let e = experiment(repeat, Target::Service("data".into()));
        assert_eq!(e.description(), "kill a random instance of data every 1s for 10s");
        let v = e.to_json();
        assert_eq!(
            (v["id"].as_str(), v["everyMs"].as_u64(), v["forMs"].as_u64()),
            (Some("3"), Some(1000), Some(10_000))
        );
        assert_eq!(v["action"], "kill");
        assert!(v["endsAt"].is_null() && v["durationMs"].is_null());
        let e = experiment(pause, Target::Instance(InstanceId::new("compute", 1)));
        assert_eq!(e.description(), "pause compute-1 for 3s");
        assert_eq!(e.to_json()["paused"], json!([]));
    }

    #[test]
    fn random_indices_stay_below() {
        let seen: std::collections::HashSet<usize> = (0..200).map(|_| random_below(3)).collect();
        assert!(seen.iter().all(|&i| i < 3));
        assert!(seen.len() > 1, "not always the same");
        assert_eq!(random_below(1), 0);
    }
}
