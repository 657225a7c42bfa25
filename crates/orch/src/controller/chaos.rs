//! The controller's side of `orch chaos`: experiments are part of the state the
//! controller owns ([`experiments`]), and every signal is sent from here, to the pid it
//! holds for the instance at that moment, so a kill never meets a process that is no
//! longer that instance; a pause remembers the process generation it stopped, and is
//! resumed only if that process still runs. The balancer's faults are posted and removed
//! in [`tasks`] between two calls to the controller ([`faults`] is the client), never on
//! the controller. When the cluster stops, every experiment ends: paused processes are
//! resumed, balancer faults removed. The request and its checks are [`crate::chaos`].

pub mod experiments;
pub mod faults;
pub mod tasks;

use std::time::{Duration, SystemTime};

use kit::orch_api;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use self::experiments::{Experiment, MAX_EXPERIMENTS, Paused, PostedFault, Target, Why, random_below};
use self::faults::{Balancer, BalancerClient};
use self::tasks::{Begun, Ending};
use super::{CallError, Controller, Handle};
use crate::chaos::{Action, Spec, show};
use crate::events::Kind as EventKind;
use crate::manifest::Service;
use crate::reconcile::InstanceId;
use crate::run::Component;

fn conflict(message: String) -> CallError {
    CallError::Conflict(message)
}

impl Controller {
    fn chaos_handle(&self) -> Handle {
        Handle { tx: self.tx.clone() }
    }

    fn balancer_client(&self) -> BalancerClient {
        BalancerClient { http: self.http.clone(), token: self.base.token.clone() }
    }

    fn chaos_event(&self, target: &Target, instance: Option<&str>, message: String) {
        let instance = instance.map(str::to_owned).or_else(|| target.instance());
        self.events.emit(EventKind::Chaos, Some(target.service()), instance.as_deref(), message);
    }

