//! `render()`: one test per problem, plus a golden snapshot of a realistic namespace.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use gatehouse_crds::{
    Budget, Inputs, ModelProvider, ObjectKind, Problem, Rendered, Route, SecretData,
    parse_duration_ms, render,
};
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
fn provider(name: &str, spec: Value) -> ModelProvider {
    obj("ModelProvider", name, spec)
}
fn route(name: &str, spec: Value) -> Route {
    obj("Route", name, spec)
}
fn budget(name: &str, spec: Value) -> Budget {
    obj("Budget", name, spec)
}

fn secrets(entries: &[(&str, &str, &[u8])]) -> SecretData {
    let mut out = SecretData::new();
    for (secret, key, value) in entries {
        out.insert_key(*secret, *key, *value);
    }
    out
}

fn run(
    providers: &[ModelProvider],
    routes: &[Route],
    budgets: &[Budget],
    secrets: &SecretData,
) -> Rendered {
    render(&Inputs {
        namespace: "team-a",
        providers,
        routes,
        budgets,
        secrets,
    })
}

fn openai(secret: &str) -> ModelProvider {
    provider(
        "openai",
        json!({"type": "openai", "apiKeySecretRef": {"name": secret, "key": "api-key"}}),
    )
}

fn reasons(r: &Rendered) -> Vec<(ObjectKind, &str, &str)> {
    r.problems
        .iter()
        .map(|p| (p.kind, p.name.as_str(), p.reason.as_str()))
        .collect()
}

const KEY: &str = "sk-test-0123456789";

fn assert_no_key_material(r: &Rendered) {
    for p in &r.problems {
        assert!(
            !p.message.contains(KEY) && !p.message.contains("sk-"),
            "{p:?}"
        );
    }
    let config = serde_json::to_string(&r.config).unwrap();
    assert!(!config.contains(KEY), "config leaks a key: {config}");
}

#[test]
fn provider_defaults_and_key() {
    let s = secrets(&[("openai-key", "api-key", b"sk-test-0123456789\n")]);
    let r = run(&[openai("openai-key")], &[], &[], &s);
    assert_eq!(r.problems, vec![]);
    let p = &r.config.providers["openai"];
    assert_eq!(p.endpoint, "https://api.openai.com/v1");
    assert_eq!(p.key.as_deref(), Some("openai"));
    assert_eq!(r.keys.get("openai"), Some(KEY));
    assert_no_key_material(&r);
}

