//! The generated CRDs (`crds/*.yaml`) against a real kube-apiserver: they install, document
//! themselves through `kubectl explain`, accept the examples, reject bad objects with a message
//! naming the field, list under `kubectl get gatehouse`, and keep status a subresource.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use gatehouse_e2e::ControlPlane;
use serde::Deserialize;

const CRDS: &[&str] = &[
    "modelproviders.gatehouse.dev",
    "routes.gatehouse.dev",
    "budgets.gatehouse.dev",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs the CRDs once per test binary and waits until they are served.
fn control_plane_with_crds() -> Result<&'static ControlPlane> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    INSTALLED
        .get_or_init(|| install_crds(cp).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("failed to install CRDs: {e}"))?;
    Ok(cp)
}

fn install_crds(cp: &ControlPlane) -> Result<()> {
    let dir = repo_root().join("crds");
    let out = cp.kubectl_ok(["apply", "-f", &dir.to_string_lossy()])?;
    for crd in CRDS {
        ensure!(
            out.contains(crd),
            "kubectl apply -f crds/ did not apply {crd}:\n{out}"
        );
    }
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    args.extend(names.iter().map(String::as_str));
    cp.kubectl_ok(args)?;
    // Established means the CRD is accepted; discovery in kubectl may lag a moment.
    retry(Duration::from_secs(30), || {
        cp.kubectl_ok(["get", "modelproviders,routes,budgets", "-A"])
    })?;
    Ok(())
}

/// Retries `f` every 250 ms until it succeeds or `limit` passes; returns the last error.
fn retry<T>(limit: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A fresh namespace, created through kubectl so sync tests need no runtime.
fn namespace(cp: &ControlPlane, prefix: &str) -> Result<String> {
    let name = format!("e2e-{prefix}-{}", std::process::id());
    cp.kubectl_ok(["create", "namespace", &name])?;
    Ok(name)
}

#[test]
fn crds_apply_and_are_structural() -> Result<()> {
    let cp = control_plane_with_crds()?;
    for crd in CRDS {
        // A non-structural schema is accepted but flagged with a NonStructuralSchema condition.
        let conditions = cp.kubectl_ok([
            "get",
            &format!("crd/{crd}"),
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status};{end}",
        ])?;
        ensure!(
            conditions.contains("Established=True"),
            "{crd}: {conditions}"
        );
        ensure!(
            conditions.contains("NamesAccepted=True"),
            "{crd}: {conditions}"
        );
        ensure!(
            !conditions.contains("NonStructuralSchema"),
            "{crd}: {conditions}"
        );
    }
    // Re-applying the same YAML is a no-op, as CI and helm will do.
    let again = cp.kubectl_ok(["apply", "-f", &repo_root().join("crds").to_string_lossy()])?;
    ensure!(
        again.matches("unchanged").count() == CRDS.len(),
        "re-apply: {again}"
    );
    Ok(())
}

#[test]
fn kubectl_explain_shows_field_docs() -> Result<()> {
    let cp = control_plane_with_crds()?;
    // The OpenAPI document for a new CRD is published a little after it is established.
    let spec = retry(Duration::from_secs(60), || {
        let out = cp.kubectl_ok(["explain", "modelprovider.spec"])?;
        ensure!(out.contains("apiKeySecretRef"), "not yet published:\n{out}");
        Ok(out)
    })?;
    for needle in [
        "type",
        "endpoint",
        "models",
        "API family the provider speaks",
        "openaiCompatible",
    ] {
        ensure!(
            spec.contains(needle),
            "explain modelprovider.spec lacks {needle:?}:\n{spec}"
        );
    }
    let target = cp.kubectl_ok(["explain", "route.spec.targets.priority"])?;
    ensure!(
        target.to_lowercase().contains("lower"),
        "explain route.spec.targets.priority:\n{target}"
    );
    // Prices: every rate documented, and the int-or-string format said where people look.
    let pricing = cp.kubectl_ok(["explain", "modelprovider.spec.models.pricing"])?;
    for needle in [
        "whole number",
        "cacheWritePerMillion",
        "reasoningPerMillion",
        "longContext",
        "catalog",
    ] {
        ensure!(
            pricing.contains(needle),
            "explain modelprovider.spec.models.pricing lacks {needle:?}:\n{pricing}"
        );
    }
    let limit = cp.kubectl_ok(["explain", "budget.spec.limit"])?;
    ensure!(
        limit.contains("usd") && limit.contains("tokens"),
        "explain budget.spec.limit:\n{limit}"
    );
    Ok(())
}

