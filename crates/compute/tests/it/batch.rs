//! Submits on SQLite share transactions (the group commit of `kit::db::lock::group`): those that
//! wait while a write is under way go into the next one together, each undone alone if it
//! fails, each answered after the commit.

use std::time::Duration;

use compute::Queue;
use compute::queue::{NewJob, Submitted};
use serde_json::value::RawValue;

use crate::{database, eventually};

async fn queue() -> Option<(tempfile::TempDir, String, Queue)> {
    let (dir, db) = database().await;
    let url = crate::db_url(&db);
    if url.starts_with("postgres") {
        // One transaction per submit there: the server shares WAL flushes among commits.
        eprintln!("skipped: SQLite only (batched submits)");
        return None;
    }
    let pool = kit::db::connect(&url).await.unwrap();
    pool.hold_groups_for(Duration::from_secs(60));
    kit::db::migrate(&pool, &compute::MIGRATIONS).await.unwrap();
    Some((dir, url, Queue::new(pool)))
}

fn job(operands: &str) -> NewJob {
    NewJob {
        operation: "add".into(),
        operands: RawValue::from_string(operands.to_owned()).unwrap(),
        priority: 0,
        max_attempts: 3,
    }
}

/// Sends `jobs` at once while another process holds the write lock, then lets it go; the
/// answers in order, and the group transactions they took.
async fn submit_while_locked(
    queue: &Queue,
    url: &str,
    jobs: Vec<NewJob>,
) -> (Vec<Result<Submitted, sqlx::Error>>, u64) {
    let before = queue.db().group_commits();
    let other = kit::db::connect(url).await.unwrap();
    let holder = kit::db::begin_write(&other).await.unwrap();
    let n = jobs.len() as u64;
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.submit(&job, None).await })
        })
        .collect();
    // The first holds the process's turn and waits for the file; the others queue behind it.
    eventually(Duration::from_secs(10), "every submit waiting", || async {
        (queue.db().writers_queued() as u64 == n - 1).then_some(())
    })
    .await;
    assert_eq!(queue.db().group_commits(), before, "nothing is committed while the lock is held");
    holder.commit().await.unwrap();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    (answers, queue.db().group_commits() - before)
}

#[tokio::test]
async fn submits_that_wait_together_share_a_commit() {
    let Some((_dir, url, queue)) = queue().await else { return };
    let (answers, commits) =
        submit_while_locked(&queue, &url, (0..8).map(|i| job(&format!("[{i}, 1]"))).collect()).await;
    let mut ids = Vec::new();
    for answer in answers {
        match answer.unwrap() {
            Submitted::Queued { id, .. } => ids.push(id),
            Submitted::Replayed(_) => unreachable!("no keys"),
        }
    }
    for id in &ids {
        assert!(queue.get(id).await.unwrap().is_some(), "acknowledged and stored: {id}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert_eq!(commits, 1, "8 submits, one commit");
}

#[tokio::test]
async fn a_failing_submit_is_undone_alone() {
    let Some((_dir, url, queue)) = queue().await else { return };
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.operands = '[666]'
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(&mut *queue.db().acquire().await.unwrap())
    .await
    .unwrap();
    let (answers, _) = submit_while_locked(&queue, &url, vec![job("[1]"), job("[666]"), job("[2]")]).await;
    assert!(matches!(answers[0], Ok(Submitted::Queued { .. })), "{:?}", answers[0]);
    let err = answers[1].as_ref().unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(matches!(answers[2], Ok(Submitted::Queued { .. })), "{:?}", answers[2]);
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.counts[0], 2, "the two good submits are queued, the refused one is not");
}
