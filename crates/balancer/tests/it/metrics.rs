//! `/api/metrics`, `/metrics` and `/status` agree with the traffic sent; fault injection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{TOKEN, TestBackend, TestBalancer, TestRegistry, http, read, three_registered};

#[tokio::test]
async fn metrics_match_the_traffic_sent() {
    let registry = TestRegistry::start().await;
    let _data = three_registered(&registry, "data").await;
    let failing = TestBackend::start("auth-1").await;
    failing.fail_with(500);
    registry.register("auth", &failing).await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("data", &["data-1", "data-2", "data-3"]).await;
    balancer.wait_for_instances("auth", &["auth-1"]).await;

    let http = http();
    for _ in 0..9 {
        assert_eq!(http.get(balancer.at("/api/data/x")).send().await.unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(http.post(balancer.at("/api/auth/login")).body("{}").send().await.unwrap().status(), 500);
    }
    assert_eq!(http.get(balancer.at("/api/nowhere")).send().await.unwrap().status(), 404);

    let m = balancer.metrics().await;
    assert_eq!((m["requests"].as_u64(), m["errors"].as_u64(), m["inFlight"].as_u64()), (Some(11), Some(2), Some(0)));
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(m["uptimeSeconds"].as_f64().unwrap() > 0.0);
    let data = &m["services"]["data"];
    assert_eq!(data["requests"], 9);
    assert_eq!(data["errors"], 0);
    assert_eq!(data["retries"], 0);
    assert_eq!(data["statusClasses"], json!({"2xx": 9, "3xx": 0, "4xx": 0, "5xx": 0}));
    let latency = &data["latencyMs"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0, "{latency}");
    assert!(latency["p50"].as_f64() <= latency["p90"].as_f64() && latency["p90"].as_f64() <= latency["p99"].as_f64());
    for id in ["data-1", "data-2", "data-3"] {
        let i = &data["instances"][id];
        assert_eq!(i["requests"], 3, "{id}: {i}");
        assert_eq!(i["statusClasses"]["2xx"], 3);
        assert_eq!(i["healthy"], true);
        assert_eq!(i["inFlight"], 0);
        assert!(i["url"].as_str().unwrap().starts_with("http://localhost:"));
    }
    let auth = &m["services"]["auth"];
    assert_eq!((auth["requests"].as_u64(), auth["errors"].as_u64()), (Some(2), Some(2)));
    assert_eq!(auth["statusClasses"]["5xx"], 2);
    assert_eq!(auth["instances"]["auth-1"]["errors"], 2);

    // /status counts the same attempts.
    let status = balancer.status().await;
    assert_eq!(status["status"], "ok");
    assert_eq!(status["routes"]["/api/data"], "data");
    assert_eq!(status["services"]["data"]["total"], 3);
    assert_eq!(status["services"]["data"]["instances"][0]["requests"], 3);

    // The Prometheus text says the same and parses.
    let text = http.get(balancer.at("/metrics")).send().await.unwrap().text().await.unwrap();
    let samples = parse_prometheus(&text);
    assert_eq!(samples[r#"balancer_requests_total{service="data"}"#], 9.0);
    assert_eq!(samples[r#"balancer_errors_total{service="auth"}"#], 2.0);
    assert_eq!(samples[r#"balancer_responses_total{service="data",class="2xx"}"#], 9.0);
    assert_eq!(samples[r#"balancer_instance_requests_total{service="data",instance="data-2"}"#], 3.0);
    assert_eq!(samples[r#"balancer_instance_healthy{service="auth",instance="auth-1"}"#], 1.0);
    assert!(samples.contains_key(r#"balancer_latency_ms{service="data",quantile="0.99"}"#));
    // kit's figures come with them: the process's, and the admin routes' own requests.
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(samples["process_resident_memory_bytes"] > 0.0);
    assert!(samples[r#"http_requests_total{route="/api/metrics",method="GET",status="200"}"#] >= 1.0);
    balancer.stop().await;
    registry.stop().await;
}

/// Parses the OpenMetrics text format strictly enough to catch mistakes: every sample line
/// is `name{labels} value` with a family declared by `# TYPE` before it.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut declared: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind), "{line}");
            declared.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            break;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        // A counter's samples end in `_total`, a histogram's in `_bucket`, `_sum`, `_count`.
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.iter().any(|d| d == f)))
            .unwrap_or(name);
        assert!(declared.iter().any(|d| d == family), "sample before its # TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("labels in braces");
                for pair in inner.split(',') {
                    let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("label=value: {line}"));
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(value.starts_with('"') && value.ends_with('"') && value.len() >= 2, "{line}");
                }
            }
        }
        assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate series: {line}");
    }
    samples
}

#[tokio::test]
async fn faults_inject_errors_and_latency_until_removed() {
    let backend = TestBackend::start("a").await;
    let ports = backend.port().to_string();
    let balancer =
        TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &ports)]).await;
    let http = http();
    let faults = balancer.at("/api/faults");

    let spec = json!({"service": "data", "errorPercent": 100, "errorStatus": 503, "durationMs": 60000});
    let res = http.post(&faults).json(&spec).send().await.unwrap();
    assert_eq!(res.status(), 401, "fault injection needs the token");
    let (status, _, body) = read(
        http.post(&faults).bearer_auth(TOKEN).json(&json!({"service": "nope", "latencyMs": 5})).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not routed"));

    let (status, _, fault) = read(http.post(&faults).bearer_auth(TOKEN).json(&spec).send().await.unwrap()).await;
    assert_eq!(status, 201, "{fault}");
    assert_eq!(
        (fault["service"].as_str(), fault["errorPercent"].as_f64(), fault["errorStatus"].as_u64()),
        (Some("data"), Some(100.0), Some(503))
    );
    assert_eq!(fault["latencyMs"], 0);
    assert!(fault["expiresAt"].as_str().unwrap().ends_with('Z'));
    let id = fault["id"].as_str().unwrap().to_owned();

    let (status, instance, body) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!((status, instance, body), (503, None, json!({"error": "injected fault"})));
    assert_eq!(backend.received(), 0);
    let m = balancer.metrics().await;
    assert_eq!(m["services"]["data"]["statusClasses"]["5xx"], 1);

    let (_, _, list) = read(http.get(&faults).bearer_auth(TOKEN).send().await.unwrap()).await;
    assert_eq!(list["faults"].as_array().unwrap().len(), 1);
    let res = http.delete(format!("{faults}/{id}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = http.delete(format!("{faults}/{id}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(http.get(balancer.at("/api/data/x")).send().await.unwrap().status(), 200);

    // Added latency.
    let spec = json!({"service": "data", "latencyMs": 150, "durationMs": 60000});
    assert_eq!(http.post(&faults).bearer_auth(TOKEN).json(&spec).send().await.unwrap().status(), 201);
    let started = Instant::now();
    assert_eq!(http.get(balancer.at("/api/data/x")).send().await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (status, _, body) = read(http.delete(&faults).bearer_auth(TOKEN).send().await.unwrap()).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)));
    let (_, _, list) = read(http.get(&faults).bearer_auth(TOKEN).send().await.unwrap()).await;
    assert_eq!(list, json!({"faults": []}));
    let _: Value = list;
    balancer.stop().await;
}
