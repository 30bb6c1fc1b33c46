//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never reconcile at once.
//!
//! The holder renews every [`LeaderElection::renew_every`]; anyone may take the Lease once
//! `renewTime + leaseDurationSeconds` has passed. Writes carry the `resourceVersion` that was read,
//! so two candidates racing for an expired Lease cannot both win (the loser gets a 409). A holder
//! that cannot renew within the lease duration stops working before anybody else may start.
//!
//! The holder also publishes its budget ledger URL in the Lease (annotation [`LEDGER_URL`]), so
//! a standby can send sidecars there, and its term (the Lease's `acquireTime`), which fences
//! the ledger's records against a former leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::admin::{Health, Phase};
use crate::error::Error;

/// Annotation on the Lease: the holder's budget ledger URL.
pub const LEDGER_URL: &str = "gatehouse.dev/ledger-url";

/// What a candidate last saw of the Lease: the holder's ledger URL and, once it holds the
/// Lease itself, its term.
#[derive(Debug, Default)]
pub struct Observed {
    inner: Mutex<(Option<String>, i64)>,
}

impl Observed {
    /// The current holder's ledger URL, when another replica holds the Lease and published one.
    pub fn leader_url(&self) -> Option<String> {
        self.inner.lock().ok().and_then(|i| i.0.clone())
    }

    /// This candidate's term: the `acquireTime` (µs since the epoch) of its hold of the Lease.
    pub fn term(&self) -> i64 {
        self.inner.lock().map(|i| i.1).unwrap_or_default()
    }

    fn set_leader(&self, url: Option<String>) {
        if let Ok(mut i) = self.inner.lock() {
            i.0 = url;
        }
    }

    fn set_term(&self, term: i64) {
        if let Ok(mut i) = self.inner.lock() {
            i.0 = None;
            i.1 = term;
        }
    }
}

/// One candidate for one Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    advertise: Option<String>,
    observed: Arc<Observed>,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

impl LeaderElection {
    /// A candidate `identity` for Lease `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            advertise: None,
            observed: Arc::default(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }

    /// Publish `url` as this candidate's ledger URL while it holds the Lease, and report what
    /// it sees into `observed`.
    pub fn with_ledger(mut self, url: Option<String>, observed: Arc<Observed>) -> Self {
        self.advertise = url;
        self.observed = observed;
        self
    }

    /// This candidate's term once it holds the Lease (see [`Observed::term`]).
    pub fn term(&self) -> i64 {
        self.observed.term()
    }

    fn annotate(&self, meta: &mut ObjectMeta) {
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        match &self.advertise {
            Some(url) => {
                annotations.insert(LEDGER_URL.to_string(), url.clone());
            }
            None => {
                annotations.remove(LEDGER_URL);
            }
        }
    }

    fn held(&self, spec: &LeaseSpec) {
        let term = spec
            .acquire_time
            .as_ref()
            .map_or(0, |t| t.0.as_microsecond());
        self.observed.set_term(term);
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: take the Lease if it is free, expired or already ours. Returns whether we hold it.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(format!("get lease {}", self.name), e))?;
        let Some(mut lease) = current else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            self.annotate(&mut lease.metadata);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.held(&l.spec.unwrap_or_default());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(format!("create lease {}", self.name), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or_default(),
            ));
            t.0 + duration < now
        });
        if !(ours || holder.is_none() || expired) {
            let url = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEDGER_URL).cloned());
            self.observed.set_leader(url);
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or_default() + i32::from(!ours);
        let acquired = if ours { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(now, transitions, acquired));
        self.annotate(&mut lease.metadata);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.held(&l.spec.unwrap_or_default());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("update lease {}", self.name), e)),
        }
    }

    /// Wait until this candidate holds the Lease, reporting a standby as [`Phase::Standby`] while
    /// the API server answers and [`Phase::Unreachable`] while it does not.
    pub async fn acquire(&self, health: &Health) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "acquired leader lease");
                    return;
                }
                Ok(false) => health.set(Phase::Standby),
                Err(e) => {
                    health.set(Phase::Unreachable);
                    tracing::warn!(error = %e, "leader election attempt failed");
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Keep renewing; returns (with the reason) once the Lease is lost or could not be renewed in
    /// time.
    pub async fn hold(&self) -> Error {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => return Error::LostLease("another replica".into()),
                Err(e) => {
                    tracing::warn!(error = %e, "failed to renew the leader lease");
                    // Stop with a margin before the lease can expire for the others.
                    if last_renewed.elapsed() + self.renew_every >= self.lease_duration {
                        return e;
                    }
                }
            }
        }
    }

    /// Give the Lease up on shutdown so a standby takes over without waiting for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        if let Some(a) = lease.metadata.annotations.as_mut() {
            a.remove(LEDGER_URL);
        }
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "failed to release the leader lease");
        } else {
            tracing::info!("released leader lease");
        }
    }
}
