//! Bad manifests on the first `orch apply`: each a precise error (file, line, column, the
//! fix), exit code 2, and nothing started.

use crate::{manifest, orch, stderr};

fn reg(extra: &str) -> String {
    manifest(&format!("    - name: registry\n      component: registry\n{extra}"))
}

#[test]
fn each_bad_manifest_is_a_precise_error_and_nothing_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cases: Vec<(&str, String, String)> = vec![
        (
            "invalid YAML",
            reg("    - name: web\n     component: registry\n"),
            "m.yaml:11:6: did not find expected '-' indicator".into(),
        ),
        (
            "unknown field",
            reg("    - name: web\n      component: registry\n      replica: 3\n"),
            "m.yaml:12:7: spec.services[1]: unknown field `replica`".into(),
        ),
        (
            "duplicate service name",
            reg("    - name: registry\n      component: registry\n"),
            "m.yaml:10:13: duplicate service name \"registry\" (services[0] has it too); fix: give every service its own name".into(),
        ),
        (
            "port clash between services",
            reg("    - { name: a, component: registry, replicas: 2, port: 7101 }\n    - { name: b, component: registry, port: 7102 }\n")
                .to_string(),
            "m.yaml:11:45: port 7102 of \"b\" overlap ports 7101-7102 of \"a\"; fix: give each service its own port range".into(),
        ),
        (
            "a port taken by another program",
            reg(&format!("    - {{ name: web, component: registry, port: {port} }}\n")),
            format!(
                "m.yaml:10:47: port {port} (web-1) is already in use by another program; fix: stop that program, or choose another port (omit port for automatic ports)"
            ),
        ),
        (
            "negative replicas",
            reg("    - { name: web, component: registry, replicas: -1 }\n"),
            "m.yaml:10:51: replicas must be from 0 to 1000, got -1; fix: set replicas between 0 and 1000".into(),
        ),
        (
            "huge replicas",
            reg("    - { name: web, component: registry, replicas: 5000000000 }\n"),
            "m.yaml:10:51: replicas must be from 0 to 1000, got 5000000000; fix: set replicas between 0 and 1000".into(),
        ),
        (
            "a dependency cycle",
            reg("    - { name: a, component: registry, dependsOn: [b] }\n    - { name: b, component: registry, dependsOn: [a] }\n"),
            "m.yaml:10:51: dependency cycle: a -> b -> a; fix: remove one of these dependsOn entries".into(),
        ),
        (
            "a command that does not exist",
            reg("    - name: web\n      command: [orch-test-no-such-program, --port, '{port}']\n"),
            "m.yaml:11:16: command \"orch-test-no-such-program\" not found on PATH; fix: install it, or give its path (relative to the manifest file)".into(),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, yaml, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), &yaml).unwrap();
        let out = orch(dir.path(), &["apply", "m.yaml"]);
        let err = stderr(&out);
        if out.status.code() != Some(2) || !err.contains(&expected) {
            wrong.push(format!("{what}: exit {:?}\n  stderr:   {err}\n  expected: {expected}", out.status.code()));
        }
        // Nothing started: no instance ever logged or announced.
        let events = std::fs::read_to_string(dir.path().join("data/events.jsonl")).unwrap_or_default();
        let logs = std::fs::read_dir(dir.path().join("data/logs")).map(|d| d.count()).unwrap_or(0);
        if events.contains("\"started\"") || logs > 0 {
            wrong.push(format!("{what}: something started: {events}"));
        }
    }
    drop(taken);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn a_missing_file_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = orch(dir.path(), &["apply", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.yaml: cannot read the manifest"), "{}", stderr(&out));
    let out = orch(dir.path(), &["scale"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}
