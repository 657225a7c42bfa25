//! What an `orch chaos` experiment is asked to do: the control API's request
//! (`POST /api/chaos`), its checks, and durations as people write them. Pure and shared:
//! the control API checks a request here in the API's words, the CLI in its own
//! (`--every`), and the controller's experiments ([`crate::controller::chaos`]) run the
//! checked [`Spec`]. The verbs are [`crate::cli::chaos`].
//!
//! Five actions. `kill` SIGKILLs an instance (or a random running instance of a service);
//! `pause` SIGSTOPs one for a while (a hung process) and SIGCONTs it after; `partition`
//! cuts one off from the registry for a while (its link, see
//! [`crate::controller::partition`]) and heals it after; `latency` and `errors` make the
//! balancer delay, or answer with an error, the requests of a service (through its
//! `/api/faults`). A kill, pause or partition happens once, or at once and then `every` DUR
//! until `for` ends; a balancer fault lasts `for`. Every injection is a `chaos` event.

use std::time::Duration;

use balancer::faults::FaultSpec;

/// The longest `for` (and pause) an experiment may have.
pub const MAX_SPAN: Duration = Duration::from_secs(3600);
/// The shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_millis(100);
/// The most latency the balancer adds.
pub const MAX_LATENCY_MS: u64 = 600_000;

// ---------------------------------------------------------------------------------------
// The request and its validation
// ---------------------------------------------------------------------------------------

/// The request's action and body are the control API's wire types.
pub use kit::orch_api::{ChaosAction as Action, ChaosRequest as Request};

/// How validation messages name the fields: as the API does, or as the CLI does.
#[derive(Clone, Copy)]
pub struct Names {
    every: &'static str,
    span: &'static str,
    duration: &'static str,
    latency: &'static str,
    percent: &'static str,
    status: &'static str,
}

impl Names {
    pub const API: Names = Names {
        every: "everyMs",
        span: "forMs",
        duration: "durationMs",
        latency: "latencyMs",
        percent: "percent",
        status: "status",
    };
    pub const CLI: Names = Names {
        every: "--every",
        span: "--for",
        duration: "--duration",
        latency: "--ms",
        percent: "--percent",
        status: "--status",
    };
}

/// A checked experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub action: Action,
    pub target: String,
    /// Repeat (kill, pause) this often, until `span` ends.
    pub every: Option<Duration>,
    /// How long it lasts: the repeats, or the balancer fault.
    pub span: Option<Duration>,
    /// How long each pause lasts.
    pub pause: Option<Duration>,
    pub latency_ms: u64,
    pub percent: f64,
    pub status: u16,
}

