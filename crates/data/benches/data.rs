//! Data throughput against one in-process instance over real HTTP (loopback), with auth
//! required (every request carries a bearer JWT that is verified): creates, updates with
//! `If-Match`, creates with an `Idempotency-Key`, reads and list pages. Client and server
//! share this process and the machine's cores.
//!
//! `cargo bench -p data --bench data` (or `make bench-all`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const ITEMS: usize = 5000;

struct Row {
    name: &'static str,
    requests: usize,
    concurrency: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs `total` calls of `op` from `concurrency` workers; each call must succeed.
async fn measure<F, Fut>(name: &'static str, total: usize, concurrency: usize, op: F) -> Row
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    if let Err(e) = op(i).await {
                        panic!("{name} #{i} failed: {e}");
                    }
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Row { name, requests: total, concurrency, elapsed, latencies }
}

fn print(rows: &[Row]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{:<26} {:>9} {:>6} {:>9} {:>10} {:>9} {:>9}",
        "operation", "requests", "conc", "seconds", "req/s", "p50 ms", "p99 ms"
    );
    for r in rows {
        let pct = |p: f64| r.latencies[((r.latencies.len() as f64 * p) as usize).min(r.latencies.len() - 1)];
        println!(
            "{:<26} {:>9} {:>6} {:>9.2} {:>10.0} {:>9.2} {:>9.2}",
            r.name,
            r.requests,
            r.concurrency,
            r.elapsed.as_secs_f64(),
            r.requests as f64 / r.elapsed.as_secs_f64(),
            ms(pct(0.50)),
            ms(pct(0.99)),
        );
    }
}

async fn check(res: reqwest::Result<reqwest::Response>, expected: u16) -> Result<(), String> {
    let res = res.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    if status == expected { Ok(()) } else { Err(format!("status {status}")) }
}

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
                async move { check(req.send().await, 201).await }
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
                async move { check(req.send().await, 200).await }
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
                async move { check(req.send().await, 201).await }
            })
            .await,
        );
        let (c, base2, t) = (client.clone(), base.clone(), token.clone());
        rows.push(
            measure("read (GET)", 4 * ITEMS, 32, move |i| {
                let req = c.get(format!("{base2}/api/data/bench:{:06}", (i * 7919) % ITEMS)).bearer_auth(&t);
                async move { check(req.send().await, 200).await }
            })
            .await,
        );
        let (c, url, t) = (client.clone(), format!("{base}/api/data?prefix=bench:&limit=100"), token.clone());
        rows.push(
            measure("list (100 items/page)", ITEMS / 5, 16, move |_| {
                let req = c.get(&url).bearer_auth(&t);
                async move { check(req.send().await, 200).await }
            })
            .await,
        );
        print(&rows);
        shutdown.trigger();
        server.await.unwrap().unwrap();
    });
}
