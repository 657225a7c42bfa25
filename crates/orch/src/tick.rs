//! One grid of time for orch's periodic work. A timer that keeps to it fires at the same
//! instants as every other one that does (the calm probes, the controller's tick, the log
//! size check), so an idle orch wakes once for all of them rather than once for each.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The instant the grid counts from (the first time anyone asks, in this process).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The last point of the grid of `step` from `epoch` at or before `at` (`at` itself before
/// the epoch).
pub fn grid_floor(epoch: Instant, step: Duration, at: Instant) -> Instant {
    let Some(since) = at.checked_duration_since(epoch) else { return at };
    let step_ns = step.as_nanos().max(1);
    let steps = since.as_nanos() / step_ns;
    epoch + Duration::from_nanos(u64::try_from(steps * step_ns).unwrap_or(u64::MAX))
}

/// The first point of orch's grid of `step` after `at`: within `step` of it, never later.
pub fn next_after(at: Instant, step: Duration) -> Instant {
    grid_floor(epoch(), step, at) + step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_are_shared_and_never_later_than_a_step() {
        let ms = Duration::from_millis;
        let e = Instant::now();
        // (at) -> the grid point at or before it
        let table = [(e, e), (e + ms(1), e), (e + ms(100), e + ms(100)), (e + ms(250), e + ms(200))];
        for (at, want) in table {
            assert_eq!(grid_floor(e, ms(100), at), want, "{:?}", at - e);
        }
        assert_eq!(grid_floor(e + ms(5), ms(100), e), e, "before the epoch: itself");
        let g = grid_floor(epoch(), ms(1000), Instant::now());
        for offset in (0..2400).step_by(37) {
            let next = next_after(g + ms(offset), ms(1000));
            assert!(next > g + ms(offset) && next <= g + ms(offset) + ms(1000), "{offset}");
            assert_eq!(grid_floor(epoch(), ms(1000), next), next, "{offset}: off the grid");
        }
    }
}
