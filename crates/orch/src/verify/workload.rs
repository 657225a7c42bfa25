//! The clients of a verify run: they drive the workloads through the balancer, as any
//! client would, and record every operation in the [`History`] (its invoke before the
//! request, its completion when the answer or the failure comes).
//!
//! `register`: each key is an item of the data service. A read is `GET /api/data/KEY`
//! (the item's version and value); a write is `PUT /api/data/KEY` with a value and no
//! version; a compare-and-set is the same PUT with `If-Match: <version>` (412 when the
//! version is not the expected one). Every write carries an `Idempotency-Key`, so the
//! balancer's retry of a write that reached an instance replays its first answer instead of
//! applying it twice (or of answering 412 to a cas that had won). Each written value is
//! unique and mixes escapes and non-ASCII text, so a read names the write it saw, byte for
//! byte.
//!
//! `jobs`: `POST /api/compute/job` of an `add` with an `Idempotency-Key`, sometimes sent
//! twice with the same key; after the run every job is read back until it has finished.
//!
//! An answer 2xx is `ok`, 4xx `fail` (a definite refusal), and so is a 5xx the balancer
//! answered itself before trying any instance (it then names none in
//! `X-Upstream-Instance`); anything else (another 5xx, a timeout, a lost connection) is
//! `info`: the client cannot tell whether it happened.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Rng;
use super::history::{Event, F, History, Kind};

/// How long a client waits for one answer before it records the operation as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the cluster through the balancer, with a bearer token when auth is required.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of the balancer at `base`, signed in as a fresh verify user when the data
    /// service demands a token.
    pub async fn connect(base: &str, run: &str) -> Result<Self, String> {
        let http = kit::http::client_builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("building an HTTP client: {e}"))?;
        let mut api = Self { http, base: base.trim_end_matches('/').to_owned(), token: None };
        let probe = api.request(Method::GET, "/api/data/verify-probe").send().await;
        let status = probe.map_err(|e| format!("cannot reach the balancer at {base}: {e}"))?.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            api.token = Some(api.sign_in(run).await?);
        }
        Ok(api)
    }

    async fn sign_in(&self, run: &str) -> Result<String, String> {
        let (username, password) = (format!("verify-{run}"), format!("verify-{run}-secret"));
        let body = serde_json::json!({"username": username, "email": format!("{username}@verify.invalid"), "password": password});
        let res = self.request(Method::POST, "/api/auth/register").json(&body).send().await;
        let status = res.map_err(|e| format!("registering the verify user: {e}"))?.status();
        if !(status.is_success() || status == reqwest::StatusCode::CONFLICT) {
            return Err(format!("registering the verify user: status {status}"));
        }
        #[derive(Deserialize)]
        struct Login {
            token: String,
        }
        let res = self
            .request(Method::POST, "/api/auth/login")
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .map_err(|e| format!("signing in the verify user: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("signing in the verify user: status {}", res.status()));
        }
        Ok(res.json::<Login>().await.map_err(|e| format!("reading the login answer: {e}"))?.token)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }
}

/// What came back for one request.
struct Answer {
    status: Option<u16>,
    instance: Option<String>,
    body: bytes::Bytes,
    error: Option<String>,
}

impl Answer {
    async fn of(req: RequestBuilder) -> Self {
        match req.send().await {
            Err(e) => {
                let why = if e.is_timeout() { "timeout".to_owned() } else { format!("no answer: {e}") };
                Self { status: None, instance: None, body: bytes::Bytes::new(), error: Some(why) }
            }
            Ok(res) => {
                let status = res.status().as_u16();
                let instance =
                    res.headers().get("x-upstream-instance").and_then(|v| v.to_str().ok()).map(str::to_owned);
                match res.bytes().await {
                    Ok(body) => Self { status: Some(status), instance, body, error: None },
                    Err(e) => {
                        Self { status: None, instance, body: bytes::Bytes::new(), error: Some(format!("body: {e}")) }
                    }
                }
            }
        }
    }

    /// ok on 2xx, fail on 4xx, and on an error the balancer answered without trying any
    /// instance (no `X-Upstream-Instance`: an injected error, no instance to send it to);
    /// info otherwise.
    fn kind(&self) -> Kind {
        match self.status {
            Some(200..=299) => Kind::Ok,
            Some(400..=499) => Kind::Fail,
            Some(_) if self.instance.is_none() => Kind::Fail,
            _ => Kind::Info,
        }
    }

    /// The completion of `invoke` this answer makes, at `time`.
    fn complete(&self, invoke: &Event, time: u64) -> Event {
        let mut done = invoke.complete(self.kind(), time);
        done.status = self.status;
        done.instance.clone_from(&self.instance);
        done.error = match (&self.error, self.kind()) {
            (Some(e), _) => Some(e.clone()),
            (None, Kind::Ok) => None,
            (None, _) => Some(error_text(&self.body)),
        };
        done
    }
}

