//! The manifest turned into objects: how each service and the cluster's settings map onto
//! Kubernetes, mirroring what orch sets when it launches an instance
//! (`controller::launch_spec`): the environment becomes a ConfigMap (shared) and each
//! container's `env` (its own: the downward API gives `SERVICE_NAME` from the pod name and
//! `SERVICE_HOST` from the pod IP), the tokens and the database URL come from a Secret.

use std::collections::BTreeMap;

use super::objects::*;
use super::{Database, Document, Export, ExportError, KUBE_VERSIONS, Options, hpa};
use crate::export::check::{is_dns_label, is_dns_subdomain};
use crate::manifest::{self, Check, Kind, Manifest, RestartPolicy};
use crate::run::Component;

/// Settings the export owns on Kubernetes: a manifest's own value is replaced (warned).
const OWNED_ENV: &[&str] =
    &["BIND_ADDR", "SERVICE_HOST", "SERVICE_REGISTRY_URL", "LOAD_BALANCER_URL", "ALLOWED_HOSTS", "DATA_DIR", "ROUTES"];
/// The port a service without one listens on in its pods (each pod has its own address).
const COMMAND_PORT: u16 = 8080;

struct Ctx<'a> {
    manifest: &'a Manifest,
    options: &'a Options,
    namespace: String,
    config_map: String,
    secret: String,
    warnings: Vec<String>,
}

pub fn build(manifest: &Manifest, options: &Options) -> Result<Export, ExportError> {
    let namespace = options.namespace.clone().unwrap_or_else(|| manifest.name.clone());
    check_options(manifest, options, &namespace)?;
    let mut ctx = Ctx {
        manifest,
        options,
        config_map: format!("{}-env", manifest.name),
        secret: format!("{}-secrets", manifest.name),
        namespace,
        warnings: Vec::new(),
    };
    let version = options.kube_version.as_deref().unwrap_or("1.29");
    let mut documents = vec![Document {
        notes: vec![
            format!("orch export kubernetes of the cluster {:?}, for Kubernetes {version} and later", manifest.name),
            "stable APIs only: v1, apps/v1, networking.k8s.io/v1, autoscaling/v2".into(),
        ],
        object: Object::Namespace(Namespace { metadata: Meta { name: ctx.namespace.clone(), ..Meta::default() } }),
    }];
    documents.push(ctx.config_map_doc());
    if let Some(secret) = ctx.secret_doc() {
        documents.push(secret);
    }
    for service in &manifest.services {
        let (deployment, svc) = ctx.service(service)?;
        documents.push(deployment);
        documents.push(svc);
        if let Some(a) = &service.autoscale {
            let mut labels = ctx.cluster_labels();
            labels.insert("app.kubernetes.io/name".into(), service.name.clone());
            let (hpa, warnings) = hpa::document(ctx.meta(&service.name, labels), service, a);
            documents.push(hpa);
            ctx.warnings.extend(warnings);
        }
    }
    if let Some(host) = &options.ingress_host {
        documents.push(ctx.ingress(host)?);
    }
    Ok(Export { documents, warnings: ctx.warnings })
}

