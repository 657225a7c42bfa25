//! Running a [`Task`] without stalling the async runtime.
//!
//! Cheap tasks (microseconds) run in place. Everything else runs on tokio's blocking pool
//! behind a semaphore of `COMPUTE_THREADS` permits, and the caller waits at most the time
//! limit (the wait for a permit included). A computation that overruns is answered as timed
//! out; its thread finishes the (bounded) work and only then gives its permit back, so
//! abandoned work never piles up beyond the pool size. `sleep` is a timer, not a thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::Semaphore;

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

    /// Evaluates `task`, giving up after `limit`; the result as JSON text.
    pub async fn run(&self, task: Task, limit: Duration) -> Result<Box<RawValue>, ExecError> {
        if let Task::Sleep(ms) = task {
            return match tokio::time::timeout(limit, tokio::time::sleep(Duration::from_millis(ms))).await {
                Ok(()) => Ok(task.evaluate()?),
                Err(_) => Err(ExecError::TimedOut(limit)),
            };
        }
        if task.is_cheap() {
            return Ok(task.evaluate()?);
        }
        let (permits, computing) = (self.permits.clone(), self.computing.clone());
        let work = async move {
            let permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let _running = Running::new(computing);
                task.evaluate()
            })
            .await
        };
        match tokio::time::timeout(limit, work).await {
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
