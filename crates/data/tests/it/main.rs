//! The data service over real HTTP, in-process on 127.0.0.1:0. Tokens are signed here with
//! `kit::jwt::Keys`, as the auth service would sign them.

mod bad_input;
mod contract;
mod exact;
mod idempotency;
mod instances;
mod metrics;
mod pages;
mod race;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub const SECRET: &str = "data-test-secret-0123456789abcdef0123";

/// A data instance serving in this process.
pub struct TestData {
    pub url: String,
    pub token: String,
    pub client: reqwest::Client,
    pub shutdown: kit::Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), data::Error>>,
}

impl TestData {
    /// An instance with its database in `dir` (shared by every instance started on the
    /// same `dir`), `JWT_SECRET` = [`SECRET`] and `extra` settings.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Self {
        let mut vars = vec![("JWT_SECRET", SECRET)];
        vars.extend_from_slice(extra);
        Self::start_with(dir, &vars, &kit::jwt::Keys::from_secret(SECRET.as_bytes())).await
    }

    /// An instance with exactly these settings (plus the data dir), whose requests carry a
    /// token signed with `keys`.
    pub async fn start_with(dir: &Path, settings: &[(&str, &str)], keys: &kit::jwt::Keys) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_dir = dir.display().to_string();
        let mut vars = vec![
            ("DATA_DIR", data_dir.as_str()),
            ("REGISTER", "false"),
            ("SERVICE_NAME", "data-test"),
            ("SHUTDOWN_GRACE_MS", "1000"),
        ];
        // The storage suites run on PostgreSQL too (`ORCH_TEST_DATABASE_URL`).
        let pg = kit::testing::pg_database_of_dir(dir).await;
        if let Some(url) = &pg {
            vars.push(("DATABASE_URL", url));
        }
        vars.extend_from_slice(settings);
        let config = data::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(data::serve(config, listener, shutdown.clone()));
        let client = reqwest::Client::new();
        let instance = Self { url, token: token(keys, "1"), client, shutdown, task };
        kit::testing::eventually(Duration::from_secs(10), "data ready", || {
            let req = instance.client.get(format!("{}/ready", instance.url));
            async move { req.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        instance
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    /// A request to `path` carrying this instance's token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::POST, path).json(body)
    }

    pub fn put(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::PUT, path).json(body)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::DELETE, path)
    }

    /// Creates `key` with `value`; returns the item.
    pub async fn create(&self, key: &str, value: Value) -> Value {
        let (status, body) = send(self.post("/api/data", &json!({"key": key, "value": value}))).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Every item, in key order (all pages).
    pub async fn all(&self) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = send(self.get(&format!("/api/data?limit=1000&cursor={cursor}"))).await;
            assert_eq!(status, 200, "{page}");
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["nextCursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return items,
            }
        }
    }
}

/// A token for user `sub`, valid for an hour.
pub fn token(keys: &kit::jwt::Keys, sub: &str) -> String {
    let now = kit::time::unix_millis() / 1000;
    keys.sign(&kit::jwt::Claims {
        sub: sub.into(),
        username: "ada".into(),
        email: "ada@example.com".into(),
        iat: now,
        exp: now + 3600,
    })
}

/// `key` as one path segment: everything but unreserved characters percent-encoded.
pub fn enc(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/data/<key, encoded>`.
pub fn item_path(key: &str) -> String {
    format!("/api/data/{}", enc(key))
}

/// Sends a request and returns the status and the JSON body (`Null` if not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends a request and returns the status, the headers and the raw body.
pub async fn send_raw(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

/// An item with its value and metadata as the JSON texts the server wrote.
#[derive(Debug, Deserialize)]
pub struct RawItem {
    pub key: String,
    pub value: Box<RawValue>,
    pub metadata: Box<RawValue>,
    pub version: i64,
}

/// A list page, items as [`RawItem`]s.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawPage {
    pub items: Vec<RawItem>,
    pub next_cursor: Option<String>,
}

/// Every item with keys starting with `prefix`, in key order, paging `limit` at a time.
pub async fn raw_pages(data: &TestData, prefix: &str, limit: u32) -> Vec<RawItem> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, _, raw) =
            send_raw(data.get(&format!("/api/data?prefix={prefix}&limit={limit}&cursor={cursor}"))).await;
        assert_eq!(status, 200, "{raw:.300}");
        let page: RawPage = serde_json::from_str(&raw).unwrap();
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return items,
        }
    }
}