#[test]
fn examples_apply() -> Result<()> {
    let cp = control_plane_with_crds()?;
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("failed to read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    ensure!(
        !files.is_empty(),
        "no manifests in {}: nothing was tested",
        dir.display()
    );

    // Every document of every file, as `kind/name`, to check each one really exists afterwards.
    let mut objects = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("{} is not YAML", file.display()))?;
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().context("document without kind")?;
            let name = value["metadata"]["name"]
                .as_str()
                .context("document without name")?;
            objects.push(format!("{}/{name}", kind.to_lowercase()));
        }
    }

    // As a user would: the whole folder into one namespace.
    let ns = namespace(cp, "examples")?;
    cp.kubectl_ok(["apply", "-n", &ns, "-f", &dir.to_string_lossy()])
        .context("kubectl apply -f examples/ was rejected")?;
    for object in &objects {
        cp.kubectl_ok(["get", "-n", &ns, object])
            .with_context(|| format!("{object} from examples/ does not exist after apply"))?;
    }
    ensure!(
        objects.iter().any(|o| o.starts_with("modelprovider/"))
            && objects.iter().any(|o| o.starts_with("route/"))
            && objects.iter().any(|o| o.starts_with("budget/")),
        "examples/ should show every kind: {objects:?}"
    );
    Ok(())
}

const MP: &str =
    "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: bad\n";
const ROUTE: &str = "apiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata:\n  name: bad\n";
const BUDGET: &str = "apiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata:\n  name: bad\n";

