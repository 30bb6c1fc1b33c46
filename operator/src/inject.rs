//! What the admission webhook does to a pod: the injection decision and the pod it produces.
//!
//! Pure functions over [`Pod`], so every rule is tested without an API server; `webhook.rs` turns
//! the result into a JSON patch. Injection converges a pod on the injected state (each step adds
//! only what is missing), so a pod that went through it once comes out of it again unchanged, and a
//! reinvocation after another webhook added a container only gives that container its env.
//!
//! The env and paths below are the sidecar's flags (`gatehouse-sidecar --help`) and the mount
//! points it reads by default; `scripts/demo` runs the sidecar with exactly the container this
//! module builds, so a mismatch fails there.

use std::collections::{BTreeMap, BTreeSet};

use gatehouse_crds::contract::KEYS_NAME;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, ResourceRequirements, Volume};
use serde::Serialize;

mod spec;

use spec::env;
pub use spec::{sidecar_container, sidecar_volumes};

/// Label (on a namespace or a pod) that opts in (`enabled`) or, on a pod, out (`disabled`).
pub const INJECT_LABEL: &str = "gatehouse.dev/inject";
/// [`INJECT_LABEL`] value that opts in.
pub const ENABLED: &str = "enabled";
/// [`INJECT_LABEL`] value that opts a pod out.
pub const DISABLED: &str = "disabled";
/// Name of the injected container. A pod that already has a container of this name counts as
/// injected and passes through unchanged.
pub const SIDECAR_NAME: &str = "gatehouse";
/// Annotation recording what was injected (JSON, [`Status`]).
pub const STATUS_ANNOTATION: &str = "gatehouse.dev/status";
/// Annotation with the injected sidecar's version.
pub const VERSION_ANNOTATION: &str = "gatehouse.dev/sidecar-version";

/// The sidecar's proxy port on the pod's loopback by default (its default `--listen`).
pub const DEFAULT_PROXY_PORT: u16 = 4000;
/// The sidecar's admin port by default. It listens on every interface of the pod so the kubelet's
/// probes (sent to the pod IP) and Prometheus reach it; it serves health, metrics and target
/// health, never a key.
pub const DEFAULT_ADMIN_PORT: u16 = 4001;
/// Where the keys Secret is mounted in the sidecar (its default `--keys-dir`).
pub const KEYS_DIR: &str = "/var/run/gatehouse/keys";
/// Where the downward-API labels file is mounted.
pub const POD_INFO_DIR: &str = "/var/run/gatehouse/pod";
/// Where the sidecar's own API credentials are mounted: the in-cluster path, so the sidecar's
/// client finds them without flags, mounted into the sidecar container only.
pub const KUBE_API_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the budget ledger's token (`token`) and CA bundle (`ca.crt`) are mounted.
pub const LEDGER_DIR: &str = "/var/run/secrets/gatehouse/ledger";
/// Audience of the ledger's ServiceAccount token: a token for the ledger is not one for the API.
pub const LEDGER_AUDIENCE: &str = "gatehouse-ledger";
/// Lifetime asked for the projected tokens; the kubelet renews them at 80 %.
pub const TOKEN_SECONDS: i64 = 3600;
/// ConfigMap, in each namespace with injected pods, holding the CA bundle that signs the
/// operator's serving certificate (key [`CA_KEY`]); written by the webhook.
pub const CA_CONFIG_MAP: &str = "gatehouse-ca";
/// Key of the bundle in [`CA_CONFIG_MAP`].
pub const CA_KEY: &str = "ca.crt";

/// Volumes the injection adds.
pub const KEYS_VOLUME: &str = "gatehouse-keys";
/// Downward-API volume with the pod's labels.
pub const POD_INFO_VOLUME: &str = "gatehouse-pod";
/// Projected volume with the sidecar's API token, the cluster CA and the namespace.
pub const KUBE_API_VOLUME: &str = "gatehouse-kube-api";
/// Projected volume with the ledger token and CA bundle.
pub const LEDGER_VOLUME: &str = "gatehouse-ledger";
const VOLUMES: [&str; 4] = [KEYS_VOLUME, POD_INFO_VOLUME, KUBE_API_VOLUME, LEDGER_VOLUME];

/// The base URLs app containers get, unless they set the variable themselves.
pub fn base_urls(port: u16) -> [(&'static str, String); 2] {
    [
        ("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1")),
        ("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}")),
    ]
}