fn check_options(manifest: &Manifest, options: &Options, namespace: &str) -> Result<(), ExportError> {
    let bad = |option, value: &str, expected: &str| ExportError::Option {
        option,
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    if !is_dns_label(namespace) {
        return Err(bad("--namespace", namespace, "a DNS label: lowercase letters, digits and '-', at most 63"));
    }
    if let Some(image) = &options.image
        && (image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(bad("--image", image, "an image reference like registry.example/orch:1.0"));
    }
    if let Some(host) = &options.ingress_host {
        let name = host.strip_prefix("*.").unwrap_or(host);
        if !is_dns_subdomain(name) {
            return Err(bad("--ingress-host", host, "a host name like orch.example.com (no scheme or port)"));
        }
        if manifest.component(Component::Balancer).is_none() {
            return Err(ExportError::IngressWithoutBalancer(host.clone()));
        }
    }
    if let Some(v) = &options.kube_version {
        check_kube_version(v)?;
    }
    match &options.database {
        Some(Database::Url(url)) if options.secrets.is_none() => {
            let _ = url;
            return Err(ExportError::UrlWithoutSecrets);
        }
        Some(Database::Url(url)) if !url.contains("://") => {
            return Err(bad("--database-url", "(hidden)", "a URL like postgres://user:password@host/db"));
        }
        Some(Database::Secret(name)) if !is_dns_subdomain(name) => {
            return Err(bad("--database-secret", name, "the name of a Secret (a DNS name)"));
        }
        _ => {}
    }
    Ok(())
}

/// `1.N` (or `1.N.P`) with N among [`KUBE_VERSIONS`].
pub fn check_kube_version(v: &str) -> Result<(), ExportError> {
    let minor = v.strip_prefix("1.").and_then(|m| m.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if minor.is_some_and(|m| KUBE_VERSIONS.contains(&m)) {
        return Ok(());
    }
    Err(ExportError::Option {
        option: "--kube-version",
        value: v.to_owned(),
        expected: format!("a version from 1.{} to 1.{}", KUBE_VERSIONS.start(), KUBE_VERSIONS.end()),
    })
}

impl Ctx<'_> {
    fn meta(&self, name: &str, labels: Labels) -> Meta {
        Meta { name: name.to_owned(), namespace: Some(self.namespace.clone()), labels, ..Meta::default() }
    }

    fn cluster_labels(&self) -> Labels {
        Labels::from([
            ("app.kubernetes.io/part-of".into(), self.manifest.name.clone()),
            ("app.kubernetes.io/managed-by".into(), "orch".into()),
        ])
    }

    /// The URL a service is reached at inside the namespace.
    fn url_of(&self, component: Component) -> Option<String> {
        let service = self.manifest.component(component).filter(|s| s.replicas > 0)?;
        Some(format!("http://{}:{}", service.name, port_of(service)))
    }

    fn config_map_doc(&mut self) -> Document {
        let m = self.manifest;
        let mut data = BTreeMap::new();
        for (k, v) in &m.env {
            if OWNED_ENV.contains(&k.as_str()) {
                self.warnings.push(format!("spec.env {k} is replaced on Kubernetes (the export sets it)"));
            } else if k != "DATABASE_URL" && k != "JWT_SECRET" {
                data.insert(k.clone(), v.clone());
            }
        }
        data.insert("AUTH_REQUIRED".into(), m.auth_required.to_string());
        data.insert("BIND_ADDR".into(), "0.0.0.0".into());
        data.insert("DATA_DIR".into(), "/tmp".into());
        data.insert("NO_COLOR".into(), "1".into());
        match self.url_of(Component::Registry) {
            Some(url) => data.insert("SERVICE_REGISTRY_URL".into(), url),
            None => data.insert("REGISTER".into(), "false".into()),
        };
        if let Some(url) = self.url_of(Component::Balancer) {
            data.insert("LOAD_BALANCER_URL".into(), url);
        }
        let object = ConfigMap { metadata: self.meta(&self.config_map, self.cluster_labels()), data };
        Document {
            notes: vec![
                "the cluster's env, given to every container; what differs per service is in its Deployment".into(),
            ],
            object: Object::ConfigMap(object),
        }
    }

    fn secret_doc(&self) -> Option<Document> {
        let secrets = self.options.secrets.as_ref()?;
        let mut data = BTreeMap::from([
            ("JWT_SECRET".to_owned(), secrets.jwt_secret.clone()),
            ("ORCH_CLUSTER_TOKEN".to_owned(), secrets.cluster_token.clone()),
        ]);
        if let Some(Database::Url(url)) = &self.options.database {
            data.insert("DATABASE_URL".into(), url.clone());
        }
        let object = Secret {
            metadata: self.meta(&self.secret, self.cluster_labels()),
            kind: Some("Opaque".into()),
            string_data: data,
            data: BTreeMap::new(),
        };
        Some(Document {
            notes: vec!["generated once by orch export; keep this file private (it is written 0600)".into()],
            object: Object::Secret(object),
        })
    }

    fn service(&mut self, service: &manifest::Service) -> Result<(Document, Document), ExportError> {
        let name = service.name.as_str();
        let port = port_of(service);
        let component = service.component();
        let role = component.map_or("command", Component::name);
        let selector = Labels::from([
            ("app.kubernetes.io/name".into(), name.to_owned()),
            ("app.kubernetes.io/instance".into(), self.manifest.name.clone()),
        ]);
        let mut labels = selector.clone();
        labels.insert("app.kubernetes.io/component".into(), role.into());
        labels.insert("app.kubernetes.io/part-of".into(), self.manifest.name.clone());
        let mut object_labels = labels.clone();
        object_labels.insert("app.kubernetes.io/managed-by".into(), "orch".into());

        let mut notes = Vec::new();
        let (image, command, args) = self.program(service, port)?;
        let env = self.env(service, port)?;
        let readiness = self.probe(service, "readiness", &service.readiness, &mut notes);
        let liveness = self.probe(service, "liveness", &service.liveness, &mut notes);
        let startup = startup_probe(readiness.as_ref(), liveness.as_ref(), &mut notes);
        if service.restart.policy != RestartPolicy::Always {
            self.warnings.push(format!(
                "service {name}: restart policy {:?} becomes Always (a Deployment restarts every container that exits)",
                service.restart.policy
            ));
            notes.push(format!(
                "restart policy {:?} mapped to Always (the only one a Deployment allows)",
                service.restart.policy
            ));
        }
        if !service.depends_on.is_empty() {
            notes.push(format!(
                "dependsOn [{}] dropped: the services wait for their dependencies to be ready themselves",
                service.depends_on.join(", ")
            ));
        }
        if let Some(a) = &service.autoscale {
            notes.push(format!(
                "replicas {} is the start: the HorizontalPodAutoscaler {name} scales it within {}-{}",
                service.replicas, a.min, a.max
            ));
        }
        let mut replicas = service.replicas;
        let mut strategy = None;
        if component == Some(Component::Registry) {
            if replicas > 1 {
                self.warnings.push(format!("service {name}: the registry runs as one replica, not {replicas}"));
            }
            replicas = replicas.min(1);
            strategy = Some(Strategy { kind: "Recreate".into(), rolling_update: None });
            notes.push("one replica, Recreate: the registry's state is in memory and refills from heartbeats".into());
        }
        let rollout = &service.rollout;
        let strategy = strategy.or_else(|| {
            let budgets = RollingUpdate { max_surge: rollout.max_surge, max_unavailable: rollout.max_unavailable };
            Some(Strategy { kind: "RollingUpdate".into(), rolling_update: Some(budgets) })
        });
        let progress_deadline_seconds = rollout.progress_deadline_ms.div_ceil(1000);
        if rollout.auto_rollback {
            notes.push(
                "autoRollback: Kubernetes marks a rollout past progressDeadlineSeconds failed, it does not roll it back (kubectl rollout undo)"
                    .into(),
            );
        }
        let grace = service.grace_period_ms.div_ceil(1000);
        if service.grace_period_ms % 1000 != 0 {
            notes.push(format!("gracePeriodMs {} rounded up to {grace} s", service.grace_period_ms));
        }
        let container = Container {
            name: name.to_owned(),
            image,
            command,
            args,
            ports: vec![ContainerPort { name: Some("http".into()), container_port: port.into() }],
            env_from: vec![EnvFrom {
                config_map_ref: Some(NameRef { name: self.config_map.clone() }),
                secret_ref: None,
            }],
            env,
            readiness_probe: readiness,
            liveness_probe: liveness,
            resources: self.resources(service, &mut notes),
            startup_probe: startup,
        };
        let deployment = Deployment {
            metadata: self.meta(name, object_labels.clone()),
            spec: DeploymentSpec {
                replicas,
                selector: Selector { match_labels: selector.clone() },
                strategy,
                progress_deadline_seconds: Some(progress_deadline_seconds),
                template: PodTemplate {
                    metadata: Meta { labels, ..Meta::default() },
                    spec: PodSpec {
                        enable_service_links: Some(false),
                        termination_grace_period_seconds: Some(grace),
                        containers: vec![container],
                    },
                },
            },
        };
        let svc = Service {
            metadata: self.meta(name, object_labels),
            spec: ServiceSpec {
                kind: Some("ClusterIP".into()),
                selector,
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: port.into(),
                    target_port: Some(PortRef::Name("http".into())),
                }],
            },
        };
        let svc_notes = match component {
            Some(Component::Detector) => {
                let ns = &self.namespace;
                vec![format!(
                    "the dashboard: kubectl -n {ns} port-forward service/{name} {port}, then http://localhost:{port}"
                )]
            }
            _ => Vec::new(),
        };
        Ok((
            Document { notes, object: Object::Deployment(deployment) },
            Document { notes: svc_notes, object: Object::Service(svc) },
        ))
    }

    /// The image, command and arguments of a service's container.
    fn program(
        &mut self,
        service: &manifest::Service,
        port: u16,
    ) -> Result<(String, Vec<String>, Vec<String>), ExportError> {
        let name = &service.name;
        match &service.kind {
            Kind::Component(c) => {
                let image = self.options.image.clone().unwrap_or_else(|| super::DEFAULT_IMAGE.to_owned());
                Ok((image, Vec::new(), vec!["run".into(), c.name().into()]))
            }
            Kind::Command { program, args } => {
                let image = (service.image.clone())
                    .or_else(|| self.options.image.clone())
                    .ok_or_else(|| ExportError::NoImage { service: name.clone() })?;
                let file = program
                    .file_name()
                    .map_or_else(|| program.display().to_string(), |f| f.to_string_lossy().into_owned());
                self.warnings.push(format!("service {name}: the image {image} must have {file} on its PATH"));
                if service.socket_activation {
                    self.warnings.push(format!(
                        "service {name}: no socket is handed over on Kubernetes: the command must bind PORT itself"
                    ));
                }
                if service.working_dir != self.manifest.path.parent().unwrap_or(&service.working_dir) {
                    self.warnings.push(format!(
                        "service {name}: workingDir {} is not carried over: the container starts in the image's directory",
                        service.working_dir.display()
                    ));
                }
                if service.register && !service.registers {
                    self.warnings.push(format!(
                        "service {name}: orch registers it in the registry, which nothing does on Kubernetes: routes to it find no instance unless it registers itself (registers: true)"
                    ));
                }
                let mut out = Vec::new();
                for arg in args {
                    for (placeholder, why) in
                        [("{ordinal}", "pods of a Deployment have no ordinal"), ("{dataDir}", "pods share no data dir")]
                    {
                        if arg.contains(placeholder) {
                            return Err(ExportError::Placeholder { service: name.clone(), placeholder, why });
                        }
                    }
                    if arg.contains("127.0.0.1") || arg.contains("localhost") {
                        self.warnings.push(format!(
                            "service {name}: the argument {arg:?} names the loopback address, which in a pod only the pod itself reaches"
                        ));
                    }
                    out.push(
                        literal(arg)
                            .replace("{port}", &port.to_string())
                            .replace("{name}", "$(SERVICE_NAME)")
                            .replace("{service}", name),
                    );
                }
                Ok((image, vec![literal(&file)], out))
            }
        }
    }

    /// A container's own variables, after the ConfigMap's (they win over it).
    fn env(&mut self, service: &manifest::Service, port: u16) -> Result<Vec<EnvVar>, ExportError> {
        let name = service.name.as_str();
        let component = service.component();
        let mut env = vec![
            EnvVar::field("SERVICE_NAME", "metadata.name"),
            EnvVar::field("SERVICE_HOST", "status.podIP"),
            EnvVar::value("SERVICE_TYPE", name),
            EnvVar::value("PORT", port.to_string()),
        ];
        if matches!(component, Some(Component::Registry | Component::Balancer | Component::Detector)) {
            // The guard answers the pod IP (kubelet's probes, the detector's checks) and the
            // Service's names, besides loopback (kubectl port-forward).
            let ns = &self.namespace;
            let mut hosts = vec![
                "$(SERVICE_HOST)".to_owned(),
                name.to_owned(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ];
            if component == Some(Component::Balancer)
                && let Some(host) = &self.options.ingress_host
            {
                hosts.push(host.clone());
            }
            env.push(EnvVar::value("ALLOWED_HOSTS", hosts.join(",")));
        }
        if component == Some(Component::Balancer) && !service.routes.is_empty() {
            let routes: Vec<String> = service.routes.iter().map(|(prefix, to)| format!("{prefix}={to}")).collect();
            env.push(EnvVar::value("ROUTES", literal(&routes.join(","))));
        }
        let stores = matches!(component, Some(Component::Auth | Component::Data | Component::Compute));
        let merged: BTreeMap<&String, &String> = self.manifest.env.iter().chain(&service.env).collect();
        if merged.contains_key(&"JWT_SECRET".to_owned()) {
            let fix = "the export's Secret holds it (or yours, with --no-secrets)";
            return Err(ExportError::SecretInEnv { service: name.into(), var: "JWT_SECRET".into(), fix });
        }
        if merged.contains_key(&"DATABASE_URL".to_owned()) {
            if self.options.database.is_none() {
                let fix = "give it with --database-url or --database-secret";
                return Err(ExportError::SecretInEnv { service: name.into(), var: "DATABASE_URL".into(), fix });
            }
            let used = if stores { "replaced by the database option" } else { "dropped (it uses no database)" };
            self.warnings.push(format!("service {name}: DATABASE_URL from the manifest's env is {used}"));
        }
        if component == Some(Component::Balancer) {
            for var in merged.keys() {
                let dynamic_off = *var == "USE_DYNAMIC_DISCOVERY" && merged[var].trim() == "false";
                if var.ends_with("_PORTS") || dynamic_off {
                    return Err(ExportError::StaticFallback { service: name.into(), var: (*var).clone() });
                }
            }
        }
        if service.registers {
            env.push(EnvVar::secret("ORCH_CLUSTER_TOKEN", &self.secret, "ORCH_CLUSTER_TOKEN"));
        }
        if stores {
            env.push(EnvVar::secret("JWT_SECRET", &self.secret, "JWT_SECRET"));
            let secret = match &self.options.database {
                Some(Database::Url(_)) => self.secret.clone(),
                Some(Database::Secret(s)) => s.clone(),
                None => {
                    let component = component.map_or("command", Component::name);
                    return Err(ExportError::NoDatabase { service: name.into(), component });
                }
            };
            if let Some(Database::Url(url)) = &self.options.database
                && url.starts_with("sqlite:")
            {
                self.warnings.push(format!(
                    "service {name}: a SQLite database is shared only by pods on one node that mount the same file"
                ));
            }
            env.push(EnvVar::secret("DATABASE_URL", &secret, "DATABASE_URL"));
        }
        for (k, v) in &service.env {
            if OWNED_ENV.contains(&k.as_str()) || env.iter().any(|e| e.name == *k) {
                self.warnings.push(format!("service {name}: env {k} is replaced on Kubernetes (the export sets it)"));
            } else if k != "DATABASE_URL" {
                env.push(EnvVar::value(k, literal(v)));
            }
        }
        Ok(env)
    }

    fn probe(
        &mut self,
        service: &manifest::Service,
        which: &str,
        probe: &manifest::Probe,
        notes: &mut Vec<String>,
    ) -> Option<Probe> {
        let port = PortRef::Name("http".into());
        let (http_get, tcp_socket) = match &probe.check {
            Check::Http(path) => (Some(HttpGet { path: path.clone(), port }), None),
            Check::Tcp => (None, Some(TcpSocket { port })),
            Check::None => return None,
        };
        let (period, timeout) = (probe.period_ms.div_ceil(1000).max(1), probe.timeout_ms.div_ceil(1000).max(1));
        if probe.period_ms % 1000 != 0 || probe.timeout_ms % 1000 != 0 {
            notes.push(format!(
                "{which}: every {} ms with a {} ms timeout becomes {period} s and {timeout} s (Kubernetes counts whole seconds: rounded up)",
                probe.period_ms, probe.timeout_ms
            ));
        }
        if probe.period_ms < 1000 || probe.timeout_ms < 1000 {
            self.warnings.push(format!(
                "service {}: the {which} probe (every {} ms, timeout {} ms) runs every {period} s with a {timeout} s timeout: Kubernetes has no sub-second probes",
                service.name, probe.period_ms, probe.timeout_ms
            ));
        }
        Some(Probe {
            http_get,
            tcp_socket,
            period_seconds: period,
            timeout_seconds: timeout,
            failure_threshold: probe.failure_threshold,
        })
    }

    fn ingress(&self, host: &str) -> Result<Document, ExportError> {
        let balancer = self
            .manifest
            .component(Component::Balancer)
            .ok_or_else(|| ExportError::IngressWithoutBalancer(host.to_owned()))?;
        let path = IngressPath {
            path: "/".into(),
            path_type: "Prefix".into(),
            backend: IngressBackend {
                service: BackendService {
                    name: balancer.name.clone(),
                    port: BackendPort { name: Some("http".into()), number: None },
                },
            },
        };
        let object = Ingress {
            metadata: self.meta(&balancer.name, self.cluster_labels()),
            spec: IngressSpec {
                rules: vec![IngressRule { host: Some(host.to_owned()), http: IngressHttp { paths: vec![path] } }],
            },
        };
        Ok(Document { notes: vec![format!("{host}/ to the balancer")], object: Object::Ingress(object) })
    }
}

