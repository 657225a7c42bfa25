//! The data service as real processes: values come back through the balancer exactly as
//! they were sent, and a list page costs an instance memory bounded by its byte cap
//! (`DATA_PAGE_MAX_BYTES`), not by `limit` times the size of the items.

use std::time::Duration;

use e2e::cluster::Cluster;
use e2e::{Proc, eventually};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// A cluster of a registry, two data instances and the balancer, without auth.
const MANIFEST: &str = r#"apiVersion: orch/v1
kind: Cluster
metadata: { name: exact }
spec:
  dataDir: data
  controlPort: 0
  auth: { required: false }
  env: { HEARTBEAT_INTERVAL_MS: "500" }
  services:
    - { name: registry, component: registry }
    - { name: data, component: data, replicas: 2, dependsOn: [registry] }
    - name: balancer
      component: balancer
      dependsOn: [registry]
      routes: { /api/data: data }
      env: { HEALTH_CHECK_INTERVAL_MS: "500" }
"#;

/// Sends `req`; the status and the body as text.
async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_back_through_the_balancer_byte_for_byte() {
    let cluster = Cluster::start(MANIFEST).await;
    cluster.wait_ready(&["registry-1", "data-1", "data-2", "balancer-1"]).await;
    cluster.wait_routed(&["data-1".to_owned(), "data-2".to_owned()]).await;
    let balancer = cluster.url_of("balancer-1").await;
    let http = reqwest::Client::new();
    let req = |method: Method, path: &str| http.request(method, format!("{balancer}{path}"));

    let mut rng = StdRng::seed_from_u64(7);
    let mut values: Vec<String> = (0..60).map(|_| format!("{}", rng.random::<f64>())).collect();
    values.extend(
        [
            "0.9636861036351481",
            "12345678901234567890123",
            "18446744073709551616",
            "-0.0",
            "5e-324",
            "1e308",
            r#""ключ 🔑 \u0000 \ud83d\ude00 \" \\""#,
            r#"{ "a" : [ 1 , 2.50 ] }"#,
        ]
        .map(String::from),
    );
    values.push(format!("{}1{}", "[".repeat(100), "]".repeat(100)));

    let metadata = r#"{"n": 0.30000000000000004, "big": 123456789012345678901234567890}"#;
    for (i, value) in values.iter().enumerate() {
        let key = format!("exact:{i:03}");
        // The item as the service writes it starts with these bytes.
        let start = format!(r#"{{"key":"{key}","value":{value},"metadata":{metadata},"version":1,"#);
        let body = format!(r#"{{"key":"{key}","value":{value},"metadata":{metadata}}}"#);
        let post = || req(Method::POST, "/api/data").header("idempotency-key", format!("exact-{i}")).body(body.clone());
        let (status, created) = send(post()).await;
        assert_eq!(status, 201, "{created:.300}");
        assert!(created.starts_with(&start), "{created:.300}");
        assert_eq!(send(post()).await, (201, created), "the replay is the first answer");
        let (status, read) = send(req(Method::GET, &format!("/api/data/{key}"))).await;
        assert!(status == 200 && read.starts_with(&start), "{status} {read:.300}");
    }
    let (status, page) = send(req(Method::GET, "/api/data?prefix=exact:&limit=1000")).await;
    assert_eq!(status, 200);
    for (i, value) in values.iter().enumerate() {
        let start = format!(r#"{{"key":"exact:{i:03}","value":{value},"metadata":{metadata},"version":1,"#);
        assert!(page.contains(&start), "{start:.100} not in the page");
    }
}

/// `VmHWM` (peak resident memory) and `VmRSS` of process `pid`, in KiB.
fn peak_and_resident(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Items of `[i,0,0,…,0]`, each as large as the default value limit allows: about 10 MiB of
/// JSON, which the old list page parsed into trees of about 8 MiB per item, twice.
const ITEMS: usize = 40;
const MAX_VALUE: usize = 256 << 10;
/// Concurrent clients, each paging through every item with `limit=1000`.
const CLIENTS: usize = 3;
/// How much the instance's peak memory may rise above its resident memory while serving
/// them: a page is capped at 1 MiB of items, so each request needs a few MiB.
const BOUND_MIB: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_large_items_costs_memory_bounded_by_the_page_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = e2e::listener();
    let data_dir = dir.path().display().to_string();
    let envs = [("DATA_DIR", data_dir.as_str()), ("REGISTER", "false"), ("AUTH_REQUIRED", "false")];
    let data = Proc::component("data-limits", "data", &listener, &envs);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    eventually(DEADLINE, "data ready", || async {
        let res = http.get(format!("{base}/ready")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;

    let zeros = ",0".repeat((MAX_VALUE - "[99]".len()) / 2);
    for i in 0..ITEMS {
        let body = format!(r#"{{"key":"big:{i:02}","value":[{i}{zeros}]}}"#);
        let (status, created) = send(http.post(format!("{base}/api/data")).body(body)).await;
        assert_eq!(status, 201, "{created:.300}");
    }

    let (_, resident_before) = peak_and_resident(data.pid());
    let walks = (0..CLIENTS).map(|_| async {
        let (mut seen, mut cursor, mut pages) = (0, String::new(), 0);
        loop {
            let url = format!("{base}/api/data?prefix=big:&limit=1000&cursor={cursor}");
            let res = http.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let page: Value = res.json().await.unwrap();
            seen += page["items"].as_array().unwrap().len();
            pages += 1;
            match page["nextCursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return (seen, pages),
            }
        }
    });
    let walked = futures_util::future::join_all(walks).await;
    let (peak_after, _) = peak_and_resident(data.pid());
    let growth_mib = peak_after.saturating_sub(resident_before) / 1024;
    eprintln!("data's peak memory rose {growth_mib} MiB above its resident memory while serving the pages");
    assert!(
        growth_mib < BOUND_MIB,
        "{CLIENTS} clients paging through {ITEMS} items of 256 KiB raised data's peak memory {growth_mib} MiB \
         (bound {BOUND_MIB} MiB)"
    );
    for (seen, pages) in walked {
        assert_eq!(seen, ITEMS, "every item once");
        assert!(pages > 1, "a page of {ITEMS} items of 256 KiB is cut by bytes");
    }
}
