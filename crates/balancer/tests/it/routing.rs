//! Routing by prefix, round-robin evenness, request ids, the balancer's own errors.

use std::collections::HashMap;

use crate::{Mode, TOKEN, TestBackend, TestBalancer, TestRegistry, http, read, three_registered};

#[tokio::test]
async fn round_robin_is_even_over_three_backends() {
    let registry = TestRegistry::start().await;
    let _backends = three_registered(&registry, "data").await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("data", &["data-1", "data-2", "data-3"]).await;

    let http = http();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..31 {
        let (status, instance, body) =
            read(http.get(balancer.at(&format!("/api/data/item-{i}"))).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        let instance = instance.expect("X-Upstream-Instance on every proxied answer");
        assert_eq!(body["instance"], instance.as_str());
        assert_eq!(body["path"], format!("/api/data/item-{i}"), "the path is kept");
        *counts.entry(instance).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
    assert!(max - min <= 1, "counts within one of each other: {counts:?}");

    // After a reset, rotation starts again from the first instance.
    let res = http.post(balancer.at("/api/round-robin/reset")).send().await.unwrap();
    assert_eq!(res.status(), 401, "the reset needs the cluster token");
    let res = http.post(balancer.at("/api/round-robin/reset")).bearer_auth(TOKEN).send().await.unwrap();
    let (status, _, body) = read(res).await;
    assert_eq!((status, body["message"].as_str()), (200, Some("round-robin counters reset")));
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await.1.unwrap());
    }
    assert_eq!(order, vec!["data-1", "data-2", "data-3", "data-1"]);
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_created() {
    let backend = TestBackend::start("data-1").await;
    let ports = backend.port().to_string();
    let balancer =
        TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &ports)]).await;
    let http = http();

    let res = http.get(balancer.at("/api/data/a")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let (_, instance, body) = read(res).await;
    assert_eq!(instance.as_deref(), Some("data-1"));
    assert_eq!(body["requestId"], "abc-123", "the backend sees the same id");

    let res = http.get(balancer.at("/api/data/a")).send().await.unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let (_, _, body) = read(res).await;
    assert_eq!(body["requestId"], id.as_str());

    // The balancer's own answers carry one too.
    let res = http.get(balancer.at("/status")).send().await.unwrap();
    assert!(res.headers().contains_key("x-request-id"));
    balancer.stop().await;
}

#[tokio::test]
async fn backends_learn_the_client_address_whatever_the_client_forged() {
    // data-1 answers 503 to requests (GETs are then retried on data-2), so some of the
    // requests data-2 sees are retries.
    let failing = TestBackend::start("data-1").await;
    failing.fail_with(503);
    let backend = TestBackend::start("data-2").await;
    let ports = format!("{},{}", failing.port(), backend.port());
    let balancer =
        TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &ports)]).await;
    let http = http();

    for _ in 0..4 {
        let res = http
            .get(balancer.at("/api/data/who"))
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-real-ip", "5.6.7.8")
            .send()
            .await
            .unwrap();
        let (status, instance, body) = read(res).await;
        assert_eq!((status, instance.as_deref()), (200, Some("data-2")), "{body}");
        assert_eq!(body["forwardedFor"], "1.2.3.4, 127.0.0.1", "the peer appended: the last entry is the balancer's");
        assert_eq!(body["realIp"], "127.0.0.1", "the client's X-Real-IP replaced");
    }
    assert!(failing.received() >= 1, "some requests went to data-1 first and were retried");
    assert!(balancer.metrics().await["retries"].as_u64().unwrap() >= 1);

    // Without headers of the client's own; and naming them in `Connection` removes nothing.
    failing.set_mode(Mode::Ok);
    for _ in 0..2 {
        let res = http.get(balancer.at("/api/data/who")).header("connection", "x-forwarded-for, x-real-ip");
        let (status, _, body) = read(res.send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((&body["forwardedFor"], &body["realIp"]), (&"127.0.0.1".into(), &"127.0.0.1".into()), "{body}");
    }
    balancer.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let balancer = TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false")]).await;
    let http = http();
    for path in ["/nowhere", "/api/authentic", "/"] {
        let res = http.get(balancer.at(path)).send().await.unwrap();
        assert!(res.headers().contains_key("x-request-id"));
        let (status, instance, body) = read(res).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(instance, None);
        assert_eq!(body["error"], format!("no route for GET {path}"));
    }
    balancer.stop().await;
}

