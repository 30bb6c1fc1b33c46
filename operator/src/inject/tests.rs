#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::*;

fn settings(mode: Mode) -> Settings {
    Settings {
        image: "registry.example/gatehouse-sidecar:1.2.3".into(),
        image_pull_policy: "IfNotPresent".into(),
        version: "1.2.3".into(),
        resources: Some(
            serde_json::from_value(json!({"requests": {"cpu": "20m", "memory": "32Mi"}})).unwrap(),
        ),
        workload_labels: "app.kubernetes.io/name,team".into(),
        port: DEFAULT_PROXY_PORT,
        admin_port: DEFAULT_ADMIN_PORT,
        mode,
        ledger_url: "https://gatehouse-operator.gatehouse-system.svc:8444".into(),
        drain_ms: 5000,
        host_network: HostNetwork::Skip,
        excluded_namespaces: vec!["kube-system".into(), "gatehouse-system".into()],
        cache_redis_addr: None,
    }
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-1", "labels": {"app.kubernetes.io/name": "app"}},
        "spec": spec,
    }))
    .unwrap()
}

fn app_pod() -> Pod {
    pod(json!({"containers": [
        {"name": "app", "image": "app:1", "env": [{"name": "OPENAI_BASE_URL", "value": "http://mine/v1"}]},
        {"name": "worker", "image": "worker:1"},
    ]}))
}

fn inject(pod: &Pod, mode: Mode) -> (Pod, Mutation, Vec<String>) {
    match decide(pod, "team-a", &settings(mode)) {
        Decision::Inject { mutation, warnings } => (mutation.apply(pod), *mutation, warnings),
        other => panic!("expected injection, got {other:?}"),
    }
}

fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

#[test]
fn a_native_sidecar_comes_first_with_probes_security_and_its_own_volumes() {
    let (out, _, warnings) = inject(&app_pod(), Mode::Native);
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = out.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    let sidecar = &init[0];
    assert_eq!(sidecar.name, SIDECAR_NAME);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example/gatehouse-sidecar:1.2.3")
    );
    let startup = sidecar
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/readyz"));
    assert_eq!(
        startup.port,
        IntOrString::Int(i32::from(DEFAULT_ADMIN_PORT))
    );
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sidecar.resources.is_some());
    // Identity through the downward API.
    for (name, path) in [
        ("GATEHOUSE_NAMESPACE", "metadata.namespace"),
        ("GATEHOUSE_POD_NAME", "metadata.name"),
        ("GATEHOUSE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ] {
        let e = env_of(sidecar, name).unwrap();
        let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, path);
    }
    assert_eq!(
        env_of(sidecar, "GATEHOUSE_WORKLOAD_LABELS")
            .unwrap()
            .value
            .as_deref(),
        Some("app.kubernetes.io/name,team")
    );
    // A native sidecar is stopped after the app: no drain of its own.
    assert_eq!(
        env_of(sidecar, "GATEHOUSE_DRAIN_MS")
            .unwrap()
            .value
            .as_deref(),
        Some("0")
    );
    // What the ledger client will need.
    assert_eq!(
        env_of(sidecar, "GATEHOUSE_LEDGER_TOKEN_FILE")
            .unwrap()
            .value
            .as_deref(),
        Some("/var/run/secrets/gatehouse/ledger/token")
    );
    let ledger = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == LEDGER_VOLUME)
        .unwrap();
    let token = ledger.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some(LEDGER_AUDIENCE));
    assert_eq!(token.expiration_seconds, Some(3600));
    // The app containers are unchanged but for their env; no mount of anything new.
    assert_eq!(spec.containers.len(), 2);
    for c in &spec.containers {
        assert!(c.volume_mounts.is_none(), "{}", c.name);
    }
}

