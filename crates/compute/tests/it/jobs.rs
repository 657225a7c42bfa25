//! Jobs over real HTTP: instances sharing one database, each answering for every job.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{Instance, database, send};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// An instance that only answers the API (its jobs run elsewhere).
const NO_WORKERS: &[(&str, &str)] = &[("COMPUTE_WORKERS", "0")];
const ONE_WORKER: &[(&str, &str)] = &[("COMPUTE_WORKERS", "1")];

#[tokio::test]
async fn a_job_submitted_to_one_instance_runs_on_another_and_is_seen_on_both() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let b = Instance::start(&db, "compute-b", ONE_WORKER).await;

    let (status, accepted) =
        send(a.post("/api/compute/job", &json!({"operation": "factorial", "operands": [25]}))).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let id = accepted["jobId"].as_str().unwrap();

    let done = a.wait_for(id, "completed", SECS(10)).await;
    assert_eq!(done["result"], "15511210043330985984000000");
    assert_eq!(done["operation"], "factorial");
    assert_eq!(done["operands"], json!([25]));
    assert_eq!(done["priority"], 0);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["maxAttempts"], 3);
    assert_eq!(done["worker"], "compute-b/w1");
    assert!(done.get("error").is_none(), "{done}");
    for field in ["createdAt", "startedAt", "finishedAt"] {
        assert!(done[field].as_str().unwrap().ends_with('Z'), "{field}: {done}");
    }
    assert_eq!(b.job(id).await, done, "both instances answer the same");

    let (status, missing) = send(b.get("/api/compute/job/no-such-job")).await;
    assert_eq!((status, missing["error"].as_str().unwrap()), (404, "job no-such-job not found"));

    // The original job API's field names work too.
    let id = a.submit(json!({"type": "add", "data": [2, 2]})).await;
    assert_eq!(b.wait_for(&id, "completed", SECS(10)).await["result"], 4);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_seen_by_any_instance_returns_the_same_job() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let b = Instance::start(&db, "compute-b", NO_WORKERS).await;
    let body = json!({"operation": "fibonacci", "operands": [30]});

    let first = a.post("/api/compute/job", &body).header("idempotency-key", "k-1").send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = b.post("/api/compute/job", &body).header("idempotency-key", "k-1").send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);

    let stats = b.stats().await;
    assert_eq!(stats["counts"]["queued"], 1, "one job queued: {stats}");

    let other = json!({"operation": "fibonacci", "operands": [31]});
    let (status, reused) = send(a.post("/api/compute/job", &other).header("idempotency-key", "k-1")).await;
    assert_eq!(status, 422, "{reused}");
    let fresh = a.submit(body.clone()).await;
    assert_ne!(fresh, first["jobId"].as_str().unwrap(), "no key, a new job");
    assert_eq!(a.stats().await["counts"]["total"], 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn invalid_jobs_are_refused_and_nothing_is_queued() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let cases = [
        (json!({"operation": "modulo", "operands": [1]}), "supported operations: add, subtract"),
        (json!({"operation": "factorial", "operands": [-1]}), "factorial: n must not be negative"),
        (json!({"operation": "sleep", "operands": [10_001]}), "sleep: ms must be at most 10000"),
        (json!({"operation": "add", "operands": [1], "priority": "high"}), "priority must be a whole number"),
        (json!({"operation": "add", "operands": [1], "priority": 2.5}), "priority must be a whole number"),
        (json!({"operation": "divide", "operands": [1, 0]}), "division by zero"),
    ];
    for (body, expected) in cases {
        let (status, answer) = send(a.post("/api/compute/job", &body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(expected), "{body}: {answer}");
    }
    let (_, unknown) = send(a.post("/api/compute/job", &json!({"operation": "x", "operands": 1}))).await;
    assert_eq!(unknown["supported"].as_array().unwrap().last().unwrap(), "sleep", "jobs also offer sleep");
    assert_eq!(a.stats().await["counts"]["total"], 0);
    a.stop().await;
}

/// Any user may ask for any priority; it is clamped to -10..=10, so nobody can jump the
/// queue by more than that.
#[tokio::test]
async fn priorities_are_clamped_to_the_documented_range() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    assert_eq!(compute::PRIORITY_RANGE, -10..=10);
    for (asked, kept) in [
        ("1000", 10),
        ("-1000", -10),
        ("10", 10),
        ("-3", -3),
        ("4.0", 4),
        ("12345678901234567890123", 10),
        ("-1e300", -10),
        ("null", 0),
    ] {
        let body = format!(r#"{{"operation": "add", "operands": [1], "priority": {asked}}}"#);
        let (status, answer) = a.post_text("/api/compute/job", &body).await;
        assert_eq!(status, 202, "{body}: {answer}");
        let id = serde_json::from_str::<Value>(&answer).unwrap()["jobId"].as_str().unwrap().to_owned();
        assert_eq!(a.job(&id).await["priority"], kept, "priority {asked}");
    }
    a.stop().await;
}

#[tokio::test]
async fn only_a_queued_job_can_be_cancelled() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let id = a.submit(json!({"operation": "add", "operands": [1, 2]})).await;
    let (status, cancelled) = send(a.delete(&format!("/api/compute/job/{id}"))).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!((&cancelled["status"], &cancelled["jobId"]), (&json!("cancelled"), &json!(id)));
    assert!(cancelled["finishedAt"].is_string());
    let (status, again) = send(a.delete(&format!("/api/compute/job/{id}"))).await;
    assert_eq!(status, 409);
    assert_eq!(again["error"], format!("job {id} has already finished (cancelled)"));
    let (status, _) = send(a.delete("/api/compute/job/nope")).await;
    assert_eq!(status, 404);

    // A cancelled job never runs, even once workers appear.
    let b = Instance::start(&db, "compute-b", ONE_WORKER).await;
    let running = b.submit(json!({"operation": "sleep", "operands": [3000]})).await;
    b.wait_for(&running, "running", SECS(10)).await;
    let (status, answer) = send(a.delete(&format!("/api/compute/job/{running}"))).await;
    assert_eq!(status, 409);
    assert!(answer["error"].as_str().unwrap().contains("is running"), "{answer}");
    assert_eq!(a.job(&id).await["status"], "cancelled");
    assert!(a.job(&id).await.get("worker").is_none());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn priority_orders_the_queue() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let mut ids = Vec::new();
    for priority in [0, 5, -1, 5, 0] {
        ids.push(a.submit(json!({"operation": "add", "operands": [1], "priority": priority})).await);
    }
    let queue =
        compute::Queue::new(kit::db::connect_as(&crate::db_url(&db), "compute", Default::default()).await.unwrap());
    let mut order = Vec::new();
    while let Some(claimed) = queue.claim("test/w1", SECS(60)).await.unwrap() {
        order.push(claimed.job.id);
    }
    assert_eq!(
        order,
        [ids[1].clone(), ids[3].clone(), ids[0].clone(), ids[4].clone(), ids[2].clone()],
        "highest priority first, then oldest"
    );
    a.stop().await;
}

