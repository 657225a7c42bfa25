//! A service's `autoscale:` block: the resolved `Autoscale` and its `Target`, checked and
//! filled with defaults (in the spirit of Kubernetes' HPA, scaled to a local cluster: up
//! within seconds, down after a quiet minute).

use serde::Serialize;

use super::check::Checker;
use super::raw::{Int, RawAutoscale};
use super::{MAX_REPLICAS, NodePath, Service};
use crate::run::Component;

/// Default `scaleUpWindowMs`: load must last this long before instances are added.
pub const DEFAULT_SCALE_UP_WINDOW_MS: u64 = 3_000;
/// Default `scaleDownWindowMs`: a quiet minute before instances are removed.
pub const DEFAULT_SCALE_DOWN_WINDOW_MS: u64 = 60_000;
/// The longest stabilisation window.
const MAX_WINDOW_MS: i128 = 3_600_000;

/// `autoscale: { min, max, target, scaleUpWindowMs, scaleDownWindowMs }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    pub target: Target,
    pub scale_up_window_ms: u64,
    pub scale_down_window_ms: u64,
}

/// The per-instance figure the autoscaler holds the service to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// Client requests in flight at the balancer, per instance.
    InFlightPerInstance(u32),
    /// Requests answered by the balancer per second, per instance.
    RequestsPerSecondPerInstance(u32),
    /// CPU use of each instance's process, in percent of one core.
    CpuPercent(u32),
}

impl Target {
    /// The figure as a number.
    pub fn value(self) -> u32 {
        match self {
            Target::InFlightPerInstance(v) | Target::RequestsPerSecondPerInstance(v) | Target::CpuPercent(v) => v,
        }
    }

    /// Whether the balancer measures it (else each instance's CPU).
    pub fn measured_by_balancer(self) -> bool {
        !matches!(self, Target::CpuPercent(_))
    }

    /// How an event names a measurement of it: `in flight 19.5 per instance`.
    pub fn describe(self, measured: f64) -> String {
        let measured = (measured * 10.0).round() / 10.0;
        match self {
            Target::InFlightPerInstance(_) => format!("in flight {measured} per instance"),
            Target::RequestsPerSecondPerInstance(_) => format!("{measured} requests/s per instance"),
            Target::CpuPercent(_) => format!("cpu {measured}% per instance"),
        }
    }
}

