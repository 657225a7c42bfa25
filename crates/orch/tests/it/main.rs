//! The real `orch` binary, run as a user would: on temporary manifests with automatic
//! ports (`controlPort: 0`, no `port:`) and a temporary data dir. The test programs are the
//! registry component (`component: registry`) and `/bin/sh` commands.

mod access;
mod autoscale;
mod bad_input;
mod chaos;
mod cli;
mod export;
mod guard;
mod lifecycle;
mod resources;
mod rollout;
mod run_component;

use std::path::Path;
use std::process::Output;

pub use e2e::cluster::{Cluster, DEADLINE, gone, stderr, stdout};

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// Runs this build's `orch` with `args` in `dir`.
pub fn orch(dir: &Path, args: &[&str]) -> Output {
    e2e::cluster::run_orch(dir, args)
}

/// The head of every test manifest: automatic control port, data dir beside the manifest.
pub fn manifest(services: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: test }}\nspec:\n  dataDir: data\n  controlPort: 0\n  services:\n{services}"
    )
}

/// A registry, `files` (Python's http.server serving `hello.txt`, registered by orch; `extra`
/// lines end its entry) and a balancer routing `/files` to it: requests through the
/// balancer reach a real backend. The manifest is `m.yaml` in the directory returned.
pub fn files_behind_balancer(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/hello.txt"), "hello\n").unwrap();
    let yaml = manifest(&format!(
        "    - name: registry\n      component: registry\n    - name: files\n      command: [python3, -m, http.server, \"{{port}}\", --bind, 127.0.0.1]\n      dependsOn: [registry]\n{extra}    - name: balancer\n      component: balancer\n      dependsOn: [files]\n      routes: {{ /files: files }}\n      env: {{ HEALTH_CHECK_INTERVAL_MS: \"200\" }}\n",
    ));
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    dir
}

/// A registry (the dependency) and `web`: `replicas` registry components with fast probes.
pub fn web(replicas: u32) -> String {
    manifest(&format!(
        "    - name: registry\n      component: registry\n    - name: web\n      component: registry\n      replicas: {replicas}\n      dependsOn: [registry]\n      liveness: {{ path: /health, periodMs: 100, timeoutMs: 300, failureThreshold: 3 }}\n      restart: {{ backoffInitialMs: 20, backoffMaxMs: 200 }}\n      gracePeriodMs: 2000\n"
    ))
}
