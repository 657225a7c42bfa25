//! [`Queue::settle`]: outcomes and claims for several workers in one write transaction,
//! all or nothing.

use std::time::Duration;

use compute::Queue;
use compute::queue::{NewJob, Outcome, Status, Submitted};
use serde_json::value::RawValue;

use crate::database;

const LEASE: Duration = Duration::from_secs(60);

async fn queue() -> (tempfile::TempDir, Queue) {
    let (dir, db) = database().await;
    let pool = kit::db::connect(&crate::db_url(&db)).await.unwrap();
    kit::db::migrate(&pool, &compute::MIGRATIONS).await.unwrap();
    (dir, Queue::new(pool))
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap()
}

async fn submit(queue: &Queue, priority: i64) -> String {
    let job = NewJob { operation: "add".into(), operands: raw("[1, 2]"), priority, max_attempts: 3 };
    match queue.submit(&job, None).await.unwrap() {
        Submitted::Queued { id, .. } => id,
        Submitted::Replayed(_) => unreachable!(),
    }
}

/// Makes any claim for the worker named `doomed` fail inside the database, as a crash in
/// the middle of a settle would: whatever the settle wrote before must not stay.
async fn doom(queue: &Queue) {
    let mut conn = queue.db().acquire().await.unwrap();
    let statements: &[&str] = match queue.db().dialect() {
        kit::db::Dialect::Sqlite => &["CREATE TRIGGER doom BEFORE UPDATE OF worker ON jobs WHEN NEW.worker = 'doomed'
              BEGIN SELECT RAISE(ABORT, 'doomed'); END"],
        kit::db::Dialect::Postgres => &[
            "CREATE FUNCTION doom() RETURNS trigger AS $$ BEGIN
                IF NEW.worker = 'doomed' THEN RAISE EXCEPTION 'doomed'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER doom BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION doom()",
        ],
    };
    for statement in statements {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
}

async fn status(queue: &Queue, id: &str) -> Status {
    queue.get(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn one_settle_claims_a_job_for_each_idle_worker_in_queue_order() {
    let (_dir, queue) = queue().await;
    let ids = [submit(&queue, 0).await, submit(&queue, 5).await, submit(&queue, 0).await];
    let settled = queue.settle(&[], &["i/w1", "i/w2", "i/w3", "i/w4"], LEASE).await.unwrap();
    assert!(settled.recorded.is_empty());
    let claimed: Vec<_> = settled.claimed.iter().map(|c| (c.job.id.as_str(), c.job.worker.as_deref())).collect();
    assert_eq!(
        claimed,
        [(ids[1].as_str(), Some("i/w1")), (ids[0].as_str(), Some("i/w2")), (ids[2].as_str(), Some("i/w3"))],
        "highest priority first, then oldest; one job per worker, fewer when the queue runs short"
    );
    assert_ne!(settled.claimed[0].token, settled.claimed[1].token, "each claim has a lease of its own");
    for claimed in &settled.claimed {
        assert_eq!((claimed.job.status, claimed.job.attempts), (Status::Running, 1));
    }
    assert!(queue.claim("other/w1", LEASE).await.unwrap().is_none(), "nothing is claimed twice");
}

#[tokio::test]
async fn the_claims_of_a_settle_commit_together_or_not_at_all() {
    let (_dir, queue) = queue().await;
    let ids = [submit(&queue, 0).await, submit(&queue, 0).await, submit(&queue, 0).await];
    doom(&queue).await;
    // The third claim fails: the first two, already made in the same settle, are undone.
    let err = queue.settle(&[], &["i/w1", "i/w2", "doomed"], LEASE).await.unwrap_err();
    assert!(err.to_string().contains("doomed"), "{err}");
    for id in &ids {
        assert_eq!(status(&queue, id).await, Status::Queued, "no job stays claimed by a failed settle");
    }
    let settled = queue.settle(&[], &["i/w1", "i/w2", "i/w3"], LEASE).await.unwrap();
    assert_eq!(settled.claimed.len(), 3);
}

#[tokio::test]
async fn an_outcome_and_the_next_claim_commit_together() {
    let (_dir, queue) = queue().await;
    let first = submit(&queue, 0).await;
    let running = queue.claim("i/w1", LEASE).await.unwrap().unwrap();
    let next = submit(&queue, 0).await;
    doom(&queue).await;
    let done = Outcome::Completed(raw("3"));

    // The claim fails after the outcome was written: the outcome is undone with it, so the
    // job is still running under its lease (its holder records it again), nothing is lost
    // and the next job is still queued for anyone.
    queue.settle(&[(&running, &done)], &["doomed"], LEASE).await.unwrap_err();
    assert_eq!((status(&queue, &first).await, status(&queue, &next).await), (Status::Running, Status::Queued));

    let settled = queue.settle(&[(&running, &done)], &["i/w1"], LEASE).await.unwrap();
    assert_eq!(settled.recorded, [Some(Status::Completed)]);
    assert_eq!(settled.claimed.iter().map(|c| c.job.id.as_str()).collect::<Vec<_>>(), [next.as_str()]);
    let job = queue.get(&first).await.unwrap().unwrap();
    assert_eq!((job.status, job.result.map(|r| r.get().to_owned())), (Status::Completed, Some("3".to_owned())));

    // Recorded once: the same outcome again finds no lease.
    let again = queue.settle(&[(&running, &done)], &[], LEASE).await.unwrap();
    assert_eq!(again.recorded, [None]);
}

#[tokio::test]
async fn a_settle_records_every_outcome_under_its_own_lease() {
    let (_dir, queue) = queue().await;
    let ids = [submit(&queue, 0).await, submit(&queue, 0).await, submit(&queue, 0).await];
    let settled = queue.settle(&[], &["i/w1", "i/w2", "i/w3"], LEASE).await.unwrap();
    let [a, b, c] = &settled.claimed[..] else { panic!("three claims") };
    let mut stale = c.clone();
    stale.token = "not-the-lease".into();
    let outcomes = [
        Outcome::Completed(raw("1")),
        Outcome::Failed { error: "busy".into(), permanent: false },
        Outcome::Failed { error: "bad".into(), permanent: true },
        Outcome::Completed(raw("2")),
    ];
    let finished = [(a, &outcomes[0]), (b, &outcomes[1]), (&stale, &outcomes[3]), (c, &outcomes[2])];
    let settled = queue.settle(&finished, &[], LEASE).await.unwrap();
    assert_eq!(settled.recorded, [Some(Status::Completed), Some(Status::Queued), None, Some(Status::Failed)]);
    assert_eq!(
        [status(&queue, &ids[0]).await, status(&queue, &ids[1]).await, status(&queue, &ids[2]).await],
        [Status::Completed, Status::Queued, Status::Failed]
    );
}

/// A job reads back (on a SQLite file on the caller's thread, `Db::read_now`) with every
/// column as written: a queued one with its nulls, a completed one with its result's exact
/// text, its worker, attempts and times; an unknown id as none.
#[tokio::test]
async fn a_job_reads_back_as_written() {
    let (_dir, queue) = queue().await;
    let id = submit(&queue, 7).await;
    let queued = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((queued.status, queued.priority, queued.operands.get()), (Status::Queued, 7, "[1, 2]"));
    assert!(queued.result.is_none() && queued.worker.is_none());
    assert!(queued.started_at.is_none() && queued.finished_at.is_none());

    let claimed = queue.claim("i/w1", LEASE).await.unwrap().expect("the job claimed");
    assert!(queue.complete(&claimed, &raw(r#"{"sum": 3.0e0}"#)).await.unwrap());
    let done = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.result.as_deref().map(RawValue::get), Some(r#"{"sum": 3.0e0}"#));
    assert_eq!((done.worker.as_deref(), done.attempts, done.max_attempts), (Some("i/w1"), 1, 3));
    assert!(done.started_at.is_some() && done.finished_at >= done.started_at);
    assert!(queue.get("no-such-job").await.unwrap().is_none());
}
