//! Routing rules (`Route.spec.rules`): the first rule whose conditions all hold picks the subset of
//! the route's targets the attempts use; no match, every target. The rule is named in the
//! `x-gatehouse-rule` response header and the access line.
//!
//! Features come from what the request index already noted (`request::IndexFeatures`: tools,
//! JSON mode, where `messages` sits) plus two scans of the raw bytes, made only for routes that
//! have rules: the body's length for the token estimate (bytes / 4, the usual rule of thumb for
//! English and code) and a substring search of `messages` for image parts (`"image_url"`,
//! `"image"`, `"input_image"` as JSON string tokens: inside a JSON string those quotes would be
//! escaped, so text that merely mentions them does not count).

use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse_crds::config::{RuleConfig, RuleMatch};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use memchr::memmem;

use super::{Context, Flow, Hooks, Stage};
use crate::error::ProxyError;
use crate::request::Request;

/// The response header naming the matched rule.
pub const RULE_HEADER: &str = "x-gatehouse-rule";

/// The routing-rules stage.
#[derive(Debug)]
pub struct Rules;

/// What rules match on, for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// The request declares tools.
    pub tools: bool,
    /// The request carries images.
    pub images: bool,
    /// The request asks for JSON output.
    pub json_mode: bool,
}

impl Features {
    /// The features of `request`.
    pub fn of(request: &Request) -> Self {
        let body = request.body();
        let f = &request.index.features;
        let messages = f
            .messages_at
            .clone()
            .and_then(|r| body.get(r))
            .unwrap_or_default();
        let images = [&b"\"image_url\""[..], b"\"image\"", b"\"input_image\""]
            .iter()
            .any(|needle| memmem::find(messages, needle).is_some());
        Self {
            input_tokens: (body.len() as u64).div_ceil(4),
            tools: f.tools,
            images,
            json_mode: f.json_mode,
        }
    }
}

/// Whether `m` holds for a request with `features`, `headers` (the values of the headers rules
/// name) and the caller's workload `labels`.
pub fn matches(
    m: &RuleMatch,
    features: &Features,
    headers: &[(HeaderName, HeaderValue)],
    labels: &BTreeMap<String, String>,
) -> bool {
    let want = |cond: Option<bool>, have: bool| cond.is_none_or(|c| c == have);
    m.min_input_tokens
        .is_none_or(|min| features.input_tokens >= min)
        && m.max_input_tokens
            .is_none_or(|max| features.input_tokens <= max)
        && want(m.tools, features.tools)
        && want(m.images, features.images)
        && want(m.json_mode, features.json_mode)
        && m.headers.iter().all(|(name, value)| {
            headers
                .iter()
                .any(|(n, v)| n.as_str() == name && v.as_bytes() == value.as_bytes())
        })
        && m.workload_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
}

/// The first rule of `rules` that matches.
pub fn first_match<'a>(
    rules: &'a [RuleConfig],
    features: &Features,
    headers: &[(HeaderName, HeaderValue)],
    labels: &BTreeMap<String, String>,
) -> Option<&'a RuleConfig> {
    rules
        .iter()
        .find(|r| matches(&r.matches, features, headers, labels))
}

/// The caller's workload labels: the pod labels the sidecar's identity carries (the
/// `--workload-labels` allow-list of `--pod-labels` / `--pod-labels-file`); a rule naming a label
/// outside that list never matches.
fn caller_labels(ctx: &Context) -> &BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    ctx.identity.workload.as_ref().map_or(&NONE, |w| &w.labels)
}

impl Stage for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            ..Hooks::default()
        }
    }

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        let Some(route) = ctx.route.clone() else {
            return Ok(Flow::Continue);
        };
        if route.config.rules.is_empty() {
            return Ok(Flow::Continue);
        }
        let features = Features::of(request);
        let labels = caller_labels(ctx);
        if let Some(rule) = first_match(&route.config.rules, &features, &ctx.rule_headers, labels) {
            tracing::debug!(request_id = %ctx.request_id, route = %route.name, rule = %rule.name,
                input_tokens = features.input_tokens, tools = features.tools,
                images = features.images, json_mode = features.json_mode, "routing rule matched");
            ctx.rule = Some(Arc::from(rule.name.as_str()));
            // A rule whose targets are all unusable (render left none) serves with every target.
            if !rule.targets.is_empty() {
                ctx.rule_targets = Some(rule.targets.clone());
            }
        }
        Ok(Flow::Continue)
    }

    fn on_response(&self, ctx: &Context, _status: StatusCode, headers: &mut HeaderMap) {
        if let Some(rule) = ctx.rule.as_deref()
            && let Ok(value) = HeaderValue::from_str(rule)
        {
            headers.insert(RULE_HEADER, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, m: RuleMatch) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            matches: m,
            targets: vec![0],
        }
    }

    #[test]
    fn every_condition_must_hold_and_the_first_match_wins() {
        let rules = vec![
            rule(
                "big",
                RuleMatch {
                    min_input_tokens: Some(1000),
                    ..RuleMatch::default()
                },
            ),
            rule(
                "cheap-tools",
                RuleMatch {
                    max_input_tokens: Some(999),
                    tools: Some(true),
                    headers: [("x-gatehouse-tier".into(), "cheap".into())].into(),
                    ..RuleMatch::default()
                },
            ),
            rule(
                "team",
                RuleMatch {
                    workload_labels: [("team".into(), "search".into())].into(),
                    ..RuleMatch::default()
                },
            ),
            rule(
                "vision-json",
                RuleMatch {
                    images: Some(true),
                    json_mode: Some(true),
                    ..RuleMatch::default()
                },
            ),
        ];
        let tier = |v: &str| {
            vec![(
                HeaderName::from_static("x-gatehouse-tier"),
                HeaderValue::from_str(v).unwrap(),
            )]
        };
        let none = BTreeMap::new();
        let f = |tokens, tools, images, json_mode| Features {
            input_tokens: tokens,
            tools,
            images,
            json_mode,
        };
        let name = |f: &Features, h: &[(HeaderName, HeaderValue)], l: &BTreeMap<String, String>| {
            first_match(&rules, f, h, l).map(|r| r.name.clone())
        };
        assert_eq!(
            name(&f(5000, true, false, false), &tier("cheap"), &none).as_deref(),
            Some("big")
        );
        assert_eq!(
            name(&f(10, true, false, false), &tier("cheap"), &none).as_deref(),
            Some("cheap-tools")
        );
        assert_eq!(
            name(&f(10, true, false, false), &tier("premium"), &none),
            None
        );
        assert_eq!(
            name(&f(10, false, false, false), &tier("cheap"), &none),
            None
        );
        let team: BTreeMap<String, String> = [("team".into(), "search".into())].into();
        assert_eq!(
            name(&f(10, false, false, false), &[], &team).as_deref(),
            Some("team")
        );
        assert_eq!(
            name(&f(10, false, true, true), &[], &none).as_deref(),
            Some("vision-json")
        );
        assert_eq!(name(&f(10, false, true, false), &[], &none), None);
    }
}
