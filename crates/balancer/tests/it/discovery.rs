//! Discovery: the registry's watch, static fallback, and the way back.

use std::collections::HashSet;

use crate::{TestBackend, TestBalancer, TestRegistry, WAIT, eventually, http, read, three_registered};

async fn hits(balancer: &TestBalancer, path: &str, n: usize) -> HashSet<String> {
    let http = http();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (status, instance, body) = read(http.get(balancer.at(path)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        seen.insert(instance.unwrap());
    }
    seen
}

#[tokio::test]
async fn a_deregistered_instance_leaves_rotation() {
    let registry = TestRegistry::start().await;
    let backends = three_registered(&registry, "auth").await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("auth", &["auth-1", "auth-2", "auth-3"]).await;
    assert_eq!(balancer.status().await["discovery"], "dynamic");

    registry.deregister(&backends[1]).await;
    balancer.wait_for_instances("auth", &["auth-1", "auth-3"]).await;
    let before = backends[1].received();
    let seen = hits(&balancer, "/api/auth/x", 12).await;
    assert_eq!(seen, HashSet::from(["auth-1".to_owned(), "auth-3".to_owned()]));
    assert_eq!(backends[1].received(), before, "no request reached the deregistered instance");
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn a_killed_instance_leaves_rotation() {
    let registry = TestRegistry::start().await;
    let mut backends = three_registered(&registry, "data").await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("data", &["data-1", "data-2", "data-3"]).await;

    backends[0].kill().await;
    // Requests keep succeeding (the refused attempt goes elsewhere) and data-1 drops out.
    let seen = hits(&balancer, "/api/data/x", 12).await;
    assert!(!seen.contains("data-1"), "{seen:?}");
    let status = balancer.status().await;
    let dead =
        status["services"]["data"]["instances"].as_array().unwrap().iter().find(|i| i["id"] == "data-1").cloned();
    assert!(dead.as_ref().is_some_and(|d| d["ejected"] == true || d["healthy"] == false), "{status}");
    assert_eq!(status["services"]["data"]["healthy"], 2);
    let attempts = dead.unwrap()["requests"].as_u64().unwrap();
    hits(&balancer, "/api/data/x", 6).await;
    let status = balancer.status().await;
    let dead =
        status["services"]["data"]["instances"].as_array().unwrap().iter().find(|i| i["id"] == "data-1").cloned();
    assert_eq!(dead.unwrap()["requests"].as_u64().unwrap(), attempts, "no more attempts on the ejected instance");
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn a_new_registration_joins_without_restart() {
    let registry = TestRegistry::start().await;
    let first = TestBackend::start("compute-1").await;
    registry.register("compute", &first).await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("compute", &["compute-1"]).await;

    let second = TestBackend::start("compute-2").await;
    registry.register("compute", &second).await;
    balancer.wait_for_instances("compute", &["compute-1", "compute-2"]).await;
    let seen = hits(&balancer, "/api/compute/x", 4).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(second.received() >= 2);
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn static_ports_when_dynamic_discovery_is_off() {
    let registry = TestRegistry::start().await;
    let registered = TestBackend::start("data-registered").await;
    registry.register("data", &registered).await;
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let ports = format!("{},{}", a.port(), b.port());
    let balancer =
        TestBalancer::start(&registry.url, &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &ports)]).await;
    let status = balancer.status().await;
    assert_eq!(status["discovery"], "static");
    let urls: Vec<&str> = status["services"]["data"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, vec![a.url(), b.url()]);
    let seen = hits(&balancer, "/api/data/x", 4).await;
    assert_eq!(seen, HashSet::from(["data-1".to_owned(), "data-2".to_owned()]));
    assert_eq!(registered.received(), 0, "the registry is not consulted");
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn static_fallback_while_the_registry_is_unreachable_then_dynamic_again() {
    let static_backend = TestBackend::start("static").await;
    let ports = static_backend.port().to_string();
    // A port where the registry will come up later; nothing listens there yet.
    let registry_port = crate::closed_port().await;
    let registry_url = format!("http://127.0.0.1:{registry_port}");
    let balancer = TestBalancer::start(
        &registry_url,
        &[("AUTH_PORTS", &ports), ("DISCOVERY_SETTLE_MS", "300"), ("HEALTH_CHECK_INTERVAL_MS", "60000")],
    )
    .await;
    assert_eq!(balancer.status().await["discovery"], "static");
    assert_eq!(hits(&balancer, "/api/auth/x", 2).await, HashSet::from(["auth-1".to_owned()]));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", registry_port)).await.unwrap();
    let registry = TestRegistry::start_on(listener);
    let dynamic = TestBackend::start("auth-dynamic").await;
    registry.register("auth", &dynamic).await;
    eventually(WAIT, "dynamic discovery again", || async {
        (balancer.status().await["discovery"] == "dynamic").then_some(())
    })
    .await;
    // After the settle time, only what the registry lists is routed.
    balancer.wait_for_instances("auth", &["auth-dynamic"]).await;
    assert_eq!(hits(&balancer, "/api/auth/x", 3).await, HashSet::from(["auth-dynamic".to_owned()]));
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn requests_that_arrive_before_the_first_discovery_wait_for_it() {
    // The registry knows auth-1, but answers only once the test opens the gate in front of
    // it: until then the balancer has discovered nothing (a balancer restarted under orch
    // finds requests queued on its socket before its first discovery is done).
    let registry = TestRegistry::start().await;
    let backend = TestBackend::start("auth-1").await;
    registry.register("auth", &backend).await;
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}", gate.local_addr().unwrap());
    let target = registry.url.trim_start_matches("http://").to_owned();
    let (open, opened) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = opened.await;
        while let Ok((mut inbound, _)) = gate.accept().await {
            let mut outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });

    let balancer = TestBalancer::spawn(&gate_url, &[]).await;
    let request = tokio::spawn(http().get(balancer.at("/api/auth/x")).send());
    let request = kit::testing::still_pending(
        request,
        std::time::Duration::from_millis(300),
        "a request before the first discovery (it must wait, not get 503)",
    )
    .await;
    open.send(()).unwrap();
    let (status, instance, body) = read(request.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(instance.as_deref(), Some("auth-1"));
    assert_eq!(backend.received(), 1);
    balancer.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn a_deregistered_instance_stays_in_metrics_while_requests_are_in_flight() {
    let registry = TestRegistry::start().await;
    let backends = three_registered(&registry, "data").await;
    let balancer = TestBalancer::start(&registry.url, &[]).await;
    balancer.wait_for_instances("data", &["data-1", "data-2", "data-3"]).await;

    backends[0].set_mode(crate::Mode::Hold);
    balancer.reset_round_robin().await;
    let held = tokio::spawn(http().get(balancer.at("/api/data/held")).send());
    let in_flight =
        |metrics: serde_json::Value| metrics["services"]["data"]["instances"]["data-1"]["inFlight"].as_u64();
    eventually(WAIT, "a request in flight on data-1", || async {
        (in_flight(balancer.metrics().await) == Some(1)).then_some(())
    })
    .await;

    // Out of rotation (orch's first condition), but its request is still counted (the second).
    registry.deregister(&backends[0]).await;
    balancer.wait_for_instances("data", &["data-2", "data-3"]).await;
    assert_eq!(in_flight(balancer.metrics().await), Some(1));

    backends[0].release();
    let (status, instance, _) = read(held.await.unwrap().unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("data-1")));
    eventually(WAIT, "nothing in flight on data-1", || async {
        (in_flight(balancer.metrics().await).unwrap_or(0) == 0).then_some(())
    })
    .await;
    balancer.stop().await;
    registry.stop().await;
}