/// How long a container may take to become ready before its startup probe gives up.
const STARTUP_SECONDS: u64 = 300;

/// orch runs the liveness probe only once an instance is ready; Kubernetes runs it from the
/// container's start, unless a startup probe is given: then liveness waits for it to pass.
/// So the readiness check, allowed [`STARTUP_SECONDS`] to pass, guards the liveness probe.
fn startup_probe(readiness: Option<&Probe>, liveness: Option<&Probe>, notes: &mut Vec<String>) -> Option<Probe> {
    let (readiness, _) = (readiness?, liveness?);
    let failure_threshold = STARTUP_SECONDS.div_ceil(readiness.period_seconds).max(readiness.failure_threshold.into());
    let failure_threshold = u32::try_from(failure_threshold).unwrap_or(u32::MAX);
    notes.push(format!(
        "startupProbe: the readiness check, for up to {} s, so that liveness starts only once the pod is ready (as under orch)",
        u64::from(failure_threshold) * readiness.period_seconds
    ));
    Some(Probe { failure_threshold, ..readiness.clone() })
}

/// The port a service's pods listen on: the manifest's, else the component's usual one.
pub fn port_of(service: &manifest::Service) -> u16 {
    service.port.unwrap_or(match service.component() {
        Some(Component::Registry) => 3005,
        Some(Component::Balancer) => 3000,
        Some(Component::Detector) => 3004,
        Some(Component::Auth) => 3001,
        Some(Component::Data) => 4002,
        Some(Component::Compute) => 5002,
        None => COMMAND_PORT,
    })
}

/// `text` with Kubernetes' `$(VAR)` references escaped, so it reaches the process as written.
fn literal(text: &str) -> String {
    text.replace("$(", "$$(")
}

impl Ctx<'_> {
    /// `resources:` as the container's limits; pids has no per-container field in Kubernetes.
    fn resources(&mut self, service: &manifest::Service, notes: &mut Vec<String>) -> Option<ResourceRequirements> {
        let r = service.resources;
        if let Some(pids) = r.pids {
            self.warnings.push(format!(
                "service {}: pids: {pids} dropped: Kubernetes limits pids per pod on the node (kubelet's podPidsLimit), not per container",
                service.name
            ));
        }
        let mut limits = BTreeMap::new();
        if let Some(bytes) = r.memory {
            limits.insert("memory".to_owned(), manifest::quantity::format_memory(bytes));
        }
        if let Some(millis) = r.cpu {
            limits.insert("cpu".to_owned(), manifest::quantity::format_cpu(millis));
        }
        if limits.is_empty() {
            return None;
        }
        notes.push("resources: limits as in the manifest; requests default to them".into());
        Some(ResourceRequirements { limits })
    }
}
