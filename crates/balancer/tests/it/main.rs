//! The balancer over real sockets, in-process on 127.0.0.1:0, with an in-process registry
//! and small backends that can be made to fail, hang, drop connections or die.

mod clients;
mod discovery;
mod failover;
mod failures;
mod fast;
mod guard;
mod metrics;
mod routing;
mod upgrades;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use kit::testing::eventually;

pub const TOKEN: &str = "test-cluster-token";
pub const WAIT: Duration = Duration::from_secs(5);

/// How a test backend answers (its `/health` answers 200 except when it hangs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with `{"instance", "connection", "forwardedFor", "realIp", "method", "path",
    /// "bodyBytes", "requestId"}` (`connection`: the number of the connection it came on).
    Ok = 0,
    /// Answers the status set by [`TestBackend::fail_with`].
    Fail = 1,
    /// Never answers anything, health included.
    Hang = 2,
    /// Reads the request, then closes the connection without answering.
    Drop = 3,
    /// Answers like `Ok` once [`TestBackend::release`] is called (health answers at once).
    Hold = 4,
}

struct Shared {
    id: String,
    mode: AtomicU8,
    status: AtomicU16,
    /// Requests other than `/health`.
    received: AtomicUsize,
    /// Connections accepted: each one's number is in its answers.
    connections: AtomicUsize,
    /// `/health` requests answered.
    checks: AtomicUsize,
    release: tokio::sync::Notify,
}

