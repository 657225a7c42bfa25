//! What the steps share: the rows of wrk runs, the waits (over `e2e`'s `eventually_every`),
//! and small requests to the cluster.

use std::net::SocketAddr;
use std::time::Duration;

use bench::report::{Row, Target};
use bench::stats::{show_count, show_ms};
use e2e::cluster::Cluster;
use e2e::eventually_every;
use e2e::traffic::Api;
use e2e::wrk::Run;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{Value, json};

/// How long any one wait may take before the benchmark gives up.
pub(super) const DEADLINE: Duration = Duration::from_secs(30);

pub(super) fn wrk_errors(run: &Run) -> String {
    if run.errors() == 0 {
        String::new()
    } else {
        format!("; {} non-2xx, {} socket errors", run.non_2xx, run.socket_errors)
    }
}

/// `21 350 writes/s, p50 1.20 ms, p99 9.10 ms`.
pub(super) fn wrk_rate(r: &Run, what: &str) -> String {
    format!("{} {what}/s, p50 {}, p99 {}", show_count(r.ok_per_second()), show_ms(r.p50_ms), show_ms(r.p99_ms))
}

/// The row of a wrk run: answers with a 2xx per second, p50 and p99.
pub(super) fn wrk_row(id: &'static str, metric: &str, r: &Run, unit: &'static str, what: &str, how: String) -> Row {
    Row::new(id, metric, r.ok_per_second(), unit)
        .shown(wrk_rate(r, what))
        .how(format!("{how}{}", wrk_errors(r)))
        .detail("p50Ms", r.p50_ms)
        .detail("p99Ms", r.p99_ms)
        .detail("requests", r.requests)
        .detail("errors", r.errors())
}

/// The p99 of a wrk run as a row of its own, held against `target` (DESIGN's targets pair a
/// rate with a tail: each is a verdict).
pub(super) fn p99_row(id: &'static str, metric: &str, r: &Run, target: Option<Target>, how: &str) -> Row {
    Row::new(id, metric, r.p99_ms, "ms")
        .shown(format!("{} (p50 {})", show_ms(r.p99_ms), show_ms(r.p50_ms)))
        .target(target)
        .how(how)
}

/// The pause between two checks in the waits whose end is timed.
pub(super) const TIGHT: Duration = Duration::from_millis(1);

/// Polls `f` every `every` until it returns `Some`; panics naming `what` after [`DEADLINE`].
pub(super) async fn until<T, F, Fut>(every: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(every, DEADLINE, what, f).await
}

pub(super) async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// `(pid, port)` of `name` once orch reports it running and ready.
pub(super) async fn ready_instance(cluster: &Cluster, name: &str) -> (u32, u16) {
    let i = cluster.wait_instance_ready(name).await;
    let number = |field: &str| i[field].as_u64().unwrap_or_else(|| panic!("{name} has no {field}: {i}"));
    (number("pid") as u32, number("port") as u16)
}

/// The addresses of data-1..3, and the pid and address of the cluster's balancer, once
/// each is ready.
pub(super) async fn data_behind_balancer(cluster: &Cluster) -> (Vec<SocketAddr>, u32, SocketAddr) {
    let mut upstreams = Vec::new();
    for name in ["data-1", "data-2", "data-3"] {
        let (_, port) = ready_instance(cluster, name).await;
        upstreams.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let (pid, port) = ready_instance(cluster, "balancer-1").await;
    (upstreams, pid, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The instance that answered through the balancer.
pub(super) fn upstream_of(res: &reqwest::Response) -> String {
    res.headers().get("x-upstream-instance").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned()
}

/// Submits an `add` job through `api`; its id once accepted (202).
pub(super) async fn submit_job(api: &Api, n: usize) -> String {
    let res = api
        .request(Method::POST, "/api/compute/job")
        .json(&json!({"operation": "add", "operands": [n, 1]}))
        .send()
        .await
        .expect("submitting a job: no answer");
    assert_eq!(res.status(), 202, "submitting a job: {}", res.text().await.unwrap_or_default());
    let accepted: Value = res.json().await.expect("the submit's answer as JSON");
    accepted["jobId"].as_str().unwrap_or_else(|| panic!("no jobId in {accepted}")).to_owned()
}

/// Nanoseconds of the clock: a suffix that differs between calls.
pub(super) fn rand_suffix() -> u128 {
    std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos()
}

pub(super) fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}
