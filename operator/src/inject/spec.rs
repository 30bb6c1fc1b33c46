//! The sidecar container and its volumes, as injection adds them.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    Probe, ProjectedVolumeSource, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CA_CONFIG_MAP, CA_KEY, KEYS_DIR, KEYS_VOLUME, KUBE_API_DIR, KUBE_API_VOLUME, LEDGER_AUDIENCE,
    LEDGER_DIR, LEDGER_VOLUME, Mode, POD_INFO_DIR, POD_INFO_VOLUME, SIDECAR_NAME, Settings,
    TOKEN_SECONDS,
};
use gatehouse_crds::contract::KEYS_NAME;

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

pub(super) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The sidecar container.
pub fn sidecar_container(settings: &Settings) -> Container {
    let drain_ms = match settings.mode {
        Mode::Native => 0,
        Mode::Container => settings.drain_ms,
    };
    let cache_redis = settings
        .cache_redis_addr
        .as_ref()
        .map(|addr| env("GATEHOUSE_CACHE_REDIS_ADDR", addr.clone()));
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["--kube".into()]),
        env: Some(
            vec![
                field_env("GATEHOUSE_NAMESPACE", "metadata.namespace"),
                field_env("GATEHOUSE_POD_NAME", "metadata.name"),
                field_env("GATEHOUSE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
                env(
                    "GATEHOUSE_POD_LABELS_FILE",
                    format!("{POD_INFO_DIR}/labels"),
                ),
                env(
                    "GATEHOUSE_WORKLOAD_LABELS",
                    settings.workload_labels.clone(),
                ),
                env("GATEHOUSE_KEYS_DIR", KEYS_DIR),
                env("GATEHOUSE_LISTEN", format!("127.0.0.1:{}", settings.port)),
                env(
                    "GATEHOUSE_ADMIN_LISTEN",
                    format!("0.0.0.0:{}", settings.admin_port),
                ),
                env("GATEHOUSE_DRAIN_MS", drain_ms.to_string()),
                env("GATEHOUSE_LEDGER_URL", settings.ledger_url.clone()),
                env("GATEHOUSE_LEDGER_TOKEN_FILE", format!("{LEDGER_DIR}/token")),
                env("GATEHOUSE_LEDGER_CA_FILE", format!("{LEDGER_DIR}/{CA_KEY}")),
            ]
            .into_iter()
            .chain(cache_redis)
            .collect(),
        ),
        restart_policy: (settings.mode == Mode::Native).then(|| "Always".into()),
        // App containers start once this passes (native sidecars); the config has to be loaded.
        startup_probe: Some(probe("/readyz", settings.admin_port, 1, 120)),
        liveness_probe: Some(probe("/healthz", settings.admin_port, 10, 3)),
        resources: settings.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount(KEYS_VOLUME, KEYS_DIR),
            mount(POD_INFO_VOLUME, POD_INFO_DIR),
            mount(KUBE_API_VOLUME, KUBE_API_DIR),
            mount(LEDGER_VOLUME, LEDGER_DIR),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn token(audience: Option<&str>) -> VolumeProjection {
    VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: audience.map(Into::into),
            expiration_seconds: Some(TOKEN_SECONDS),
            path: "token".into(),
        }),
        ..VolumeProjection::default()
    }
}

fn config_map(name: &str, key: &str, optional: bool) -> VolumeProjection {
    VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: name.into(),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                mode: None,
            }]),
            optional: optional.then_some(true),
        }),
        ..VolumeProjection::default()
    }
}

fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            // As the kubelet's own `kube-api-access-*`: the sidecar runs as a non-root user, and
            // the volume is mounted into its container only.
            default_mode: Some(0o644),
            sources: Some(sources),
        }),
        ..Volume::default()
    }
}

/// The volumes the sidecar mounts, and no other container.
pub fn sidecar_volumes() -> Vec<Volume> {
    let labels = DownwardAPIVolumeFile {
        path: "labels".into(),
        field_ref: Some(ObjectFieldSelector {
            api_version: None,
            field_path: "metadata.labels".into(),
        }),
        ..DownwardAPIVolumeFile::default()
    };
    let namespace = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "namespace".into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: "metadata.namespace".into(),
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
        }),
        ..VolumeProjection::default()
    };
    vec![
        // Optional: the operator writes it once the namespace has a ModelProvider; the kubelet
        // fills the volume when it appears and the sidecar sees the files change.
        Volume {
            name: KEYS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(KEYS_NAME.into()),
                optional: Some(true),
                default_mode: None,
                items: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: POD_INFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![labels]),
                default_mode: None,
            }),
            ..Volume::default()
        },
        // What the kubelet mounts as `kube-api-access-*`, for the sidecar alone: the app keeps
        // whatever its pod says (`automountServiceAccountToken`), the sidecar always has its own.
        projected(
            KUBE_API_VOLUME,
            vec![
                token(None),
                config_map("kube-root-ca.crt", "ca.crt", false),
                namespace,
            ],
        ),
        projected(
            LEDGER_VOLUME,
            vec![
                token(Some(LEDGER_AUDIENCE)),
                config_map(CA_CONFIG_MAP, CA_KEY, true),
            ],
        ),
    ]
}
