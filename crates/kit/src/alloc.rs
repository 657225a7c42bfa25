//! glibc malloc's footprint in a long-running process: how many arenas it keeps, and the
//! memory it holds on to after a burst of work.
//!
//! Theory of operation. glibc's malloc gives each thread that allocates an arena of its own,
//! up to eight per core, and never returns a freed page from the middle of an arena to the
//! kernel by itself: after a burst of requests each arena keeps the high-water mark of what
//! the burst needed, free but resident (on the 12-process cluster, after `make bench`'s
//! load rows, arenas were 17 MB of its 41 MB PSS). Two measures, both off the hot path:
//!
//! - [`init`], first thing in `main`: at most [`ARENAS`] arenas (`M_ARENA_MAX`), one per
//!   core of the runtime's two workers rather than one per thread (SQLite's connection
//!   threads, the blocking pool), so that freed memory is reused by the next request instead
//!   of sitting in another thread's arena. Threads still keep a cache of small chunks
//!   (tcache) and take an arena's lock only past it. `MALLOC_ARENA_MAX` in the environment
//!   (glibc's own setting) wins.
//! - [`trim_after_bursts`], a task of the process's runtime: it reads the process's CPU time
//!   once a second while work goes on, and every [`REST_TICK`] at rest (an idle process
//!   wakes for it rarely); the first quiet second after a busy tick (a burst ended) it calls
//!   `malloc_trim(0)`, which hands every wholly free page of every arena back to the kernel
//!   (`MADV_DONTNEED`, no copying). A [`Trimmer`] decides; it never trims while the process
//!   is busy, so a load pays nothing, and at rest it trims at most every [`REARM`] (what a
//!   trickle of work leaves).
//!
//! Elsewhere (another libc, another OS) both are no-ops.

use std::time::Duration;

/// The most malloc arenas a process keeps (`M_ARENA_MAX`): one per async worker thread.
pub const ARENAS: i32 = 2;
/// How often [`trim_after_bursts`] looks at the process's CPU time after a busy tick.
pub const TICK: Duration = Duration::from_secs(1);
/// How often it looks at rest (trimmed, nothing busy since).
pub const REST_TICK: Duration = Duration::from_secs(10);
/// A tick in which the process used at least this share of one core (1/20: 50 ms of CPU
/// in a second) is busy.
pub const BUSY_SHARE: u32 = 20;
/// Quiet time after which a trim is due even without a burst before it.
pub const REARM: Duration = Duration::from_secs(60);

/// Caps the number of malloc arenas at [`ARENAS`], unless `MALLOC_ARENA_MAX` is set.
/// Call it first in `main`, before any thread is started.
pub fn init() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        sys::cap_arenas(ARENAS);
    }
}

/// Hands the memory malloc holds free back to the kernel after each burst of work, for the
/// life of the runtime (spawn it; it ends when the runtime does).
pub async fn trim_after_bursts() {
    let mut trimmer = Trimmer::default();
    let mut last = sys::cpu_time();
    loop {
        let period = trimmer.period();
        tokio::time::sleep(period).await;
        let now = sys::cpu_time();
        if trimmer.tick(now.saturating_sub(last), period) {
            sys::trim();
        }
        last = now;
    }
}

/// When to trim: after the first quiet tick that follows a busy one (or the start), and
/// after [`REARM`] of quiet ticks in a row; never right after a busy tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trimmer {
    /// A trim is due at the next quiet tick.
    armed: bool,
    /// Quiet time since the last trim or busy tick.
    quiet: Duration,
}

impl Default for Trimmer {
    /// Armed: what starting up allocated and freed is handed back at the first quiet tick.
    fn default() -> Self {
        Self { armed: true, quiet: Duration::ZERO }
    }
}

impl Trimmer {
    /// The length of the next tick: [`TICK`] while a trim is due (the end of a burst is
    /// looked for each second), else [`REST_TICK`].
    pub fn period(&self) -> Duration {
        if self.armed { TICK } else { REST_TICK }
    }

