//! What the requests of one worker thread share: the [`Worker`] (its id, the shared state,
//! the admin router) and its own handle on the backend set ([`Snapshot`]), and the
//! [`InFlight`] guard by which a request holds its place in the in-flight counts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Acquire};
use std::sync::{Arc, Mutex};
use std::task::Context;

use tokio::sync::futures::Notified;

use crate::AppState;
use crate::backend::{BackendSet, Instance, Service};

/// What the requests of one worker thread share.
pub struct Worker {
    pub id: usize,
    pub state: Arc<AppState>,
    pub admin: axum::Router,
    /// This worker's own handle on the current backend set (only this thread takes it).
    snapshot: Mutex<Arc<Snapshot>>,
}

/// The backend set as one worker sees it: requests hold this worker-local handle, so their
/// reference counting stays on this thread's cache lines.
pub struct Snapshot {
    generation: u64,
    pub set: Arc<BackendSet>,
}

impl Snapshot {
    fn of(state: &AppState) -> Self {
        let generation = state.generation.load(Acquire);
        Self { generation, set: state.backends.load_full() }
    }
}

impl Worker {
    pub fn new(id: usize, state: Arc<AppState>, admin: axum::Router) -> Self {
        // Its own reference count on the set, that only this thread touches (cloning the
        // shared `Arc<AppState>` per request would bounce its cache line between cores).
        let snapshot = Mutex::new(Arc::new(Snapshot::of(&state)));
        Self { id, state, admin, snapshot }
    }

    /// The current backend set.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.generation != self.state.generation.load(Acquire) {
            *snapshot = Arc::new(Snapshot::of(&self.state));
        }
        snapshot.clone()
    }
}

/// Holds a request's place in the in-flight counts of its service and instance. It
/// reaches them through worker-local handles and indices, so that creating and dropping it
/// touches no reference count shared with other threads.
pub struct InFlight {
    pub worker: Arc<Worker>,
    pub snapshot: Arc<Snapshot>,
    pub service: usize,
    pub instance: usize,
}

impl InFlight {
    pub fn instance(&self) -> &Instance {
        &self.snapshot.set.pools[self.service][self.instance]
    }

    fn service(&self) -> &Service {
        &self.worker.state.services[self.service]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance().stats.at(self.worker.id).end();
        self.service().stats.at(self.worker.id).end();
    }
}

/// Tells a worker's connections to finish their request in progress and close.
#[derive(Default)]
pub struct Stop {
    pub flag: AtomicBool,
    pub notify: tokio::sync::Notify,
}

impl Stop {
    /// Whether the stop has come, for a connection's task watching with `stopped` (its
    /// `notify.notified()`): the first call registers the task (a spawned task's waker stays
    /// the same), later ones read the flag, so a wake-up takes no lock.
    pub fn asked(&self, stopped: Pin<&mut Notified<'_>>, registered: &mut bool, cx: &mut Context<'_>) -> bool {
        if !*registered {
            *registered = true;
            if stopped.poll(cx).is_ready() {
                return true;
            }
        }
        self.flag.load(Acquire)
    }
}
