//! The export of every shipped manifest: golden files (reviewed in diffs; `UPDATE_GOLDEN=1`
//! rewrites them), the structural checks, and the real Kubernetes schemas of the oldest and
//! newest supported versions through `kubernetes-validate --strict` (installed by
//! `scripts/deps.sh` into `target/k8s-validate`; under CI a missing validator fails). Then
//! what cannot carry over: each refusal and warning.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::manifest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Test-only values: never real secrets in the repository.
fn test_secrets() -> Secrets {
    Secrets { jwt_secret: "test-only-jwt-secret".into(), cluster_token: "test-only-cluster-token".into() }
}

/// Every manifest under `manifests/`, with the options its export is made with.
fn shipped() -> Vec<(&'static str, Options)> {
    let base = || Options { secrets: Some(test_secrets()), ..Options::default() };
    vec![
        (
            "cluster.yaml",
            Options {
                database: Some(Database::Url("postgres://orch:test-only-password@postgres:5432/orch".into())),
                ingress_host: Some("orch.example.com".into()),
                ..base()
            },
        ),
        ("examples/minimal.yaml", base()),
        (
            "examples/ten.yaml",
            Options {
                namespace: Some("ten-prod".into()),
                image: Some("registry.example/orch:1.0".into()),
                database: Some(Database::Secret("ten-database".into())),
                kube_version: Some("1.37".into()),
                ..base()
            },
        ),
        ("examples/custom-command.yaml", Options { image: Some("registry.example/netsim-web:1".into()), ..base() }),
        (
            "examples/autoscale.yaml",
            Options { database: Some(Database::Secret("autoscaled-database".into())), ..base() },
        ),
    ]
}

