//! orch's autoscaled services as the dashboard charts them: per service, the recent
//! samples of the figure it scales on (per instance, beside its target) and of its
//! replicas (ready and desired), read from orch's `GET /api/cluster`. Pure: the orch loop
//! passes in what it read and when; each service keeps at most [`SAMPLES`] samples, and a
//! service no longer autoscaled is forgotten. The decisions themselves are orch's `scaled`
//! events, with their reason, in the events feed.

use std::collections::{BTreeMap, VecDeque};

use kit::orch_api::ServiceView;
use serde::Serialize;

use crate::machine::Millis;

/// Samples kept per service (at one read every 2 s, four minutes).
pub const SAMPLES: usize = 120;

/// One read of an autoscaled service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub at: Millis,
    /// Ready instances.
    pub current: u32,
    /// The replicas the autoscaler asks for.
    pub desired: u32,
    /// The figure per instance, once measured.
    pub figure: Option<f64>,
}

/// One autoscaled service.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scaled {
    pub min: u32,
    pub max: u32,
    /// The target in words (`in flight 8 per instance`) and as a number.
    pub target: String,
    pub target_value: u32,
    /// The last figure in words.
    pub measured: Option<String>,
    /// Oldest first.
    pub samples: VecDeque<Sample>,
}

/// Every autoscaled service, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Autoscaling {
    pub services: BTreeMap<String, Scaled>,
}

impl Autoscaling {
    /// Takes in orch's services read at `at`; returns whether there is anything to show
    /// that changed (no autoscaled service before or now: nothing).
    pub fn update(&mut self, at: Millis, services: &[ServiceView]) -> bool {
        let before = self.services.len();
        self.services.retain(|name, _| services.iter().any(|s| s.name == *name && s.autoscale.is_some()));
        let mut changed = self.services.len() != before;
        for s in services {
            let Some(a) = &s.autoscale else { continue };
            let scaled = self.services.entry(s.name.clone()).or_default();
            scaled.min = a.min;
            scaled.max = a.max;
            scaled.target.clone_from(&a.target);
            scaled.target_value = a.target_value;
            scaled.measured.clone_from(&a.measured);
            if scaled.samples.len() == SAMPLES {
                scaled.samples.pop_front();
            }
            scaled.samples.push_back(Sample { at, current: a.current, desired: a.desired, figure: a.figure });
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use kit::orch_api::AutoscaleView;

    use super::*;

    fn service(name: &str, current: u32, figure: Option<f64>, autoscaled: bool) -> ServiceView {
        let autoscale = autoscaled.then(|| AutoscaleView {
            current,
            desired: current + 1,
            min: 1,
            max: 4,
            target: "in flight 8 per instance".into(),
            measured: figure.map(|f| format!("in flight {f} per instance")),
            target_value: 8,
            figure,
        });
        ServiceView {
            name: name.into(),
            replicas: current,
            ready: current,
            port: None,
            component: Some("data".into()),
            command: None,
            autoscale,
        }
    }

    #[test]
    fn samples_are_kept_per_service_bounded_and_forgotten_with_autoscale() {
        let mut a = Autoscaling::default();
        assert!(!a.update(1, &[service("auth", 1, None, false)]), "nothing autoscaled: nothing to show");
        for n in 0..SAMPLES as i64 + 5 {
            assert!(a.update(n, &[service("data", 2, Some(n as f64), true), service("auth", 1, None, false)]));
        }
        let data = &a.services["data"];
        assert_eq!(a.services.len(), 1);
        assert_eq!(data.samples.len(), SAMPLES);
        assert_eq!(data.samples.front().unwrap().at, 5, "the oldest dropped");
        assert_eq!(
            data.samples.back(),
            Some(&Sample { at: SAMPLES as i64 + 4, current: 2, desired: 3, figure: Some(SAMPLES as f64 + 4.0) })
        );
        assert_eq!((data.target_value, data.min, data.max), (8, 1, 4));
        // No longer autoscaled: forgotten, and that is news once.
        assert!(a.update(999, &[service("data", 2, None, false)]));
        assert!(a.services.is_empty());
        assert!(!a.update(1000, &[service("data", 2, None, false)]));
    }
}
