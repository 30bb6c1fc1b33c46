//! The sidecar-injection webhook on the real API server: the chart installed (`replicaCount=0`:
//! no kubelet here, the operator replicas are processes this test starts with the chart
//! ServiceAccount's token and the chart Deployment's own args), the webhook Service's endpoints
//! published at this machine's address (the API server runs with `--enable-aggregator-routing`),
//! and pods created through the API server, which calls the webhook over TLS against the
//! `caBundle` the operator wrote.
//!
//! There is no kube-controller-manager either: a Deployment makes no pods, so the test creates the
//! pod its ReplicaSet would (the template, a `pod-template-hash` label, a generated name).
//!
//! One webhook configuration at a time: each test installs its own release and uninstalls it, and
//! holds [`one_at_a_time`] meanwhile, since the chart's configuration matches every namespace
//! labelled `gatehouse.dev/inject=enabled`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use gatehouse_e2e::network::{host_ip, publish_endpoints};
use gatehouse_e2e::{ControlPlane, eventually};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const IMAGE: &str = "registry.example/gatehouse-sidecar:9.9.9";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> String {
    repo_root()
        .join("charts/gatehouse")
        .to_string_lossy()
        .into_owned()
}

fn one_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

fn operator_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(repo_root())
                .args(["build", "-p", "gatehouse-operator"])
                .status()
                .map_err(|e| format!("failed to run cargo build: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err("cargo build -p gatehouse-operator failed".into())
            }
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("debug").join("gatehouse-operator"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port())
}

/// One `helm install` of the chart, uninstalled on drop.
struct Release {
    cp: &'static ControlPlane,
    name: String,
    namespace: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    uninstalled: bool,
}

impl Release {
    /// Install release `name` (its names then start with `name`: it contains "gatehouse") into a
    /// fresh namespace, with `values` on top of the test's.
    async fn install(cp: &'static ControlPlane, name: &str, values: &[&str]) -> Result<Self> {
        let namespace = cp.create_namespace(name).await?;
        let mut args = vec![
            "install".to_string(),
            name.to_string(),
            chart(),
            "--namespace".into(),
            namespace.clone(),
            "--wait=false".into(),
            "--set".into(),
            "replicaCount=0".into(),
            "--set".into(),
            "sidecar.image.repository=registry.example/gatehouse-sidecar".into(),
            "--set".into(),
            "sidecar.image.tag=9.9.9".into(),
        ];
        for v in values {
            args.extend(["--set".to_string(), v.to_string()]);
        }
        cp.helm(&args)?.ok("helm install")?;
        let dir = tempfile::tempdir()?;
        let release = Self {
            cp,
            name: name.to_string(),
            kubeconfig: dir.path().join("kubeconfig"),
            namespace,
            dir,
            uninstalled: false,
        };
        // The operator runs with nothing but the chart ServiceAccount's token. RBAC is served from
        // informer caches: wait until the chart's bindings are in effect.
        let user = format!("system:serviceaccount:{}:{}", release.namespace, name);
        let webhook_config = format!(
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/{}",
            release.webhook_configuration()
        );
        let secret = format!("secrets/{}", release.tls_secret());
        let checks = [
            vec!["get", webhook_config.as_str()],
            vec!["get", secret.as_str(), "-n", release.namespace.as_str()],
            vec!["create", "events.events.k8s.io", "-n", "default"],
        ];
        eventually("the chart's RBAC in effect", LIMIT, || {
            let all = checks
                .iter()
                .map(|args| {
                    let mut a = vec!["auth", "can-i"];
                    a.extend(args.iter().copied());
                    let as_user = format!("--as={user}");
                    a.push(&as_user);
                    cp.kubectl(a).map(|o| o.stdout.trim() == "yes")
                })
                .collect::<Result<Vec<bool>>>();
            async move { Ok(all?.into_iter().all(|y| y).then_some(())) }
        })
        .await?;
        let token = cp.mint_token(&release.namespace, name).await?;
        cp.write_kubeconfig_for_token(&release.kubeconfig, &token)?;
        Ok(release)
    }

    fn service(&self) -> String {
        format!("{}-operator", self.name)
    }

    fn webhook_configuration(&self) -> String {
        format!("{}-sidecar-injector", self.name)
    }

    fn tls_secret(&self) -> String {
        format!("{}-operator-tls", self.name)
    }