/// The `error` of a JSON error body, or the start of the body.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned())
}

/// An item as read: its value's JSON text exactly as answered, and its version.
#[derive(Deserialize)]
struct ItemBody<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    version: i64,
}

/// The item an `ok` answer carries, into `done`: its version, and its value's text when
/// `with_value`. An unreadable item makes `done` unknown. The version, when read.
fn take_item(done: &mut Event, body: &[u8], with_value: bool) -> Option<i64> {
    if done.kind != Kind::Ok {
        return None;
    }
    match serde_json::from_slice::<ItemBody<'_>>(body) {
        Ok(item) => {
            if with_value {
                done.value = Some(item.value.get().to_owned());
            }
            done.version = Some(item.version);
            Some(item.version)
        }
        Err(e) => {
            done.kind = Kind::Info;
            done.error = Some(format!("unreadable item: {e}"));
            None
        }
    }
}

/// The events of a run, shared by its clients, on one clock.
pub struct Recorder {
    start: Instant,
    next: AtomicU64,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self { start, next: AtomicU64::new(1), events: Mutex::new(Vec::new()) }
    }

    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn invoke(&self, process: u32, f: F, key: &str, value: Option<String>, version: Option<i64>) -> Event {
        let mut e = Event::invoke(self.next.fetch_add(1, Ordering::Relaxed), process, f, key, self.now());
        e.value = value;
        e.version = version;
        self.push(e.clone());
        e
    }

    fn push(&self, e: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    pub fn into_history(self) -> History {
        History { events: self.events.into_inner().unwrap_or_else(|p| p.into_inner()), faults: Vec::new() }
    }
}

/// The register keys of run `run`.
pub fn register_keys(run: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("verify-{run}-r{i}")).collect()
}

/// Creates each key (or finds it), before any fault: the initial (version, value text) per
/// key.
pub async fn prepare(api: &Api, run: &str, keys: &[String]) -> Result<Vec<(i64, String)>, String> {
    let mut initial = Vec::new();
    for key in keys {
        let value = format!("{{\"initial\":\"{run}\"}}");
        let body = format!("{{\"key\":{},\"value\":{value}}}", serde_json::Value::from(key.as_str()));
        let mut last = String::new();
        let mut found = None;
        for _ in 0..20 {
            let req = api
                .request(Method::POST, "/api/data")
                .header("idempotency-key", format!("{key}-create"))
                .header("content-type", "application/json")
                .body(body.clone());
            let created = Answer::of(req).await;
            if matches!(created.status, Some(201 | 409)) {
                let read = Answer::of(api.request(Method::GET, &format!("/api/data/{key}"))).await;
                if read.status == Some(200)
                    && let Ok(item) = serde_json::from_slice::<ItemBody<'_>>(&read.body)
                {
                    found = Some((item.version, item.value.get().to_owned()));
                    break;
                }
                last = read.error.unwrap_or_else(|| error_text(&read.body));
            } else {
                last = created.error.unwrap_or_else(|| error_text(&created.body));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        initial.push(found.ok_or_else(|| format!("cannot create the register {key}: {last}"))?);
    }
    Ok(initial)
}

/// A value to write: unique to (process, n), with escapes, quotes and non-ASCII text.
fn value(process: u32, n: u64) -> String {
    format!("{{\"p\":{process},\"n\":{n},\"text\":\"caf\\u00e9 \\\"{n}\\\" ☃ <&>\",\"list\":[{n}, 1.50, null]}}")
}

/// One register client: random reads, writes and cas on `keys` until `end`.
pub async fn register_client(api: Api, rec: &Recorder, process: u32, keys: Vec<String>, seed: u64, end: Instant) {
    let mut rng = Rng::new(seed ^ (u64::from(process) << 32) ^ 0x5eed);
    // The last version this client saw of each key: what its cas expects.
    let mut seen = vec![1i64; keys.len()];
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let k = rng.below(keys.len() as u64) as usize;
        let key = &keys[k];
        let path = format!("/api/data/{key}");
        match rng.below(10) {
            0..=3 => {
                let inv = rec.invoke(process, F::Read, key, None, None);
                let answer = Answer::of(api.request(Method::GET, &path)).await;
                let mut done = answer.complete(&inv, rec.now());
                if let Some(version) = take_item(&mut done, &answer.body, true) {
                    seen[k] = version;
                }
                rec.push(done);
            }
            choice => {
                let cas = choice >= 7;
                let text = value(process, n);
                let f = if cas { F::Cas } else { F::Write };
                let expected = cas.then_some(seen[k]);
                let inv = rec.invoke(process, f, key, Some(text.clone()), expected);
                let mut req = api
                    .request(Method::PUT, &path)
                    .header("idempotency-key", format!("{key}-{process}-{n}"))
                    .header("content-type", "application/json")
                    .body(format!("{{\"value\":{text}}}"));
                if let Some(v) = expected {
                    req = req.header("if-match", v.to_string());
                }
                let answer = Answer::of(req).await;
                let mut done = answer.complete(&inv, rec.now());
                if let Some(version) = take_item(&mut done, &answer.body, false) {
                    seen[k] = version;
                }
                rec.push(done);
            }
        }
    }
}

/// The body of a job submit of `add` over `operands`.
fn job_body(operands: &str) -> String {
    format!("{{\"operation\":\"add\",\"operands\":{operands}}}")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    job_id: String,
}

async fn submit(api: &Api, rec: &Recorder, process: u32, key: &str, operands: &str) -> Event {
    let inv = rec.invoke(process, F::Submit, key, Some(operands.to_owned()), None);
    let req = api
        .request(Method::POST, "/api/compute/job")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(job_body(operands));
    let answer = Answer::of(req).await;
    let mut done = answer.complete(&inv, rec.now());
    if done.kind == Kind::Ok {
        match serde_json::from_slice::<Accepted>(&answer.body) {
            Ok(a) => done.job = Some(a.job_id),
            Err(e) => {
                done.kind = Kind::Info;
                done.error = Some(format!("unreadable answer: {e}"));
            }
        }
    }
    rec.push(done.clone());
    done
}

/// One jobs client: submits until `end`, a quarter of them sent twice with the same key.
pub async fn jobs_client(api: Api, rec: &Recorder, process: u32, run: &str, seed: u64, end: Instant) {
    let mut rng = Rng::new(seed ^ (u64::from(process) << 32) ^ 0x10b5);
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let key = format!("verify-{run}-j{process}-{n}");
        let operands = format!("[{}, {}]", rng.below(1_000_000), rng.below(1_000_000));
        submit(&api, rec, process, &key, &operands).await;
        if rng.below(4) == 0 {
            submit(&api, rec, process, &key, &operands).await;
        }
    }
}