/// (case, kind header, spec YAML, text the rejection must contain: the field path).
const INVALID: &[(&str, &str, &str, &str)] = &[
    (
        "provider type not in enum",
        MP,
        "spec:\n  type: mistral\n  apiKeySecretRef: {name: k, key: k}\n",
        "spec.type: Unsupported value: \"mistral\"",
    ),
    (
        "provider type missing",
        MP,
        "spec:\n  apiKeySecretRef: {name: k, key: k}\n",
        "spec.type: Required value",
    ),
    (
        "provider endpoint not a URL",
        MP,
        "spec:\n  type: openai\n  endpoint: not a url\n  apiKeySecretRef: {name: k, key: k}\n",
        "spec.endpoint",
    ),
    (
        "provider endpoint wrong scheme",
        MP,
        "spec:\n  type: openai\n  endpoint: ftp://api.example.com/v1\n  apiKeySecretRef: {name: k, key: k}\n",
        "spec.endpoint",
    ),
    (
        "provider API key ref missing",
        MP,
        "spec:\n  type: anthropic\n",
        "spec.apiKeySecretRef",
    ),
    (
        "provider API key ref without key",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k}\n",
        "spec.apiKeySecretRef.key: Required value",
    ),
    (
        "openaiCompatible without endpoint",
        MP,
        "spec:\n  type: openaiCompatible\n",
        "spec.endpoint",
    ),
    (
        "azure block on an openai provider",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  azure: {apiVersion: 2024-10-21}\n",
        "spec.azure",
    ),
    (
        "bedrock region malformed",
        MP,
        "spec:\n  type: bedrock\n  apiKeySecretRef: {name: k, key: k}\n  bedrock: {region: US East}\n",
        "spec.bedrock.region",
    ),
    (
        "price not a decimal",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: \"2.5.0\", outputPerMillion: \"10\"}\n",
        "spec.models[0].pricing.inputPerMillion",
    ),
    (
        "price negative",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: \"2.5\", outputPerMillion: \"-10\"}\n",
        "spec.models[0].pricing.outputPerMillion",
    ),
    (
        "price a bare decimal number (must be quoted)",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: 2.5, outputPerMillion: 10}\n",
        "spec.models[0].pricing.inputPerMillion",
    ),
    (
        "price a negative whole number",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: 2, outputPerMillion: -10}\n",
        "spec.models[0].pricing.outputPerMillion",
    ),
    (
        "long-context tier at 0 tokens",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: 2, outputPerMillion: 10, longContext: {aboveInputTokens: 0, inputPerMillion: 4, outputPerMillion: 20}}\n",
        "spec.models[0].pricing.longContext.aboveInputTokens",
    ),
    (
        "price missing output",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - name: gpt-4o\n    pricing: {inputPerMillion: \"2.5\"}\n",
        "spec.models[0].pricing.outputPerMillion: Required value",
    ),
    (
        "model listed twice",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  models:\n  - {name: m, pricing: {inputPerMillion: \"1\", outputPerMillion: \"1\"}}\n  - {name: m, pricing: {inputPerMillion: \"2\", outputPerMillion: \"2\"}}\n",
        "spec.models[1]: Duplicate value",
    ),
    (
        "provider unknown field",
        MP,
        "spec:\n  type: openai\n  apiKeySecretRef: {name: k, key: k}\n  apiKey: sk-plaintext\n",
        "spec.apiKey",
    ),
    (
        "route targets empty",
        ROUTE,
        "spec:\n  targets: []\n",
        "spec.targets",
    ),
    (
        "route targets missing",
        ROUTE,
        "spec:\n  models: [chat]\n",
        "spec.targets: Required value",
    ),
    (
        "rate limit without a number",
        ROUTE,
        "spec:\n  targets: [{provider: p, model: m}]\n  rateLimits: [{name: x}]\n",
        "needs requestsPerMinute, tokensPerMinute or both",
    ),
    (
        "rate limits with one name",
        ROUTE,
        "spec:\n  targets: [{provider: p, model: m}]\n  rateLimits: [{name: x, requestsPerMinute: 1}, {name: x, tokensPerMinute: 1}]\n",
        "spec.rateLimits[].name must be unique",
    ),
    (
        "unknown redaction detector",
        ROUTE,
        "spec:\n  targets: [{provider: p, model: m}]\n  redact: {detectors: [passport]}\n",
        "spec.redact.detectors[0]: Unsupported value",
    ),
    (
        "custom detector named like a built-in one",
        ROUTE,
        "spec:\n  targets: [{provider: p, model: m}]\n  redact: {custom: [{name: email, pattern: x}]}\n",
        "must not be the name of a built-in detector",
    ),
    (
        "route negative weight",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o, weight: -1}\n",
        "spec.targets[0].weight",
    ),
    (
        "route negative priority",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o, priority: -3}\n",
        "spec.targets[0].priority",
    ),
    (
        "route target without provider",
        ROUTE,
        "spec:\n  targets:\n  - {model: gpt-4o}\n",
        "spec.targets[0].provider: Required value",
    ),
    (
        "route timeout not a duration",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o}\n  timeouts: {request: 5 seconds}\n",
        "spec.timeouts.request",
    ),
    (
        "route attempt timeout above request timeout",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o}\n  timeouts: {attempt: 60s, request: 10s}\n",
        "spec.timeouts.attempt",
    ),
    (
        "route zero retry attempts",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o}\n  retry: {attempts: 0}\n",
        "spec.retry.attempts",
    ),
    (
        "route backoff base above max",
        ROUTE,
        "spec:\n  targets:\n  - {provider: openai, model: gpt-4o}\n  retry: {backoff: {base: 10s, max: 1s}}\n",
        "spec.retry.backoff.base",
    ),
    (
        "route alias listed twice",
        ROUTE,
        "spec:\n  models: [chat, chat]\n  targets:\n  - {provider: openai, model: gpt-4o}\n",
        "spec.models[1]: Duplicate value",
    ),
    (
        "budget usd not a decimal",
        BUDGET,
        "spec:\n  limit: {usd: ten}\n  period: monthly\n",
        "spec.limit.usd",
    ),
    (
        "budget usd negative",
        BUDGET,
        "spec:\n  limit: {usd: \"-5\"}\n  period: monthly\n",
        "spec.limit.usd",
    ),
    (
        "budget usd zero",
        BUDGET,
        "spec:\n  limit: {usd: \"0.00\"}\n  period: monthly\n",
        "spec.limit.usd",
    ),
    (
        "budget limit with neither usd nor tokens",
        BUDGET,
        "spec:\n  limit: {}\n  period: monthly\n",
        "at least one of limit.usd and limit.tokens must be set",
    ),
    (
        "budget custom period without its length",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n  period: custom\n",
        "spec.periodSeconds must be set with period custom",
    ),
    (
        "budget threshold of 100 percent",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n  period: daily\n  thresholds: [80, 100]\n",
        "spec.thresholds[1]",
    ),
    (
        "budget downgrade without a route",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n  period: daily\n  downgrade: {atPercent: 80}\n",
        "spec.downgrade.route: Required value",
    ),
    (
        "budget zero tokens",
        BUDGET,
        "spec:\n  limit: {tokens: 0}\n  period: daily\n",
        "spec.limit.tokens",
    ),
    (
        "budget period not in enum",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n  period: yearly\n",
        "spec.period: Unsupported value: \"yearly\"",
    ),
    (
        "budget period missing",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n",
        "spec.period: Required value",
    ),
    (
        "budget enforcement not in enum",
        BUDGET,
        "spec:\n  limit: {usd: \"5\"}\n  period: weekly\n  enforcement: strict\n",
        "spec.enforcement: Unsupported value: \"strict\"",
    ),
    (
        "route rule naming a target that does not exist",
        ROUTE,
        "spec:\n  targets: [{name: a, provider: p, model: m}]\n  rules: [{name: r, targets: [zz]}]\n",
        "must name a target in spec.targets",
    ),
    (
        "route outlier cooldown base longer than max",
        ROUTE,
        "spec:\n  targets: [{provider: p, model: m}]\n  outlier: {baseEjection: 10m, maxEjection: 1m}\n",
        "outlier.baseEjection must not be longer than outlier.maxEjection",
    ),
];

