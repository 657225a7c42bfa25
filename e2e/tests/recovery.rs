//! The cluster's own parts killed: the registry and the balancer (orch restarts them on the
//! sockets it holds, discovery refills, traffic resumes), and orch itself (no process of the
//! cluster survives it, and `orch apply` again comes up clean on the same data).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::cluster::{Cluster, gone};
use e2e::eventually;
use e2e::topology::Topology;
use e2e::traffic::{Api, Load, Mix};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_and_the_balancer_killed_come_back_and_traffic_resumes() {
    let topology = Topology::new();
    let cluster = topology.start().await;
    let backends = topology.backend_instances();
    let balancer = cluster.url_of("balancer-1").await;
    let registry = cluster.url_of("registry-1").await;
    let api = Api::new(&balancer).signed_up("survivor", "pass123").await;
    let load = Load::start(&api, "recovery", Mix::default());
    load.wait_for(100).await;

    // The registry dies; orch restarts it and every instance registers again on its next
    // heartbeat, while the balancer keeps routing to the instances it knew.
    let old = cluster.kill("registry-1").await;
    let killed = Instant::now();
    cluster.wait_replaced("registry-1", old).await;
    let mut expected: BTreeSet<String> = backends.iter().cloned().collect();
    expected.extend(["balancer-1".to_owned(), "detector-1".to_owned()]);
    eventually(DEADLINE, "the restarted registry listing every instance again", || async {
        let list: Value =
            api.http.get(format!("{registry}/api/registry/services")).send().await.ok()?.json().await.ok()?;
        let healthy: BTreeSet<String> = list["services"]
            .as_array()?
            .iter()
            .filter(|r| r["healthy"] == true)
            .filter_map(|r| Some(r["serviceId"].as_str()?.to_owned()))
            .collect();
        (healthy == expected).then_some(())
    })
    .await;
    let refilled = killed.elapsed();
    cluster.wait_routed(&backends).await;
    load.wait_for(200).await;

    // No request failed through the registry's restart (counted before the balancer dies).
    let (_, failed_before) = load.counts();

    // The balancer dies; orch restarts it on the same socket, it discovers every instance
    // from the registry again, and client traffic goes on.
    let balancer_killed = Instant::now();
    let old = cluster.kill("balancer-1").await;
    cluster.wait_replaced("balancer-1", old).await;
    let routed = cluster.wait_routed(&backends).await;
    let recovered = Instant::now();
    assert_eq!(routed["discovery"], "dynamic", "{routed}");
    load.wait_for(300).await;
    let report = load.stop().await;

    let during = report.failures.len() - failed_before;
    println!("registry: killed, back and refilled with all {} instances in {refilled:.2?}", expected.len());
    println!(
        "balancer: killed, back and routing to all {} instances in {:.2?}",
        backends.len(),
        recovered - balancer_killed
    );
    println!("load: {report}");
    println!("failed requests around the balancer's death (in flight, or sent before it was back): {during}");
    print!("{}", report.failure_lines(10));
    assert_eq!(failed_before, 0, "a registry restart costs no request:\n{}", report.failure_lines(20));
    let after = report.failures_since(recovered);
    assert!(after.is_empty(), "requests after the balancer's recovery failed: {after:?}");
    assert!(report.requests >= 600, "{report}");
    let checked = report.read_back(&api).await;
    assert!(checked >= 50, "{report}");

    for name in ["registry-1", "balancer-1"] {
        let i = cluster.instance(name).await;
        assert_eq!(i["restarts"], 1, "{i}");
        assert_eq!(i["lastExit"]["signal"], "SIGKILL", "{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_orch_leaves_no_process_and_apply_again_finds_the_data_intact() {
    let topology = Topology::new();
    let mut cluster = topology.start().await;
    let api = Api::new(&cluster.url_of("balancer-1").await).signed_up("keeper", "pass123").await;

    // Items, some updated, and a finished job.
    let mut items = Vec::new();
    for n in 0..20 {
        let res = api
            .request(Method::POST, "/api/data")
            .json(&json!({"key": format!("kept:{n:02}"), "value": {"n": n}, "metadata": {"batch": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let mut item: Value = res.json().await.unwrap();
        if n % 4 == 0 {
            let res = api
                .request(Method::PUT, &format!("/api/data/kept:{n:02}"))
                .header("if-match", "1")
                .json(&json!({"value": {"n": n, "updated": true}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            item = res.json().await.unwrap();
        }
        items.push(item);
    }
    let res = api
        .request(Method::POST, "/api/compute/job")
        .json(&json!({"operation": "factorial", "operands": [30]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job_id = res.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_owned();
    let job = eventually(DEADLINE, "the job completed", || async {
        let (status, job) = api.get(&format!("/api/compute/job/{job_id}")).await;
        (status == 200 && job["status"] == "completed").then_some(job)
    })
    .await;

    // orch gets SIGKILL: every process it ran dies with it.
    let children: Vec<u32> = cluster.pids().await.iter().map(|(_, pid, _)| pid.unwrap() as u32).collect();
    assert_eq!(children.len(), topology.instances().len());
    cluster.signal(Signal::SIGKILL);
    cluster.wait_exit(DEADLINE).expect("orch died");
    let orch_died = Instant::now();
    eventually(DEADLINE, "every process of the cluster gone", || async {
        children.iter().all(|&pid| gone(pid)).then_some(())
    })
    .await;
    println!("all {} children gone {:.2?} after orch died", children.len(), orch_died.elapsed());

    // `orch apply` again on the same manifest and data dir comes up clean.
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    drop(cluster);
    let started = Instant::now();
    let cluster = Cluster::start_in(dir).await;
    let names = topology.instances();
    cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    cluster.wait_routed(&topology.backend_instances()).await;
    println!("orch apply again: ready and routed in {:.2?}", started.elapsed());
    let state = cluster.get("/api/cluster").await;
    assert!(state["lastError"].is_null(), "{state}");
    for i in cluster.instances().await {
        assert_eq!((i["status"].as_str(), i["restarts"].as_u64()), (Some("running"), Some(0)), "{i}");
    }

    // The user signs in again (and the old token still verifies: the secret is in the data
    // dir); every item and the job read back unchanged.
    let mut api = Api::new(&cluster.url_of("balancer-1").await).with_token(api.token.clone());
    let (status, verify) = api.get("/api/auth/verify").await;
    assert_eq!((status.as_u16(), &verify["user"]["username"]), (200, &json!("keeper")), "{verify}");
    assert_eq!(api.register("keeper", "pass123").await.status(), 409, "the account is still there");
    api.token = Some(api.login("keeper", "pass123").await);
    for item in &items {
        let (status, read) = api.get(&format!("/api/data/{}", item["key"].as_str().unwrap())).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(&read, item);
    }
    let (_, list) = api.get("/api/data?prefix=kept:").await;
    assert_eq!(list["items"].as_array().unwrap().len(), items.len(), "{list}");
    let (status, again) = api.get(&format!("/api/compute/job/{job_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again, job);
    assert_eq!(again["result"], "265252859812191058636308480000000", "{again}");
    println!("{} items, the user and the job intact", items.len());
}
