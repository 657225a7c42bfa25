//! Compute benchmarks, printed as a table:
//! - direct operations per second over HTTP (one in-process instance, JWT checked, a fixed
//!   number of concurrent clients);
//! - the cost of the largest input each operation accepts (one evaluation, no HTTP);
//! - jobs per second end to end with three workers (three in-process instances of one
//!   worker each, one SQLite file), from the first submit to the last completion;
//! - job pickup latency with idle workers (created → claimed), on the instance that took
//!   the submit and on another one.
//!
//! Everything runs in this one process, so the clients and the servers share the CPUs.
//!
//! `cargo bench -p compute --bench compute` (or `make bench-all` for every benchmark).

use std::path::Path;
use std::time::{Duration, Instant};

use bench::stats::quantile;
use bench::table::Table;
use compute::ops::{self, Place};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};

const SECRET: &str = "compute-bench-secret-0123456789abcdef";
const DIRECT_REQUESTS: usize = 20_000;
const DIRECT_CONCURRENCY: usize = 32;
const JOBS: usize = 3_000;
const PICKUPS: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    println!("compute benchmarks ({} CPUs; clients and servers in one process)", cpus());
    direct().await;
    bounds();
    jobs().await;
    pickup().await;
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Server {
    url: String,
    shutdown: kit::Shutdown,
    task: tokio::task::JoinHandle<Result<(), compute::Error>>,
}

