//! The load rows (`load` step), through the balancer with a JWT: data reads and writes,
//! logins, direct compute, jobs; the `afterload` and `durability` steps on data's writes; and
//! the `postgres` step, the load rows again on a cluster on PostgreSQL.

use std::time::{Duration, Instant};

use bench::report::{Row, Target};
use bench::stats::{ms, round2, runs, show_count, show_ms, spread};
use e2e::cluster::Cluster;
use e2e::procfs;
use e2e::topology::Topology;
use e2e::traffic::Api;
use e2e::wrk::{Run, Script, Wrk};
use reqwest::Method;
use serde_json::{Value, json};

use super::Bench;
use super::support::{TIGHT, p99_row, rand_suffix, ready_instance, sigkill, submit_job, until, upstream_of, wrk_row};

const JOBS: usize = 1000;
/// Client tasks submitting jobs, and rounds of [`JOBS`] each.
const JOB_CLIENTS: usize = 16;
const JOB_ROUNDS: usize = 3;
/// compute's default `COMPUTE_WORKERS`: the job slots of each instance.
const WORKERS: usize = 16;
/// Registered users whose logins are measured.
const USERS: usize = 4;
const PASSWORD: &str = "bench-password";

impl Bench {
    /// Step 4: data reads and writes, logins, direct compute, jobs, through the balancer.
    /// Returns a signed-in client for the later steps.
    pub(super) async fn load_rows(&mut self, cluster: &Cluster) -> Api {
        self.progress.step("load through the balancer: data reads, writes, logins, compute, jobs");
        let api = self.sign_in(cluster).await;
        let (base, run) = (api.base.clone(), self.run.clone());
        let bearer = format!("Bearer {}", api.token.as_deref().unwrap_or_default());
        let dir = tempfile::tempdir().expect("a temp dir for wrk scripts");
        let secs = Duration::from_secs(self.secs);

        // Reads: 100 keys written first.
        for n in 0..100 {
            let res = api
                .request(Method::POST, "/api/data")
                .json(&json!({"key": format!("{run}-r-{n}"), "value": {"n": n, "text": "a value to read back"}}))
                .send()
                .await
                .expect("creating a key to read");
            assert_eq!(res.status(), 201, "creating a key to read: {}", res.text().await.unwrap_or_default());
        }
        let wrk = |name: &str, script: Script, connections: u32| {
            let path = script.write(dir.path(), name);
            tokio::task::block_in_place(|| Wrk::new(&base).connections(connections).duration(secs).script(&path).run())
        };
        let row = wrk_row;

        self.progress.note("data reads");
        let reads = wrk(
            "reads",
            Script::new("GET", &format!("/api/data/{run}-r-{{n}}")).header("authorization", &bearer).cycle(100),
            16,
        );
        self.rows.push(
            row(
                "dataReads",
                "data reads through the balancer",
                &reads,
                "reads/s",
                "reads",
                format!("wrk -t1 -c16 for {} s: GET /api/data/:key over 100 keys, JWT checked on each", self.secs),
            )
            .target(Target::at_least(20_000.0, ">= 20k/s")),
        );

        self.progress.note("data writes");
        let writes = self.data_writes(&api, "w");
        self.push_writes_full(&writes);

        self.progress.note("logins");
        // The CPU each login costs auth and the balancer: what says whether a hash runs at
        // its isolated speed (`cargo bench -p auth`) inside the cluster.
        let pids = |prefix: &str, list: &[Value]| -> Vec<u32> {
            let named = |i: &&Value| i["name"].as_str().is_some_and(|n| n.starts_with(prefix));
            list.iter().filter(named).filter_map(|i| i["pid"].as_u64()).map(|p| p as u32).collect()
        };
        let instances = cluster.instances().await;
        let (auth_pids, balancer_pids) = (pids("auth-", &instances), pids("balancer", &instances));
        let ticks = |pids: &[u32]| pids.iter().map(|&p| procfs::cpu_ticks(p)).sum::<u64>();
        let before = (ticks(&auth_pids), ticks(&balancer_pids));
        let logins = wrk(
            "logins",
            Script::new("POST", "/api/auth/login")
                .body(&format!(r#"{{"username":"{run}-u{{n}}","password":"{PASSWORD}"}}"#))
                .cycle(USERS as u64),
            4,
        );
        let ok = logins.requests.saturating_sub(logins.non_2xx).max(1) as f64;
        let per_login = |ticks: u64| round2(ticks as f64 * 1000.0 / procfs::TICKS_PER_SECOND as f64 / ok);
        let auth_cpu = per_login(ticks(&auth_pids).saturating_sub(before.0));
        let balancer_cpu = per_login(ticks(&balancer_pids).saturating_sub(before.1));
        // The most logins the machine's cores could verify at that CPU per login, with
        // nothing else to do: what the row's rate is bounded by.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ceiling = if auth_cpu > 0.0 { (cores * 1000.0 / auth_cpu).round() } else { 0.0 };
        self.rows.push(
            row(
                "logins",
                "logins through the balancer",
                &logins,
                "logins/s",
                "logins",
                format!(
                    "wrk -t1 -c4 for {} s: POST /api/auth/login of {USERS} users in turn (4 logins in flight, \
                     each an argon2id verification: enough to keep {cores} cores hashing), spread over auth-1..3; CPU \
                     per login: auth {auth_cpu} ms, balancer {balancer_cpu} ms (at that, {cores} cores verify at \
                     most {ceiling} logins/s)",
                    self.secs
                ),
            )
            .detail("authCpuMsPerLogin", auth_cpu)
            .detail("balancerCpuMsPerLogin", balancer_cpu)
            .detail("loginsCeilingPerSecond", ceiling)
            .target(Target::at_least(120.0, ">= 120/s")),
        );
        self.rows.push(p99_row(
            "loginsP99",
            "logins through the balancer: p99",
            &logins,
            Target::below(100.0, "< 100 ms"),
            "the logins row's wrk run",
        ));

        self.progress.note("direct compute");
        let compute = wrk(
            "compute",
            Script::new("POST", "/api/compute/direct")
                .header("authorization", &bearer)
                .body(r#"{"operation":"add","operands":[{n},3]}"#),
            16,
        );
        self.rows.push(row(
            "computeDirect",
            "direct compute through the balancer",
            &compute,
            "ops/s",
            "ops",
            format!("wrk -t1 -c16 for {} s: POST /api/compute/direct add, JWT checked", self.secs),
        ));

        self.progress.note(&format!("{JOBS} jobs"));
        let instances = cluster.instances().await;
        let (compute, balancer) = (pids("compute-", &instances), pids("balancer", &instances));
        self.jobs(&api, &[("compute", compute), ("balancer", balancer), ("bench", vec![std::process::id()])]).await;
        api
    }

    /// Registers the bench users through the balancer and signs the first in.
    pub(super) async fn sign_in(&self, cluster: &Cluster) -> Api {
        let anonymous = Api::new(&cluster.url_of("balancer-1").await);
        for n in 0..USERS {
            let res = anonymous.register(&format!("{}-u{n}", self.run), PASSWORD).await;
            assert_eq!(res.status(), 201, "registering a bench user: {}", res.text().await.unwrap_or_default());
        }
        let token = anonymous.login(&format!("{}-u0", self.run), PASSWORD).await;
        anonymous.with_token(Some(token))
    }

    /// wrk -c16 of `POST /api/data` through the balancer, a new key each (`<run>-<tag>-<n>`).
    pub(super) fn data_writes(&self, api: &Api, tag: &str) -> Run {
        let dir = tempfile::tempdir().expect("a temp dir for wrk scripts");
        let body = format!(r#"{{"key":"{}-{tag}-{{n}}","value":{{"n":{{n}},"text":"a new value"}}}}"#, self.run);
        let script = Script::new("POST", "/api/data")
            .header("authorization", &format!("Bearer {}", api.token.as_deref().unwrap_or_default()))
            .body(&body)
            .write(dir.path(), tag);
        let wrk = Wrk::new(&api.base).connections(16).duration(Duration::from_secs(self.secs)).script(&script);
        tokio::task::block_in_place(|| wrk.run())
    }

    /// The rows of the durable data writes (`SQLITE_SYNCHRONOUS=FULL`, the default): the rate
    /// and the p99, each with DESIGN's target.
    fn push_writes_full(&mut self, writes: &Run) {
        let rate = self.writes_row("FULL", writes).target(Target::at_least(5000.0, ">= 5k/s"));
        self.rows.push(rate);
        self.rows.push(p99_row(
            "dataWritesP99",
            "data writes through the balancer (durable): p99",
            writes,
            Target::below(15.0, "< 15 ms"),
            "the durable data writes row's wrk run",
        ));
    }

    /// The data-writes row for `SQLITE_SYNCHRONOUS=<mode>`.
    pub(super) fn writes_row(&self, mode: &str, writes: &Run) -> Row {
        let (id, metric, note) = match mode {
            "FULL" => (
                "dataWrites",
                "data writes through the balancer (durable: SQLITE_SYNCHRONOUS=FULL, the default)",
                "every commit synced to disk before its 201",
            ),
            _ => (
                "dataWritesNormal",
                "data writes through the balancer, SQLITE_SYNCHRONOUS=NORMAL",
                "data rolled to NORMAL through the manifest's env for this run (the WAL synced at checkpoints only: \
                 the last 201s before a power loss can be lost), then back",
            ),
        };
        wrk_row(
            id,
            metric,
            writes,
            "writes/s",
            "writes",
            format!(
                "wrk -t1 -c16 for {} s: POST /api/data of a new key each (one SQLite transaction, shared by the 3 \
                 instances), JWT checked; {note}",
                self.secs
            ),
        )
    }

    /// Jobs: [`JOBS`] submitted by [`JOB_CLIENTS`] tasks, then `/api/compute/stats` polled
    /// until all are completed, [`JOB_ROUNDS`] times (the median shown, each round in the
    /// details), and once by 8 tasks (the row's figure before it had 16, for comparison).
    /// The CPU time each of `parts` (named groups of processes) spent over the rounds, per
    /// job, goes into its details (what a job costs whom; load moves it less than the rate).
    pub(super) async fn jobs(&mut self, api: &Api, parts: &[(&str, Vec<u32>)]) {
        let ticks = |pids: &[u32]| pids.iter().map(|&p| procfs::cpu_ticks(p)).sum::<u64>();
        let eight = jobs_round(api, 8).await;
        let before: Vec<u64> = parts.iter().map(|(_, pids)| ticks(pids)).collect();
        let mut rounds = Vec::new();
        for _ in 0..JOB_ROUNDS {
            rounds.push(jobs_round(api, JOB_CLIENTS).await);
        }
        let total = (JOBS * JOB_ROUNDS) as f64;
        let per_job = |ticks: u64| round2(ticks as f64 * 1000.0 / procfs::TICKS_PER_SECOND as f64 / total);
        let cpu: Vec<(String, f64)> = parts
            .iter()
            .zip(before)
            .map(|((name, pids), before)| (format!("{name}CpuMsPerJob"), per_job(ticks(pids).saturating_sub(before))))
            .collect();
        let rates: Vec<f64> = rounds.iter().map(|r| r.per_second).collect();
        let (median, min, max) = spread(&rates);
        let failed: u64 = rounds.iter().map(|r| r.failed).sum();
        let submits: Vec<f64> = rounds.iter().map(|r| r.submit_ms).collect();
        let mut row = Row::new("jobs", "jobs through the balancer, submit to completed", median, "jobs/s");
        for (name, value) in cpu {
            row = row.detail(&name, value);
        }
        self.rows.push(
            row.shown(format!(
                "{} jobs/s (min {}, max {}; 8 clients: {})",
                show_count(median),
                show_count(min),
                show_count(max),
                show_count(eight.per_second)
            ))
            .how(format!(
                "{JOBS} add jobs POSTed by {JOB_CLIENTS} client tasks (as the load rows' 16 connections; all accepted in \
                 {}), then /api/compute/stats polled every 10 ms until all finished: first submit to last completion, \
                 3 instances × {WORKERS} workers, median of {JOB_ROUNDS} rounds, {failed} failed; beside it one round \
                 by 8 tasks",
                show_ms(spread(&submits).0)
            ))
            .detail("jobs", JOBS)
            .detail("clients", JOB_CLIENTS)
            .detail("perSecondRuns", runs(&rates))
            .detail("submitMsRuns", runs(&submits))
            .detail("allDoneMsRuns", runs(&rounds.iter().map(|r| r.all_ms).collect::<Vec<_>>()))
            .detail("clients8PerSecond", round2(eight.per_second))
            .detail("clients8SubmitMs", round2(eight.submit_ms))
            .detail("failed", failed + eight.failed)
            .target(Target::at_least(2000.0, ">= 2k/s")),
        );
    }

    /// Step 6: data writes still go through after the load. A write whose client went away
    /// at the end of a wrk run must not leave the shared database locked; if it did, data's
    /// instances are killed and restarted so the later steps can run, and the row says so.
    pub(super) async fn writes_after_load(&mut self, cluster: &Cluster, api: &Api) {
        self.progress.step("data writes still accepted after the load");
        // Three writes: round-robin spreads them over the three data instances.
        let mut outcomes = Vec::new();
        for n in 0..3 {
            let t0 = Instant::now();
            let res = api
                .request(Method::POST, "/api/data")
                .json(&json!({"key": format!("{}-probe-{n}", self.run), "value": n}))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            let outcome = match res {
                Ok(res) => {
                    let (status, upstream) = (res.status(), upstream_of(&res));
                    let body = res.text().await.unwrap_or_default();
                    format!(
                        "{status} from {upstream} in {}{}",
                        show_ms(ms(t0.elapsed())),
                        if status == 201 { String::new() } else { format!(": {body}") }
                    )
                }
                Err(e) => format!("no answer within 3 s ({e})"),
            };
            outcomes.push(outcome);
        }
        let ok = outcomes.iter().all(|o| o.starts_with("201 "));
        self.progress.note(&outcomes.join("; "));
        let mut how =
            format!("3 writes through the balancer right after the wrk runs, each within 3 s: {}", outcomes.join("; "));
        if !ok {
            // The lock dies with the process holding it. A rolling restart would wait forever
            // for a replacement that cannot migrate while the holder still runs, so every
            // data instance is killed at once (by the pid orch reports), and orch restarts them.
            self.progress.note("data's writes are stuck: kill -9 of data-1..3 to release the lock, then on");
            for name in ["data-1", "data-2", "data-3"] {
                let (pid, _) = ready_instance(cluster, name).await;
                sigkill(pid);
            }
            until(Duration::from_millis(50), "data's writes accepted again after the restart", || async {
                let res = api
                    .request(Method::POST, "/api/data")
                    .json(&json!({"key": format!("{}-probe-{}", self.run, rand_suffix()), "value": 0}))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                (res.status() == 201).then_some(())
            })
            .await;
            let topology = Self::topology();
            cluster.wait_routed(&topology.backend_instances()).await;
            how.push_str(
                "; writes were stuck (the shared database's write lock held by a connection left in a transaction \
                 by a cancelled write), so data-1..3 were killed and restarted before the next steps",
            );
        }
        self.rows.push(
            Row::new("writesAfterLoad", "data writes still accepted after the load", f64::from(u8::from(ok)), "yes/no")
                .shown(if ok { "yes" } else { "NO" })
                .target(Target::at_least(1.0, "yes"))
                .how(how),
        );
    }

    /// Step 7: the data writes again with `SQLITE_SYNCHRONOUS=NORMAL` (data rolled to it
    /// through the manifest, and back after), beside the durable default.
    pub(super) async fn durability(&mut self, cluster: &Cluster, topology: &Topology, api: &Api) {
        self.progress.step("data writes with SQLITE_SYNCHRONOUS=NORMAL (data rolled to it and back)");
        if !self.rows.iter().any(|r| r.id == "dataWrites") {
            self.progress.note("data writes, FULL");
            let writes = self.data_writes(api, "w");
            self.push_writes_full(&writes);
        }
        let progress = &self.progress;
        let roll = |yaml: String, what: &'static str| async move {
            let seq = cluster.latest_event().await;
            let t0 = Instant::now();
            cluster.edit(&yaml);
            cluster.wait_event_after(seq, "rolled", None, "data rolled out").await;
            cluster.wait_routed(&topology.backend_instances()).await;
            progress.note(&format!("data rolled to {what} and routed in {}", show_ms(ms(t0.elapsed()))));
        };
        roll(topology.clone().env("data", "SQLITE_SYNCHRONOUS", "NORMAL").yaml(), "NORMAL").await;
        self.progress.note("data writes, NORMAL");
        let writes = self.data_writes(api, "wn");
        roll(topology.yaml(), "FULL").await;
        self.rows.push(self.writes_row("NORMAL", &writes));
    }

    /// The load rows again on a second cluster, on PostgreSQL in the shape of
    /// `manifests/examples/postgres.yaml` (orch runs the server): the same data reads and
    /// writes, logins, direct compute and jobs, as rows whose ids end in `Pg`, sorted beside
    /// the SQLite ones.
    pub(super) async fn postgres(&mut self) {
        self.progress.step("a second cluster, on PostgreSQL (orch runs the server)");
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("a port").port();
        let cluster = Self::topology().name("bench-pg").on_postgres(port).start().await.poll_every(TIGHT);
        let (first, run) = (self.rows.len(), self.run.clone());
        self.run = format!("{run}pg");
        let api = self.load_rows(&cluster).await;
        if self.wants("pickup") {
            self.pickup(&api).await;
        }
        self.run = run;
        // DESIGN's targets are the default store's; on PostgreSQL the figures stand beside
        // them, and the rate rows show their p99 already.
        let mut seen = 0;
        self.rows.retain(|row| {
            seen += 1;
            seen <= first || !row.id.ends_with("P99")
        });
        for row in &mut self.rows[first..] {
            row.target = None;
            // Leaked: a handful of ids, once per run.
            row.id = Box::leak(format!("{}Pg", row.id).into_boxed_str());
            let metric = row.metric.split(" (").next().unwrap_or_default().to_owned();
            row.metric = format!("{metric}, on PostgreSQL");
            row.how = row.how.replace("one SQLite transaction", "one PostgreSQL transaction");
            row.how =
                row.how.replace("; every commit synced to disk before its 201", "; PostgreSQL's defaults (fsync on)");
        }
        self.progress.note("stopping the PostgreSQL cluster");
        tokio::task::block_in_place(|| drop(cluster));
    }
}

/// One round of the jobs row.
struct JobsRound {
    per_second: f64,
    submit_ms: f64,
    all_ms: f64,
    failed: u64,
}

/// [`JOBS`] `add` jobs submitted by `tasks` client tasks, until all are finished.
async fn jobs_round(api: &Api, tasks: usize) -> JobsRound {
    let counts = |stats: &Value| (stats["counts"]["completed"].as_u64(), stats["counts"]["failed"].as_u64());
    let stats = || async {
        let (status, stats) = api.get("/api/compute/stats").await;
        (status == 200).then_some(stats)
    };
    let before = stats().await.expect("compute stats");
    let (Some(completed0), Some(failed0)) = counts(&before) else { panic!("compute stats without counts: {before}") };
    let t0 = Instant::now();
    let submitters: Vec<_> = (0..tasks)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                for n in (t..JOBS).step_by(tasks) {
                    submit_job(&api, n).await;
                }
            })
        })
        .collect();
    for task in submitters {
        task.await.expect("a submitting task panicked");
    }
    let submitted = t0.elapsed();
    let failed = until(Duration::from_millis(10), "every job completed", || async {
        let (completed, failed) = counts(&stats().await?);
        let (completed, failed) = (completed? - completed0, failed? - failed0);
        (completed + failed >= JOBS as u64).then_some(failed)
    })
    .await;
    let all = t0.elapsed();
    JobsRound { per_second: JOBS as f64 / all.as_secs_f64(), submit_ms: ms(submitted), all_ms: ms(all), failed }
}