/// How many jobs the compute service holds (`GET /api/compute/stats`), if it answers.
pub async fn job_count(api: &Api) -> Option<i64> {
    let answer = Answer::of(api.request(Method::GET, "/api/compute/stats")).await;
    let stats: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    stats["counts"]["total"].as_i64().filter(|_| answer.status == Some(200))
}

/// After the run, with the faults healed: each submit whose outcome is unknown is sent
/// again with its key (it must then be queued at most once), and every job is read back
/// until it has finished or `deadline` passes.
pub async fn settle_jobs(api: &Api, rec: &Recorder, deadline: Instant) {
    let ops: Vec<(String, String, Option<String>)> = {
        let history = rec.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_key: std::collections::BTreeMap<String, (String, Option<String>)> = Default::default();
        for e in history.iter().filter(|e| e.f == F::Submit) {
            let entry = by_key.entry(e.key.clone()).or_insert((String::new(), None));
            if let Some(v) = &e.value {
                entry.0.clone_from(v);
            }
            if e.kind == Kind::Ok {
                entry.1 = e.job.clone();
            }
        }
        by_key.into_iter().map(|(k, (operands, job))| (k, operands, job)).collect()
    };
    let process = u32::MAX;
    let mut jobs = Vec::new();
    for (key, operands, job) in ops {
        let job = match job {
            Some(id) => Some(id),
            None => submit(api, rec, process, &key, &operands).await.job,
        };
        jobs.extend(job.map(|id| (key, id)));
    }
    for (key, id) in jobs {
        loop {
            let inv = rec.invoke(process, F::Poll, &key, None, None);
            let answer = Answer::of(api.request(Method::GET, &format!("/api/compute/job/{id}"))).await;
            let mut done = answer.complete(&inv, rec.now());
            done.job = Some(id.clone());
            #[derive(Deserialize)]
            struct View<'a> {
                status: String,
                #[serde(borrow, default)]
                result: Option<&'a RawValue>,
            }
            let view = serde_json::from_slice::<View<'_>>(&answer.body).ok().filter(|_| done.kind == Kind::Ok);
            let finished =
                view.as_ref().is_some_and(|v| matches!(v.status.as_str(), "completed" | "failed" | "cancelled"));
            if let Some(v) = &view {
                done.error = Some(v.status.clone());
                done.value = v.result.map(|r| r.get().to_owned());
            }
            rec.push(done);
            if finished || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