#[test]
fn rendered_debug_shows_key_names_not_keys() {
    let s = secrets(&[("openai-key", "api-key", b"sk-test-0123456789\n")]);
    let r = run(&[openai("openai-key")], &[], &[], &s);
    assert_eq!(r.keys.get("openai"), Some(KEY));
    for debug in [format!("{r:?}"), format!("{r:#?}")] {
        assert!(!debug.contains(KEY), "Debug leaks the key: {debug}");
        assert!(
            debug.contains(r#""openai": [redacted]"#),
            "Debug names the key and redacts it: {debug}"
        );
    }
}

#[test]
fn endpoint_trailing_slash_is_stripped() {
    let p = provider(
        "local",
        json!({"type": "openaiCompatible", "endpoint": "http://127.0.0.1:9100/v1/"}),
    );
    let r = run(&[p], &[], &[], &SecretData::new());
    assert_eq!(
        r.config.providers["local"].endpoint,
        "http://127.0.0.1:9100/v1"
    );
    assert_eq!(r.config.providers["local"].key, None);
}

#[test]
fn secret_not_found() {
    let r = run(&[openai("missing")], &[], &[], &SecretData::new());
    assert_eq!(
        r.problems,
        vec![Problem {
            kind: ObjectKind::ModelProvider,
            name: "openai".into(),
            reason: "SecretNotFound".into(),
            message: "secret \"missing\" not found".into(),
        }]
    );
    assert!(r.config.providers.is_empty() && r.keys.is_empty());
}

#[test]
fn key_not_found() {
    let s = secrets(&[("openai-key", "other", KEY.as_bytes())]);
    let r = run(&[openai("openai-key")], &[], &[], &s);
    assert_eq!(
        reasons(&r),
        [(ObjectKind::ModelProvider, "openai", "KeyNotFound")]
    );
    assert!(r.problems[0].message.contains("\"api-key\""));
}

#[test]
fn invalid_keys_are_rejected_without_leaking_them() {
    let cases: [&[u8]; 6] = [
        b"",
        b"\n",
        b"\xff\xfe",
        b" sk-test-0123456789",
        b"sk-test-0123456789 \n",
        b"sk-test-0123456789\n\n",
    ];
    for value in cases {
        let s = secrets(&[("openai-key", "api-key", value)]);
        let r = run(&[openai("openai-key")], &[], &[], &s);
        assert_eq!(
            reasons(&r),
            [(ObjectKind::ModelProvider, "openai", "InvalidKey")],
            "{value:?}"
        );
        assert!(r.keys.is_empty());
        assert_no_key_material(&r);
    }
}

#[test]
fn invalid_price_is_an_invalid_spec() {
    let p = provider(
        "local",
        json!({"type": "openaiCompatible", "endpoint": "http://x/v1",
               "models": [{"name": "m", "pricing": {"inputPerMillion": "1,5", "outputPerMillion": "2"}}]}),
    );
    let r = run(&[p], &[], &[], &SecretData::new());
    assert_eq!(
        reasons(&r),
        [(ObjectKind::ModelProvider, "local", "InvalidSpec")]
    );
    assert!(r.problems[0].message.contains("inputPerMillion"));
    assert!(r.config.providers.is_empty());
}

#[test]
fn missing_required_endpoint_is_an_invalid_spec() {
    let p = provider(
        "az",
        json!({"type": "azureOpenAI", "apiKeySecretRef": {"name": "s", "key": "k"}}),
    );
    let r = run(&[p], &[], &[], &secrets(&[("s", "k", KEY.as_bytes())]));
    assert_eq!(
        reasons(&r),
        [(ObjectKind::ModelProvider, "az", "InvalidSpec")]
    );
}

#[test]
fn targets_with_missing_or_unready_providers_are_dropped_but_the_route_stays() {
    let rt = route(
        "chat",
        json!({"targets": [
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "nope", "model": "m", "priority": 1},
        ]}),
    );
    // openai exists but its Secret is missing: not ready.
    let r = run(&[openai("missing")], &[rt], &[], &SecretData::new());
    assert_eq!(
        reasons(&r),
        [
            (ObjectKind::ModelProvider, "openai", "SecretNotFound"),
            (ObjectKind::Route, "chat", "ProviderNotFound"),
            (ObjectKind::Route, "chat", "ProviderNotReady"),
        ]
    );
    let chat = &r.config.routes["chat"];
    assert!(chat.targets.is_empty());
    assert_eq!(
        chat.aliases,
        ["chat"],
        "aliases default to the Route's name"
    );
    assert_eq!(
        chat.unavailable,
        [
            "provider \"openai\" is not ready",
            "provider \"nope\" not found"
        ]
    );
}

#[test]
fn duplicate_alias_goes_to_the_route_whose_name_sorts_first() {
    let local = provider(
        "local",
        json!({"type": "openaiCompatible", "endpoint": "http://x/v1"}),
    );
    let target = json!([{"provider": "local", "model": "m"}]);
    let routes = [
        route(
            "zeta",
            json!({"models": ["chat", "zeta-only"], "targets": target}),
        ),
        route("alpha", json!({"models": ["chat"], "targets": target})),
    ];
    let r = run(&[local], &routes, &[], &SecretData::new());
    assert_eq!(reasons(&r), [(ObjectKind::Route, "zeta", "DuplicateAlias")]);
    assert!(r.problems[0].message.contains("\"alpha\""));
    assert_eq!(r.config.routes["alpha"].aliases, ["chat"]);
    assert_eq!(r.config.routes["zeta"].aliases, ["zeta-only"]);
}

