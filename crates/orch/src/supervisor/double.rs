//! A [`Spawner`] without processes, for the controller's tests (watchexec's test child is
//! the model): every "process" is a pid and an exit the test or a signal decides. It
//! records, in order, what was started and what was signalled.
//!
//! A SIGKILL ends a process at once; a SIGTERM ends it too unless it was started with
//! [`TestSpawner::ignore_term`] set (a process that outstays its grace period); other
//! signals are only recorded.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::spawn::{BoxFuture, Child, LaunchSpec, Spawner};

/// What happened, in order: an instance (its `SERVICE_NAME`) started or was signalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Spawned { name: String, pid: u32 },
    Failed { name: String },
    Signal { name: String, signal: Signal },
}

#[derive(Default)]
struct State {
    next_pid: u32,
    /// How the processes still running end: by pid.
    running: BTreeMap<u32, (String, bool, oneshot::Sender<io::Result<ExitStatus>>)>,
    records: Vec<Record>,
    /// Instances whose starts fail.
    failing: Vec<String>,
    ignore_term: bool,
}

/// The test double; clones share their state.
#[derive(Clone, Default)]
pub struct TestSpawner {
    state: Arc<Mutex<State>>,
}

impl TestSpawner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything so far.
    pub fn records(&self) -> Vec<Record> {
        self.state().records.clone()
    }

    /// Starts of instance `name` fail from now on (`false`: succeed again).
    pub fn fail(&self, name: &str, failing: bool) {
        let mut state = self.state();
        state.failing.retain(|n| n != name);
        if failing {
            state.failing.push(name.to_owned());
        }
    }

    /// Processes started from now on outlive a SIGTERM (`false`: they end on it).
    pub fn ignore_term(&self, ignore: bool) {
        self.state().ignore_term = ignore;
    }

    /// The pid of the running process of instance `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.state().running.iter().find(|(_, (n, ..))| n == name).map(|(pid, _)| *pid)
    }

    /// Ends process `pid` with exit `code` (a crash, or a clean exit with 0); false if it
    /// does not run.
    pub fn exit(&self, pid: u32, code: i32) -> bool {
        self.end(pid, ExitStatus::from_raw(code << 8))
    }

    fn end(&self, pid: u32, status: ExitStatus) -> bool {
        let Some((_, _, exit)) = self.state().running.remove(&pid) else { return false };
        let _ = exit.send(Ok(status));
        true
    }
}

impl Spawner for TestSpawner {
    fn spawn(&self, spec: LaunchSpec) -> BoxFuture<io::Result<Child>> {
        let name = spec.env.iter().find(|(k, _)| k == "SERVICE_NAME").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut state = self.state();
        if state.failing.contains(&name) {
            state.records.push(Record::Failed { name });
            return Box::pin(async { Err(io::Error::from(io::ErrorKind::NotFound)) });
        }
        state.next_pid += 1;
        let pid = 1_000_000 + state.next_pid;
        let (exit, exited) = oneshot::channel();
        let ignore_term = state.ignore_term;
        state.running.insert(pid, (name.clone(), ignore_term, exit));
        state.records.push(Record::Spawned { name, pid });
        let exit = async move { exited.await.unwrap_or_else(|_| Err(io::Error::other("the test spawner is gone"))) };
        Box::pin(async move { Ok(Child { pid, stdout: None, stderr: None, exit: Box::pin(exit) }) })
    }

    fn signal(&self, pid: u32, signal: Signal) {
        let ends = {
            let mut state = self.state();
            let Some((name, ignore_term, _)) = state.running.get(&pid) else { return };
            let ends = signal == Signal::SIGKILL || (signal == Signal::SIGTERM && !ignore_term);
            let name = name.clone();
            state.records.push(Record::Signal { name, signal });
            ends
        };
        if ends {
            self.end(pid, ExitStatus::from_raw(signal as i32));
        }
    }
}
