//! What `/proc` says about a process: CPU time and memory, for the benchmarks.

/// Clock ticks per second in `/proc/<pid>/stat` (`CLK_TCK`, 100 on Linux).
pub const TICKS_PER_SECOND: u64 = 100;

/// utime + stime (clock ticks) from a `/proc/.../stat` line.
pub fn ticks_of_stat(stat: &str) -> u64 {
    let fields = after_command(stat);
    // Counted from the line's start, state is field 3, utime 14 and stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// CPU time (user + system, clock ticks) of process `pid`, all its threads; 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0, |stat| ticks_of_stat(&stat))
}

/// CPU time (nanoseconds) of process `pid`, all its threads, those that ended included: its
/// CPU-time clock, exact where `/proc`'s clock ticks are 10 ms apart; 0 when it is gone.
pub fn cpu_nanos(pid: u32) -> u64 {
    use nix::time::{ClockId, clock_gettime};
    let Ok(pid) = i32::try_from(pid) else { return 0 };
    ClockId::pid_cpu_clock_id(nix::unistd::Pid::from_raw(pid))
        .and_then(clock_gettime)
        .map_or(0, |t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0))
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|stat| after_command(&stat).get(1).is_some_and(|ppid| *ppid == pid.to_string()))
        })
        .collect()
}

/// Resident memory of one process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: every page it has resident, shared ones counted in full.
    pub rss_kib: u64,
    /// `Pss`: pages shared with other processes (the one `orch` binary every instance runs)
    /// divided among them, so a sum over processes is their real footprint.
    pub pss_kib: u64,
    /// `Private_Clean + Private_Dirty`: pages no other process maps, which its exit would free.
    pub private_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            rss_kib: self.rss_kib + other.rss_kib,
            pss_kib: self.pss_kib + other.pss_kib,
            private_kib: self.private_kib + other.private_kib,
        }
    }
}

impl std::iter::Sum for Memory {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// `VmRSS` from `/proc/<pid>/status`, `Pss` and the private pages from
/// `/proc/<pid>/smaps_rollup`; `None` when the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Memory {
        rss_kib: field(&status, "VmRSS:")?,
        pss_kib: field(&rollup, "Pss:")?,
        private_kib: field(&rollup, "Private_Clean:")? + field(&rollup, "Private_Dirty:")?,
    })
}

/// The fields of a stat line after the command (which may contain spaces and parentheses):
/// index 0 is the state, 1 the parent's pid.
fn after_command(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's clock counts at least the work of this thread, measured by the thread's
    /// own CPU-time clock (a wall-clock spin gets less CPU than its length on a busy machine).
    #[test]
    fn the_cpu_clock_of_a_process_counts_its_work() {
        use nix::time::{ClockId, clock_gettime};
        let thread = || {
            let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
        };
        let me = std::process::id();
        let (before, thread_before) = (cpu_nanos(me), thread());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while thread() - thread_before < 30_000_000 && std::time::Instant::now() < deadline {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread() - thread_before;
        let spent = cpu_nanos(me) - before;
        assert!(worked >= 30_000_000, "the thread got {worked} ns of CPU in 60 s");
        assert!(spent >= worked, "{spent} ns for the process, {worked} ns of work in this thread");
        assert_eq!(cpu_nanos(u32::MAX), 0, "no such process");
    }

    #[test]
    fn stat_lines_are_read_after_the_command() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "42 (a (weird) name) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0";
        assert_eq!(ticks_of_stat(stat), 281);
        assert_eq!(after_command(stat)[1], "7");
        assert_eq!(ticks_of_stat("garbage"), 0);
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let me = std::process::id();
        let memory = memory(me).expect("this process exists");
        assert!(memory.rss_kib > 0 && memory.pss_kib > 0 && memory.pss_kib <= memory.rss_kib, "{memory:?}");
        assert!(memory.private_kib > 0 && memory.private_kib <= memory.pss_kib, "{memory:?}");
        let parent = std::os::unix::process::parent_id();
        assert!(children(parent).contains(&me));
    }
}
