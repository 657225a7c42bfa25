//! `orch export kubernetes`: the same cluster as Kubernetes objects.
//!
//! [`kubernetes`] is a pure function from the checked [`Manifest`] and the [`Options`] to
//! typed objects ([`objects`]): a Namespace, a ConfigMap with the cluster's environment, a
//! Secret, a Deployment and a Service per service, a HorizontalPodAutoscaler per service
//! with `autoscale:` (`hpa`), an optional Ingress to the balancer (`build`). What cannot carry over is refused ([`ExportError`]) or warned about
//! ([`Export::warnings`]), never dropped silently; what changes on the way (probes in whole
//! seconds, `dependsOn`) is said in a comment above the object ([`Document::notes`]).
//! `check` holds the structural checks that every export passes and `--check` runs on
//! edited files; `write` renders the YAML and writes it (a directory, or one stream), and
//! reads it back. Secrets are an input (the CLI draws them at random, tests pass fixed
//! ones), so the function stays deterministic.

mod build;
pub mod check;
mod hpa;
pub mod objects;
pub mod write;

use crate::manifest::Manifest;
pub use build::check_kube_version;
pub use objects::Object;

/// The image every component runs when `--image` is not given.
pub const DEFAULT_IMAGE: &str = "orch:local";
/// The Kubernetes versions the output is validated for (`--kube-version`).
pub const KUBE_VERSIONS: std::ops::RangeInclusive<u32> = 29..=37;

/// What the export is asked for, besides the manifest.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--namespace` (default: the manifest's name).
    pub namespace: Option<String>,
    /// `--image`: what components run (default [`DEFAULT_IMAGE`]) and command services too.
    pub image: Option<String>,
    /// `--database-url` or `--database-secret`: what auth, data and compute share.
    pub database: Option<Database>,
    /// `--ingress-host`: an Ingress routes this host's `/` to the balancer.
    pub ingress_host: Option<String>,
    /// `--kube-version 1.N` (default 1.29).
    pub kube_version: Option<String>,
    /// The values of the Secret; `None` (`--no-secrets`) leaves the Secret to the user.
    pub secrets: Option<Secrets>,
}

/// The values of the Secret the export writes.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub jwt_secret: String,
    pub cluster_token: String,
}

impl Secrets {
    /// New random values (32 random bytes each, hex).
    pub fn random() -> Self {
        Self { jwt_secret: kit::secret::random_hex(32), cluster_token: kit::secret::random_hex(32) }
    }
}

/// The database of auth, data and compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// `--database-url`: written into the export's Secret as `DATABASE_URL`.
    Url(String),
    /// `--database-secret NAME`: the key `DATABASE_URL` of a Secret the user made.
    Secret(String),
}

/// An object and the comments written above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub notes: Vec<String>,
    pub object: Object,
}

/// What [`kubernetes`] makes of a manifest.
#[derive(Clone, Debug)]
pub struct Export {
    pub documents: Vec<Document>,
    /// What carries over changed or not at all: printed to stderr by the CLI.
    pub warnings: Vec<String>,
}

impl Export {
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.documents.iter().map(|d| &d.object)
    }
}

/// What cannot carry over to Kubernetes, or options that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error(
        "service {service} ({component}) would keep its data in SQLite, and pods do not share a file: give --database-url postgres://... or --database-secret NAME"
    )]
    NoDatabase { service: String, component: &'static str },
    #[error("service {service} sets {var} in its env: a secret does not belong in a Deployment; {fix}")]
    SecretInEnv { service: String, var: String, fix: &'static str },
    #[error(
        "service {service} runs a command and names no image: give it `image: IMAGE` in the manifest, or give --image IMAGE (an image that holds the command)"
    )]
    NoImage { service: String },
    #[error(
        "service {service} sets {var}: the balancer's static fallback points at localhost, which in a pod is the pod itself; remove it (discovery goes through the registry)"
    )]
    StaticFallback { service: String, var: String },
    #[error("service {service} uses {placeholder} in its arguments, which has no meaning in a Deployment: {why}")]
    Placeholder { service: String, placeholder: &'static str, why: &'static str },
    #[error(
        "--database-url with --no-secrets: the URL would not be written; make a Secret and give --database-secret NAME"
    )]
    UrlWithoutSecrets,
    #[error("--ingress-host {0}: the manifest has no balancer to route to")]
    IngressWithoutBalancer(String),
    #[error("{option} {value:?}: {expected}")]
    Option { option: &'static str, value: String, expected: String },
}

/// The Kubernetes objects of `manifest`, with the warnings of what changed on the way.
pub fn kubernetes(manifest: &Manifest, options: &Options) -> Result<Export, ExportError> {
    build::build(manifest, options)
}

#[cfg(test)]
mod tests;
