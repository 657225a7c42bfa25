//! orch's own Prometheus figures, in its control API's `/metrics` (beside kit's HTTP and
//! process ones): instances by status, restarts by instance and reason, probe failures,
//! and how long each reconcile step takes. The controller moves them; nothing else does.
//! An instance is labelled `name` (`auth-2`): Prometheus gives every target `instance` and
//! (from the registry) `service` labels of its own, which a scraped label must not shadow.

use std::sync::LazyLock;

use kit::metrics::{Counter, Family, Gauge, Histogram, Labels};
use kit::orch_api::{LastExit, Status};

pub struct Metrics {
    pub instances: Family<Labels<1>, Gauge>,
    pub restarts: Family<Labels<2>, Counter>,
    pub probe_failures: Family<Labels<2>, Counter>,
    pub reconcile: Histogram,
}

pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        instances: kit::metrics::gauges("orch_instances", "Instances by status"),
        restarts: kit::metrics::counters("orch_restarts", "Restarts after a crash, by instance name and reason"),
        probe_failures: kit::metrics::counters("orch_probe_failures", "Failed probes, by instance name and probe"),
        reconcile: kit::metrics::seconds("orch_reconcile_duration_seconds", "One reconcile step and its actions"),
    });
    &METRICS
}

/// Sets `orch_instances{status}` from the statuses of every instance (each status, zero too).
pub fn instances(statuses: impl Iterator<Item = Status>) {
    let mut counts = [0i64; Status::ALL.len()];
    for status in statuses {
        if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
            counts[i] += 1;
        }
    }
    for (status, n) in Status::ALL.iter().zip(counts) {
        get().instances.get_or_create(&[("status", status.as_str().to_owned())]).set(n);
    }
}

/// Counts a restart of instance `name` after `last` (why it had ended: orch's reason when
/// it knows one, else the signal or the exit code's kind).
pub fn restarted(name: &str, last: Option<&LastExit>) {
    let reason = match last {
        Some(LastExit { reason: Some(reason), .. }) => reason.as_str(),
        Some(LastExit { signal: Some(_), .. }) => "signal",
        Some(LastExit { error: Some(_), .. }) => "start-failed",
        _ => "exit",
    };
    let labels = [("name", name.to_owned()), ("reason", reason.to_owned())];
    get().restarts.get_or_create(&labels).inc();
}

/// Counts a failed probe.
pub fn probe_failed(name: &str, probe: &'static str) {
    let labels = [("name", name.to_owned()), ("probe", probe.to_owned())];
    get().probe_failures.get_or_create(&labels).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use kit::testing::metric;

    #[test]
    fn restarts_probes_and_statuses_move_their_series() {
        let exit =
            LastExit { code: None, signal: Some("SIGKILL".into()), at: String::new(), error: None, reason: None };
        let series = r#"orch_restarts_total{name="m-1",reason="signal"}"#;
        let before = metric(&kit::metrics::encode(), series).unwrap_or(0.0);
        restarted("m-1", Some(&exit));
        probe_failed("m-1", "liveness");
        instances([Status::Running, Status::Running, Status::Backoff].into_iter());
        let text = kit::metrics::encode();
        assert_eq!(metric(&text, series), Some(before + 1.0), "{text}");
        let probes = r#"orch_probe_failures_total{name="m-1",probe="liveness"}"#;
        assert!(metric(&text, probes).unwrap() >= 1.0);
        assert!(metric(&text, r#"orch_instances{status="failed"}"#).is_some(), "every status, zero too: {text}");
        assert!(text.contains("orch_reconcile_duration_seconds_count"), "{text}");
    }
}
