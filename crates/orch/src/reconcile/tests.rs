//! The pure reconciler as tables: desired and observed in, the plan out (dependency order,
//! scaling, rolls, drains, backoff).

use std::path::Path;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn goal(name: &str, replicas: u32, deps: &[&str]) -> Goal {
    Goal {
        name: name.to_owned(),
        replicas,
        revision: 1,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        policy: RestartPolicy::Always,
        backoff_initial: 100 * MS,
        backoff_max: 1000 * MS,
        reset_after: 10_000 * MS,
        liveness_threshold: Some(3),
        max_surge: 0,
        max_unavailable: 1,
    }
}

fn id(service: &str, ordinal: u32) -> InstanceId {
    InstanceId::new(service, ordinal)
}

/// A healthy instance of revision 1.
fn running(service: &str, ordinal: u32) -> Observed {
    Observed {
        id: id(service, ordinal),
        revision: 1,
        replace: false,
        phase: Phase::Running,
        ready: true,
        ready_since: None,
        crash_streak: 0,
        liveness_failures: 0,
    }
}

fn with(mut o: Observed, f: impl FnOnce(&mut Observed)) -> Observed {
    f(&mut o);
    o
}

fn desired(goals: Vec<Goal>) -> Desired {
    Desired { services: goals, shutting_down: false }
}

fn drain(service: &str, ordinal: u32, reason: StopReason) -> Action {
    Action::Drain { id: id(service, ordinal), reason }
}

/// A web service of 3 behind a registry, all running.
fn steady() -> (Desired, Vec<Observed>) {
    let d = desired(vec![goal("registry", 1, &[]), goal("web", 3, &["registry"])]);
    let o = vec![running("registry", 1), running("web", 1), running("web", 2), running("web", 3)];
    (d, o)
}

#[test]
fn steady_state_needs_nothing() {
    let (d, o) = steady();
    assert_eq!(reconcile(&d, &o, Instant::now()), Plan::default());
}

#[test]
fn dependency_ordering_on_start() {
    let now = Instant::now();
    let d = desired(vec![goal("registry", 1, &[]), goal("web", 2, &["registry"]), goal("edge", 1, &["web"])]);
    let check =
        |observed: &[Observed], expected: Vec<Action>| assert_eq!(reconcile(&d, observed, now).actions, expected);

    // Nothing runs: the registry starts, the others wait as pending.
    check(
        &[],
        vec![
            Action::Start(id("registry", 1)),
            Action::Create(id("web", 1)),
            Action::Create(id("web", 2)),
            Action::Create(id("edge", 1)),
        ],
    );

    let pending = |s, n| {
        with(running(s, n), |o| {
            o.phase = Phase::Pending;
            o.ready = false
        })
    };
    let starting = |s, n| {
        with(running(s, n), |o| {
            o.phase = Phase::Starting;
            o.ready = false
        })
    };
    // The registry is starting, not ready: still nothing else.
    check(&[starting("registry", 1), pending("web", 1), pending("web", 2), pending("edge", 1)], vec![]);
    // Ready: web starts, edge still waits for web.
    check(
        &[running("registry", 1), pending("web", 1), pending("web", 2), pending("edge", 1)],
        vec![Action::Start(id("web", 1)), Action::Start(id("web", 2))],
    );
    // One web instance ready is enough for edge.
    check(
        &[running("registry", 1), running("web", 1), starting("web", 2), pending("edge", 1)],
        vec![Action::Start(id("edge", 1))],
    );
}

#[test]
fn scale_up_adds_ordinals() {
    let (mut d, o) = steady();
    d.services[1].replicas = 5;
    assert_eq!(
        reconcile(&d, &o, Instant::now()).actions,
        vec![Action::Start(id("web", 4)), Action::Start(id("web", 5))]
    );
}

