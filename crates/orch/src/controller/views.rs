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
            control_url: self.control_url.clone(),
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
            .filter(|i| i.id.service == s.name && i.id.ordinal <= s.replicas && i.ready && i.phase.is_live())
            .count();
        let (component, command) = match &s.kind {
            Kind::Component(c) => (Some(c.name().to_owned()), None),
            Kind::Command { program, args } => {
                let line = std::iter::once(program.display().to_string()).chain(args.iter().cloned()).collect();
                (None, Some(line))
            }
        };
        ServiceView {
            name: s.name.clone(),
            replicas: s.replicas,
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
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
        InstanceList { instances: list.into_iter().map(Instance::view).collect() }
    }

    /// `GET /api/instances/:name`.
    pub fn instance_view(&self, name: &str) -> Option<InstanceDetail> {
        let instance = self.instances.values().find(|i| i.name == name)?;
        let spec = instance.spec.as_ref().or_else(|| self.manifest.service(&instance.id.service));
        Some(InstanceDetail {
            instance: instance.view(),
            spec: serde_json::to_value(spec).unwrap_or_default(),
            events: self.events.of_instance(name, 20),
        })
    }
}
