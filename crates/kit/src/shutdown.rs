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
        tokio::spawn(async move {
            signal().await;
            tracing::info!("shutdown signal received");
            shutdown.trigger();
        });
    }
}

/// Completes on SIGTERM, SIGINT or SIGHUP. A closed terminal (SIGHUP) is a graceful stop
/// like any other, not the default sudden death that would skip every drain.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
}