#[test]
fn app_containers_get_base_urls_without_overwriting_their_own() {
    let (out, mutation, _) = inject(&app_pod(), Mode::Native);
    let spec = out.spec.as_ref().unwrap();
    let app = &spec.containers[0];
    assert_eq!(
        env_of(app, "OPENAI_BASE_URL").unwrap().value.as_deref(),
        Some("http://mine/v1"),
        "the pod's own value stays"
    );
    assert_eq!(
        env_of(app, "ANTHROPIC_BASE_URL").unwrap().value.as_deref(),
        Some("http://127.0.0.1:4000")
    );
    let worker = &spec.containers[1];
    assert_eq!(
        env_of(worker, "OPENAI_BASE_URL").unwrap().value.as_deref(),
        Some("http://127.0.0.1:4000/v1")
    );
    let status: Status = serde_json::from_str(
        out.metadata.annotations.as_ref().unwrap()[STATUS_ANNOTATION].as_str(),
    )
    .unwrap();
    assert_eq!(status.env["app"], vec!["ANTHROPIC_BASE_URL"]);
    assert_eq!(
        status.env["worker"],
        vec!["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"]
    );
    assert_eq!(status.mode, Mode::Native);
    assert_eq!(
        out.metadata.annotations.as_ref().unwrap()[VERSION_ANNOTATION],
        "1.2.3"
    );
    assert_eq!(mutation.env.len(), 2);
}

#[test]
fn a_container_with_env_from_is_left_alone_with_a_warning() {
    let p = pod(json!({"containers": [
        {"name": "app", "image": "app:1", "envFrom": [{"configMapRef": {"name": "settings"}}]},
    ]}));
    let (out, _, warnings) = inject(&p, Mode::Native);
    assert!(out.spec.unwrap().containers[0].env.is_none());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("envFrom"), "{warnings:?}");
}

#[test]
fn the_fallback_is_the_first_regular_container_and_drains() {
    let (out, _, _) = inject(&app_pod(), Mode::Container);
    let spec = out.spec.unwrap();
    assert!(spec.init_containers.is_none());
    let sidecar = &spec.containers[0];
    assert_eq!(sidecar.name, SIDECAR_NAME);
    assert!(sidecar.restart_policy.is_none());
    assert_eq!(
        env_of(sidecar, "GATEHOUSE_DRAIN_MS")
            .unwrap()
            .value
            .as_deref(),
        Some("5000")
    );
    assert!(env_of(sidecar, "OPENAI_BASE_URL").is_none());
    assert_eq!(spec.containers[1].name, "app");
}

#[test]
fn injection_is_idempotent_and_a_reinvocation_only_completes_new_containers() {
    for mode in [Mode::Native, Mode::Container] {
        let (once, _, _) = inject(&app_pod(), mode);
        assert_eq!(
            decide(&once, "team-a", &settings(mode)),
            Decision::Unchanged(Unchanged::AlreadyInjected),
            "{mode:?}"
        );
        // Another webhook added a container after us: it gets the env, nothing else changes.
        let mut later = once.clone();
        later
            .spec
            .as_mut()
            .unwrap()
            .containers
            .push(serde_json::from_value(json!({"name": "late", "image": "late:1"})).unwrap());
        let (twice, mutation, _) = inject(&later, mode);
        assert!(mutation.sidecar.is_none() && mutation.volumes.is_empty());
        let late = twice.spec.as_ref().unwrap().containers.last().unwrap();
        assert!(env_of(late, "OPENAI_BASE_URL").is_some());
        let status: Status =
            serde_json::from_str(&twice.metadata.annotations.as_ref().unwrap()[STATUS_ANNOTATION])
                .unwrap();
        assert!(status.env.contains_key("late") && status.env.contains_key("worker"));
        assert_eq!(
            decide(&twice, "team-a", &settings(mode)),
            Decision::Unchanged(Unchanged::AlreadyInjected)
        );
    }
}

#[test]
fn the_json_patch_builds_the_same_pod_and_only_adds() {
    for (mode, p) in [
        (Mode::Native, app_pod()),
        (Mode::Container, app_pod()),
        (
            Mode::Native,
            pod(json!({
                "initContainers": [{"name": "migrate", "image": "m:1"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "a:1", "env": [{"name": "X", "value": "1"}]}],
            })),
        ),
    ] {
        let mut p = p;
        p.metadata.annotations = Some(BTreeMap::from([("keep".into(), "me".into())]));
        let Decision::Inject { mutation, .. } = decide(&p, "team-a", &settings(mode)) else {
            panic!("not injected");
        };
        let mut doc = serde_json::to_value(&p).unwrap();
        let patch = mutation.patch(&p).unwrap();
        assert!(
            patch
                .0
                .iter()
                .all(|op| matches!(op, json_patch::PatchOperation::Add(_))),
            "{patch:?}"
        );
        json_patch::patch(&mut doc, &patch.0).unwrap();
        assert_eq!(
            doc,
            serde_json::to_value(mutation.apply(&p)).unwrap(),
            "{mode:?}"
        );
    }
}

