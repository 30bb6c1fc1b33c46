//! `render`: from a namespace's custom resources plus resolved Secrets to the sidecar config.
//!
//! Pure: no I/O, deterministic output (sorted maps), problems returned as data so the operator can
//! turn them into status conditions and events.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::budget::{BudgetPeriod, BudgetSpec};
use crate::config::{
    BudgetConfig, DowngradeConfig, OutlierConfig, Pricing, ProviderConfig, ProviderKind,
    RetryConfig, RouteConfig, RuleConfig, RuleMatch as ConfigRuleMatch, SidecarConfig,
    TargetConfig, TimeoutConfig,
};
use crate::keys::{ProviderKeys, SecretData};
use crate::provider::{
    ANTHROPIC_ENDPOINT, AZURE_DEFAULT_API_VERSION, GEMINI_ENDPOINT, ModelProviderSpec,
    OPENAI_ENDPOINT, ProviderType, parse_decimal,
};
use crate::route::RouteSpec;
use crate::{Budget, ModelProvider, Route};

mod cache;
mod guardrails;
mod pricing;
pub use cache::INVALID_CACHE;
pub use guardrails::INVALID_REDACTION;
use pricing::price_models;

/// Everything `render` reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Namespace being rendered.
    pub namespace: &'a str,
    /// ModelProviders of the namespace.
    pub providers: &'a [ModelProvider],
    /// Routes of the namespace.
    pub routes: &'a [Route],
    /// Budgets of the namespace.
    pub budgets: &'a [Budget],
    /// Secrets the providers may reference.
    pub secrets: &'a SecretData,
}

/// Which kind of object a [`Problem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A ModelProvider.
    ModelProvider,
    /// A Route.
    Route,
    /// A Budget.
    Budget,
}

/// Something wrong with one object, found while rendering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Kind of the object.
    pub kind: ObjectKind,
    /// Name of the object.
    pub name: String,
    /// CamelCase reason, used as the condition reason and event reason.
    pub reason: String,
    /// Human-readable message; never contains secret material.
    pub message: String,
}

/// The result of rendering one namespace. `Debug` shows the key names, never the keys (see
/// [`ProviderKeys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The config sidecars read.
    pub config: SidecarConfig,
    /// Provider API keys by key name ([`crate::config::ProviderConfig::key`]).
    pub keys: ProviderKeys,
    /// Problems found, sorted.
    pub problems: Vec<Problem>,
    /// For every ModelProvider of the namespace (usable or not), the models it is used with (its
    /// `spec.models` and the `model` of every Route target naming it) that have no price, neither
    /// a valid override nor a catalog entry; sorted, empty when all are priced. Not a problem:
    /// such models are still served, with their cost reported as unknown.
    pub unpriced: BTreeMap<String, Vec<String>>,
}

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("duration is empty")]
    Empty,
    /// The string is not a sequence of `<digits><unit>` with unit ms, s, m or h.
    #[error("invalid duration {0:?}: expected e.g. 100ms, 2s, 1m or 1m30s")]
    Invalid(String),
    /// The value does not fit in 64-bit milliseconds.
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// Parse a duration such as `100ms`, `2s`, `1m`, `1h` or `1m30s` into milliseconds.
///
/// Accepts exactly what the CRD pattern accepts: one or more `<digits><unit>` parts, unit one of
/// `ms`, `s`, `m`, `h`, summed.
pub fn parse_duration_ms(s: &str) -> Result<u64, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(s.to_string());
    let overflow = || DurationError::Overflow(s.to_string());
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[len..];
        let part = number.checked_mul(unit_ms).ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Problems of one render pass, collected then sorted.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, kind: ObjectKind, name: &str, reason: &str, message: String) {
        self.0.push(Problem {
            kind,
            name: name.to_string(),
            reason: reason.to_string(),
            message,
        });
    }
}

