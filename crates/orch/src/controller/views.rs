//! What the control API's reads show of the controller's state, as the wire types of
//! [`kit::orch_api`]: the cluster, the instance list, one instance in detail.

use kit::orch_api::{self, InstanceDetail, InstanceList, ServiceView};

use super::{Controller, Instance};
use crate::manifest::{Kind, Service};

impl Controller {
    /// `GET /api/cluster`.
    pub fn cluster_view(&self) -> orch_api::Cluster {
        orch_api::Cluster {
            name: self.manifest.name.clone(),
            manifest: self.manifest.path.clone(),
            data_dir: self.manifest.data_dir.clone(),
            control_url: self.base.control_url.clone(),
            started_at: self.started_at.clone(),
            last_error: self.last_error.clone(),
            stopping: self.shutting_down,
            services: self.manifest.services.iter().map(|s| self.service_view(s)).collect(),
        }
    }

    fn service_view(&self, s: &Service) -> ServiceView {
        let ready = self
            .instances
            .values()
            .filter(|i| i.id.service == s.name && i.id.ordinal <= s.replicas && i.ready())
            .count();
        let (component, command) = match &s.kind {
            Kind::Component(c) => (Some(c.name().to_owned()), None),
            Kind::Command { program, args } => {
                let line = std::iter::once(program.display().to_string()).chain(args.iter().cloned()).collect();
                (None, Some(line))
            }
        };
        let ready = u32::try_from(ready).unwrap_or(u32::MAX);
        ServiceView {
            autoscale: self.autoscale_view(s, ready),
            name: s.name.clone(),
            replicas: s.replicas,
            ready,
            port: s.port,
            component,
            command,
        }
    }

    /// `GET /api/instances`: in manifest order, then by ordinal.
    pub fn instances_view(&self, service: Option<&str>) -> InstanceList {
        let position = |name: &str| self.manifest.services.iter().position(|s| s.name == name).unwrap_or(usize::MAX);
        let mut list: Vec<&Instance> =
            self.instances.values().filter(|i| service.is_none_or(|s| i.id.service == s)).collect();
        list.sort_by_key(|i| (position(&i.id.service), i.id.ordinal));
        InstanceList { instances: list.into_iter().map(|i| self.view_with_usage(i)).collect() }
    }

    /// The contract's Instance, with its usage against its `resources:`.
    fn view_with_usage(&self, instance: &Instance) -> orch_api::Instance {
        orch_api::Instance { usage: self.usage_of(&instance.id), ..instance.view() }
    }

    /// `GET /api/instances/:name`.
    pub fn instance_view(&self, name: &str) -> Option<InstanceDetail> {
        let instance = self.instances.values().find(|i| i.name == name)?;
        let spec = instance.spec.as_ref().or_else(|| self.manifest.service(&instance.id.service));
        Some(InstanceDetail {
            instance: self.view_with_usage(instance),
            spec: serde_json::to_value(spec).unwrap_or_default(),
            events: self.events.of_instance(name, 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use detector::orch::{OrchEvent, OrchInstance, ProcessStatus};
    use kit::orch_api::{EventKind, EventPage, InstanceList, LastExit};
    use serde_json::json;

    use super::*;
    use crate::controller::Slot;
    use crate::controller::instance::{Exit, State};
    use crate::events::EventLog;
    use crate::reconcile::InstanceId;

    /// What orch serves, read as the detector reads it: the contract's field names and
    /// values on the wire, the same values on the other side.
    #[test]
    fn instances_and_events_go_from_orch_to_the_detector() {
        let mut crashing = Instance::new(InstanceId::new("web", 2), Slot { port: 4002, socket: None, fixed: true });
        let exit = Exit { at: std::time::Instant::now(), success: false, planned: false };
        crashing.state = State::Backoff { exit, until: exit.at, crashloop: true };
        crashing.restarts = 5;
        crashing.last_exit = Some(LastExit {
            code: Some(1),
            signal: None,
            at: "2026-01-01T00:00:00.000Z".into(),
            error: None,
            reason: None,
        });
        let running = Instance::new(InstanceId::new("web", 1), Slot { port: 4001, socket: None, fixed: true });
        let list = InstanceList { instances: vec![running.view(), crashing.view()] };
        let wire = serde_json::to_vec(&list).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&wire).unwrap()["instances"][1],
            json!({
                "name": "web-2", "service": "web", "ordinal": 2, "pid": null, "port": 4002,
                "url": "http://localhost:4002", "status": "crashloop", "ready": false, "restarts": 5,
                "startedAt": null, "lastExit": {"code": 1, "signal": null, "at": "2026-01-01T00:00:00.000Z"},
            })
        );
        let read: InstanceList = serde_json::from_slice(&wire).unwrap();
        let read: &[OrchInstance] = &read.instances;
        assert_eq!(read, list.instances);
        assert_eq!(read.iter().map(|i| i.status.is_not_running()).collect::<Vec<_>>(), [false, true]);
        assert!(ProcessStatus::Orch(read[1].status).is_not_running());
        assert_eq!(ProcessStatus::Orch(read[1].status).to_string(), "crashloop");

        let log = EventLog::open(None, 1 << 20).unwrap();
        log.emit(EventKind::Exited, Some("web"), Some("web-2"), "web-2 exited (code 1)");
        log.emit(EventKind::LivenessFailed, Some("web"), Some("web-1"), "web-1 failed its liveness probe");
        let (events, next) = log.since(0, 10);
        let wire = serde_json::to_vec(&EventPage { events: events.clone(), next }).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(
            (&value["events"][0]["type"], &value["events"][1]["type"]),
            (&json!("exited"), &json!("liveness-failed"))
        );
        assert_eq!(value["next"], 2);
        let page: EventPage = serde_json::from_slice(&wire).unwrap();
        let read: &[OrchEvent] = &page.events;
        assert_eq!(read, events);
        let after: Vec<Option<ProcessStatus>> = read.iter().map(|e| ProcessStatus::after(e.kind)).collect();
        assert_eq!(after, [Some(ProcessStatus::Exited), None]);
        assert_eq!(serde_json::to_value(after[0]).unwrap(), "exited", "as the dashboard shows it");
    }
}
