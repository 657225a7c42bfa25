//! The registry over real HTTP, in-process on 127.0.0.1:0.

mod contract;
mod guard;
mod lifecycle;
mod limits;
mod metrics;

use serde_json::Value;

pub const TOKEN: &str = "test-cluster-token";

/// A registry serving in this process.
pub struct TestRegistry {
    pub url: String,
    pub shutdown: kit::Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), registry::Error>>,
}

impl TestRegistry {
    /// A registry with the cluster token and `extra` settings.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, extra)
    }

    pub fn start_on(listener: tokio::net::TcpListener, extra: &[(&str, &str)]) -> Self {
        let mut vars = vec![("ORCH_CLUSTER_TOKEN", TOKEN), ("SHUTDOWN_GRACE_MS", "1000")];
        vars.extend_from_slice(extra);
        let config = registry::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(registry::serve(config, listener, shutdown.clone()));
        Self { url, shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    pub fn client(&self) -> kit::registry::RegistryClient {
        kit::registry::RegistryClient::new(&self.url, Some(kit::secret::Secret::new(TOKEN)))
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a request and returns the status and the JSON body.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

pub fn registration(id: &str, ty: &str) -> Value {
    serde_json::json!({
        "serviceId": id,
        "serviceType": ty,
        "url": format!("http://localhost:9/{id}"),
        "name": id,
        "metadata": { "version": "1" },
    })
}

pub use kit::testing::{eventually, still_pending};
