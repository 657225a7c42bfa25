//! The Kubernetes objects the export writes: small serde structs for the kinds it emits
//! (Namespace, ConfigMap, Secret, Deployment, Service, Ingress, HorizontalPodAutoscaler) and only the fields it sets,
//! each optional one skipped when empty so the YAML stays clean. [`Object`] writes
//! `apiVersion` and `kind` first, as Kubernetes' own documents do, and reads a document
//! back by its `kind` (for `--check`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

pub type Labels = BTreeMap<String, String>;

/// `metadata`. The name is empty (and not written) only in a pod template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub metadata: Meta,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigMap {
    pub metadata: Meta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// A Secret. The export writes `stringData`; an edited one may hold base64 `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: Meta,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

impl Secret {
    /// Whether the Secret holds `key` (in `stringData` or `data`).
    pub fn has(&self, key: &str) -> bool {
        self.string_data.contains_key(key) || self.data.contains_key(key)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub metadata: Meta,
    pub spec: DeploymentSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub replicas: u32,
    pub selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u64>,
    pub template: PodTemplate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    pub match_labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// A `RollingUpdate` strategy's budgets (counts; Kubernetes also takes percentages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodTemplate {
    pub metadata: Meta,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// False: no `<SERVICE>_PORT`-style variables injected beside the components' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// A container's `resources`: the manifest's limits, as Kubernetes quantities (requests
/// default to the limits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    pub limits: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes' type is int32; a bad value is kept to be reported, not rejected by serde.
    pub container_port: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<NameRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<NameRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameRef {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

impl EnvVar {
    pub fn value(name: &str, value: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: Some(value.into()), value_from: None }
    }

    /// A value from the downward API: `metadata.name`, `status.podIP`.
    pub fn field(name: &str, path: &str) -> Self {
        let source = EnvSource { field_ref: Some(FieldRef { field_path: path.to_owned() }), ..EnvSource::default() };
        Self { name: name.to_owned(), value: None, value_from: Some(source) }
    }

    /// A value from the key `key` of the Secret `secret`.
    pub fn secret(name: &str, secret: &str, key: &str) -> Self {
        let key_ref = KeyRef { name: secret.to_owned(), key: key.to_owned() };
        let source = EnvSource { secret_key_ref: Some(key_ref), ..EnvSource::default() };
        Self { name: name.to_owned(), value: None, value_from: Some(source) }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

/// A port given by number or by the name of a container port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    pub period_seconds: u64,
    pub timeout_seconds: u64,
    pub failure_threshold: u32,
}

impl Probe {
    /// The port the probe connects to.
    pub fn port(&self) -> Option<&PortRef> {
        self.http_get.as_ref().map(|h| &h.port).or(self.tcp_socket.as_ref().map(|t| &t.port))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpGet {
    pub path: String,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpSocket {
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: Meta,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    pub metadata: Meta,
    pub spec: IngressSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressSpec {
    pub rules: Vec<IngressRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub http: IngressHttp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressHttp {
    pub paths: Vec<IngressPath>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPath {
    pub path: String,
    pub path_type: String,
    pub backend: IngressBackend,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressBackend {
    pub service: BackendService,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendService {
    pub name: String,
    pub port: BackendPort,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
}

/// A HorizontalPodAutoscaler (`autoscaling/v2`) of a Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HorizontalPodAutoscaler {
    pub metadata: Meta,
    pub spec: HpaSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    pub scale_target_ref: ScaleTargetRef,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HpaBehavior>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// One metric: `Resource` (cpu, from the metrics server) or `Pods` (a custom metric, from
/// a metrics adapter).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsMetric>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceMetric {
    pub name: String,
    pub target: MetricTarget,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodsMetric {
    pub metric: MetricName,
    pub target: MetricTarget,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricName {
    pub name: String,
}

/// `Utilization` (percent of the request) or `AverageValue` (a quantity per pod).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaBehavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    pub stabilization_window_seconds: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ScalingPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: u32,
    pub period_seconds: u32,
}

/// One object of any kind the export writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Deployment),
    Service(Service),
    Ingress(Ingress),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
}

/// Why a document could not be read as an [`Object`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a mapping with apiVersion and kind")]
    NotAnObject,
    #[error(
        "kind {0:?} is not one the export writes (Namespace, ConfigMap, Secret, Deployment, Service, Ingress, HorizontalPodAutoscaler)"
    )]
    UnknownKind(String),
    #[error("{kind} has apiVersion {found:?}, expected {expected:?}")]
    ApiVersion { kind: String, found: String, expected: &'static str },
    #[error("{kind}: {source}")]
    Shape { kind: String, source: serde_yaml::Error },
}

impl Object {
    /// `Deployment`, `Service`...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Secret(_) => "Secret",
            Self::Deployment(_) => "Deployment",
            Self::Service(_) => "Service",
            Self::Ingress(_) => "Ingress",
            Self::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
        }
    }

    pub fn api_version(&self) -> &'static str {
        api_version(self.kind()).expect("every kind has an apiVersion")
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Self::Namespace(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::Secret(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Ingress(o) => &o.metadata,
            Self::HorizontalPodAutoscaler(o) => &o.metadata,
        }
    }

    /// Reads one YAML document (already parsed) as an object of a known kind.
    pub fn from_value(value: serde_yaml::Value) -> Result<Self, ReadError> {
        let serde_yaml::Value::Mapping(mut map) = value else { return Err(ReadError::NotAnObject) };
        let text = |v: Option<serde_yaml::Value>| v.and_then(|v| v.as_str().map(str::to_owned));
        let kind = text(map.remove("kind")).ok_or(ReadError::NotAnObject)?;
        let found = text(map.remove("apiVersion")).ok_or(ReadError::NotAnObject)?;
        let expected = api_version(&kind).ok_or_else(|| ReadError::UnknownKind(kind.clone()))?;
        if found != expected {
            return Err(ReadError::ApiVersion { kind, found, expected });
        }
        let value = serde_yaml::Value::Mapping(map);
        let shape = |source| ReadError::Shape { kind: kind.clone(), source };
        Ok(match kind.as_str() {
            "Namespace" => Self::Namespace(serde_yaml::from_value(value).map_err(shape)?),
            "ConfigMap" => Self::ConfigMap(serde_yaml::from_value(value).map_err(shape)?),
            "Secret" => Self::Secret(serde_yaml::from_value(value).map_err(shape)?),
            "Deployment" => Self::Deployment(serde_yaml::from_value(value).map_err(shape)?),
            "Service" => Self::Service(serde_yaml::from_value(value).map_err(shape)?),
            "Ingress" => Self::Ingress(serde_yaml::from_value(value).map_err(shape)?),
            _ => Self::HorizontalPodAutoscaler(serde_yaml::from_value(value).map_err(shape)?),
        })
    }
}

fn api_version(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Namespace" | "ConfigMap" | "Secret" | "Service" => "v1",
        "Deployment" => "apps/v1",
        "Ingress" => "networking.k8s.io/v1",
        "HorizontalPodAutoscaler" => "autoscaling/v2",
        _ => return None,
    })
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Tagged<'a, T> {
            api_version: &'static str,
            kind: &'static str,
            #[serde(flatten)]
            body: &'a T,
        }
        let (api_version, kind) = (self.api_version(), self.kind());
        match self {
            Self::Namespace(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::ConfigMap(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::Secret(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::Deployment(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::Service(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::Ingress(body) => Tagged { api_version, kind, body }.serialize(serializer),
            Self::HorizontalPodAutoscaler(body) => Tagged { api_version, kind, body }.serialize(serializer),
        }
    }
}