    /// Start one operator replica as the chart's Deployment would run it (its args and env),
    /// listening on ports of its own; `overrides` replace flags of the chart's.
    async fn operator(&self, identity: &str, overrides: &[(&str, &str)]) -> Result<Operator> {
        let deploy = Api::<Deployment>::namespaced(self.cp.admin_client().await?, &self.namespace)
            .get(&format!("{}-operator", self.name))
            .await?;
        let container = deploy
            .spec
            .and_then(|s| s.template.spec)
            .map(|s| s.containers[0].clone())
            .context("the chart's Deployment has no container")?;
        let (webhook_port, admin_port) = (free_port()?, free_port()?);
        let mut args = container.args.unwrap_or_default();
        let mut set = |flag: &str, value: &str| {
            args.retain(|a| !a.starts_with(&format!("--{flag}=")));
            args.push(format!("--{flag}={value}"));
        };
        set("admin-listen", &format!("127.0.0.1:{admin_port}"));
        set("webhook-listen", &format!("0.0.0.0:{webhook_port}"));
        // Replicas on one machine: each its own ledger port.
        set("ledger-listen", "127.0.0.1:0");
        // The chart's env: POD_NAME and POD_NAMESPACE from the downward API.
        set("identity", identity);
        set("lease-namespace", &self.namespace);
        for (flag, value) in overrides {
            set(flag, value);
        }
        let log = self.dir.path().join(format!("{identity}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(operator_binary()?)
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,gatehouse_operator=debug")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("failed to start gatehouse-operator")?;
        let operator = Operator {
            child,
            log,
            webhook_port,
            admin_port,
        };
        let http = reqwest::Client::new();
        let ready = eventually(&format!("{identity} ready"), LIMIT, || {
            let url = format!("http://127.0.0.1:{admin_port}/readyz");
            let http = http.clone();
            async move {
                Ok(http
                    .get(url)
                    .send()
                    .await?
                    .status()
                    .is_success()
                    .then_some(()))
            }
        })
        .await;
        if let Err(e) = ready {
            bail!("{e:#}\n--- {identity} log ---\n{}", operator.tail());
        }
        Ok(operator)
    }

    /// `helm uninstall`.
    fn uninstall(&mut self) -> Result<()> {
        self.uninstalled = true;
        self.cp
            .helm(["uninstall", &self.name, "--namespace", &self.namespace])?
            .ok("helm uninstall")
            .map(|_| ())
    }

    /// Make these replicas the webhook Service's endpoints.
    async fn route_to(&self, operators: &[&Operator]) -> Result<()> {
        let ip = host_ip()?;
        let endpoints: Vec<(IpAddr, u16)> =
            operators.iter().map(|o| (ip, o.webhook_port)).collect();
        publish_endpoints(
            &self.cp.admin_client().await?,
            &self.namespace,
            &self.service(),
            "webhook",
            &endpoints,
        )
        .await
    }

    /// The `caBundle` of each webhook of the release's configuration.
    async fn ca_bundles(&self) -> Result<Vec<String>> {
        let config = Api::<MutatingWebhookConfiguration>::all(self.cp.admin_client().await?)
            .get(&self.webhook_configuration())
            .await?;
        Ok(config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| {
                String::from_utf8_lossy(&w.client_config.ca_bundle.unwrap_or_default().0)
                    .into_owned()
            })
            .collect())
    }

    /// Wait until the API server can call the webhook: the caBundle is written and a dry-run pod
    /// in `namespace` (opted in) comes back injected.
    async fn wait_serving(&self, namespace: &str) -> Result<()> {
        let pods = Api::<Pod>::namespaced(self.cp.admin_client().await?, namespace);
        eventually("the webhook answering the API server", LIMIT, || {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(app_pod("probe", &[]))?;
                let created = pods
                    .create(
                        &PostParams {
                            dry_run: true,
                            ..PostParams::default()
                        },
                        &pod,
                    )
                    .await?;
                Ok(is_injected(&created).then_some(()))
            }
        })
        .await
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.uninstalled {
            return;
        }
        if let Ok(out) = self
            .cp
            .helm(["uninstall", &self.name, "--namespace", &self.namespace])
            && !out.success
        {
            eprintln!("helm uninstall {}: {}", self.name, out.stderr);
        }
    }
}

struct Operator {
    child: Child,
    log: PathBuf,
    webhook_port: u16,
    admin_port: u16,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn metric(&self, http: &reqwest::Client, line_start: &str) -> Result<f64> {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// SIGKILL, as a lost node would.
    fn kill(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -KILL {} failed", self.child.id());
        Ok(())
    }

    /// Fail on any 403 in the log: the chart's RBAC must cover what the webhook does.
    fn assert_never_forbidden(&self) -> Result<()> {
        let log = self.log();
        let denied: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains("\"code\":403") || l.contains("code: 403")
            })
            .collect();
        ensure!(
            denied.is_empty(),
            "the chart's RBAC refused the operator:\n{}",
            denied.join("\n")
        );
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace (with the `default` ServiceAccount no controller creates here), opted in or not.
async fn namespace(cp: &ControlPlane, prefix: &str, opted_in: bool) -> Result<String> {
    let ns = cp.create_namespace(prefix).await?;
    if opted_in {
        Api::<Namespace>::all(cp.admin_client().await?)
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"gatehouse.dev/inject": "enabled"}}})),
            )
            .await?;
    }
    cp.create_service_account(&ns, "default").await?;
    cp.create_service_account(&ns, "app").await?;
    Ok(ns)
}

/// A pod with an app container that sets its own `OPENAI_BASE_URL` and a worker that sets none.
fn app_pod(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "serviceAccountName": "app",
            "containers": [
                {"name": "app", "image": "app:1",
                 "env": [{"name": "OPENAI_BASE_URL", "value": "http://my-own-proxy/v1"},
                         {"name": "LOG_LEVEL", "value": "debug"}]},
                {"name": "worker", "image": "worker:1"},
            ],
        },
    })
}

async fn create(client: &Client, ns: &str, pod: Value) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(pod)?;
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?)
}

fn is_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .any(|c| c.name == "gatehouse")
    })
}

