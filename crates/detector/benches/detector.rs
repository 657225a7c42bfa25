//! How fast the detector sees and shows things, in-process over real HTTP and WebSockets:
//! `cargo bench -p detector --bench detector` (or `make bench-all`).
//!
//! - crash to dashboard: orch reports an instance `exited` → a dashboard socket has the
//!   status showing it down (the target: an instance's death on the dashboard within 1 s);
//! - a round of checks over 100 instances, as `POST /api/check` sees it;
//! - a flood of 1000 concurrent `POST /api/check`: how many rounds it costs;
//! - fan-out: a change reaching 200 dashboard sockets.

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use bench::stats::{quantile, sorted_ms};
use bench::table::Table;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::Value;
use support::{Backend, FakeOrch, TestDetector, TestRegistry, send};
use tokio_tungstenite::tungstenite::Message;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(detector: &TestDetector) -> Client {
    let url = format!("{}/ws", detector.url.replace("http://", "ws://"));
    let mut client = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let snapshot = next(&mut client).await;
    assert_eq!(snapshot["type"], "snapshot");
    client
}

async fn next(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Reads until a status message in which `id` has `status`.
async fn until_status(client: &mut Client, id: &str, status: &str) {
    loop {
        let message = next(client).await;
        if message["type"] != "status" {
            continue;
        }
        let found = message["status"]["services"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|v| v.as_array().unwrap().iter())
            .any(|i| i["serviceId"] == id && i["status"] == status);
        if found {
            return;
        }
    }
}

/// A row of `samples`: their count, p50, p99 and max in ms.
fn row(table: &mut Table, what: &str, samples: &[Duration]) {
    let ms = sorted_ms(samples);
    let max = ms.last().copied().unwrap_or(f64::NAN);
    let figures = [quantile(&ms, 0.5), quantile(&ms, 0.99), max].map(|v| format!("{v:.2}"));
    table.row([what.to_owned(), samples.len().to_string()].into_iter().chain(figures));
}

async fn crash_to_dashboard(n: usize) -> Vec<Duration> {
    let registry = TestRegistry::start().await;
    let (orch, orch_url) = FakeOrch::start().await;
    let (_backend, url) = Backend::start().await;
    orch.set_instances(vec![FakeOrch::instance("web-1", &url, "running", 0)]);
    let detector = TestDetector::start(&registry, &[("ORCH_CONTROL_URL", &orch_url)]).await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;
    let mut client = connect(&detector).await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        orch.event("exited", "web-1", "web-1 exited (signal SIGKILL)");
        until_status(&mut client, "web-1", "down").await;
        samples.push(start.elapsed());
        // orch restarted it: the detector checks at once and it is up again.
        orch.event("restarted", "web-1", "web-1 restarted");
        until_status(&mut client, "web-1", "up").await;
    }
    samples
}

async fn hundred_instances() -> (TestRegistry, TestDetector, Backend) {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (backend, url) = Backend::start().await;
    for i in 1..=100 {
        registry.register(&format!("web-{i}"), "web", &url).await;
    }
    detector.instance_where("web-100", "web-100 up", |i| i["status"] == "up").await;
    (registry, detector, backend)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut table = Table::new().left("measure (ms)", 44).right("n", 5).right("p50", 8).right("p99", 8).right("max", 8);
    row(&mut table, "crash reported by orch -> shown down on /ws", &crash_to_dashboard(200).await);

    let (_registry, detector, backend) = hundred_instances().await;
    let http = reqwest::Client::new();
    let mut rounds = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let (code, _) = send(http.post(format!("{}/api/check", detector.url))).await;
        assert_eq!(code, 200);
        rounds.push(start.elapsed());
    }
    row(&mut table, "POST /api/check, round over 100 instances", &rounds);

    // A flood: every request gets a fresh result, yet few rounds run.
    let hits = backend.hits();
    let start = Instant::now();
    let flood = (0..1000).map(|_| send(http.post(format!("{}/api/check", detector.url))));
    let answers = join_all(flood).await;
    let took = start.elapsed();
    assert!(answers.iter().all(|(code, _)| *code == 200));
    let distinct: std::collections::BTreeSet<u64> = answers.iter().map(|(_, b)| b["round"].as_u64().unwrap()).collect();
    let checks = backend.hits() - hits;

    // Fan-out: a change reaching every one of 200 dashboard sockets.
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(connect(&detector).await);
    }
    let mut fanout = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        send(http.post(format!("{}/api/check", detector.url))).await;
        // Recognised by its first bytes: parsing 200 copies would measure the reader.
        join_all(clients.iter_mut().map(|c| async move {
            loop {
                let message = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap().unwrap();
                if message.to_text().is_ok_and(|t| t.starts_with(r#"{"type":"status""#)) {
                    break;
                }
            }
        }))
        .await;
        fanout.push(start.elapsed());
    }
    row(&mut table, "a round's status reaching 200 sockets", &fanout);

    print!("{}", table.pipes());
    println!();
    println!(
        "flood: 1000 concurrent POST /api/check answered in {:.0} ms by {} rounds ({} checks of 100 instances)",
        took.as_secs_f64() * 1000.0,
        distinct.len(),
        checks
    );
}
