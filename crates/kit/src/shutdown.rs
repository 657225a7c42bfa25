//! Graceful shutdown: one primitive for the whole process.
//!
//! A [`Shutdown`] is a cancellation token plus a task tracker. Background loops select on
//! [`Shutdown::requested`]; `serve` stops accepting when it fires, lets in-flight requests
//! finish, then waits (with a grace period) for the tracked background tasks to finish
//! their own cleanup, such as deregistering from the registry.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has been asked for.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// An owned future that completes on shutdown (for APIs that need `'static`).
    pub fn requested_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Spawns a background task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits for the tracked tasks, at most `grace`; true if they all finished.
    pub async fn wait_for_tasks(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Triggers this shutdown on SIGTERM, SIGINT (Ctrl-C) or SIGHUP.
    pub fn trigger_on_signals(&self) {
        let shutdown = self.clone();
        let signalled = signal();
        tokio::spawn(async move {
            signalled.await;
            tracing::info!("shutdown signal received");
            shutdown.trigger();
        });
    }
}

/// Completes on SIGTERM, SIGINT or SIGHUP. A closed terminal (SIGHUP) is a graceful stop
/// like any other, not the default sudden death that would skip every drain.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// a signal that comes after the call and before the task awaiting it has run (a busy
/// single-threaded runtime, say, already serving) is caught, not the default death.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// The handlers are in place once `signal()` returns: a signal that comes before its
    /// future is first polled is caught (it would otherwise end the test process).
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_caught() {
        let signalled = super::signal();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).expect("raising SIGHUP");
        tokio::time::timeout(std::time::Duration::from_secs(10), signalled)
            .await
            .expect("the signal raised before the first poll is seen");
    }
}
