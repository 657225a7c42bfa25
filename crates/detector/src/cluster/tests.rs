//! The cluster's pure state: targets from registry records and orch's instances, down and
//! recovery alerts, registry changes, orch's exits and events.

use super::*;

fn record(id: &str, ty: &str, port: u16, healthy: bool) -> ServiceRecord {
    ServiceRecord {
        service_id: id.into(),
        service_type: ty.into(),
        url: format!("http://localhost:{port}"),
        name: id.into(),
        metadata: Default::default(),
        registered_at: String::new(),
        last_heartbeat: String::new(),
        healthy,
    }
}

fn orch_instance(name: &str, port: u16, status: &str, restarts: u32) -> OrchInstance {
    serde_json::from_value(serde_json::json!({
        "name": name, "service": name.rsplit_once('-').map_or(name, |(s, _)| s), "ordinal": 1,
        "pid": 42, "port": port, "url": format!("http://localhost:{port}"), "status": status,
        "ready": status == "running", "restarts": restarts, "startedAt": null, "lastExit": null,
    }))
    .unwrap()
}

fn event(seq: u64, kind: &str, instance: &str) -> OrchEvent {
    serde_json::from_value(serde_json::json!({
        "seq": seq, "time": "2026-01-01T00:00:00.000Z", "type": kind, "service": "auth",
        "instance": instance, "message": format!("{instance} {kind}"),
    }))
    .unwrap()
}

/// Records a check of a round that begins now.
fn check(cluster: &mut Cluster, id: &str, at: Millis, outcome: CheckOutcome) -> Option<Alert> {
    let epoch = cluster.round().epoch;
    cluster.record(&Key::Instance(id.into()), epoch, at, outcome)
}

fn healthy() -> CheckOutcome {
    CheckOutcome::Healthy { ms: 1.0 }
}

fn cluster() -> Cluster {
    let mut cluster = Cluster::new(10, "http://localhost:3000", "http://localhost:3005");
    let (changed, alerts) =
        cluster.sync_registry(&[record("auth-1", "auth", 3001, true), record("auth-2", "auth", 3002, true)], 0);
    assert!(changed && alerts.is_empty());
    cluster
}

fn status_of(cluster: &Cluster, id: &str) -> Status {
    cluster.instances[id].machine.status()
}

#[test]
fn targets_are_instances_plus_balancer_and_registry() {
    let cluster = cluster();
    let targets = cluster.round().targets;
    assert_eq!(targets.len(), 4);
    assert_eq!(targets[0], (Key::Balancer, "http://127.0.0.1:3000/health".to_owned()));
    assert_eq!(targets[1], (Key::Registry, "http://127.0.0.1:3005/health".to_owned()));
    assert_eq!(targets[2], (Key::Instance("auth-1".into()), "http://127.0.0.1:3001/health".to_owned()));
}

#[test]
fn down_and_recovery_alerts() {
    let mut cluster = cluster();
    assert_eq!(check(&mut cluster, "auth-1", 1, healthy()), None);
    let failed = CheckOutcome::Failed { ms: None, error: "timeout after 2000 ms".into() };
    let alert = check(&mut cluster, "auth-1", 2, failed).unwrap();
    assert_eq!((alert.id, alert.kind, alert.service_id.as_str()), (1, AlertKind::Down, "auth-1"));
    assert_eq!(alert.message, "auth-1 (auth) is down: timeout after 2000 ms");
    let alert = check(&mut cluster, "auth-1", 2_502, healthy()).unwrap();
    assert_eq!(alert.kind, AlertKind::Recovered);
    assert_eq!(alert.message, "auth-1 (auth) recovered after 2.5 s");
    let feed: Vec<u64> = cluster.alerts().map(|a| a.id).collect();
    assert_eq!(feed, [2, 1], "newest first");
}

#[test]
fn registry_changes() {
    let mut cluster = cluster();
    check(&mut cluster, "auth-1", 1, healthy());
    // Unhealthy in the registry: down at once, with an alert, and checks cannot undo it.
    let (_, alerts) =
        cluster.sync_registry(&[record("auth-1", "auth", 3001, false), record("auth-2", "auth", 3002, true)], 5);
    assert_eq!(alerts.len(), 1);
    assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
    assert_eq!(check(&mut cluster, "auth-1", 7, healthy()), None);
    assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
    // Healthy again: a check now, which recovers it.
    let (changed, _) =
        cluster.sync_registry(&[record("auth-1", "auth", 3001, true), record("auth-2", "auth", 3002, true)], 8);
    assert!(changed);
    let alert = check(&mut cluster, "auth-1", 10, healthy()).unwrap();
    assert_eq!(alert.kind, AlertKind::Recovered);
    // Removed: gone from the targets, no alert.
    let (changed, alerts) = cluster.sync_registry(&[record("auth-2", "auth", 3002, true)], 11);
    assert!(changed && alerts.is_empty());
    assert_eq!(cluster.round().targets.len(), 3);
    assert_eq!(check(&mut cluster, "auth-1", 13, healthy()), None);
    // Nothing changed: not a change.
    let (changed, _) = cluster.sync_registry(&[record("auth-2", "auth", 3002, true)], 14);
    assert!(!changed);
}