/// Every point of what an injected pod gets, on the pod as the API server stored it.
fn assert_injected(pod: &Pod, release: &Release) -> Result<()> {
    let v = serde_json::to_value(pod)?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = &v["spec"];
    let sidecar = &spec["initContainers"][0];
    ensure!(
        sidecar["name"] == "gatehouse",
        "{name}: no native sidecar first: {spec}"
    );
    ensure!(sidecar["restartPolicy"] == "Always", "{name}: {sidecar}");
    ensure!(sidecar["image"] == IMAGE, "{name}: {sidecar}");
    ensure!(sidecar["args"] == json!(["--kube"]), "{name}: {sidecar}");
    let startup = &sidecar["startupProbe"]["httpGet"];
    ensure!(
        startup["path"] == "/readyz" && startup["port"] == 4001,
        "{name}: {sidecar}"
    );
    let sc = &sidecar["securityContext"];
    ensure!(
        sc["runAsNonRoot"] == true
            && sc["readOnlyRootFilesystem"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["capabilities"]["drop"] == json!(["ALL"]),
        "{name}: securityContext {sc}"
    );
    ensure!(
        sidecar["resources"]
            == json!({"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}),
        "{name}: resources {}",
        sidecar["resources"]
    );
    let env: BTreeMap<String, Value> = sidecar["env"]
        .as_array()
        .context("sidecar env")?
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e.clone())))
        .collect();
    for (var, path) in [
        ("GATEHOUSE_NAMESPACE", "metadata.namespace"),
        ("GATEHOUSE_POD_NAME", "metadata.name"),
        ("GATEHOUSE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ] {
        ensure!(
            env[var]["valueFrom"]["fieldRef"]["fieldPath"] == path,
            "{name}: {var} is not the downward API's {path}: {}",
            env[var]
        );
    }
    let value = |var: &str| env.get(var).and_then(|e| e["value"].as_str()).unwrap_or("");
    ensure!(value("GATEHOUSE_POD_LABELS_FILE") == "/var/run/gatehouse/pod/labels");
    ensure!(
        value("GATEHOUSE_WORKLOAD_LABELS")
            == "app.kubernetes.io/name,app.kubernetes.io/component,team"
    );
    ensure!(
        value("GATEHOUSE_LEDGER_URL")
            == format!(
                "https://{}.{}.svc:8444",
                release.service(),
                release.namespace
            ),
        "{name}: ledger url {}",
        value("GATEHOUSE_LEDGER_URL")
    );
    ensure!(value("GATEHOUSE_LEDGER_TOKEN_FILE") == "/var/run/secrets/gatehouse/ledger/token");
    ensure!(value("GATEHOUSE_LEDGER_CA_FILE") == "/var/run/secrets/gatehouse/ledger/ca.crt");

    // The volumes, and who mounts them.
    let volumes: BTreeMap<String, Value> = spec["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
        .collect();
    ensure!(volumes["gatehouse-keys"]["secret"]["secretName"] == "gatehouse-keys");
    let ledger = &volumes["gatehouse-ledger"]["projected"]["sources"];
    ensure!(
        ledger[0]["serviceAccountToken"]
            == json!({"audience": "gatehouse-ledger", "expirationSeconds": 3600, "path": "token"}),
        "{name}: ledger token {ledger}"
    );
    ensure!(ledger[1]["configMap"]["name"] == "gatehouse-ca");
    let mounts_of = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let sidecar_mounts = mounts_of(sidecar);
    for v in [
        "gatehouse-keys",
        "gatehouse-pod",
        "gatehouse-kube-api",
        "gatehouse-ledger",
    ] {
        ensure!(
            sidecar_mounts.contains(&v.to_string()),
            "{name}: sidecar lacks {v}"
        );
    }
    let keys_volumes: Vec<&String> = volumes
        .iter()
        .filter(|(_, v)| v["secret"]["secretName"] == "gatehouse-keys")
        .map(|(n, _)| n)
        .collect();
    let others = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .chain(spec["containers"].as_array().into_iter().flatten());
    for c in others {
        let cname = c["name"].as_str().unwrap_or("");
        let mounts = mounts_of(c);
        for v in &keys_volumes {
            ensure!(
                !mounts.contains(v),
                "{name}: {cname} mounts the keys volume {v}"
            );
        }
        for v in ["gatehouse-ledger", "gatehouse-kube-api", "gatehouse-pod"] {
            ensure!(
                !mounts.contains(&v.to_string()),
                "{name}: {cname} mounts {v}"
            );
        }
        let text = c.to_string();
        ensure!(
            !text.contains("secretKeyRef") && !text.contains("secretRef"),
            "{name}: {cname} takes env from a Secret: {c}"
        );
    }
    // App containers: the base URLs, never overwriting the pod's own.
    let app_env = |cname: &str, var: &str| -> Option<String> {
        spec["containers"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == cname)?["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == var)?["value"]
            .as_str()
            .map(String::from)
    };
    ensure!(app_env("app", "OPENAI_BASE_URL").as_deref() == Some("http://my-own-proxy/v1"));
    ensure!(app_env("app", "LOG_LEVEL").as_deref() == Some("debug"));
    ensure!(app_env("app", "ANTHROPIC_BASE_URL").as_deref() == Some("http://127.0.0.1:4000"));
    ensure!(app_env("worker", "OPENAI_BASE_URL").as_deref() == Some("http://127.0.0.1:4000/v1"));
    ensure!(app_env("worker", "ANTHROPIC_BASE_URL").as_deref() == Some("http://127.0.0.1:4000"));

    let annotations = &v["metadata"]["annotations"];
    ensure!(
        annotations["gatehouse.dev/sidecar-version"] == "9.9.9",
        "{name}: {annotations}"
    );
    let status: Value = serde_json::from_str(
        annotations["gatehouse.dev/status"]
            .as_str()
            .context("status annotation")?,
    )?;
    ensure!(
        status["mode"] == "native"
            && status["image"] == IMAGE
            && status["env"]["app"] == json!(["ANTHROPIC_BASE_URL"])
            && status["env"]["worker"] == json!(["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"]),
        "{name}: status {status}"
    );
    Ok(())
}

/// The parts of a pod injection would change.
fn shape(pod: &Pod) -> Value {
    let v = serde_json::to_value(pod).unwrap_or_default();
    json!({
        "init": v["spec"]["initContainers"],
        "containers": v["spec"]["containers"],
        "volumes": v["spec"]["volumes"],
        "annotations": v["metadata"]["annotations"],
    })
}

#[tokio::test]
async fn pods_of_opted_in_namespaces_come_back_injected_and_the_rest_unchanged() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let release = Release::install(cp, "gatehouse-inject", &[]).await?;
    let operator = release.operator("inject-a", &[]).await?;
    release.route_to(&[&operator]).await?;
    let on = namespace(cp, "inject-on", true).await?;
    let off = namespace(cp, "inject-off", false).await?;
    let elsewhere = namespace(cp, "inject-pod-label", false).await?;
    release.wait_serving(&on).await?;
    let admin = cp.admin_client().await?;
    let result = async {
        // A Deployment: its ReplicaSet would create this pod from the template.
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "chat"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "chat"}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "chat", "team": "search"}},
                    "spec": app_pod("x", &[])["spec"].clone(),
                },
            },
        }))?;
        let deployment = Api::<Deployment>::namespaced(admin.clone(), &on)
            .create(&PostParams::default(), &deployment)
            .await?;
        let template = deployment.spec.context("spec")?.template;
        let mut from_template = serde_json::to_value(&template)?;
        from_template["metadata"]["generateName"] = json!("chat-5d8f7c9b4-");
        from_template["metadata"]["labels"]["pod-template-hash"] = json!("5d8f7c9b4");
        from_template["apiVersion"] = json!("v1");
        from_template["kind"] = json!("Pod");
        let replica = create(&admin, &on, from_template).await?;
        assert_injected(&replica, &release).context("the Deployment's pod")?;
        let bare = create(&admin, &on, app_pod("bare", &[])).await?;
        assert_injected(&bare, &release).context("the bare pod")?;

        // Not opted in: unchanged. Opted in by its own label elsewhere: injected. Opted out: not.
        let submitted: Pod = serde_json::from_value(app_pod("plain", &[]))?;
        let plain = create(&admin, &off, app_pod("plain", &[])).await?;
        ensure!(
            !is_injected(&plain),
            "a pod of a namespace not opted in was injected"
        );
        ensure!(
            plain.metadata.annotations.is_none()
                && plain.spec.as_ref().map(|s| &s.containers[1].env)
                    == submitted.spec.as_ref().map(|s| &s.containers[1].env),
            "a pod of a namespace not opted in changed: {:?}",
            shape(&plain)
        );
        let opted = create(
            &admin,
            &elsewhere,
            app_pod("opted", &[("gatehouse.dev/inject", "enabled")]),
        )
        .await?;
        assert_injected(&opted, &release).context("a pod opted in by its label")?;
        let out = create(
            &admin,
            &on,
            app_pod("out", &[("gatehouse.dev/inject", "disabled")]),
        )
        .await?;
        ensure!(
            !is_injected(&out) && out.metadata.annotations.is_none(),
            "opt-out ignored"
        );

        // Keys: an app container mounting the keys Secret is refused, opted out or not.
        for labels in [vec![], vec![("gatehouse.dev/inject", "disabled")]] {
            let mut thief = app_pod("thief", &labels);
            thief["spec"]["volumes"] =
                json!([{"name": "k", "secret": {"secretName": "gatehouse-keys"}}]);
            thief["spec"]["containers"][0]["volumeMounts"] =
                json!([{"name": "k", "mountPath": "/keys"}]);
            let err = create(&admin, &on, thief)
                .await
                .err()
                .context("a pod mounting the keys was admitted")?;
            let msg = format!("{err:#}");
            ensure!(
                msg.contains("denied the request") && msg.contains("gatehouse-keys"),
                "unexpected refusal: {msg}"
            );
        }

        // Reinvocation: an injected pod goes through again unchanged (a copy created anew, and a
        // dry run of it).
        let mut again = serde_json::to_value(&bare)?;
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
        ] {
            if let Some(m) = again["metadata"].as_object_mut() {
                m.remove(field);
            }
        }
        again["metadata"]["name"] = json!("bare-again");
        if let Some(o) = again.as_object_mut() {
            o.remove("status");
        }
        let copy = create(&admin, &on, again.clone()).await?;
        ensure!(
            shape(&copy) == shape(&bare),
            "a second pass changed the pod:\n{}\n{}",
            shape(&copy),
            shape(&bare)
        );
        again["metadata"]["name"] = json!("bare-dry-run");
        let dry: Pod = serde_json::from_value(again)?;
        let dry = Api::<Pod>::namespaced(admin.clone(), &on)
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &dry,
            )
            .await?;
        ensure!(
            shape(&dry) == shape(&bare),
            "a dry-run second pass changed the pod"
        );

        // The CA bundle the sidecar will trust the ledger with: in the namespace, the same as the
        // webhook's caBundle, owned by the webhook configuration.
        let ca = Api::<ConfigMap>::namespaced(admin.clone(), &on)
            .get("gatehouse-ca")
            .await?;
        let bundle = ca
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .unwrap_or_default();
        ensure!(
            bundle.contains("BEGIN CERTIFICATE"),
            "gatehouse-ca: {bundle}"
        );
        ensure!(
            release.ca_bundles().await?.iter().all(|b| *b == bundle),
            "bundle differs from caBundle"
        );
        let owner = ca.metadata.owner_references.unwrap_or_default();
        ensure!(
            owner
                .iter()
                .any(|o| o.kind == "MutatingWebhookConfiguration"
                    && o.name == release.webhook_configuration()),
            "gatehouse-ca is not owned by the webhook configuration: {owner:?}"
        );
        ensure!(
            Api::<ConfigMap>::namespaced(admin.clone(), &off)
                .get_opt("gatehouse-ca")
                .await?
                .is_none(),
            "gatehouse-ca written where nothing was injected"
        );
        operator.assert_never_forbidden()
    }
    .await;
    result.map_err(|e| anyhow!("{e:#}\n--- operator log ---\n{}", operator.tail()))
}

