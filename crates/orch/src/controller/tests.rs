//! The controller's lifecycle rules on a test double of the spawner (no processes): a
//! real controller loop, real timers, "processes" that end when the test or a signal says.

use std::sync::Arc;
use std::time::Duration;

use kit::orch_api::{EventKind, Instance as View, Status};
use kit::secret::Secret;
use kit::testing::eventually;
use nix::sys::signal::Signal;

use super::{Controller, Handle, Setup};
use crate::events::EventLog;
use crate::state::StateFile;
use crate::supervisor::cgroup::{Cgroups, Ctl};
use crate::supervisor::double::{Record, TestSpawner};

/// Generous: the machine may be busy; nothing here takes that long when it is not.
const DEADLINE: Duration = Duration::from_secs(20);

/// A controller running `services` (manifest lines) on a [`TestSpawner`].
struct Cluster {
    handle: Handle,
    spawner: TestSpawner,
    events: Arc<EventLog>,
    run: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(services: &str) -> Self {
        Self::with(services, TestSpawner::default())
    }

    fn with(services: &str, spawner: TestSpawner) -> Self {
        Self::with_cgroups(services, spawner, None)
    }

    /// With `cgroups` for the instances' `resources:` (a fake hierarchy in a temporary dir).
    fn with_cgroups(services: &str, spawner: TestSpawner, cgroups: Option<Arc<Cgroups>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let path = dir.path().join("orch.yaml");
        let text = format!(
            "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: test }}\nspec:\n  dataDir: {}\n  services:\n{services}",
            data.display()
        );
        std::fs::write(&path, &text).unwrap();
        let manifest = crate::manifest::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let events = Arc::new(EventLog::open(None, 1 << 20).unwrap());
        let control_url = "http://127.0.0.1:9".to_owned();
        let state = StateFile::new(&data, control_url.clone(), path, "cid".into());
        let (controller, handle, rx) = Controller::new(Setup {
            manifest,
            manifest_text: text,
            token: Secret::new("registry-token"),
            cluster_id: "cid".into(),
            control_url,
            events: events.clone(),
            spawner: Arc::new(spawner.clone()),
            state,
            cgroups,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // The tests feed the autoscaler's readings themselves: no sampler's round (which
        // finds no figures for the double's pids) comes between theirs and what they check.
        let mut controller = controller;
        controller.autoscaler.sampler = None;
        let run = tokio::spawn(controller.run(rx));
        Self { handle, spawner, events, run, _dir: dir }
    }

    async fn instance(&self, name: &str) -> Option<View> {
        let name = name.to_owned();
        let list = self.handle.call(|c| c.instances_view(None)).await?;
        list.instances.into_iter().find(|i| i.name == name)
    }

    /// Waits until `name` runs (and is ready) in a process other than `not`; its pid.
    async fn running(&self, name: &str, not: Option<u32>) -> u32 {
        eventually(DEADLINE, &format!("{name} running"), || async {
            let i = self.instance(name).await?;
            (i.status == Status::Running && i.ready && i.pid != not).then_some(i.pid?)
        })
        .await
    }

    /// Waits until `records` holds what `done` looks for.
    async fn until(&self, what: &str, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        eventually(DEADLINE, what, || async {
            let records = self.spawner.records();
            done(&records).then_some(records)
        })
        .await
    }

    fn kinds(&self, instance: &str) -> Vec<EventKind> {
        let (events, _) = self.events.since(0, 10_000);
        events.into_iter().filter(|e| e.instance.as_deref() == Some(instance)).map(|e| e.kind).collect()
    }
}

fn signal(name: &str, signal: Signal) -> Record {
    Record::Signal { name: name.to_owned(), signal }
}

fn spawns(records: &[Record], name: &str) -> usize {
    records.iter().filter(|r| matches!(r, Record::Spawned { name: n, .. } if n == name)).count()
}

const QUIET: &str = "readiness: { enabled: false }";

#[tokio::test]
async fn a_crash_restarts_at_once_then_after_a_backoff_then_as_a_crash_loop() {
    let c = Cluster::start(&format!(
        "    - {{ name: web, command: [/bin/sh], {QUIET}, restart: {{ backoffInitialMs: 300, backoffMaxMs: 300 }} }}\n"
    ));
    let mut pid = c.running("web-1", None).await;
    for _ in 0..6 {
        assert!(c.spawner.exit(pid, 1));
        pid = c.running("web-1", Some(pid)).await;
    }
    use EventKind::*;
    let kinds = c.kinds("web-1");
    let first_restart = &kinds[..5];
    assert_eq!(first_restart, [Started, Ready, Exited, Restarted, Ready], "the first restart is at once");
    assert_eq!(&kinds[5..7], [Exited, Backoff], "the second waits: {kinds:?}");
    let crashloop = kinds.iter().position(|k| *k == Crashloop).expect("a crash loop is reported");
    let exits_before = kinds[..crashloop].iter().filter(|k| **k == Exited).count();
    assert_eq!(exits_before, 5, "{kinds:?}");
    assert_eq!(c.instance("web-1").await.unwrap().restarts, 6);
}

#[tokio::test]
async fn a_process_that_cannot_start_is_failed_and_tried_again() {
    let spawner = TestSpawner::default();
    spawner.fail("web-1", true);
    let services = &format!(
        "    - {{ name: web, command: [/bin/sh], {QUIET}, restart: {{ backoffInitialMs: 1, backoffMaxMs: 5 }} }}\n"
    );
    let c = Cluster::with(services, spawner);
    let failed = |r: &[Record]| r.iter().filter(|r| matches!(r, Record::Failed { .. })).count();
    c.until("two failed starts", |r| failed(r) >= 2).await;
    let shown = c.instance("web-1").await.unwrap();
    assert!(shown.last_exit.is_some_and(|e| e.error.is_some()), "the spawn error is shown");
    c.spawner.fail("web-1", false);
    c.running("web-1", None).await;
}

#[tokio::test]
async fn a_failing_liveness_probe_kills_the_process_and_it_comes_back() {
    // Nothing listens on its port: every liveness check fails.
    let c = Cluster::start(&format!(
        "    - {{ name: web, command: [/bin/sh], {QUIET}, liveness: {{ tcp: true, periodMs: 10, failureThreshold: 2 }} }}\n"
    ));
    let pid = c.running("web-1", None).await;
    let records = c.until("a liveness kill and a new process", |r| spawns(r, "web-1") >= 2).await;
    assert!(records.contains(&signal("web-1", Signal::SIGKILL)), "{records:?}");
    assert!(!records.contains(&signal("web-1", Signal::SIGTERM)), "a liveness kill is not a drain: {records:?}");
    assert!(c.spawner.pid("web-1").is_some_and(|p| p != pid));
    assert!(c.kinds("web-1").contains(&EventKind::LivenessFailed));
}

#[tokio::test]
async fn shutdown_stops_dependents_first_then_what_they_depend_on() {
    // `base` sorts first: stopping in the instances' order would stop it first.
    let c = Cluster::start(&format!(
        "    - {{ name: base, command: [/bin/sh], {QUIET} }}\n    - {{ name: web, command: [/bin/sh], {QUIET}, dependsOn: [base], replicas: 2 }}\n"
    ));
    for name in ["base-1", "web-1", "web-2"] {
        c.running(name, None).await;
    }
    let started = c.spawner.records();
    assert!(matches!(&started[0], Record::Spawned { name, .. } if name == "base-1"), "base starts first: {started:?}");
    c.handle.call(|c| c.call_down()).await.unwrap();
    tokio::time::timeout(DEADLINE, c.run).await.expect("the controller stops").unwrap();
    let stops: Vec<Record> = c.spawner.records().into_iter().skip(started.len()).collect();
    let (web, base) = stops.split_at(2);
    assert!(web.contains(&signal("web-1", Signal::SIGTERM)) && web.contains(&signal("web-2", Signal::SIGTERM)));
    assert_eq!(base, [signal("base-1", Signal::SIGTERM)], "then base: {stops:?}");
}

#[tokio::test]
async fn a_process_that_outstays_its_grace_period_is_killed() {
    let spawner = TestSpawner::default();
    spawner.ignore_term(true);
    let c = Cluster::with(&format!("    - {{ name: web, command: [/bin/sh], {QUIET}, gracePeriodMs: 1 }}\n"), spawner);
    c.running("web-1", None).await;
    let from = c.spawner.records().len();
    c.handle.call(|c| c.call_down()).await.unwrap();
    tokio::time::timeout(DEADLINE, c.run).await.expect("the controller stops").unwrap();
    let stops = c.spawner.records().split_off(from);
    assert_eq!(stops, [signal("web-1", Signal::SIGTERM), signal("web-1", Signal::SIGKILL)]);
}

#[tokio::test]
async fn a_restart_replaces_one_instance_at_a_time_without_counting_a_crash() {
    let c = Cluster::start(&format!("    - {{ name: web, command: [/bin/sh], {QUIET}, replicas: 2 }}\n"));
    let before = [c.running("web-1", None).await, c.running("web-2", None).await];
    let from = c.spawner.records().len();
    c.handle.call(|c| c.call_restart("web")).await.unwrap().unwrap();
    let records = c.until("both replaced", |r| spawns(&r[from..], "web-1") + spawns(&r[from..], "web-2") == 2).await;
    let replaced: Vec<(String, bool)> = records[from..]
        .iter()
        .map(|r| match r {
            Record::Signal { name, .. } => (name.clone(), false),
            Record::Spawned { name, .. } | Record::Failed { name } => (name.clone(), true),
        })
        .collect();
    let order = [("web-1", false), ("web-1", true), ("web-2", false), ("web-2", true)];
    assert_eq!(replaced, order.map(|(n, s)| (n.to_owned(), s)), "one at a time");
    for (name, old) in ["web-1", "web-2"].iter().zip(before) {
        c.running(name, Some(old)).await;
        assert_eq!(c.instance(name).await.unwrap().restarts, 0, "a planned replacement is no restart");
    }
    eventually(DEADLINE, "the rollout reported", || async {
        let (events, _) = c.events.since(0, 10_000);
        events.iter().any(|e| e.kind == EventKind::Rolled).then_some(())
    })
    .await;

    // One instance alone: the other keeps its process.
    let web2 = c.spawner.pid("web-2");
    let from = c.spawner.records().len();
    c.handle.call(|c| c.call_restart("web-1")).await.unwrap().unwrap();
    c.until("web-1 replaced", |r| spawns(&r[from..], "web-1") == 1).await;
    assert_eq!(c.spawner.pid("web-2"), web2);
}

#[tokio::test]
async fn the_autoscaler_scales_through_the_scale_path_and_its_replicas_outlive_edits_that_keep_autoscale() {
    use super::Event;
    use super::autoscale::decide::Reading;
    use super::autoscale::sampler::Measured;

    // A long down window: no reading can bring the replicas down during the test.
    let web = |target: u32, env: &str| {
        format!(
            "    - {{ name: web, command: [/bin/sh], {QUIET}, env: {{ {env} }}, autoscale: {{ min: 1, max: 4, target: {{ cpuPercent: {target} }}, scaleUpWindowMs: 0, scaleDownWindowMs: 600000 }} }}\n"
        )
    };
    let c = Cluster::start(&web(50, ""));
    c.running("web-1", None).await;
    let replicas = || async { c.handle.call(|c| c.manifest.service("web").unwrap().replicas).await.unwrap() };
    assert_eq!(replicas().await, 1, "replicas omitted: min");

    // 150% on one instance wants 3: at most doubling, so 2.
    let reading = Reading { metric: 150.0, ready: 1 };
    c.handle.send(Event::Autoscale(vec![Measured { service: "web".into(), reading: Some(reading) }]));
    c.running("web-2", None).await;
    assert_eq!(replicas().await, 2);
    let (events, _) = c.events.since(0, 10_000);
    let scaled: Vec<&str> = events.iter().filter(|e| e.kind == EventKind::Scaled).map(|e| e.message.as_str()).collect();
    assert_eq!(scaled, ["web autoscaled: cpu 150% per instance > 50: 1 -> 2"]);
    let view = c.handle.call(|c| c.cluster_view()).await.unwrap();
    let autoscale = view.services[0].autoscale.clone().unwrap();
    assert_eq!((autoscale.desired, autoscale.min, autoscale.max), (2, 1, 4));
    assert_eq!(autoscale.measured.as_deref(), Some("cpu 150% per instance"));

    // An edit that keeps `autoscale:` keeps the autoscaled replicas; one that changes it
    // starts again from the file's.
    let path = c.handle.call(|c| c.manifest.path.clone()).await.unwrap();
    let head = std::fs::read_to_string(&path).unwrap();
    let head = &head[..head.find("    - { name: web").unwrap()];
    std::fs::write(&path, format!("{head}{}", web(50, "A: b"))).unwrap();
    let changes = c.handle.call(|c| c.call_apply(None, false)).await.unwrap().unwrap();
    assert_eq!(changes.changes.len(), 1, "a roll, and no scale: {:?}", changes.changes);
    assert_eq!(replicas().await, 2);
    std::fs::write(&path, format!("{head}{}", web(60, "A: b"))).unwrap();
    c.handle.call(|c| c.call_apply(None, false)).await.unwrap().unwrap();
    assert_eq!(replicas().await, 1);
}

#[tokio::test]
async fn an_exit_the_oom_killer_counted_is_oom_killed_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("orch-t");
    let cgroups = Cgroups::make(vec![(Ctl::Unified, parent.clone())]).map(Arc::new);
    let services =
        format!("    - {{ name: web, command: [/bin/sh], {QUIET}, resources: {{ memory: 64Mi, pids: 8 }} }}\n");
    let c = Cluster::with_cgroups(&services, TestSpawner::default(), cgroups);
    let pid = c.running("web-1", None).await;
    let dir = parent.join("web-1");
    assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), (64u64 << 20).to_string());
    assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "8");
    let usage = c.instance("web-1").await.unwrap().usage.expect("usage for a service with resources");
    assert_eq!((usage.enforced_by.as_str(), usage.memory_limit_bytes), ("cgroup v2", Some(64 << 20)));
    // The kernel counted an OOM kill in the instance's cgroup: its SIGKILL is OOMKilled.
    std::fs::write(dir.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
    crate::supervisor::spawn::Spawner::signal(&c.spawner, pid, Signal::SIGKILL);
    let pid = c.running("web-1", Some(pid)).await;
    let exit = c.instance("web-1").await.unwrap().last_exit.unwrap();
    assert_eq!((exit.reason, exit.signal.as_deref()), (Some(kit::orch_api::ExitReason::OomKilled), Some("SIGKILL")));
    // A SIGKILL the OOM killer did not count (the count is as at the start) is a plain crash.
    crate::supervisor::spawn::Spawner::signal(&c.spawner, pid, Signal::SIGKILL);
    c.running("web-1", Some(pid)).await;
    let exit = c.instance("web-1").await.unwrap().last_exit.unwrap();
    assert_eq!((exit.reason, exit.signal.as_deref()), (None, Some("SIGKILL")));
}

