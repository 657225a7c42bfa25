//! The queue's SQLite schema: the job tallies (migrations/0004_tally.sql), which
//! `Queue::stats` reads and which must say exactly what a scan of every job says through
//! every change a job goes through, and the partial indexes the hot statements use.

use std::path::Path;
use std::time::Duration;

use compute::Queue;
use compute::queue::{NewJob, Outcome, Stats, Submitted};
use kit::db::Migrations;
use serde_json::value::RawValue;

use crate::{database, db_url, eventually, on_pg};

const LEASE: Duration = Duration::from_secs(60);

async fn queue_migrated_by(db: &Path, migrations: &Migrations) -> Queue {
    let pool = kit::db::connect(&db_url(db)).await.unwrap();
    kit::db::migrate(&pool, migrations).await.unwrap();
    Queue::new(pool)
}

async fn submit(queue: &Queue, priority: i64) -> String {
    let operands = RawValue::from_string("[1, 2]".into()).unwrap();
    let job = NewJob { operation: "add".into(), operands, priority, max_attempts: 3 };
    match queue.submit(&job, None).await.unwrap() {
        Submitted::Queued { id, .. } => id,
        Submitted::Replayed(_) => unreachable!(),
    }
}

/// The stats, after checking that the tallies agree with a scan.
async fn agreed(queue: &Queue, when: &str) -> Stats {
    let (tallied, scanned) = (queue.stats().await.unwrap(), queue.stats_by_scan().await.unwrap());
    assert_eq!(tallied, scanned, "{when}: the tallies against a scan of every job");
    tallied
}

fn completed(result: &str) -> Outcome {
    Outcome::Completed(RawValue::from_string(result.into()).unwrap())
}

#[tokio::test]
async fn the_tallies_agree_with_a_scan_through_a_jobs_whole_life() {
    let (_dir, db) = database().await;
    let queue = queue_migrated_by(&db, &compute::MIGRATIONS).await;
    assert_eq!(agreed(&queue, "empty").await, Stats::default());
    let mut ids = Vec::new();
    for priority in [0, 5, 0, 1, 0, 0] {
        ids.push(submit(&queue, priority).await);
    }
    agreed(&queue, "submitted").await;

    let claims = queue.settle(&[], &["i/w1", "i/w2", "i/w3"], LEASE).await.unwrap().claimed;
    let [a, b, c] = &claims[..] else { panic!("three claims") };
    agreed(&queue, "claimed").await;
    let (retry, fatal) = (
        Outcome::Failed { error: "busy".into(), permanent: false },
        Outcome::Failed { error: "bad".into(), permanent: true },
    );
    let done = completed("3");
    let settled = queue.settle(&[(a, &done), (b, &retry), (c, &fatal)], &["i/w1", "i/w2"], LEASE).await.unwrap();
    agreed(&queue, "recorded and claimed again").await;
    let [d, e] = &settled.claimed[..] else { panic!("two claims") };
    assert!(queue.release(e).await.unwrap(), "handed back");
    queue.renew(d, LEASE).await.unwrap();
    let cancelled = ids.iter().rev().find(|id| **id != d.job.id && **id != e.job.id).unwrap();
    assert!(matches!(queue.cancel(cancelled).await.unwrap(), compute::queue::Cancel::Cancelled(_)));
    queue.settle(&[(d, &completed("4"))], &[], LEASE).await.unwrap();

    let stats = agreed(&queue, "released, renewed, cancelled, completed").await;
    // queued, running, completed, failed, cancelled
    assert_eq!(stats.counts, [2, 0, 2, 1, 1], "{stats:?}");
    assert_eq!(stats.completed_last_minute, 2);
    let per_worker: Vec<_> =
        stats.workers.iter().map(|w| (w.worker.as_str(), w.running, w.completed, w.failed)).collect();
    assert!(per_worker.contains(&("i/w1", 0, 2, 0)) && per_worker.contains(&("i/w3", 0, 0, 1)), "{per_worker:?}");

    // Finished jobs purged: the tallies lose them as the table does.
    eventually(Duration::from_secs(10), "the finished jobs purged", || async {
        queue.purge(Duration::ZERO).await.unwrap();
        (queue.stats_by_scan().await.unwrap().counts[2..] == [0, 0, 0]).then_some(())
    })
    .await;
    let stats = agreed(&queue, "purged").await;
    assert_eq!(stats.counts, [2, 0, 0, 0, 0], "{stats:?}");
}

/// A database that held jobs before the tallies came gets them counted by the migration.
#[tokio::test]
async fn the_migration_tallies_the_jobs_already_there() {
    let (_dir, db) = database().await;
    if on_pg(&db) {
        return; // the tallies are SQLite's
    }
    let before = Migrations { sqlite: &compute::MIGRATIONS.sqlite[..3], postgres: &[] };
    let queue = queue_migrated_by(&db, &before).await;
    for priority in [0, 1, 2] {
        submit(&queue, priority).await;
    }
    let claims = queue.settle(&[], &["i/w1", "i/w2"], LEASE).await.unwrap().claimed;
    queue.settle(&[(&claims[0], &completed("3"))], &[], LEASE).await.unwrap();
    let scanned = queue.stats_by_scan().await.unwrap();
    kit::db::migrate(queue.db(), &compute::MIGRATIONS).await.unwrap();
    assert_eq!(agreed(&queue, "migrated").await, scanned);
    assert_eq!(scanned.counts, [1, 1, 1, 0, 0]);
}

/// The statements a busy queue runs most read a partial index (0005), not a scan of the
/// jobs of every status.
#[tokio::test]
async fn the_queues_reads_use_its_partial_indexes() {
    let (_dir, db) = database().await;
    if on_pg(&db) {
        return;
    }
    let queue = queue_migrated_by(&db, &compute::MIGRATIONS).await;
    let plans = [
        ("SELECT seq FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq LIMIT 1", "jobs_queued"),
        ("SELECT 1 FROM jobs WHERE status = 'queued'", "jobs_queued"),
        ("SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running'", "jobs_lease"),
        ("SELECT seq FROM jobs WHERE status = 'running' AND lease_expires_at < 1", "jobs_lease"),
    ];
    let mut conn = queue.db().acquire().await.unwrap();
    for (query, index) in plans {
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {query}")).fetch_all(&mut *conn).await.unwrap();
        let plan: Vec<&str> = plan.iter().map(|(.., detail)| detail.as_str()).collect();
        assert!(
            plan.iter().any(|step| step.contains(index)) && !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{query}: {plan:?}"
        );
    }
}
