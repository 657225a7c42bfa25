//! The auth service over real HTTP, in-process on 127.0.0.1:0.

mod contract;
mod instances;
mod metrics;
mod throttle;
mod tokens;

use std::path::Path;

use serde_json::{Value, json};

/// An auth instance serving in this process.
pub struct TestAuth {
    pub url: String,
    pub shutdown: kit::Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), auth::Error>>,
}

impl TestAuth {
    /// An instance whose database and JWT secret live in `dir` (shared by every instance
    /// started on the same `dir`), with cheap argon2 costs and `extra` settings.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Self {
        Self::start_with_clock(dir, extra, auth::Clock::system()).await
    }

    /// [`TestAuth::start`] with the login throttle on `clock`.
    pub async fn start_with_clock(dir: &Path, extra: &[(&str, &str)], clock: auth::Clock) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_dir = dir.display().to_string();
        let mut vars = vec![
            ("DATA_DIR", data_dir.as_str()),
            ("REGISTER", "false"),
            ("SERVICE_NAME", "auth-test"),
            ("SHUTDOWN_GRACE_MS", "1000"),
            ("ARGON2_MEMORY_KIB", "256"),
            ("ARGON2_ITERATIONS", "1"),
        ];
        // The storage suites run on PostgreSQL too (`ORCH_TEST_DATABASE_URL`).
        let pg = kit::testing::pg_database_of_dir(dir).await;
        if let Some(url) = &pg {
            vars.push(("DATABASE_URL", url));
        }
        vars.extend_from_slice(extra);
        let config = auth::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(auth::serve_with_clock(config, clock, listener, shutdown.clone()));
        let auth = Self { url, shutdown, task };
        let c = http();
        kit::testing::eventually(std::time::Duration::from_secs(10), "auth ready", || {
            let req = c.get(format!("{}/ready", auth.url));
            async move { req.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        auth
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        http().post(format!("{}{path}", self.url)).json(body)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        http().get(format!("{}{path}", self.url))
    }

    /// Registers `name` (`name@example.com`, password `pass123`); returns the user.
    pub async fn register(&self, name: &str) -> Value {
        let (status, body) = send(self.post("/api/auth/register", &account(name))).await;
        assert_eq!(status, 201, "{body}");
        body["user"].clone()
    }

    /// Logs `name` in with `pass123`; returns the token.
    pub async fn login(&self, name: &str) -> String {
        let (status, body) =
            send(self.post("/api/auth/login", &json!({"username": name, "password": "pass123"}))).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

pub fn account(name: &str) -> Value {
    json!({ "username": name, "email": format!("{name}@example.com"), "password": "pass123" })
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a request and returns the status and the JSON body (`Null` if not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}
