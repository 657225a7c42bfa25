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
//! And one for the few big buffers a process reuses (auth's argon2 working memory):
//! [`prefer_huge_pages`], transparent huge pages for a buffer that is read all over and
//! randomly, so that it costs a few TLB entries and page faults instead of thousands.
//!
//! Elsewhere (another libc, another OS) all three are no-ops.

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

/// Asks the kernel to back `buffer`'s allocation (its whole capacity) with transparent huge
/// pages (`MADV_HUGEPAGE`, for the system setting `madvise`; `always` needs no asking and
/// `never` ignores it). Meant for a large buffer that has not been touched yet: the pages
/// faulted in afterwards are 2 MiB ones where the range allows. Advice only: the contents
/// and the allocation are unchanged, and a refusal is ignored (it costs only speed).
///
/// For argon2's 19 MiB, read at random block by block, 4 KiB pages meant a TLB miss on
/// most reads and about 4 900 page faults the first time a buffer was used; measured on the
/// 2-core test machine, one process hashing alone took 2-7 % less time per hash in huge
/// pages, and three auth instances under logins 10-25 % less CPU per login (README,
/// Benchmarks).
pub fn prefer_huge_pages<T>(buffer: &Vec<T>) {
    let bytes = buffer.capacity().saturating_mul(size_of::<T>());
    sys::prefer_huge_pages(buffer.as_ptr().cast(), bytes);
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

    /// `MADV_HUGEPAGE` on the whole pages inside `len` bytes from `start`.
    pub fn prefer_huge_pages(start: *const u8, len: usize) {
        const PAGE: usize = 4096;
        let from = (start as usize).next_multiple_of(PAGE);
        let to = (start as usize).saturating_add(len) / PAGE * PAGE;
        if to > from {
            // SAFETY: the range lies inside one live allocation of the caller's, and this
            // advice changes neither its contents nor its mapping, only the size of the
            // pages that back it.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
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

    pub fn prefer_huge_pages(_start: *const u8, _len: usize) {}

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

    /// The `VmFlags` of the mapping of `/proc/self/smaps` that holds `address`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn vm_flags_at(address: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            // A mapping's first line starts with its range, `from-to` in hex.
            if let Some((from, to)) = line.split_whitespace().next().and_then(|r| r.split_once('-'))
                && let (Ok(from), Ok(to)) = (usize::from_str_radix(from, 16), usize::from_str_radix(to, 16))
            {
                inside = (from..to).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.trim().to_owned());
            }
        }
        None
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_buffer_advised_for_huge_pages_is_marked_so_and_keeps_its_contents() {
        let mut buffer: Vec<u8> = Vec::with_capacity(8 << 20);
        buffer.extend_from_slice(b"kept");
        let middle = buffer.as_ptr() as usize + (4 << 20);
        let flags = |at| vm_flags_at(at).expect("the buffer's mapping is in smaps");
        assert!(!flags(middle).split(' ').any(|f| f == "hg"), "not advised yet: {}", flags(middle));
        prefer_huge_pages(&buffer);
        assert_eq!(buffer, b"kept");
        // Kernels built without transparent huge pages refuse the advice (and have no
        // such directory); the call is harmless there.
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert!(flags(middle).split(' ').any(|f| f == "hg"), "advised: {}", flags(middle));
        }
        buffer.resize(8 << 20, 1);
        assert_eq!(&buffer[..4], b"kept");
        assert!(buffer[4..].iter().all(|&b| b == 1));
        prefer_huge_pages(&Vec::<u64>::new());
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
