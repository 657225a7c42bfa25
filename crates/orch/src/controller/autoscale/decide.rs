//! The autoscaler's decision, pure (no I/O, time passed in): Kubernetes' HPA algorithm.
//!
//! 1. The raw recommendation: `ceil(ready * metric / target)`, where `metric` is the
//!    per-instance average over the `ready` instances; within the tolerance band
//!    (`|metric / target - 1| <= 10%`) it is the current replicas (no change for noise).
//! 2. Stabilisation (HPA's `stabilizeRecommendationWithBehaviors`): every raw
//!    recommendation is kept with its time. Scaling up goes to the *lowest* recommendation
//!    of the up window (the load must last the whole window), scaling down to the *highest*
//!    of the down window (the quiet must last the whole window); between the two, the
//!    replicas stay.
//! 3. The step is bounded: at most doubling per decision, and always within `min..=max`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Recommendations that differ from the target by no more than this stay put.
pub const TOLERANCE: f64 = 0.1;

/// What the decision needs of the manifest's `autoscale:`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// The per-instance target.
    pub target: f64,
    pub up_window: Duration,
    pub down_window: Duration,
}

impl Policy {
    pub fn of(a: &crate::manifest::Autoscale) -> Self {
        Policy {
            min: a.min,
            max: a.max,
            target: f64::from(a.target.value()),
            up_window: Duration::from_millis(a.scale_up_window_ms),
            down_window: Duration::from_millis(a.scale_down_window_ms),
        }
    }
}

/// One measurement of a service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// The per-instance average over `ready` instances.
    pub metric: f64,
    /// Instances measured (ready ones).
    pub ready: u32,
}

/// The raw recommendations of the longest window, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    recommendations: VecDeque<(Instant, u32)>,
}

/// What to do now: `desired` (equal to `current`: nothing), and the raw recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub recommended: u32,
}

/// The raw recommendation for one reading (step 1).
pub fn recommend(current: u32, reading: Reading, target: f64) -> u32 {
    if reading.ready == 0 || target <= 0.0 || !reading.metric.is_finite() || reading.metric < 0.0 {
        return current;
    }
    let ratio = reading.metric / target;
    if (ratio - 1.0).abs() <= TOLERANCE + 1e-9 {
        return current;
    }
    let raw = (f64::from(reading.ready) * ratio).ceil();
    if raw >= f64::from(u32::MAX) { u32::MAX } else { raw as u32 }
}

