//! Trace ids across hops, on a real cluster under `orch apply`: a request sent through the
//! balancer with a sampled `traceparent` keeps its trace id in the balancer's log line, in
//! the serving instance's, and in the answer's header (the balancer's span, the instance's
//! a child of it); `orch logs --trace ID` shows both lines, each under its instance. The
//! balancer logs as text, auth as JSON: the search finds the id in both.

use std::time::Duration;

use e2e::cluster::{Cluster, stderr, stdout};
use e2e::eventually;
use e2e::topology::Topology;
use kit::trace::TraceContext;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The lines of instance `name`'s log that contain `needle`.
fn log_lines(cluster: &Cluster, name: &str, needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string(cluster.path(&format!("data/logs/{name}.log"))).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

/// The value of `key=` in a text log line (text fields are quoted there).
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim_matches('"'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_carries_its_trace_id_through_the_balancer_and_the_instance() {
    // The balancer begins every new trace sampled here (the default is none), so a request
    // sent without a traceparent can be followed too.
    let topology = Topology::new()
        .replicas("auth", 2)
        .replicas("data", 1)
        .replicas("compute", 1)
        .env("auth", "LOG_FORMAT", "json")
        .env("balancer", "TRACE_SAMPLE_PERCENT", "100");
    let cluster = topology.start().await;
    let balancer = cluster.url_of("balancer-1").await;
    let http = reqwest::Client::new();

    let given = TraceContext::root(true);
    let trace_id = given.trace_hex().to_string();
    let res =
        http.get(format!("{balancer}/api/auth/health")).header("traceparent", given.to_string()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let serving = res.headers()["x-upstream-instance"].to_str().unwrap().to_owned();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let answered = TraceContext::parse(res.headers()["traceparent"].as_bytes()).unwrap();
    assert_eq!((answered.trace_id, answered.flags), (given.trace_id, given.flags), "the client's trace");
    assert_ne!(answered.span_id, given.span_id, "the balancer's own span");

    // The balancer's line: the trace, its span (the one answered), the client's as parent.
    let line = eventually(DEADLINE, "the balancer's line of the request", || async {
        log_lines(&cluster, "balancer-1", &trace_id).into_iter().next()
    })
    .await;
    assert_eq!(text_field(&line, "span_id"), Some(&*answered.span_hex().to_string()), "{line}");
    assert_eq!(text_field(&line, "parent_id"), Some(&*given.span_hex().to_string()), "{line}");
    assert_eq!(text_field(&line, "request_id"), Some(&*request_id), "{line}");
    assert_eq!(text_field(&line, "upstream"), Some(&*serving), "{line}");
    assert_eq!(text_field(&line, "status"), Some("200"), "{line}");

    // The serving instance's JSON line: the same trace, a span of its own.
    let line = eventually(DEADLINE, "the serving instance's line of the request", || async {
        log_lines(&cluster, &serving, &trace_id).into_iter().next()
    })
    .await;
    let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let span = &json["spans"][0];
    assert_eq!((span["name"].as_str(), span["trace_id"].as_str()), (Some("request"), Some(&*trace_id)), "{line}");
    let span_id = span["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16, "{line}");
    assert_ne!(span_id, answered.span_hex().to_string(), "{line}");
    assert_eq!((json["path"].as_str(), json["status"].as_u64()), (Some("/api/auth/health"), Some(200)), "{line}");

    // `orch logs --trace` shows both, each under its instance; a service narrows it.
    let out = cluster.cli(&["logs", "--trace", &trace_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    println!("orch logs --trace {trace_id}:\n{text}");
    let prefixes: Vec<&str> = text.lines().map(|l| l.split(" | ").next().unwrap()).collect();
    assert!(prefixes.contains(&"balancer-1") && prefixes.contains(&serving.as_str()), "{text}");
    assert!(text.lines().all(|l| l.contains(&trace_id)), "{text}");
    let out = cluster.cli(&["logs", "auth", "--trace", &given.to_string()]);
    let text = stdout(&out);
    assert!(out.status.success() && !text.is_empty(), "{text}{}", stderr(&out));
    assert!(text.lines().all(|l| l.starts_with(&format!("{serving} | "))), "{text}");

    // Bad input is refused and changes nothing.
    let out = cluster.cli(&["logs", "--trace", "not-a-trace"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cluster.cli(&["logs", "nobody", "--trace", &trace_id]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));

    // Without a traceparent the balancer begins a trace, sampled (TRACE_SAMPLE_PERCENT=100),
    // and answers it: the answer's traceparent is enough to follow the request.
    let res = http.get(format!("{balancer}/api/data/health")).send().await.unwrap();
    let begun = TraceContext::parse(res.headers()["traceparent"].as_bytes()).unwrap();
    assert!(begun.sampled() && begun.trace_id != given.trace_id);
    let serving = res.headers()["x-upstream-instance"].to_str().unwrap().to_owned();
    let answered = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let begun_id = begun.trace_hex().to_string();
    let text = eventually(DEADLINE, "both lines of a request that came without a traceparent", || async {
        let out = cluster.cli(&["logs", "--trace", &answered]);
        let text = stdout(&out);
        let has = |name: &str| text.lines().any(|l| l.starts_with(&format!("{name} | ")));
        (out.status.success() && has("balancer-1") && has(&serving)).then_some(text)
    })
    .await;
    assert!(text.lines().all(|l| l.contains(&begun_id)), "{text}");
}