#[test]
fn scale_down_drains_highest_ordinals_first() {
    let (mut d, mut o) = steady();
    o.push(running("web", 4));
    o.push(running("web", 5));
    d.services[1].replicas = 2;
    let now = Instant::now();
    assert_eq!(
        reconcile(&d, &o, now).actions,
        vec![
            drain("web", 5, StopReason::Remove),
            drain("web", 4, StopReason::Remove),
            drain("web", 3, StopReason::Remove)
        ]
    );
    // While they drain nothing more happens; once gone, their records go.
    o[3].phase = Phase::Stopping(StopReason::Remove);
    o[4].phase = Phase::Stopping(StopReason::Remove);
    o[5].phase = Phase::Exited { at: now, success: true, planned: true };
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Forget(id("web", 5))]);
    // A removed service goes entirely.
    let d = desired(vec![goal("registry", 1, &[])]);
    let (_, o) = steady();
    assert_eq!(
        reconcile(&d, &o, now).actions,
        vec![
            drain("web", 3, StopReason::Remove),
            drain("web", 2, StopReason::Remove),
            drain("web", 1, StopReason::Remove)
        ]
    );
}

/// In a rollout of `web` (of [`steady`]): web-1's replacement, of `revision`, starts (the
/// rollout waits), then is ready (web-2 goes next).
fn web_1_replaced_then_web_2_goes(d: &Desired, o: &mut [Observed], revision: u64, now: Instant) {
    o[1] = with(running("web", 1), |o| {
        o.revision = revision;
        o.phase = Phase::Starting;
        o.ready = false;
    });
    assert_eq!(reconcile(d, o, now).actions, vec![], "{o:#?}");
    o[1].phase = Phase::Running;
    o[1].ready = true;
    assert_eq!(reconcile(d, o, now).actions, vec![drain("web", 2, StopReason::Replace)], "{o:#?}");
}

#[test]
fn spec_change_rolls_one_instance_at_a_time() {
    let (mut d, mut o) = steady();
    d.services[1].revision = 2;
    let now = Instant::now();
    let check = |o: &[Observed], expected: Vec<Action>| assert_eq!(reconcile(&d, o, now).actions, expected, "{o:#?}");

    check(&o, vec![drain("web", 1, StopReason::Replace)]);
    o[1].phase = Phase::Stopping(StopReason::Replace);
    check(&o, vec![]);
    // The old process is gone: the new one starts on the same socket at once.
    o[1].phase = Phase::Exited { at: now, success: true, planned: true };
    check(&o, vec![Action::Start(id("web", 1))]);
    // The replacement must be ready before the next old instance goes.
    web_1_replaced_then_web_2_goes(&d, &mut o, 2, now);
    // A replacement that crashes halts the rollout.
    o[1].phase = Phase::Exited { at: now, success: false, planned: false };
    o[1].crash_streak = 2;
    let plan = reconcile(&d, &o, now);
    assert!(plan.actions.iter().all(|a| !matches!(a, Action::Drain { .. })), "{plan:?}");
    // A dead instance of the old revision is started on the new one at once, without
    // backoff, and counts as the replacement under way.
    let (mut d, mut o) = steady();
    d.services[1].revision = 2;
    o[2].phase = Phase::Exited { at: now, success: false, planned: false };
    o[2].crash_streak = 4;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 2))]);
}

#[test]
fn marked_instances_are_replaced_like_a_spec_change_one_at_a_time() {
    let (d, mut o) = steady();
    let now = Instant::now();
    let check = |o: &[Observed], expected: Vec<Action>| assert_eq!(reconcile(&d, o, now).actions, expected, "{o:#?}");
    // `orch restart web`: every instance marked; same revision.
    o[1].replace = true;
    o[2].replace = true;
    check(&o, vec![drain("web", 1, StopReason::Replace)]);
    o[1].phase = Phase::Exited { at: now, success: true, planned: true };
    check(&o, vec![Action::Start(id("web", 1))]);
    // The new process is not marked; the next goes once it is ready.
    web_1_replaced_then_web_2_goes(&d, &mut o, 1, now);
    // A marked instance that stays down per its policy starts again.
    let (d, mut o) = steady();
    o[2].phase = Phase::Done { success: true };
    assert_eq!(reconcile(&d, &o, now).actions, vec![]);
    o[2].replace = true;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 2))]);
}

