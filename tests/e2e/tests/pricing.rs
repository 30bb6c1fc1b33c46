//! Model pricing through the real API server and the operator: a ModelProvider used with a model
//! that is in neither its `spec.models[].pricing` nor the built-in catalog gets `Priced=False`
//! naming that model (and a Warning event) while staying `Ready`; a whole-number `pricing`
//! override, accepted by the apiserver as int-or-string, turns it `Priced=True` and reaches the
//! rendered config.
//!
//! The operator binary is built by the test (`cargo build -p gatehouse-operator`, a no-op when up
//! to date), so `cargo test -p gatehouse-e2e --test pricing` is enough.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME};
use gatehouse_crds::{ModelProvider, Route};
use gatehouse_e2e::{ControlPlane, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// How long the operator may take to react on a loaded 2-core machine: proves "it happened", not
/// how fast.
const LIMIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The control plane with the CRDs installed and the operator built, once per test binary.
fn setup() -> Result<&'static ControlPlane> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    DONE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .current_dir(repo_root())
            .args(["build", "-p", "gatehouse-operator"])
            .status()
            .map_err(|e| format!("failed to run cargo build: {e}"))?;
        if !built.success() {
            return Err("cargo build -p gatehouse-operator failed".into());
        }
        let crds = repo_root().join("crds");
        cp.install_crds(&crds)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("setup failed: {e}"))?;
    Ok(cp)
}

/// The operator as a process watching one namespace, killed on drop.
struct Operator(Child);

impl Operator {
    fn start(cp: &ControlPlane, ns: &str, log: &Path) -> Result<Self> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(target.join("debug/gatehouse-operator"))
            .env("KUBECONFIG", cp.kubeconfig())
            .args([
                &format!("--admin-listen=127.0.0.1:{port}"),
                "--ledger-listen=127.0.0.1:0",
                &format!("--watch-namespace={ns}"),
                &format!("--lease-namespace={ns}"),
                "--identity=operator-pricing",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("failed to start gatehouse-operator")?;
        Ok(Self(child))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn condition(p: &ModelProvider, type_: &str) -> Option<Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Wait until the provider's `Priced` condition has `status`, and return the provider.
async fn priced(api: &Api<ModelProvider>, status: &str) -> Result<ModelProvider> {
    eventually(&format!("Priced={status}"), LIMIT, || async {
        let p = api.get("llm").await?;
        let ok = condition(&p, "Priced").is_some_and(|c| c.status == status);
        Ok(ok.then_some(p))
    })
    .await
}

/// Events the operator recorded about the provider with `reason`.
async fn events(client: &Client, ns: &str, reason: &str) -> Result<Vec<Event>> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields("involvedObject.kind=ModelProvider"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_models_are_named_on_the_provider_until_priced() -> Result<()> {
    let cp = setup()?;
    let dir = tempfile::tempdir()?;
    let ns = cp.create_namespace("pricing").await?;
    let client = cp.admin_client().await?;
    let pp = PatchParams::apply("e2e").force();
    let providers = Api::<ModelProvider>::namespaced(client.clone(), &ns);
    let provider = |models: serde_json::Value| {
        json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
               "metadata": {"name": "llm"},
               "spec": {"type": "openaiCompatible", "endpoint": "http://127.0.0.1:9/v1",
                        "models": models}})
    };
    providers
        .patch("llm", &pp, &Patch::Apply(provider(json!([]))))
        .await?;
    // One model the catalog prices (openaiCompatible uses OpenAI's names), one it cannot know.
    Api::<Route>::namespaced(client.clone(), &ns)
        .patch(
            "chat",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
                "metadata": {"name": "chat"},
                "spec": {"targets": [
                    {"provider": "llm", "model": "my-llama-3-8b"},
                    {"provider": "llm", "model": "gpt-4o-mini", "priority": 1}]}}),
            ),
        )
        .await?;
    let _operator = Operator::start(cp, &ns, &dir.path().join("operator.log"))?;

    let p = priced(&providers, "False").await?;
    let c = condition(&p, "Priced").context("no Priced condition")?;
    ensure!(c.reason == "UnpricedModels", "reason {:?}", c.reason);
    ensure!(
        c.message.contains("my-llama-3-8b") && !c.message.contains("gpt-4o-mini"),
        "message should name only the unpriced model: {:?}",
        c.message
    );
    // Still served: the provider is Ready and the catalog priced the other model.
    let ready = condition(&p, "Ready").context("no Ready condition")?;
    ensure!(ready.status == "True", "Ready: {ready:?}");
    ensure!(
        p.status.as_ref().and_then(|s| s.models) == Some(1),
        "status.models: {:?}",
        p.status.as_ref().map(|s| s.models)
    );
    let warnings = eventually("an UnpricedModels event", LIMIT, || async {
        let found = events(&client, &ns, "UnpricedModels").await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    ensure!(
        warnings[0].type_.as_deref() == Some("Warning")
            && warnings[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("my-llama-3-8b")),
        "event: {:?}",
        warnings[0]
    );

    // Price it, by hand-written whole numbers (int-or-string): Priced turns True.
    providers
        .patch(
            "llm",
            &pp,
            &Patch::Apply(provider(json!([{"name": "my-llama-3-8b",
                "pricing": {"inputPerMillion": 1, "outputPerMillion": "2.5"}}]))),
        )
        .await
        .context("the apiserver refused a whole-number price")?;
    let p = priced(&providers, "True").await?;
    let c = condition(&p, "Priced").context("no Priced condition")?;
    ensure!(c.reason == "AllModelsPriced", "reason {:?}", c.reason);
    ensure!(
        p.status.as_ref().and_then(|s| s.models) == Some(2),
        "status.models: {:?}",
        p.status.as_ref().map(|s| s.models)
    );
    eventually("an AllModelsPriced event", LIMIT, || async {
        let found = events(&client, &ns, "AllModelsPriced").await?;
        Ok(found
            .iter()
            .any(|e| e.type_.as_deref() == Some("Normal"))
            .then_some(()))
    })
    .await?;

    // The sidecars' config carries both prices: the override and the catalog's.
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(CONFIG_NAME)
        .await?;
    let text = config
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .context("config map without the config")?;
    let config: SidecarConfig =
        serde_json::from_str(text).context("rendered config does not parse")?;
    let models = &config.providers["llm"].models;
    ensure!(
        (
            models["my-llama-3-8b"].input_per_million,
            models["my-llama-3-8b"].output_per_million
        ) == (1.0, 2.5),
        "override: {:?}",
        models.get("my-llama-3-8b")
    );
    ensure!(
        models["gpt-4o-mini"].input_per_million == 0.15,
        "catalog: {:?}",
        models.get("gpt-4o-mini")
    );
    Ok(())
}
