//! Rollouts in the controller: a numbered rollout begins for every service whose revision
//! an apply changes (and for every service at start); after each step the latest one is
//! judged ([`rollout::judge`]); a failed one is an event, and, with `autoRollback`, the
//! controller runs the last good rollout's spec again. `orch rollout undo` does the same by
//! hand. Either way the manifest file still says what it said: the service stays *pinned*
//! to the restored spec until the file changes again.

use std::time::{Duration, Instant};

use kit::orch_api::{RolloutHistory, RolloutState};

use super::rollout::{self, Verdict};
use super::{CallError, Controller, Instance, rollout_file};
use crate::events::Kind as EventKind;
use crate::manifest;
use crate::reconcile::{self, Observed};

impl Controller {
    /// Records a new rollout of `service`'s spec as the manifest has it now.
    pub(super) fn begin_rollout(&mut self, service: &str, change: String, restores: Option<u32>) -> Option<u32> {
        let spec = self.manifest.service(service)?;
        let revisions = (reconcile::rollout_revision(&self.manifest, spec), reconcile::revision(&self.manifest, spec));
        let history = self.rollouts.entry(service.to_owned()).or_default();
        let number = history.begin(spec, revisions, change, restores, Instant::now());
        self.save_rollouts();
        Some(number)
    }