#[test]
fn invalid_duration_falls_back_to_the_default() {
    let local = provider(
        "local",
        json!({"type": "openaiCompatible", "endpoint": "http://x/v1"}),
    );
    let rt = route(
        "chat",
        json!({"targets": [{"provider": "local", "model": "m"}],
               "timeouts": {"request": "5 minutes", "attempt": "20s"}}),
    );
    let r = run(&[local], &[rt], &[], &SecretData::new());
    assert_eq!(
        reasons(&r),
        [(ObjectKind::Route, "chat", "InvalidDuration")]
    );
    assert!(r.problems[0].message.starts_with("spec.timeouts.request"));
    let t = &r.config.routes["chat"].timeouts;
    assert_eq!(
        (t.request_ms, t.attempt_ms, t.first_token_ms),
        (600_000, 20_000, None)
    );
}

#[test]
fn budgets_render_limits_periods_thresholds_and_downgrade() {
    let budgets = [
        budget(
            "both",
            json!({"limit": {"usd": "5", "tokens": 5}, "period": "custom", "periodSeconds": 60,
                   "thresholds": [80, 50], "downgrade": {"atPercent": 90, "route": "cheap"}}),
        ),
        budget("zero", json!({"limit": {"usd": "0"}, "period": "daily"})),
        budget("ok", json!({"limit": {"tokens": 1000}, "period": "none"})),
        // The CRD rejects these at admission; render still refuses them.
        budget(
            "no-seconds",
            json!({"limit": {"usd": "1"}, "period": "custom"}),
        ),
        budget(
            "short",
            json!({"limit": {"usd": "1"}, "period": "custom", "periodSeconds": 1}),
        ),
        budget(
            "bad-threshold",
            json!({"limit": {"usd": "1"}, "period": "daily", "thresholds": [100]}),
        ),
        budget(
            "lost-downgrade",
            json!({"limit": {"usd": "1"}, "period": "daily", "downgrade": {"atPercent": 50, "route": "gone"}}),
        ),
    ];
    let routes = [route(
        "cheap",
        json!({"targets": [{"provider": "p", "model": "m"}]}),
    )];
    let r = run(&[], &routes, &budgets, &SecretData::new());
    let budget_reasons: Vec<(String, String)> = r
        .problems
        .iter()
        .filter(|p| p.kind == ObjectKind::Budget)
        .map(|p| (p.name.clone(), p.reason.clone()))
        .collect();
    let expect = |n: &str, reason: &str| (n.to_string(), reason.to_string());
    assert_eq!(
        budget_reasons,
        [
            expect("bad-threshold", "InvalidSpec"),
            expect("lost-downgrade", "DowngradeRouteNotFound"),
            expect("no-seconds", "InvalidSpec"),
            expect("short", "InvalidSpec"),
            expect("zero", "InvalidSpec"),
        ]
    );
    // No budget is reported as "not enforced" any more.
    assert!(r.problems.iter().all(|p| p.reason != "NotEnforced"));
    let ok = &r.config.budgets["ok"];
    assert_eq!(
        (
            ok.limit_tokens,
            ok.enforcement.as_str(),
            ok.fail_mode.as_str()
        ),
        (Some(1000), "hard", "open")
    );
    let both = &r.config.budgets["both"];
    assert_eq!((both.limit_usd, both.limit_tokens), (Some(5.0), Some(5)));
    assert_eq!(
        both.period(),
        Some(gatehouse_crds::ledger::Period::Seconds(60))
    );
    assert_eq!(both.thresholds, [50, 80]);
    assert_eq!(
        both.downgrade
            .as_ref()
            .map(|d| (d.at_percent, d.route.as_str())),
        Some((90, "cheap"))
    );
    // A missing downgrade Route keeps the budget (its limit still holds) without the downgrade.
    let lost = &r.config.budgets["lost-downgrade"];
    assert_eq!((lost.limit_usd, lost.downgrade.as_ref()), (Some(1.0), None));
    for gone in ["zero", "no-seconds", "short", "bad-threshold"] {
        assert!(!r.config.budgets.contains_key(gone), "{gone} rendered");
    }
}