/// Render one namespace.
pub fn render(inputs: &Inputs<'_>) -> Rendered {
    let mut config = SidecarConfig::empty(inputs.namespace);
    let mut keys = ProviderKeys::new();
    let mut problems = Problems::default();

    let mut providers: Vec<(String, &ModelProvider)> =
        inputs.providers.iter().map(|p| (p.name_any(), p)).collect();
    providers.sort_by(|a, b| a.0.cmp(&b.0));
    // The models each provider is used with: the model of every Route target naming it, plus
    // its own spec.models (below). Each gets a price now, so the sidecar prices a request with a
    // map lookup and never consults the catalog.
    let mut targeted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for route in inputs.routes {
        for t in &route.spec.targets {
            targeted
                .entry(t.provider.as_str())
                .or_default()
                .insert(t.model.as_str());
        }
    }
    let mut unpriced = BTreeMap::new();
    for (name, provider) in &providers {
        let mut used: BTreeSet<&str> = provider
            .spec
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        used.extend(targeted.get(name.as_str()).into_iter().flatten());
        let prices = price_models(name, &provider.spec, &used, &mut problems);
        unpriced.insert(name.clone(), prices.unpriced);
        if prices.invalid {
            // Serving a model at a wrong price would misreport cost and break budgets: leave the
            // provider out until the spec is fixed.
            continue;
        }
        if let Some((cfg, key)) = render_provider(
            name,
            &provider.spec,
            prices.models,
            inputs.secrets,
            &mut problems,
        ) {
            if let Some(key) = key {
                keys.insert(name.as_str(), key);
            }
            config.providers.insert(name.clone(), cfg);
        }
    }

    let mut routes: Vec<(String, &Route)> =
        inputs.routes.iter().map(|r| (r.name_any(), r)).collect();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut alias_owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, route) in &routes {
        let known = |p: &str| providers.iter().any(|(n, _)| n == p);
        let cfg = render_route(
            name,
            &route.spec,
            &config.providers,
            known,
            &mut alias_owner,
            &mut problems,
        );
        config.routes.insert(name.clone(), cfg);
    }
    cache::check_embedding_routes(&config.routes, &mut problems);

    let mut budgets: Vec<(String, &Budget)> =
        inputs.budgets.iter().map(|b| (b.name_any(), b)).collect();
    budgets.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, budget) in &budgets {
        if let Some(cfg) = render_budget(name, &budget.spec, &config.routes, &mut problems) {
            config.budgets.insert(name.clone(), cfg);
        }
    }

    let mut problems = problems.0;
    problems.sort();
    problems.dedup();
    Rendered {
        config,
        keys,
        problems,
        unpriced,
    }
}

fn default_endpoint(spec: &ModelProviderSpec) -> Option<String> {
    match spec.kind {
        ProviderType::Openai => Some(OPENAI_ENDPOINT.to_string()),
        ProviderType::Anthropic => Some(ANTHROPIC_ENDPOINT.to_string()),
        ProviderType::Gemini => Some(GEMINI_ENDPOINT.to_string()),
        ProviderType::Bedrock => spec
            .bedrock
            .as_ref()
            .map(|b| format!("https://bedrock-runtime.{}.amazonaws.com", b.region)),
        ProviderType::AzureOpenAI | ProviderType::OpenaiCompatible => None,
    }
}

fn render_provider(
    name: &str,
    spec: &ModelProviderSpec,
    models: BTreeMap<String, Pricing>,
    secrets: &SecretData,
    problems: &mut Problems,
) -> Option<(ProviderConfig, Option<String>)> {
    let kind = ObjectKind::ModelProvider;
    let type_name = ProviderKind::from(spec.kind).as_str();
    let Some(endpoint) = spec.endpoint.clone().or_else(|| default_endpoint(spec)) else {
        let message = match spec.kind {
            ProviderType::Bedrock => {
                "spec.bedrock.region or spec.endpoint is required for type bedrock".to_string()
            }
            _ => format!("spec.endpoint is required for type {type_name}"),
        };
        problems.push(kind, name, "InvalidSpec", message);
        return None;
    };
    let endpoint = endpoint.trim_end_matches('/').to_string();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        problems.push(
            kind,
            name,
            "InvalidSpec",
            format!("spec.endpoint {endpoint:?} must be an http:// or https:// URL"),
        );
        return None;
    }

    let key = match &spec.api_key_secret_ref {
        Some(r) => Some(resolve_key(name, &r.name, &r.key, secrets, problems)?),
        None if spec.kind == ProviderType::OpenaiCompatible => None,
        None => {
            problems.push(
                kind,
                name,
                "InvalidSpec",
                format!("spec.apiKeySecretRef is required for type {type_name}"),
            );
            return None;
        }
    };

    let api_version = (spec.kind == ProviderType::AzureOpenAI).then(|| {
        spec.azure
            .as_ref()
            .and_then(|a| a.api_version.clone())
            .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_string())
    });
    let region = match spec.kind {
        ProviderType::Bedrock => spec.bedrock.as_ref().map(|b| b.region.clone()),
        _ => None,
    };
    let cfg = ProviderConfig {
        kind: spec.kind.into(),
        endpoint,
        key: key.as_ref().map(|_| name.to_string()),
        models,
        api_version,
        region,
    };
    Some((cfg, key))
}

