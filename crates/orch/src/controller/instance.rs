//! One instance as the controller tracks it, and how the API shows it
//! ([`kit::orch_api::Instance`]).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::manifest::Service;
use crate::reconcile::{InstanceId, Observed, Phase};

/// Where an instance listens: a port, and the socket orch holds for it when it is socket
/// activated. The socket outlives the instance's processes (restarts never refuse a
/// connection) and is kept across manifest edits that keep the port.
#[derive(Clone, Debug)]
pub struct Slot {
    pub port: u16,
    pub socket: Option<Arc<TcpListener>>,
    /// The manifest fixed the port (else it was picked by orch).
    pub fixed: bool,
}

pub use kit::orch_api::{LastExit, Status};

/// A running process of an instance.
pub struct Proc {
    pub pid: u32,
    /// Cancelled when the process stops being probed (stopping or exited).
    pub probes: CancellationToken,
    /// Cancelled once the process has exited.
    pub exited: CancellationToken,
    /// orch's registration of a command instance in the registry.
    pub registration: Option<kit::Shutdown>,
}

pub struct Instance {
    pub id: InstanceId,
    pub name: String,
    pub revision: u64,
    pub phase: Phase,
    pub status: Status,
    pub ready: bool,
    pub ready_since: Option<Instant>,
    pub crash_streak: u32,
    pub restarts: u32,
    pub liveness_failures: u32,
    pub liveness_detail: String,
    pub started_at: Option<SystemTime>,
    pub spawned_at: Option<Instant>,
    pub backoff_until: Option<Instant>,
    pub last_exit: Option<LastExit>,
    /// Increases with every process, so late reports about an old one are ignored.
    pub generation: u64,
    pub proc: Option<Proc>,
    pub slot: Slot,
    /// The spec its current (or last) process was started with.
    pub spec: Option<Service>,
}

impl Instance {
    pub fn new(id: InstanceId, slot: Slot) -> Self {
        Self {
            name: id.to_string(),
            id,
            revision: 0,
            phase: Phase::Pending,
            status: Status::Pending,
            ready: false,
            ready_since: None,
            crash_streak: 0,
            restarts: 0,
            liveness_failures: 0,
            liveness_detail: String::new(),
            started_at: None,
            spawned_at: None,
            backoff_until: None,
            last_exit: None,
            generation: 0,
            proc: None,
            slot,
            spec: None,
        }
    }

    pub fn observed(&self) -> Observed {
        Observed {
            id: self.id.clone(),
            revision: self.revision,
            phase: self.phase,
            ready: self.ready,
            ready_since: self.ready_since,
            crash_streak: self.crash_streak,
            liveness_failures: self.liveness_failures,
        }
    }

    /// The contract's Instance object.
    pub fn view(&self) -> kit::orch_api::Instance {
        kit::orch_api::Instance {
            name: self.name.clone(),
            service: self.id.service.clone(),
            ordinal: self.id.ordinal,
            pid: self.proc.as_ref().map(|p| p.pid),
            port: self.slot.port,
            url: format!("http://localhost:{}", self.slot.port),
            status: self.status,
            ready: self.ready,
            restarts: self.restarts,
            started_at: self.started_at.map(kit::time::iso),
            last_exit: self.last_exit.clone(),
        }
    }
}
