//! One service checked and filled in: its kind (component or command, the program found),
//! replicas and ports, env, who registers, and the defaults of probes and restarts, which
//! differ by kind.

use std::path::PathBuf;

use super::check::Checker;
use super::quantity::{self, Resources, Unit};
use super::raw::{CommandLine, Int, RawProbe, RawResources, RawService};
use super::rules::{component_names, find_program, normalize, valid_name};
use super::{Check, Kind, MAX_REPLICAS, NodePath, Probe, Restart, RestartPolicy, Service, closest};
use crate::run::Component;

/// Less than this and a process is killed before it runs.
const MIN_MEMORY: u64 = 4 << 20;
const MAX_CPU_MILLIS: u64 = 1_000_000;

impl Checker {
    pub(super) fn service(&mut self, at: NodePath, raw: RawService) -> Service {
        let name = raw.name;
        if !valid_name(&name, 40) {
            self.problem(
                at.key("name"),
                format!("invalid service name {name:?}"),
                "use 1 to 40 lowercase letters, digits and dashes, starting with a letter",
            );
        }
        let working_dir = match &raw.working_dir {
            Some(dir) => {
                let dir = normalize(&self.base.join(dir));
                if !dir.is_dir() {
                    self.problem(
                        at.key("workingDir"),
                        format!("workingDir {} is not a directory", dir.display()),
                        "point it at an existing directory (relative to the manifest file)",
                    );
                }
                dir
            }
            None => self.base.clone(),
        };
        let kind = match (raw.component, raw.command) {
            (Some(_), Some(_)) => {
                self.problem(
                    at.key("command"),
                    format!("service {name:?} has both component and command"),
                    "keep one of them",
                );
                Kind::Component(Component::Registry)
            }
            (None, None) => {
                self.problem(
                    at.clone(),
                    format!("service {name:?} has neither component nor command"),
                    format!("add `component: <{}>` or `command: [program, args...]`", component_names()),
                );
                Kind::Component(Component::Registry)
            }
            (Some(component), None) => {
                if raw.args.is_some() {
                    self.problem(at.key("args"), "args are for command services", "remove args");
                }
                match Component::from_name(&component) {
                    Some(c) => Kind::Component(c),
                    None => {
                        let fix = match closest(&component, Component::ALL.iter().map(|c| c.name())) {
                            Some(best) => format!("did you mean {best:?}? (components: {})", component_names()),
                            None => format!("use one of {}, or `command:` for any program", component_names()),
                        };
                        self.problem(at.key("component"), format!("unknown component {component:?}"), fix);
                        Kind::Component(Component::Registry)
                    }
                }
            }
            (None, Some(CommandLine(line))) => {
                let mut line = line.into_iter();
                let program = line.next().unwrap_or_default();
                let mut args: Vec<String> = line.collect();
                if let Some(extra) = raw.args {
                    if !args.is_empty() {
                        self.problem(
                            at.key("args"),
                            "arguments are given both in command and in args",
                            "put them in one place",
                        );
                    }
                    args.extend(extra);
                }
                let program = if program.trim().is_empty() {
                    self.problem(
                        at.key("command"),
                        "the command is empty",
                        "name a program: command: [program, args...]",
                    );
                    PathBuf::new()
                } else {
                    match find_program(&program, &self.base) {
                        Ok(p) => p,
                        Err(why) => {
                            self.problem(
                                at.key("command"),
                                why,
                                "install it, or give its path (relative to the manifest file)",
                            );
                            PathBuf::new()
                        }
                    }
                };
                if args.iter().any(|a| a.contains('\0')) {
                    self.problem(at.key("args"), "an argument contains a NUL byte", "remove it");
                }
                Kind::Command { program, args }
            }
        };
        let is_component = matches!(kind, Kind::Component(_));
        let image = match raw.image {
            Some(_) if is_component => {
                let why = "image is for command services (components run the orch image: --image of the export)";
                self.problem(at.key("image"), why, "remove image");
                None
            }
            Some(i) if i.is_empty() || i.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                self.problem(
                    at.key("image"),
                    format!("invalid image reference {i:?}"),
                    "an image reference like registry.example/web:1",
                );
                None
            }
            image => image,
        };

