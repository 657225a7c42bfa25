//! `orch apply` and `orch diff` against a running orch: hand it the manifest (and follow
//! the rollouts it starts), show what applying would change, or start the control plane
//! detached and wait until every instance is ready.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kit::orch_api::{self, ApplyRequest, ApplyResult, Change, ChangeKind};
use serde::Serialize;

use super::{Client, Failure, Outcome, control_url_of, print_json, rollout};
use crate::access::{self, Sources};
use crate::manifest::{self, Manifest};

fn print_changes(changes: &[Change]) -> bool {
    if changes.is_empty() {
        println!("no changes");
        return false;
    }
    for c in changes {
        println!("{} {}", c.change.sign(), c.summary);
    }
    true
}

/// The running orch of `m`'s data dir, if it listens at `url` (or at the URL it recorded
/// when `url` is `None`): a client holding `m`'s data dir as where the control token is.
/// `Ok(None)`: no orch runs on that data dir.
fn running_orch(url: Option<&str>, sources: &Sources, m: &Manifest) -> Result<Option<Client>, Failure> {
    let Some(record) = crate::state::running(&m.data_dir) else { return Ok(None) };
    let url = url.unwrap_or(&record.control_url);
    let same = access::loopback_port(url).is_some_and(|p| access::loopback_port(&record.control_url) == Some(p));
    if !same {
        return Err(Failure::Runtime(format!(
            "the orch of the data dir {} (pid {}) listens at {}, not at {url}; drop --control, or point it there",
            m.data_dir.display(),
            record.pid,
            record.control_url
        )));
    }
    let access = Sources { data_dir: Some(m.data_dir.clone()), ..sources.clone() };
    Ok(Some(Client::new(url, access)))
}

/// `orch diff FILE`: what applying FILE would change (everything, if no orch runs).
pub async fn diff(control: Option<&str>, sources: &Sources, file: &Path, json_out: bool) -> Outcome {
    let m = manifest::load(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let url = control.map(str::to_owned).or_else(|| control_url_of(&m));
    let changes = match running_orch(url.as_deref(), sources, &m)? {
        Some(client) => {
            let request = ApplyRequest { path: Some(m.path.clone()), dry_run: true };
            client.call::<ApplyResult>("/api/apply", &request).await?.changes
        }
        None => m
            .services
            .iter()
            .map(|s| Change {
                service: s.name.clone(),
                change: ChangeKind::Create,
                from: None,
                to: Some(s.replicas),
                summary: format!(
                    "create {} ({} instance{}; no cluster runs from {})",
                    s.name,
                    s.replicas,
                    if s.replicas == 1 { "" } else { "s" },
                    m.data_dir.display()
                ),
            })
            .collect(),
    };
    let different = if json_out {
        #[derive(Serialize)]
        struct Changes<'a> {
            changes: &'a [Change],
        }
        print_json(&Changes { changes: &changes });
        !changes.is_empty()
    } else {
        print_changes(&changes)
    };
    Ok(if different { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `orch apply FILE` when an orch already runs this cluster (FILE's data dir): hand it the
/// file, with the control token of that data dir. `Ok(None)`: no orch runs it; start one.
/// With `wait`, follows the rollouts it started: exit 1 if one fails.
pub async fn hand_over(
    control: Option<&str>,
    sources: &Sources,
    m: &Manifest,
    wait: bool,
) -> Result<Option<ExitCode>, Failure> {
    let url = control.map(str::to_owned).or_else(|| control_url_of(m));
    let Some(client) = running_orch(url.as_deref(), sources, m)? else {
        // Nothing runs on this data dir; something else answering on the port is another
        // cluster (starting would fail on the port anyway, so say it plainly).
        if let Some(url) = url
            && let Some(cluster) = Client::new(&url, Sources::default()).cluster().await
        {
            return Err(Failure::Runtime(format!(
                "another orch (cluster {}) answers at {url}; stop it (`orch down --control {url}`) or give this manifest another spec.controlPort",
                cluster.name,
            )));
        }
        return Ok(None);
    };
    let v: ApplyResult =
        client.call("/api/apply", &ApplyRequest { path: Some(m.path.clone()), dry_run: false }).await?;
    println!("applied {} to the running cluster {} ({}):", m.path.display(), m.name, client.base);
    print_changes(&v.changes);
    if wait {
        let mut ok = true;
        for c in v.changes.iter().filter(|c| matches!(c.change, ChangeKind::Roll | ChangeKind::Create)) {
            let history: orch_api::RolloutHistory = client.read(&format!("/api/rollouts/{}", c.service)).await?;
            ok &= rollout::wait(&client, &c.service, history.current).await?;
        }
        if !ok {
            return Err(Failure::Runtime("a rollout failed (see `orch rollout history SERVICE`)".into()));
        }
    }
    Ok(Some(ExitCode::SUCCESS))
}

/// `orch apply -d`: runs the control plane detached (its own session, output to
/// `DATA_DIR/orch.log`) and returns once every instance is ready.
pub async fn detach(file: &Path, m: &Manifest) -> Outcome {
    let exe = std::env::current_exe().map_err(|e| Failure::Runtime(format!("cannot find the orch binary: {e}")))?;
    crate::plane::prepare_data_dir(&m.data_dir).map_err(|e| Failure::Runtime(format!("{e:#}")))?;
    let log_path = m.data_dir.join("orch.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Failure::Runtime(format!("cannot open {}: {e}", log_path.display())))?;
    let log_start = log.metadata().map(|md| md.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("apply")
        .arg(file)
        .arg("--serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| Failure::Runtime(e.to_string()))?)
        .stderr(log);
    new_session(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| Failure::Runtime(format!("cannot start the control plane: {e}")))?;
    let started = Instant::now();
    let mut last_shown = String::new();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read(&log_path)
                .ok()
                .map(|b| String::from_utf8_lossy(b.get(log_start as usize..).unwrap_or(&b)).into_owned());
            eprint!("{}", tail.unwrap_or_default());
            let code = status.code().unwrap_or(1);
            return Err(if code == 2 {
                Failure::Usage(format!("the control plane did not start (see {})", log_path.display()))
            } else {
                Failure::Runtime(format!("the control plane exited ({status}); see {}", log_path.display()))
            });
        }
        let record = crate::state::read(&m.data_dir).filter(|r| r.pid == child.id());
        if let Some(record) = record {
            let client = Client::new(&record.control_url, Sources::default());
            if let Some(cluster) = client.cluster().await {
                let total: u64 = cluster.services.iter().map(|s| u64::from(s.replicas)).sum();
                let ready: u64 = cluster.services.iter().map(|s| u64::from(s.ready)).sum();
                let shown = format!("{ready}/{total}");
                if shown != last_shown {
                    eprintln!("  {ready}/{total} ready");
                    last_shown = shown;
                }
                if ready == total {
                    println!(
                        "cluster {} running in the background (pid {}): {total} instances ready in {:.2} s",
                        cluster.name,
                        child.id(),
                        started.elapsed().as_secs_f64()
                    );
                    println!("control API {}  log {}", record.control_url, log_path.display());
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(Failure::Runtime(format!(
                "not every instance is ready after 120 s; the cluster keeps trying in the background (`orch get`, {})",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
