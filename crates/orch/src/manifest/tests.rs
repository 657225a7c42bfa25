//! Manifest parsing and validation: the shipped manifests, defaults, and every kind of bad
//! input located and explained.

use super::*;

const HEAD: &str = "apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: test }\nspec:\n";

/// A manifest whose spec is `spec` (indented by two spaces already).
fn doc(spec: &str) -> String {
    format!("{HEAD}{spec}")
}

fn ok(text: &str) -> Manifest {
    parse(Path::new("m.yaml"), text).unwrap_or_else(|e| panic!("expected a valid manifest, got:\n{e}"))
}

/// Table-style: each manifest is rejected with exactly its expected error; every mismatch
/// is reported at once.
fn check_errors(cases: &[(String, &str)]) {
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        match parse(Path::new("m.yaml"), text) {
            Ok(_) => wrong.push(format!("no error for:\n{text}")),
            Err(e) if e.to_string() != *expected => {
                wrong.push(format!("for:\n{text}\n  got:      {e}\n  expected: {expected}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn the_shipped_cluster_reproduces_the_original_topology() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/cluster.yaml");
    let m = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ports: Vec<(&str, u32, Option<u16>)> =
        m.services.iter().map(|s| (s.name.as_str(), s.replicas, s.port)).collect();
    assert_eq!(
        ports,
        vec![
            ("registry", 1, Some(3005)),
            ("auth", 3, Some(3001)),
            ("data", 3, Some(4002)),
            ("compute", 3, Some(5002)),
            ("balancer", 1, Some(3000)),
            ("detector", 1, Some(3004)),
        ]
    );
    assert_eq!(m.control_port, 3006);
    assert!(m.auth_required);
    assert_eq!(m.env["HEARTBEAT_INTERVAL_MS"], "2000");
    let repo = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap();
    assert_eq!(m.data_dir, repo.join("data"), "relative to the manifest file, without ..");
    let order: Vec<&str> = m.start_order().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order[0], "registry");
    let balancer = m.service("balancer").unwrap();
    assert_eq!(balancer.routes["/api/data"], "data");
    let pos = |name| order.iter().position(|s| *s == name).unwrap();
    assert!(pos("balancer") < pos("detector"));
}

#[test]
fn every_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 3, "minimal, ten instances and a custom command");
}