fn export_of(file: &str, options: &Options) -> Export {
    let manifest = manifest::load(&root().join("manifests").join(file)).unwrap_or_else(|e| panic!("{e}"));
    kubernetes(&manifest, options).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn external(options: &Options) -> check::External {
    let secrets = match &options.database {
        Some(Database::Secret(name)) => vec![name.clone()],
        _ => Vec::new(),
    };
    check::External { any_secret: options.secrets.is_none(), secrets }
}

#[test]
fn every_shipped_manifest_exports_as_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (file, options) in shipped() {
        let text = write::render(&export_of(file, &options).documents);
        let golden = root().join("crates/orch/tests/golden").join(file.replace('/', "-"));
        if update {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            stale.push(golden.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "exports differ from the golden files (UPDATE_GOLDEN=1 rewrites them; review the diff): {stale:?}"
    );
}

#[test]
fn every_shipped_export_passes_the_structural_checks_and_reads_back_the_same() {
    for (file, options) in shipped() {
        let export = export_of(file, &options);
        let objects: Vec<Object> = export.objects().cloned().collect();
        assert_eq!(check::check(&objects, &external(&options)), Vec::<String>::new(), "{file}");
        let text = write::render(&export.documents);
        assert_eq!(write::parse(Path::new(file), &text).unwrap(), objects, "{file}");
    }
}

/// The validator's binary: `KUBERNETES_VALIDATE`, else the venv of `scripts/deps.sh`.
fn validator() -> Option<PathBuf> {
    let path = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/k8s-validate/bin/kubernetes-validate"));
    path.is_file().then_some(path)
}

#[test]
fn every_shipped_export_passes_the_kubernetes_schemas_strictly() {
    let Some(validator) = validator() else {
        assert!(!e2e::under_ci(), "kubernetes-validate is missing (under CI): run scripts/deps.sh");
        eprintln!(
            "\n!!! SKIPPED: kubernetes-validate is missing; run scripts/deps.sh (make deps) to check the export against Kubernetes' schemas !!!\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (file, options) in shipped() {
        let out = dir.path().join(file.replace('/', "-").trim_end_matches(".yaml"));
        files.extend(write::write_dir(&out, &export_of(file, &options)).unwrap());
    }
    let newest = format!("1.{}", KUBE_VERSIONS.end());
    for version in ["1.29", newest.as_str()] {
        let out = Command::new(&validator)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("running kubernetes-validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("ERROR"),
            "kubernetes-validate --strict -k {version} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr).lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    // And it does fail: an unknown field is refused in strict mode.
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&files[3]).unwrap().replace("enableServiceLinks", "enableServiceLinkz");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(&validator).args(["--strict", "--quiet", "-k", "1.29"]).arg(&bad).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enableServiceLinkz"),
        "the validator let an unknown field by"
    );
}

// ---------------------------------------------------------------------------------------
// What cannot carry over
// ---------------------------------------------------------------------------------------

const HEAD: &str = "apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: t }\nspec:\n  services:\n";

fn try_export(services: &str, options: &Options) -> Result<Export, ExportError> {
    let manifest = manifest::parse(Path::new("m.yaml"), &format!("{HEAD}{services}")).unwrap_or_else(|e| panic!("{e}"));
    kubernetes(&manifest, options)
}

fn with_db() -> Options {
    Options {
        database: Some(Database::Url("postgres://db/x".into())),
        secrets: Some(test_secrets()),
        ..Options::default()
    }
}

#[test]
fn sqlite_is_refused_for_the_services_that_store() {
    for component in ["auth", "data", "compute"] {
        let services = format!("    - {{ name: s, component: {component} }}\n");
        let err = try_export(&services, &Options { secrets: Some(test_secrets()), ..Options::default() }).unwrap_err();
        assert!(matches!(err, ExportError::NoDatabase { .. }), "{err}");
        assert!(err.to_string().contains("--database-url"), "{err}");
        assert!(try_export(&services, &with_db()).is_ok());
        let from_secret = Options { database: Some(Database::Secret("db".into())), ..Options::default() };
        assert!(try_export(&services, &from_secret).is_ok());
    }
    let err =
        try_export("    - { name: d, component: data, env: { DATABASE_URL: 'sqlite://x.db' } }\n", &Options::default());
    assert!(matches!(err, Err(ExportError::SecretInEnv { .. })), "{err:?}");
    // Given in spec.env, with the option: replaced where it is used, dropped elsewhere.
    let text = format!(
        "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: t }}\nspec:\n  env: {{ DATABASE_URL: 'sqlite://x.db' }}\n  services:\n{}",
        "    - { name: r, component: registry }\n    - { name: d, component: data }\n"
    );
    let manifest = manifest::parse(Path::new("m.yaml"), &text).unwrap();
    let export = kubernetes(&manifest, &with_db()).unwrap();
    assert_eq!(export.warnings.iter().filter(|w| w.contains("DATABASE_URL from the manifest's env")).count(), 2);
    let rendered = write::render(&export.documents);
    assert!(!rendered.contains("sqlite://x.db"), "{rendered}");
    let err = try_export(
        "    - { name: r, component: registry }\n",
        &Options { database: Some(Database::Url("postgres://x".into())), ..Options::default() },
    );
    assert_eq!(err.unwrap_err(), ExportError::UrlWithoutSecrets);
}

#[test]
fn the_balancers_static_fallback_is_refused() {
    for env in ["AUTH_PORTS: '3001-3003'", "USE_DYNAMIC_DISCOVERY: 'false'"] {
        let services = format!("    - {{ name: b, component: balancer, env: {{ {env} }} }}\n");
        let err = try_export(&services, &with_db()).unwrap_err();
        assert!(matches!(err, ExportError::StaticFallback { .. }), "{err}");
    }
}

#[test]
fn commands_need_an_image_and_meaningful_placeholders() {
    let services = "    - { name: web, command: [sh, -c, 'exec httpd -p {port} -n {name}'] }\n";
    let err = try_export(services, &with_db()).unwrap_err();
    assert_eq!(err, ExportError::NoImage { service: "web".into() });
    let options = Options { image: Some("busybox:1".into()), ..with_db() };
    let export = try_export(services, &options).unwrap();
    let Object::Deployment(d) = &export.documents[3].object else { panic!("{:?}", export.documents[3]) };
    let container = &d.spec.template.spec.containers[0];
    assert_eq!(container.command, ["sh"]);
    assert_eq!(container.args, ["-c", "exec httpd -p 8080 -n $(SERVICE_NAME)"]);
    assert!(export.warnings.iter().any(|w| w.contains("nothing does on Kubernetes")), "{:?}", export.warnings);

    // The manifest's image: is preferred over --image; a component has none.
    let own = "    - { name: web, command: [sh], image: 'registry.example/web:2' }\n";
    for options in [with_db(), options.clone()] {
        let export = try_export(own, &options).unwrap();
        let Object::Deployment(d) = &export.documents[3].object else { panic!() };
        assert_eq!(d.spec.template.spec.containers[0].image, "registry.example/web:2");
    }
    let text = format!("{HEAD}    - {{ name: r, component: registry, image: x }}\n");
    let err = manifest::parse(Path::new("m.yaml"), &text).unwrap_err().to_string();
    assert!(err.contains("image is for command services"), "{err}");
    let text = format!("{HEAD}    - {{ name: web, command: [sh], image: 'a b' }}\n");
    let err = manifest::parse(Path::new("m.yaml"), &text).unwrap_err().to_string();
    assert!(err.contains("invalid image reference"), "{err}");

    let err = try_export("    - { name: web, command: [sh, '{ordinal}'] }\n", &options).unwrap_err();
    assert!(matches!(err, ExportError::Placeholder { placeholder: "{ordinal}", .. }), "{err}");
}

#[test]
fn autoscale_is_a_horizontal_pod_autoscaler_of_the_deployment() {
    let hpa_of = |services: &str| {
        let export = try_export(services, &Options::default()).unwrap();
        let objects: Vec<Object> = export.objects().cloned().collect();
        assert_eq!(
            check::check(&objects, &check::External { any_secret: true, ..Default::default() }),
            Vec::<String>::new()
        );
        let Some((doc, d)) = export.documents.iter().find_map(|doc| match &doc.object {
            Object::Deployment(d) => Some((doc, d)),
            _ => None,
        }) else {
            panic!("no deployment")
        };
        assert_eq!(d.spec.replicas, 2, "the start: min");
        assert!(doc.notes.iter().any(|n| n.contains("the HorizontalPodAutoscaler web scales it within 2-5")));
        let hpa = objects.iter().find_map(|o| match o {
            Object::HorizontalPodAutoscaler(h) => Some(h.clone()),
            _ => None,
        });
        (hpa.expect("an hpa"), export.warnings)
    };
    // cpu of one core, without a cpu request: an average value in millicores; the windows
    // in whole seconds.
    let (hpa, warnings) = hpa_of(
        "    - { name: web, component: detector, autoscale: { min: 2, max: 5, target: { cpuPercent: 70 }, scaleUpWindowMs: 1500 } }\n",
    );
    assert!(warnings.iter().all(|w| !w.contains("autoscale")), "{warnings:?}");
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (2, 5));
    assert_eq!(hpa.spec.scale_target_ref.name, "web");
    let cpu = hpa.spec.metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        (cpu.name.as_str(), cpu.target.kind.as_str(), cpu.target.average_value.as_deref()),
        ("cpu", "AverageValue", Some("700m"))
    );
    let behavior = hpa.spec.behavior.unwrap();
    assert_eq!(
        (behavior.scale_up.stabilization_window_seconds, behavior.scale_down.stabilization_window_seconds),
        (2, 60)
    );
    // With a cpu limit (the request): a utilization of it.
    let (hpa, _) = hpa_of(
        "    - { name: web, component: detector, resources: { cpu: 500m }, autoscale: { min: 2, max: 5, target: { cpuPercent: 70 } } }\n",
    );
    let cpu = hpa.spec.metrics[0].resource.as_ref().unwrap();
    assert_eq!((cpu.target.kind.as_str(), cpu.target.average_utilization), ("Utilization", Some(140)));
    // The balancer's figures: a Pods metric, and a warning that it needs an adapter.
    let (hpa, warnings) = hpa_of(
        "    - { name: web, component: detector, autoscale: { min: 2, max: 5, target: { inFlightPerInstance: 8 } } }\n    - { name: balancer, component: balancer, routes: { /: web } }\n",
    );
    let pods = hpa.spec.metrics[0].pods.as_ref().unwrap();
    assert_eq!(
        (pods.metric.name.as_str(), pods.target.average_value.as_deref()),
        ("http_requests_in_flight", Some("8"))
    );
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "service web: autoscale: the Pods metric http_requests_in_flight needs a custom metrics adapter"
        )),
        "{warnings:?}"
    );
}