#[test]
fn crash_restarts_at_once_then_with_doubling_backoff() {
    let (d, mut o) = steady();
    let t0 = Instant::now();
    let crash = |o: &mut Observed, streak| {
        o.phase = Phase::Exited { at: t0, success: false, planned: false };
        o.ready = false;
        o.crash_streak = streak;
    };
    // First crash: at once.
    crash(&mut o[2], 1);
    assert_eq!(reconcile(&d, &o, t0).actions, vec![Action::Start(id("web", 2))]);
    // Second in a row: 100 ms; third: 200 ms; then doubling to the 1 s cap.
    for (streak, delay) in [(2, 100), (3, 200), (4, 400), (5, 800), (6, 1000), (30, 1000)] {
        crash(&mut o[2], streak);
        let until = t0 + delay * MS;
        let plan = reconcile(&d, &o, t0);
        assert_eq!(
            plan,
            Plan {
                actions: vec![Action::Backoff { id: id("web", 2), until, crashloop: streak >= CRASHLOOP_AFTER }],
                requeue: Some(until)
            },
            "streak {streak}"
        );
        assert_eq!(reconcile(&d, &o, until).actions, vec![Action::Start(id("web", 2))], "streak {streak}");
    }
    assert_eq!(backoff_delay(u32::MAX, 100 * MS, 30_000 * MS), 30_000 * MS);
}

#[test]
fn crash_loop_is_flagged_and_a_healthy_stretch_forgives() {
    let (d, mut o) = steady();
    let t0 = Instant::now();
    o[1].phase = Phase::Exited { at: t0, success: false, planned: false };
    o[1].crash_streak = CRASHLOOP_AFTER;
    assert!(matches!(reconcile(&d, &o, t0).actions[..], [Action::Backoff { crashloop: true, .. }]));
    o[1].crash_streak = CRASHLOOP_AFTER - 1;
    assert!(matches!(reconcile(&d, &o, t0).actions[..], [Action::Backoff { crashloop: false, .. }]));

    // Back up and ready: forgiven after resetAfter, and the plan asks to be run again then.
    o[1] = with(running("web", 1), |o| {
        o.crash_streak = 7;
        o.ready_since = Some(t0);
    });
    let plan = reconcile(&d, &o, t0 + 1000 * MS);
    assert_eq!(plan, Plan { actions: vec![], requeue: Some(t0 + 10_000 * MS) });
    assert_eq!(reconcile(&d, &o, t0 + 10_000 * MS).actions, vec![Action::ResetBackoff(id("web", 1))]);
}

#[test]
fn restart_policies() {
    let (mut d, mut o) = steady();
    let now = Instant::now();
    o[3].phase = Phase::Exited { at: now, success: true, planned: false };
    o[3].crash_streak = 1;
    d.services[1].policy = RestartPolicy::OnFailure;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Finish { id: id("web", 3), success: true }]);
    o[3].phase = Phase::Exited { at: now, success: false, planned: false };
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 3))]);
    d.services[1].policy = RestartPolicy::Never;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Finish { id: id("web", 3), success: false }]);
    // Done stays done, until the spec changes.
    o[3].phase = Phase::Done { success: false };
    assert_eq!(reconcile(&d, &o, now).actions, vec![]);
    d.services[1].revision = 2;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 3))]);
}