/// A submit for an idle worker (`Queue::submit_to`) claims its own job when no queued job
/// comes before it, and only then: it never jumps the queue. On PostgreSQL it only queues.
#[tokio::test]
async fn a_submit_for_an_idle_worker_starts_its_job_only_when_nothing_queued_comes_first() {
    use compute::queue::{NewJob, Start, Status, Submitted};
    let (_dir, db) = database().await;
    let _migrated = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let queue =
        compute::Queue::new(kit::db::connect_as(&crate::db_url(&db), "compute", Default::default()).await.unwrap());
    let job = |priority: i64| NewJob {
        operation: "add".into(),
        operands: serde_json::value::RawValue::from_string("[1, 2]".into()).unwrap(),
        priority,
        max_attempts: 3,
    };
    let start = Start { worker: "test/w1", lease: SECS(60) };
    let started = |submitted: Submitted| match submitted {
        Submitted::Queued { id, started, .. } => (id, started),
        Submitted::Replayed(_) => unreachable!(),
    };
    let sqlite = !crate::on_pg(&db);

    // An empty queue: started at once, as a claim would have left it.
    let (id, claimed) = started(queue.submit_to(&job(0), start).await.unwrap());
    assert_eq!(claimed.is_some(), sqlite, "started at once on SQLite only");
    if let Some(claimed) = &claimed {
        let stored = queue.get(&id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.attempts), (Status::Running, 1));
        assert_eq!(stored.worker.as_deref(), Some("test/w1"));
        let lease = claimed.expires_at - stored.started_at.unwrap();
        assert_eq!(lease, 60_000, "a whole lease from the start");
        assert!(queue.renew(claimed, SECS(60)).await.unwrap(), "the claim's token holds the lease");
        assert!(queue.complete(claimed, &serde_json::value::RawValue::from_string("3".into()).unwrap()).await.unwrap());
    }

    // A queued job of the same priority or higher comes first: queued behind it.
    let first = started(queue.submit(&job(5), None).await.unwrap()).0;
    let (same, claimed) = started(queue.submit_to(&job(5), start).await.unwrap());
    assert!(claimed.is_none(), "a job of the same priority waits");
    let (lower, claimed) = started(queue.submit_to(&job(1), start).await.unwrap());
    assert!(claimed.is_none(), "a job of lower priority waits");
    // One of a higher priority than anything queued is next anyway: started.
    let (top, claimed) = started(queue.submit_to(&job(6), start).await.unwrap());
    assert_eq!(claimed.is_some(), sqlite, "the highest priority of all starts at once");

    let mut order = Vec::new();
    while let Some(claimed) = queue.claim("test/w2", SECS(60)).await.unwrap() {
        order.push(claimed.job.id);
    }
    let expected = if sqlite { vec![first, same, lower] } else { vec![top, first, same, lower, id] };
    assert_eq!(order, expected, "the queue's order kept");
}

