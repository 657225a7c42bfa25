//! Data throughput against one in-process instance over real HTTP (loopback), with auth
//! required (every request carries a bearer JWT that is verified): creates, updates with
//! `If-Match`, creates with an `Idempotency-Key`, reads and list pages. Client and server
//! share this process and the machine's cores.
//!
//! `cargo bench -p data --bench data` (or `make bench-all`).

use std::time::Duration;

use bench::load::{expect_status, measure};
use serde_json::json;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const ITEMS: usize = 5000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().display().to_string();
        let vars =
            kit::Vars::from_pairs([("DATA_DIR", data_dir.as_str()), ("REGISTER", "false"), ("JWT_SECRET", SECRET)]);
        let config = data::Config::from_vars(&vars).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let server = tokio::spawn(data::serve(config, listener, shutdown.clone()));

        let now = kit::time::unix_millis() / 1000;
        let token = kit::jwt::Keys::from_secret(SECRET.as_bytes()).sign(&kit::jwt::Claims {
            sub: "1".into(),
            username: "bench".into(),
            email: "bench@example.com".into(),
            iat: now,
            exp: now + 3600,
        });
        let client = reqwest::Client::new();
        kit::testing::eventually(Duration::from_secs(10), "data ready", || {
            let req = client.get(format!("{base}/ready"));
            async move { req.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        let value =
            json!({"name": "Ada Lovelace", "email": "ada@example.com", "tags": ["math", "engines"], "score": 1815});

        let mut rows = Vec::new();
        let (c, url, t, v) = (client.clone(), format!("{base}/api/data"), token.clone(), value.clone());
        rows.push(
            measure("create (POST)", ITEMS, 16, move |i| {
                let req = c.post(&url).bearer_auth(&t).json(&json!({"key": format!("bench:{i:06}"), "value": v}));
                async move { expect_status(req.send().await, 201).await }
            })
            .await,
        );
        let (c, base2, t, v) = (client.clone(), base.clone(), token.clone(), value.clone());
        rows.push(
            measure("update (PUT If-Match)", ITEMS, 16, move |i| {
                let req = c
                    .put(format!("{base2}/api/data/bench:{i:06}"))
                    .bearer_auth(&t)
                    .header("if-match", "1")
                    .json(&json!({"value": v}));
                async move { expect_status(req.send().await, 200).await }
            })
            .await,
        );
        let (c, url, t, v) = (client.clone(), format!("{base}/api/data"), token.clone(), value.clone());
        rows.push(
            measure("create + Idempotency-Key", ITEMS / 2, 16, move |i| {
                let req = c
                    .post(&url)
                    .bearer_auth(&t)
                    .header("idempotency-key", format!("bench-{i}"))
                    .json(&json!({"key": format!("idem:{i:06}"), "value": v}));
                async move { expect_status(req.send().await, 201).await }
            })
            .await,
        );
        let (c, base2, t) = (client.clone(), base.clone(), token.clone());
        rows.push(
            measure("read (GET)", 4 * ITEMS, 32, move |i| {
                let req = c.get(format!("{base2}/api/data/bench:{:06}", (i * 7919) % ITEMS)).bearer_auth(&t);
                async move { expect_status(req.send().await, 200).await }
            })
            .await,
        );
        let (c, url, t) = (client.clone(), format!("{base}/api/data?prefix=bench:&limit=100"), token.clone());
        rows.push(
            measure("list (100 items/page)", ITEMS / 5, 16, move |_| {
                let req = c.get(&url).bearer_auth(&t);
                async move { expect_status(req.send().await, 200).await }
            })
            .await,
        );
        bench::load::table(&rows).print();
        shutdown.trigger();
        server.await.unwrap().unwrap();
    });
}