impl Spec {
    /// Checks a request; the error says what is wrong, naming fields as `n` does.
    pub fn parse(r: &Request, n: Names) -> Result<Spec, String> {
        let action = r.action.ok_or("action is required: kill, pause, partition, latency or errors")?;
        let target = r.target.trim();
        if target.is_empty() || target.len() > 200 {
            return Err("target must name an instance (like data-2) or a service (like data)".into());
        }
        let ms = Duration::from_millis;
        let every = r.every_ms.map(ms);
        let span = r.for_ms.map(ms);
        let pause = r.duration_ms.map(ms);
        let within = |d: Duration, min: Duration, name: &str| {
            if d < min || d > MAX_SPAN {
                Err(format!("{name} must be from {} to {}, got {}", show(min), show(MAX_SPAN), show(d)))
            } else {
                Ok(())
            }
        };
        if let Some(d) = every {
            if !action.on_processes() {
                return Err(format!(
                    "{} applies to kill, pause and partition only (a {} fault lasts {})",
                    n.every,
                    action.as_str(),
                    n.span
                ));
            }
            within(d, MIN_EVERY, n.every)?;
        }
        if let Some(d) = span {
            within(d, ms(1), n.span)?;
        }
        match (action.on_processes(), every.is_some(), span.is_some()) {
            (true, true, false) => {
                return Err(format!(
                    "{} needs {} (at most {}): a repeating experiment must end by itself",
                    n.every,
                    n.span,
                    show(MAX_SPAN)
                ));
            }
            (true, false, true) => {
                return Err(format!("{} bounds a repeating {}: give {} too", n.span, action.as_str(), n.every));
            }
            (false, _, false) => {
                return Err(format!(
                    "{} is required for {}: how long the fault lasts (at most {})",
                    n.span,
                    action.as_str(),
                    show(MAX_SPAN)
                ));
            }
            _ => {}
        }
        match (action, pause) {
            (Action::Pause | Action::Partition, None) => {
                return Err(format!("{} is required for {}: how long each lasts", n.duration, action.as_str()));
            }
            (Action::Pause | Action::Partition, Some(d)) => within(d, ms(1), n.duration)?,
            (_, Some(_)) => return Err(format!("{} applies to pause and partition only", n.duration)),
            (_, None) => {}
        }
        let latency_ms = match (action, r.latency_ms) {
            (Action::Latency, None) => {
                return Err(format!("{} is required for latency: the delay in milliseconds", n.latency));
            }
            (Action::Latency, Some(l)) if l == 0 || l > MAX_LATENCY_MS => {
                return Err(format!("{} must be from 1 to {MAX_LATENCY_MS}, got {l}", n.latency));
            }
            (Action::Latency, Some(l)) => l,
            (_, Some(_)) => return Err(format!("{} applies to latency only", n.latency)),
            (_, None) => 0,
        };
        let percent = match (action, r.percent) {
            (Action::Errors, None) => {
                return Err(format!("{} is required for errors: the share of requests that fail", n.percent));
            }
            (Action::Errors | Action::Latency, Some(p)) if !(p > 0.0 && p <= 100.0) => {
                return Err(format!("{} must be above 0 and at most 100, got {p}", n.percent));
            }
            (Action::Errors | Action::Latency, Some(p)) => p,
            (Action::Latency, None) => 100.0,
            (_, Some(_)) => return Err(format!("{} applies to latency and errors only", n.percent)),
            (_, None) => 0.0,
        };
        let status = match (action, r.status) {
            (Action::Errors, Some(s)) if !(400..=599).contains(&s) => {
                return Err(format!("{} must be from 400 to 599, got {s}", n.status));
            }
            (Action::Errors, s) => s.unwrap_or(503),
            (_, Some(_)) => return Err(format!("{} applies to errors only", n.status)),
            (_, None) => 0,
        };
        Ok(Spec { action, target: target.to_owned(), every, span, pause, latency_ms, percent, status })
    }

    /// How long the experiment lasts from its start; `None`: it is over at once (one kill).
    pub fn lasts(&self) -> Option<Duration> {
        match self.action {
            Action::Kill => self.span,
            Action::Pause | Action::Partition => self.span.or(self.pause),
            Action::Latency | Action::Errors => self.span,
        }
    }

    /// The body of the balancer's `POST /api/faults` for `service`.
    pub fn fault_body(&self, service: &str, lasts: Duration) -> FaultSpec {
        let duration_ms = Some(lasts.as_millis().max(1) as u64);
        let service = service.to_owned();
        match self.action {
            Action::Latency => FaultSpec {
                service,
                latency_ms: self.latency_ms,
                latency_percent: Some(self.percent),
                error_percent: 0.0,
                error_status: None,
                duration_ms,
            },
            _ => FaultSpec {
                service,
                latency_ms: 0,
                latency_percent: None,
                error_percent: self.percent,
                error_status: Some(self.status),
                duration_ms,
            },
        }
    }