    /// One tick of length `period` in which the process used `cpu`: whether to trim now.
    pub fn tick(&mut self, cpu: Duration, period: Duration) -> bool {
        if cpu * BUSY_SHARE >= period {
            *self = Self { armed: true, quiet: Duration::ZERO };
            return false;
        }
        self.quiet += period;
        if self.armed || self.quiet >= REARM {
            *self = Self { armed: false, quiet: Duration::ZERO };
            return true;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    use std::time::Duration;

    pub fn cap_arenas(arenas: i32) {
        // SAFETY: mallopt only sets a parameter of malloc's, under malloc's own lock.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }

    pub fn trim() {
        // SAFETY: malloc_trim takes each arena's lock and returns free pages; it touches
        // no memory in use.
        unsafe { libc::malloc_trim(0) };
    }

    /// User and system CPU time of the whole process (every thread).
    pub fn cpu_time() -> Duration {
        use nix::sys::resource::{UsageWho, getrusage};
        let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else { return Duration::ZERO };
        let of = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec().max(0) as u64) + Duration::from_micros(t.tv_usec().max(0) as u64)
        };
        of(usage.user_time()) + of(usage.system_time())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    use std::time::Duration;

    pub fn cap_arenas(_arenas: i32) {}

    pub fn trim() {}

    pub fn cpu_time() -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const BUSY: Duration = Duration::from_millis(50);
    const QUIET: Duration = Duration::from_millis(49);

    /// The trims of a run of ticks, each the CPU time used in one second.
    fn trims(trimmer: &mut Trimmer, cpu: &[Duration]) -> Vec<bool> {
        cpu.iter().map(|&c| trimmer.tick(c, SECOND)).collect()
    }

    #[test]
    fn ticks_are_slow_at_rest_and_each_second_after_a_burst() {
        let mut t = Trimmer::default();
        assert_eq!(t.period(), TICK, "the start's trim is due");
        assert!(t.tick(QUIET, TICK));
        assert_eq!(t.period(), REST_TICK);
        // A burst within a rest tick: 5 % of it is busy; then the end is looked for each second.
        assert!(!t.tick(REST_TICK / BUSY_SHARE, REST_TICK));
        assert_eq!(t.period(), TICK);
        assert!(t.tick(Duration::ZERO, TICK));
        assert_eq!(t.period(), REST_TICK);
    }

    #[test]
    fn trims_once_after_start_and_once_after_each_burst() {
        let mut t = Trimmer::default();
        assert_eq!(trims(&mut t, &[QUIET, QUIET, QUIET]), [true, false, false]);
        assert_eq!(trims(&mut t, &[BUSY, BUSY, BUSY]), [false, false, false], "never while busy");
        assert_eq!(trims(&mut t, &[QUIET, QUIET]), [true, false]);
        // a short burst after a trim: trimmed again once it ends
        assert_eq!(trims(&mut t, &[BUSY, Duration::ZERO, Duration::ZERO]), [false, true, false]);
    }

    #[test]
    fn the_busy_share_is_relative_to_the_period() {
        let mut t = Trimmer { armed: false, quiet: Duration::ZERO };
        assert!(!t.tick(Duration::from_millis(100), 2 * SECOND), "5 % of two seconds is busy");
        assert!(t.tick(Duration::from_millis(99), 2 * SECOND), "under 5 % is quiet: the burst ended");
    }

    #[test]
    fn a_long_quiet_stretch_trims_every_rearm() {
        let mut t = Trimmer { armed: false, quiet: Duration::ZERO };
        let n = (REARM.as_secs() / REST_TICK.as_secs()) as usize;
        let run: Vec<bool> = (0..3 * n).map(|_| t.tick(QUIET, REST_TICK)).collect();
        let at: Vec<usize> = run.iter().enumerate().filter(|&(_, &trim)| trim).map(|(i, _)| i + 1).collect();
        assert_eq!(at, [n, 2 * n, 3 * n]);
    }

    #[test]
    fn a_busy_tick_restarts_the_quiet_count() {
        let mut t = Trimmer { armed: false, quiet: REARM - SECOND };
        assert!(!t.tick(BUSY, SECOND));
        assert_eq!(t, Trimmer { armed: true, quiet: Duration::ZERO });
    }

    #[test]
    fn the_process_cpu_time_moves_and_trimming_is_harmless() {
        let before = sys::cpu_time();
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_secs(5);
        // spin until the clock of this process moves (its resolution is a tick or finer)
        while sys::cpu_time() == before && std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(sys::cpu_time() > before || !cfg!(all(target_os = "linux", target_env = "gnu")));
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        sys::trim();
        assert!(kept.iter().enumerate().all(|(i, v)| v.iter().all(|&b| b == i as u8)), "trim keeps what is in use");
    }
}
