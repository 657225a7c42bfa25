//! Many clients increment one counter through read-modify-write with `If-Match`, on two
//! instances of one database: no update is lost, and no client ever sees a 5xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::{TestData, send};

const CLIENTS_PER_INSTANCE: usize = 8;
const INCREMENTS_PER_CLIENT: u64 = 25;

/// Increments `counter` `INCREMENTS_PER_CLIENT` times, retrying on 412; returns the
/// statuses of its writes.
async fn client(data: Arc<TestData>, conflicts: Arc<AtomicU64>) -> u64 {
    let mut done = 0;
    while done < INCREMENTS_PER_CLIENT {
        let (status, item) = send(data.get("/api/data/counter")).await;
        assert_eq!(status, 200, "read: {item}");
        let (n, version) = (item["value"].as_u64().unwrap(), item["version"].as_i64().unwrap());
        let put = data.put("/api/data/counter", &json!({"value": n + 1})).header("if-match", format!("\"{version}\""));
        let (status, body) = send(put).await;
        match status {
            200 => {
                assert_eq!(body["version"], version + 1);
                done += 1;
            }
            412 => {
                assert!(body["currentVersion"].as_i64().unwrap() > version, "{body}");
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("write answered {other}: {body}"),
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(TestData::start(dir.path(), &[]).await);
    let b = Arc::new(TestData::start(dir.path(), &[]).await);
    a.create("counter", json!(0)).await;

    let conflicts = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2 * CLIENTS_PER_INSTANCE)
        .map(|i| {
            let data = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(client(data, conflicts.clone()))
        })
        .collect();
    let mut successes = 0;
    for c in clients {
        successes += c.await.unwrap();
    }

    let (_, item) = send(b.get("/api/data/counter")).await;
    assert_eq!(successes, 2 * CLIENTS_PER_INSTANCE as u64 * INCREMENTS_PER_CLIENT);
    assert_eq!(item["value"].as_u64().unwrap(), successes, "final value = successful writes");
    assert_eq!(item["version"].as_u64().unwrap(), successes + 1);
    assert!(conflicts.load(Ordering::Relaxed) > 0, "the clients really raced");

    for data in [a, b] {
        Arc::into_inner(data).unwrap().stop().await;
    }
}