#[test]
fn liveness_failure_kills() {
    let (d, mut o) = steady();
    let now = Instant::now();
    o[2].liveness_failures = 2;
    assert_eq!(reconcile(&d, &o, now).actions, vec![]);
    o[2].liveness_failures = 3;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Kill(id("web", 2))]);
    // Killed, it is no longer probed; its exit is a crash like any other.
    o[2].phase = Phase::Stopping(StopReason::Liveness);
    assert_eq!(reconcile(&d, &o, now).actions, vec![]);
    o[2].phase = Phase::Exited { at: now, success: false, planned: false };
    o[2].crash_streak = 1;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 2))]);
}

#[test]
fn shutdown_stops_dependents_first() {
    let (mut d, mut o) = steady();
    d.shutting_down = true;
    let now = Instant::now();
    o.push(with(running("web", 4), |o| o.phase = Phase::Exited { at: now, success: false, planned: false }));
    assert_eq!(
        reconcile(&d, &o, now).actions,
        vec![
            drain("web", 1, StopReason::Shutdown),
            drain("web", 2, StopReason::Shutdown),
            drain("web", 3, StopReason::Shutdown),
            Action::Forget(id("web", 4)),
        ]
    );
    // The registry goes once nothing that depends on it runs.
    let o = vec![running("registry", 1), with(running("web", 1), |o| o.phase = Phase::Stopping(StopReason::Shutdown))];
    assert_eq!(reconcile(&d, &o, now).actions, vec![]);
    let o = vec![running("registry", 1)];
    assert_eq!(reconcile(&d, &o, now).actions, vec![drain("registry", 1, StopReason::Shutdown)]);
}

#[test]
fn an_invalid_manifest_changes_nothing() {
    let base = "apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: t }\nspec:\n  services:\n    - { name: registry, component: registry }\n";
    let path = Path::new("m.yaml");
    let v1 = crate::manifest::parse(
        path,
        &format!("{base}    - {{ name: web, component: registry, replicas: 3, dependsOn: [registry] }}\n"),
    )
    .unwrap();
    let mut d = Desired { services: goals(&v1, |s| revision(&v1, s)), shutting_down: false };
    let o: Vec<Observed> = d
        .services
        .iter()
        .flat_map(|g| (1..=g.replicas).map(move |n| with(running(&g.name, n), |o| o.revision = g.revision)))
        .collect();
    let now = Instant::now();
    assert_eq!(reconcile(&d, &o, now), Plan::default());

    // An edit with an unknown field, one with a cycle: rejected, the desired state stays.
    for bad in [
        format!("{base}    - {{ name: web, component: registry, replica: 5 }}\n"),
        format!("{base}    - {{ name: web, component: registry, replicas: 5, dependsOn: [web] }}\n"),
        format!("{base}    - {{ name: web, component: registry, replicas: -5 }}\n"),
    ] {
        assert!(crate::manifest::parse(path, &bad).is_err());
        assert_eq!(reconcile(&d, &o, now), Plan::default());
    }
    // The next valid edit is applied; a replicas-only change replaces nothing.
    let v2 = crate::manifest::parse(
        path,
        &format!("{base}    - {{ name: web, component: registry, replicas: 4, dependsOn: [registry] }}\n"),
    )
    .unwrap();
    d.services = goals(&v2, |s| revision(&v2, s));
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 4))]);
    // An env change replaces, one at a time.
    let v3 = crate::manifest::parse(
        path,
        &format!("{base}    - {{ name: web, component: registry, replicas: 3, env: {{ A: b }} }}\n"),
    )
    .unwrap();
    d.services = goals(&v3, |s| revision(&v3, s));
    assert_eq!(reconcile(&d, &o, now).actions, vec![drain("web", 1, StopReason::Replace)]);
}

/// `steady`'s web rolling out revision 2 with `maxSurge`/`maxUnavailable`.
fn rolling(max_surge: u32, max_unavailable: u32) -> (Desired, Vec<Observed>) {
    let (mut d, o) = steady();
    d.services[1].revision = 2;
    d.services[1].max_surge = max_surge;
    d.services[1].max_unavailable = max_unavailable;
    (d, o)
}

