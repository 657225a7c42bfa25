//! The queue's leases, driven directly: a worker that stops renewing loses its job, and only
//! the holder of the current lease can write an outcome.

use std::time::Duration;

use compute::Queue;
use compute::queue::{NewJob, Status, Submitted};
use kit::time::unix_millis;
use serde_json::value::RawValue;

use crate::{database, eventually};

async fn queue() -> (tempfile::TempDir, Queue) {
    let (dir, _) = database().await;
    let pool = kit::db::connect(&url(&dir)).await.unwrap();
    kit::db::migrate(&pool, &compute::MIGRATIONS).await.unwrap();
    (dir, Queue::new(pool))
}

fn url(dir: &tempfile::TempDir) -> String {
    crate::db_url(&dir.path().join("compute.sqlite"))
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap()
}

async fn submit(queue: &Queue, max_attempts: i64) -> String {
    let job = NewJob { operation: "sleep".into(), operands: raw("[1]"), priority: 0, max_attempts };
    match queue.submit(&job, None).await.unwrap() {
        Submitted::Queued { id, .. } => id,
        Submitted::Replayed(_) => unreachable!(),
    }
}

#[tokio::test]
async fn an_expired_lease_puts_the_job_back_until_it_runs_out_of_attempts() {
    let (_dir, queue) = queue().await;
    let id = submit(&queue, 2).await;
    let short = Duration::from_millis(1);

    let first = queue.claim("ghost/w1", short).await.unwrap().expect("a queued job");
    assert_eq!((first.job.id.as_str(), first.job.attempts), (id.as_str(), 1));
    // The ghost never renews; once its lease is over, another worker gets the job.
    let second = eventually(Duration::from_secs(5), "the job claimed again", || async {
        queue.claim("other/w1", short).await.unwrap()
    })
    .await;
    assert_eq!((second.job.attempts, second.job.worker.as_deref()), (2, Some("other/w1")));
    assert_eq!(second.job.error.as_deref(), Some("the lease of ghost/w1 expired during attempt 1"));

    // The first holder's late outcome does not count.
    assert!(!queue.complete(&first, &raw("\"late\"")).await.unwrap());
    assert!(!queue.renew(&first, short).await.unwrap());
    assert_eq!(queue.fail(&first, "late", false).await.unwrap(), None);

    // The second lease expires too: no attempts left, so the job fails with that error.
    eventually(Duration::from_secs(5), "the job failed", || async {
        assert!(queue.claim("other/w2", short).await.unwrap().is_none(), "nothing to claim");
        let job = queue.get(&id).await.unwrap().unwrap();
        (job.status == Status::Failed).then_some(job)
    })
    .await;
    let job = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(job.error.as_deref(), Some("the lease of other/w1 expired during attempt 2"));
    assert_eq!(job.attempts, 2);
    assert!(job.finished_at.is_some());
    assert!(!queue.complete(&second, &raw("\"late\"")).await.unwrap(), "the outcome is written once");
}

/// A peek counts the queued jobs up to what it is asked about (the idle workers a settle
/// may claim for), and a settle is worth as many claims as that count, or all idle workers
/// once a lease has expired.
#[tokio::test]
async fn a_peek_counts_the_queued_jobs_a_settle_may_claim() {
    let (_dir, queue) = queue().await;
    for _ in 0..3 {
        submit(&queue, 3).await;
    }
    let (two, all) = (queue.peek(2).await.unwrap(), queue.peek(16).await.unwrap());
    assert_eq!((two.queued, all.queued), (2, 3));
    let now = kit::time::unix_millis();
    assert_eq!(all.claims(now, 16), 3, "as many as are queued");
    assert_eq!(all.claims(now, 2), 2, "no more than are idle");
    let claimed = queue.claim("w", Duration::from_secs(60)).await.unwrap().unwrap();
    let peek = queue.peek(16).await.unwrap();
    assert_eq!((peek.queued, peek.next_expiry), (2, Some(claimed.expires_at)));
    assert_eq!(peek.claims(claimed.expires_at + 1, 16), 16, "an expired lease: every idle worker may find one");
}

#[tokio::test]
async fn the_holder_completes_exactly_once() {
    let (_dir, queue) = queue().await;
    let id = submit(&queue, 3).await;
    let claimed = queue.claim("w", Duration::from_secs(60)).await.unwrap().unwrap();
    assert!(queue.claim("w2", Duration::from_secs(60)).await.unwrap().is_none(), "a running job is not claimed twice");
    assert_eq!(queue.peek(4).await.unwrap().queued, 0);
    assert!(queue.renew(&claimed, Duration::from_secs(60)).await.unwrap());
    assert!(queue.complete(&claimed, &raw("42")).await.unwrap());
    assert!(!queue.complete(&claimed, &raw("43")).await.unwrap(), "a second completion is refused");
    let job = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.result.map(|r| r.get().to_owned())), (Status::Completed, Some("42".to_owned())));
}

#[tokio::test]
async fn a_retryable_failure_requeues_and_a_permanent_one_fails() {
    let (_dir, queue) = queue().await;
    let id = submit(&queue, 3).await;
    let claimed = queue.claim("w", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(queue.fail(&claimed, "busy", false).await.unwrap(), Some(Status::Queued));
    let job = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.error.as_deref()), (Status::Queued, Some("busy")));
    let claimed = queue.claim("w", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(claimed.job.attempts, 2);
    assert_eq!(queue.fail(&claimed, "bad input", true).await.unwrap(), Some(Status::Failed));
    let job = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts, job.error.as_deref()), (Status::Failed, 2, Some("bad input")));
}

/// A claim that waited for the write lock longer than a lease still writes a whole lease:
/// the clock is read once the lock is held, so no other worker reaps the job meanwhile and
/// it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_waited_for_the_lock_gets_a_whole_lease() {
    let (dir, queue) = queue().await;
    if url(&dir).starts_with("postgres") {
        // PostgreSQL has no database-wide write lock: the claim skips locked rows instead.
        return eprintln!("skipped: SQLite only (the write lock)");
    }
    let id = submit(&queue, 3).await;
    let lease = Duration::from_secs(2);

    // Another process holds the database's write lock.
    let other = kit::db::connect(&url(&dir)).await.unwrap();
    let holder = kit::db::begin_write(&other).await.unwrap();
    let began = unix_millis();
    let claim = tokio::spawn({
        let queue = queue.clone();
        async move { queue.claim("w1", lease).await }
    });
    // Longer than a lease passes while the claim waits for the lock.
    let held = lease.as_millis() as i64 * 5 / 4;
    eventually(Duration::from_secs(30), "more than a lease has passed", || async {
        (unix_millis() > began + held).then_some(())
    })
    .await;
    assert!(!claim.is_finished(), "the claim waits for the lock");
    let released = unix_millis();
    holder.commit().await.unwrap();

    let claimed = claim.await.unwrap().unwrap().expect("the queued job");
    assert!(
        claimed.expires_at > released,
        "the lease runs from when the lock was held: expires at {}, the lock was released at {released}",
        claimed.expires_at
    );
    assert!(queue.claim("w2", lease).await.unwrap().is_none(), "nobody else takes the job over");
    assert!(queue.complete(&claimed, &raw("1")).await.unwrap(), "the claimer still holds the lease");
    let job = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts, job.worker.as_deref()), (Status::Completed, 1, Some("w1")));
}
