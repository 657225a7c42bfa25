//! Running a [`Task`] without stalling the async runtime.
//!
//! Cheap tasks (microseconds) run in place. Everything else runs on tokio's blocking pool
//! behind a semaphore of `COMPUTE_THREADS` permits, and the caller waits at most the time
//! limit (a request's wait for a permit included, a job's not: [`Executor::run_job`]). A computation that overruns is answered as timed
//! out; its thread finishes the (bounded) work and only then gives its permit back, so
//! abandoned work never piles up beyond the pool size. `sleep` is a timer, not a thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ops::{OpError, Task};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Invalid(#[from] OpError),
    #[error("the computation exceeded the time limit of {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the computation failed unexpectedly")]
    Crashed(String),
}

impl ExecError {
    /// True when running the same input again would fail the same way.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

#[derive(Clone, Debug)]
pub struct Executor {
    permits: Arc<Semaphore>,
    /// Computations running on the blocking pool now.
    computing: Arc<AtomicUsize>,
}

impl Executor {
    pub fn new(threads: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(threads.max(1))), computing: Arc::default() }
    }

    /// How many computations are running on the blocking pool now.
    pub fn computing(&self) -> usize {
        self.computing.load(Ordering::SeqCst)
    }

    /// Evaluates `task`, giving up after `limit`, which counts the wait for a thread too (a
    /// request's answer is late either way); the result as JSON text.
    pub async fn run(&self, task: Task, limit: Duration) -> Result<Box<RawValue>, ExecError> {
        self.run_within(task, limit, true).await
    }

    /// Evaluates a job's `task`, giving up after `limit` of computing: the wait for a thread,
    /// behind the jobs of the instance's other slots, does not count (the job's lease is
    /// renewed meanwhile).
    pub async fn run_job(&self, task: Task, limit: Duration) -> Result<Box<RawValue>, ExecError> {
        self.run_within(task, limit, false).await
    }

    async fn run_within(&self, task: Task, limit: Duration, wait_counts: bool) -> Result<Box<RawValue>, ExecError> {
        if let Task::Sleep(ms) = task {
            return match tokio::time::timeout(limit, tokio::time::sleep(Duration::from_millis(ms))).await {
                Ok(()) => Ok(task.evaluate()?),
                Err(_) => Err(ExecError::TimedOut(limit)),
            };
        }
        if task.is_cheap() {
            return Ok(task.evaluate()?);
        }
        let computing = self.computing.clone();
        let compute = |permit: OwnedSemaphorePermit| {
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let _running = Running::new(computing);
                task.evaluate()
            })
        };
        let permits = self.permits.clone();
        let outcome = if wait_counts {
            let work =
                async move { compute(permits.acquire_owned().await.expect("the semaphore is never closed")).await };
            tokio::time::timeout(limit, work).await
        } else {
            let permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            tokio::time::timeout(limit, compute(permit)).await
        };
        match outcome {
            Err(_) => Err(ExecError::TimedOut(limit)),
            Ok(Err(join)) => Err(ExecError::Crashed(join.to_string())),
            Ok(Ok(outcome)) => Ok(outcome?),
        }
    }
}

/// Counts a computation as running until dropped (even if it panics).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::ops::Num;

    /// A computation that runs on the pool (over a thousand operands), and is quick there.
    fn pooled() -> Task {
        let task = Task::Add(vec![Num::Int(1); 1_001]);
        assert!(!task.is_cheap());
        task
    }

    /// Runs `pooled()` by `run` while the only thread is taken for twice `limit`.
    async fn behind_a_busy_thread(job: bool) -> Result<Box<RawValue>, ExecError> {
        let executor = Executor::new(1);
        let busy = executor.permits.clone().acquire_owned().await.unwrap();
        let limit = Duration::from_millis(100);
        let run = {
            let executor = executor.clone();
            tokio::spawn(async move {
                if job { executor.run_job(pooled(), limit).await } else { executor.run(pooled(), limit).await }
            })
        };
        // The passing of time is what is tested: the thread stays taken past the limit.
        let taken = Instant::now();
        while taken.elapsed() < 2 * limit && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(busy);
        run.await.unwrap()
    }

    #[tokio::test]
    async fn a_requests_limit_counts_its_wait_for_a_thread() {
        assert!(matches!(behind_a_busy_thread(false).await, Err(ExecError::TimedOut(_))));
    }

    #[tokio::test]
    async fn a_jobs_limit_counts_its_computing_only() {
        assert_eq!(behind_a_busy_thread(true).await.unwrap().get(), "1001");
    }
}
