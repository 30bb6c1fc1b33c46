//! Requests the gateway makes of itself: the semantic cache's embeddings.
//!
//! An embedding is asked of the Route named by `semantic.embeddingRoute` exactly as an app's
//! `POST /v1/embeddings` would be, minus the socket: the same stages (identity, rate limits,
//! redaction, that Route's own exact cache, budgets, metering, metrics, the access line) and the
//! same attempts (targets in order, retries, failover, keys, egress). So an embedding is metered
//! and budgeted like any request of the calling workload (with the caller's `x-gatehouse-tag`),
//! and shows up in the metrics and access log under the embedding Route.

use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{Answer, Settings, attempt};
use crate::dialect::{Dialect, Operation};
use crate::request::Request;
use crate::request::budget::BodyBudget;
use crate::request::read::Body;
use crate::stages::{Chain, Context, End, Exchange, Flow};
use crate::state::Store;
use crate::upstream::UpstreamClient;

/// Runs embedding requests through the gateway's own request path.
pub struct Embedder {
    store: Arc<Store>,
    client: UpstreamClient,
    settings: Settings,
    /// The gateway's in-flight body budget (an embedding request's body counts like any).
    budget: Arc<BodyBudget>,
    /// The gateway's chain (set once it exists: the cache stage is one of its stages).
    chain: OnceLock<Weak<Chain>>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedder")
    }
}

impl Embedder {
    /// An embedder over the gateway's config store, client and settings.
    pub(crate) fn new(
        store: Arc<Store>,
        client: UpstreamClient,
        settings: Settings,
        budget: Arc<BodyBudget>,
    ) -> Self {
        Self {
            store,
            client,
            settings,
            budget,
            chain: OnceLock::new(),
        }
    }

    /// The chain the embedding requests run through.
    pub(crate) fn bind(&self, chain: &Arc<Chain>) {
        let _ = self.chain.set(Arc::downgrade(chain));
    }

    /// The embeddings answer (OpenAI shape) of `text` from the Route aliased `alias`, asked on
    /// behalf of a caller with tag `tag`; `None` on any failure (the caller bypasses).
    pub async fn embed(&self, alias: &str, text: &str, tag: Option<&str>) -> Option<Bytes> {
        let chain = self.chain.get()?.upgrade()?;
        let snapshot = self.store.load()?;
        let route = snapshot.aliases.get(alias).cloned()?;
        if route.targets.is_empty() {
            return None;
        }
        let bytes = Bytes::from(crate::cache::semantic::embedding_request(alias, text));
        let mut permit = self.budget.permit();
        if !permit.grow_to(bytes.len()) {
            return None;
        }
        let body = Body { bytes, permit };
        let mut inbound = Request::parse(body, Operation::Embeddings, Dialect::OpenAi, None)
            .await
            .ok()?;
        let mut x = Exchange::new(chain, Context::new(Dialect::OpenAi));
        let mut headers = HeaderMap::new();
        if let Some(v) = tag.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert("x-gatehouse-tag", v);
        }
        x.head(&headers).ok()?;
        x.ctx.snapshot = Some(snapshot.clone());
        inbound.metering = x.metered();
        x.ctx.measured.request_bytes = inbound.body_len() as u64;
        x.ctx.route = Some(route.clone());
        let result = match x.request(&mut inbound).await {
            Ok(Flow::Cached(hit)) => Ok(Answer::Cached {
                body: hit.body,
                stream: hit.stream,
            }),
            Ok(Flow::Answer(body)) => Ok(Answer::Complete { body, usage: None }),
            Ok(Flow::Continue | Flow::Wait(_)) => {
                let route = x.ctx.downgraded_to.clone().unwrap_or(route);
                let health = self.store.health().route(&route);
                let subset = x.ctx.rule_targets.clone();
                attempt::run(
                    &self.client,
                    &self.settings,
                    &mut x,
                    &route,
                    &health,
                    subset,
                    &mut inbound,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let mut headers = HeaderMap::new();
        let body = match result {
            Ok(Answer::Complete { mut body, usage }) => {
                x.ctx.usage = usage;
                x.answer(&mut body);
                x.respond(StatusCode::OK, &mut headers);
                Some(body)
            }
            Ok(Answer::Cached { body, .. }) => {
                x.respond(StatusCode::OK, &mut headers);
                Some(body)
            }
            Ok(Answer::Stream { .. }) | Ok(Answer::Final(_)) => {
                x.respond(StatusCode::BAD_GATEWAY, &mut headers);
                None
            }
            Err(e) => {
                x.ctx.error = Some(e.code());
                x.respond(e.status(), &mut headers);
                None
            }
        };
        x.end(End::Answered);
        body
    }
}
