//! Model prices in `render()`: int-or-string prices, overrides before the catalog, every model a
//! provider is used with priced, and unpriced models reported but still served.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use gatehouse_crds::catalog;
use gatehouse_crds::config::{LongContextPricing, Pricing, ProviderKind};
use gatehouse_crds::provider::Price;
use gatehouse_crds::{Inputs, ModelProvider, ObjectKind, Rendered, Route, SecretData, render};
use serde_json::{Value, json};

fn obj<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> T {
    serde_json::from_value(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec,
    }))
    .unwrap()
}

fn route(name: &str, targets: Value) -> Route {
    obj("Route", name, json!({"targets": targets}))
}

fn run(providers: &[ModelProvider], routes: &[Route]) -> Rendered {
    let mut secrets = SecretData::new();
    secrets.insert_key("keys", "k", b"sk-test".as_slice());
    render(&Inputs {
        namespace: "team-a",
        providers,
        routes,
        budgets: &[],
        secrets: &secrets,
    })
}

/// A provider of `type_` with the key in place and `models` as its spec.models.
fn provider(name: &str, type_: &str, models: Value) -> ModelProvider {
    let mut spec =
        json!({"type": type_, "apiKeySecretRef": {"name": "keys", "key": "k"}, "models": models});
    if type_ == "openaiCompatible" {
        spec["endpoint"] = json!("http://vllm:8000/v1");
    }
    obj("ModelProvider", name, spec)
}

fn priced(r: &Rendered, provider: &str, model: &str) -> Option<Pricing> {
    r.config.providers.get(provider)?.models.get(model).copied()
}

#[test]
fn prices_accept_whole_numbers_and_decimal_strings() {
    // As a user writes it by hand, in YAML: `5` is an integer, `"12.5"` a string.
    let p: ModelProvider = serde_yaml::from_str(
        r#"
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: local, namespace: team-a}
spec:
  type: openaiCompatible
  endpoint: http://vllm:8000/v1
  models:
    - name: my-llama
      pricing:
        inputPerMillion: 5
        outputPerMillion: "12.5"
        cachedInputPerMillion: 0
"#,
    )
    .unwrap();
    let pricing = p.spec.models[0].pricing.as_ref().unwrap();
    assert_eq!(pricing.input_per_million, Price::Whole(5));
    assert_eq!(pricing.output_per_million, Price::Decimal("12.5".into()));
    let r = run(&[p], &[]);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let m = priced(&r, "local", "my-llama").unwrap();
    assert_eq!((m.input_per_million, m.output_per_million), (5.0, 12.5));
    assert_eq!(m.cached_input_per_million, Some(0.0));

    // The same both ways in JSON (what the apiserver hands the operator), and back out unchanged.
    let j = provider(
        "j",
        "openai",
        json!([{"name": "m", "pricing": {"inputPerMillion": "5", "outputPerMillion": 5}}]),
    );
    let out = serde_json::to_value(&j.spec.models[0]).unwrap();
    assert_eq!(out["pricing"]["inputPerMillion"], json!("5"));
    assert_eq!(out["pricing"]["outputPerMillion"], json!(5));
    let m = priced(&run(&[j], &[]), "j", "m").unwrap();
    assert_eq!((m.input_per_million, m.output_per_million), (5.0, 5.0));
}

#[test]
fn a_bare_decimal_price_is_refused_with_the_fix_in_the_message() {
    let err = serde_yaml::from_str::<ModelProvider>(
        r#"
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: local}
spec:
  type: openai
  apiKeySecretRef: {name: keys, key: k}
  models: [{name: m, pricing: {inputPerMillion: 1, outputPerMillion: 2.5}}]
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("quoted decimal string"), "{err}");
}

#[test]
fn an_override_beats_the_catalog() {
    let catalog_price = catalog::lookup(ProviderKind::Openai, "gpt-4o-mini").unwrap();
    assert_eq!(catalog_price.input_per_million, 0.15);
    let p = provider(
        "openai",
        "openai",
        json!([{"name": "gpt-4o-mini", "pricing": {"inputPerMillion": 1, "outputPerMillion": "2.5"}}]),
    );
    let rt = route(
        "chat",
        json!([{"provider": "openai", "model": "gpt-4o-mini"}]),
    );
    let r = run(&[p], &[rt]);
    assert_eq!(
        priced(&r, "openai", "gpt-4o-mini"),
        Some(Pricing {
            input_per_million: 1.0,
            output_per_million: 2.5,
            ..Pricing::default()
        })
    );
    assert_eq!(r.unpriced["openai"], Vec::<String>::new());
}

