//! The process side of orch: starting children ([`spawn`]), capturing their output
//! ([`logs`]), probing them ([`probe`]), and stopping them on purpose without dropping a
//! request ([`drain`]), and holding them to their limits ([`cgroup`]); what the machine allows
//! a cluster ([`capacity`]). Nothing here decides anything: the controller does, from the
//! reconciler's plan.

pub mod capacity;
pub mod cgroup;
#[cfg(test)]
pub mod double;
pub mod drain;
pub mod logs;
pub mod probe;
pub mod spawn;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Sends `signal` to the process group `pid` leads (every child leads its own), or to the
/// process alone if the group is gone.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    if kill(Pid::from_raw(-raw), signal).is_err() {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// How a process ended: its exit code, or the name of the signal that killed it.
pub fn exit_parts(status: &ExitStatus) -> (Option<i32>, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), None),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str().to_owned()).unwrap_or_else(|_| format!("signal {sig}"));
            (None, Some(name))
        }
        (None, None) => (None, None),
    }
}

/// The start time of process `pid` (clock ticks since boot, field 22 of /proc/PID/stat):
/// with the pid, it names a process unambiguously.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` is a zombie: dead, only waiting to be reaped by its parent.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The process group of process `pid`.
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        assert_eq!(exit_parts(&ExitStatus::from_raw(3 << 8)), (Some(3), None));
        assert_eq!(exit_parts(&ExitStatus::from_raw(9)), (None, Some("SIGKILL".into())));
    }

    #[test]
    fn an_exited_child_not_yet_reaped_is_a_zombie() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        assert!(!is_zombie(std::process::id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_zombie(child.id()) {
            assert!(std::time::Instant::now() < deadline, "the exited child never showed as a zombie");
            std::thread::yield_now();
        }
        child.wait().unwrap();
        assert!(!is_zombie(child.id()), "a reaped process is gone, not a zombie");
    }

    #[test]
    fn our_own_start_time_and_group() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(process_group(me).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