    /// What a balancer fault does, for events: `data +200 ms latency for 10s`.
    pub fn fault_effect(&self, service: &str) -> String {
        let span = self.span.map(show).unwrap_or_default();
        match self.action {
            Action::Latency if self.percent < 100.0 => {
                format!("{service} +{} ms latency on {}% for {span}", self.latency_ms, self.percent)
            }
            Action::Latency => format!("{service} +{} ms latency for {span}", self.latency_ms),
            _ => format!("{service} answers {}% {} for {span}", self.percent, self.status),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------

/// `500ms`, `2s`, `1m`, `1h` (a whole number and a unit).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let bad = || format!("invalid duration {raw:?}: use a whole number and a unit, like 500ms, 2s, 1m or 1h");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A duration as a person writes it: `500ms`, `2s`, `1m`, `1m30s`, `1h`, `1500ms`.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        _ => format!("{s}s"),
    }
}
#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn durations() {
        for (raw, ms) in [("500ms", 500), ("2s", 2000), ("1m", 60_000), ("1h", 3_600_000), ("0s", 0), (" 3s ", 3000)] {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for raw in ["", "5", "s", "1.5s", "2d", "-1s", "1m30s", "99999999999999999999h", "18446744073709551615h"] {
            let err = parse_duration(raw).unwrap_err();
            assert!(err.contains("like 500ms, 2s, 1m or 1h"), "{raw}: {err}");
        }
        for (ms, shown) in [(500, "500ms"), (1500, "1500ms"), (2000, "2s"), (60_000, "1m"), (90_000, "1m30s")] {
            assert_eq!(show(Duration::from_millis(ms)), shown);
        }
        assert_eq!(show(Duration::from_secs(3600)), "1h");
        assert_eq!(show(Duration::from_secs(3601)), "3601s");
    }

    fn req(json: Value) -> Request {
        serde_json::from_value(json).unwrap()
    }