fn new_ready(service: &str, ordinal: u32) -> Observed {
    with(running(service, ordinal), |o| o.revision = 2)
}

fn new_starting(service: &str, ordinal: u32) -> Observed {
    with(new_ready(service, ordinal), |o| {
        o.phase = Phase::Starting;
        o.ready = false;
    })
}

#[test]
fn surge_starts_a_new_instance_before_any_old_one_goes() {
    let (d, mut o) = rolling(1, 0);
    let now = Instant::now();
    let check = |o: &[Observed], expected: Vec<Action>| assert_eq!(reconcile(&d, o, now).actions, expected, "{o:#?}");

    // The surge instance first; nothing old goes while it is not ready.
    check(&o, vec![Action::Start(id("web", 4))]);
    o.push(new_starting("web", 4));
    check(&o, vec![]);
    // Ready: one old instance may go (4 ready, 3 must stay), only one at a time.
    o[4] = new_ready("web", 4);
    check(&o, vec![drain("web", 1, StopReason::Replace)]);
    o[1].phase = Phase::Stopping(StopReason::Replace);
    check(&o, vec![]);
    o[1].phase = Phase::Exited { at: now, success: true, planned: true };
    check(&o, vec![Action::Start(id("web", 1))]);
    // web-1 of the new revision starting: the surge instance stays, nothing else goes.
    o[1] = new_starting("web", 1);
    check(&o, vec![]);
    o[1] = new_ready("web", 1);
    check(&o, vec![drain("web", 2, StopReason::Replace)]);
    // The last old one is being replaced: the surge instance still serves.
    o[2] = new_ready("web", 2);
    o[3] = new_starting("web", 3);
    check(&o, vec![]);
    // All replaced and ready: the surge instance goes.
    o[3] = new_ready("web", 3);
    check(&o, vec![drain("web", 4, StopReason::Remove)]);
}

#[test]
fn a_crashing_surge_instance_halts_the_rollout_and_a_rollback_removes_it() {
    let (mut d, mut o) = rolling(1, 0);
    let now = Instant::now();
    o.push(with(new_ready("web", 4), |o| {
        o.phase = Phase::Exited { at: now, success: false, planned: false };
        o.ready = false;
        o.crash_streak = 3;
    }));
    let plan = reconcile(&d, &o, now);
    assert!(plan.actions.iter().all(|a| !matches!(a, Action::Drain { .. })), "{plan:?}");
    assert!(matches!(plan.actions[..], [Action::Backoff { .. }]), "{plan:?}");
    // Rolled back to revision 1: no old instance left, the surge record is dropped.
    d.services[1].revision = 1;
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Forget(id("web", 4))]);
    // Had it been running, it would be drained.
    o[4] = new_ready("web", 4);
    assert_eq!(reconcile(&d, &o, now).actions, vec![drain("web", 4, StopReason::Remove)]);
}

#[test]
fn max_unavailable_replaces_that_many_at_once() {
    let now = Instant::now();
    let (d, o) = rolling(0, 2);
    assert_eq!(
        reconcile(&d, &o, now).actions,
        vec![drain("web", 1, StopReason::Replace), drain("web", 2, StopReason::Replace)]
    );
    // Surge and unavailability together: the surge starts and one old instance goes.
    let (d, o) = rolling(1, 1);
    assert_eq!(reconcile(&d, &o, now).actions, vec![Action::Start(id("web", 4)), drain("web", 1, StopReason::Replace)]);
}

#[test]
fn an_old_instance_that_is_not_ready_goes_first_without_lowering_availability() {
    let (d, mut o) = rolling(1, 0);
    let now = Instant::now();
    o[3].ready = false;
    o.push(new_ready("web", 4));
    // web-1 and web-2 must stay (3 ready of 3 wanted); web-3 serves nothing, so it goes.
    assert_eq!(reconcile(&d, &o, now).actions, vec![drain("web", 3, StopReason::Replace)]);
}
