//! Client traffic through the balancer, sent the way a careful client sends it, with every
//! outcome counted.
//!
//! [`Api`] is one signed-in client of the cluster's public API. [`Load`] runs a few such
//! clients at a steady pace (a `tokio::time::interval` each) until stopped: each works
//! through its own keys (create, read, update, list, delete) and, if asked, submits jobs
//! and verifies its token. Every write carries an `Idempotency-Key`, so the balancer may
//! send it again after an instance dies. A request *fails* when it gets no answer
//! (connection error, timeout) or another status than the one expected, or when an
//! acknowledged answer is wrong (a version that does not follow the last one).
//!
//! The [`Report`] keeps every acknowledged write (the last acknowledged state of each key)
//! and every accepted job, so a test can read them back afterwards:
//! [`Report::read_back`] and [`Report::wait_jobs`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::eventually;

/// How long a client waits for one answer: beyond the balancer's own 30 s request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// A client of the cluster through the balancer, with a bearer token once signed in.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// The balancer, `http://127.0.0.1:<port>`.
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("a reqwest client");
        Self { http, base: base.trim_end_matches('/').to_owned(), token: None }
    }

    /// This client with `token` as its bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// A request to `path` (from `/api/...`) with the token, if any.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// `POST /api/auth/register`; the response as it came.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        let body = json!({"username": username, "email": format!("{username}@example.com"), "password": password});
        self.request(Method::POST, "/api/auth/register").json(&body).send().await.expect("register: no answer")
    }

    /// `POST /api/auth/login`; the token, or a panic naming the status.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let res = self
            .request(Method::POST, "/api/auth/login")
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login: no answer");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "login of {username}: {body}");
        body["token"].as_str().expect("a token").to_owned()
    }

    /// Registers `username` (once) and signs in: this client with its token.
    pub async fn signed_up(mut self, username: &str, password: &str) -> Self {
        let res = self.register(username, password).await;
        let status = res.status();
        assert_eq!(status, 201, "registering {username}: {}", res.text().await.unwrap_or_default());
        self.token = Some(self.login(username, password).await);
        self
    }

    /// `GET path`: the status and the JSON body (`Null` when it is not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self.request(Method::GET, path).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// What the clients of a [`Load`] do besides data CRUD.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Clients running at once.
    pub clients: usize,
    /// Time between two requests of one client.
    pub period: Duration,
    /// Submit a compute job once per round of operations.
    pub jobs: bool,
    /// Verify the token (`GET /api/auth/verify`) once per round.
    pub verify: bool,
    /// Once per round, a simulated-work request (the original load test's `auth-worker`,
    /// `data-work`, `compute-worker`) that keeps an instance busy this long, so an instance
    /// that is killed or drained is likely to have a request in flight.
    pub work: Option<Duration>,
    /// The services the simulated work goes to, in turn.
    pub work_on: &'static [&'static str],
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            clients: 6,
            period: Duration::from_millis(25),
            jobs: false,
            verify: true,
            work: None,
            work_on: &["auth", "data", "compute"],
        }
    }
}

/// A client request that did not get what it expected.
#[derive(Clone, Debug)]
pub struct Failure {
    /// When the request was sent.
    pub sent: Instant,
    pub what: String,
}

/// The last acknowledged state of a key: its version and value, or deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Acked {
    Item { version: u64, value: Value },
    Deleted,
}

/// Counters the clients share while they run.
#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    by_op: BTreeMap<&'static str, u64>,
    /// Keys whose last write had no clear outcome: nothing is known of them.
    unsure: Vec<String>,
    acked: BTreeMap<String, Acked>,
    /// `(jobId, expected result)`.
    jobs: Vec<(String, Value)>,
}

/// Clients sending traffic until [`stop`](Load::stop).
pub struct Load {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<ClientLog>>,
    pub started: Instant,
}