/// Over HTTP: a job submitted to an instance with an idle worker is running (on that
/// worker) by the time the 202 is answered.
#[tokio::test]
async fn a_job_submitted_to_an_idle_instance_is_running_when_accepted() {
    let (_dir, db) = database().await;
    let b = Instance::start(&db, "compute-b", ONE_WORKER).await;
    let (status, accepted) = send(b.post("/api/compute/job", &json!({"operation": "sleep", "operands": [300]}))).await;
    assert_eq!((status, &accepted["status"]), (202, &json!("queued")), "{accepted}");
    let id = accepted["jobId"].as_str().unwrap();
    if !crate::on_pg(&db) {
        let job = b.job(id).await;
        assert_eq!(
            (&job["status"], &job["worker"], &job["attempts"]),
            (&json!("running"), &json!("compute-b/w1"), &json!(1)),
            "{job}"
        );
    }
    // Its worker is busy: the next one waits in the queue, then runs on the same worker.
    let next = b.submit(json!({"operation": "add", "operands": [1, 2]})).await;
    let done = b.wait_for(&next, "completed", SECS(10)).await;
    assert_eq!((&done["worker"], &done["attempts"]), (&json!("compute-b/w1"), &json!(1)), "{done}");
    assert_eq!(b.wait_for(id, "completed", SECS(10)).await["result"], 300);
    let stats = b.stats().await;
    assert_eq!(stats["instance"]["completed"], 2, "{stats}");
    b.stop().await;
}

/// An instance's dispatcher claims for all its idle workers in one settle: jobs waiting
/// when it starts are claimed by one transaction (one clock reading: the same `startedAt`),
/// one per worker, and run side by side.
#[tokio::test]
async fn an_instance_claims_a_job_for_each_idle_worker_in_one_transaction() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(a.submit(json!({"operation": "sleep", "operands": [200]})).await);
    }
    let b = Instance::start(&db, "compute-b", &[("COMPUTE_WORKERS", "3")]).await;
    let (mut started, mut workers) = (HashSet::new(), HashSet::new());
    for id in &ids {
        let done = b.wait_for(id, "completed", SECS(10)).await;
        assert_eq!(done["attempts"], 1, "{done}");
        started.insert(done["startedAt"].as_str().unwrap().to_owned());
        workers.insert(done["worker"].as_str().unwrap().to_owned());
    }
    assert_eq!(started.len(), 1, "claimed together: {started:?}");
    let all: HashSet<String> = (1..=3).map(|i| format!("compute-b/w{i}")).collect();
    assert_eq!(workers, all, "one job per worker");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_lease_is_renewed_while_a_long_job_runs() {
    let (_dir, db) = database().await;
    let b = Instance::start(&db, "compute-b", &[("COMPUTE_WORKERS", "1"), ("JOB_LEASE_MS", "150")]).await;
    let id = b.submit(json!({"operation": "sleep", "operands": [800]})).await;
    let done = b.wait_for(&id, "completed", SECS(10)).await;
    assert_eq!((&done["result"], &done["attempts"]), (&json!(800), &json!(1)), "{done}");
    assert_eq!(b.stats().await["instance"]["lostLeases"], 0);
    b.stop().await;
}

