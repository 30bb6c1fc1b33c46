//! Identity: who made the request. The workload is the sidecar's own (built once at start from
//! flags / the downward API), so the stage only hands each request a clone of it; the one thing a
//! request says is the feature it belongs to, the optional `x-gatehouse-tag` header, which is
//! validated and capped here.
//!
//! Tag grammar: 1 to [`MAX_TAG_LEN`] characters of `[A-Za-z0-9._-]`, sent at most once. Anything
//! else is a 400 in the client's dialect, before the body is read. Cardinality: the first
//! `--max-tags` distinct values are kept as they are; later new ones become [`OTHER`] and are
//! counted (`gatehouse_tags_overflowed_total`). No header that claims an identity
//! (`x-gatehouse-namespace` and the like) is read: an app cannot pick another identity.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use http::{HeaderMap, HeaderName};
use prometheus_client::metrics::counter::Counter;

use super::{Context, Hooks, Stage};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::workload::Workload;

/// The header an app attributes a request to a feature with.
pub const TAG_HEADER: HeaderName = HeaderName::from_static("x-gatehouse-tag");

/// Longest tag.
pub const MAX_TAG_LEN: usize = 64;

/// What a new tag becomes past the cap.
pub const OTHER: &str = "other";

/// Distinct tags kept by default (`--max-tags`).
pub const DEFAULT_MAX_TAGS: usize = 100;

/// Fills `ctx.identity`.
#[derive(Debug)]
pub struct Identify {
    workload: Arc<Workload>,
    tags: Tags,
}

impl Identify {
    /// Attribute requests to `workload`, keeping at most `max_tags` distinct tags.
    pub fn new(workload: Arc<Workload>, max_tags: usize, metrics: &Metrics) -> Self {
        Self {
            workload,
            tags: Tags::new(max_tags, metrics.tags_overflowed.clone()),
        }
    }
}

impl Stage for Identify {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            head: true,
            ..Hooks::default()
        }
    }

    fn on_head(&self, ctx: &mut Context, headers: &HeaderMap) -> Result<(), ProxyError> {
        ctx.identity.workload = Some(self.workload.clone());
        let mut values = headers.get_all(TAG_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(ProxyError::InvalidTag("it must be sent at most once"));
        }
        let tag = validate(value.as_bytes())?;
        ctx.identity.tag = Some(self.tags.intern(tag));
        Ok(())
    }
}