/// Look up and check an API key. Messages name the Secret and key, never the value.
fn resolve_key(
    provider: &str,
    secret: &str,
    key: &str,
    secrets: &SecretData,
    problems: &mut Problems,
) -> Option<String> {
    let kind = ObjectKind::ModelProvider;
    let Some(data) = secrets.get(secret) else {
        problems.push(
            kind,
            provider,
            "SecretNotFound",
            format!("secret {secret:?} not found"),
        );
        return None;
    };
    let Some(bytes) = data.get(key) else {
        problems.push(
            kind,
            provider,
            "KeyNotFound",
            format!("secret {secret:?} has no key {key:?}"),
        );
        return None;
    };
    let invalid = |why: &str| format!("key {key:?} of secret {secret:?} {why}");
    let Ok(value) = std::str::from_utf8(bytes) else {
        problems.push(kind, provider, "InvalidKey", invalid("is not valid UTF-8"));
        return None;
    };
    // `echo key > file` and editors add a final newline; tolerate exactly that.
    let value = value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .unwrap_or(value);
    if value.is_empty() {
        problems.push(kind, provider, "InvalidKey", invalid("is empty"));
        return None;
    }
    if value.trim() != value || value.contains(['\n', '\r']) {
        problems.push(
            kind,
            provider,
            "InvalidKey",
            invalid("has leading or trailing whitespace or a line break"),
        );
        return None;
    }
    Some(value.to_string())
}

fn render_route(
    name: &str,
    spec: &RouteSpec,
    ready: &BTreeMap<String, ProviderConfig>,
    known: impl Fn(&str) -> bool,
    alias_owner: &mut BTreeMap<String, String>,
    problems: &mut Problems,
) -> RouteConfig {
    let kind = ObjectKind::Route;
    let wanted: Vec<String> = if spec.models.is_empty() {
        vec![name.to_string()]
    } else {
        spec.models.clone()
    };
    let mut aliases = Vec::new();
    for alias in wanted {
        if alias.is_empty() || aliases.contains(&alias) {
            continue;
        }
        match alias_owner.get(&alias) {
            Some(owner) if owner != name => problems.push(
                kind,
                name,
                "DuplicateAlias",
                format!("model alias {alias:?} is already served by route {owner:?}"),
            ),
            _ => {
                alias_owner.insert(alias.clone(), name.to_string());
                aliases.push(alias);
            }
        }
    }

    let mut targets = Vec::new();
    let mut unavailable = Vec::new();
    // Names of the usable targets and their index in `targets`, for the rules.
    let mut target_names: Vec<(String, usize)> = Vec::new();
    for (i, t) in spec.targets.iter().enumerate() {
        let drop = |reason: &str,
                    message: String,
                    problems: &mut Problems,
                    unavailable: &mut Vec<String>| {
            problems.push(kind, name, reason, message.clone());
            unavailable.push(message);
        };
        if !ready.contains_key(&t.provider) {
            if known(&t.provider) {
                drop(
                    "ProviderNotReady",
                    format!("provider {:?} is not ready", t.provider),
                    problems,
                    &mut unavailable,
                );
            } else {
                drop(
                    "ProviderNotFound",
                    format!("provider {:?} not found", t.provider),
                    problems,
                    &mut unavailable,
                );
            }
            continue;
        }
        let Ok(weight) = u32::try_from(t.weight) else {
            drop(
                "InvalidSpec",
                format!("spec.targets[{i}].weight must not be negative"),
                problems,
                &mut unavailable,
            );
            continue;
        };
        if let Some(n) = &t.name {
            target_names.push((n.clone(), targets.len()));
        }
        targets.push(TargetConfig {
            provider: t.provider.clone(),
            model: t.model.clone(),
            priority: t.priority,
            weight,
        });
    }

    let mut duration = |field: &str, value: Option<&String>, default: u64| -> u64 {
        let Some(value) = value else { return default };
        match parse_duration_ms(value) {
            Ok(ms) => ms,
            Err(e) => {
                problems.push(kind, name, "InvalidDuration", format!("{field}: {e}"));
                default
            }
        }
    };
    let retry_defaults = RetryConfig::default();
    let backoff = spec.retry.as_ref().and_then(|r| r.backoff.as_ref());
    let backoff_base_ms = duration(
        "spec.retry.backoff.base",
        backoff.and_then(|b| b.base.as_ref()),
        retry_defaults.backoff_base_ms,
    );
    let backoff_max_ms = duration(
        "spec.retry.backoff.max",
        backoff.and_then(|b| b.max.as_ref()),
        retry_defaults.backoff_max_ms,
    );
    let timeout_defaults = TimeoutConfig::default();
    let timeouts = spec.timeouts.as_ref();
    let request_ms = duration(
        "spec.timeouts.request",
        timeouts.and_then(|t| t.request.as_ref()),
        timeout_defaults.request_ms,
    );
    let attempt_ms = duration(
        "spec.timeouts.attempt",
        timeouts.and_then(|t| t.attempt.as_ref()),
        timeout_defaults.attempt_ms,
    );
    let first_token_ms = timeouts
        .and_then(|t| t.first_token.as_ref())
        .map(|v| duration("spec.timeouts.firstToken", Some(v), attempt_ms));
    let idle_ms = timeouts
        .and_then(|t| t.idle.as_ref())
        .map(|v| duration("spec.timeouts.idle", Some(v), attempt_ms));
    let outlier = render_outlier(spec.outlier.as_ref(), &mut duration);
    let rules = spec
        .rules
        .iter()
        .map(|r| render_rule(r, &target_names))
        .collect();
    let rate_limits = guardrails::rate_limits(name, &spec.rate_limits, problems);
    // Redaction that cannot be used leaves the Route without targets: its requests are refused
    // with the reason rather than sent unredacted.
    let redact = match spec
        .redact
        .as_ref()
        .map(|r| guardrails::redact(name, r, problems))
    {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(message)) => {
            targets.clear();
            unavailable.push(message);
            None
        }
    };
    let audit = guardrails::audit(spec.audit.as_ref());
    let cache = spec.cache.as_ref().map(|c| cache::cache(name, c, problems));

    let attempts = match spec.retry.as_ref().map(|r| r.attempts) {
        None => retry_defaults.attempts,
        Some(a) => match u32::try_from(a) {
            Ok(a @ 1..=10) => a,
            _ => {
                problems.push(
                    kind,
                    name,
                    "InvalidSpec",
                    format!("spec.retry.attempts must be between 1 and 10, got {a}"),
                );
                retry_defaults.attempts
            }
        },
    };

    RouteConfig {
        aliases,
        targets,
        unavailable,
        retry: RetryConfig {
            attempts,
            backoff_base_ms,
            backoff_max_ms,
        },
        timeouts: TimeoutConfig {
            request_ms,
            attempt_ms,
            first_token_ms,
            idle_ms,
        },
        outlier,
        rules,
        rate_limits,
        redact,
        audit,
        cache,
    }
}