#[test]
fn a_horizontal_pod_autoscaler_of_no_deployment_is_a_problem() {
    let services =
        "    - { name: web, component: detector, autoscale: { min: 2, max: 5, target: { cpuPercent: 70 } } }\n";
    let export = try_export(services, &Options::default()).unwrap();
    let mut objects: Vec<Object> = export.objects().cloned().collect();
    for o in &mut objects {
        if let Object::HorizontalPodAutoscaler(h) = o {
            h.spec.scale_target_ref.name = "nothing".into();
            h.spec.min_replicas = 6;
        }
    }
    assert_eq!(
        check::check(&objects, &check::External { any_secret: true, ..Default::default() }),
        [
            "HorizontalPodAutoscaler \"web\": its scaleTargetRef Deployment \"nothing\" is not among the objects",
            "HorizontalPodAutoscaler \"web\": minReplicas 6 must be 1 to maxReplicas 5",
        ]
    );
}

#[test]
fn what_changes_is_warned_and_noted() {
    let services = "    - name: registry
      component: registry
      replicas: 2
      restart: { policy: OnFailure }
      readiness: { path: /ready, periodMs: 1500 }
      gracePeriodMs: 2500
";
    let export = try_export(services, &with_db()).unwrap();
    let warned = |s: &str| assert!(export.warnings.iter().any(|w| w.contains(s)), "{s}: {:?}", export.warnings);
    warned("the registry runs as one replica, not 2");
    warned("restart policy OnFailure becomes Always");
    let doc = &export.documents[3];
    let Object::Deployment(d) = &doc.object else { panic!() };
    assert_eq!(d.spec.replicas, 1);
    assert_eq!(d.spec.strategy.as_ref().unwrap().kind, "Recreate");
    assert_eq!(d.spec.template.spec.termination_grace_period_seconds, Some(3));
    let readiness = d.spec.template.spec.containers[0].readiness_probe.as_ref().unwrap();
    assert_eq!(readiness.period_seconds, 2);
    let noted = |s: &str| assert!(doc.notes.iter().any(|n| n.contains(s)), "{s}: {:?}", doc.notes);
    noted("every 1500 ms");
    noted("rounded up");
    noted("mapped to Always");
}