/// How the sidecar runs next to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+, on by default): started
    /// before the app containers, stopped after them.
    Native,
    /// A regular container, for clusters without native sidecars.
    Container,
}

/// What to do with a `hostNetwork: true` pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostNetwork {
    /// Admit it without a sidecar, with a Warning Event and an admission warning.
    Skip,
    /// Refuse it.
    Refuse,
}

/// Everything injection needs to know, from the operator's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar image.
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// Its version, recorded in [`VERSION_ANNOTATION`].
    pub version: String,
    /// Its resources.
    pub resources: Option<ResourceRequirements>,
    /// Its proxy port, on the pod's loopback.
    pub port: u16,
    /// Its admin port (probes, metrics), on the pod's interfaces.
    pub admin_port: u16,
    /// The pod labels carried with the identity (`GATEHOUSE_WORKLOAD_LABELS`).
    pub workload_labels: String,
    /// Native sidecar or regular container.
    pub mode: Mode,
    /// The budget ledger's URL (`GATEHOUSE_LEDGER_URL`).
    pub ledger_url: String,
    /// How long a regular-container sidecar keeps serving after SIGTERM (`GATEHOUSE_DRAIN_MS`),
    /// since it is stopped together with the app. A native sidecar is stopped after the app and
    /// gets 0.
    pub drain_ms: u64,
    /// Host-network pods.
    pub host_network: HostNetwork,
    /// Namespaces never touched (kube-system and the operator's own).
    pub excluded_namespaces: Vec<String>,
    /// The Redis of Routes with `cache.backend: redis` (`GATEHOUSE_CACHE_REDIS_ADDR`); `None`:
    /// not set, those Routes bypass the cache.
    pub cache_redis_addr: Option<String>,
}

/// Why a pod passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// kube-system or the operator's namespace.
    ExcludedNamespace,
    /// The pod says `gatehouse.dev/inject: disabled`.
    OptedOut,
    /// The pod is injected already and nothing is missing.
    AlreadyInjected,
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit it with these additions.
    Inject {
        /// What to add.
        mutation: Box<Mutation>,
        /// Admission warnings (shown by kubectl).
        warnings: Vec<String>,
    },
    /// Admit it as it is.
    Unchanged(Unchanged),
    /// Admit it as it is, and say why in a Warning Event and an admission warning.
    Skip {
        /// Event reason.
        reason: &'static str,
        /// What happened, for people.
        message: String,
    },
    /// Refuse it with this message.
    Refuse {
        /// Metric label.
        reason: &'static str,
        /// What the user sees.
        message: String,
    },
}

impl Decision {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Inject { .. } => "injected",
            Self::Unchanged(Unchanged::ExcludedNamespace) => "excluded_namespace",
            Self::Unchanged(Unchanged::OptedOut) => "opted_out",
            Self::Unchanged(Unchanged::AlreadyInjected) => "already_injected",
            Self::Skip { .. } => "skipped",
            Self::Refuse { reason, .. } => reason,
        }
    }
}

/// What injection adds to a pod. Only additions: nothing the pod has is changed or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The sidecar; `None` when the pod has it already.
    pub sidecar: Option<Container>,
    /// Where the sidecar goes.
    pub mode: Mode,
    /// Volumes to append.
    pub volumes: Vec<Volume>,
    /// Env to append, by index into `spec.containers` of the pod as submitted.
    pub env: Vec<(usize, Vec<EnvVar>)>,
    /// Annotations to set.
    pub annotations: BTreeMap<String, String>,
}

impl Mutation {
    /// `pod` with the additions made.
    pub fn apply(&self, pod: &Pod) -> Pod {
        let mut pod = pod.clone();
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        for (i, vars) in &self.env {
            if let Some(c) = spec.containers.get_mut(*i) {
                c.env
                    .get_or_insert_with(Vec::new)
                    .extend(vars.iter().cloned());
            }
        }
        if !self.volumes.is_empty() {
            spec.volumes
                .get_or_insert_with(Vec::new)
                .extend(self.volumes.iter().cloned());
        }
        if let Some(sidecar) = &self.sidecar {
            match self.mode {
                Mode::Native => spec
                    .init_containers
                    .get_or_insert_with(Vec::new)
                    .insert(0, sidecar.clone()),
                Mode::Container => spec.containers.insert(0, sidecar.clone()),
            }
        }
        let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.extend(self.annotations.clone());
        pod
    }