/// Decides the replicas at `now` from the current replicas and a reading (`None`: nothing
/// measured, so only the bounds apply), recording the recommendation in `history`.
pub fn decide(
    policy: &Policy,
    history: &mut History,
    current: u32,
    reading: Option<Reading>,
    now: Instant,
) -> Decision {
    let Some(reading) = reading else {
        let desired = current.clamp(policy.min, policy.max.max(policy.min));
        return Decision { desired, recommended: current };
    };
    let recommended = recommend(current, reading, policy.target);
    let keep = policy.up_window.max(policy.down_window);
    while history.recommendations.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep) {
        history.recommendations.pop_front();
    }
    history.recommendations.push_back((now, recommended));
    let (mut up, mut down) = (recommended, recommended);
    for &(at, r) in &history.recommendations {
        let age = now.saturating_duration_since(at);
        if age <= policy.up_window {
            up = up.min(r);
        }
        if age <= policy.down_window {
            down = down.max(r);
        }
    }
    let mut desired = current;
    if desired < up {
        desired = up;
    }
    if desired > down {
        desired = down;
    }
    let desired = desired.min(current.saturating_mul(2).max(1)).clamp(policy.min, policy.max.max(policy.min));
    Decision { desired, recommended }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(min: u32, max: u32, target: f64, up: Duration, down: Duration) -> Policy {
        Policy { min, max, target, up_window: up, down_window: down }
    }

    fn at(metric: f64, ready: u32) -> Option<Reading> {
        Some(Reading { metric, ready })
    }

    #[test]
    fn the_raw_recommendation_is_hpas_formula_with_a_tolerance_band() {
        // (current, metric per instance, ready, target) -> recommendation
        let cases = [
            (2, 19.5, 2, 8.0, 5), // the example: ceil(2 * 19.5 / 8)
            (2, 8.0, 2, 8.0, 2),
            (2, 8.8, 2, 8.0, 2),  // +10%: within the band
            (2, 7.2, 2, 8.0, 2),  // -10%: within the band
            (2, 9.0, 2, 8.0, 3),  // +12.5%: out of it
            (4, 1.0, 4, 8.0, 1),  // quiet: down to what the load needs
            (4, 0.0, 4, 8.0, 0),  // no load at all (the bounds lift it to min)
            (5, 16.0, 3, 8.0, 6), // averaged over the ready ones only
            (3, 50.0, 0, 8.0, 3), // none ready: no opinion
            (3, f64::NAN, 3, 8.0, 3),
            (3, -1.0, 3, 8.0, 3),
            (1, 1e30, 1, 1.0, u32::MAX),
        ];
        for (current, metric, ready, target, expected) in cases {
            assert_eq!(
                recommend(current, Reading { metric, ready }, target),
                expected,
                "current {current}, metric {metric}, ready {ready}, target {target}"
            );
        }
    }

    #[test]
    fn one_decision_stays_within_min_max_and_at_most_doubles() {
        let now = Instant::now();
        // (min, max, current, reading) -> desired, with no stabilisation windows
        let cases = [
            (2, 8, 2, at(19.5, 2), 4),  // 5 wanted, doubling allows 4
            (2, 8, 4, at(19.5, 2), 5),  // the next step gets there
            (2, 8, 4, at(80.0, 4), 8),  // capped by max
            (2, 8, 6, at(0.0, 6), 2),   // no load: down to min at once (no down window)
            (2, 8, 1, None, 2),         // below min with no reading: min
            (2, 8, 9, None, 8),         // above max with no reading: max
            (2, 8, 5, None, 5),         // nothing measured: stays
            (1, 3, 1, at(100.0, 1), 2), // one instance doubles to two
            (3, 3, 3, at(100.0, 3), 3), // min = max: fixed
        ];
        for (min, max, current, reading, expected) in cases {
            let p = policy(min, max, 8.0, Duration::ZERO, Duration::ZERO);
            let d = decide(&p, &mut History::default(), current, reading, now);
            assert_eq!(d.desired, expected, "min {min}, max {max}, current {current}, {reading:?}");
        }
    }

    /// A sequence of readings one second apart through the windows: (metric, expected desired).
    fn run(p: &Policy, start: u32, steps: &[(f64, u32)]) {
        let t0 = Instant::now();
        let mut history = History::default();
        let mut current = start;
        for (i, &(metric, expected)) in steps.iter().enumerate() {
            let d = decide(p, &mut history, current, at(metric, current), t0 + S * i as u32);
            assert_eq!(d.desired, expected, "step {i}: metric {metric} on {current} instances");
            current = d.desired;
        }
    }

    #[test]
    fn scale_up_waits_for_the_load_to_last_the_up_window() {
        let p = policy(1, 10, 10.0, 2 * S, 5 * S);
        // A spike of one sample does nothing; load that lasts 2 s (3 samples) does.
        run(&p, 2, &[(10.0, 2), (40.0, 2), (10.0, 2), (40.0, 2), (40.0, 2), (40.0, 4), (20.0, 8)]);
    }

    #[test]
    fn scale_down_waits_for_the_quiet_to_last_the_down_window() {
        let p = policy(1, 10, 10.0, Duration::ZERO, 3 * S);
        // The highest recommendation of the last 3 s holds; a blip of load restarts the wait.
        run(&p, 4, &[(10.0, 4), (0.0, 4), (0.0, 4), (0.0, 4), (0.0, 1), (0.0, 1)]);
        run(&p, 4, &[(10.0, 4), (0.0, 4), (10.0, 4), (0.0, 4), (0.0, 4), (0.0, 4), (0.0, 1)]);
        // Going down goes to the highest recent recommendation, not straight to the lowest.
        run(&p, 6, &[(10.0, 6), (5.0, 6), (2.0, 6), (2.0, 6), (2.0, 3), (2.0, 2), (2.0, 2)]);
    }

    #[test]
    fn old_recommendations_are_forgotten() {
        let p = policy(1, 10, 10.0, S, 2 * S);
        let t0 = Instant::now();
        let mut history = History::default();
        for i in 0..100 {
            decide(&p, &mut history, 2, at(10.0, 2), t0 + S * i);
        }
        assert!(history.recommendations.len() <= 3, "kept {}", history.recommendations.len());
    }
}
