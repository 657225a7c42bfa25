//! The loop: takes batches of [`Event`]s, reconciles after each, and sleeps until the next
//! thing due (the tick, the plan's requeue, the debounced reload, a chaos deadline).

use std::time::Instant;

use tokio::sync::mpsc;

use super::{Controller, DEBOUNCE, Event, Instance, Progress, TICK};
use crate::events::Kind as EventKind;
use crate::reconcile::{self, Desired};

impl Controller {
    /// Runs until the cluster has stopped (signal or `orch down`).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        self.start_autoscaler();
        loop {
            self.step().await;
            if self.finished || (self.shutting_down && self.instances.is_empty()) {
                break;
            }
            // On orch's shared grid: an idle orch wakes once for this and its other timers.
            let mut wake = crate::tick::next_after(tokio::time::Instant::now(), TICK);
            if let Some(at) = self.requeue {
                wake = wake.min(tokio::time::Instant::from_std(at));
            }
            if let Some(at) = self.reload_at {
                wake = wake.min(at);
            }
            if let Some(at) = self.chaos_deadline() {
                wake = wake.min(at);
            }
            tokio::select! {
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    while let Ok(event) = rx.try_recv() {
                        self.handle(event);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if self.reload_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                self.reload_at = None;
                self.reload();
            }
            self.chaos_due(tokio::time::Instant::now());
        }
        self.events.emit(EventKind::Stopped, None, None, "cluster stopped");
        self.update_progress();
        self.state.remove();
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::ManifestChanged => {
                self.reload_at = Some(tokio::time::Instant::now() + DEBOUNCE);
            }
            Event::Exited { id, generation, status } => self.on_exit(&id, generation, status),
            Event::Probe { id, generation, kind, ok, detail } => self.on_probe(&id, generation, kind, ok, detail),
            Event::Signal => {
                self.signals += 1;
                if self.signals == 1 {
                    self.begin_shutdown("signal");
                } else {
                    self.kill_everything();
                }
            }
            Event::Autoscale(measured) => self.on_autoscale(measured),
            Event::Call(f) => f(self),
        }
    }

    pub(super) fn desired(&self) -> Desired {
        Desired {
            services: reconcile::goals(&self.manifest, |s| reconcile::revision(&self.manifest, s)),
            shutting_down: self.shutting_down,
        }
    }

    /// Reconciles once and carries out the plan. What must be looked at again sets the
    /// next wake: the plan's requeue, or now (see [`Controller::wake_now`]).
    pub(super) async fn step(&mut self) {
        let started = Instant::now();
        let observed: Vec<_> = self.instances.values().map(Instance::observed).collect();
        let plan = reconcile::reconcile(&self.desired(), &observed, Instant::now());
        self.requeue = plan.requeue;
        for action in plan.actions {
            self.execute(action).await;
        }
        super::metrics::get().reconcile.observe(started.elapsed().as_secs_f64());
        super::metrics::instances(self.instances.values().map(Instance::status));
        self.check_rollouts();
        self.track_rollouts();
        self.update_progress();
        self.publish_autoscale_plan();
    }

    /// Asks the loop to reconcile again at once, without waiting for an event.
    pub(super) fn wake_now(&mut self) {
        self.requeue = Some(Instant::now());
    }

    /// Emits `rolled` for services whose rollout has finished.
    pub(super) fn check_rollouts(&mut self) {
        let done: Vec<String> = self
            .rolling
            .iter()
            .filter(|name| {
                let Some(service) = self.manifest.service(name) else { return true };
                let revision = reconcile::revision(&self.manifest, service);
                let current: Vec<&Instance> = self
                    .instances
                    .values()
                    .filter(|i| i.id.service == **name && i.id.ordinal <= service.replicas)
                    .collect();
                current.len() == service.replicas as usize
                    && current.iter().all(|i| i.revision == revision && !i.replace && i.ready())
            })
            .cloned()
            .collect();
        for name in done {
            self.rolling.remove(&name);
            if let Some(service) = self.manifest.service(&name) {
                let n = service.replicas;
                self.events.emit(
                    EventKind::Rolled,
                    Some(&name),
                    None,
                    format!("{name} rolled out: {n} instances on the new spec"),
                );
            }
        }
    }

    pub(super) fn update_progress(&self) {
        let total: usize = self.manifest.services.iter().map(|s| s.replicas as usize).sum();
        let ready = self
            .instances
            .values()
            .filter(|i| self.manifest.service(&i.id.service).is_some_and(|s| i.id.ordinal <= s.replicas) && i.ready())
            .count();
        self.progress.send_if_modified(|p| {
            let next = Progress { ready, total, stopping: self.shutting_down };
            let changed = *p != next;
            *p = next;
            changed
        });
    }
}
