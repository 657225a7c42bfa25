//! The raw document: serde types that mirror the YAML as written (`deny_unknown_fields`,
//! every field optional where the manifest may omit it), and the scalar readers (`Int`,
//! `EnvValue`, `CommandLine`) that keep range and type errors precise. No defaults here.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::RestartPolicy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a manifest: apiVersion, kind, metadata and spec")]
pub(super) struct RawManifest {
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) metadata: RawMetadata,
    pub(super) spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "metadata: a mapping with a name")]
pub(super) struct RawMetadata {
    pub(super) name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a spec: a mapping with services (and dataDir, controlPort, auth, env, logMaxBytes, database)")]
pub(super) struct RawSpec {
    pub(super) data_dir: Option<String>,
    pub(super) database: Option<String>,
    pub(super) control_port: Option<Int>,
    pub(super) auth: Option<RawAuth>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, EnvValue>,
    pub(super) log_max_bytes: Option<Int>,
    pub(super) services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "auth: a mapping with required: true or false")]
pub(super) struct RawAuth {
    pub(super) required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a service: a mapping with a name and a component or a command")]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) component: Option<String>,
    pub(super) command: Option<CommandLine>,
    pub(super) args: Option<Vec<String>>,
    pub(super) image: Option<String>,
    pub(super) replicas: Option<Int>,
    pub(super) port: Option<Int>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, EnvValue>,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
    pub(super) readiness: Option<RawProbe>,
    pub(super) liveness: Option<RawProbe>,
    pub(super) restart: Option<RawRestart>,
    pub(super) grace_period_ms: Option<Int>,
    pub(super) routes: Option<BTreeMap<String, String>>,
    pub(super) socket_activation: Option<bool>,
    pub(super) register: Option<bool>,
    pub(super) registers: Option<bool>,
    pub(super) working_dir: Option<String>,
    pub(super) autoscale: Option<RawAutoscale>,
    pub(super) resources: Option<RawResources>,
    pub(super) rollout: Option<RawRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "resources: a mapping with memory, cpu and pids (e.g. { memory: 256Mi, cpu: 500m, pids: 256 })")]
pub(super) struct RawResources {
    pub(super) memory: Option<EnvValue>,
    pub(super) cpu: Option<EnvValue>,
    pub(super) pids: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "rollout: a mapping with maxSurge, maxUnavailable, progressDeadlineMs, autoRollback")]
pub(super) struct RawRollout {
    pub(super) max_surge: Option<Int>,
    pub(super) max_unavailable: Option<Int>,
    pub(super) progress_deadline_ms: Option<Int>,
    pub(super) auto_rollback: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a probe: a mapping with path or tcp, periodMs, timeoutMs, failureThreshold, enabled")]
pub(super) struct RawProbe {
    pub(super) path: Option<String>,
    pub(super) tcp: Option<bool>,
    pub(super) enabled: Option<bool>,
    pub(super) period_ms: Option<Int>,
    pub(super) timeout_ms: Option<Int>,
    pub(super) failure_threshold: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "restart: a mapping with policy, backoffInitialMs, backoffMaxMs, resetAfterMs")]
pub(super) struct RawRestart {
    pub(super) policy: Option<RestartPolicy>,
    pub(super) backoff_initial_ms: Option<Int>,
    pub(super) backoff_max_ms: Option<Int>,
    pub(super) reset_after_ms: Option<Int>,
}

/// A whole number of any size, so range errors can say what the range is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Int(pub(super) i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
                Ok(Int(v.min(i128::MAX as u128) as i128))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(Int(v as i128))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An environment value: YAML strings, numbers and booleans are all taken as text.
pub(super) struct EnvValue(pub(super) String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `command: prog` or `command: [prog, arg, ...]`.
pub(super) struct CommandLine(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a program, or a list [program, arguments...]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandLine, E> {
                Ok(CommandLine(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut line = Vec::new();
                while let Some(arg) = seq.next_element::<EnvValue>()? {
                    line.push(arg.0);
                }
                Ok(CommandLine(line))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "autoscale: a mapping with min, max, target, scaleUpWindowMs, scaleDownWindowMs")]
pub(super) struct RawAutoscale {
    pub(super) min: Option<Int>,
    pub(super) max: Option<Int>,
    pub(super) target: Option<RawTarget>,
    pub(super) scale_up_window_ms: Option<Int>,
    pub(super) scale_down_window_ms: Option<Int>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "target: a mapping with one of inFlightPerInstance, requestsPerSecondPerInstance, cpuPercent")]
pub(super) struct RawTarget {
    pub(super) in_flight_per_instance: Option<Int>,
    pub(super) requests_per_second_per_instance: Option<Int>,
    pub(super) cpu_percent: Option<Int>,
}
