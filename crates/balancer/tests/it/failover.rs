//! Failover under load: a backend killed abruptly costs no client request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::{TestBalancer, TestRegistry, eventually, http, three_registered};

const CLIENTS: usize = 8;
const KILL_AFTER: usize = 400;
const TOTAL: usize = 2_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_fails_no_request() {
    let registry = TestRegistry::start().await;
    let mut backends = three_registered(&registry, "data").await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("data", &["data-1", "data-2", "data-3"]).await;

    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (sent, failures, url) = (sent.clone(), failures.clone(), balancer.at("/api/data/items"));
        clients.push(tokio::spawn(async move {
            let http = http();
            let mut n = 0usize;
            while sent.fetch_add(1, SeqCst) < TOTAL {
                n += 1;
                // GETs, and POSTs that carry an Idempotency-Key.
                let req = if n % 2 == 0 {
                    http.get(&url)
                } else {
                    http.post(&url).header("idempotency-key", format!("client-{c}-{n}")).body(r#"{"key":"k"}"#)
                };
                match req.send().await {
                    Ok(res) if res.status() == 200 => {
                        let _ = res.bytes().await;
                    }
                    Ok(res) => {
                        let status = res.status();
                        eprintln!("client {c}: {status}: {}", res.text().await.unwrap_or_default());
                        failures.fetch_add(1, SeqCst);
                    }
                    Err(e) => {
                        eprintln!("client {c}: {e}");
                        failures.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }

    eventually(Duration::from_secs(20), "load running", || async { (sent.load(SeqCst) >= KILL_AFTER).then_some(()) })
        .await;
    backends[1].kill().await;
    let at_kill = backends[1].received();
    let others_at_kill = backends[0].received() + backends[2].received();

    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(failures.load(SeqCst), 0, "failed client requests");
    assert_eq!(backends[1].received(), at_kill, "the killed backend got nothing after its death");
    let others = backends[0].received() + backends[2].received();
    assert!(others >= others_at_kill + (TOTAL - KILL_AFTER) / 2, "the others carried the load: {others}");
    let m = balancer.metrics().await;
    assert_eq!(m["services"]["data"]["statusClasses"]["5xx"], 0);
    assert!(m["services"]["data"]["retries"].as_u64().unwrap() >= 1, "the kill was felt and retried: {m}");
    balancer.stop().await;
    registry.stop().await;
}