/// Makes a target of a checked figure.
type Make = fn(u32) -> Target;
/// A figure given in `target:`: its name, value, target and largest value.
type Given = (&'static str, Int, Make, i128);

impl Checker {
    pub(super) fn autoscale(&mut self, at: NodePath, raw: RawAutoscale) -> Autoscale {
        let max_replicas = i128::from(MAX_REPLICAS);
        let min = match raw.min {
            Some(_) => self.range(at.key("min"), "autoscale min", raw.min, 1, 1, max_replicas) as u32,
            None => {
                self.problem(at.key("min"), "autoscale needs min", "add min: 1 (the fewest instances)");
                1
            }
        };
        let max = match raw.max {
            Some(_) => self.range(at.key("max"), "autoscale max", raw.max, min.into(), 1, max_replicas) as u32,
            None => {
                self.problem(at.key("max"), "autoscale needs max", "add max: 4 (the most instances)");
                min
            }
        };
        if max < min {
            self.problem(at.key("max"), format!("autoscale max ({max}) is below min ({min})"), "make max at least min");
        }
        let target = self.target(at.key("target"), raw.target);
        let scale_up_window_ms = self.range(
            at.key("scaleUpWindowMs"),
            "scaleUpWindowMs",
            raw.scale_up_window_ms,
            DEFAULT_SCALE_UP_WINDOW_MS.into(),
            0,
            MAX_WINDOW_MS,
        ) as u64;
        let scale_down_window_ms = self.range(
            at.key("scaleDownWindowMs"),
            "scaleDownWindowMs",
            raw.scale_down_window_ms,
            DEFAULT_SCALE_DOWN_WINDOW_MS.into(),
            0,
            MAX_WINDOW_MS,
        ) as u64;
        Autoscale { min, max, target, scale_up_window_ms, scale_down_window_ms }
    }

    fn target(&mut self, at: NodePath, raw: Option<super::raw::RawTarget>) -> Target {
        const FIX: &str = "give one of inFlightPerInstance: 8, requestsPerSecondPerInstance: 50, cpuPercent: 70";
        let fallback = Target::InFlightPerInstance(1);
        let Some(raw) = raw else {
            self.problem(at, "autoscale needs a target", FIX);
            return fallback;
        };
        let given: Vec<Given> = [
            ("inFlightPerInstance", raw.in_flight_per_instance, Target::InFlightPerInstance as Make, 10_000),
            (
                "requestsPerSecondPerInstance",
                raw.requests_per_second_per_instance,
                Target::RequestsPerSecondPerInstance,
                1_000_000,
            ),
            ("cpuPercent", raw.cpu_percent, Target::CpuPercent, 10_000),
        ]
        .into_iter()
        .filter_map(|(name, v, make, max)| v.map(|v| (name, v, make, max)))
        .collect();
        match given[..] {
            [] => {
                self.problem(at, "autoscale target names no figure", FIX);
                fallback
            }
            [(name, value, make, max)] => make(self.range(at.key(name), name, Some(value), 1, 1, max) as u32),
            [_, (second, ..), ..] => {
                self.problem(at.key(second), "autoscale target names more than one figure", "keep one of them");
                fallback
            }
        }
    }

    /// A target the balancer measures needs a balancer that routes to the service.
    pub(super) fn autoscale_signals(&mut self, services: &[Service]) {
        for (i, s) in services.iter().enumerate() {
            let Some(a) = &s.autoscale else { continue };
            let routed = services
                .iter()
                .any(|b| b.component() == Some(Component::Balancer) && b.routes.values().any(|to| *to == s.name));
            if a.target.measured_by_balancer() && !routed {
                self.problem(
                    super::check::services_path().index(i).key("autoscale").key("target"),
                    format!(
                        "{} is measured by the balancer, and no balancer routes to {:?}",
                        a.target.describe(f64::from(a.target.value())),
                        s.name
                    ),
                    format!("add a route to {} in the balancer's routes, or target cpuPercent", s.name),
                );
            }
        }
    }

    /// `replicas` (the start) must lie within the autoscaler's range.
    pub(super) fn autoscale_start(&mut self, at: NodePath, autoscale: &Autoscale, replicas: u32) {
        let Autoscale { min, max, .. } = *autoscale;
        if min <= max && !(min..=max).contains(&replicas) {
            self.problem(
                at,
                format!("replicas ({replicas}) is outside autoscale's range {min}-{max}"),
                format!("set replicas between {min} and {max}, or omit it to start at min"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::parse;

    fn doc(autoscale: &str, replicas: &str) -> String {
        format!(
            "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: t }}\nspec:\n  services:\n    - name: web\n      command: [sh]\n{replicas}      autoscale: {autoscale}\n    - name: balancer\n      component: balancer\n      routes: {{ /web: web }}\n"
        )
    }

    #[test]
    fn defaults_and_the_start_at_min() {
        let m = parse(Path::new("m.yaml"), &doc("{ min: 2, max: 8, target: { inFlightPerInstance: 8 } }", "")).unwrap();
        let web = &m.services[0];
        assert_eq!(web.replicas, 2, "replicas omitted: the autoscaler starts at min");
        assert_eq!(
            web.autoscale,
            Some(Autoscale {
                min: 2,
                max: 8,
                target: Target::InFlightPerInstance(8),
                scale_up_window_ms: DEFAULT_SCALE_UP_WINDOW_MS,
                scale_down_window_ms: DEFAULT_SCALE_DOWN_WINDOW_MS,
            })
        );
        let text = doc(
            "{ min: 1, max: 4, target: { cpuPercent: 70 }, scaleUpWindowMs: 0, scaleDownWindowMs: 500 }",
            "      replicas: 3\n",
        );
        let m = parse(Path::new("m.yaml"), &text).unwrap();
        let a = m.services[0].autoscale.as_ref().unwrap();
        assert_eq!(
            (m.services[0].replicas, a.target, a.scale_up_window_ms, a.scale_down_window_ms),
            (3, Target::CpuPercent(70), 0, 500)
        );
        let m =
            parse(Path::new("m.yaml"), &doc("{ min: 1, max: 1, target: { requestsPerSecondPerInstance: 50 } }", ""))
                .unwrap();
        assert_eq!(m.services[0].autoscale.as_ref().unwrap().target, Target::RequestsPerSecondPerInstance(50));
    }

    #[test]
    fn bad_autoscale_is_located_and_explained() {
        let cases = [
            (
                "{ max: 8, target: { inFlightPerInstance: 8 } }",
                "",
                "m.yaml:8:18: autoscale needs min; fix: add min: 1 (the fewest instances)",
            ),
            (
                "{ min: 0, max: 8, target: { inFlightPerInstance: 8 } }",
                "",
                "m.yaml:8:25: autoscale min must be from 1 to 1000, got 0; fix: set autoscale min between 1 and 1000",
            ),
            (
                "{ min: 4, max: 2, target: { inFlightPerInstance: 8 } }",
                "",
                "m.yaml:8:33: autoscale max (2) is below min (4); fix: make max at least min",
            ),
            (
                "{ min: 1, max: 2 }",
                "",
                "m.yaml:8:18: autoscale needs a target; fix: give one of inFlightPerInstance: 8, requestsPerSecondPerInstance: 50, cpuPercent: 70",
            ),
            (
                "{ min: 1, max: 2, target: {} }",
                "",
                "m.yaml:8:44: autoscale target names no figure; fix: give one of inFlightPerInstance: 8, requestsPerSecondPerInstance: 50, cpuPercent: 70",
            ),
            (
                "{ min: 1, max: 2, target: { cpuPercent: 50, inFlightPerInstance: 3 } }",
                "",
                "m.yaml:8:58: autoscale target names more than one figure; fix: keep one of them",
            ),
            (
                "{ min: 1, max: 2, target: { cpuPercent: 0 } }",
                "",
                "m.yaml:8:58: cpuPercent must be from 1 to 10000, got 0; fix: set cpuPercent between 1 and 10000",
            ),
            (
                "{ min: 1, max: 2, target: { inFlight: 3 } }",
                "",
                "m.yaml:8:46: spec.services[0].autoscale.target: unknown field `inFlight`, expected one of `inFlightPerInstance`, `requestsPerSecondPerInstance`, `cpuPercent`; fix: remove it (allowed here: inFlightPerInstance, requestsPerSecondPerInstance, cpuPercent)",
            ),
            (
                "{ min: 1, max: 2, target: { cpuPercent: 5 }, scaleUpWindowMs: -1 }",
                "",
                "m.yaml:8:80: scaleUpWindowMs must be from 0 to 3600000, got -1; fix: set scaleUpWindowMs between 0 and 3600000",
            ),
            (
                "{ min: 2, max: 4, target: { cpuPercent: 5 } }",
                "      replicas: 5\n",
                "m.yaml:8:17: replicas (5) is outside autoscale's range 2-4; fix: set replicas between 2 and 4, or omit it to start at min",
            ),
        ];
        let mut wrong = Vec::new();
        let clash = doc("{ min: 1, max: 4, target: { cpuPercent: 50 } }", "      port: 4000\n")
            .replace("routes: { /web: web }", "routes: { /web: web }\n      port: 4003");
        match parse(Path::new("m.yaml"), &clash) {
            Err(e) if e.to_string().contains("overlap") => {}
            other => wrong.push(format!("ports up to max: got {other:?}")),
        }
        let unrouted = doc("{ min: 1, max: 2, target: { inFlightPerInstance: 5 } }", "").replace("{ /web: web }", "{}");
        let expected = "m.yaml:8:44: in flight 5 per instance is measured by the balancer, and no balancer routes to \"web\"; fix: add a route to web in the balancer's routes, or target cpuPercent";
        match parse(Path::new("m.yaml"), &unrouted) {
            Err(e) if e.to_string() == expected => {}
            other => wrong.push(format!("unrouted: got {other:?}")),
        }
        for (autoscale, replicas, expected) in cases {
            let text = doc(autoscale, replicas);
            match parse(Path::new("m.yaml"), &text) {
                Ok(_) => wrong.push(format!("no error for {autoscale}")),
                Err(e) if e.to_string() != expected => {
                    wrong.push(format!("{autoscale}\n  got:      {e}\n  expected: {expected}"))
                }
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