#[tokio::test]
async fn both_replicas_serve_the_webhook_with_one_certificate() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let release = Release::install(cp, "gatehouse-replicas", &[]).await?;
    let a = release.operator("replica-a", &[]).await?;
    let b = release.operator("replica-b", &[]).await?;
    let on = namespace(cp, "replicas", true).await?;
    let admin = cp.admin_client().await?;
    let http = reqwest::Client::new();
    let result = async {
        // One Lease holder; the standby serves the webhook as well.
        let lease = eventually("a Lease holder", LIMIT, || {
            let leases = Api::<Lease>::namespaced(admin.clone(), &release.namespace);
            async move {
                Ok(leases
                    .get_opt("gatehouse-operator")
                    .await?
                    .and_then(|l| l.spec?.holder_identity))
            }
        })
        .await?;
        let (leader, standby) = match lease.as_str() {
            "replica-a" => (&a, &b),
            "replica-b" => (&b, &a),
            other => bail!("lease holder {other:?}"),
        };
        // Both serve the certificate of the one Secret.
        let secret = Api::<Secret>::namespaced(admin.clone(), &release.namespace)
            .get(&release.tls_secret())
            .await?;
        let cert = secret
            .data
            .and_then(|d| d.get("tls.crt").cloned())
            .context("tls.crt")?;
        let served_a = served_certificate(a.webhook_port, &release).await?;
        let served_b = served_certificate(b.webhook_port, &release).await?;
        ensure!(served_a == served_b && pem_der(&String::from_utf8_lossy(&cert.0))? == served_a);

        // The API server keeps its connection to an endpoint, as to a pod that is still running:
        // the standby alone first, then the leader alone once the standby is gone.
        let injected = "gatehouse_operator_admissions_total{result=\"injected\"}";
        release.route_to(&[standby]).await?;
        let before = standby.metric(&http, injected).await?;
        let pod = create(&admin, &on, app_pod("via-standby", &[])).await?;
        assert_injected(&pod, &release)?;
        ensure!(
            standby.metric(&http, injected).await? > before,
            "the standby did not inject the pod sent to it"
        );
        standby.assert_never_forbidden()?;
        release.route_to(&[leader]).await?;
        standby.kill()?;
        let before = leader.metric(&http, injected).await?;
        let mut n = 0;
        let pod = eventually("a pod injected by the leader", LIMIT, || {
            n += 1;
            let (admin, on) = (admin.clone(), on.clone());
            let name = format!("via-leader-{n}");
            async move { Ok(create(&admin, &on, app_pod(&name, &[])).await.ok()) }
        })
        .await?;
        assert_injected(&pod, &release)?;
        ensure!(
            leader.metric(&http, injected).await? > before,
            "the standby gone, the leader injected nothing"
        );
        leader.assert_never_forbidden()
    }
    .await;
    result.map_err(|e| anyhow!("{e:#}\n--- a ---\n{}\n--- b ---\n{}", a.tail(), b.tail()))
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow!("failed to parse a certificate: {e}"))?
        .to_vec())
}