#[test]
fn an_orch_exit_is_down_at_once_and_stale_checks_do_not_undo_it() {
    let mut cluster = cluster();
    assert!(cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 0)], 0).0);
    assert!(!cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 0)], 0).0, "nothing new");
    check(&mut cluster, "auth-1", 1, healthy());
    let before = cluster.round();
    let alerts = cluster.orch_event(event(7, "exited", "auth-1"), true, 10);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].message, "auth-1 (auth) is down: orch: auth-1 exited");
    assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
    // A check of a round that began before the exit and ends after it says nothing.
    assert_eq!(cluster.record(&Key::Instance("auth-1".into()), before.epoch, 11, healthy()), None);
    assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
    // orch restarted it: a fresh check recovers it, and the restart count shows.
    cluster.orch_event(event(8, "restarted", "auth-1"), true, 12);
    cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 1)], 12);
    assert_eq!(check(&mut cluster, "auth-1", 14, healthy()).unwrap().kind, AlertKind::Recovered);
    assert_eq!(cluster.instances["auth-1"].orch.as_ref().unwrap().restarts, 1);
    let kinds: Vec<&str> = cluster.events().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["restarted", "exited"]);
}

#[test]
fn history_events_do_not_alert() {
    let mut cluster = cluster();
    check(&mut cluster, "auth-1", 1, healthy());
    assert!(cluster.orch_event(event(1, "exited", "auth-1"), false, 2).is_empty());
    assert_eq!(status_of(&cluster, "auth-1"), Status::Up);
}

#[test]
fn orch_says_not_running() {
    let mut cluster = cluster();
    check(&mut cluster, "auth-2", 1, healthy());
    let (_, alerts) = cluster.sync_orch(&[orch_instance("auth-2", 3002, "crashloop", 5)], 2);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].message, "auth-2 (auth) is down: orch reports it crashloop");
    // The held socket may still answer: a check cannot bring it back while orch says so.
    assert_eq!(check(&mut cluster, "auth-2", 4, healthy()), None);
    assert_eq!(status_of(&cluster, "auth-2"), Status::Down);
    // The same report again is no new alert.
    assert!(cluster.sync_orch(&[orch_instance("auth-2", 3002, "crashloop", 6)], 5).1.is_empty());
}

#[test]
fn infrastructure_is_matched_to_orch_by_url() {
    let mut cluster = cluster();
    cluster.sync_orch(&[orch_instance("registry-1", 3005, "running", 2)], 0);
    assert_eq!(cluster.registry.orch.as_ref().unwrap().restarts, 2);
    let alerts = cluster.orch_event(event(3, "exited", "registry-1"), true, 1);
    assert_eq!(alerts.len(), 0, "never seen up: down without an alert");
    assert_eq!(cluster.registry.machine.status(), Status::Down);
}

#[test]
fn status_views() {
    let mut cluster = cluster();
    check(&mut cluster, "auth-1", 1, healthy());
    check(&mut cluster, "auth-2", 1, CheckOutcome::Failed { ms: Some(2.0), error: "status 503".into() });
    let status = serde_json::to_value(cluster.status(History::All)).unwrap();
    assert_eq!(status["summary"], serde_json::json!({"total": 2, "healthy": 1, "unhealthy": 1, "unknown": 0}));
    let auth1 = &status["services"]["auth"][0];
    assert_eq!(auth1["serviceId"], "auth-1");
    assert_eq!(auth1["status"], "up");
    assert_eq!(auth1["healthy"], true);
    assert_eq!(auth1["port"], 3001);
    assert_eq!(auth1["url"], "http://localhost:3001");
    assert_eq!(auth1["history"], serde_json::json!([{"t": 1, "ms": 1.0, "ok": true}]));
    assert_eq!(status["services"]["auth"][1]["lastError"], "status 503");
    assert_eq!(status["balancer"]["status"], "unknown");
    assert!(status["balancer"].get("registryHealthy").is_none());

    let view = serde_json::to_value(cluster.service_status("auth", History::None).unwrap()).unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), 2);
    assert!(view["instances"][0].get("history").is_none());
    assert!(cluster.service_status("nope", History::None).is_none());
    assert_eq!(cluster.service_status("balancer", History::None).unwrap().instances[0].service_id, "balancer");
}

#[test]
fn durations() {
    assert_eq!(human_duration(250), "250 ms");
    assert_eq!(human_duration(61_000), "1m 1s");
}

#[test]
fn a_failed_rollout_and_its_rollback_are_alerts_of_the_service() {
    let mut cluster = cluster();
    let rollout = |seq, kind: &str, message: &str| -> OrchEvent {
        serde_json::from_value(serde_json::json!({
            "seq": seq, "time": "2026-01-01T00:00:00.000Z", "type": kind, "service": "auth",
            "instance": null, "message": message,
        }))
        .unwrap()
    };
    // Read at start (history): no alert.
    assert!(cluster.orch_event(rollout(1, "rollout-failed", "auth rollout #2 failed: x"), false, 1).is_empty());
    let alerts = cluster.orch_event(rollout(2, "rollout-failed", "auth rollout #3 failed: y"), true, 2);
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].kind, alerts[0].service_id.as_str()), (AlertKind::Rollout, "auth"));
    assert_eq!(alerts[0].message, "orch: auth rollout #3 failed: y");
    let alerts = cluster.orch_event(rollout(3, "rolled-back", "auth back on #1"), true, 3);
    assert_eq!(alerts[0].kind, AlertKind::Rollout);
    assert_eq!(cluster.alerts().count(), 2);
    // Other events of a service raise nothing.
    assert!(cluster.orch_event(rollout(4, "rolled", "auth rolled out"), true, 4).is_empty());
}