impl Server {
    async fn start(db: &Path, name: &str, workers: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let database = format!("sqlite://{}", db.display());
        let data_dir = db.parent().expect("a dir").display().to_string();
        let workers = workers.to_string();
        let vars = kit::Vars::from_pairs([
            ("SERVICE_NAME", name),
            ("DATABASE_URL", &database),
            ("DATA_DIR", &data_dir),
            ("JWT_SECRET", SECRET),
            ("REGISTER", "false"),
            ("COMPUTE_WORKERS", &workers),
        ]);
        let config = compute::Config::from_vars(&vars).expect("config");
        let shutdown = kit::Shutdown::new();
        let task = tokio::spawn(compute::serve(config, listener, shutdown.clone()));
        let http = reqwest::Client::new();
        loop {
            if http.get(format!("{url}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { url, shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }
}

fn token() -> String {
    let now = kit::time::unix_millis() / 1000;
    kit::jwt::Keys::from_secret(SECRET.as_bytes()).sign(&kit::jwt::Claims {
        sub: "1".into(),
        username: "bench".into(),
        email: "bench@example.com".into(),
        iat: now,
        exp: now + 3600,
    })
}

async fn direct() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(&dir.path().join("compute.sqlite"), "compute-1", 0).await;
    let http = reqwest::Client::new();
    let token = token();
    println!();
    println!(
        "direct operations over HTTP (1 instance, {DIRECT_CONCURRENCY} concurrent clients, keep-alive, JWT checked)"
    );
    let mut table = Table::new()
        .indent("  ")
        .left("request", 34)
        .right("requests", 9)
        .right("ops/s", 10)
        .right("p50 ms", 9)
        .right("p99 ms", 9);
    let cases = [
        ("add [1, 2]", json!({"operation": "add", "operands": [1, 2]}), DIRECT_REQUESTS),
        ("primeCheck [1000000007]", json!({"operation": "primeCheck", "operands": [1_000_000_007]}), DIRECT_REQUESTS),
        (
            "factorial [1000] (blocking pool)",
            json!({"operation": "factorial", "operands": [1000]}),
            DIRECT_REQUESTS / 4,
        ),
    ];
    for (name, body, requests) in cases {
        let url = format!("{}/api/compute/direct", server.url);
        let body = body.to_string();
        // Warm up connections.
        send_all(&http, &url, &token, &body, DIRECT_CONCURRENCY * 4).await;
        let start = Instant::now();
        let mut latencies = send_all(&http, &url, &token, &body, requests).await;
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        table.row([
            name.to_owned(),
            requests.to_string(),
            format!("{:.0}", requests as f64 / elapsed),
            format!("{:.2}", quantile(&latencies, 0.5)),
            format!("{:.2}", quantile(&latencies, 0.99)),
        ]);
    }
    table.print();
    server.stop().await;
}

/// Sends `n` requests, `DIRECT_CONCURRENCY` at a time; their latencies in ms.
async fn send_all(http: &reqwest::Client, url: &str, token: &str, body: &str, n: usize) -> Vec<f64> {
    futures_util::stream::iter(0..n)
        .map(|_| async move {
            let start = Instant::now();
            let res = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .expect("a response");
            assert_eq!(res.status(), 200);
            res.bytes().await.expect("a body");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .buffer_unordered(DIRECT_CONCURRENCY)
        .collect()
        .await
}

fn bounds() {
    println!();
    println!("the largest input each operation accepts (one evaluation, no HTTP; best of 3)");
    let mut table = Table::new().indent("  ").left("operation", 16).left("input", 40).right("ms", 9);
    let square = |n: usize| Value::Array(vec![Value::Array((0..n).map(|i| json!(i % 7)).collect()); n]);
    let halves = |n: usize| Value::Array(vec![Value::Array((0..n).map(|i| json!(i as f64 + 0.5)).collect()); n]);
    let many = Value::Array((0..ops::MAX_OPERANDS).map(|i| json!(i as f64 + 0.5)).collect());
    // Integers of the largest size, as many as fit a 1 MiB body (or the product's digits allow).
    let digits = ops::MAX_INTEGER_DIGITS;
    let fill = (1 << 20) / (digits + 1);
    let big = |count: usize| format!("[{}]", vec!["9".repeat(digits); count].join(","));
    let product = (ops::MAX_POWER_DIGITS as usize / digits).min(fill);
    let big_cases = [
        ("add", format!("{fill} integers of {digits} digits"), big(fill)),
        ("sumOfSquares", format!("{fill} integers of {digits} digits"), big(fill)),
        ("average", format!("{fill} integers of {digits} digits"), big(fill)),
        ("multiply", format!("{product} integers of {digits} digits"), big(product)),
    ];
    let cases = [
        ("add", format!("{} operands", ops::MAX_OPERANDS), many.clone()),
        ("sumOfSquares", format!("{} operands", ops::MAX_OPERANDS), many),
        ("factorial", format!("n = {}", ops::MAX_FACTORIAL), json!([ops::MAX_FACTORIAL])),
        ("fibonacci", format!("n = {}", ops::MAX_FIBONACCI), json!([ops::MAX_FIBONACCI])),
        ("power", format!("2^332190 ({} digits max)", ops::MAX_POWER_DIGITS), json!([2, 332_190])),
        ("primeCheck", format!("n = {} (2^53 - 111)", 9_007_199_254_740_881u64), json!([9_007_199_254_740_881u64])),
        (
            "matrixMultiply",
            format!("{0}x{0} by {0}x{0}", ops::MAX_MATRIX_DIM),
            json!([square(ops::MAX_MATRIX_DIM), square(ops::MAX_MATRIX_DIM)]),
        ),
        (
            "matrixMultiply",
            format!("{0}x{0} by {0}x{0}, doubles", ops::MAX_MATRIX_DIM),
            json!([halves(ops::MAX_MATRIX_DIM), halves(ops::MAX_MATRIX_DIM)]),
        ),
    ];
    let cases = cases.into_iter().map(|(op, input, operands)| (op, input, operands.to_string())).chain(big_cases);
    for (operation, input, operands) in cases {
        let operands: Box<RawValue> = serde_json::from_str(&operands).expect("JSON");
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                let (_, task) = ops::parse(operation, &operands, Place::Direct).expect("within the bounds");
                task.evaluate().expect("a result");
                start.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::INFINITY, f64::min);
        table.row([operation.to_owned(), input, format!("{best:.2}")]);
    }
    table.print();
}

async fn jobs() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("compute.sqlite");
    let mut servers = Vec::new();
    for i in 1..=3 {
        servers.push(Server::start(&db, &format!("compute-{i}"), 1).await);
    }
    let queue = compute::Queue::new(kit::db::connect(&format!("sqlite://{}", db.display())).await.expect("a pool"));
    let http = reqwest::Client::new();
    let token = token();
    let urls: Vec<String> = servers.iter().map(|s| format!("{}/api/compute/job", s.url)).collect();

    let start = Instant::now();
    let submitted: Vec<()> = futures_util::stream::iter(0..JOBS)
        .map(|i| {
            let (http, token, url) = (&http, &token, &urls[i % urls.len()]);
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"operation": "add", "operands": [i, 1]}))
                    .send()
                    .await
                    .expect("a response");
                assert_eq!(res.status(), 202);
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let submit_secs = start.elapsed().as_secs_f64();
    loop {
        let stats = queue.stats().await.expect("stats");
        if stats.counts[2] as usize >= submitted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let stats = queue.stats().await.expect("stats");
    println!();
    println!("jobs end to end (3 instances x 1 worker, one SQLite file, {JOBS} `add` jobs, 64 concurrent submitters)");
    let mut table = Table::new().indent("  ").left("measure", 44).right("value", 10);
    table.row(["submits/s (202 answered)".to_owned(), format!("{:.0}", JOBS as f64 / submit_secs)]);
    table.row(["jobs/s (first submit to last completion)".to_owned(), format!("{:.0}", JOBS as f64 / total_secs)]);
    for w in &stats.workers {
        table.row([format!("completed by {}", w.worker), w.completed.to_string()]);
    }
    table.print();
    for server in servers {
        server.stop().await;
    }
}

async fn pickup() {
    println!();
    println!("job pickup latency, idle workers ({PICKUPS} jobs one after another; created -> claimed, ms resolution)");
    let mut table = Table::new().indent("  ").left("path", 52).right("p50 ms", 7).right("p99 ms", 7).right("max ms", 7);
    for (label, same) in
        [("same instance (woken by the submit)", true), ("other instance (PRAGMA data_version, 20 ms)", false)]
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = dir.path().join("compute.sqlite");
        let worker = Server::start(&db, "compute-1", 1).await;
        let api = if same { None } else { Some(Server::start(&db, "compute-2", 0).await) };
        let submit_url = format!("{}/api/compute/job", api.as_ref().unwrap_or(&worker).url);
        let queue = compute::Queue::new(kit::db::connect(&format!("sqlite://{}", db.display())).await.expect("a pool"));
        let http = reqwest::Client::new();
        let token = token();
        let mut latencies = Vec::new();
        for i in 0..PICKUPS {
            let res = http
                .post(&submit_url)
                .bearer_auth(&token)
                .json(&json!({"operation": "add", "operands": [i, 1]}))
                .send()
                .await
                .expect("a response");
            let id = res.json::<Value>().await.expect("json")["jobId"].as_str().expect("an id").to_owned();
            let job = loop {
                let job = queue.get(&id).await.expect("a read").expect("the job");
                if job.status == compute::queue::Status::Completed {
                    break job;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            latencies.push((job.started_at.expect("started") - job.created_at) as f64);
            // Let the workers go idle again, between 0 and 30 ms, so the poll phase varies.
            tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 30)).await;
        }
        latencies.sort_by(f64::total_cmp);
        table.row([
            label.to_owned(),
            format!("{:.0}", quantile(&latencies, 0.5)),
            format!("{:.0}", quantile(&latencies, 0.99)),
            format!("{:.0}", latencies.last().copied().unwrap_or(f64::NAN)),
        ]);
        worker.stop().await;
        if let Some(api) = api {
            api.stop().await;
        }
    }
    table.print();
}