#[tokio::test]
async fn a_rollout_not_ready_within_its_deadline_is_rolled_back() {
    let web = |extra: &str| {
        format!(
            "    - {{ name: web, command: [/bin/sh], {extra}, rollout: {{ progressDeadlineMs: 300 }}, gracePeriodMs: 100 }}\n"
        )
    };
    let c = Cluster::start(&web(QUIET));
    let old = c.running("web-1", None).await;
    // The new spec is never ready: nothing listens on its port.
    let path = c._dir.path().join("orch.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(QUIET, "readiness: { tcp: true }, env: { V: '2' }");
    std::fs::write(&path, text).unwrap();
    c.handle.call(|c| c.call_apply(None, false)).await.unwrap().unwrap();
    c.until("web-1 drained for the new spec", |r| r.contains(&signal("web-1", Signal::SIGTERM))).await;
    let history = eventually(DEADLINE, "the rollback complete", || async {
        let h = c.handle.call(|c| c.rollout_history("web")).await?.ok()?;
        (h.rollouts.len() == 3 && h.rollouts[2].state == kit::orch_api::RolloutState::Complete).then_some(h)
    })
    .await;
    let states: Vec<_> = history.rollouts.iter().map(|r| r.state).collect();
    use kit::orch_api::RolloutState::{Complete, Failed};
    assert_eq!(states, [Complete, Failed, Complete]);
    assert_eq!(history.rollouts[1].cause.as_deref(), Some("not ready within 300 ms (0/1 ready)"));
    assert!(history.pinned);
    // Back on the old spec (no readiness probe): running and ready in a new process.
    c.running("web-1", Some(old)).await;
    let (events, _) = c.events.since(0, 10_000);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::RolloutFailed) && kinds.contains(&EventKind::RolledBack), "{kinds:?}");
    // An undo to the rollout that runs now is refused.
    let undone = c.handle.call(|c| c.call_rollout_undo("web", Some(3))).await.unwrap();
    assert_eq!(undone.unwrap_err().to_string(), "rollout #3 is the current one of web");
    c.run.abort();
}