#[test]
fn listed_models_and_route_targets_are_priced_from_the_catalog() {
    let p = provider("claude", "anthropic", json!([{"name": "claude-haiku-4-5"}]));
    let rt = route(
        "chat",
        json!([{"provider": "claude", "model": "claude-sonnet-4-5-20250929"},
               {"provider": "elsewhere", "model": "claude-opus-4-5"}]),
    );
    let r = run(&[p], &[rt]);
    let models = &r.config.providers["claude"].models;
    let names: Vec<&str> = models.keys().map(String::as_str).collect();
    // Only the models this provider is used with; the other target's model is not its concern.
    assert_eq!(names, ["claude-haiku-4-5", "claude-sonnet-4-5-20250929"]);
    assert_eq!(
        models["claude-sonnet-4-5-20250929"],
        catalog::lookup(ProviderKind::Anthropic, "claude-sonnet-4-5-20250929").unwrap()
    );
    assert_eq!(models["claude-sonnet-4-5-20250929"].input_per_million, 3.0);
    assert_eq!(models["claude-haiku-4-5"].output_per_million, 5.0);
    assert!(r.unpriced["claude"].is_empty());
}

#[test]
fn an_unpriced_model_is_still_served_and_named() {
    let p = provider(
        "local",
        "openaiCompatible",
        json!([{"name": "listed-only"}]),
    );
    let rt = route("chat", json!([{"provider": "local", "model": "my-llama"}]));
    let r = run(&[p], &[rt]);
    // Not a problem: the provider is ready and the target usable, only its cost is unknown.
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.config.routes["chat"].targets.len(), 1);
    assert!(r.config.providers["local"].models.is_empty());
    assert_eq!(r.unpriced["local"], ["listed-only", "my-llama"]);
}

#[test]
fn unpriced_models_are_reported_for_providers_that_are_not_ready() {
    let mut p = provider("local", "openai", json!([]));
    p.spec.api_key_secret_ref.as_mut().unwrap().name = "missing".into();
    let rt = route("chat", json!([{"provider": "local", "model": "my-llama"}]));
    let r = run(&[p], &[rt]);
    assert!(r.config.providers.is_empty());
    assert_eq!(r.unpriced["local"], ["my-llama"]);
}

#[test]
fn long_context_tier_and_every_rate_reach_the_config() {
    let p = provider(
        "g",
        "gemini",
        json!([{"name": "tuned", "pricing": {
            "inputPerMillion": "1.25", "outputPerMillion": 10, "cachedInputPerMillion": "0.125",
            "cacheWritePerMillion": "1.5", "reasoningPerMillion": 12,
            "longContext": {"aboveInputTokens": 200000, "inputPerMillion": "2.50", "outputPerMillion": 15,
                            "cachedInputPerMillion": "0.25"}}}]),
    );
    let r = run(&[p], &[]);
    assert_eq!(
        priced(&r, "g", "tuned"),
        Some(Pricing {
            input_per_million: 1.25,
            output_per_million: 10.0,
            cached_input_per_million: Some(0.125),
            cache_write_per_million: Some(1.5),
            reasoning_per_million: Some(12.0),
            long_context: Some(LongContextPricing {
                above_input_tokens: 200_000,
                input_per_million: 2.5,
                output_per_million: 15.0,
                cached_input_per_million: Some(0.25),
                cache_write_per_million: None,
            }),
        })
    );
}

#[test]
fn an_invalid_override_is_an_invalid_spec_naming_the_field() {
    let p = provider(
        "local",
        "openaiCompatible",
        json!([{"name": "m", "pricing": {"inputPerMillion": 1, "outputPerMillion": -5,
                "longContext": {"aboveInputTokens": 0, "inputPerMillion": "x", "outputPerMillion": 1}}}]),
    );
    let r = run(&[p], &[]);
    let messages: Vec<&str> = r
        .problems
        .iter()
        .inspect(|p| {
            assert_eq!(
                (p.kind, p.reason.as_str()),
                (ObjectKind::ModelProvider, "InvalidSpec")
            )
        })
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("spec.models[m].pricing.outputPerMillion: -5"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("longContext.inputPerMillion: \"x\""))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("aboveInputTokens must be at least 1"))
    );
    // Left out rather than served at a wrong price; the model counts as unpriced.
    assert!(r.config.providers.is_empty());
    assert_eq!(r.unpriced["local"], ["m"]);
}