impl Load {
    /// Starts `mix.clients` clients through `api` (signed in). `run` makes keys and
    /// idempotency keys unique to this load.
    pub fn start(api: &Api, run: &str, mix: Mix) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..mix.clients)
            .map(|n| {
                let client = Client {
                    api: api.clone(),
                    prefix: format!("{run}-c{n}-"),
                    mix,
                    shared: shared.clone(),
                    log: ClientLog::default(),
                    seq: 0,
                };
                tokio::spawn(client.run(stopped.clone()))
            })
            .collect();
        Self { shared, stop, tasks, started: Instant::now() }
    }

    /// Requests answered (or failed) so far, and failures so far.
    pub fn counts(&self) -> (u64, usize) {
        (self.shared.requests.load(Relaxed), self.shared.failures.lock().unwrap().len())
    }

    /// Waits until `more` requests beyond the current count have been answered.
    pub async fn wait_for(&self, more: u64) {
        let target = self.shared.requests.load(Relaxed) + more;
        eventually(Duration::from_secs(60), &format!("{more} more client requests"), || async {
            (self.shared.requests.load(Relaxed) >= target).then_some(())
        })
        .await;
    }

    /// Stops the clients (each finishes its request in flight) and sums up.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        let mut report = Report { elapsed: self.started.elapsed(), ..Report::default() };
        for task in self.tasks {
            let log = task.await.expect("a load client panicked");
            for (op, n) in log.by_op {
                *report.by_op.entry(op).or_default() += n;
            }
            report.acked.extend(log.acked);
            report.unsure.extend(log.unsure);
            report.jobs.extend(log.jobs);
        }
        report.requests = self.shared.requests.load(Relaxed);
        report.failures = std::mem::take(&mut *self.shared.failures.lock().unwrap());
        report
    }
}

/// What a [`Load`] did.
#[derive(Default)]
pub struct Report {
    pub elapsed: Duration,
    pub requests: u64,
    pub failures: Vec<Failure>,
    /// Requests per operation.
    pub by_op: BTreeMap<&'static str, u64>,
    /// Every key written and acknowledged, in its last acknowledged state.
    pub acked: BTreeMap<String, Acked>,
    /// Keys whose last write failed, so their state is not known.
    pub unsure: Vec<String>,
    /// Every accepted job and the result it must have.
    pub jobs: Vec<(String, Value)>,
}

/// What [`Report::wait_jobs`] found.
#[derive(Debug, Default)]
pub struct JobSummary {
    pub completed: usize,
    /// Jobs that needed more than one attempt (their worker died).
    pub retried: usize,
    pub max_attempts: u64,
}

impl Report {
    /// Failures of requests sent at `t` or later.
    pub fn failures_since(&self, t: Instant) -> Vec<&Failure> {
        self.failures.iter().filter(|f| f.sent >= t).collect()
    }