    /// The same additions as a JSON patch against `pod` as submitted: `add` operations only, each
    /// at a place that exists in it (or creating the list or map), so fields of the pod this
    /// operator's API types do not know survive.
    pub fn patch(&self, pod: &Pod) -> Result<json_patch::Patch, serde_json::Error> {
        use json_patch::jsonptr::PointerBuf;
        use json_patch::{AddOperation, PatchOperation};
        let spec = pod.spec.as_ref();
        let mut ops = Vec::new();
        let mut add = |path: PointerBuf, value: serde_json::Value| {
            ops.push(PatchOperation::Add(AddOperation { path, value }));
        };
        let ptr = |tokens: &[&str]| PointerBuf::from_tokens(tokens.iter().copied());
        for (i, vars) in &self.env {
            let has_env = spec
                .and_then(|s| s.containers.get(*i))
                .is_some_and(|c| c.env.is_some());
            let i = i.to_string();
            if has_env {
                for var in vars {
                    add(
                        ptr(&["spec", "containers", &i, "env", "-"]),
                        serde_json::to_value(var)?,
                    );
                }
            } else {
                add(
                    ptr(&["spec", "containers", &i, "env"]),
                    serde_json::to_value(vars)?,
                );
            }
        }
        if !self.volumes.is_empty() {
            if spec.is_some_and(|s| s.volumes.is_some()) {
                for v in &self.volumes {
                    add(ptr(&["spec", "volumes", "-"]), serde_json::to_value(v)?);
                }
            } else {
                add(
                    ptr(&["spec", "volumes"]),
                    serde_json::to_value(&self.volumes)?,
                );
            }
        }
        if let Some(sidecar) = &self.sidecar {
            let value = serde_json::to_value(sidecar)?;
            match self.mode {
                Mode::Native if spec.is_some_and(|s| s.init_containers.is_some()) => {
                    add(ptr(&["spec", "initContainers", "0"]), value);
                }
                Mode::Native => add(ptr(&["spec", "initContainers"]), serde_json::json!([value])),
                Mode::Container => add(ptr(&["spec", "containers", "0"]), value),
            }
        }
        if !self.annotations.is_empty() {
            if pod.metadata.annotations.is_some() {
                for (k, v) in &self.annotations {
                    add(ptr(&["metadata", "annotations", k]), serde_json::json!(v));
                }
            } else {
                add(
                    ptr(&["metadata", "annotations"]),
                    serde_json::to_value(&self.annotations)?,
                );
            }
        }
        Ok(json_patch::Patch(ops))
    }
}

/// What [`STATUS_ANNOTATION`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Status {
    /// The sidecar container's name.
    pub sidecar: String,
    /// `native` or `container`.
    pub mode: Mode,
    /// The image.
    pub image: String,
    /// The volumes added.
    pub volumes: Vec<String>,
    /// App containers and the variables set in each.
    pub env: BTreeMap<String, Vec<String>>,
}

