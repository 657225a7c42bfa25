//! `orch chaos partition` on the shipped topology with `ORCH_PARTITIONS=1` (every instance
//! reaches the registry through a link orch can cut): a partitioned data instance is
//! expired by the registry and the balancer routes around it while its process runs on;
//! once healed it registers again and the balancer routes to it again. The registry's own
//! instance has no link, so it cannot be partitioned.

use e2e::cluster::{DEADLINE, stderr, stdout};
use e2e::eventually;
use e2e::topology::Topology;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_instance_is_expired_routed_around_and_comes_back() {
    let topology = Topology::new().orch_env("ORCH_PARTITIONS", "1");
    let cluster = topology.start().await;
    let registry = cluster.url_of("registry-1").await;
    let pid = cluster.pid("data-2").await;
    let http = reqwest::Client::new();
    let record = |id: &'static str| {
        let (http, url) = (http.clone(), format!("{registry}/api/registry/service/{id}"));
        async move { http.get(url).send().await.ok().map(|r| r.status().as_u16()) }
    };
    assert_eq!(record("data-2").await, Some(200));

    let run = cluster.cli(&["chaos", "partition", "data-2", "--duration", "12s"]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "stdout:\n{text}\nstderr:\n{}", stderr(&run));
    assert!(text.contains("cut data-2 off from the registry for 12s"), "{text}");

    // The registry stops hearing from it: the balancer routes to the others only, and the
    // registry forgets it (REMOVE_TIMEOUT_MS, twice the topology's 3 s STALE_TIMEOUT_MS).
    let others: Vec<String> = topology.backend_instances().into_iter().filter(|n| n != "data-2").collect();
    cluster.wait_routed(&others).await;
    eventually(DEADLINE, "the registry forgetting data-2", || async {
        (record("data-2").await == Some(404)).then_some(())
    })
    .await;
    // Its process ran on all along: only its link to the registry was cut.
    assert_eq!(cluster.pid("data-2").await, pid);
    assert_eq!(record("data-1").await, Some(200), "the other instances stay registered");

    // Healed: it registers again (the registry had forgotten it) and is routed to again.
    cluster.wait_event("chaos", Some("data-2"), "healed data-2's link to the registry").await;
    cluster.wait_routed(&topology.backend_instances()).await;
    assert_eq!(record("data-2").await, Some(200));
    assert_eq!(cluster.pid("data-2").await, pid);

    // The registry has no link of its own to cut.
    let refused = cluster.cli(&["chaos", "partition", "registry-1", "--duration", "1s"]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(stderr(&refused).contains("no link to the registry"), "{}", stderr(&refused));
}