        let autoscale = raw.autoscale.map(|a| self.autoscale(at.key("autoscale"), a));
        let start = autoscale.as_ref().map_or(1, |a| a.min.into());
        let replicas = self.range(at.key("replicas"), "replicas", raw.replicas, start, 0, MAX_REPLICAS.into()) as u32;
        if let Some(a) = &autoscale {
            self.autoscale_start(at.key("replicas"), a, replicas);
        }
        let port = match raw.port {
            None => None,
            Some(Int(0)) => {
                self.problem(at.key("port"), "port 0 is not a port", "omit port for automatic ports");
                None
            }
            some => Some(self.range(at.key("port"), "port", some, 1, 1, 65535) as u16),
        };
        if let Some(p) = port {
            let last = u32::from(p) + replicas.max(1) - 1;
            if last > 65535 {
                self.problem(
                    at.key("port"),
                    format!("{replicas} instances from port {p} go past port 65535"),
                    "choose a lower port or fewer replicas",
                );
            }
        }
        let env = self.env(at.key("env"), raw.env);

        let socket_activation = raw.socket_activation.unwrap_or(is_component);
        let register = match raw.register {
            Some(true) if is_component => {
                self.problem(at.key("register"), "components register themselves", "remove register");
                false
            }
            Some(true) if raw.registers == Some(true) => {
                self.problem(
                    at.key("register"),
                    "register (orch registers the instances) and registers (they register themselves) are both true",
                    "keep one of them",
                );
                false
            }
            Some(r) => r,
            None => !is_component && raw.registers != Some(true),
        };
        let registers = match raw.registers {
            Some(_) if is_component => {
                self.problem(
                    at.key("registers"),
                    "components register themselves and always get the registry token",
                    "remove registers",
                );
                true
            }
            Some(r) => r,
            None => is_component,
        };
        // Readiness: every 200 ms until ready (20 ms in the first moments, see
        // `supervisor::probe`) and after a failure; every 2 s while ready.
        let readiness_of =
            |check| Probe { check, period_ms: 200, steady_period_ms: 2000, timeout_ms: 1000, failure_threshold: 3 };
        let readiness_default = if is_component {
            readiness_of(Check::Http("/ready".into()))
        } else if socket_activation {
            readiness_of(Check::None)
        } else {
            readiness_of(Check::Tcp)
        };
        // Liveness: while well, a probe once a second without any other answer (a readiness
        // answer counts, see `supervisor::probe`); after a failure, back to back. A hung
        // process is killed 1.6-2.6 s after it stops answering (four checks time out).
        let liveness_of =
            |check| Probe { check, period_ms: 400, steady_period_ms: 1000, timeout_ms: 400, failure_threshold: 4 };
        let liveness_default =
            if is_component { liveness_of(Check::Http("/health".into())) } else { liveness_of(Check::None) };
        let readiness = self.probe(at.key("readiness"), raw.readiness, readiness_default, socket_activation);
        let liveness = self.probe(at.key("liveness"), raw.liveness, liveness_default, socket_activation);

        let rr = raw.restart.unwrap_or_default();
        let rp = at.key("restart");
        let backoff_initial_ms =
            self.range(rp.key("backoffInitialMs"), "backoffInitialMs", rr.backoff_initial_ms, 100, 1, 600_000) as u64;
        let backoff_max_ms =
            self.range(rp.key("backoffMaxMs"), "backoffMaxMs", rr.backoff_max_ms, 30_000, 1, 3_600_000) as u64;
        if backoff_max_ms < backoff_initial_ms {
            self.problem(
                rp.key("backoffMaxMs"),
                format!("backoffMaxMs ({backoff_max_ms}) is below backoffInitialMs ({backoff_initial_ms})"),
                "make backoffMaxMs at least backoffInitialMs",
            );
        }
        let reset_after_ms =
            self.range(rp.key("resetAfterMs"), "resetAfterMs", rr.reset_after_ms, 10_000, 1, 86_400_000) as u64;
        let restart = Restart {
            policy: rr.policy.unwrap_or(RestartPolicy::Always),
            backoff_initial_ms,
            backoff_max_ms,
            reset_after_ms,
        };
        let grace_period_ms =
            self.range(at.key("gracePeriodMs"), "gracePeriodMs", raw.grace_period_ms, 5_000, 0, 600_000) as u64;

        let resources = self.resources(at.key("resources"), raw.resources);
        let routes = raw.routes.unwrap_or_default();
        if !routes.is_empty() && kind != Kind::Component(Component::Balancer) {
            self.problem(at.key("routes"), "routes are for balancer services", "move routes to the balancer service");
        }
        let mut depends_on: Vec<String> = Vec::new();
        for dep in raw.depends_on {
            if !depends_on.contains(&dep) {
                depends_on.push(dep);
            }
        }