#[test]
fn namespaces_opt_outs_and_host_network_are_respected() {
    let s = settings(Mode::Native);
    for ns in ["kube-system", "gatehouse-system"] {
        assert_eq!(
            decide(&app_pod(), ns, &s),
            Decision::Unchanged(Unchanged::ExcludedNamespace)
        );
    }
    let mut out = app_pod();
    out.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECT_LABEL.into(), DISABLED.into());
    assert_eq!(
        decide(&out, "team-a", &s),
        Decision::Unchanged(Unchanged::OptedOut)
    );

    let host = pod(json!({"hostNetwork": true, "containers": [{"name": "app", "image": "a"}]}));
    match decide(&host, "team-a", &s) {
        Decision::Skip { reason, message } => {
            assert_eq!(reason, "HostNetworkSkipped");
            assert!(message.contains("loopback"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let refuse = Settings {
        host_network: HostNetwork::Refuse,
        ..s.clone()
    };
    assert!(matches!(
        decide(&host, "team-a", &refuse),
        Decision::Refuse {
            reason: "host_network",
            ..
        }
    ));
}

#[test]
fn no_container_but_the_sidecar_may_read_the_keys() {
    let s = settings(Mode::Native);
    for spec in [
        json!({"volumes": [{"name": "k", "secret": {"secretName": "gatehouse-keys"}}],
               "containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "k", "mountPath": "/k"}]}]}),
        json!({"volumes": [{"name": "k", "projected": {"sources": [{"secret": {"name": "gatehouse-keys"}}]}}],
               "initContainers": [{"name": "init", "image": "a", "volumeMounts": [{"name": "k", "mountPath": "/k"}]}],
               "containers": [{"name": "app", "image": "a"}]}),
        json!({"containers": [{"name": "app", "image": "a", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "gatehouse-keys", "key": "openai"}}}]}]}),
        json!({"containers": [{"name": "app", "image": "a", "envFrom": [{"secretRef": {"name": "gatehouse-keys"}}]}]}),
    ] {
        let mut p = pod(spec.clone());
        match decide(&p, "team-a", &s) {
            Decision::Refuse { reason, message } => {
                assert_eq!(reason, "reads_keys");
                assert!(message.contains("gatehouse-keys"), "{message}");
            }
            other => panic!("{spec}: {other:?}"),
        }
        // Opting out does not open the keys either.
        p.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(INJECT_LABEL.into(), DISABLED.into());
        assert!(
            matches!(decide(&p, "team-a", &s), Decision::Refuse { .. }),
            "{spec}"
        );
    }
    // A declared but unmounted keys volume hurts nobody; the sidecar's own mount is fine.
    let (out, _, _) = inject(&app_pod(), Mode::Native);
    assert!(matches!(
        decide(&out, "team-a", &s),
        Decision::Unchanged(Unchanged::AlreadyInjected)
    ));
}

#[test]
fn a_volume_name_in_the_way_skips_with_a_reason() {
    let p = pod(
        json!({"volumes": [{"name": "gatehouse-pod", "emptyDir": {}}],
                       "containers": [{"name": "app", "image": "a"}]}),
    );
    match decide(&p, "team-a", &settings(Mode::Native)) {
        Decision::Skip { reason, message } => {
            assert_eq!(reason, "VolumeNameTaken");
            assert!(message.contains("gatehouse-pod"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_cache_redis_address_reaches_the_sidecar_only_when_set() {
    let (out, _, _) = inject(&app_pod(), Mode::Native);
    let sidecar = &out.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert!(env_of(sidecar, "GATEHOUSE_CACHE_REDIS_ADDR").is_none());
    let mut with = settings(Mode::Native);
    with.cache_redis_addr = Some("redis.cache.svc:6379".into());
    let Decision::Inject { mutation, .. } = decide(&app_pod(), "team-a", &with) else {
        panic!("expected injection");
    };
    let out = mutation.apply(&app_pod());
    let spec = out.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        env_of(sidecar, "GATEHOUSE_CACHE_REDIS_ADDR").and_then(|e| e.value.as_deref()),
        Some("redis.cache.svc:6379")
    );
    // Only the sidecar gets it.
    for app in &spec.containers {
        assert!(env_of(app, "GATEHOUSE_CACHE_REDIS_ADDR").is_none());
    }
}
