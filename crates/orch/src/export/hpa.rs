//! A service's `autoscale:` as a HorizontalPodAutoscaler (`autoscaling/v2`) of its
//! Deployment: `min`/`max` as they are, the stabilisation windows in whole seconds (at most
//! doubling per step, as orch's autoscaler does), and the target as the metric Kubernetes
//! knows: `cpuPercent` (of one core) as the `Resource` metric cpu (a `Utilization` of the
//! container's request when the service has a cpu limit, which is its request; else an
//! `AverageValue` in millicores); in-flight requests and requests per second as `Pods`
//! metrics, which only a custom metrics adapter serves (warned).

use super::Document;
use super::objects::*;
use crate::manifest::quantity::format_cpu;
use crate::manifest::{Autoscale, Service, Target};

/// The `Pods` metric of in-flight requests per pod (served by a metrics adapter).
pub const IN_FLIGHT_METRIC: &str = "http_requests_in_flight";
/// The `Pods` metric of requests per second per pod (served by a metrics adapter).
pub const RATE_METRIC: &str = "http_requests_per_second";

/// The HorizontalPodAutoscaler of `service` (named as its Deployment, with `meta`), and the
/// warnings of what it needs that orch had on its own.
pub fn document(meta: Meta, service: &Service, a: &Autoscale) -> (Document, Vec<String>) {
    let name = &service.name;
    let mut notes = vec![format!(
        "orch's autoscale: {}-{} instances on {}",
        a.min,
        a.max,
        a.target.describe(f64::from(a.target.value()))
    )];
    let mut warnings = Vec::new();
    let pods = |metric: &str, value: u32| MetricSpec {
        kind: "Pods".into(),
        resource: None,
        pods: Some(PodsMetric {
            metric: MetricName { name: metric.to_owned() },
            target: MetricTarget {
                kind: "AverageValue".into(),
                average_utilization: None,
                average_value: Some(value.to_string()),
            },
        }),
    };
    let metric = match a.target {
        Target::CpuPercent(percent) => {
            let millis = u64::from(percent) * 10;
            let target = match service.resources.cpu {
                Some(request) => {
                    let utilization = (millis * 100).div_ceil(request.max(1)) as u32;
                    notes.push(format!(
                        "cpu {percent}% of one core = {utilization}% of the request ({}, the limit)",
                        format_cpu(request)
                    ));
                    MetricTarget {
                        kind: "Utilization".into(),
                        average_utilization: Some(utilization),
                        average_value: None,
                    }
                }
                None => {
                    notes.push(format!(
                        "no cpu request to take a percentage of: cpu {percent}% of one core is an average of {} per pod",
                        format_cpu(millis)
                    ));
                    MetricTarget {
                        kind: "AverageValue".into(),
                        average_utilization: None,
                        average_value: Some(format_cpu(millis)),
                    }
                }
            };
            MetricSpec {
                kind: "Resource".into(),
                resource: Some(ResourceMetric { name: "cpu".into(), target }),
                pods: None,
            }
        }
        Target::InFlightPerInstance(v) => pods(IN_FLIGHT_METRIC, v),
        Target::RequestsPerSecondPerInstance(v) => pods(RATE_METRIC, v),
    };
    if let Some(pods) = &metric.pods {
        let adapter = format!(
            "the Pods metric {} needs a custom metrics adapter (e.g. prometheus-adapter) that serves it per pod; orch measured it at its balancer",
            pods.metric.name
        );
        warnings.push(format!("service {name}: autoscale: {adapter}"));
        notes.push(adapter);
    }
    let seconds = |ms: u64| ms.div_ceil(1000);
    let behavior = HpaBehavior {
        scale_up: ScalingRules {
            stabilization_window_seconds: seconds(a.scale_up_window_ms),
            policies: vec![ScalingPolicy { kind: "Percent".into(), value: 100, period_seconds: 15 }],
        },
        scale_down: ScalingRules {
            stabilization_window_seconds: seconds(a.scale_down_window_ms),
            policies: Vec::new(),
        },
    };
    notes.push(format!(
        "stabilisation: scaleUpWindowMs {} and scaleDownWindowMs {} in whole seconds; at most doubling per step",
        a.scale_up_window_ms, a.scale_down_window_ms
    ));
    let hpa = HorizontalPodAutoscaler {
        metadata: meta,
        spec: HpaSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: name.clone(),
            },
            min_replicas: a.min,
            max_replicas: a.max,
            metrics: vec![metric],
            behavior: Some(behavior),
        },
    };
    (Document { notes, object: Object::HorizontalPodAutoscaler(hpa) }, warnings)
}