/// Under orch liveness runs once an instance is ready; on Kubernetes a startup probe (the
/// readiness check, patient) holds liveness back the same way.
#[test]
fn liveness_waits_for_readiness_through_a_startup_probe() {
    let services = "    - { name: registry, component: registry, readiness: { path: /ready, periodMs: 2000 } }\n";
    let export = try_export(services, &with_db()).unwrap();
    let doc = &export.documents[3];
    let Object::Deployment(d) = &doc.object else { panic!() };
    let c = &d.spec.template.spec.containers[0];
    let (readiness, startup) = (c.readiness_probe.as_ref().unwrap(), c.startup_probe.as_ref().unwrap());
    assert!(c.liveness_probe.is_some());
    assert_eq!((startup.http_get.as_ref(), startup.period_seconds), (readiness.http_get.as_ref(), 2));
    assert_eq!(startup.failure_threshold, 150, "300 s at one check every 2 s");
    assert!(doc.notes.iter().any(|n| n.contains("startupProbe")), "{:?}", doc.notes);
    // No liveness probe, nothing to hold back.
    let services = "    - { name: web, command: [sh], liveness: { enabled: false } }\n";
    let export = try_export(services, &Options { image: Some("busybox:1".into()), ..with_db() }).unwrap();
    let Object::Deployment(d) = &export.documents[3].object else { panic!() };
    assert_eq!(d.spec.template.spec.containers[0].startup_probe, None);
}

