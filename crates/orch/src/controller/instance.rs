//! One instance as the controller tracks it: its [`State`], an enum whose variants carry
//! what each phase has (a process only while one runs), and what is derived from it (the
//! API's [`Status`] and readiness, the reconciler's [`Phase`], the API's
//! [`kit::orch_api::Instance`]).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::manifest::Service;
use crate::reconcile::{InstanceId, Observed, Phase, StopReason};

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
    /// What its readiness and liveness probes share (one connection, its last answer).
    pub session: crate::supervisor::probe::Session,
    /// orch's registration of a command instance in the registry.
    pub registration: Option<kit::Shutdown>,
}

/// How a process ended, as the reconciler weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub at: Instant,
    pub success: bool,
    /// orch stopped it to remove or replace it (or the cluster stops).
    pub planned: bool,
}

/// What the liveness probe says of a process that has been ready.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    /// Failures in a row.
    pub failures: u32,
    /// Why the last check failed.
    pub detail: String,
}

/// Where an instance is in its life, with what it holds there: only a state with a
/// process has a [`Proc`]. Its [`Status`], readiness and the reconciler's [`Phase`] are
/// derived from it.
pub enum State {
    /// Recorded, never started: waiting for its dependencies.
    Pending,
    /// Its process runs and has not been ready yet.
    Starting { proc: Proc, since: Instant },
    /// Its process runs and has been ready; `ready_since` while it is ready now.
    Running { proc: Proc, ready_since: Option<Instant>, liveness: Liveness },
    /// Being stopped on purpose, or killed for failing its liveness probe.
    Stopping { proc: Proc, reason: StopReason },
    /// Its process is gone, or (`start_failed`) never came: the plan says what next.
    Exited { exit: Exit, start_failed: bool },
    /// Gone after a crash, to be started again at `until`.
    Backoff { exit: Exit, until: Instant, crashloop: bool },
    /// Gone, and the restart policy keeps it down.
    Done { success: bool },
}

impl State {
    /// Its process, in the states that have one.
    pub fn proc(&self) -> Option<&Proc> {
        match self {
            State::Starting { proc, .. } | State::Running { proc, .. } | State::Stopping { proc, .. } => Some(proc),
            State::Pending | State::Exited { .. } | State::Backoff { .. } | State::Done { .. } => None,
        }
    }

    pub fn proc_mut(&mut self) -> Option<&mut Proc> {
        match self {
            State::Starting { proc, .. } | State::Running { proc, .. } | State::Stopping { proc, .. } => Some(proc),
            State::Pending | State::Exited { .. } | State::Backoff { .. } | State::Done { .. } => None,
        }
    }

    /// Takes the process out, leaving the state [`State::Pending`] for the caller to set;
    /// `None` (and the state unchanged) if there is no process.
    pub fn take_proc(&mut self) -> Option<Proc> {
        self.proc()?;
        match std::mem::replace(self, State::Pending) {
            State::Starting { proc, .. } | State::Running { proc, .. } | State::Stopping { proc, .. } => Some(proc),
            other => {
                *self = other;
                None
            }
        }
    }
}

pub struct Instance {
    pub id: InstanceId,
    pub name: String,
    /// The revision its current (or last) process was started with.
    pub revision: u64,
    /// Asked to be replaced (`orch restart`) whatever its revision; cleared by a new process.
    pub replace: bool,
    pub state: State,
    pub crash_streak: u32,
    pub restarts: u32,
    pub started_at: Option<SystemTime>,
    pub last_exit: Option<LastExit>,
    /// Increases with every process, so late reports about an old one are ignored.
    pub generation: u64,
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
            replace: false,
            state: State::Pending,
            crash_streak: 0,
            restarts: 0,
            started_at: None,
            last_exit: None,
            generation: 0,
            slot,
            spec: None,
        }
    }

    /// Ready now: only a running process that passes its readiness probe.
    pub fn ready(&self) -> bool {
        matches!(self.state, State::Running { ready_since: Some(_), .. })
    }

    /// The process the cluster may send work to or signal: one that runs (starting or
    /// running) and has not exited.
    pub fn live_proc(&self) -> Option<&Proc> {
        match &self.state {
            State::Starting { proc, .. } | State::Running { proc, .. } if !proc.exited.is_cancelled() => Some(proc),
            _ => None,
        }
    }

    pub fn status(&self) -> Status {
        match &self.state {
            State::Pending => Status::Pending,
            State::Starting { .. } => Status::Starting,
            State::Running { .. } => Status::Running,
            State::Stopping { .. } => Status::Stopping,
            State::Exited { exit, .. } if exit.planned => Status::Stopped,
            State::Exited { start_failed: true, .. } => Status::Failed,
            State::Exited { .. } => Status::Backoff,
            State::Backoff { crashloop: false, .. } => Status::Backoff,
            State::Backoff { crashloop: true, .. } => Status::Crashloop,
            State::Done { success: true } => Status::Stopped,
            State::Done { success: false } => Status::Failed,
        }
    }

    /// The reconciler's view of its state.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Pending => Phase::Pending,
            State::Starting { .. } => Phase::Starting,
            State::Running { .. } => Phase::Running,
            State::Stopping { reason, .. } => Phase::Stopping(*reason),
            State::Exited { exit, .. } | State::Backoff { exit, .. } => {
                Phase::Exited { at: exit.at, success: exit.success, planned: exit.planned }
            }
            State::Done { success } => Phase::Done { success: *success },
        }
    }

    pub fn observed(&self) -> Observed {
        let (ready_since, liveness_failures) = match &self.state {
            State::Running { ready_since, liveness, .. } => (*ready_since, liveness.failures),
            _ => (None, 0),
        };
        Observed {
            id: self.id.clone(),
            revision: self.revision,
            replace: self.replace,
            phase: self.phase(),
            ready: self.ready(),
            ready_since,
            crash_streak: self.crash_streak,
            liveness_failures,
        }
    }

    /// The contract's Instance object.
    pub fn view(&self) -> kit::orch_api::Instance {
        kit::orch_api::Instance {
            name: self.name.clone(),
            service: self.id.service.clone(),
            ordinal: self.id.ordinal,
            pid: self.state.proc().map(|p| p.pid),
            port: self.slot.port,
            url: format!("http://localhost:{}", self.slot.port),
            status: self.status(),
            ready: self.ready(),
            restarts: self.restarts,
            started_at: self.started_at.map(kit::time::iso),
            last_exit: self.last_exit.clone(),
            usage: None,
        }
    }
}