/// A small HTTP backend. Killing it closes its listener and every connection at once.
pub struct TestBackend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestBackend {
    pub async fn start(id: &str) -> Self {
        Self::start_on(id, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn start_on(id: &str, listener: TcpListener) -> Self {
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            mode: AtomicU8::new(Mode::Ok as u8),
            status: AtomicU16::new(500),
            received: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            release: tokio::sync::Notify::new(),
        });
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self { addr, shared, task: Some(task) }
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn url(&self) -> String {
        format!("http://localhost:{}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, SeqCst);
    }

    pub fn fail_with(&self, status: u16) {
        self.shared.status.store(status, SeqCst);
        self.set_mode(Mode::Fail);
    }

    /// Lets the requests held by [`Mode::Hold`] answer.
    pub fn release(&self) {
        self.set_mode(Mode::Ok);
        self.shared.release.notify_waiters();
    }

    pub fn received(&self) -> usize {
        self.shared.received.load(SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(SeqCst)
    }

    /// `/health` requests answered so far.
    pub fn checks(&self) -> usize {
        self.shared.checks.load(SeqCst)
    }

    /// Dies abruptly: the listener and all connections close (connections are refused after).
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Comes back on the same port after [`TestBackend::kill`].
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(accept(listener, self.shared.clone())));
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // The connections live in this task's JoinSet: aborting the task ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let connection = shared.connections.fetch_add(1, SeqCst) + 1;
                connections.spawn(async move {
                    let service = service_fn(move |req| answer(shared.clone(), connection, req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}
impl std::error::Error for Dropped {}

async fn answer(
    shared: Arc<Shared>,
    connection: usize,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let mode = shared.mode.load(SeqCst);
    if mode == Mode::Hang as u8 {
        std::future::pending::<()>().await;
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if path == "/health" {
        shared.checks.fetch_add(1, SeqCst);
        return Ok(Response::new(Full::new(Bytes::from_static(br#"{"status":"healthy"}"#))));
    }
    shared.received.fetch_add(1, SeqCst);
    if mode == Mode::Hold as u8 {
        let released = shared.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if shared.mode.load(SeqCst) == Mode::Hold as u8 {
            released.await;
        }
    }
    let body_bytes = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => return Err(Dropped),
    };
    if mode == Mode::Drop as u8 {
        return Err(Dropped);
    }
    if let Some(n) = parts.uri.query().and_then(|q| q.strip_prefix("bytes=")).and_then(|n| n.parse::<usize>().ok()) {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    // Each header as the backend got it: its fields joined, null when absent.
    let header = |name: &str| {
        let values: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let body = serde_json::json!({
        "instance": shared.id,
        "connection": connection,
        "forwardedFor": header("x-forwarded-for"),
        "realIp": header("x-real-ip"),
        "method": parts.method.as_str(),
        "path": path,
        "bodyBytes": body_bytes,
        "requestId": parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
    });
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    if mode == Mode::Fail as u8 {
        *res.status_mut() = hyper::StatusCode::from_u16(shared.status.load(SeqCst)).unwrap();
    }
    res.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(res)
}

/// A registry serving in this process.
pub struct TestRegistry {
    pub url: String,
    shutdown: kit::Shutdown,
    task: tokio::task::JoinHandle<Result<(), registry::Error>>,
}

impl TestRegistry {
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn start_on(listener: TcpListener) -> Self {
        let vars = [("ORCH_CLUSTER_TOKEN", TOKEN), ("SHUTDOWN_GRACE_MS", "500"), ("REGISTER", "false")];
        let config = registry::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(registry::serve(config, listener, shutdown.clone()));
        Self { url, shutdown, task }
    }

    pub fn client(&self) -> kit::registry::RegistryClient {
        kit::registry::RegistryClient::new(&self.url, Some(kit::secret::Secret::new(TOKEN)))
    }

    pub async fn register(&self, service: &str, backend: &TestBackend) {
        let registration = kit::registry::Registration {
            service_id: backend.id().to_owned(),
            service_type: service.to_owned(),
            url: backend.url(),
            name: None,
            metadata: Default::default(),
        };
        self.client().register(&registration).await.unwrap();
    }

    pub async fn deregister(&self, backend: &TestBackend) {
        assert!(self.client().deregister(backend.id()).await.unwrap());
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

/// A balancer serving in this process.
pub struct TestBalancer {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: kit::Shutdown,
    task: tokio::task::JoinHandle<Result<(), balancer::Error>>,
}

impl TestBalancer {
    /// A balancer using the registry at `registry` (a URL), with `extra` settings; it is
    /// ready (first discovery done) when this returns.
    pub async fn start(registry: &str, extra: &[(&str, &str)]) -> Self {
        let balancer = Self::spawn(registry, extra).await;
        let http = http();
        eventually(WAIT, "balancer ready", || async {
            let res = http.get(balancer.at("/ready")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
        balancer
    }

    /// Like [`TestBalancer::start`], without waiting for it to be ready.
    pub async fn spawn(registry: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars: HashMap<&str, &str> = HashMap::from([
            ("ORCH_CLUSTER_TOKEN", TOKEN),
            ("SHUTDOWN_GRACE_MS", "500"),
            ("REGISTER", "false"),
            ("SERVICE_REGISTRY_URL", registry),
            ("HEALTH_CHECK_INTERVAL_MS", "200"),
        ]);
        vars.extend(extra.iter().copied());
        let config = balancer::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(balancer::serve(config, listener, shutdown.clone()));
        Self { url: format!("http://{addr}"), addr, shutdown, task }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn status(&self) -> Value {
        http().get(self.at("/status")).send().await.unwrap().json().await.unwrap()
    }

    pub async fn metrics(&self) -> Value {
        http().get(self.at("/api/metrics")).send().await.unwrap().json().await.unwrap()
    }

    /// The ids `/status` lists for `service`.
    pub async fn instances(&self, service: &str) -> Vec<String> {
        let status = self.status().await;
        status["services"][service]["instances"]
            .as_array()
            .map(|a| a.iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Waits until `/status` lists exactly `ids` for `service`.
    pub async fn wait_for_instances(&self, service: &str, ids: &[&str]) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        eventually(WAIT, &format!("{service} instances {want:?}"), || async {
            let mut got = self.instances(service).await;
            got.sort();
            (got == want).then_some(())
        })
        .await;
    }

    pub async fn reset_round_robin(&self) {
        let res = http().post(self.at("/api/round-robin/reset")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

/// A URL where nothing listens.
pub async fn closed_url() -> String {
    format!("http://127.0.0.1:{}", closed_port().await)
}

pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Status, the upstream instance header, and the JSON body of a response.
pub async fn read(res: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = res.status().as_u16();
    let instance = res.headers().get("x-upstream-instance").map(|v| v.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, instance, body)
}

/// Three backends `<service>-1..3`, registered under `service`, routed by `balancer`.
pub async fn three_registered(registry: &TestRegistry, service: &str) -> Vec<TestBackend> {
    let mut backends = Vec::new();
    for n in 1..=3 {
        let backend = TestBackend::start(&format!("{service}-{n}")).await;
        registry.register(service, &backend).await;
        backends.push(backend);
    }
    backends
}
