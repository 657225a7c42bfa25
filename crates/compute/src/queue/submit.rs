//! Submits on SQLite, batched: the submits of one process that arrive while a write is
//! under way share the next write transaction, so they share its commit (one `fsync` under
//! `synchronous=FULL`) and one turn at the database's write lock.
//!
//! One task per [`Queue`](super::Queue) (spawned by its first submit) takes every submit
//! waiting (up to [`MAX_BATCH`]), writes each inside a savepoint of one transaction, so a
//! submit that fails (a bad idempotency record, say) is undone alone and answered with its
//! own error, commits, and only then answers them: a submit is acknowledged only once it is
//! on disk, as before. Two submits with one `Idempotency-Key` in one batch see each other
//! (the second is answered the first's outcome). A submit whose caller went away is still
//! written, as a submit whose answer was lost would have been.
//!
//! On PostgreSQL the server already shares one WAL flush among concurrent commits, so each
//! submit is a transaction of its own there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kit::db::Db;
use kit::idempotency;
use kit::time::unix_millis;
use tokio::sync::{mpsc, oneshot};

use super::{Idempotency, NewJob, Submitted, submit_in};

/// The most submits one transaction takes.
pub const MAX_BATCH: usize = 64;

/// The batching of one queue's submits; its clones share it.
#[derive(Clone, Debug, Default)]
pub(super) struct Batcher {
    sender: Arc<OnceLock<mpsc::UnboundedSender<Request>>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    waiting: AtomicU64,
    commits: AtomicU64,
    submits: AtomicU64,
}

/// What the batched submits of a queue came to so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmitStats {
    /// Submits sent and not answered yet (waiting for a transaction, or in one).
    pub waiting: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Submits those transactions wrote.
    pub submits: u64,
}

type Answer = Result<Submitted, sqlx::Error>;

#[derive(Debug)]
struct Request {
    job: NewJob,
    /// The key and the fingerprint of the request.
    idem: Option<(idempotency::Key, String)>,
    reply: oneshot::Sender<Answer>,
}

impl Batcher {
    pub(super) async fn submit(&self, db: &Db, job: &NewJob, idem: Option<Idempotency<'_>>) -> Answer {
        let sender = self.sender.get_or_init(|| {
            let (sender, requests) = mpsc::unbounded_channel();
            tokio::spawn(run(db.clone(), requests, self.counters.clone()));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let idem = idem.map(|idem| (idem.key.clone(), idem.fingerprint.to_owned()));
        self.counters.waiting.fetch_add(1, Ordering::SeqCst);
        if sender.send(Request { job: job.clone(), idem, reply }).is_err() {
            self.counters.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(sqlx::Error::PoolClosed);
        }
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    pub(super) fn stats(&self) -> SubmitStats {
        let counters = &self.counters;
        SubmitStats {
            waiting: counters.waiting.load(Ordering::SeqCst),
            commits: counters.commits.load(Ordering::SeqCst),
            submits: counters.submits.load(Ordering::SeqCst),
        }
    }
}

/// Writes the waiting submits, a batch per transaction, until the queue is dropped.
async fn run(db: Db, mut requests: mpsc::UnboundedReceiver<Request>, counters: Arc<Counters>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = requests.try_recv()
        {
            batch.push(next);
        }
        let answers = match write(&db, &batch).await {
            Ok(answers) => {
                let written = answers.iter().filter(|a| matches!(a, Ok(Submitted::Queued { .. }))).count();
                counters.commits.fetch_add(1, Ordering::SeqCst);
                counters.submits.fetch_add(written as u64, Ordering::SeqCst);
                answers
            }
            Err(e) => {
                tracing::debug!(error = %e, submits = batch.len(), "a batch of submits failed");
                batch.iter().map(|_| Err(copy(&e))).collect()
            }
        };
        counters.waiting.fetch_sub(batch.len() as u64, Ordering::SeqCst);
        for (request, answer) in batch.into_iter().zip(answers) {
            // A caller that went away gets nothing; its job stays submitted.
            let _ = request.reply.send(answer);
        }
    }
}

/// One transaction for `batch`: each submit in a savepoint of its own.
async fn write(db: &Db, batch: &[Request]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut tx = kit::db::begin_write(db).await?;
    let now = unix_millis();
    let mut answers = Vec::with_capacity(batch.len());
    for request in batch {
        let idem = request.idem.as_ref().map(|(key, fingerprint)| Idempotency { key, fingerprint });
        sqlx::query("SAVEPOINT submit").execute(&mut *tx).await?;
        let answer = submit_in(&mut tx, &request.job, idem, now).await;
        if answer.is_err() {
            sqlx::query("ROLLBACK TO submit").execute(&mut *tx).await?;
        }
        sqlx::query("RELEASE submit").execute(&mut *tx).await?;
        answers.push(answer);
    }
    kit::db::commit(tx).await?;
    Ok(answers)
}

/// The error of a failed batch, for each of its submits: still [`kit::db::transient`] (a
/// 503, try again) when it was.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    if kit::db::transient(e) {
        sqlx::Error::Io(std::io::Error::other(e.to_string()))
    } else {
        sqlx::Error::Protocol(e.to_string())
    }
}