#[test]
fn durations() {
    for (s, ms) in [
        ("100ms", 100),
        ("2s", 2_000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("0s", 0),
    ] {
        assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
    }
    for s in [
        "",
        "10",
        "1d",
        "s",
        "1.5s",
        "-1s",
        "1m 30s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration_ms(s).is_err(), "{s}");
    }
}

#[test]
fn output_is_deterministic_regardless_of_input_order() {
    let (providers, routes, budgets, s) = namespace();
    let a = run(&providers, &routes, &budgets, &s);
    let mut providers = providers;
    let mut routes = routes;
    let mut budgets = budgets;
    providers.reverse();
    routes.reverse();
    budgets.reverse();
    assert_eq!(a, run(&providers, &routes, &budgets, &s));
}

/// A realistic namespace: three hosted providers, one self-hosted, failover and balancing routes,
/// budgets, and one broken provider.
fn namespace() -> (Vec<ModelProvider>, Vec<Route>, Vec<Budget>, SecretData) {
    let providers = vec![
        provider(
            "openai",
            json!({"type": "openai", "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                   "models": [
                       {"name": "gpt-4o", "pricing": {"inputPerMillion": "2.50", "outputPerMillion": "10.00", "cachedInputPerMillion": "1.25"}},
                       {"name": "gpt-4o-mini", "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"}}]}),
        ),
        provider(
            "anthropic",
            json!({"type": "anthropic", "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"}}),
        ),
        provider(
            "azure",
            json!({"type": "azureOpenAI", "endpoint": "https://acme.openai.azure.com/",
                   "apiKeySecretRef": {"name": "llm-keys", "key": "azure"}}),
        ),
        provider(
            "bedrock",
            json!({"type": "bedrock", "bedrock": {"region": "eu-west-1"},
                   "apiKeySecretRef": {"name": "bedrock-key", "key": "token"}}),
        ),
        provider(
            "vllm",
            json!({"type": "openaiCompatible", "endpoint": "http://vllm.models.svc:8000/v1"}),
        ),
    ];
    let routes = vec![
        route(
            "chat",
            json!({"models": ["gpt-4o-mini", "chat"],
                   "targets": [
                       {"provider": "vllm", "model": "llama-3.1-8b-instruct"},
                       {"provider": "openai", "model": "gpt-4o-mini", "priority": 1, "weight": 3},
                       {"provider": "azure", "model": "gpt-4o-mini", "priority": 1}],
                   "retry": {"attempts": 4, "backoff": {"base": "200ms", "max": "5s"}},
                   "timeouts": {"request": "2m", "attempt": "30s", "firstToken": "1m30s"}}),
        ),
        route(
            "claude",
            json!({"targets": [
                       {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                       {"provider": "bedrock", "model": "anthropic.claude-sonnet-4-5", "priority": 1}]}),
        ),
    ];
    let budgets = vec![
        budget(
            "team-monthly",
            json!({"limit": {"usd": "500"}, "period": "monthly", "thresholds": [90, 50],
                   "downgrade": {"atPercent": 80, "route": "claude"}}),
        ),
        budget(
            "search-daily-tokens",
            json!({"limit": {"tokens": 2000000}, "period": "daily", "enforcement": "soft", "failMode": "closed",
                   "scope": {"routes": ["chat"], "serviceAccounts": ["search-api"],
                             "workloadSelector": {"matchLabels": {"app": "search"}}}}),
        ),
    ];
    let s = secrets(&[
        ("llm-keys", "openai", b"sk-test-openai\n"),
        ("llm-keys", "anthropic", b"sk-ant-test"),
        ("llm-keys", "azure", b"azure-test-key"),
    ]);
    (providers, routes, budgets, s)
}

#[test]
fn golden_multi_provider_namespace() {
    let (providers, routes, budgets, s) = namespace();
    let r = run(&providers, &routes, &budgets, &s);
    insta::assert_yaml_snapshot!("config", r.config);
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| format!("{:?}/{} {}: {}", p.kind, p.name, p.reason, p.message))
        .collect();
    insta::assert_yaml_snapshot!("problems", problems);
    let key_names: Vec<&str> = r.keys.iter().map(|(name, _)| name).collect();
    assert_eq!(key_names, ["anthropic", "azure", "openai"]);
    // The self-hosted model and the (made-up) Bedrock id are not in the catalog.
    insta::assert_yaml_snapshot!("unpriced", r.unpriced);
}