/// The certificate a replica serves, through a TLS handshake for the Service's name that trusts
/// only the CA bundle the webhook configuration holds (as the API server does).
async fn served_certificate(port: u16, release: &Release) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for bundle in release.ca_bundles().await? {
        for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(cert.map_err(|e| anyhow!("{e}"))?)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(format!("{}.{}.svc", release.service(), release.namespace))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no certificate")?;
    Ok(certs[0].to_vec())
}

#[tokio::test]
async fn certificates_rotate_before_expiry_without_a_restart() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let release = Release::install(cp, "gatehouse-rotate", &[]).await?;
    // A serving certificate of 12 s (re-issued with 4 s left), a CA of 30 s (replaced with 10 s
    // left, trusted a check interval before it signs); read every 500 ms.
    let overrides = [
        ("tls-validity-seconds", "12"),
        ("tls-ca-validity-seconds", "30"),
        ("tls-check-interval-ms", "500"),
    ];
    let a = release.operator("rotate-a", &overrides).await?;
    let b = release.operator("rotate-b", &overrides).await?;
    release.route_to(&[&a, &b]).await?;
    let on = namespace(cp, "rotate", true).await?;
    release.wait_serving(&on).await?;
    let admin = cp.admin_client().await?;
    let (pid_a, pid_b) = (a.child.id(), b.child.id());
    let result = async {
        let first_ca = release.ca_bundles().await?[0].clone();
        let first = served_certificate(a.webhook_port, &release).await?;
        let started = Instant::now();
        let (mut serving_seen, mut bundles_seen) = (vec![first], vec![first_ca.clone()]);
        let mut n = 0;
        // Create a pod every ~300 ms for 45 s: through a serving rotation every 8 s and a CA
        // rotation after 20 s, every pod is injected (the API server always trusts what is served).
        while started.elapsed() < Duration::from_secs(45) {
            n += 1;
            let pod = create(&admin, &on, app_pod(&format!("r{n}"), &[])).await
                .with_context(|| format!("pod r{n} at {:?}", started.elapsed()))?;
            ensure!(is_injected(&pod), "pod r{n} not injected");
            for port in [a.webhook_port, b.webhook_port] {
                let served = served_certificate(port, &release).await
                    .with_context(|| format!("handshake at {:?}", started.elapsed()))?;
                if !serving_seen.contains(&served) {
                    serving_seen.push(served);
                }
            }
            let bundle = release.ca_bundles().await?[0].clone();
            if !bundles_seen.contains(&bundle) {
                bundles_seen.push(bundle);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ensure!(serving_seen.len() >= 4, "serving certificates seen: {}", serving_seen.len());
        ensure!(bundles_seen.len() >= 2, "the CA bundle never changed");
        let last = bundles_seen.last().context("bundle")?;
        ensure!(!last.contains(&first_ca) || last.len() > first_ca.len(), "the CA never rotated");
        ensure!(a.child.id() == pid_a && b.child.id() == pid_b);
        let http = reqwest::Client::new();
        let issued = a.metric(&http, "gatehouse_operator_cert_changes_total").await?
            + b.metric(&http, "gatehouse_operator_cert_changes_total").await?;
        ensure!(issued >= 4.0, "cert changes counted: {issued}");
        println!(
            "rotation: {n} pods over {:?}, {} serving certificates and {} CA bundles seen, no restart",
            started.elapsed(),
            serving_seen.len(),
            bundles_seen.len()
        );
        a.assert_never_forbidden()?;
        b.assert_never_forbidden()
    }
    .await;
    let mut a = a;
    let alive = a.child.try_wait()?.is_none();
    result
        .and_then(|()| {
            if alive {
                Ok(())
            } else {
                Err(anyhow!("replica a exited"))
            }
        })
        .map_err(|e| anyhow!("{e:#}\n--- a ---\n{}\n--- b ---\n{}", a.tail(), b.tail()))
}

#[tokio::test]
async fn with_the_webhook_down_fail_refuses_and_ignore_admits_without_a_sidecar() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let admin = cp.admin_client().await?;
    for policy in ["Fail", "Ignore"] {
        let release = Release::install(
            cp,
            &format!("gatehouse-down-{}", policy.to_lowercase()),
            &[
                &format!("webhook.failurePolicy={policy}"),
                "webhook.timeoutSeconds=2",
            ],
        )
        .await?;
        let on = namespace(cp, "down", true).await?;
        let off = namespace(cp, "down-off", false).await?;
        let operator = release.operator("down", &[]).await?;
        release.route_to(&[&operator]).await?;
        release.wait_serving(&on).await?;
        // Down: the process is gone, its endpoint stays (as a crashed pod's does, until its
        // readiness probe fails).
        drop(operator);
        let started = Instant::now();
        let created = create(&admin, &on, app_pod("while-down", &[])).await;
        let took = started.elapsed();
        match policy {
            "Fail" => {
                let err = created
                    .err()
                    .context("Fail admitted a pod while the webhook was down")?;
                let msg = format!("{err:#}");
                ensure!(
                    msg.contains("failed calling webhook") && msg.contains("inject.gatehouse.dev"),
                    "unexpected error: {msg}"
                );
            }
            _ => {
                let pod = created.context("Ignore refused a pod while the webhook was down")?;
                ensure!(!is_injected(&pod), "injected while down?");
                ensure!(pod.metadata.annotations.is_none());
            }
        }
        // Namespaces not opted in never call the webhook.
        let plain = create(&admin, &off, app_pod("plain", &[])).await?;
        ensure!(!is_injected(&plain));
        // No endpoint at all (every replica NotReady): the same.
        publish_endpoints(
            &admin,
            &release.namespace,
            &release.service(),
            "webhook",
            &[],
        )
        .await?;
        let none = eventually("the endpoints gone", LIMIT, || {
            let admin = admin.clone();
            let on = on.clone();
            async move {
                let r = create(
                    &admin,
                    &on,
                    app_pod(&format!("none-{}", rand_suffix()), &[]),
                )
                .await;
                Ok(match (policy, r) {
                    ("Fail", Err(e)) if format!("{e:#}").contains("no endpoints available") => {
                        Some(())
                    }
                    ("Ignore", Ok(p)) if !is_injected(&p) => Some(()),
                    _ => None,
                })
            }
        })
        .await;
        none.with_context(|| format!("failurePolicy {policy} with no endpoints"))?;
        println!("failurePolicy {policy}: webhook down answered in {took:?}");
    }
    Ok(())
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            & 0xffff_ffff
    )
}

