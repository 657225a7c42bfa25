//! `orch verify`: Jepsen-style consistency checking of the running cluster under its own
//! faults. Clients drive workloads through the balancer ([`workload`]) while the
//! [`nemesis`] injects faults through orch's chaos API; every operation is recorded in a
//! [`history`] (invoke, then ok, fail or info); at the end the history is checked
//! ([`checks`], with the linearizability search in [`checker`]) and [`report`]ed.
//!
//! Exit codes: 0 valid, 1 invalid, 3 unknown (the search gave up, or a job never finished);
//! 2 bad usage; 4 when the run could not be made or its results not written (orch or the
//! balancer unreachable, `--out` not writable: the verdict is still printed then).

pub mod checker;
pub mod checks;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::orch_api::{InstanceList, Status};

use crate::cli::{Client, Failure, Outcome};
use checker::{Bound, Verdict};
use workload::{Api, Recorder};

/// How many register keys a run uses: few, so that clients collide on them.
const KEYS: usize = 5;
/// How long, after the run, the jobs may take to finish before the verdict is unknown.
const SETTLE: Duration = Duration::from_secs(120);

/// `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Register,
    Jobs,
    All,
}

/// `orch verify`'s options.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// What the clients do: register (read, write, cas on data items), jobs (compute jobs
    /// with idempotency keys), or all.
    #[arg(long, value_enum, default_value = "register")]
    pub workload: Workload,
    /// The faults injected, comma-separated: kill, pause, latency, errors, partition (needs
    /// orch started with ORCH_PARTITIONS=1), all, or none.
    #[arg(long, value_name = "LIST", default_value = "kill,pause,latency,errors")]
    pub nemesis: String,
    /// How long the clients run (like 20s, 1m).
    #[arg(long = "for", value_name = "DUR", default_value = "60s", value_parser = crate::chaos::parse_duration)]
    pub span: Duration,
    /// Concurrent clients.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: u32,
    /// The seed of the operations and of the fault schedule (default: from the clock).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Where the history, results and timeline are written.
    #[arg(long, value_name = "DIR", default_value = "orch-verify")]
    pub out: PathBuf,
    /// Check only: generate a history of N operations and time the checker on it (the
    /// benchmark's row).
    #[arg(long, value_name = "N", hide = true)]
    pub bench_checker: Option<usize>,
}

/// A small deterministic generator (xorshift64*), so a seed replays a run's choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn exit(verdict: Verdict) -> ExitCode {
    ExitCode::from(match verdict {
        Verdict::Valid => 0,
        Verdict::Invalid => 1,
        Verdict::Unknown => 3,
    })
}

/// The URL of a running instance of the service whose component is `component`, and that
/// service's name.
async fn find(client: &Client, component: &str) -> Result<Option<(String, String)>, Failure> {
    let cluster: kit::orch_api::Cluster = client.read("/api/cluster").await?;
    let Some(service) = cluster.services.iter().find(|s| s.component.as_deref() == Some(component)) else {
        return Ok(None);
    };
    let list: InstanceList = client.read(&format!("/api/instances?service={}", service.name)).await?;
    let url = list.instances.iter().find(|i| i.status == Status::Running).map(|i| i.url.clone());
    Ok(url.map(|u| (service.name.clone(), u)))
}

/// The exit code of a run that could not be made or whose results were not written: apart
/// from 1 (invalid) and 3 (unknown), so a script can tell them apart.
pub const EXIT_RUN_FAILED: u8 = 4;

/// `orch verify ...`. A failure to run (orch or the balancer unreachable, the results not
/// written) exits [`EXIT_RUN_FAILED`], so 1 means only invalid and 3 only unknown.
pub async fn verify(client: &Client, o: Options) -> Outcome {
    match run(client, o).await {
        Err(Failure::Unreachable(m) | Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(EXIT_RUN_FAILED))
        }
        other => other,
    }
}