/// What the operator reports in status besides conditions: bedrock has no key (not usable), so
/// `claude` has 1 of 2 usable targets; endpoints are resolved defaults.
#[test]
fn golden_observed_status() {
    use gatehouse_crds::observed;
    let (providers, routes, budgets, s) = namespace();
    let r = run(&providers, &routes, &budgets, &s);
    let routes: std::collections::BTreeMap<String, _> = routes
        .iter()
        .map(|route| {
            let name = route.metadata.name.clone().unwrap_or_default();
            let status = observed::route_status(&name, &route.spec, &r.config);
            (name, status)
        })
        .collect();
    insta::assert_yaml_snapshot!("observed_routes", routes);
    let providers: std::collections::BTreeMap<String, _> = providers
        .iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = observed::provider_status(&name, &r.config);
            (name, status)
        })
        .collect();
    insta::assert_yaml_snapshot!("observed_providers", providers);
    assert_eq!(
        observed::route_status("missing", &routes_spec_for_missing(), &r.config).targets,
        Some("0/1".to_string())
    );
}

fn routes_spec_for_missing() -> gatehouse_crds::RouteSpec {
    route(
        "missing",
        json!({"targets": [{"provider": "openai", "model": "m"}]}),
    )
    .spec
}

#[test]
fn rules_name_usable_targets_by_index_and_outlier_settings_fill_in_defaults() {
    let rt = route(
        "chat",
        json!({
            "targets": [
                {"name": "gone", "provider": "nope", "model": "m"},
                {"name": "big", "provider": "openai", "model": "gpt-4o"},
                {"name": "small", "provider": "openai", "model": "gpt-4o-mini", "priority": 1},
            ],
            "timeouts": {"idle": "20s"},
            "outlier": {"consecutiveTimeouts": 1, "baseEjection": "10s"},
            "rules": [
                {"name": "cheap", "match": {"maxInputTokens": 1000, "headers": {"X-Gatehouse-Tier": "cheap"}},
                 "targets": ["small", "gone"]},
                {"name": "only-gone", "match": {"tools": true}, "targets": ["gone"]},
            ],
        }),
    );
    let r = run(
        &[openai("keys")],
        &[rt],
        &[],
        &secrets(&[("keys", "api-key", b"sk-0123456789")]),
    );
    let chat = &r.config.routes["chat"];
    assert_eq!(chat.targets.len(), 2);
    assert_eq!(chat.timeouts.idle_ms, Some(20_000));
    assert_eq!(chat.outlier.consecutive_timeouts, 1);
    assert_eq!(chat.outlier.base_ejection_ms, 10_000);
    assert_eq!(chat.outlier.consecutive_failures, 5, "default");
    // "small" is the second usable target; "gone" was dropped, so its name resolves to nothing.
    assert_eq!(chat.rules[0].name, "cheap");
    assert_eq!(chat.rules[0].targets, [1]);
    assert_eq!(chat.rules[0].matches.max_input_tokens, Some(1000));
    assert_eq!(
        chat.rules[0]
            .matches
            .headers
            .get("x-gatehouse-tier")
            .map(String::as_str),
        Some("cheap"),
        "header names are lower-cased"
    );
    assert!(chat.rules[1].targets.is_empty());
}