    /// Each bad request, and the start of its message, for the API and the CLI.
    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            (json!({"target": "data"}), "action is required", "action is required"),
            (json!({"action": "kill", "target": " "}), "target must name", "target must name"),
            (
                json!({"action": "kill", "target": "data", "everyMs": 1000}),
                "everyMs needs forMs",
                "--every needs --for",
            ),
            (
                json!({"action": "kill", "target": "data", "forMs": 1000}),
                "forMs bounds a repeating kill: give everyMs too",
                "--for bounds a repeating kill: give --every too",
            ),
            (
                json!({"action": "kill", "target": "data", "everyMs": 10, "forMs": 1000}),
                "everyMs must be from 100ms to 1h, got 10ms",
                "--every must be from 100ms to 1h, got 10ms",
            ),
            (
                json!({"action": "kill", "target": "data", "everyMs": 1000, "forMs": 3_600_001}),
                "forMs must be from 1ms to 1h, got 3600001ms",
                "--for must be from 1ms to 1h",
            ),
            (
                json!({"action": "kill", "target": "data", "durationMs": 1000}),
                "durationMs applies to pause and partition only",
                "--duration applies to pause and partition only",
            ),
            (
                json!({"action": "pause", "target": "data"}),
                "durationMs is required for pause",
                "--duration is required",
            ),
            (
                json!({"action": "pause", "target": "data", "durationMs": 0}),
                "durationMs must be from 1ms to 1h, got 0ms",
                "--duration must be from 1ms",
            ),
            (
                json!({"action": "latency", "target": "data", "latencyMs": 200}),
                "forMs is required for latency",
                "--for is required for latency",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000}),
                "latencyMs is required for latency",
                "--ms is required for latency",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 600_001}),
                "latencyMs must be from 1 to 600000, got 600001",
                "--ms must be from 1 to 600000",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 5, "percent": 150}),
                "percent must be above 0 and at most 100, got 150",
                "--percent must be above 0 and at most 100, got 150",
            ),
            (
                json!({"action": "latency", "target": "data", "forMs": 1000, "latencyMs": 5, "everyMs": 500}),
                "everyMs applies to kill, pause and partition only",
                "--every applies to kill, pause and partition only",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000}),
                "percent is required for errors",
                "--percent is required",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 101}),
                "percent must be above 0 and at most 100, got 101",
                "--percent must be above 0 and at most 100, got 101",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 0}),
                "percent must be above 0 and at most 100, got 0",
                "--percent must be above 0",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 10, "status": 200}),
                "status must be from 400 to 599, got 200",
                "--status must be from 400 to 599, got 200",
            ),
            (
                json!({"action": "kill", "target": "data", "status": 500}),
                "status applies to errors only",
                "--status applies to errors only",
            ),
            (
                json!({"action": "pause", "target": "data", "durationMs": 5, "percent": 5}),
                "percent applies to latency and errors only",
                "--percent applies to latency and errors only",
            ),
            (
                json!({"action": "errors", "target": "data", "forMs": 1000, "percent": 5, "latencyMs": 5}),
                "latencyMs applies to latency only",
                "--ms applies to latency only",
            ),
        ];
        for (json, api, cli) in cases {
            let r = req(json.clone());
            let err = Spec::parse(&r, Names::API).unwrap_err();
            assert!(err.starts_with(api), "{json}: {err}");
            let err = Spec::parse(&r, Names::CLI).unwrap_err();
            assert!(err.starts_with(cli), "{json}: {err}");
        }
        assert!(serde_json::from_value::<Request>(json!({"action": "nuke", "target": "x"})).is_err());
        assert!(serde_json::from_value::<Request>(json!({"action": "kill", "target": "x", "extra": 1})).is_err());
        let nan = Request { percent: Some(f64::NAN), ..req(json!({"action": "errors", "target": "d", "forMs": 5})) };
        assert!(Spec::parse(&nan, Names::API).is_err());
    }

    #[test]
    fn good_requests_and_what_they_say() {
        let kill = Spec::parse(&req(json!({"action": "kill", "target": "data-2"})), Names::API).unwrap();
        assert_eq!(kill.lasts(), None, "a single kill is over at once");
        let repeat = Spec::parse(
            &req(json!({"action": "kill", "target": "data", "everyMs": 1000, "forMs": 10_000})),
            Names::API,
        )
        .unwrap();
        assert_eq!(repeat.lasts(), Some(Duration::from_secs(10)));
        let pause =
            Spec::parse(&req(json!({"action": "pause", "target": "compute-1", "durationMs": 3000})), Names::API)
                .unwrap();
        assert_eq!(pause.lasts(), Some(Duration::from_secs(3)));
        let cut = Spec::parse(&req(json!({"action": "partition", "target": "data-1", "durationMs": 4000})), Names::API)
            .unwrap();
        assert_eq!(cut.lasts(), Some(Duration::from_secs(4)));
        let err = Spec::parse(&req(json!({"action": "partition", "target": "data-1"})), Names::CLI).unwrap_err();
        assert!(err.starts_with("--duration is required for partition"), "{err}");
        let errors = Spec::parse(
            &req(json!({"action": "errors", "target": "data", "forMs": 10_000, "percent": 20})),
            Names::API,
        )
        .unwrap();
        assert_eq!(errors.status, 503, "the default status");
        assert_eq!(errors.fault_effect("data"), "data answers 20% 503 for 10s");
        assert_eq!(
            serde_json::to_value(errors.fault_body("data", Duration::from_secs(10))).unwrap(),
            json!({"service": "data", "latencyMs": 0, "errorPercent": 20.0, "errorStatus": 503, "durationMs": 10_000})
        );
        let latency = Spec::parse(
            &req(json!({"action": "latency", "target": "data", "forMs": 10_000, "latencyMs": 200, "percent": 100})),
            Names::API,
        )
        .unwrap();
        assert_eq!(latency.fault_effect("data"), "data +200 ms latency for 10s");
        assert_eq!(
            serde_json::to_value(latency.fault_body("data", Duration::from_secs(10))).unwrap(),
            json!({"service": "data", "latencyMs": 200, "latencyPercent": 100.0, "errorPercent": 0.0, "durationMs": 10_000})
        );
        let some = Spec::parse(
            &req(json!({"action": "latency", "target": "data", "forMs": 10_000, "latencyMs": 200, "percent": 25})),
            Names::API,
        )
        .unwrap();
        assert_eq!(some.fault_effect("data"), "data +200 ms latency on 25% for 10s");
        assert_eq!(some.fault_body("data", Duration::from_secs(1)).latency_percent, Some(25.0));
    }
}