#[tokio::test]
async fn host_network_pods_are_skipped_with_an_event_or_refused() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let admin = cp.admin_client().await?;
    let release = Release::install(cp, "gatehouse-hostnet", &[]).await?;
    let on = namespace(cp, "hostnet", true).await?;
    let host_pod = |name: &str| {
        let mut p = app_pod(name, &[]);
        p["spec"]["hostNetwork"] = json!(true);
        p
    };
    {
        let operator = release.operator("hostnet-skip", &[]).await?;
        release.route_to(&[&operator]).await?;
        release.wait_serving(&on).await?;
        let pod = create(&admin, &on, host_pod("on-the-node")).await?;
        ensure!(!is_injected(&pod), "a hostNetwork pod was injected");
        let events = Api::<Event>::namespaced(admin.clone(), &on);
        let note = eventually("a Warning Event for the hostNetwork pod", LIMIT, || {
            let events = events.clone();
            async move {
                Ok(events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find_map(|e| {
                        (e.reason.as_deref() == Some("HostNetworkSkipped")
                            && e.type_.as_deref() == Some("Warning")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("on-the-node"))
                        .then(|| e.note.unwrap_or_default())
                    }))
            }
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", operator.tail()))?;
        ensure!(
            note.contains("loopback") && note.contains("4000"),
            "event note: {note}"
        );
        operator.assert_never_forbidden()?;
    }
    let operator = release
        .operator("hostnet-refuse", &[("inject-host-network", "refuse")])
        .await?;
    release.route_to(&[&operator]).await?;
    let refused = eventually("the refusing replica answering", LIMIT, || {
        let admin = admin.clone();
        let on = on.clone();
        let pod = host_pod(&format!("refused-{}", rand_suffix()));
        async move {
            Ok(match create(&admin, &on, pod).await {
                Err(e) if format!("{e:#}").contains("refuses to inject") => Some(format!("{e:#}")),
                _ => None,
            })
        }
    })
    .await?;
    ensure!(
        refused.contains("gatehouse.dev/inject=disabled"),
        "{refused}"
    );
    // Opted out, the same pod is admitted.
    let pod = create(&admin, &on, {
        let mut p = host_pod("opted-out");
        p["metadata"]["labels"] = json!({"gatehouse.dev/inject": "disabled"});
        p
    })
    .await?;
    ensure!(!is_injected(&pod));
    Ok(())
}

#[tokio::test]
async fn the_secret_source_serves_what_cert_manager_writes_and_follows_renewals() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let admin = cp.admin_client().await?;
    // cert-manager is not installed here: the chart would create a Certificate, so install with
    // the operator source and then play cert-manager's part (the Secret and the caBundle) by hand.
    let release = Release::install(cp, "gatehouse-certmanager", &[]).await?;
    let names = vec![format!("{}.{}.svc", release.service(), release.namespace)];
    let issue = |names: &[String]| -> Result<(String, String, String)> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(names.to_vec())?.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem(), ca_cert.pem()))
    };
    let write = |(crt, key, ca): (String, String, String)| {
        let admin = admin.clone();
        let (ns, secret, config) = (
            release.namespace.clone(),
            release.tls_secret(),
            release.webhook_configuration(),
        );
        async move {
            Api::<Secret>::namespaced(admin.clone(), &ns)
                .patch(
                    &secret,
                    &PatchParams::apply("cert-manager").force(),
                    &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                        "stringData": {"tls.crt": crt, "tls.key": key, "ca.crt": ca.clone()},
                    })),
                )
                .await?;
            let bundle = k8s_openapi::ByteString(ca.into_bytes());
            Api::<MutatingWebhookConfiguration>::all(admin)
                .patch(&config, &PatchParams::default(), &Patch::Strategic(json!({"webhooks": [
                    {"name": "namespace.inject.gatehouse.dev", "clientConfig": {"caBundle": bundle}},
                    {"name": "pod.inject.gatehouse.dev", "clientConfig": {"caBundle": bundle}},
                ]})))
                .await?;
            anyhow::Ok(crt)
        }
    };
    let first = write(issue(&names)?).await?;
    let operator = release
        .operator(
            "certmanager",
            &[("tls-source", "secret"), ("tls-check-interval-ms", "300")],
        )
        .await?;
    release.route_to(&[&operator]).await?;
    let on = namespace(cp, "certmanager", true).await?;
    let result = async {
        release.wait_serving(&on).await?;
        ensure!(served_certificate(operator.webhook_port, &release).await? == pem_der(&first)?);
        // A renewal, as cert-manager does it: new Secret contents (here with a new CA, injected).
        let second = write(issue(&names)?).await?;
        eventually("the renewed certificate served", LIMIT, || async {
            Ok((served_certificate(operator.webhook_port, &release)
                .await
                .ok()
                == Some(pem_der(&second)?))
            .then_some(()))
        })
        .await?;
        let pod = create(&admin, &on, app_pod("after-renewal", &[])).await?;
        ensure!(is_injected(&pod));
        // The operator never wrote the caBundle or the Secret: cert-manager's alone.
        ensure!(
            !operator.log().contains("caBundle written")
                && !operator.log().contains("material updated")
        );
        Ok(())
    }
    .await;
    result.map_err(|e| anyhow!("{e:#}\n--- operator ---\n{}", operator.tail()))
}