/// The outlier settings of a Route, defaults filled in.
fn render_outlier(
    policy: Option<&crate::route::OutlierPolicy>,
    duration: &mut impl FnMut(&str, Option<&String>, u64) -> u64,
) -> OutlierConfig {
    let d = OutlierConfig::default();
    let Some(p) = policy else { return d };
    let count = |v: Option<i32>, default: u32| v.map_or(default, |v| u32::try_from(v).unwrap_or(0));
    OutlierConfig {
        enabled: p.enabled.unwrap_or(d.enabled),
        consecutive_failures: count(p.consecutive_failures, d.consecutive_failures),
        consecutive_timeouts: count(p.consecutive_timeouts, d.consecutive_timeouts),
        failure_rate_percent: count(p.failure_rate_percent, d.failure_rate_percent).min(100),
        failure_rate_min_requests: count(p.failure_rate_min_requests, d.failure_rate_min_requests)
            .max(1),
        window_ms: duration("spec.outlier.window", p.window.as_ref(), d.window_ms),
        base_ejection_ms: duration(
            "spec.outlier.baseEjection",
            p.base_ejection.as_ref(),
            d.base_ejection_ms,
        ),
        max_ejection_ms: duration(
            "spec.outlier.maxEjection",
            p.max_ejection.as_ref(),
            d.max_ejection_ms,
        ),
    }
}

/// A rule of a Route, its target names turned into indices of the usable targets (a name whose
/// target is not usable is left out; a rule left with none serves with every target).
fn render_rule(rule: &crate::route::RouteRule, names: &[(String, usize)]) -> RuleConfig {
    let m = &rule.matches;
    let tokens = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
    RuleConfig {
        name: rule.name.clone(),
        matches: ConfigRuleMatch {
            min_input_tokens: tokens(m.min_input_tokens),
            max_input_tokens: tokens(m.max_input_tokens),
            tools: m.tools,
            images: m.images,
            json_mode: m.json_mode,
            headers: m
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            workload_labels: m.workload_labels.clone(),
        },
        targets: rule
            .targets
            .iter()
            .filter_map(|n| names.iter().find(|(name, _)| name == n).map(|(_, i)| *i))
            .collect(),
    }
}