#[tokio::test]
async fn a_job_that_keeps_failing_stops_after_max_attempts_with_its_last_error() {
    let (_dir, db) = database().await;
    let extra = [("COMPUTE_WORKERS", "1"), ("JOB_TIME_LIMIT_MS", "30"), ("JOB_MAX_ATTEMPTS", "2")];
    let b = Instance::start(&db, "compute-b", &extra).await;
    let id = b.submit(json!({"operation": "sleep", "operands": [5000]})).await;
    let failed = b.wait_for(&id, "failed", SECS(10)).await;
    assert_eq!((&failed["attempts"], &failed["maxAttempts"]), (&json!(2), &json!(2)), "{failed}");
    assert_eq!(failed["error"], "the computation exceeded the time limit of 30 ms");
    assert!(failed.get("result").is_none());
    let stats = b.stats().await;
    assert_eq!((&stats["instance"]["retried"], &stats["instance"]["failed"]), (&json!(1), &json!(1)), "{stats}");

    // An error the same input would give again fails at once.
    let id = b.submit(json!({"operation": "multiply", "operands": [1e200, 1e200]})).await;
    let failed = b.wait_for(&id, "failed", SECS(10)).await;
    assert_eq!(failed["attempts"], 1);
    assert!(failed["error"].as_str().unwrap().contains("too large to be a finite number"), "{failed}");
    b.stop().await;
}

#[tokio::test]
async fn a_graceful_shutdown_hands_a_running_job_back() {
    let (_dir, db) = database().await;
    let b = Instance::start(&db, "compute-b", &[("COMPUTE_WORKERS", "1"), ("SHUTDOWN_GRACE_MS", "300")]).await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let id = b.submit(json!({"operation": "sleep", "operands": [10_000]})).await;
    b.wait_for(&id, "running", SECS(10)).await;
    b.stop().await;
    let job = a.job(&id).await;
    assert_eq!((&job["status"], &job["attempts"]), (&json!("queued"), &json!(0)), "{job}");
    a.stop().await;
}

#[tokio::test]
async fn stats_count_jobs_by_status_and_by_worker() {
    let (_dir, db) = database().await;
    let b = Instance::start(&db, "compute-b", ONE_WORKER).await;
    let ids: Vec<String> =
        futures_util::future::join_all((0..3).map(|i| b.submit(json!({"operation": "add", "operands": [i, 1]})))).await;
    for id in &ids {
        b.wait_for(id, "completed", SECS(10)).await;
    }
    let stats = b.stats().await;
    assert_eq!(stats["service"], "compute-b");
    assert_eq!(stats["counts"]["completed"], 3, "{stats}");
    assert_eq!(stats["counts"]["total"], 3);
    assert_eq!(stats["throughput"]["completedLastMinute"], 3);
    assert_eq!(stats["throughput"]["perSecond"], 0.05);
    let worker = &stats["workers"][0];
    assert_eq!(
        (&worker["worker"], &worker["completed"], &worker["failed"]),
        (&json!("compute-b/w1"), &json!(3), &json!(0))
    );
    assert!(worker["meanDurationMs"].is_number() && worker["lastFinishedAt"].is_string(), "{worker}");
    assert_eq!((&stats["instance"]["workers"], &stats["instance"]["completed"]), (&json!(1), &json!(3)));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_across_two_instances_all_complete_once() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", &[]).await;
    let b = Instance::start(&db, "compute-b", &[]).await;
    let instances = [&a, &b];
    let ids: Vec<String> = futures_util::stream::iter(0..1000)
        .map(|i| instances[i % 2].submit(json!({"operation": "add", "operands": [i, 1]})))
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000, "distinct job ids");

    let stats = crate::eventually(SECS(120), "1000 jobs completed", || async {
        let stats = a.stats().await;
        (stats["counts"]["completed"] == 1000).then_some(stats)
    })
    .await;
    assert_eq!(stats["counts"]["total"], 1000, "{stats}");
    let (sa, sb) = (a.stats().await, b.stats().await);
    let written = sa["instance"]["completed"].as_u64().unwrap() + sb["instance"]["completed"].as_u64().unwrap();
    assert_eq!(written, 1000, "each job's outcome written exactly once");
    let per_worker: i64 = stats["workers"].as_array().unwrap().iter().map(|w| w["completed"].as_i64().unwrap()).sum();
    assert_eq!(per_worker, 1000);
    for id in ids.iter().step_by(97) {
        let job = b.job(id).await;
        assert_eq!(job["attempts"], 1, "{job}");
    }
    a.stop().await;
    b.stop().await;
}

