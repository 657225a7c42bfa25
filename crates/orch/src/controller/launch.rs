//! Launch: what a process of an instance is started with (program, arguments, environment,
//! socket), as a pure function of the manifest, the instances' slots and the [`Base`] that
//! orch fixed when it started. Nothing here reads the process's environment or the disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kit::secret::Secret;

use super::Slot;
use crate::manifest::{Kind, Manifest};
use crate::reconcile::InstanceId;
use crate::run::Component;
use crate::supervisor::spawn::LaunchSpec;

/// What every process of the cluster starts from, whatever its service: fixed when orch
/// starts.
#[derive(Clone, Debug)]
pub struct Base {
    /// orch's own environment (PATH, HOME, RUST_LOG...) as [`base_env`] filters it.
    pub env: BTreeMap<String, String>,
    /// The registry token: for the registry, the balancer's admin API, and the instances
    /// that register themselves. Never the control token.
    pub token: Secret,
    /// `ORCH_CLUSTER_ID`, the mark of this run's children (see [`crate::state`]).
    pub cluster_id: String,
    pub control_url: String,
    /// `argv[0]` of a component's process: the path of the running orch.
    pub exe: String,
}

/// orch's environment as children inherit it: minus what names orch's own sockets and the
/// tokens a user may have exported for the CLI.
pub fn base_env(vars: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| {
            !k.starts_with("LISTEN_")
                && !["NOTIFY_SOCKET", "ORCH_CONTROL_TOKEN", "ORCH_CLUSTER_TOKEN"].contains(&k.as_str())
        })
        .collect()
}

/// The port of the first instance of the service running `component`, if it has one.
pub fn component_port(m: &Manifest, slots: &BTreeMap<InstanceId, Slot>, component: Component) -> Option<u16> {
    let service = m.component(component)?;
    if service.replicas == 0 {
        return None;
    }
    slots.get(&InstanceId::new(&service.name, 1)).map(|s| s.port)
}