/// The tag in a header value, if it follows the grammar.
pub fn validate(value: &[u8]) -> Result<&str, ProxyError> {
    if value.is_empty() || value.len() > MAX_TAG_LEN {
        return Err(ProxyError::InvalidTag(
            "it must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    if !value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ProxyError::InvalidTag(
            "it may contain only A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    // Only ASCII passed the check above.
    std::str::from_utf8(value).map_err(|_| ProxyError::InvalidTag("it must be ASCII"))
}

/// The tags seen so far, shared so a known tag costs a hash lookup and a reference count, never
/// an allocation.
#[derive(Debug)]
pub struct Tags {
    max: usize,
    /// At most `max` entries, so foldhash (faster than SipHash) has no flood to resist.
    seen: RwLock<HashSet<Arc<str>, foldhash::fast::RandomState>>,
    other: Arc<str>,
    overflowed: Counter,
}

impl Tags {
    /// Keep at most `max` distinct tags; count every request whose new tag becomes `other`.
    pub fn new(max: usize, overflowed: Counter) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::default()),
            other: Arc::from(OTHER),
            overflowed,
        }
    }

    /// The shared copy of `tag`, or `other` when `tag` is new and the cap is reached.
    pub fn intern(&self, tag: &str) -> Arc<str> {
        // A panic while holding the lock cannot leave the set half-updated (an insert is one
        // call), so a poisoned lock is still good to use.
        if let Some(known) = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tag)
        {
            return known.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = seen.get(tag) {
            return known.clone();
        }
        if seen.len() >= self.max {
            drop(seen);
            self.overflowed.inc();
            return self.other.clone();
        }
        let tag: Arc<str> = Arc::from(tag);
        seen.insert(tag.clone());
        tag
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::dialect::Dialect;

    fn identify(max_tags: usize) -> (Identify, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let workload = Workload {
            namespace: Arc::from("shop"),
            name: Arc::from("checkout"),
            service_account: Arc::from("checkout-sa"),
            pod: Arc::from("checkout-7d4b9c8f6d-x2x9k"),
            ..Workload::default()
        };
        (
            Identify::new(Arc::new(workload), max_tags, &metrics),
            metrics,
        )
    }

    fn head(stage: &Identify, headers: &[(&str, &str)]) -> Result<Context, ProxyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut ctx = Context::new(Dialect::OpenAi);
        stage.on_head(&mut ctx, &map).map(|()| ctx)
    }

    #[test]
    fn the_tag_grammar() {
        for good in ["checkout-summary", "a", "v1.2_beta", &"x".repeat(64)] {
            assert_eq!(validate(good.as_bytes()).unwrap(), good);
        }
        for bad in [
            "",
            &"x".repeat(65),
            "has space",
            "slash/y",
            "colon:y",
            "quote\"",
            "é",
        ] {
            let e = validate(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code(), "invalid_tag", "{bad:?}");
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn identity_is_the_sidecars_and_headers_cannot_change_it() {
        let (stage, _) = identify(10);
        let ctx = head(
            &stage,
            &[
                ("x-gatehouse-namespace", "kube-system"),
                ("x-gatehouse-workload", "admin"),
                ("x-gatehouse-service-account", "cluster-admin"),
                ("x-gatehouse-pod", "other-pod"),
                ("x-gatehouse-identity", "kube-system/admin"),
                ("x-forwarded-user", "root"),
                ("x-gatehouse-tag", "checkout-summary"),
            ],
        )
        .unwrap();
        let w = ctx.identity.workload.unwrap();
        assert_eq!(
            (&*w.namespace, &*w.name, &*w.service_account, &*w.pod),
            (
                "shop",
                "checkout",
                "checkout-sa",
                "checkout-7d4b9c8f6d-x2x9k"
            )
        );
        assert_eq!(ctx.identity.tag.as_deref(), Some("checkout-summary"));
        assert_eq!(head(&stage, &[]).unwrap().identity.tag, None);
    }

    #[test]
    fn a_malformed_or_repeated_tag_is_refused() {
        let (stage, _) = identify(10);
        let e = head(&stage, &[("x-gatehouse-tag", "no spaces")]).unwrap_err();
        assert_eq!(e.code(), "invalid_tag");
        let e = head(
            &stage,
            &[("x-gatehouse-tag", "a"), ("x-gatehouse-tag", "b")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most once"), "{e}");
    }

    #[test]
    fn tags_past_the_cap_become_other_and_are_counted() {
        let (stage, metrics) = identify(2);
        let tag = |t: &str| {
            head(&stage, &[("x-gatehouse-tag", t)])
                .unwrap()
                .identity
                .tag
                .unwrap()
        };
        let a = tag("a");
        assert_eq!(&*tag("b"), "b");
        assert_eq!(&*tag("c"), OTHER);
        assert_eq!(&*tag("d"), OTHER);
        // Known tags stay themselves, and are the same shared string.
        assert!(Arc::ptr_eq(&a, &tag("a")));
        assert_eq!(&*tag("b"), "b");
        assert_eq!(metrics.tags_overflowed.get(), 2);
        // No tags at all: every tag is `other`.
        let (none, metrics) = identify(0);
        assert_eq!(
            &*head(&none, &[("x-gatehouse-tag", "a")])
                .unwrap()
                .identity
                .tag
                .unwrap(),
            OTHER
        );
        assert_eq!(metrics.tags_overflowed.get(), 1);
    }
}
