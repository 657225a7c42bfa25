//! The health state machine of one checked target, pure and blind to time sources.
//!
//! A target starts `unknown`. Every observation moves it to `up` or `down`; only the
//! changes `up -> down` and `down -> up` are [`Change`]s (an alert and a recovery notice).
//! The first observation of a target (`unknown -> up` or `unknown -> down`) raises
//! nothing: the detector never saw it healthy, so nothing went wrong on its watch. Repeated
//! observations of the same state raise nothing either, so a flapping target produces
//! exactly one change per flip.
//!
//! Observations are health checks (with their response time, if the target answered) and
//! reports from someone who knows better than a check: orch saying the process exited, or
//! the registry marking the instance unhealthy. A report turns the target down at once;
//! it records no response-time sample, because nothing was measured.

use std::collections::VecDeque;

use serde::Serialize;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unknown,
    Up,
    Down,
}

/// One health check in a target's history.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// When the check ended.
    pub t: Millis,
    /// The response time, if the target answered at all.
    pub ms: Option<f64>,
    /// Whether the check counted as healthy.
    pub ok: bool,
}

/// Something learnt about a target.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A health check. `ms` is the response time if the target answered; `error` says why
    /// the check counts as a failure (`None`: healthy).
    Check { ms: Option<f64>, error: Option<String> },
    /// The target is known to be down without a check (orch, registry).
    Reported { reason: String },
}

impl Observation {
    pub fn healthy(ms: f64) -> Self {
        Self::Check { ms: Some(ms), error: None }
    }

    pub fn failed(ms: Option<f64>, error: impl Into<String>) -> Self {
        Self::Check { ms, error: Some(error.into()) }
    }

    pub fn reported(reason: impl Into<String>) -> Self {
        Self::Reported { reason: reason.into() }
    }
}

/// A change worth telling someone about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `up -> down`.
    Down,
    /// `down -> up`; `down_for` is how long it was down.
    Recovered { down_for: Millis },
}

/// The health of one target.
#[derive(Clone, Debug)]
pub struct Machine {
    status: Status,
    /// When the status last changed.
    since: Option<Millis>,
    last_check: Option<Millis>,
    response_ms: Option<f64>,
    consecutive_failures: u32,
    last_error: Option<String>,
    history: VecDeque<Sample>,
    capacity: usize,
}

impl Machine {
    /// A target not observed yet, keeping at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            status: Status::Unknown,
            since: None,
            last_check: None,
            response_ms: None,
            consecutive_failures: 0,
            last_error: None,
            history: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    /// Applies `observation` made `at`; returns the change it caused, if any.
    pub fn observe(&mut self, at: Millis, observation: Observation) -> Option<Change> {
        let next = match observation {
            Observation::Check { ms, error } => {
                let ok = error.is_none();
                if self.history.len() == self.capacity {
                    self.history.pop_front();
                }
                self.history.push_back(Sample { t: at, ms, ok });
                self.last_check = Some(at);
                self.response_ms = ms;
                if ok {
                    self.consecutive_failures = 0;
                } else {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                }
                self.last_error = error;
                if ok { Status::Up } else { Status::Down }
            }
            Observation::Reported { reason } => {
                self.last_error = Some(reason);
                Status::Down
            }
        };
        let change = match (self.status, next) {
            (Status::Up, Status::Down) => Some(Change::Down),
            (Status::Down, Status::Up) => Some(Change::Recovered { down_for: at - self.since.unwrap_or(at) }),
            _ => None,
        };
        if next != self.status {
            self.status = next;
            self.since = Some(at);
        }
        change
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn since(&self) -> Option<Millis> {
        self.since
    }

    pub fn last_check(&self) -> Option<Millis> {
        self.last_check
    }

    pub fn response_ms(&self) -> Option<f64> {
        self.response_ms
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The samples kept, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: fn() -> Observation = || Observation::healthy(1.5);
    const FAIL: fn() -> Observation = || Observation::failed(None, "timeout");

    /// Runs `observations` (one per second) and checks the status and change after each.
    fn check(observations: &[(Observation, Status, Option<Change>)]) {
        let mut machine = Machine::new(4);
        for (i, (observation, status, change)) in observations.iter().enumerate() {
            let at = 1_000 * (i as Millis + 1);
            let got = machine.observe(at, observation.clone());
            assert_eq!((machine.status(), got), (*status, *change), "after observation {i}: {observation:?}");
        }
    }

    #[test]
    fn first_observation_raises_nothing() {
        check(&[(UP(), Status::Up, None)]);
        check(&[(FAIL(), Status::Down, None)]);
        check(&[(Observation::reported("exited"), Status::Down, None)]);
    }

    #[test]
    fn up_then_down_alerts_once() {
        check(&[
            (UP(), Status::Up, None),
            (UP(), Status::Up, None),
            (FAIL(), Status::Down, Some(Change::Down)),
            (FAIL(), Status::Down, None),
            (Observation::reported("orch: exited"), Status::Down, None),
        ]);
    }

    #[test]
    fn down_then_up_recovers_once_with_the_downtime() {
        check(&[
            (UP(), Status::Up, None),
            (FAIL(), Status::Down, Some(Change::Down)),
            (FAIL(), Status::Down, None),
            (UP(), Status::Up, Some(Change::Recovered { down_for: 2_000 })),
            (UP(), Status::Up, None),
        ]);
    }

    #[test]
    fn flapping_counts_once_per_change() {
        let mut machine = Machine::new(8);
        let mut changes = Vec::new();
        for i in 0..10 {
            let observation = if i % 2 == 0 { UP() } else { FAIL() };
            changes.extend(machine.observe(i * 100, observation));
        }
        // up (first, silent), then 9 flips: 5 downs and 4 recoveries.
        assert_eq!(changes.iter().filter(|c| **c == Change::Down).count(), 5);
        assert_eq!(changes.iter().filter(|c| matches!(c, Change::Recovered { .. })).count(), 4);
    }

    #[test]
    fn a_report_turns_it_down_at_once_without_a_sample() {
        let mut machine = Machine::new(4);
        machine.observe(1, UP());
        assert_eq!(machine.observe(2, Observation::reported("exited (signal SIGKILL)")), Some(Change::Down));
        assert_eq!(machine.history().len(), 1, "a report measures nothing");
        assert_eq!(machine.last_error(), Some("exited (signal SIGKILL)"));
        assert_eq!(machine.consecutive_failures(), 0, "only failed checks count");
        assert_eq!(machine.since(), Some(2));
    }

    #[test]
    fn an_answer_that_is_not_healthy_keeps_its_response_time() {
        let mut machine = Machine::new(4);
        machine.observe(1, Observation::failed(Some(3.0), "status 503"));
        assert_eq!(machine.history().next(), Some(&Sample { t: 1, ms: Some(3.0), ok: false }));
        assert_eq!(machine.response_ms(), Some(3.0));
        assert_eq!(machine.consecutive_failures(), 1);
        machine.observe(2, FAIL());
        assert_eq!(machine.consecutive_failures(), 2);
        machine.observe(3, UP());
        assert_eq!((machine.consecutive_failures(), machine.last_error()), (0, None));
    }

    #[test]
    fn history_is_bounded() {
        let mut machine = Machine::new(3);
        for t in 0..10 {
            machine.observe(t, UP());
        }
        let kept: Vec<Millis> = machine.history().map(|s| s.t).collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(machine.last_check(), Some(9));
    }
}