/// How to start a process of instance `id`; `None` if `m` has no such service or `slots`
/// no socket for it.
pub fn launch_spec(
    m: &Manifest,
    slots: &BTreeMap<InstanceId, Slot>,
    id: &InstanceId,
    base: &Base,
) -> Option<LaunchSpec> {
    let service = m.service(&id.service)?;
    let slot = slots.get(id)?;
    let mut env = base.env.clone();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    // Log files are not terminals.
    set("NO_COLOR", "1".into());
    set("SERVICE_NAME", id.to_string());
    set("SERVICE_TYPE", service.name.clone());
    set("PORT", slot.port.to_string());
    set("SERVICE_HOST", "localhost".into());
    match component_port(m, slots, Component::Registry) {
        Some(p) => set("SERVICE_REGISTRY_URL", format!("http://localhost:{p}")),
        None => set("REGISTER", "false".into()),
    }
    if service.registers {
        set("ORCH_CLUSTER_TOKEN", base.token.expose().to_owned());
    }
    set(crate::state::CLUSTER_ID_VAR, base.cluster_id.clone());
    set("ORCH_MANAGED", "1".into());
    set("ORCH_CONTROL_URL", base.control_url.clone());
    set("DATA_DIR", m.data_dir.display().to_string());
    set("DATABASE_URL", format!("sqlite://{}", m.data_dir.join(format!("{}.sqlite", service.name)).display()));
    if let Some(url) = &m.database
        && matches!(service.component(), Some(Component::Auth | Component::Data | Component::Compute))
    {
        set("DATABASE_URL", url.clone());
    }
    set("AUTH_REQUIRED", m.auth_required.to_string());
    if let Some(p) = component_port(m, slots, Component::Balancer) {
        set("LOAD_BALANCER_URL", format!("http://localhost:{p}"));
    }
    if service.component() == Some(Component::Balancer) {
        let routes: Vec<String> = service.routes.iter().map(|(prefix, to)| format!("{prefix}={to}")).collect();
        if !routes.is_empty() {
            set("ROUTES", routes.join(","));
        }
        // The static fallback (while the registry is unreachable, or with discovery off):
        // this cluster's instances of each routed service, never the original system's
        // ports, which may be another cluster's (the balancer has no default under orch).
        let defaults = balancer::Routes::parse(balancer::config::DEFAULT_ROUTES).ok();
        let routed: Vec<&str> = if service.routes.is_empty() {
            defaults.iter().flat_map(balancer::Routes::services).collect()
        } else {
            service.routes.values().map(String::as_str).collect()
        };
        for routed in routed {
            let ports: Vec<String> =
                slots.iter().filter(|(id, _)| id.service == routed).map(|(_, slot)| slot.port.to_string()).collect();
            if !ports.is_empty() {
                set(&balancer::config::ports_var(routed), ports.join(","));
            }
        }
    }
    for (k, v) in m.env.iter().chain(&service.env) {
        env.insert(k.clone(), v.clone());
    }
    let (program, argv0, args) = match &service.kind {
        // The running orch's own image, even if the file was replaced by a rebuild.
        Kind::Component(c) => {
            (PathBuf::from("/proc/self/exe"), base.exe.clone(), vec!["run".to_owned(), c.name().to_owned()])
        }
        Kind::Command { program, args } => {
            let args = args
                .iter()
                .map(|a| {
                    a.replace("{port}", &slot.port.to_string())
                        .replace("{name}", &id.to_string())
                        .replace("{service}", &service.name)
                        .replace("{ordinal}", &id.ordinal.to_string())
                        .replace("{dataDir}", &m.data_dir.display().to_string())
                })
                .collect();
            (program.clone(), program.display().to_string(), args)
        }
    };
    Some(LaunchSpec {
        program,
        argv0,
        args,
        env: env.into_iter().collect(),
        cwd: service.working_dir.clone(),
        socket: slot.socket.clone(),
        cgroups: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn manifest(services: &str) -> Manifest {
        let text = format!(
            "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: test }}\nspec:\n  dataDir: /d\n  env: {{ A: cluster, B: cluster }}\n  services:\n{services}"
        );
        crate::manifest::parse(Path::new("/m.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn slots(m: &Manifest) -> BTreeMap<InstanceId, Slot> {
        let mut slots = BTreeMap::new();
        let mut port = 7000;
        for s in &m.services {
            for n in 1..=s.replicas {
                port += 1;
                slots.insert(InstanceId::new(&s.name, n), Slot { port, socket: None, fixed: false });
            }
        }
        slots
    }

    fn base() -> Base {
        let vars = [("PATH", "/bin"), ("LISTEN_FDS", "1"), ("NOTIFY_SOCKET", "/n"), ("ORCH_CONTROL_TOKEN", "c")];
        Base {
            env: base_env(vars.map(|(k, v)| (k.to_owned(), v.to_owned()))),
            token: Secret::new("registry-token"),
            cluster_id: "cid".into(),
            control_url: "http://127.0.0.1:9".into(),
            exe: "/usr/bin/orch".into(),
        }
    }

    /// What a spec shows: argv0, the arguments, the values of the variables asked for.
    type Shown<'a> = (&'a str, &'a [&'a str], &'a [Option<&'a str>]);

    /// A case: the services, the instance, the variables to show, what is shown.
    type Case<'a> = (&'a str, (&'a str, u32), &'a [&'a str], Shown<'a>);

    /// The spec of `instance` under `services`, as [`Shown`].
    fn check(services: &str, instance: (&str, u32), vars: &[&str], expected: Shown<'_>) {
        let m = manifest(services);
        let id = InstanceId::new(instance.0, instance.1);
        let spec = launch_spec(&m, &slots(&m), &id, &base()).unwrap_or_else(|| panic!("no spec for {id}"));
        let env: BTreeMap<_, _> = spec.env.iter().cloned().collect();
        let got: Vec<Option<&str>> = vars.iter().map(|k| env.get(*k).map(String::as_str)).collect();
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        assert_eq!((spec.argv0.as_str(), args.as_slice(), got.as_slice()), expected, "{id} of:\n{services}");
    }

    #[test]
    fn what_a_process_starts_with() {
        let cluster = "    - { name: reg, component: registry }\n    - { name: lb, component: balancer, routes: { /w: web } }\n    - { name: web, command: [/bin/sh, -c, 'x {port} {name} {service} {ordinal} {dataDir}'], replicas: 2, env: { B: web } }\n    - { name: own, command: [/bin/sh], registers: true }\n";
        let lone = "    - { name: web, command: [/bin/sh] }\n";
        let url = &["SERVICE_REGISTRY_URL", "REGISTER", "LOAD_BALANCER_URL", "ROUTES", "PORT", "SERVICE_NAME"];
        let secrets = &["ORCH_CLUSTER_TOKEN", "ORCH_CONTROL_TOKEN", "LISTEN_FDS", "NOTIFY_SOCKET", "PATH"];
        let more = &["A", "B", "DATABASE_URL", "ORCH_CLUSTER_ID", "ORCH_CONTROL_URL", "DATA_DIR", "NO_COLOR"];
        let registry = Some("http://localhost:7001");
        let balancer = Some("http://localhost:7002");
        let web_args: &[&str] = &["-c", "x 7004 web-2 web 2 /d"];
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            (cluster, ("web", 2), url, ("/bin/sh", web_args, &[registry, None, balancer, None, Some("7004"), Some("web-2")])),
            (cluster, ("lb", 1), url, ("/usr/bin/orch", &["run", "balancer"], &[registry, None, balancer, Some("/w=web"), Some("7002"), Some("lb-1")])),
            (lone, ("web", 1), url, ("/bin/sh", &[], &[None, Some("false"), None, None, Some("7001"), Some("web-1")])),
            (cluster, ("web", 1), secrets, ("/bin/sh", &["-c", "x 7003 web-1 web 1 /d"], &[None, None, None, None, Some("/bin")])),
            (cluster, ("own", 1), secrets, ("/bin/sh", &[], &[Some("registry-token"), None, None, None, Some("/bin")])),
            (cluster, ("web", 1), more, ("/bin/sh", &["-c", "x 7003 web-1 web 1 /d"], &[Some("cluster"), Some("web"), Some("sqlite:///d/web.sqlite"), Some("cid"), Some("http://127.0.0.1:9"), Some("/d"), Some("1")])),
        ];
        for (services, instance, vars, expected) in cases {
            check(services, *instance, vars, *expected);
        }
    }

    /// A balancer's static fallback is its own cluster's instances of each routed service
    /// (the ROUTES given, else auth, data and compute): never left to the original system's
    /// ports, which may be another cluster's. The manifest's `env` still decides.
    #[test]
    fn a_balancer_falls_back_to_its_own_clusters_instances() {
        let routed = "    - { name: reg, component: registry }\n    - { name: lb, component: balancer, routes: { /w: web } }\n    - { name: web, command: [/bin/sh], replicas: 2 }\n    - { name: data, component: data }\n";
        let default = "    - { name: lb, component: balancer }\n    - { name: data, component: data, replicas: 3 }\n";
        let chosen = "    - { name: lb, component: balancer, env: { DATA_PORTS: '4100' } }\n    - { name: data, component: data }\n";
        let vars = &["WEB_PORTS", "DATA_PORTS", "AUTH_PORTS"];
        let orch = "/usr/bin/orch";
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            (routed, ("lb", 1), vars, (orch, &["run", "balancer"], &[Some("7003,7004"), None, None])),
            (default, ("lb", 1), vars, (orch, &["run", "balancer"], &[None, Some("7002,7003,7004"), None])),
            (chosen, ("lb", 1), vars, (orch, &["run", "balancer"], &[None, Some("4100"), None])),
        ];
        for (services, instance, vars, expected) in cases {
            check(services, *instance, vars, *expected);
        }
    }

    #[test]
    fn no_spec_without_a_service_or_a_slot() {
        let m = manifest("    - { name: web, command: [/bin/sh] }\n");
        assert!(launch_spec(&m, &slots(&m), &InstanceId::new("nope", 1), &base()).is_none());
        assert!(launch_spec(&m, &slots(&m), &InstanceId::new("web", 2), &base()).is_none());
        assert!(launch_spec(&m, &BTreeMap::new(), &InstanceId::new("web", 1), &base()).is_none());
    }
}
