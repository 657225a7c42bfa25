//! Autoscaling on load (`autoscale:` per service): the controller's side. It publishes
//! what to watch (the [`sampler::Plan`]: autoscaled services, the balancers that route to
//! them, their ready processes) after every step; the [`sampler`] task measures and sends
//! an [`Event::Autoscale`](super::Event::Autoscale); [`Controller::on_autoscale`] runs the
//! pure [`decide`] on each reading and scales through the same path as `orch scale`
//! ([`Controller::set_replicas`]), each decision an event with its reason. Autoscaled
//! replicas outlive manifest edits that keep the service's `autoscale:` as it was
//! ([`Controller::keep_autoscaled`]).

pub mod decide;
pub mod sampler;

use std::collections::HashMap;
use std::time::Instant;

use kit::orch_api::AutoscaleView;
use tokio::sync::watch;

use super::Controller;
use crate::events::Kind as EventKind;
use crate::manifest::{Autoscale, Manifest, Service};
use crate::run::Component;
use decide::{Decision, History, Policy, Reading};
use sampler::{Measured, Plan, Watched};

/// The autoscaler's state in the controller.
pub struct Autoscaler {
    plan: watch::Sender<Plan>,
    /// The sampler's end of `plan`, until the loop starts it.
    pub(super) sampler: Option<watch::Receiver<Plan>>,
    services: HashMap<String, Tracked>,
}

/// One autoscaled service's memory: the `autoscale:` it follows (a new one starts afresh).
struct Tracked {
    spec: Autoscale,
    history: History,
    last: Option<Reading>,
    /// The replicas it last failed to scale to (said once, not every round).
    failed: Option<u32>,
}

impl Autoscaler {
    pub fn new() -> Self {
        let (plan, rx) = watch::channel(Plan::default());
        Self { plan, sampler: Some(rx), services: HashMap::new() }
    }
}

impl Controller {
    /// Starts the sampler (once, when the loop starts).
    pub(super) fn start_autoscaler(&mut self) {
        if let Some(plan) = self.autoscaler.sampler.take() {
            tokio::spawn(sampler::run(plan, self.tx.clone(), self.http.clone()));
        }
    }

    /// Tells the sampler what to watch now.
    pub(super) fn publish_autoscale_plan(&self) {
        let services = if self.shutting_down {
            Vec::new()
        } else {
            self.manifest
                .services
                .iter()
                .filter_map(|s| s.autoscale.as_ref().map(|a| (s, a)))
                .map(|(s, a)| Watched {
                    service: s.name.clone(),
                    target: a.target,
                    balancers: self.balancer_urls(&s.name),
                    pids: self
                        .instances
                        .values()
                        .filter(|i| i.id.service == s.name && i.id.ordinal <= s.replicas && i.ready())
                        .filter_map(|i| i.live_proc().map(|p| p.pid))
                        .collect(),
                })
                .collect()
        };
        self.autoscaler.plan.send_if_modified(|plan| {
            let changed = plan.services != services;
            plan.services = services;
            changed
        });
    }

    /// Ready balancer instances routing to `service`.
    fn balancer_urls(&self, service: &str) -> Vec<String> {
        let routing: Vec<&str> = self
            .manifest
            .services
            .iter()
            .filter(|b| b.component() == Some(Component::Balancer) && b.routes.values().any(|s| s == service))
            .map(|b| b.name.as_str())
            .collect();
        self.instances
            .values()
            .filter(|i| routing.contains(&i.id.service.as_str()) && i.ready())
            .map(|i| format!("http://127.0.0.1:{}", i.slot.port))
            .collect()
    }

    /// A round of figures from the sampler: one decision per autoscaled service.
    pub(super) fn on_autoscale(&mut self, measured: Vec<Measured>) {
        if self.shutting_down {
            return;
        }
        let now = Instant::now();
        for Measured { service, reading } in measured {
            let Some(index) = self.manifest.services.iter().position(|s| s.name == service) else { continue };
            let Some(spec) = self.manifest.services[index].autoscale.clone() else { continue };
            let current = self.manifest.services[index].replicas;
            let tracked = self.autoscaler.services.entry(service.clone()).or_insert_with(|| Tracked {
                spec: spec.clone(),
                history: History::default(),
                last: None,
                failed: None,
            });
            if tracked.spec != spec {
                *tracked = Tracked { spec: spec.clone(), history: History::default(), last: None, failed: None };
            }
            tracked.last = reading;
            let Decision { desired, .. } =
                decide::decide(&Policy::of(&spec), &mut tracked.history, current, reading, now);
            if desired == current {
                continue;
            }
            let why = match reading {
                Some(r) => {
                    let sign = if desired > current { ">" } else { "<" };
                    format!("{} {sign} {}", spec.target.describe(r.metric), spec.target.value())
                }
                None => format!("outside {}-{}", spec.min, spec.max),
            };
            let result = self.set_replicas(index, desired);
            let Some(tracked) = self.autoscaler.services.get_mut(&service) else { continue };
            let message = match result {
                Ok(_) => {
                    tracked.failed = None;
                    format!("{service} autoscaled: {why}: {current} -> {desired}")
                }
                // Said once, not at every round.
                Err(_) if tracked.failed == Some(desired) => continue,
                Err(e) => {
                    tracked.failed = Some(desired);
                    format!("{service} cannot autoscale ({why}): {current} -> {desired}: {e}")
                }
            };
            self.events.emit(EventKind::Scaled, Some(&service), None, message);
        }
    }

    /// Before `new` replaces the manifest: a service whose `autoscale:` is unchanged keeps
    /// the replicas the autoscaler chose (the file's `replicas:` was only the start).
    pub(super) fn keep_autoscaled(&self, new: &mut Manifest) {
        for service in &mut new.services {
            if let Some(old) = self.manifest.service(&service.name)
                && service.autoscale.is_some()
                && old.autoscale == service.autoscale
            {
                service.replicas = old.replicas;
            }
        }
    }

    /// What `orch get` shows of an autoscaled service: `current/desired (min-max)`.
    pub(super) fn autoscale_view(&self, s: &Service, ready: u32) -> Option<AutoscaleView> {
        let a = s.autoscale.as_ref()?;
        let last = self.autoscaler.services.get(&s.name).and_then(|t| t.last);
        Some(AutoscaleView {
            current: ready,
            desired: s.replicas,
            min: a.min,
            max: a.max,
            target: a.target.describe(f64::from(a.target.value())),
            measured: last.map(|r| a.target.describe(r.metric)),
            target_value: a.target.value(),
            figure: last.map(|r| r.metric),
        })
    }
}