    /// `POST /api/chaos`, on the controller: checks the target against the cluster, records
    /// the experiment and makes its first kill or pause; a balancer fault is handed back to
    /// be posted outside the controller.
    pub fn chaos_start(&mut self, spec: Spec) -> Result<Begun, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        if self.chaos.active.len() >= MAX_EXPERIMENTS {
            return Err(conflict(format!("at most {} chaos experiments at once", MAX_EXPERIMENTS)));
        }
        let target = if self.manifest.service(&spec.target).is_some() {
            Target::Service(spec.target.clone())
        } else if let Some(i) = self.instances.values().find(|i| i.name == spec.target) {
            Target::Instance(i.id.clone())
        } else {
            return Err(CallError::NotFound(format!("no instance or service named {:?} in the cluster", spec.target)));
        };
        if spec.action.on_processes() {
            self.chaos_start_on_processes(spec, target)
        } else {
            self.chaos_start_at_balancer(spec, target)
        }
    }

    fn chaos_start_on_processes(&mut self, spec: Spec, target: Target) -> Result<Begun, CallError> {
        if spec.action == Action::Partition && !self.links.enabled() {
            return Err(conflict(format!(
                "partitions are off in this cluster: start orch with {}=1 so that instances reach the registry through links orch can cut",
                super::partition::VAR
            )));
        }
        if spec.every.is_none()
            && let Err(why) = self.chaos_candidates(&target, spec.action)
        {
            return Err(conflict(why));
        }
        self.chaos.next_id += 1;
        let id = self.chaos.next_id;
        let lasts = spec.lasts();
        let (every, action) = (spec.every, spec.action);
        let experiment = Experiment::new(id, spec, target.clone(), SystemTime::now(), lasts);
        if every.is_some() {
            self.chaos_event(&target, None, format!("chaos experiment {id} started: {}", experiment.description()));
        }
        self.chaos.active.insert(id, experiment);
        // A repeating experiment with nothing to hit now tries again at the next repeat.
        let _ = self.chaos_strike(id);
        let Some(lasts) = lasts else {
            // A single kill is over at once.
            let done = self.chaos.active.remove(&id).ok_or_else(|| conflict(format!("chaos experiment {id} ended")))?;
            return Ok(Begun::Done(done.view()));
        };
        debug_assert!(matches!(action, Action::Pause | Action::Partition) || every.is_some());
        let e = self.chaos.active.get_mut(&id).ok_or_else(|| conflict(format!("chaos experiment {id} ended")))?;
        e.arm(Instant::now(), every, lasts);
        Ok(Begun::Done(e.view()))
    }

    /// The instances a kill or pause of `target` may hit now, or why there is none.
    fn chaos_candidates(&self, target: &Target, action: Action) -> Result<Vec<InstanceId>, String> {
        let mut matching = self.instances.values().filter(|i| match target {
            Target::Instance(id) => i.id == *id,
            Target::Service(s) => i.id.service == *s,
        });
        let candidates: Vec<InstanceId> = matching
            .by_ref()
            .filter(|i| {
                i.live_proc().is_some()
                    && match action {
                        Action::Pause => !self.chaos.is_paused(&i.id, i.generation),
                        Action::Partition => self.links.get(&i.id).is_some() && !self.chaos.is_cut(&i.id),
                        _ => true,
                    }
            })
            .map(|i| i.id.clone())
            .collect();
        if !candidates.is_empty() {
            return Ok(candidates);
        }
        let verb = action.as_str();
        Err(match target {
            Target::Instance(id) => {
                let i = self.instances.get(id);
                match i {
                    Some(i) if action == Action::Pause && self.chaos.is_paused(id, i.generation) => {
                        format!("{id} is paused already")
                    }
                    Some(_) if action == Action::Partition && self.chaos.is_cut(id) => {
                        format!("{id} is cut off already")
                    }
                    Some(i) if action == Action::Partition && i.live_proc().is_some() => {
                        format!(
                            "{id} has no link to the registry (the registry itself, or started before partitions were on)"
                        )
                    }
                    Some(i) => format!("{id} is not running ({}): nothing to {verb}", status_name(i.status())),
                    None => format!("{id} is not running: nothing to {verb}"),
                }
            }
            Target::Service(s) if action == Action::Pause => format!("no running instance of {s} left to pause"),
            Target::Service(s) if action == Action::Partition => {
                format!("no running instance of {s} left to cut off (the registry's own instances have no link)")
            }
            Target::Service(s) => format!("no running instance of {s} to kill"),
        })
    }

    /// One kill or pause of experiment `id`: what it did, or why nothing.
    fn chaos_strike(&mut self, id: u64) -> Result<String, String> {
        let experiment = self.chaos.active.get(&id).ok_or("the experiment has ended")?;
        if experiment.ending {
            return Err("the experiment is ending".into());
        }
        let (action, target, pause) = (experiment.spec.action, experiment.target.clone(), experiment.spec.pause);
        let candidates = self.chaos_candidates(&target, action)?;
        let hit = candidates[random_below(candidates.len())].clone();
        let instance = self.instances.get(&hit).ok_or("the instance is gone")?;
        let proc = instance.live_proc().ok_or("the instance has no process")?;
        let (pid, generation, name) = (proc.pid, instance.generation, instance.name.clone());
        let did = match action {
            Action::Kill => {
                self.spawner.signal(pid, Signal::SIGKILL);
                format!("killed {name} (SIGKILL)")
            }
            Action::Partition => {
                let cut = pause.unwrap_or_default();
                self.links.get(&hit).ok_or("the instance has no link")?.set_cut(true);
                let paused = Paused { instance: hit.clone(), generation, until: Instant::now() + cut, cut: true };
                if let Some(e) = self.chaos.active.get_mut(&id) {
                    e.paused.push(paused);
                }
                format!("cut {name} off from the registry for {}", show(cut))
            }
            _ => {
                let pause = pause.unwrap_or_default();
                self.spawner.signal(pid, Signal::SIGSTOP);
                let paused = Paused { instance: hit.clone(), generation, until: Instant::now() + pause, cut: false };
                if let Some(e) = self.chaos.active.get_mut(&id) {
                    e.paused.push(paused);
                }
                format!("paused {name} for {}", show(pause))
            }
        };
        tracing::info!(experiment = id, instance = %name, pid, "chaos: {did}");
        if let Some(log) = self.logs.get(&name) {
            log.note(&format!("chaos: {did}"));
        }
        self.chaos_event(&target, Some(&name), format!("chaos: {did}"));
        if let Some(e) = self.chaos.active.get_mut(&id) {
            e.injected += 1;
            e.last = Some(did.clone());
        }
        Ok(did)
    }

    /// The experiments' earliest deadline: the loop wakes then at the latest.
    pub(super) fn chaos_deadline(&self) -> Option<Instant> {
        self.chaos.next_deadline()
    }

    /// The loop woke: does what is due of each experiment at `now`: resumes the pauses that
    /// are over, makes a repeat's kill or pause, ends an experiment whose time is up.
    pub(super) fn chaos_due(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .chaos
            .active
            .values()
            .filter(|e| e.next_deadline().is_some_and(|at| at <= now))
            .map(|e| e.id)
            .collect();
        for id in due {
            let Some(e) = self.chaos.active.get_mut(&id) else { continue };
            let due = e.take_due(now);
            let target = e.target.clone();
            for paused in &due.resume {
                self.chaos_continue(&target, paused);
            }
            if due.strike
                && let Err(why) = self.chaos_strike(id)
            {
                tracing::debug!(experiment = id, %why, "chaos: nothing hit this time");
            }
            if due.end {
                self.chaos_expire(id);
            }
        }
    }

    /// Experiment `id`'s time is up: it ends now, or once its balancer faults are removed
    /// (outside the controller).
    fn chaos_expire(&mut self, id: u64) {
        let Ending::Now { faults, client } = self.chaos_ending(id, Why::Expired) else { return };
        if faults.is_empty() {
            self.chaos_ended(id, Why::Expired);
            return;
        }
        let handle = self.chaos_handle();
        tokio::spawn(async move {
            client.delete_all(&faults).await;
            handle.call(move |c| c.chaos_ended(id, Why::Expired)).await;
        });
    }

    /// SIGCONT for a paused process, unless it is gone (liveness or a kill replaced it): a
    /// pid that is no longer that instance's process is never signalled.
    fn chaos_continue(&self, target: &Target, paused: &Paused) {
        let name = paused.instance.to_string();
        if paused.cut {
            // The link is the instance's, whatever its process: healed in any case.
            if let Some(link) = self.links.get(&paused.instance) {
                link.set_cut(false);
            }
            if let Some(log) = self.logs.get(&name) {
                log.note("chaos: link to the registry healed");
            }
            self.chaos_event(target, Some(&name), format!("chaos: healed {name}'s link to the registry"));
            return;
        }
        let live = self.instances.get(&paused.instance).and_then(|i| {
            let proc = i.state.proc()?;
            (i.generation == paused.generation && !proc.exited.is_cancelled()).then_some(proc.pid)
        });
        let message = match live {
            Some(pid) => {
                self.spawner.signal(pid, Signal::SIGCONT);
                if let Some(log) = self.logs.get(&name) {
                    log.note("chaos: resumed");
                }
                format!("chaos: resumed {name}")
            }
            None => format!("chaos: nothing to resume for {name} (the paused process is gone; orch replaced it)"),
        };
        self.chaos_event(target, Some(&name), message);
    }

    /// The balancer instances that route to `service`: running ones, or why there is none.
    fn chaos_balancers(&self, service: &str) -> Result<Vec<Balancer>, CallError> {
        let balancers: Vec<&Service> =
            self.manifest.services.iter().filter(|s| s.component() == Some(Component::Balancer)).collect();
        if balancers.is_empty() {
            return Err(CallError::Invalid("the cluster has no balancer (a service with component: balancer): latency and errors are injected there"
                    .into(),
            ));
        }
        let routing: Vec<&Service> = balancers.iter().copied().filter(|b| self.routes(b).contains(service)).collect();
        if routing.is_empty() {
            let routed: Vec<String> = balancers.iter().flat_map(|b| self.routes(b)).collect();
            return Err(CallError::Invalid(format!(
                "the balancer routes nothing to {service:?} (it routes to {}): add a route to it in the balancer's routes",
                routed.join(", ")
            )));
        }
        let running: Vec<Balancer> = self
            .instances
            .values()
            .filter(|i| routing.iter().any(|b| b.name == i.id.service) && i.ready() && i.live_proc().is_some())
            .map(|i| Balancer {
                id: i.id.clone(),
                generation: i.generation,
                url: format!("http://127.0.0.1:{}", i.slot.port),
            })
            .collect();
        if running.is_empty() {
            return Err(conflict("no balancer instance is running and ready to take the fault".into()));
        }
        Ok(running)
    }

    /// The services a balancer routes to, from its environment as orch gives it.
    fn routes(&self, balancer: &Service) -> std::collections::BTreeSet<String> {
        let from_map = (!balancer.routes.is_empty())
            .then(|| balancer.routes.iter().map(|(prefix, to)| format!("{prefix}={to}")).collect::<Vec<_>>().join(","));
        let raw = balancer
            .env
            .get("ROUTES")
            .or(self.manifest.env.get("ROUTES"))
            .cloned()
            .or(from_map)
            .unwrap_or_else(|| balancer::config::DEFAULT_ROUTES.to_owned());
        balancer::config::Routes::parse(&raw)
            .map(|r| r.services().into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn chaos_start_at_balancer(&mut self, spec: Spec, target: Target) -> Result<Begun, CallError> {
        let Target::Service(service) = &target else {
            let service = target.service();
            return Err(CallError::Invalid(format!(
                "{} acts on a service at the balancer, and {} is an instance: use {service}",
                spec.action.as_str(),
                spec.target
            )));
        };
        let balancers = self.chaos_balancers(service)?;
        let lasts = spec.span.unwrap_or(Duration::from_secs(10));
        let body = spec.fault_body(service, lasts);
        self.chaos.next_id += 1;
        let id = self.chaos.next_id;
        let experiment = Experiment::new(id, spec, target, SystemTime::now(), Some(lasts));
        self.chaos.active.insert(id, experiment);
        Ok(Begun::Faults { id, balancers, body, client: self.balancer_client() })
    }

    /// The balancers' answers to the fault of experiment `id`.
    pub fn chaos_faults_posted(
        &mut self,
        id: u64,
        results: Vec<(Balancer, Result<String, String>)>,
        client: BalancerClient,
    ) -> Result<orch_api::Experiment, CallError> {
        let mut posted = Vec::new();
        let mut failures = Vec::new();
        for (b, result) in results {
            match result {
                Ok(fault) => {
                    posted.push(PostedFault { balancer: b.id, generation: b.generation, url: b.url, id: fault })
                }
                Err(why) => failures.push(format!("{}: {why}", b.id)),
            }
        }
        let live = self.chaos.active.get(&id).is_some_and(|e| !e.ending);
        if !live {
            tokio::spawn(async move { client.delete_all(&posted).await });
            return Err(conflict(format!("chaos experiment {id} was stopped while it started")));
        }
        if posted.is_empty() {
            self.chaos.active.remove(&id);
            tracing::warn!(experiment = id, ?failures, "chaos: no balancer took the fault");
            return Err(CallError::Upstream(format!("the balancer did not take the fault: {}", failures.join("; "))));
        }
        let Some(e) = self.chaos.active.get_mut(&id) else {
            return Err(conflict(format!("chaos experiment {id} was stopped while it started")));
        };
        let effect = e.spec.fault_effect(e.target.service());
        e.injected = posted.len() as u64;
        e.faults = posted;
        e.last = Some(effect.clone());
        let left = e.ends_at.and_then(|t| t.duration_since(SystemTime::now()).ok()).unwrap_or_default();
        e.arm(Instant::now(), None, left);
        let target = e.target.clone();
        let json = e.view();
        let mut message = format!("chaos: {effect}");
        if !failures.is_empty() {
            message.push_str(&format!(" (not at {})", failures.join("; ")));
        }
        self.chaos_event(&target, None, message);
        Ok(json)
    }

    /// A balancer instance became ready: a new process has none of the faults of the
    /// experiments still running, so they are posted to it again (for the time they have left).
    pub(super) fn chaos_balancer_ready(&mut self, balancer: &InstanceId) {
        if self.chaos.active.is_empty() {
            return;
        }
        let Some(service) = self.manifest.service(&balancer.service) else { return };
        if service.component() != Some(Component::Balancer) {
            return;
        }
        let routed = self.routes(service);
        let Some(instance) = self.instances.get(balancer) else { return };
        let this = Balancer {
            id: balancer.clone(),
            generation: instance.generation,
            url: format!("http://127.0.0.1:{}", instance.slot.port),
        };
        let now = SystemTime::now();
        for e in self.chaos.active.values() {
            let has_it = e.faults.iter().any(|f| f.balancer == this.id && f.generation == this.generation);
            // `injected == 0`: its first post is still on its way.
            if e.ending || e.spec.action.on_processes() || e.injected == 0 || has_it {
                continue;
            }
            let service = e.target.service();
            let left = e.ends_at.and_then(|t| t.duration_since(now).ok()).unwrap_or_default();
            if !routed.contains(service) || left < Duration::from_millis(20) {
                continue;
            }
            let body = e.spec.fault_body(service, left);
            let (handle, client, this, id) = (self.chaos_handle(), self.balancer_client(), this.clone(), e.id);
            tokio::spawn(async move {
                let result = client.post(&this.url, &body).await;
                handle.call(move |c| c.chaos_fault_reposted(id, this, result, client)).await;
            });
        }
    }

    fn chaos_fault_reposted(
        &mut self,
        id: u64,
        balancer: Balancer,
        result: Result<String, String>,
        client: BalancerClient,
    ) {
        let live = self.chaos.active.get(&id).is_some_and(|e| !e.ending);
        match result {
            Ok(fault) => {
                let posted = PostedFault {
                    balancer: balancer.id,
                    generation: balancer.generation,
                    url: balancer.url,
                    id: fault,
                };
                if !live {
                    tokio::spawn(async move { client.delete(&posted).await });
                    return;
                }
                let Some(e) = self.chaos.active.get_mut(&id) else { return };
                let effect = e.spec.fault_effect(e.target.service());
                let name = posted.balancer.to_string();
                e.faults.retain(|f| f.balancer != posted.balancer);
                e.faults.push(posted);
                e.injected += 1;
                let target = e.target.clone();
                self.chaos_event(&target, None, format!("chaos: {effect} again at {name} (it restarted)"));
            }
            Err(why) if live => {
                tracing::warn!(experiment = id, balancer = %balancer.id, %why, "chaos: cannot post the fault again");
            }
            Err(_) => {}
        }
    }

    /// Ends experiment `id` on the controller: no more deadlines, and what it paused resumes;
    /// its balancer faults are handed back to be removed.
    pub fn chaos_ending(&mut self, id: u64, why: Why) -> Ending {
        let Some(e) = self.chaos.active.get_mut(&id) else { return Ending::Unknown };
        if e.ending {
            return Ending::Already;
        }
        e.ending = true;
        let paused = std::mem::take(&mut e.paused);
        let faults = e.faults.clone();
        let target = e.target.clone();
        tracing::info!(experiment = id, why = why.as_str(), "chaos experiment ending");
        for p in &paused {
            self.chaos_continue(&target, p);
        }
        Ending::Now { faults, client: self.balancer_client() }
    }

    /// Experiment `id` has ended (its faults are removed): gone from the list.
    pub fn chaos_ended(&mut self, id: u64, why: Why) -> Option<orch_api::Experiment> {
        let e = self.chaos.active.remove(&id)?;
        let n = e.injected;
        let s = if n == 1 { "" } else { "s" };
        self.chaos_event(&e.target, None, format!("chaos experiment {id} ended ({}; {n} injection{s})", why.as_str()));
        Some(e.view())
    }

    /// The experiments' ids.
    pub fn chaos_ids(&self) -> Vec<u64> {
        self.chaos.active.keys().copied().collect()
    }

    /// `GET /api/chaos`.
    pub fn chaos_list(&self) -> orch_api::ExperimentList {
        self.chaos.view()
    }

    /// The cluster stops: every experiment ends now (paused processes are resumed so they
    /// can stop gracefully; the balancer's faults are removed in the background).
    pub(super) fn chaos_shutdown(&mut self) {
        for id in self.chaos_ids() {
            if let Ending::Now { faults, client } = self.chaos_ending(id, Why::Shutdown)
                && !faults.is_empty()
            {
                tokio::spawn(async move { client.delete_all(&faults).await });
            }
            self.chaos_ended(id, Why::Shutdown);
        }
    }
}

fn status_name(status: super::Status) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