    /// At start: the history an earlier orch left in the data dir, then for every service
    /// its rollout: the latest one taken up again if it ran the revision orch runs now,
    /// else a new one.
    pub(super) fn start_rollouts(&mut self) {
        let now = Instant::now();
        self.rollouts = rollout_file::load(&self.manifest.data_dir, now).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the rollout history starts empty");
            rollout::Book::new()
        });
        for spec in &self.manifest.services {
            let revision = reconcile::rollout_revision(&self.manifest, spec);
            let template = reconcile::revision(&self.manifest, spec);
            let history = self.rollouts.entry(spec.name.clone()).or_default();
            for entry in history.entries.iter_mut().filter(|e| e.revision == revision) {
                entry.spec = Some(spec.clone());
                entry.template = template;
            }
            let same = history.latest().is_some_and(|e| e.revision == revision);
            if !same {
                let change = if history.entries.is_empty() { "created" } else { "changed while orch was stopped" };
                history.begin(spec, (revision, template), change.to_owned(), None, now);
            }
            if let Some(latest) = history.entries.last_mut() {
                latest.at_start = true;
                latest.started = now;
            }
        }
        self.save_rollouts();
    }

    /// Writes the history to the data dir (a failure is logged: the history in memory
    /// stays right).
    fn save_rollouts(&self) {
        if let Err(e) = rollout_file::save(&self.manifest.data_dir, &self.rollouts) {
            tracing::warn!(error = %e, "rollout history not saved");
        }
    }

    /// The manifest file changed (an apply): no service is pinned any more.
    pub(super) fn unpin_rollouts(&mut self) {
        for history in self.rollouts.values_mut() {
            history.pinned = false;
        }
    }

    /// Judges every rollout under way; a failed one is reported and, if its service says
    /// `autoRollback`, rolled back to the last good rollout.
    pub(super) fn track_rollouts(&mut self) {
        if self.shutting_down {
            // Everything stops: no rollout is judged by instances going away on purpose.
            return;
        }
        let now = Instant::now();
        let mut failed = Vec::new();
        let mut settled = false;
        for (name, history) in &mut self.rollouts {
            let Some(latest) = history.latest() else { continue };
            if latest.view.state != RolloutState::Progressing {
                continue;
            }
            let Some(service) = self.manifest.service(name) else { continue };
            let observed: Vec<Observed> =
                self.instances.values().filter(|i| i.id.service == *name).map(Instance::observed).collect();
            let refs: Vec<&Observed> = observed.iter().collect();
            // A service's first rollout, or the one orch started with, is the cluster
            // starting: it has no deadline.
            let deadline = (history.entries.len() > 1 && !latest.at_start)
                .then(|| Duration::from_millis(service.rollout.progress_deadline_ms));
            let verdict = rollout::judge(latest.template, service.replicas, latest.started, deadline, &refs, now);
            let (number, restores) = (latest.view.number, latest.restores);
            history.settle(&verdict);
            settled |= !matches!(verdict, Verdict::Progressing { .. });
            if let Verdict::Failed { cause, .. } = verdict {
                let back_to = history.last_good.filter(|good| *good != number && restores.is_none());
                let back_to = back_to.filter(|good| history.undo_target(Some(*good)).is_ok());
                let back_to = back_to.filter(|_| service.rollout.auto_rollback);
                failed.push((name.clone(), number, cause, back_to));
            }
        }
        if settled {
            self.save_rollouts();
        }
        for (name, number, cause, back_to) in failed {
            let what = match back_to {
                Some(good) => format!("; rolling back to #{good}"),
                None => String::new(),
            };
            self.events.emit(
                EventKind::RolloutFailed,
                Some(&name),
                None,
                format!("{name} rollout #{number} failed: {cause}{what}"),
            );
            if let Some(good) = back_to {
                let change = format!("rollback to #{good}: #{number} failed ({cause})");
                if let Err(e) = self.restore(&name, good, change) {
                    tracing::warn!(service = %name, error = %e, "cannot roll back");
                }
            }
        }
    }

    /// Runs rollout `to`'s spec of `service` again (replicas as now), as a new rollout.
    fn restore(&mut self, service: &str, to: u32, change: String) -> Result<u32, CallError> {
        let not_found = || CallError::NotFound(format!("no service {service:?} in the cluster"));
        let index = self.manifest.services.iter().position(|s| s.name == service).ok_or_else(not_found)?;
        let history = self.rollouts.get(service).ok_or_else(not_found)?;
        let target = history.undo_target(Some(to)).map_err(CallError::Invalid)?;
        let mut spec = target.spec.clone().ok_or_else(|| CallError::Invalid(format!("rollout #{to} has no spec")))?;
        spec.replicas = self.manifest.services[index].replicas;
        let mut new = self.manifest.clone();
        new.services[index] = spec;
        manifest::check_ports(&new).map_err(CallError::Conflict)?;
        let slots = self.prepare_slots(&new, None).map_err(|e| CallError::Conflict(e.problems[0].message.clone()))?;
        self.manifest = new;
        self.slots = slots;
        let number = self.begin_rollout(service, change, Some(to)).ok_or_else(not_found)?;
        self.resources_applied();
        if let Some(history) = self.rollouts.get_mut(service) {
            history.pinned = true;
        }
        self.rolling.insert(service.to_owned());
        self.events.emit(
            EventKind::RolledBack,
            Some(service),
            None,
            format!(
                "{service} back on the spec of rollout #{to} (now #{number}); the manifest file still asks for another spec, which runs again when the file changes"
            ),
        );
        self.wake_now();
        Ok(number)
    }

    /// `GET /api/rollouts/{service}`.
    pub fn rollout_history(&self, service: &str) -> Result<RolloutHistory, CallError> {
        match self.rollouts.get(service) {
            Some(history) if self.manifest.service(service).is_some() => Ok(history.view(service)),
            _ => Err(CallError::NotFound(format!("no service {service:?} in the cluster"))),
        }
    }

    /// `POST /api/rollouts/{service}/undo`: back to rollout `to`, else the last one that
    /// completed before the latest.
    pub fn call_rollout_undo(&mut self, service: &str, to: Option<u32>) -> Result<RolloutHistory, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        let history = self.rollout_history(service)?;
        let target = self
            .rollouts
            .get(service)
            .map(|h| h.undo_target(to).map(|e| e.view.number))
            .unwrap_or_else(|| Err(format!("no rollouts of {service:?}")))
            .map_err(CallError::Conflict)?;
        if history.current == target {
            return Err(CallError::Conflict(format!("rollout #{target} is the current one of {service}")));
        }
        self.restore(service, target, format!("undo to #{target} (orch rollout undo)"))?;
        self.rollout_history(service)
    }
}