/// A Budget's config as sidecars and the ledger see it, or the `InvalidSpec` problem that keeps
/// it out of the config (the CRD's rules reject these at admission; this guards what got past
/// them, e.g. objects stored under an older schema). Does not check that a downgrade Route
/// exists: that needs the namespace's Routes ([`render`] does).
pub fn budget_config(name: &str, spec: &BudgetSpec) -> Result<BudgetConfig, Problem> {
    let invalid = |message: String| Problem {
        kind: ObjectKind::Budget,
        name: name.to_string(),
        reason: "InvalidSpec".to_string(),
        message,
    };
    let limit_usd = match spec.limit.usd.as_deref() {
        None => None,
        Some(raw) => match parse_decimal(raw) {
            Some(v) if v > 0.0 => Some(v),
            _ => {
                return Err(invalid(format!(
                    "spec.limit.usd: {raw:?} is not a decimal greater than 0"
                )));
            }
        },
    };
    let limit_tokens = match spec.limit.tokens {
        None => None,
        Some(t) => match u64::try_from(t) {
            Ok(t) if t > 0 => Some(t),
            _ => {
                return Err(invalid(format!(
                    "spec.limit.tokens must be greater than 0, got {t}"
                )));
            }
        },
    };
    if limit_usd.is_none() && limit_tokens.is_none() {
        return Err(invalid(
            "at least one of spec.limit.usd and spec.limit.tokens must be set".to_string(),
        ));
    }
    let period_seconds = match (spec.period, spec.period_seconds) {
        (BudgetPeriod::Custom, Some(s)) if s >= MIN_PERIOD_SECONDS => u64::try_from(s).ok(),
        (BudgetPeriod::Custom, Some(s)) => {
            return Err(invalid(format!(
                "spec.periodSeconds must be at least {MIN_PERIOD_SECONDS}, got {s}"
            )));
        }
        (BudgetPeriod::Custom, None) => {
            return Err(invalid(
                "spec.periodSeconds is required with period custom".to_string(),
            ));
        }
        // Ignored with any other period (the CRD rejects it there).
        (_, _) => None,
    };
    let mut thresholds = Vec::with_capacity(spec.thresholds.len());
    for &t in &spec.thresholds {
        match u8::try_from(t) {
            Ok(t) if (1..=99).contains(&t) => thresholds.push(t),
            _ => {
                return Err(invalid(format!(
                    "spec.thresholds: {t} is not a percentage from 1 to 99"
                )));
            }
        }
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    let downgrade = match &spec.downgrade {
        None => None,
        Some(d) => match u8::try_from(d.at_percent) {
            Ok(at) if (1..=99).contains(&at) => Some(DowngradeConfig {
                at_percent: at,
                route: d.route.clone(),
            }),
            _ => {
                return Err(invalid(format!(
                    "spec.downgrade.atPercent: {} is not a percentage from 1 to 99",
                    d.at_percent
                )));
            }
        },
    };
    let scope = spec.scope.clone().unwrap_or_default();
    let mut routes = scope.routes;
    routes.sort();
    routes.dedup();
    let mut service_accounts = scope.service_accounts;
    service_accounts.sort();
    service_accounts.dedup();
    Ok(BudgetConfig {
        limit_usd,
        limit_tokens,
        period: spec.period.as_str().to_string(),
        enforcement: spec.enforcement.as_str().to_string(),
        routes,
        service_accounts,
        workload_selector: scope.workload_selector,
        fail_mode: spec.fail_mode.as_str().to_string(),
        period_seconds,
        thresholds,
        downgrade,
    })
}

/// Shortest custom period, in seconds (as the CRD says).
pub const MIN_PERIOD_SECONDS: i64 = 10;

/// Reason of the problem a Budget gets when its downgrade Route does not exist.
pub const DOWNGRADE_ROUTE_NOT_FOUND: &str = "DowngradeRouteNotFound";

fn render_budget(
    name: &str,
    spec: &BudgetSpec,
    routes: &BTreeMap<String, RouteConfig>,
    problems: &mut Problems,
) -> Option<BudgetConfig> {
    let mut config = match budget_config(name, spec) {
        Ok(c) => c,
        Err(p) => {
            problems.0.push(p);
            return None;
        }
    };
    // A missing downgrade Route does not disable the budget: its limit still holds, requests
    // past the downgrade threshold are served by their own Route instead.
    if let Some(d) = &config.downgrade
        && !routes.contains_key(&d.route)
    {
        problems.push(
            ObjectKind::Budget,
            name,
            DOWNGRADE_ROUTE_NOT_FOUND,
            format!(
                "spec.downgrade.route: no Route {:?} in this namespace; the limit is enforced \
                 without downgrading",
                d.route
            ),
        );
        config.downgrade = None;
    }
    Some(config)
}