#[test]
fn guardrails_are_rendered_and_their_problems_reported() {
    let secrets = secrets(&[("openai-key", "api-key", b"sk-test")]);
    let r = route(
        "chat",
        json!({
            "targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
            "rateLimits": [
                {"name": "per-pod", "requestsPerMinute": 60, "serviceAccounts": ["b", "a", "a"]},
                {"name": "shared", "tokensPerMinute": 1000, "scope": "cluster"}
            ],
            "redact": {"action": "block", "detectors": ["iban", "email", "email"]},
            "audit": {"answer": true}
        }),
    );
    let out = run(&[openai("openai-key")], &[r], &[], &secrets);
    let chat = &out.config.routes["chat"];
    assert_eq!(chat.targets.len(), 1);
    assert_eq!(chat.rate_limits.len(), 2);
    assert_eq!(chat.rate_limits[0].requests_per_minute, Some(60));
    assert_eq!(chat.rate_limits[0].service_accounts, ["a", "b"]);
    // Cluster scope is rendered as such (the budget ledger keeps it), with no problem.
    assert_eq!(
        chat.rate_limits[1].scope,
        gatehouse_crds::config::RateLimitScopeConfig::Cluster
    );
    assert!(
        !reasons(&out).iter().any(|(_, r, _)| *r == "chat"),
        "{:?}",
        out.problems
    );
    let redact = chat.redact.as_ref().unwrap();
    assert_eq!(redact.detectors, ["email", "iban"]);
    assert_eq!(
        redact.action,
        gatehouse_crds::config::RedactActionConfig::Block
    );
    assert!(chat.audit.answer && !chat.audit.prompt);

    // Every detector by default; a pattern that cannot be used leaves the Route without targets.
    let all = route(
        "all",
        json!({"targets": [{"provider": "openai", "model": "gpt-4o-mini"}], "redact": {}}),
    );
    let broken = route(
        "broken",
        json!({"targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
               "redact": {"custom": [{"name": "everything", "pattern": "x*"}]}}),
    );
    let out = run(&[openai("openai-key")], &[all, broken], &[], &secrets);
    assert_eq!(
        out.config.routes["all"]
            .redact
            .as_ref()
            .unwrap()
            .detectors
            .len(),
        11
    );
    let broken = &out.config.routes["broken"];
    assert!(broken.targets.is_empty() && broken.redact.is_none());
    assert!(
        broken.unavailable[0].contains("can match the empty string"),
        "{:?}",
        broken.unavailable
    );
    assert!(reasons(&out).contains(&(ObjectKind::Route, "broken", "InvalidRedaction")));
}

#[test]
fn cache_block_renders_with_defaults_and_semantic() {
    use gatehouse_crds::config::{CacheBackendConfig, CacheScopeConfig};
    let target = json!([{"provider": "openai", "model": "gpt-4o-mini"}]);
    let routes = [
        route("plain", json!({"targets": target, "cache": {}})),
        route(
            "full",
            json!({"targets": target, "cache": {
                "ttl": "10m", "scope": "workload", "maxBytes": 1048576,
                "allowNonDeterministic": true, "backend": "redis",
                "semantic": {"embeddingRoute": "embed", "threshold": "0.85",
                             "maxEntries": 500, "timeout": "100ms"}}}),
        ),
        route("embed", json!({"targets": target})),
        route(
            "lost",
            json!({"targets": target, "cache": {"semantic": {"embeddingRoute": "nowhere"}}}),
        ),
        route("none", json!({"targets": target})),
    ];
    let r = run(
        &[openai("openai-key")],
        &routes,
        &[],
        &secrets(&[("openai-key", "api-key", b"sk-test")]),
    );
    let plain = r.config.routes["plain"].cache.clone().unwrap();
    assert_eq!(plain.ttl_ms, 300_000);
    assert_eq!(plain.scope, CacheScopeConfig::Namespace);
    assert_eq!(plain.max_bytes, 64 * 1024 * 1024);
    assert!(!plain.allow_non_deterministic);
    assert_eq!(plain.backend, CacheBackendConfig::Memory);
    assert!(plain.semantic.is_none());

    let full = r.config.routes["full"].cache.clone().unwrap();
    assert_eq!(full.ttl_ms, 600_000);
    assert_eq!(full.scope, CacheScopeConfig::Workload);
    assert_eq!(full.max_bytes, 1_048_576);
    assert!(full.allow_non_deterministic);
    assert_eq!(full.backend, CacheBackendConfig::Redis);
    let semantic = full.semantic.unwrap();
    assert_eq!(semantic.embedding_route, "embed");
    assert!((semantic.threshold - 0.85).abs() < 1e-12);
    assert_eq!((semantic.max_entries, semantic.timeout_ms), (500, 100));

    assert!(r.config.routes["none"].cache.is_none());
    // The rendered config carries it through its wire form.
    let wire = serde_json::to_string(&r.config).unwrap();
    let back: gatehouse_crds::config::SidecarConfig = serde_json::from_str(&wire).unwrap();
    assert_eq!(back, r.config);
    // A semantic cache whose embedding alias no Route serves is a problem.
    assert_eq!(
        reasons(&r),
        [(
            ObjectKind::Route,
            "lost",
            gatehouse_crds::render::INVALID_CACHE
        )]
    );
}