    /// Reads back every acknowledged key: an item must have exactly the acknowledged
    /// version and value, a deleted key must be 404. Returns how many were checked.
    pub async fn read_back(&self, api: &Api) -> usize {
        let mut wrong = Vec::new();
        for (key, acked) in &self.acked {
            let (status, body) = api.get(&format!("/api/data/{key}")).await;
            let ok = match acked {
                Acked::Item { version, value } => {
                    status == 200 && body["version"].as_u64() == Some(*version) && &body["value"] == value
                }
                Acked::Deleted => status == 404,
            };
            if !ok {
                wrong.push(format!("{key}: acknowledged {acked:?}, read {status} {body}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} acknowledged writes read back wrong:\n{}",
            wrong.len(),
            self.acked.len(),
            wrong.join("\n")
        );
        self.acked.len()
    }

    /// Polls every accepted job until it is completed (within `deadline` in all) and checks
    /// its result; a job that failed, or completed with another result, is a panic.
    pub async fn wait_jobs(&self, api: &Api, deadline: Duration) -> JobSummary {
        let start = Instant::now();
        let mut summary = JobSummary::default();
        for (id, expected) in &self.jobs {
            let left = deadline.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
            let job = eventually(left, &format!("job {id} finished"), || async {
                let (status, job) = api.get(&format!("/api/compute/job/{id}")).await;
                (status == 200 && matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")))
                    .then_some(job)
            })
            .await;
            assert_eq!(job["status"], "completed", "job {id}: {job}");
            assert_eq!(&job["result"], expected, "job {id}: {job}");
            let attempts = job["attempts"].as_u64().unwrap_or(0);
            assert!(attempts >= 1, "job {id}: {job}");
            summary.completed += 1;
            summary.retried += usize::from(attempts > 1);
            summary.max_attempts = summary.max_attempts.max(attempts);
        }
        summary
    }

    /// Panics, listing the first failures, unless every client request succeeded.
    pub fn assert_no_failures(&self) {
        assert!(
            self.failures.is_empty(),
            "{} failed client requests:\n{}",
            self.failures.len(),
            self.failure_lines(20)
        );
    }

    /// The first few failures, one a line.
    pub fn failure_lines(&self, at_most: usize) -> String {
        self.failures.iter().take(at_most).map(|f| format!("  {}\n", f.what)).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} requests in {secs:.1} s ({:.0}/s), {} failed; {} keys acknowledged, {} unsure; {} jobs accepted; by operation {:?}",
            self.requests,
            self.requests as f64 / secs.max(0.001),
            self.failures.len(),
            self.acked.len(),
            self.unsure.len(),
            self.jobs.len(),
            self.by_op,
        )
    }
}

/// One step of a client's round.
#[derive(Clone, Copy)]
enum Op {
    Create,
    Read,
    Update,
    List,
    Job,
    Verify,
    Work,
    Delete,
}

/// One load client: its own keys, one request at a time.
struct Client {
    api: Api,
    prefix: String,
    mix: Mix,
    shared: Arc<Shared>,
    log: ClientLog,
    seq: u64,
}

impl Client {
    fn round(&self) -> Vec<Op> {
        let mut ops = vec![Op::Create, Op::Read, Op::Update, Op::List];
        if self.mix.jobs {
            ops.push(Op::Job);
        }
        if self.mix.verify {
            ops.push(Op::Verify);
        }
        if self.mix.work.is_some() {
            ops.push(Op::Work);
        }
        ops.extend([Op::Read, Op::Delete]);
        ops
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) -> ClientLog {
        let mut tick = tokio::time::interval(self.mix.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let round = self.round();
        // The key of this round, and whether it is known to exist (and at which version).
        let mut key = String::new();
        let mut version: Option<u64> = None;
        'rounds: for n in 0.. {
            for op in &round {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break 'rounds,
                    _ = tick.tick() => {}
                }
                match op {
                    Op::Create => {
                        key = format!("{}{n}", self.prefix);
                        version = self.create(&key, n).await;
                    }
                    Op::Read => {
                        if let Some(v) = version {
                            self.read(&key, v).await;
                        }
                    }
                    Op::Update => {
                        if let Some(v) = version {
                            version = self.update(&key, v, n).await;
                        }
                    }
                    Op::List => self.list().await,
                    Op::Job => self.job().await,
                    Op::Verify => self.verify().await,
                    Op::Work => self.work(n).await,
                    // Two keys in three are deleted again; the third stays.
                    Op::Delete => {
                        if let Some(v) = version.filter(|_| n % 3 != 0) {
                            self.delete(&key, v).await;
                            version = None;
                        }
                    }
                }
            }
        }
        self.log
    }

    fn idempotency_key(&mut self) -> String {
        self.seq += 1;
        format!("{}{}", self.prefix, self.seq)
    }

    /// Sends `req` and checks its status; counts it, and records a failure.
    async fn send(&mut self, op: &'static str, req: RequestBuilder, expect: u16) -> Option<Value> {
        let sent = Instant::now();
        let outcome = req.send().await;
        self.shared.requests.fetch_add(1, Relaxed);
        *self.log.by_op.entry(op).or_default() += 1;
        let failure = match outcome {
            Err(e) => format!("{op}: no answer: {e}"),
            Ok(res) => {
                let status = res.status();
                let upstream =
                    res.headers().get("x-upstream-instance").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                let body = res.bytes().await;
                match body {
                    Ok(body) if status.as_u16() == expect => {
                        return Some(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    }
                    Ok(body) => format!("{op}: {status} from {upstream}: {}", String::from_utf8_lossy(&body)),
                    Err(e) => format!("{op}: {status} from {upstream}, body lost: {e}"),
                }
            }
        };
        self.fail(sent, failure);
        None
    }

    fn fail(&self, sent: Instant, what: String) {
        self.shared.failures.lock().unwrap().push(Failure { sent, what });
    }

    fn value(&self, n: u64, rev: u64) -> Value {
        json!({"client": self.prefix, "n": n, "rev": rev})
    }

    /// The new key's version (1), or `None` when the write failed.
    async fn create(&mut self, key: &str, n: u64) -> Option<u64> {
        let value = self.value(n, 1);
        let idem = self.idempotency_key();
        let req = self
            .api
            .request(Method::POST, "/api/data")
            .header("idempotency-key", idem)
            .json(&json!({"key": key, "value": value, "metadata": {"load": true}}));
        self.written(key, "create", req, 201, 1, value).await
    }

    async fn update(&mut self, key: &str, version: u64, n: u64) -> Option<u64> {
        let value = self.value(n, version + 1);
        let idem = self.idempotency_key();
        let req = self
            .api
            .request(Method::PUT, &format!("/api/data/{key}"))
            .header("idempotency-key", idem)
            .header("if-match", version.to_string())
            .json(&json!({"value": value}));
        self.written(key, "update", req, 200, version + 1, value).await
    }

    /// Records the outcome of a write that should leave `key` at `version` with `value`.
    async fn written(
        &mut self,
        key: &str,
        op: &'static str,
        req: RequestBuilder,
        expect: u16,
        version: u64,
        value: Value,
    ) -> Option<u64> {
        let sent = Instant::now();
        let Some(item) = self.send(op, req, expect).await else {
            self.unsure(key);
            return None;
        };
        if item["version"].as_u64() != Some(version) || item["value"] != value {
            self.fail(sent, format!("{op} {key}: acknowledged {item}, expected version {version} and {value}"));
            self.unsure(key);
            return None;
        }
        self.log.acked.insert(key.to_owned(), Acked::Item { version, value });
        Some(version)
    }

    fn unsure(&mut self, key: &str) {
        self.log.acked.remove(key);
        self.log.unsure.push(key.to_owned());
    }

    async fn read(&mut self, key: &str, version: u64) {
        let sent = Instant::now();
        let req = self.api.request(Method::GET, &format!("/api/data/{key}"));
        if let Some(item) = self.send("read", req, 200).await {
            if item["version"].as_u64() != Some(version) {
                self.fail(sent, format!("read {key}: version {} instead of {version}", item["version"]));
            }
        }
    }

    async fn list(&mut self) {
        let req = self.api.request(Method::GET, &format!("/api/data?prefix={}&limit=5", self.prefix));
        self.send("list", req, 200).await;
    }

    async fn delete(&mut self, key: &str, version: u64) {
        let idem = self.idempotency_key();
        let req = self
            .api
            .request(Method::DELETE, &format!("/api/data/{key}"))
            .header("idempotency-key", idem)
            .header("if-match", version.to_string());
        if self.send("delete", req, 200).await.is_some() {
            self.log.acked.insert(key.to_owned(), Acked::Deleted);
        } else {
            self.unsure(key);
        }
    }

    /// A short `sleep` job: its result is its duration, which differs from job to job.
    async fn job(&mut self) {
        let ms = 20 + (self.seq * 7) % 100;
        let idem = self.idempotency_key();
        let req = self
            .api
            .request(Method::POST, "/api/compute/job")
            .header("idempotency-key", idem)
            .json(&json!({"operation": "sleep", "operands": [ms]}));
        if let Some(accepted) = self.send("job", req, 202).await {
            let id = accepted["jobId"].as_str().unwrap_or_default().to_owned();
            self.log.jobs.push((id, json!(ms)));
        }
    }

    async fn work(&mut self, n: u64) {
        let ms = self.mix.work.unwrap_or_default().as_millis();
        let path = match self.mix.work_on[n as usize % self.mix.work_on.len()] {
            "auth" => "/api/auth/auth-worker",
            "data" => "/api/data/data-work",
            "compute" => "/api/compute/compute-worker",
            other => panic!("no simulated work on {other}"),
        };
        let req = self.api.request(Method::GET, &format!("{path}?ms={ms}"));
        self.send("work", req, 200).await;
    }

    async fn verify(&mut self) {
        let sent = Instant::now();
        let req = self.api.request(Method::GET, "/api/auth/verify");
        if let Some(body) = self.send("verify", req, 200).await {
            if body["valid"] != true {
                self.fail(sent, format!("verify: {body}"));
            }
        }
    }
}