/// A service's env cannot set again what the export sets for it: the export's value stays.
/// (The manifest's checks refuse these names; the export, a function of any `Manifest`,
/// does not count on it.)
#[test]
fn a_service_env_does_not_repeat_the_exports_variables() {
    let text = format!("{HEAD}    - {{ name: registry, component: registry }}\n");
    let mut manifest = manifest::parse(Path::new("m.yaml"), &text).unwrap();
    for (k, v) in
        [("PORT", "9"), ("SERVICE_TYPE", "x"), ("ORCH_CLUSTER_TOKEN", "t"), ("SERVICE_NAME", "n"), ("OTHER", "o")]
    {
        manifest.services[0].env.insert(k.into(), v.into());
    }
    let export = kubernetes(&manifest, &with_db()).unwrap();
    let Object::Deployment(d) = &export.documents[3].object else { panic!() };
    let env = &d.spec.template.spec.containers[0].env;
    let mut names: Vec<&str> = env.iter().map(|v| v.name.as_str()).collect();
    names.sort();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "{names:?}");
    assert_eq!(env.iter().find(|v| v.name == "PORT").unwrap().value.as_deref(), Some("3005"));
    assert!(env.iter().any(|v| v.name == "OTHER"));
    for var in ["PORT", "SERVICE_TYPE", "ORCH_CLUSTER_TOKEN", "SERVICE_NAME"] {
        let warning = format!("env {var} is replaced");
        assert!(export.warnings.iter().any(|w| w.contains(&warning)), "{var}: {:?}", export.warnings);
    }
}

#[test]
fn bad_options_are_refused() {
    let services = "    - { name: registry, component: registry }\n";
    let check = |options: Options, expected: &str| {
        let err = try_export(services, &options).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    };
    check(Options { namespace: Some("Prod".into()), ..with_db() }, "--namespace \"Prod\"");
    check(Options { ingress_host: Some("http://x".into()), ..with_db() }, "--ingress-host");
    check(Options { ingress_host: Some("orch.example.com".into()), ..with_db() }, "no balancer");
    check(Options { kube_version: Some("1.20".into()), ..with_db() }, "from 1.29 to 1.37");
    check(Options { image: Some("a b".into()), ..with_db() }, "--image");
}

/// The control-plane components bind 0.0.0.0 in a pod, so their guard answers only the
/// names in `ALLOWED_HOSTS`: their pod IP (the kubelet's probes, the detector's checks, the
/// registry's URLs of them) and their Service's names, as the kubelet expands the value.
#[test]
fn the_control_plane_answers_its_pod_ip_and_service_names() {
    let (file, options) = &shipped()[0];
    let export = export_of(file, options);
    let pod_ip = "10.1.2.3";
    let mut guarded = Vec::new();
    for object in export.objects() {
        let Object::Deployment(d) = object else { continue };
        let container = &d.spec.template.spec.containers[0];
        let Some(hosts) = container.env.iter().find(|v| v.name == "ALLOWED_HOSTS") else { continue };
        let hosts = hosts.value.as_deref().unwrap().replace("$(SERVICE_HOST)", pod_ip);
        let vars = kit::Vars::from_pairs([("ALLOWED_HOSTS", hosts.as_str()), ("BIND_ADDR", "0.0.0.0")]);
        let config = kit::Config::from_vars(&vars, "registry").unwrap_or_else(|e| panic!("{e}"));
        let guard = kit::guard::Guard::new(config.bind_addr, &config.allowed_hosts);
        let name = &d.metadata.name;
        for host in [format!("{pod_ip}:3005"), format!("{name}:80"), format!("{name}.netsim.svc.cluster.local")] {
            assert!(guard.allows(&host), "{name} refuses {host}");
        }
        assert!(!guard.allows("10.1.2.4:3005") && !guard.allows("evil.example"), "{name} answers anyone");
        assert_eq!(guard.allows("orch.example.com"), name == "balancer", "only the balancer is behind the Ingress");
        guarded.push(name.as_str().to_owned());
    }
    assert_eq!(guarded, ["registry", "balancer", "detector"]);
}

#[test]
fn resources_become_container_limits() {
    let services =
        "    - name: registry\n      component: registry\n      resources: { memory: 256Mi, cpu: 500m, pids: 64 }\n";
    let export = try_export(services, &with_db()).unwrap();
    let Object::Deployment(d) = &export.documents[3].object else { panic!("{:?}", export.documents[3]) };
    let limits = &d.spec.template.spec.containers[0].resources.as_ref().unwrap().limits;
    assert_eq!(limits.get("memory").map(String::as_str), Some("256Mi"));
    assert_eq!(limits.get("cpu").map(String::as_str), Some("500m"));
    assert!(export.warnings.iter().any(|w| w.contains("pids: 64 dropped")), "{:?}", export.warnings);
}