        let rollout = self.rollout(at.key("rollout"), raw.rollout, port.is_some());
        Service {
            name,
            kind,
            image,
            replicas,
            port,
            env,
            depends_on,
            readiness,
            liveness,
            restart,
            grace_period_ms,
            routes,
            socket_activation,
            register,
            registers,
            working_dir,
            autoscale,
            resources,
            rollout,
        }
    }

    /// `resources: { memory: 256Mi, cpu: 500m, pids: 256 }`, each optional.
    fn resources(&mut self, at: NodePath, raw: Option<RawResources>) -> Resources {
        let Some(raw) = raw else { return Resources::default() };
        let memory = raw.memory.and_then(|text| {
            let fix = "write it as Kubernetes does: 256Mi, 1Gi, 512M";
            self.quantity(at.key("memory"), "memory", &text.0, Unit::Bytes, (MIN_MEMORY, "4Mi"), (u64::MAX, ""), fix)
        });
        let cpu = raw.cpu.and_then(|text| {
            let fix = "write it as Kubernetes does: 500m (half a core), 2";
            self.quantity(at.key("cpu"), "cpu", &text.0, Unit::Millicores, (1, "1m"), (MAX_CPU_MILLIS, "1000"), fix)
        });
        let pids = raw.pids.map(|_| self.range(at.key("pids"), "pids", raw.pids, 1, 1, 4_194_304) as u64);
        Resources { memory, cpu, pids }
    }

    /// One quantity of `resources:` within `min..=max` (each with its text), else a problem.
    #[allow(clippy::too_many_arguments)]
    fn quantity(
        &mut self,
        at: NodePath,
        what: &str,
        text: &str,
        unit: Unit,
        (min, min_text): (u64, &str),
        (max, max_text): (u64, &str),
        fix: &str,
    ) -> Option<u64> {
        match quantity::parse(text, unit) {
            Ok(v) if v < min => {
                self.problem(
                    at,
                    format!("{what} {text} is below {min_text}"),
                    format!("give at least {what}: {min_text}"),
                );
                None
            }
            Ok(v) if v > max => {
                self.problem(
                    at,
                    format!("{what} {text} is above {max_text}"),
                    format!("give at most {what}: {max_text}"),
                );
                None
            }
            Ok(v) => Some(v),
            Err(why) => {
                self.problem(at, format!("{what}: {why}"), fix);
                None
            }
        }
    }

    fn probe(&mut self, at: NodePath, raw: Option<RawProbe>, default: Probe, socket_activation: bool) -> Probe {
        let Some(raw) = raw else { return default };
        let check = match (raw.enabled, raw.path, raw.tcp) {
            (Some(false), _, _) => Check::None,
            (_, Some(_), Some(true)) => {
                self.problem(at.key("tcp"), "a probe has both path and tcp", "keep one of them");
                Check::None
            }
            (_, Some(path), _) => {
                if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
                    self.problem(
                        at.key("path"),
                        format!("probe path {path:?} is not a URL path"),
                        "write it like /ready",
                    );
                }
                Check::Http(path)
            }
            (_, None, Some(true)) => {
                if socket_activation {
                    self.problem(
                        at.key("tcp"),
                        "a tcp probe of a socket-activated service always succeeds (orch holds the socket)",
                        "probe a path instead: path: /health",
                    );
                }
                Check::Tcp
            }
            (_, None, _) if default.check == Check::None => {
                if socket_activation {
                    Check::None
                } else {
                    Check::Tcp
                }
            }
            (_, None, _) => default.check,
        };
        let period_ms =
            self.range(at.key("periodMs"), "periodMs", raw.period_ms, default.period_ms.into(), 10, 3_600_000) as u64;
        let default_timeout = if raw.period_ms.is_some() {
            (period_ms * 4 / 5).clamp(10, default.timeout_ms)
        } else {
            default.timeout_ms
        };
        let timeout_ms =
            self.range(at.key("timeoutMs"), "timeoutMs", raw.timeout_ms, default_timeout.into(), 1, 600_000) as u64;
        let failure_threshold = self.range(
            at.key("failureThreshold"),
            "failureThreshold",
            raw.failure_threshold,
            default.failure_threshold.into(),
            1,
            1000,
        ) as u32;
        // A period the manifest sets is the period, all the time.
        let steady_period_ms = if raw.period_ms.is_some() { period_ms } else { default.steady_period_ms };
        Probe { check, period_ms, steady_period_ms, timeout_ms, failure_threshold }
    }
}