/// Every object of the cluster, `kind namespace/name` → the object.
fn snapshot(cp: &ControlPlane) -> Result<BTreeMap<String, Value>> {
    let kinds: Vec<String> = cp
        .kubectl_ok(["api-resources", "--verbs=list", "-o", "name"])?
        .lines()
        .map(str::to_string)
        .collect();
    let out = cp.kubectl_ok(["get", &kinds.join(","), "-A", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            (
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or("")
                ),
                o.clone(),
            )
        })
        .collect())
}

/// `helm install`, a pod injected, `helm upgrade` (the operator's certificate and caBundle
/// survive it, the webhook keeps working), `helm uninstall`: what remains is nothing of the
/// chart's but its CRDs (Helm keeps those by design), only what the operator wrote in its own
/// namespace (its Lease and Events, gone with the namespace) and objects whose every owner is gone
/// (the garbage collector's, which does not run here). A control plane of its own, so no other test's objects blur the difference.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall_leave_nothing_behind() -> Result<()> {
    // Leaked: `Release` wants a `'static` control plane; the harness's watchdog stops it when
    // this test binary exits.
    let cp: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start()?));
    let before = snapshot(cp)?;
    let mut release = Release::install(cp, "gatehouse-lifecycle", &[]).await?;
    let work = namespace(cp, "lifecycle", true).await?;
    let admin = cp.admin_client().await?;
    let mut operator = release.operator("lifecycle", &[]).await?;
    release.route_to(&[&operator]).await?;
    release.wait_serving(&work).await?;
    ensure!(is_injected(
        &create(&admin, &work, app_pod("before-upgrade", &[])).await?
    ));
    let tls = |admin: Client, ns: String, name: String| async move {
        let secret = Api::<Secret>::namespaced(admin, &ns).get(&name).await?;
        anyhow::Ok(secret.data.and_then(|d| d.get("tls.crt").cloned()))
    };
    let cert = tls(
        admin.clone(),
        release.namespace.clone(),
        release.tls_secret(),
    )
    .await?;
    let bundles = release.ca_bundles().await?;
    ensure!(cert.is_some() && bundles.iter().all(|b| b.contains("BEGIN CERTIFICATE")));

    // An upgrade that changes the webhook configuration keeps what the operator wrote.
    cp.helm([
        "upgrade",
        &release.name,
        &chart(),
        "--namespace",
        &release.namespace,
        "--reuse-values",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.timeoutSeconds=3",
    ])?
    .ok("helm upgrade")?;
    let config = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .get(&release.webhook_configuration())
        .await?;
    let webhooks = config.webhooks.unwrap_or_default();
    ensure!(
        webhooks
            .iter()
            .all(|w| w.failure_policy.as_deref() == Some("Ignore"))
    );
    ensure!(
        release.ca_bundles().await? == bundles,
        "helm upgrade lost the caBundle"
    );
    ensure!(
        tls(
            admin.clone(),
            release.namespace.clone(),
            release.tls_secret()
        )
        .await?
            == cert,
        "helm upgrade lost the serving certificate"
    );
    ensure!(is_injected(
        &create(&admin, &work, app_pod("after-upgrade", &[])).await?
    ));

    // SIGTERM: the operator lets its Lease go; then uninstall.
    Command::new("kill")
        .args(["-TERM", &operator.child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while operator.child.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "the operator did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    operator.assert_never_forbidden()?;
    release.uninstall()?;
    let after = snapshot(cp)?;
    let uids: std::collections::BTreeSet<&str> = after
        .values()
        .filter_map(|o| o["metadata"]["uid"].as_str())
        .collect();
    let mut left = Vec::new();
    for (key, object) in &after {
        if before.contains_key(key) {
            continue;
        }
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
        let kind = object["kind"].as_str().unwrap_or("");
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        // The test's own: its namespaces, ServiceAccounts and pods.
        let ours = (kind == "Namespace" && (name == release.namespace || name == work))
            || (ns == work && (kind == "Pod" || kind == "ServiceAccount"));
        // The operator's, in its own namespace.
        let operators = ns == release.namespace && (kind == "Lease" || kind == "Event");
        // Helm never deletes the CRDs of a chart's crds/ folder (that would delete every
        // ModelProvider, Route and Budget); the API server serves them as an APIService.
        let crds = (kind == "CustomResourceDefinition" && name.ends_with(".gatehouse.dev"))
            || (kind == "APIService" && name == "v1alpha1.gatehouse.dev");
        let owners = object["metadata"]["ownerReferences"].as_array();
        let orphaned = owners.is_some_and(|o| {
            !o.is_empty()
                && o.iter()
                    .all(|r| !uids.contains(r["uid"].as_str().unwrap_or("")))
        });
        if !(ours || operators || crds || orphaned) {
            left.push(key.clone());
        }
    }
    ensure!(
        left.is_empty(),
        "left behind after helm uninstall: {left:#?}"
    );
    // The gatehouse-ca ConfigMap is such an orphan: owned by the deleted webhook configuration.
    let ca = after
        .get(&format!("ConfigMap {work}/gatehouse-ca"))
        .context("gatehouse-ca was never written")?;
    ensure!(ca["metadata"]["ownerReferences"][0]["kind"] == "MutatingWebhookConfiguration");
    // And the cluster works as before: pods of the labelled namespace are created, not injected.
    ensure!(!is_injected(
        &create(&admin, &work, app_pod("after-uninstall", &[])).await?
    ));
    Ok(())
}

/// A namespace whose ModelProviders use workload identities: the API server accepts them without
/// a key Secret (and refuses a key plus an identity), and a new pod's sidecar, alone, gets the
/// projected ServiceAccount tokens of the right audiences and the env pointing at them.
#[tokio::test]
async fn cloud_identity_tokens_are_mounted_into_the_sidecar_only() -> Result<()> {
    let _alone = one_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let admin = cp.admin_client().await?;
    let release = Release::install(cp, "gatehouse-cloudid", &[]).await?;
    let on = namespace(cp, "cloudid", true).await?;
    let providers = Api::<gatehouse_crds::ModelProvider>::namespaced(admin.clone(), &on);
    for (name, spec) in [
        (
            "bedrock-irsa",
            json!({"type": "bedrock", "bedrock": {"region": "us-east-1",
                "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/gatehouse-bedrock"}}}),
        ),
        (
            "azure-wi",
            json!({"type": "azureOpenAI", "endpoint": "https://res.openai.azure.com",
                "azure": {"workloadIdentity": {"clientId": "11111111-2222-3333-4444-555555555555",
                                                "tenantId": "99999999-8888-7777-6666-000000000000"}}}),
        ),
        (
            "vertex",
            json!({"type": "vertexAI", "vertex": {"project": "my-project", "location": "global"}}),
        ),
    ] {
        providers
            .create(&PostParams::default(), &provider_object(name, spec)?)
            .await
            .with_context(|| format!("create ModelProvider {name}"))?;
    }
    // A key and an identity at once: refused by the CRD's rules.
    let both = providers
        .create(
            &PostParams::default(),
            &provider_object(
                "both",
                json!({"type": "bedrock", "apiKeySecretRef": {"name": "k", "key": "k"},
                    "bedrock": {"region": "us-east-1", "podIdentity": {}}}),
            )?,
        )
        .await;
    ensure!(
        both.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("exactly one credential source")),
        "{both:?}"
    );
    let operator = release.operator("cloudid", &[]).await?;
    release.route_to(&[&operator]).await?;
    release.wait_serving(&on).await?;
    let pod = create(&admin, &on, app_pod("cloud-app", &[])).await?;
    ensure!(is_injected(&pod), "not injected");
    let spec = pod.spec.as_ref().context("no spec")?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "gatehouse-cloud-identity")
        .context("no cloud identity volume")?;
    let mut audiences: Vec<(String, String, Option<i64>)> = volume
        .projected
        .as_ref()
        .and_then(|p| p.sources.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.service_account_token)
        .map(|t| (t.audience.unwrap_or_default(), t.path, t.expiration_seconds))
        .collect();
    audiences.sort();
    ensure!(
        audiences
            == vec![
                (
                    "api://AzureADTokenExchange".to_string(),
                    "azure-identity-token".to_string(),
                    Some(3600)
                ),
                (
                    "sts.amazonaws.com".to_string(),
                    "aws-web-identity-token".to_string(),
                    Some(3600)
                ),
            ],
        "{audiences:?}"
    );
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut sidecars = 0;
    for c in all {
        let mounts = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "gatehouse-cloud-identity");
        let env = |name: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        if c.name == "gatehouse" {
            sidecars += 1;
            ensure!(mounts, "the sidecar does not mount the tokens");
            ensure!(
                env("AWS_WEB_IDENTITY_TOKEN_FILE").as_deref()
                    == Some("/var/run/secrets/gatehouse.dev/cloud/aws-web-identity-token"),
                "{c:?}"
            );
            ensure!(
                env("AZURE_FEDERATED_TOKEN_FILE").as_deref()
                    == Some("/var/run/secrets/gatehouse.dev/cloud/azure-identity-token"),
                "{c:?}"
            );
        } else {
            ensure!(!mounts, "container {} mounts the cloud tokens", c.name);
            for var in ["AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE"] {
                ensure!(env(var).is_none(), "container {} has {var}", c.name);
            }
        }
    }
    ensure!(sidecars == 1, "{sidecars} sidecars");
    // A namespace without such providers gets no cloud token.
    let plain = namespace(cp, "cloudid-plain", true).await?;
    release.wait_serving(&plain).await?;
    let pod = create(&admin, &plain, app_pod("plain-app", &[])).await?;
    ensure!(is_injected(&pod));
    ensure!(
        !pod.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(|v| v.name == "gatehouse-cloud-identity"),
        "a namespace without cloud identities got the tokens"
    );
    operator.assert_never_forbidden()?;
    Ok(())
}

fn provider_object(name: &str, spec: Value) -> Result<gatehouse_crds::ModelProvider> {
    Ok(gatehouse_crds::ModelProvider::new(
        name,
        serde_json::from_value(spec).with_context(|| format!("spec of {name}"))?,
    ))
}
