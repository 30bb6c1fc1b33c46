//! Who is syncing: the sidecar's projected ServiceAccount token (audience
//! [`TOKEN_AUDIENCE`]), checked with a TokenReview and cached briefly.
//!
//! The cache is keyed by the token's SHA-256 (the token itself is never kept, logged or
//! counted). A verdict is kept for [`ACCEPTED_FOR`] (accepted) or [`REJECTED_FOR`] (rejected),
//! so a thousand sidecars syncing every few seconds cost the API server a TokenReview per
//! sidecar per minute rather than per sync; the price is that a token revoked by deleting its
//! pod keeps working here for up to a minute. An API server that does not answer is no verdict:
//! the sync fails with `unavailable` and nothing is cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_crds::ledger::TOKEN_AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// How long an accepted token is trusted without asking again.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// How long a rejected token is refused without asking again.
pub const REJECTED_FOR: Duration = Duration::from_secs(5);
/// Most cached verdicts; past it, expired ones are dropped, then all.
const CACHE_MAX: usize = 20_000;

/// Extra key a pod-bound token carries: the pod it was issued for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// A sidecar's identity, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Namespace of its ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// The pod the token is bound to, when it is (projected tokens in a pod are).
    pub pod: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The API server said no (wrong audience, expired, unknown, not a ServiceAccount).
    #[error("{0}")]
    Rejected(String),
    /// The API server could not be asked.
    #[error("failed to review the token: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
struct Verdict {
    until: Instant,
    result: Result<Identity, String>,
}

/// TokenReview with a cache.
#[derive(Clone)]
pub struct Authenticator {
    api: Api<TokenReview>,
    cache: Arc<Mutex<HashMap<[u8; 32], Verdict>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

impl Authenticator {
    /// An authenticator asking the API server of `client`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            api: Api::all(client),
            cache: Arc::default(),
            metrics,
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Identity, String>> {
        let cache = self.cache.lock().ok()?;
        let v = cache.get(key)?;
        (v.until > Instant::now()).then(|| v.result.clone())
    }

    fn remember(&self, key: [u8; 32], result: Result<Identity, String>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, v| v.until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        let ttl = if result.is_ok() {
            ACCEPTED_FOR
        } else {
            REJECTED_FOR
        };
        cache.insert(
            key,
            Verdict {
                until: Instant::now() + ttl,
                result,
            },
        );
    }

    /// Who holds `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Denied> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(result) = self.cached(&key) {
            self.metrics.ledger.token_review("cached");
            return result.map_err(Denied::Rejected);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = match self.api.create(&PostParams::default(), &review).await {
            Ok(a) => a,
            Err(e) => {
                self.metrics.ledger.token_review("error");
                return Err(Denied::Unavailable(e.to_string()));
            }
        };
        let result = Self::judge(answer);
        self.metrics.ledger.token_review(if result.is_ok() {
            "accepted"
        } else {
            "rejected"
        });
        self.remember(key, result.clone());
        result.map_err(Denied::Rejected)
    }

    fn judge(answer: TokenReview) -> Result<Identity, String> {
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            // The API server's reason (e.g. "token has expired", "invalid bearer token") names
            // no secret.
            return Err(match status.error.filter(|e| !e.is_empty()) {
                Some(e) => format!("the token was not accepted: {e}"),
                None => "the token was not accepted".to_string(),
            });
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE))
        {
            return Err(format!(
                "the token is not for audience {TOKEN_AUDIENCE} (project it with that audience)"
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = service_account(&username) else {
            return Err("the token is not a ServiceAccount token".to_string());
        };
        let pod = user
            .extra
            .and_then(|mut e| e.remove(POD_NAME_EXTRA))
            .and_then(|v| v.into_iter().next());
        Ok(Identity {
            namespace,
            service_account,
            pod,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn answer(authenticated: bool, audiences: &[&str], user: &str) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some(user.to_string()),
                    extra: Some(
                        [(POD_NAME_EXTRA.to_string(), vec!["web-0".to_string()])]
                            .into_iter()
                            .collect(),
                    ),
                    ..UserInfo::default()
                }),
                error: None,
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn only_service_account_tokens_for_the_ledger_audience_pass() {
        let ok = Authenticator::judge(answer(
            true,
            &[TOKEN_AUDIENCE],
            "system:serviceaccount:team-a:web",
        ));
        assert_eq!(
            ok,
            Ok(Identity {
                namespace: "team-a".into(),
                service_account: "web".into(),
                pod: Some("web-0".into()),
            })
        );
        assert!(
            Authenticator::judge(answer(false, &[TOKEN_AUDIENCE], "x"))
                .unwrap_err()
                .contains("not accepted")
        );
        assert!(
            Authenticator::judge(answer(true, &["api"], "system:serviceaccount:a:b"))
                .unwrap_err()
                .contains("audience")
        );
        assert!(
            Authenticator::judge(answer(true, &[TOKEN_AUDIENCE], "alice"))
                .unwrap_err()
                .contains("not a ServiceAccount")
        );
    }
}
