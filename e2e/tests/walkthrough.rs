//! The original system's walkthrough, on the full cluster run by the real `orch apply`
//! (automatic ports, a temporary data dir): the registry lists every instance by type, the
//! balancer routes to them all, a user registers and signs in through the balancer,
//! registrations go round-robin over the three auth instances, data CRUD and compute (direct
//! and a job) work with the token, and the detector reports every instance healthy.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::eventually;
use e2e::topology::Topology;
use e2e::traffic::Api;
use reqwest::Method;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_walkthrough_works_through_the_balancer() {
    let topology = Topology::new();
    let cluster = topology.start().await;
    let instances = cluster.instances().await;
    let orch_url = |name: &str| {
        instances.iter().find(|i| i["name"] == name).map(|i| i["url"].as_str().unwrap().to_owned()).unwrap()
    };
    let http = reqwest::Client::new();

    // The registry lists the nine service instances by type, at the ports orch gave them.
    let registry = cluster.url_of("registry-1").await;
    for service in ["auth", "data", "compute"] {
        let list: Value =
            http.get(format!("{registry}/api/registry/services/{service}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(list["total"], 3, "{list}");
        let mut listed: Vec<(String, String, bool)> = list["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["serviceType"], service, "{r}");
                (
                    r["serviceId"].as_str().unwrap().to_owned(),
                    r["url"].as_str().unwrap().to_owned(),
                    r["healthy"] == true,
                )
            })
            .collect();
        listed.sort();
        let expected: Vec<(String, String, bool)> =
            (1..=3).map(|n| format!("{service}-{n}")).map(|name| (name.clone(), orch_url(&name), true)).collect();
        assert_eq!(listed, expected);
    }
    let all: Value = http.get(format!("{registry}/api/registry/services")).send().await.unwrap().json().await.unwrap();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for r in all["services"].as_array().unwrap() {
        *by_type.entry(r["serviceType"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(by_type["auth"] + by_type["data"] + by_type["compute"], 9, "{all}");
    println!("registry lists {} instances by type: {by_type:?}", all["total"]);

    // The balancer's status shows the three pools, every instance healthy.
    let balancer = cluster.url_of("balancer-1").await;
    let status: Value = http.get(format!("{balancer}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["discovery"], "dynamic", "{status}");
    assert_eq!(status["routes"], json!({"/api/auth": "auth", "/api/data": "data", "/api/compute": "compute"}));
    for service in ["auth", "data", "compute"] {
        let pool = &status["services"][service];
        assert_eq!((pool["total"].as_u64(), pool["healthy"].as_u64()), (Some(3), Some(3)), "{service}: {pool}");
        let mut ids: Vec<&str> =
            pool["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=3).map(|n| format!("{service}-{n}")).collect::<Vec<_>>(), "{pool}");
        for i in pool["instances"].as_array().unwrap() {
            assert_eq!(i["url"], orch_url(i["id"].as_str().unwrap()), "{i}");
        }
    }

    // A user registers through the balancer; the same name again is 409.
    let api = Api::new(&balancer);
    let res = api.register("ada", "pass123").await;
    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["username"], "ada", "{body}");
    assert_eq!(body["user"]["email"], "ada@example.com", "{body}");
    assert_eq!(api.register("ada", "pass123").await.status(), 409);

    // Ten registrations, one after another, go round-robin over the three auth instances.
    let mut upstreams = Vec::new();
    for n in 0..10 {
        let res = api.register(&format!("user{n}"), "pass123").await;
        assert_eq!(res.status(), 201);
        upstreams.push(res.headers()["x-upstream-instance"].to_str().unwrap().to_owned());
    }
    println!("ten registrations went to {upstreams:?}");
    let mut first_three = upstreams[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, ["auth-1", "auth-2", "auth-3"], "{upstreams:?}");
    for (n, upstream) in upstreams.iter().enumerate() {
        assert_eq!(upstream, &upstreams[n % 3], "strict rotation: {upstreams:?}");
    }

    // Login, verify, profile.
    let mut api = api;
    let token = api.login("ada", "pass123").await;
    api.token = Some(token);
    let (status, verify) = api.get("/api/auth/verify").await;
    assert_eq!(status, 200, "{verify}");
    assert_eq!((verify["valid"].clone(), verify["user"]["username"].clone()), (json!(true), json!("ada")), "{verify}");
    let (status, profile) = api.get("/api/auth/profile").await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["user"]["username"], "ada", "{profile}");
    assert_eq!(profile["user"]["id"], body["user"]["id"], "{profile}");

    // Data CRUD through the balancer, with the token (and refused without it).
    let anonymous = Api::new(&balancer);
    assert_eq!(anonymous.get("/api/data/user:1").await.0, 401);
    let res = api
        .request(Method::POST, "/api/data")
        .json(&json!({"key": "user:1", "value": {"name": "Ada"}, "metadata": {"tag": "demo"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!((created["version"].as_u64(), &created["value"]), (Some(1), &json!({"name": "Ada"})), "{created}");
    let (status, read) = api.get("/api/data/user:1").await;
    assert_eq!((status.as_u16(), &read["metadata"]), (200, &json!({"tag": "demo"})), "{read}");
    let update = |version: &str| {
        api.request(Method::PUT, "/api/data/user:1")
            .header("if-match", format!("\"{version}\""))
            .json(&json!({"value": {"name": "Ada L."}}))
    };
    let res = update("1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!((updated["version"].as_u64(), &updated["value"]), (Some(2), &json!({"name": "Ada L."})), "{updated}");
    assert_eq!(update("1").send().await.unwrap().status(), 412, "a stale version changes nothing");
    let (_, read) = api.get("/api/data/user:1").await;
    assert_eq!(read["version"], 2, "{read}");
    let res = api.request(Method::POST, "/api/data").json(&json!({"key": "user:2", "value": 2})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let (status, list) = api.get("/api/data?prefix=user:&limit=50").await;
    assert_eq!(status, 200, "{list}");
    let keys: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["user:1", "user:2"], "{list}");
    let res = api.request(Method::DELETE, "/api/data/user:1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(api.get("/api/data/user:1").await.0, 404);
    let (_, list) = api.get("/api/data?prefix=user:").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // Compute: direct answers, and a job polled to completion through the balancer.
    let api = &api;
    let direct = |body: Value| async move {
        let res = api.request(Method::POST, "/api/compute/direct").json(&body).send().await.unwrap();
        assert_eq!(res.status(), 200, "{body}");
        res.json::<Value>().await.unwrap()
    };
    let sum = direct(json!({"operation": "add", "operands": [1, 2, 3]})).await;
    assert_eq!(sum["result"], 6, "{sum}");
    assert!(sum["service"].as_str().unwrap().starts_with("compute-"), "{sum}");
    let factorial = direct(json!({"operation": "factorial", "operands": [25]})).await;
    assert_eq!(factorial["result"], "15511210043330985984000000", "{factorial}");
    assert_eq!(
        anonymous.request(Method::POST, "/api/compute/direct").json(&json!({})).send().await.unwrap().status(),
        401
    );

    let res = api
        .request(Method::POST, "/api/compute/job")
        .json(&json!({"operation": "fibonacci", "operands": [100], "priority": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(accepted["status"], "queued", "{accepted}");
    let id = accepted["jobId"].as_str().unwrap().to_owned();
    let job = eventually(DEADLINE, "the job completed", || async {
        let (status, job) = api.get(&format!("/api/compute/job/{id}")).await;
        (status == 200 && job["status"] == "completed").then_some(job)
    })
    .await;
    assert_eq!(job["result"], "354224848179261915075", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(job["worker"].as_str().unwrap().starts_with("compute-"), "{job}");

    // The detector: after a fresh round of checks, every instance is healthy.
    let detector = cluster.url_of("detector-1").await;
    let status = eventually(DEADLINE, "the detector reporting every instance up", || async {
        let res = http.post(format!("{detector}/api/check")).send().await.ok()?;
        let status: Value = res.json().await.ok()?;
        let summary = &status["summary"];
        (summary["total"] == 11 && summary["healthy"] == 11).then_some(status)
    })
    .await;
    let mut seen = Vec::new();
    for (service, members) in status["services"].as_object().unwrap() {
        for m in members.as_array().unwrap() {
            assert_eq!(m["status"], "up", "{service}: {m}");
            assert_eq!(m["healthy"], true, "{m}");
            seen.push(m["serviceId"].as_str().unwrap().to_owned());
        }
    }
    seen.sort();
    let mut expected: Vec<String> = topology.backend_instances();
    expected.extend(["balancer-1".to_owned(), "detector-1".to_owned()]);
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(status["balancer"]["status"], "up", "{status}");
    assert_eq!(status["registry"]["status"], "up", "{status}");
    println!("detector: {}", status["summary"]);
}