#[tokio::test]
async fn routes_come_from_configuration() {
    let web = TestBackend::start("web-a").await;
    let slow = TestBackend::start("slow-a").await;
    let (web_port, slow_port) = (web.port().to_string(), slow.port().to_string());
    let balancer = TestBalancer::start(
        "http://127.0.0.1:9",
        &[
            ("USE_DYNAMIC_DISCOVERY", "false"),
            ("ROUTES", "/=web,/api/slow=slow-svc"),
            ("WEB_PORTS", &web_port),
            ("SLOW_SVC_PORTS", &slow_port),
        ],
    )
    .await;
    let http = http();
    let (status, instance, _) = read(http.get(balancer.at("/anything/else")).send().await.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("web-1")));
    let (status, instance, _) = read(http.get(balancer.at("/api/slow/x")).send().await.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("slow-svc-1")));
    // The balancer's own endpoints come first, even under a catch-all route.
    let status = balancer.status().await;
    assert_eq!(status["routes"]["/"], "web");
    assert_eq!(status["discovery"], "static");
    assert_eq!(web.received(), 1);
    balancer.stop().await;
}

#[tokio::test]
async fn least_request_prefers_idle_instances() {
    let registry = TestRegistry::start().await;
    let backends = three_registered(&registry, "compute").await;
    // Health checks that a loaded machine cannot fail in time: were the idle instances taken
    // out of rotation, the busy one would be tried as the last resort.
    let settings = [("BALANCE_STRATEGY", "least-request"), ("HEALTH_CHECK_TIMEOUT_MS", "30000")];
    let balancer = TestBalancer::start(&registry.url, &settings).await;
    balancer.wait_for_instances("compute", &["compute-1", "compute-2", "compute-3"]).await;
    assert_eq!(balancer.status().await["strategy"], "least-request");

    // compute-1 holds requests forever: it keeps one in flight, so it is picked less.
    backends[0].set_mode(crate::Mode::Hang);
    let http = http();
    let mut stuck = Vec::new();
    crate::eventually(crate::WAIT, "a request stuck on compute-1", || {
        // Each try sends one more request; the ones that land on compute-1 stay there.
        let (http, url) = (http.clone(), balancer.at("/api/compute/stuck"));
        stuck.push(tokio::spawn(async move { http.get(url).send().await }));
        async {
            let status = balancer.status().await;
            let instances = status["services"]["compute"]["instances"].as_array()?.clone();
            let first = instances.iter().find(|i| i["id"] == "compute-1")?;
            (first["inFlight"].as_u64()? >= 1).then_some(())
        }
    })
    .await;
    // The tries that landed on the others are answered (a tie with compute-1 could pick it).
    crate::eventually(crate::WAIT, "nothing in flight but on compute-1", || async {
        let status = balancer.status().await;
        let instances = status["services"]["compute"]["instances"].as_array()?.clone();
        let others: Option<Vec<u64>> =
            instances.iter().filter(|i| i["id"] != "compute-1").map(|i| i["inFlight"].as_u64()).collect();
        others?.iter().all(|&n| n == 0).then_some(())
    })
    .await;
    // With compute-1 busy, two choices always include an idle instance, which wins.
    for _ in 0..20 {
        let (status, instance, _) = read(http.get(balancer.at("/api/compute/x")).send().await.unwrap()).await;
        assert_eq!(status, 200);
        assert_ne!(instance.as_deref(), Some("compute-1"));
    }
    stuck.iter().for_each(|s| s.abort());
    balancer.stop().await;
    registry.stop().await;
}
