//! The compute service: the routes in-process (`oneshot`), and instances serving over real
//! HTTP on 127.0.0.1:0 that share one database file in a temp dir.

mod auth;
mod batch;
mod direct;
mod jobs;
mod lease;
mod metrics;
mod numbers;
mod schema;
mod settle;

use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub use kit::testing::{eventually, still_pending};

pub const SECRET: &str = "compute-tests-secret-0123456789abcdef";

/// A valid token for the test secret.
pub fn token() -> String {
    token_for("1")
}

/// A valid token of the user `sub`.
pub fn token_for(sub: &str) -> String {
    let now = kit::time::unix_millis() / 1000;
    kit::jwt::Keys::from_secret(SECRET.as_bytes()).sign(&kit::jwt::Claims {
        sub: sub.into(),
        username: "ada".into(),
        email: "ada@example.com".into(),
        iat: now,
        exp: now + 3600,
    })
}

/// The URL of the database `db` names: the SQLite file, or the PostgreSQL database made for
/// its dir by [`database`].
pub fn db_url(db: &Path) -> String {
    std::fs::read_to_string(db.parent().unwrap().join(".test-database-url"))
        .unwrap_or_else(|_| format!("sqlite://{}", db.display()))
}

/// Whether the tests run on PostgreSQL.
pub fn on_pg(db: &Path) -> bool {
    db_url(db).starts_with("postgres")
}

/// The settings every test instance gets, then `extra`.
pub fn config(db: &Path, name: &str, extra: &[(&str, &str)]) -> compute::Config {
    let url = db_url(db);
    let dir = db.parent().unwrap().display().to_string();
    let mut vars = vec![
        ("SERVICE_NAME", name),
        ("DATABASE_URL", url.as_str()),
        ("DATA_DIR", dir.as_str()),
        ("JWT_SECRET", SECRET),
        ("REGISTER", "false"),
        ("SHUTDOWN_GRACE_MS", "1000"),
    ];
    vars.extend_from_slice(extra);
    compute::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap()
}

/// A temp dir and the database file in it (or a PostgreSQL database of its own).
pub async fn database() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // The storage suites run on PostgreSQL too (`ORCH_TEST_DATABASE_URL`): [`db_url`] finds
    // the dir's database.
    kit::testing::pg_database_of_dir(dir.path()).await;
    let db = dir.path().join("compute.sqlite");
    (dir, db)
}

/// The router alone, for `oneshot` requests (no workers run).
pub async fn app(extra: &[(&str, &str)]) -> (axum::Router, tempfile::TempDir) {
    let (dir, db) = database().await;
    let state = compute::AppState::open(config(&db, "compute-1", extra)).await.unwrap();
    (compute::router(state), dir)
}

/// Sends `method path` with a JSON `body` (and the test token unless `token` is `None`).
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A compute instance serving in this process.
pub struct Instance {
    pub url: String,
    pub name: String,
    pub shutdown: kit::Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), compute::Error>>,
    pub http: reqwest::Client,
    pub token: String,
}

impl Instance {
    pub async fn start(db: &Path, name: &str, extra: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(compute::serve(config(db, name, extra), listener, shutdown.clone()));
        let instance = Self { url, name: name.into(), shutdown, task, http: reqwest::Client::new(), token: token() };
        eventually(std::time::Duration::from_secs(10), "the instance is ready", || async {
            instance.http.get(format!("{}/ready", instance.url)).send().await.ok().filter(|r| r.status() == 200)
        })
        .await;
        instance
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token).json(body)
    }

    /// POSTs `body` as it is written (the client's own JSON text); the status and the text
    /// of the answer.
    pub async fn post_text(&self, path: &str, body: &str) -> (u16, String) {
        let req = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token);
        let res = req.header("content-type", "application/json").body(body.to_owned()).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// GETs `path`; the status and the text of the answer.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let res = self.get(path).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    /// Submits a job; returns its id (asserting 202).
    pub async fn submit(&self, body: Value) -> String {
        let (status, answer) = send(self.post("/api/compute/job", &body)).await;
        assert_eq!(status, 202, "{answer}");
        answer["jobId"].as_str().unwrap().to_owned()
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = send(self.get(&format!("/api/compute/job/{id}"))).await;
        assert_eq!(status, 200, "{job}");
        job
    }

    /// Waits until the job's status is `status`, and returns it.
    pub async fn wait_for(&self, id: &str, status: &str, deadline: std::time::Duration) -> Value {
        eventually(deadline, &format!("job {id} {status} (on {})", self.name), || async {
            let job = self.job(id).await;
            (job["status"] == status).then_some(job)
        })
        .await
    }

    pub async fn stats(&self) -> Value {
        let (status, stats) = send(self.get("/api/compute/stats")).await;
        assert_eq!(status, 200, "{stats}");
        stats
    }
}

/// Sends a request; the status and the JSON body.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A `rows` x `cols` matrix of ones.
pub fn ones(rows: usize, cols: usize) -> Value {
    Value::Array(vec![Value::Array(vec![Value::from(1); cols]); rows])
}
