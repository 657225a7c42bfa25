//! Each structural check fails on an export broken in its one way, and passes the export.

use std::path::Path;

use super::*;
use crate::export::{self, Database, Options, Secrets};

const MANIFEST: &str = "apiVersion: orch/v1
kind: Cluster
metadata: { name: test }
spec:
  services:
    - { name: registry, component: registry, port: 3005 }
    - { name: auth, component: auth, replicas: 2, port: 3001, dependsOn: [registry] }
    - { name: balancer, component: balancer, port: 3000, routes: { /api/auth: auth } }
";

fn objects() -> Vec<Object> {
    let manifest = crate::manifest::parse(Path::new("m.yaml"), MANIFEST).unwrap();
    let options = Options {
        database: Some(Database::Url("postgres://db/x".into())),
        ingress_host: Some("orch.example.com".into()),
        secrets: Some(Secrets { jwt_secret: "j".into(), cluster_token: "t".into() }),
        ..Options::default()
    };
    export::kubernetes(&manifest, &options).unwrap().objects().cloned().collect()
}

fn deployment<'a>(objects: &'a mut [Object], name: &str) -> &'a mut Deployment {
    objects
        .iter_mut()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name == name => Some(d),
            _ => None,
        })
        .unwrap()
}

fn service<'a>(objects: &'a mut [Object], name: &str) -> &'a mut Service {
    objects
        .iter_mut()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name == name => Some(s),
            _ => None,
        })
        .unwrap()
}

/// `objects()` broken by `breaks` has exactly one problem, and it contains `expected`.
fn fails(breaks: impl FnOnce(&mut Vec<Object>), expected: &str) {
    let mut objects = objects();
    breaks(&mut objects);
    let problems = check(&objects, &External::default());
    assert!(
        problems.len() == 1 && problems[0].contains(expected),
        "expected one problem with {expected:?}, got {problems:#?}"
    );
}

#[test]
fn an_export_passes() {
    assert_eq!(check(&objects(), &External::default()), Vec::<String>::new());
}

#[test]
fn names_must_be_dns_1123() {
    fails(
        |o| deployment(o, "auth").metadata.name = "Auth_1".into(),
        "Deployment \"Auth_1\": the name is not a valid DNS-1123",
    );
    fails(|o| service(o, "auth").metadata.name = "1auth".into(), "Service \"1auth\": the name is not a valid");
    fails(
        |o| deployment(o, "auth").spec.template.spec.containers[0].name = "a.b".into(),
        "container name \"a.b\" is not a DNS label",
    );
}

#[test]
fn kind_and_name_are_unique() {
    fails(
        |o| {
            let copy = Object::Service(service(o, "auth").clone());
            o.push(copy);
        },
        "Service \"auth\": another object has the same kind and name",
    );
}

#[test]
fn selectors_match_pod_labels() {
    fails(
        |o| {
            let labels = &mut deployment(o, "auth").spec.selector.match_labels;
            labels.insert("app.kubernetes.io/name".into(), "other".into());
        },
        "Deployment \"auth\": the selector does not match the pod template's labels",
    );
    fails(
        |o| {
            let selector = &mut service(o, "registry").spec.selector;
            selector.insert("app.kubernetes.io/name".into(), "nothing".into());
        },
        "Service \"registry\": its selector matches the pod labels of no Deployment",
    );
}

#[test]
fn probe_and_target_ports_exist() {
    fails(
        |o| {
            let probe = deployment(o, "auth").spec.template.spec.containers[0].liveness_probe.as_mut().unwrap();
            probe.http_get.as_mut().unwrap().port = PortRef::Name("admin".into());
        },
        "the liveness probe's port \"admin\" is no port of container \"auth\"",
    );
    fails(
        |o| service(o, "auth").spec.ports[0].target_port = Some(PortRef::Number(9999)),
        "targetPort 9999 is no port of Deployment \"auth\"",
    );
    fails(
        |o| {
            for obj in o.iter_mut() {
                if let Object::Ingress(i) = obj {
                    i.spec.rules[0].http.paths[0].backend.service.port.name = Some("web".into());
                }
            }
        },
        "its backend port is not a port of Service \"balancer\"",
    );
}

#[test]
fn a_container_sets_each_variable_once() {
    fails(
        |o| {
            let env = &mut deployment(o, "auth").spec.template.spec.containers[0].env;
            env.push(env[0].clone());
        },
        "Deployment \"auth\": env SERVICE_NAME is set twice in container \"auth\"",
    );
}

#[test]
fn config_map_and_secret_references_resolve() {
    fails(
        |o| {
            let from = &mut deployment(o, "auth").spec.template.spec.containers[0].env_from[0];
            from.config_map_ref.as_mut().unwrap().name = "other-env".into();
        },
        "Deployment \"auth\": envFrom names ConfigMap \"other-env\", which is not among the objects",
    );
    // Three Deployments refer to the Secret: registry, auth and balancer get the token.
    let mut broken = objects();
    broken.retain(|obj| !matches!(obj, Object::Secret(_)));
    let problems = check(&broken, &External::default());
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(problems.iter().all(|p| p.contains("of Secret \"test-secrets\", which is not among the objects")));
    assert!(check(&broken, &External { any_secret: true, secrets: vec![] }).is_empty());

    fails(
        |o| {
            for obj in o.iter_mut() {
                if let Object::Secret(s) = obj {
                    s.string_data.remove("DATABASE_URL");
                }
            }
        },
        "env DATABASE_URL refers to key DATABASE_URL of Secret \"test-secrets\"",
    );
}

#[test]
fn ports_are_in_range() {
    fails(|o| service(o, "auth").spec.ports[0].port = 70000, "Service \"auth\": port 70000 is out of range");
    fails(
        |o| {
            let ports = &mut deployment(o, "auth").spec.template.spec.containers[0].ports;
            ports.push(ContainerPort { name: None, container_port: 0 });
        },
        "container port 0 is out of range",
    );
}

#[test]
fn namespaces_and_labels() {
    fails(
        |o| {
            for obj in o.iter_mut() {
                if let Object::ConfigMap(c) = obj {
                    c.metadata.namespace = Some("elsewhere".into());
                }
            }
        },
        "ConfigMap \"test-env\": namespace \"elsewhere\" is not among the objects",
    );
    fails(
        |o| {
            deployment(o, "auth").metadata.labels.insert("team".into(), "a b".into());
        },
        "label team has an invalid value \"a b\"",
    );
}

#[test]
fn dns_names() {
    for ok in ["a", "auth-1", "0x", &"a".repeat(63)] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
        assert!(!is_dns_label(bad), "{bad}");
    }
    assert!(is_dns_subdomain("orch.example.com"));
    assert!(!is_dns_subdomain("orch..example.com"));
    assert!(!is_dns_subdomain("orch.example.com:80"));
}