async fn run(client: &Client, o: Options) -> Outcome {
    if let Some(n) = o.bench_checker {
        return Ok(bench_checker(n));
    }
    let actions = nemesis::parse(&o.nemesis).map_err(Failure::Usage)?;
    if o.clients == 0 || o.clients > 256 {
        return Err(Failure::Usage("--clients must be from 1 to 256".into()));
    }
    if o.workload == Workload::All && o.clients < 2 {
        return Err(Failure::Usage(
            "--workload all needs --clients 2 or more (one client for registers, one for jobs)".into(),
        ));
    }
    if o.span.is_zero() || o.span > Duration::from_secs(3600) {
        return Err(Failure::Usage("--for must be above 0 and at most 1h".into()));
    }
    let seed = o.seed.unwrap_or_else(|| kit::time::unix_millis() as u64);
    let run = format!("{:x}{:04x}", kit::time::unix_millis(), seed & 0xffff);
    let (_, balancer) = find(client, "balancer")
        .await?
        .ok_or_else(|| Failure::Runtime("the cluster runs no balancer instance to send clients through".into()))?;
    let api = Api::connect(&balancer, &run).await.map_err(Failure::Runtime)?;
    let (register, jobs) = match o.workload {
        Workload::Register => (true, false),
        Workload::Jobs => (false, true),
        Workload::All => (true, true),
    };
    let mut targets = Vec::new();
    for (on, component) in [(register, "data"), (jobs, "compute")] {
        if on {
            let (service, _) = find(client, component).await?.ok_or_else(|| {
                Failure::Runtime(format!("the cluster runs no {component} instance for this workload"))
            })?;
            targets.push(service);
        }
    }
    let keys = if register { workload::register_keys(&run, KEYS) } else { Vec::new() };
    let initial = workload::prepare(&api, &run, &keys).await.map_err(Failure::Runtime)?;
    let initial: BTreeMap<String, (i64, String)> = keys.iter().cloned().zip(initial).collect();

    println!(
        "verify: {} clients for {} on {}, faults: {}, seed {seed}",
        o.clients,
        crate::chaos::show(o.span),
        targets.join(" and "),
        if actions.is_empty() { "none".to_owned() } else { o.nemesis.clone() }
    );
    let jobs_before = if jobs { workload::job_count(&api).await } else { None };
    let start = Instant::now();
    let end = start + o.span;
    let rec = Arc::new(Recorder::new(start));
    let mut tasks = tokio::task::JoinSet::new();
    for process in 0..o.clients {
        let (api, rec, keys, run) = (api.clone(), rec.clone(), keys.clone(), run.clone());
        let on_jobs = jobs && (!register || process % 2 == 1);
        tasks.spawn(async move {
            if on_jobs {
                workload::jobs_client(api, &rec, process, &run, seed, end).await;
            } else {
                workload::register_client(api, &rec, process, keys, seed, end).await;
            }
        });
    }
    let planned = nemesis::plan(seed, &actions, &targets, o.span);
    let faults = nemesis::run(client, planned, start).await;
    while tasks.join_next().await.is_some() {}
    let mut created = None;
    if jobs {
        workload::settle_jobs(&api, &rec, Instant::now() + SETTLE).await;
        created = jobs_before.zip(workload::job_count(&api).await).map(|(before, after)| after - before);
    }
    let mut history =
        Arc::try_unwrap(rec).map_or_else(|_| unreachable!("every client has ended"), Recorder::into_history);
    history.faults = faults;

    let key_reports = checks::registers(&history, &initial, Bound::default());
    let jobs_report = jobs.then(|| checks::jobs(&history, created));
    let verdict = Verdict::combine(
        key_reports.iter().map(|k| k.checked.verdict).chain(jobs_report.iter().filter_map(|j| j.verdict)),
    );
    let outcome = report::Outcome { history: &history, keys: &key_reports, jobs: jobs_report.as_ref(), verdict };
    print!("{}", report::summary(&outcome));
    let about = serde_json::json!({
        "seed": seed, "clients": o.clients, "forMs": o.span.as_millis() as u64,
        "nemesis": o.nemesis, "workload": format!("{:?}", o.workload).to_lowercase(), "balancer": balancer,
    });
    // The verdict is printed above whatever happens here.
    report::write(&o.out, &outcome, &about).map_err(|e| {
        Failure::Runtime(format!(
            "writing the results to {}: {e} (the verdict above stands; the history is lost)",
            o.out.display()
        ))
    })?;
    println!("history, results and timeline in {}/ (open timeline.html)", o.out.display());
    match publish(client, &o.out).await {
        Ok(()) => println!("the detector's dashboard links this timeline (last verify run)"),
        Err(e) => eprintln!("warning: the timeline is not linked from the dashboard: {e}"),
    }
    Ok(exit(verdict))
}

/// Leaves the run's timeline in the cluster's data dir (`verify/timeline.html`), where the
/// detector serves it and its dashboard links it; replaced whole, never half-written.
async fn publish(client: &Client, out: &std::path::Path) -> Result<(), String> {
    let cluster: kit::orch_api::Cluster = client.read("/api/cluster").await.map_err(|e| match e {
        Failure::Usage(m) | Failure::Runtime(m) | Failure::Unreachable(m) => m,
    })?;
    let dir = cluster.data_dir.join("verify");
    let written = (|| {
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(".timeline.html.partial");
        std::fs::copy(out.join("timeline.html"), &partial)?;
        std::fs::rename(&partial, dir.join("timeline.html"))
    })();
    written.map_err(|e| format!("{}: {e}", dir.display()))
}

/// `--bench-checker N`: the checker's speed on a generated valid history of N operations
/// over [`KEYS`] keys, printed as JSON (`{"ops", "seconds", "opsPerSecond", "verdict"}`).
fn bench_checker(n: usize) -> ExitCode {
    let per_key = n.div_ceil(KEYS);
    let histories: Vec<Vec<checker::Op>> =
        (0..KEYS as u64).map(|k| checker::simulate(per_key, 8, 0xbe7c4 + k)).collect();
    let initial = checker::State { version: 1, value: 0 };
    let started = Instant::now();
    let verdict = Verdict::combine(histories.iter().map(|ops| checker::check(initial, ops, Bound::default()).verdict));
    let seconds = started.elapsed().as_secs_f64();
    let ops = per_key * KEYS;
    println!(
        "{}",
        serde_json::json!({"ops": ops, "seconds": seconds, "opsPerSecond": ops as f64 / seconds, "verdict": verdict})
    );
    exit(verdict)
}