#[test]
fn invalid_resources_are_rejected_naming_the_field() -> Result<()> {
    let cp = control_plane_with_crds()?;
    let ns = namespace(cp, "invalid")?;
    let mut failures = Vec::new();
    for (case, header, spec, want) in INVALID {
        let manifest = format!("{header}{spec}");
        let out = cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], &manifest)?;
        if out.success {
            failures.push(format!("{case}: accepted\n{manifest}"));
            // Keep the next case from being a no-op update of an accepted object.
            let _ = cp.kubectl_stdin(["delete", "-n", &ns, "--wait=false", "-f", "-"], &manifest);
        } else if !out.stderr.contains(want) {
            failures.push(format!(
                "{case}: rejected without naming {want:?}: {}",
                out.stderr.trim()
            ));
        } else if !out.stderr.contains("is invalid") && !out.stderr.contains("unknown field") {
            failures.push(format!(
                "{case}: failed, but not by validation: {}",
                out.stderr.trim()
            ));
        }
    }
    ensure!(INVALID.len() >= 15, "the table must keep at least 15 cases");
    if !failures.is_empty() {
        bail!(
            "{} of {} invalid objects misbehaved:\n{}",
            failures.len(),
            INVALID.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

#[test]
fn get_gatehouse_lists_all_kinds_with_printer_columns() -> Result<()> {
    let cp = control_plane_with_crds()?;
    let ns = namespace(cp, "category")?;
    let objects = "\
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: openai}
spec:
  type: openai
  endpoint: https://api.openai.com/v1
  apiKeySecretRef: {name: openai, key: api-key}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {name: chat}
spec:
  models: [chat, fast]
  targets:
  - {provider: openai, model: gpt-4o-mini}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Budget
metadata: {name: team}
spec:
  limit: {usd: \"250.00\"}
  period: monthly
";
    cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], objects)?
        .ok("kubectl apply")?;
    // Some columns show status the operator writes (no operator here): write it as it would.
    for (object, status) in [
        (
            "modelprovider/openai",
            r#"{"status":{"endpoint":"https://api.openai.com/v1","models":2}}"#,
        ),
        (
            "route/chat",
            r#"{"status":{"aliases":["chat","fast"],"usableTargets":1,"totalTargets":2,"targets":"1/2"}}"#,
        ),
        (
            "budget/team",
            r#"{"status":{"spent":"12.5","remaining":"237.5","periodEnd":"2026-12-01T00:00:00Z","conditions":[{"type":"Exceeded","status":"False","reason":"WithinLimit","message":"m","lastTransitionTime":"2026-11-29T00:00:00Z"}]}}"#,
        ),
    ] {
        cp.kubectl_ok([
            "patch",
            object,
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ])?;
    }
    let out = cp.kubectl_ok(["get", "gatehouse", "-n", &ns])?;
    for needle in [
        "modelprovider.gatehouse.dev/openai",
        "route.gatehouse.dev/chat",
        "budget.gatehouse.dev/team",
        // printer column headers of each kind
        "TYPE",
        "ENDPOINT",
        "MODELS",
        "TARGETS",
        "USD",
        "PERIOD",
        "SPENT",
        "REMAINING",
        "ENDS",
        "EXCEEDED",
        "READY",
        // and their values
        "https://api.openai.com/v1",
        "1/2",
        "250.00",
        "monthly",
        "237.5",
        "2026-12-01T00:00:00Z",
    ] {
        ensure!(
            out.contains(needle),
            "kubectl get gatehouse lacks {needle:?}:\n{out}"
        );
    }
    // Short names work too.
    cp.kubectl_ok(["get", "mp,gr,gb", "-n", &ns])?;
    Ok(())
}

#[test]
fn status_is_a_subresource() -> Result<()> {
    let cp = control_plane_with_crds()?;
    let ns = namespace(cp, "status")?;
    let provider = "\
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: p}
spec:
  type: openai
  apiKeySecretRef: {name: openai, key: api-key}
";
    cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], provider)?
        .ok("create provider")?;
    let get = |path: &str| {
        cp.kubectl_ok([
            "get",
            "modelprovider/p",
            "-n",
            &ns,
            "-o",
            &format!("jsonpath={path}"),
        ])
    };

    // Status written through /status sticks; the spec sent along with it is ignored.
    let status_patch = r#"{"spec":{"type":"anthropic"},"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"True","reason":"KeyResolved","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    cp.kubectl_ok([
        "patch",
        "modelprovider/p",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        status_patch,
    ])?;
    ensure!(
        get("{.spec.type}")? == "openai",
        "a status update changed spec"
    );
    ensure!(
        get("{.status.conditions[0].reason}")? == "KeyResolved",
        "status update was lost"
    );
    let generation = get("{.metadata.generation}")?;

    // A spec update keeps status and bumps generation; status sent along with it is ignored.
    let spec_patch = r#"{"spec":{"endpoint":"https://proxy.example.com/v1"},"status":{"observedGeneration":99}}"#;
    cp.kubectl_ok([
        "patch",
        "modelprovider/p",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        spec_patch,
    ])?;
    ensure!(
        get("{.spec.endpoint}")? == "https://proxy.example.com/v1",
        "spec update was lost"
    );
    ensure!(
        get("{.status.conditions[0].reason}")? == "KeyResolved",
        "a spec update clobbered status"
    );
    ensure!(
        get("{.status.observedGeneration}")? == "1",
        "a spec update wrote status"
    );
    ensure!(
        get("{.metadata.generation}")? != generation,
        "spec update did not bump generation"
    );

    // Re-applying the manifest (no status in it) leaves status alone too.
    cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], provider)?
        .ok("re-apply provider")?;
    ensure!(
        get("{.status.conditions[0].type}")? == "Ready",
        "apply clobbered status"
    );
    Ok(())
}
