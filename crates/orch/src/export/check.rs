//! Structural checks of a set of Kubernetes objects, the ones a schema cannot make: names
//! are DNS-1123, each kind+name is unique, every Service selects a Deployment's pods, every
//! Deployment's selector matches its own pod labels, probe and target ports exist, every
//! ConfigMap and Secret reference resolves, ports are in range, no container sets a
//! variable twice, every HorizontalPodAutoscaler scales a Deployment among the objects
//! (within a sane range, and on cpu utilization only with a cpu request). Every export passes them
//! (a test holds it), and `orch export kubernetes --check` runs them on edited files.

use std::collections::{BTreeMap, BTreeSet};

use super::objects::*;

/// Secrets that may be referenced without being among the objects: the user's.
#[derive(Clone, Debug, Default)]
pub struct External {
    /// `--no-secrets`: every Secret is the user's.
    pub any_secret: bool,
    /// `--database-secret NAME`.
    pub secrets: Vec<String>,
}

/// The problems of `objects`, each a sentence naming the object; empty when none.
pub fn check(objects: &[Object], external: &External) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let namespaces = named(objects, |o| if let Object::Namespace(n) = o { Some(n) } else { None });
    let config_maps = named(objects, |o| if let Object::ConfigMap(c) = o { Some(c) } else { None });
    let secrets = named(objects, |o| if let Object::Secret(s) = o { Some(s) } else { None });
    let services = named(objects, |o| if let Object::Service(s) = o { Some(s) } else { None });
    let deployments: Vec<&Deployment> =
        objects.iter().filter_map(|o| if let Object::Deployment(d) = o { Some(d) } else { None }).collect();

    for object in objects {
        let meta = object.meta();
        let what = format!("{} {:?}", object.kind(), meta.name);
        let mut problem = |p: String| problems.push(format!("{what}: {p}"));
        let name_ok = match object {
            Object::Namespace(_) => is_dns_label(&meta.name),
            Object::Service(_) => is_dns_label(&meta.name) && meta.name.starts_with(|c: char| c.is_ascii_lowercase()),
            _ => is_dns_subdomain(&meta.name),
        };
        if !name_ok {
            problem("the name is not a valid DNS-1123 name".into());
        }
        if !seen.insert((object.kind(), meta.namespace.clone(), meta.name.clone())) {
            problem("another object has the same kind and name".into());
        }
        match (&meta.namespace, object) {
            (_, Object::Namespace(_)) => {}
            (None, _) => problem("no metadata.namespace".into()),
            (Some(ns), _) if !namespaces.is_empty() && !namespaces.contains_key(ns.as_str()) => {
                problem(format!("namespace {ns:?} is not among the objects"))
            }
            _ => {}
        }
        for (key, value) in &meta.labels {
            if !is_label_value(value) {
                problem(format!("label {key} has an invalid value {value:?}"));
            }
        }
        match object {
            Object::Deployment(d) => {
                deployment(d, &config_maps, &secrets, external, &mut problem);
            }
            Object::Service(s) => {
                if s.spec.selector.is_empty() {
                    problem("the selector is empty".into());
                }
                let selected: Vec<&&Deployment> = deployments
                    .iter()
                    .filter(|d| {
                        d.metadata.namespace == meta.namespace
                            && matches(&s.spec.selector, &d.spec.template.metadata.labels)
                    })
                    .collect();
                if selected.is_empty() {
                    problem("its selector matches the pod labels of no Deployment".into());
                }
                for port in &s.spec.ports {
                    if !in_range(port.port) {
                        problem(format!("port {} is out of range", port.port));
                    }
                    let target = port.target_port.clone().unwrap_or(PortRef::Number(port.port));
                    for d in &selected {
                        if !d.spec.template.spec.containers.iter().any(|c| has_port(c, &target)) {
                            problem(format!(
                                "targetPort {} is no port of Deployment {:?}",
                                show(&target),
                                d.metadata.name
                            ));
                        }
                    }
                }
            }
            Object::HorizontalPodAutoscaler(h) => {
                let target = &h.spec.scale_target_ref;
                let found = deployments
                    .iter()
                    .find(|d| d.metadata.name == target.name && d.metadata.namespace == meta.namespace);
                if target.kind != "Deployment" || target.api_version != "apps/v1" || found.is_none() {
                    problem(format!("its scaleTargetRef {} {:?} is not among the objects", target.kind, target.name));
                }
                if h.spec.min_replicas < 1 || h.spec.min_replicas > h.spec.max_replicas {
                    problem(format!(
                        "minReplicas {} must be 1 to maxReplicas {}",
                        h.spec.min_replicas, h.spec.max_replicas
                    ));
                }
                if h.spec.metrics.is_empty() {
                    problem("it has no metrics".into());
                }
                let utilization =
                    h.spec.metrics.iter().filter_map(|m| m.resource.as_ref()).any(|r| r.target.kind == "Utilization");
                let requests = |d: &&Deployment| {
                    d.spec
                        .template
                        .spec
                        .containers
                        .iter()
                        .all(|c| c.resources.as_ref().is_some_and(|r| r.limits.contains_key("cpu")))
                };
                if utilization && found.is_some_and(|d| !requests(d)) {
                    problem("a cpu Utilization target needs a cpu request on every container".into());
                }
            }
            Object::Ingress(i) => {
                for path in i.spec.rules.iter().flat_map(|r| &r.http.paths) {
                    let backend = &path.backend.service;
                    let Some(s) = services.get(backend.name.as_str()) else {
                        problem(format!("its backend Service {:?} is not among the objects", backend.name));
                        continue;
                    };
                    let found = s.spec.ports.iter().any(|p| match (&backend.port.name, backend.port.number) {
                        (Some(name), None) => p.name.as_deref() == Some(name),
                        (None, Some(number)) => p.port == number,
                        _ => false,
                    });
                    if !found {
                        problem(format!("its backend port is not a port of Service {:?}", backend.name));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

fn deployment(
    d: &Deployment,
    config_maps: &BTreeMap<&str, &ConfigMap>,
    secrets: &BTreeMap<&str, &Secret>,
    external: &External,
    problem: &mut impl FnMut(String),
) {
    let spec = &d.spec;
    if spec.selector.match_labels.is_empty() {
        problem("the selector is empty".into());
    } else if !matches(&spec.selector.match_labels, &spec.template.metadata.labels) {
        problem("the selector does not match the pod template's labels".into());
    }
    if spec.template.spec.containers.is_empty() {
        problem("the pod has no container".into());
    }
    let secret_resolves = |name: &str, key: Option<&str>| {
        if external.any_secret || external.secrets.iter().any(|s| s == name) {
            return true;
        }
        secrets.get(name).is_some_and(|s| key.is_none_or(|k| s.has(k)))
    };
    let config_map_resolves = |name: &str, key: Option<&str>| {
        config_maps.get(name).is_some_and(|c| key.is_none_or(|k| c.data.contains_key(k)))
    };
    for c in &spec.template.spec.containers {
        if !is_dns_label(&c.name) {
            problem(format!("container name {:?} is not a DNS label", c.name));
        }
        let mut names = BTreeSet::new();
        for port in &c.ports {
            if !in_range(port.container_port) {
                problem(format!("container port {} is out of range", port.container_port));
            }
            if let Some(name) = &port.name
                && (!is_port_name(name) || !names.insert(name))
            {
                problem(format!("container port name {name:?} is invalid or repeated"));
            }
        }
        for (which, probe) in
            [("readiness", &c.readiness_probe), ("liveness", &c.liveness_probe), ("startup", &c.startup_probe)]
        {
            let Some(probe) = probe else { continue };
            match probe.port() {
                None => problem(format!("the {which} probe has no httpGet or tcpSocket")),
                Some(port) if !has_port(c, port) => {
                    problem(format!("the {which} probe's port {} is no port of container {:?}", show(port), c.name))
                }
                Some(_) => {}
            }
            if probe.period_seconds == 0 || probe.timeout_seconds == 0 || probe.failure_threshold == 0 {
                problem(format!("the {which} probe's period, timeout and failure threshold must be at least 1"));
            }
        }
        for from in &c.env_from {
            if let Some(r) = &from.config_map_ref
                && !config_map_resolves(&r.name, None)
            {
                problem(format!("envFrom names ConfigMap {:?}, which is not among the objects", r.name));
            }
            if let Some(r) = &from.secret_ref
                && !secret_resolves(&r.name, None)
            {
                problem(format!("envFrom names Secret {:?}, which is not among the objects", r.name));
            }
        }
        let mut env_names = BTreeSet::new();
        for var in &c.env {
            if !env_names.insert(var.name.as_str()) {
                problem(format!("env {} is set twice in container {:?}", var.name, c.name));
            }
            let Some(source) = &var.value_from else { continue };
            if let Some(r) = &source.secret_key_ref
                && !secret_resolves(&r.name, Some(&r.key))
            {
                problem(format!(
                    "env {} refers to key {} of Secret {:?}, which is not among the objects",
                    var.name, r.key, r.name
                ));
            }
            if let Some(r) = &source.config_map_key_ref
                && !config_map_resolves(&r.name, Some(&r.key))
            {
                problem(format!(
                    "env {} refers to key {} of ConfigMap {:?}, which is not among the objects",
                    var.name, r.key, r.name
                ));
            }
        }
    }
}

/// The objects `pick` takes, by name.
fn named<'a, T>(objects: &'a [Object], pick: impl Fn(&'a Object) -> Option<&'a T>) -> BTreeMap<&'a str, &'a T> {
    objects.iter().filter_map(|o| pick(o).map(|t| (o.meta().name.as_str(), t))).collect()
}

/// Whether every label of `selector` is among `labels`.
fn matches(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn has_port(c: &Container, port: &PortRef) -> bool {
    c.ports.iter().any(|p| match port {
        PortRef::Number(n) => p.container_port == *n,
        PortRef::Name(name) => p.name.as_deref() == Some(name),
    })
}

fn show(port: &PortRef) -> String {
    match port {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(name) => format!("{name:?}"),
    }
}

fn in_range(port: i64) -> bool {
    (1..=65535).contains(&port)
}

/// A DNS-1123 label: 1-63 lowercase letters, digits and '-', alphanumeric at both ends.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// An IANA service name (a named port): 1-15 of [a-z0-9-], a letter among them, no "--".
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && is_dns_label(name)
        && !name.contains("--")
        && name.bytes().any(|b| b.is_ascii_lowercase())
}

/// A label value: empty, or up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.is_empty()
        || (bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