#[test]
fn defaults() {
    let m = ok(&doc(
        "  services:\n    - { name: reg, component: registry }\n    - { name: sh, command: [sh, -c, 'exec sleep 100'] }\n",
    ));
    assert_eq!(m.control_port, DEFAULT_CONTROL_PORT);
    assert!(m.auth_required);
    let reg = &m.services[0];
    assert_eq!(reg.replicas, 1);
    assert_eq!(reg.port, None);
    assert!(reg.socket_activation && !reg.register && reg.registers);
    assert_eq!(reg.readiness.check, Check::Http("/ready".into()));
    assert!(reg.readiness.period_ms <= 500);
    // A ready instance is probed at a calmer pace, and so is a live one.
    assert_eq!(reg.readiness.steady_period_ms, 2000);
    assert!(reg.readiness.calm_when_well() && reg.liveness.calm_when_well());
    assert_eq!(reg.liveness.check, Check::Http("/health".into()));
    // A hung process is noticed within about 3 s: the first probe after the hang, then one
    // timeout per failure (a probe ends before the next is due).
    let (live, failures) = (&reg.liveness, u64::from(reg.liveness.failure_threshold));
    assert!(live.steady_period_ms + failures * live.timeout_ms.max(live.period_ms) <= 3000);
    assert!(live.timeout_ms <= live.period_ms);
    assert_eq!(
        reg.restart,
        Restart {
            policy: RestartPolicy::Always,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            reset_after_ms: 10_000
        }
    );
    assert_eq!(reg.grace_period_ms, 5000);
    let sh = &m.services[1];
    assert!(!sh.socket_activation && sh.register && !sh.registers, "a command gets no registry token by default");
    assert_eq!(sh.readiness.check, Check::Tcp);
    assert_eq!(sh.liveness.check, Check::None);
    match &sh.kind {
        Kind::Command { program, args } => {
            assert!(program.is_absolute() && program.ends_with("sh"), "{}", program.display());
            assert_eq!(args, &["-c", "exec sleep 100"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_thousand_replicas_are_allowed() {
    let m = ok(&doc("  services:\n    - { name: c, component: compute, replicas: 1000 }\n"));
    assert_eq!(m.services[0].replicas, 1000);
}

#[test]
fn a_command_that_registers_itself_gets_the_registry_token_and_is_not_registered_by_orch() {
    let m = ok(&doc("  services:\n    - { name: sh, command: [sh], registers: true }\n"));
    assert!(m.services[0].registers && !m.services[0].register);
}

#[test]
fn values_and_probes() {
    let m = ok(&doc(
        "  controlPort: 0\n  auth: { required: false }\n  env: { A: 1, B: true, C: x }\n  services:\n    - name: api\n      component: auth\n      replicas: 0\n      port: 7000\n      readiness: { path: /ok, periodMs: 50 }\n      liveness: { enabled: false }\n      restart: { policy: OnFailure, backoffInitialMs: 5, backoffMaxMs: 40 }\n",
    ));
    assert_eq!(m.control_port, 0);
    assert!(!m.auth_required);
    assert_eq!(m.env.values().cloned().collect::<Vec<_>>(), ["1", "true", "x"]);
    let api = &m.services[0];
    assert_eq!(api.replicas, 0);
    assert_eq!(
        api.readiness,
        Probe {
            check: Check::Http("/ok".into()),
            period_ms: 50,
            steady_period_ms: 50,
            timeout_ms: 40,
            failure_threshold: 3
        }
    );
    assert_eq!(api.liveness.check, Check::None);
    assert_eq!(api.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(api.restart.backoff_max_ms, 40);
}

#[test]
fn bad_input_is_located_and_explained() {
    let svc = |body: &str| doc(&format!("  services:\n{body}"));
    let cases: Vec<(String, &str)> = vec![
        // Invalid YAML.
        (
            doc("  services:\n    - name: a\n     component: registry\n"),
            "m.yaml:7:6: did not find expected '-' indicator, while parsing a block collection at line 6 column 5; fix: fix the YAML syntax here (indentation, a missing colon or quote)",
        ),
        // Unknown field.
        (
            svc("    - name: a\n      component: registry\n      replica: 3\n"),
            "m.yaml:8:7: spec.services[0]: unknown field `replica`, expected one of `name`, `component`, `command`, `args`, `image`, `replicas`, `port`, `env`, `dependsOn`, `readiness`, `liveness`, `restart`, `gracePeriodMs`, `routes`, `socketActivation`, `register`, `registers`, `workingDir`, `autoscale`, `resources`, `rollout`; fix: did you mean `replicas`? (allowed here: name, component, command, args, image, replicas, port, env, dependsOn, readiness, liveness, restart, gracePeriodMs, routes, socketActivation, register, registers, workingDir, autoscale, resources, rollout)",
        ),
        // Wrong type.
        (
            svc("    - { name: a, component: registry, replicas: three }\n"),
            "m.yaml:6:49: spec.services[0].replicas: invalid type: string \"three\", expected a whole number; fix: give a whole number",
        ),
        // Duplicate service name.
        (
            svc("    - { name: a, component: registry }\n    - { name: a, component: registry }\n"),
            "m.yaml:7:15: duplicate service name \"a\" (services[0] has it too); fix: give every service its own name",
        ),
        // Port clash between services.
        (
            svc(
                "    - { name: a, component: registry, replicas: 3, port: 7001 }\n    - { name: b, component: registry, port: 7003 }\n",
            ),
            "m.yaml:7:45: port 7003 of \"b\" overlap ports 7001-7003 of \"a\"; fix: give each service its own port range (instance n listens on port + n - 1)",
        ),
        // Clash with the control port.
        (
            svc("    - { name: a, component: registry, port: 3006 }\n"),
            "m.yaml:6:45: port 3006 of \"a\" include orch's control port 3006; fix: move the service, or set spec.controlPort to another port",
        ),
        // Negative and huge replicas.
        (
            svc("    - { name: a, component: registry, replicas: -1 }\n"),
            "m.yaml:6:49: replicas must be from 0 to 1000, got -1; fix: set replicas between 0 and 1000",
        ),
        (
            svc("    - { name: a, component: registry, replicas: 1001 }\n"),
            "m.yaml:6:49: replicas must be from 0 to 1000, got 1001; fix: set replicas between 0 and 1000",
        ),
        (
            svc("    - { name: a, component: registry, replicas: 100000000000000000000000 }\n"),
            "m.yaml:6:49: replicas must be from 0 to 1000, got 100000000000000000000000; fix: set replicas between 0 and 1000",
        ),
        // A dependency cycle.
        (
            svc(
                "    - { name: a, component: registry, dependsOn: [c] }\n    - { name: b, component: registry, dependsOn: [a] }\n    - { name: c, component: registry, dependsOn: [b] }\n",
            ),
            "m.yaml:6:51: dependency cycle: a -> c -> b -> a; fix: remove one of these dependsOn entries",
        ),
        // A dependency that does not exist.
        (
            svc(
                "    - { name: registry, component: registry }\n    - { name: a, component: auth, dependsOn: [regsitry] }\n",
            ),
            "m.yaml:7:47: service \"a\" depends on \"regsitry\", which is not in the manifest; fix: did you mean \"registry\"?",
        ),
        // A command that does not exist.
        (
            svc("    - { name: a, command: [no-such-program-orch-test, --port, '{port}'] }\n"),
            "m.yaml:6:27: command \"no-such-program-orch-test\" not found on PATH; fix: install it, or give its path (relative to the manifest file)",
        ),
        // Unknown component.
        (
            svc("    - { name: a, component: regsitry }\n"),
            "m.yaml:6:29: unknown component \"regsitry\"; fix: did you mean \"registry\"? (components: registry, balancer, detector, auth, data, compute)",
        ),
        // Neither component nor command, and both.
        (
            svc("    - { name: a, replicas: 2 }\n"),
            "m.yaml:6:7: service \"a\" has neither component nor command; fix: add `component: <registry, balancer, detector, auth, data, compute>` or `command: [program, args...]`",
        ),
        (
            svc("    - { name: a, component: registry, command: sh }\n"),
            "m.yaml:6:48: service \"a\" has both component and command; fix: keep one of them",
        ),
        // Wrong apiVersion, missing field.
        (
            "apiVersion: orch/v2\nkind: Cluster\nmetadata: { name: t }\nspec: { services: [] }\n".to_owned(),
            "m.yaml:1:13: unsupported apiVersion \"orch/v2\"; fix: write apiVersion: orch/v1",
        ),
        (
            "apiVersion: orch/v1\nkind: Cluster\nspec: { services: [] }\n".to_owned(),
            "m.yaml:1:1: missing field `metadata`; fix: add `metadata`",
        ),
        // A route to nowhere, routes off the balancer, a reserved variable, a useless probe.
        (
            svc("    - { name: lb, component: balancer, routes: { /api/x: nope } }\n"),
            "m.yaml:6:58: route /api/x goes to \"nope\", which is not in the manifest; fix: route to a service of this manifest",
        ),
        (
            svc("    - { name: a, component: auth, routes: { /x: a } }\n"),
            "m.yaml:6:43: routes are for balancer services; fix: move routes to the balancer service",
        ),
        (
            svc("    - { name: a, component: auth, env: { PORT: 1 } }\n"),
            "m.yaml:6:48: PORT is set by orch for every instance; fix: remove PORT",
        ),
        (
            svc("    - { name: a, component: auth, env: { ORCH_CONTROL_TOKEN: x } }\n"),
            "m.yaml:6:62: ORCH_CONTROL_TOKEN is the CLI's: the control token is given to no instance; fix: remove ORCH_CONTROL_TOKEN",
        ),
        // The registry token: components always have it; a command registers itself or is
        // registered by orch, not both.
        (
            svc("    - { name: a, component: auth, registers: false }\n"),
            "m.yaml:6:46: components register themselves and always get the registry token; fix: remove registers",
        ),
        (
            svc("    - { name: a, command: [sh], register: true, registers: true }\n"),
            "m.yaml:6:43: register (orch registers the instances) and registers (they register themselves) are both true; fix: keep one of them",
        ),
        (
            svc("    - { name: a, command: [sh], registers: yes }\n"),
            "m.yaml:6:44: spec.services[0].registers: invalid type: string \"yes\", expected a boolean; fix: give a boolean",
        ),
        (
            svc("    - { name: a, component: auth, readiness: { tcp: true } }\n"),
            "m.yaml:6:53: a tcp probe of a socket-activated service always succeeds (orch holds the socket); fix: probe a path instead: path: /health",
        ),
        (
            svc("    - { name: a, component: auth, port: 65535, replicas: 2 }\n"),
            "m.yaml:6:41: 2 instances from port 65535 go past port 65535; fix: choose a lower port or fewer replicas",
        ),
        // An empty file.
        ("".to_owned(), "m.yaml:1:1: missing field `apiVersion`; fix: add `apiVersion`"),
    ];
    check_errors(&cases);
}

#[test]
fn every_problem_is_reported() {
    let text = doc(
        "  services:\n    - { name: a, component: registry, replicas: 1001 }\n    - { name: B, component: registry }\n",
    );
    let err = parse(Path::new("m.yaml"), &text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.at.unwrap().line).collect();
    assert_eq!(lines, vec![6, 7]);
}

#[test]
fn close_names() {
    assert_eq!(closest("replica", ["name", "replicas", "port"]), Some("replicas"));
    assert_eq!(closest("zzz", ["name", "replicas", "port"]), None);
}

#[test]
fn a_database_url_is_a_postgres_url() {
    let services = "  services:\n    - name: data\n      component: data\n";
    let m = ok(&doc(&format!("  database: postgres://orch@127.0.0.1:5432/orch\n{services}")));
    assert_eq!(m.database.as_deref(), Some("postgres://orch@127.0.0.1:5432/orch"));
    assert_eq!(ok(&doc(services)).database, None);
    for bad in ["mysql://x@h/d", "sqlite://x.db", "postgres://", "127.0.0.1:5432"] {
        let err = parse(Path::new("m.yaml"), &doc(&format!("  database: {bad:?}\n{services}"))).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.yaml:5:") && text.contains("is not a PostgreSQL URL"), "{bad}: {text}");
    }
}

#[test]
fn resources_are_quantities_located_when_wrong() {
    let svc = |resources: &str| {
        doc(&format!("  services:\n    - name: web\n      command: [sleep, '60']\n      resources: {resources}\n"))
    };
    let m = ok(&svc("{ memory: 256Mi, cpu: 500m, pids: 256 }"));
    assert_eq!(m.services[0].resources, Resources { memory: Some(256 << 20), cpu: Some(500), pids: Some(256) });
    let m = ok(&svc("{ cpu: 0.25 }"));
    assert_eq!(m.services[0].resources, Resources { memory: None, cpu: Some(250), pids: None });
    assert!(ok(&doc("  services:\n    - name: web\n      command: [sleep, '60']\n")).services[0].resources.is_empty());
    check_errors(&[
        (
            svc("{ memory: 256MB }"),
            "m.yaml:8:28: memory: unknown suffix \"MB\" in \"256MB\" (use Ki, Mi, Gi, Ti, k, M, G, T, or m for millicores); fix: write it as Kubernetes does: 256Mi, 1Gi, 512M",
        ),
        (svc("{ memory: 1Ki }"), "m.yaml:8:28: memory 1Ki is below 4Mi; fix: give at least memory: 4Mi"),
        (
            svc("{ cpu: lots }"),
            "m.yaml:8:25: cpu: \"lots\" is not a quantity; fix: write it as Kubernetes does: 500m (half a core), 2",
        ),
        (svc("{ cpu: 0m }"), "m.yaml:8:25: cpu 0m is below 1m; fix: give at least cpu: 1m"),
        (svc("{ cpu: 1001 }"), "m.yaml:8:25: cpu 1001 is above 1000; fix: give at most cpu: 1000"),
        (svc("{ pids: 0 }"), "m.yaml:8:26: pids must be from 1 to 4194304, got 0; fix: set pids between 1 and 4194304"),
        (
            svc("{ disk: 1Gi }"),
            "m.yaml:8:20: spec.services[0].resources: unknown field `disk`, expected one of `memory`, `cpu`, `pids`; fix: remove it (allowed here: memory, cpu, pids)",
        ),
    ]);
}

#[test]
fn rollouts() {
    let svc = |body: &str| doc(&format!("  services:\n{body}"));
    let m = ok(&svc("    - { name: a, component: registry }\n"));
    assert_eq!(m.services[0].rollout, rollout::DEFAULT_ROLLOUT);
    let m = ok(&svc(
        "    - name: a\n      component: registry\n      rollout: { maxSurge: 1, maxUnavailable: 0, progressDeadlineMs: 30000, autoRollback: true }\n",
    ));
    let want = Rollout { max_surge: 1, max_unavailable: 0, progress_deadline_ms: 30_000, auto_rollback: true };
    assert_eq!(m.services[0].rollout, want);
    // maxSurge alone: nothing goes down (Kubernetes' reading).
    let m = ok(&svc("    - { name: a, component: registry, rollout: { maxSurge: 2, autoRollback: false } }\n"));
    let want = Rollout { max_surge: 2, max_unavailable: 0, progress_deadline_ms: 30_000, auto_rollback: false };
    assert_eq!(m.services[0].rollout, want);

    check_errors(&[
        (
            svc("    - { name: a, component: registry, rollout: { maxSurge: 0, maxUnavailable: 0 } }\n"),
            "m.yaml:6:79: maxSurge and maxUnavailable are both 0: no instance could ever be replaced; fix: set maxSurge: 1 (start a new instance first) or maxUnavailable: 1 (replace in place)",
        ),
        (
            svc("    - { name: a, component: registry, port: 7001, rollout: { maxSurge: 1 } }\n"),
            "m.yaml:6:72: maxSurge needs automatic ports: the service's instances have fixed ports, none is free for a surge instance; fix: omit port (automatic ports), or use maxSurge: 0 and maxUnavailable: 1",
        ),
        (
            svc("    - { name: a, component: registry, rollout: { progressDeadlineMs: 5 } }\n"),
            "m.yaml:6:70: progressDeadlineMs must be from 100 to 3600000, got 5; fix: set progressDeadlineMs between 100 and 3600000",
        ),
        (
            svc("    - { name: a, component: registry, rollout: { maxSurge: -1 } }\n"),
            "m.yaml:6:60: maxSurge must be from 0 to 1000, got -1; fix: set maxSurge between 0 and 1000",
        ),
        (
            svc("    - { name: a, component: registry, rollout: { maxsurge: 1 } }\n"),
            "m.yaml:6:50: spec.services[0].rollout: unknown field `maxsurge`, expected one of `maxSurge`, `maxUnavailable`, `progressDeadlineMs`, `autoRollback`; fix: did you mean `maxSurge`? (allowed here: maxSurge, maxUnavailable, progressDeadlineMs, autoRollback)",
        ),
    ]);
}