/// Decide what happens to `pod`, created in `namespace`.
pub fn decide(pod: &Pod, namespace: &str, settings: &Settings) -> Decision {
    if settings.excluded_namespaces.iter().any(|n| n == namespace) {
        return Decision::Unchanged(Unchanged::ExcludedNamespace);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::Unchanged(Unchanged::OptedOut);
    };
    // Before opt-out: the keys Secret is Gatehouse's, and its one reader is the sidecar, whether
    // this pod gets one or not.
    if let Some(message) = reads_keys(spec) {
        return Decision::Refuse {
            reason: "reads_keys",
            message,
        };
    }
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .map(String::as_str);
    if label == Some(DISABLED) {
        return Decision::Unchanged(Unchanged::OptedOut);
    }
    let injected = containers(spec).any(|c| c.name == SIDECAR_NAME);
    if !injected {
        if spec.host_network == Some(true) {
            let message = format!(
                "hostNetwork pods share the node's loopback, where the sidecar would serve \
                 provider keys to every process on the node and collide on port {} with other \
                 such pods",
                settings.port
            );
            return match settings.host_network {
                HostNetwork::Skip => Decision::Skip {
                    reason: "HostNetworkSkipped",
                    message: format!("gatehouse did not inject this pod: {message}"),
                },
                HostNetwork::Refuse => Decision::Refuse {
                    reason: "host_network",
                    message: format!(
                        "gatehouse refuses to inject this pod: {message}; opt it out with label \
                         {INJECT_LABEL}={DISABLED}"
                    ),
                },
            };
        }
        if let Some(taken) = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| VOLUMES.contains(&v.name.as_str()))
        {
            return Decision::Skip {
                reason: "VolumeNameTaken",
                message: format!(
                    "gatehouse did not inject this pod: it already has a volume named {}, which \
                     the gatehouse sidecar needs",
                    taken.name
                ),
            };
        }
    }
    let mut warnings = Vec::new();
    let env = base_url_env(spec, settings.port, &mut warnings);
    if injected && env.is_empty() {
        return Decision::Unchanged(Unchanged::AlreadyInjected);
    }
    let previous = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STATUS_ANNOTATION))
        .and_then(|s| serde_json::from_str::<Status>(s).ok());
    let mut status = match (injected, previous) {
        (false, _) => Some(Status {
            sidecar: SIDECAR_NAME.into(),
            mode: settings.mode,
            image: settings.image.clone(),
            volumes: VOLUMES.iter().map(|v| v.to_string()).collect(),
            env: BTreeMap::new(),
        }),
        // Injected by us before: record the new containers too.
        (true, previous) => previous,
    };
    let mut annotations = BTreeMap::new();
    if let Some(status) = status.as_mut() {
        for (i, vars) in &env {
            if let Some(c) = spec.containers.get(*i) {
                status
                    .env
                    .entry(c.name.clone())
                    .or_default()
                    .extend(vars.iter().map(|v| v.name.clone()));
            }
        }
        if let Ok(json) = serde_json::to_string(status) {
            annotations.insert(STATUS_ANNOTATION.to_string(), json);
        }
    }
    if !injected {
        annotations.insert(VERSION_ANNOTATION.to_string(), settings.version.clone());
    }
    Decision::Inject {
        mutation: Box::new(Mutation {
            sidecar: (!injected).then(|| sidecar_container(settings)),
            mode: settings.mode,
            volumes: if injected {
                Vec::new()
            } else {
                sidecar_volumes()
            },
            env,
            annotations,
        }),
        warnings,
    }
}

/// Every container of the spec: init and regular (ephemeral ones cannot be set at creation).
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// Why the spec breaks the rule that only the sidecar reads the keys Secret, if it does: a
/// container (other than the sidecar) mounting a volume made from it, or taking env from it.
fn reads_keys(spec: &PodSpec) -> Option<String> {
    let key_volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(KEYS_NAME)
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.secret.as_ref().map(|s| s.name.as_str()) == Some(KEYS_NAME))
                })
        })
        .map(|v| v.name.as_str())
        .collect();
    for c in containers(spec).filter(|c| c.name != SIDECAR_NAME) {
        if let Some(m) = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| key_volumes.contains(m.name.as_str()))
        {
            return Some(format!(
                "container {} mounts Secret {KEYS_NAME} (volume {}): provider keys are mounted \
                 into the gatehouse sidecar only",
                c.name, m.name
            ));
        }
        let env = c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == KEYS_NAME)
        });
        let env_from = c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == KEYS_NAME));
        if env || env_from {
            return Some(format!(
                "container {} takes env from Secret {KEYS_NAME}: provider keys are mounted into \
                 the gatehouse sidecar only",
                c.name
            ));
        }
    }
    None
}

/// The base URLs each app container lacks, by index into `spec.containers`.
fn base_url_env(
    spec: &PodSpec,
    port: u16,
    warnings: &mut Vec<String>,
) -> Vec<(usize, Vec<EnvVar>)> {
    let mut out = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name == SIDECAR_NAME {
            continue;
        }
        let missing: Vec<EnvVar> = base_urls(port)
            .into_iter()
            .filter(|(name, _)| !c.env.iter().flatten().any(|e| e.name == *name))
            .map(|(name, value)| env(name, value))
            .collect();
        if missing.is_empty() {
            continue;
        }
        // A variable from envFrom is overridden by one in env: with envFrom we cannot tell
        // whether the pod sets it, so leave the container alone and say so.
        if c.env_from.as_ref().is_some_and(|f| !f.is_empty()) {
            let names: Vec<&str> = missing.iter().map(|e| e.name.as_str()).collect();
            warnings.push(format!(
                "gatehouse: container {} uses envFrom, so {} were not set (they would override \
                 a value envFrom may set); point its SDK at http://127.0.0.1:{port}/v1 \
                 yourself",
                c.name,
                names.join(" and ")
            ));
            continue;
        }
        out.push((i, missing));
    }
    out
}

#[cfg(test)]
mod tests;