/// Finished jobs (completed, failed, cancelled) are deleted once `JOB_RETENTION_MS` has
/// passed since they finished; queued and running ones never are.
#[tokio::test]
async fn finished_jobs_are_purged_after_the_retention_and_others_are_kept() {
    let (_dir, db) = database().await;
    let retention = [("JOB_RETENTION_MS", "1"), ("JOB_SWEEP_MS", "50")];
    let a = Instance::start(&db, "compute-a", &[NO_WORKERS, &retention].concat()).await;
    let add = json!({"operation": "add", "operands": [1, 2]});
    let queued = a.submit(add.clone()).await;
    let cancelled = a.submit(add).await;
    let (status, _) = send(a.delete(&format!("/api/compute/job/{cancelled}"))).await;
    assert_eq!(status, 200);
    let gone = |id: String| {
        let a = &a;
        async move {
            let (status, _) = send(a.get(&format!("/api/compute/job/{id}"))).await;
            (status == 404).then_some(())
        }
    };
    crate::eventually(SECS(10), "the cancelled job is purged", || gone(cancelled.clone())).await;
    assert_eq!(a.job(&queued).await["status"], "queued", "a queued job is kept however old");

    // Once a worker has run it, the job goes too.
    let b = Instance::start(&db, "compute-b", &[ONE_WORKER, &retention].concat()).await;
    crate::eventually(SECS(10), "the job ran and was purged", || gone(queued.clone())).await;
    let stats = a.stats().await;
    assert_eq!(stats["counts"]["total"], 0, "{stats}");
    assert_eq!(stats["workers"][0]["worker"], json!(null), "{stats}");
    b.stop().await;
    a.stop().await;
}

/// An idle worker is woken by a job submitted to another instance, not by its safety poll
/// (ten minutes here) nor by the fallback poll of `PRAGMA data_version` (ten seconds here):
/// on PostgreSQL by the notification of the queued job (`LISTEN`), on SQLite by the write to
/// the WAL file (inotify). Each of several jobs, submitted one at a time after the worker
/// went idle, completes within eight seconds, before either poll could have found it.
#[tokio::test]
async fn an_idle_worker_is_woken_by_a_submit_elsewhere_not_by_its_safety_poll() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", NO_WORKERS).await;
    let polls = [("COMPUTE_WORKERS", "1"), ("JOB_SAFETY_POLL_MS", "600000"), ("JOB_POLL_MS", "10000")];
    let b = Instance::start(&db, "compute-b", &polls).await;
    for n in 0..5 {
        let sent = std::time::Instant::now();
        let id = a.submit(json!({"operation": "add", "operands": [n, 1]})).await;
        let done = a.wait_for(&id, "completed", SECS(8)).await;
        assert_eq!((done["result"].clone(), done["worker"].clone()), (json!(n + 1), json!("compute-b/w1")));
        println!(
            "job {n}: picked up and done in {:?} (on {})",
            sent.elapsed(),
            crate::db_url(&db).split(':').next().unwrap()
        );
    }
    a.stop().await;
    b.stop().await;
}
