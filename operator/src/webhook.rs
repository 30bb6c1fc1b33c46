//! The sidecar-injection admission webhook, over HTTPS on its own port.
//!
//! Every replica serves it, leader or not: admission must not wait for a leader election, and
//! with two replicas behind the Service one can restart while the other answers. The decision is
//! [`crate::inject`]'s; this module speaks `admission.k8s.io/v1`, turns the decision into a JSON
//! patch, a denial or a Warning Event, and keeps the namespace's [`CA_CONFIG_MAP`] (the CA bundle
//! the sidecar will trust the operator's ledger with) current.
//!
//! The TLS configuration comes from [`crate::certs::ServingCert`], which swaps the certificate in
//! place: a rotation needs no restart and drops no connection.

pub mod setup;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::certs::Published;
use crate::inject::{self, CA_CONFIG_MAP, CA_KEY, Decision};
use crate::metrics::Metrics;
use crate::objects::FIELD_MANAGER;

/// The path the webhook configuration calls.
pub const MUTATE_PATH: &str = "/mutate";
/// Label on every [`CA_CONFIG_MAP`], so a CA rotation finds them all.
pub const CA_LABEL: &str = "gatehouse.dev/ca-bundle";
/// The largest AdmissionReview read: a pod is at most etcd's 1.5 MiB, and the review may carry
/// it twice.
const MAX_BODY: usize = 4 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the webhook waits on writing the CA ConfigMap before answering anyway.
const CA_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The webhook's state: the injection settings and what it needs to write.
pub struct Webhook {
    settings: inject::Settings,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    published: watch::Receiver<Published>,
    /// The one namespace the operator watches, if it watches one.
    scope: Option<String>,
    /// Namespaces whose CA ConfigMap this replica wrote, and the bundle it wrote.
    ca_written: Mutex<HashMap<String, Arc<str>>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A webhook injecting with `settings`; `published` follows the CA bundle; `scope` is the
    /// namespace the operator watches, if it watches one.
    pub fn new(
        settings: inject::Settings,
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        published: watch::Receiver<Published>,
        scope: Option<String>,
    ) -> Self {
        Self {
            settings,
            client,
            recorder,
            metrics,
            published,
            scope,
            ca_written: Mutex::new(HashMap::new()),
        }
    }

    /// Answer one AdmissionReview (the body the API server posts).
    pub async fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.admission("invalid_review");
                return AdmissionResponse::invalid(format!("failed to parse AdmissionReview: {e}"))
                    .into_review();
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => {
                self.metrics.admission("invalid_review");
                return AdmissionResponse::invalid(format!("failed to read AdmissionReview: {e}"))
                    .into_review();
            }
        };
        let response = self.respond(&request).await;
        self.metrics
            .admission_duration
            .observe(started.elapsed().as_secs_f64());
        response.into_review()
    }

    async fn respond(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let pod_create = request.kind.group.is_empty()
            && request.kind.kind == "Pod"
            && request.operation == Operation::Create
            && request.sub_resource.is_none();
        let pod = pod_create
            .then_some(request.object.as_ref())
            .flatten()
            .map(|o| serde_json::to_value(o).and_then(serde_json::from_value::<Pod>));
        let pod = match pod {
            Some(Ok(pod)) => pod,
            Some(Err(e)) => {
                // Not a pod this operator's API types can read: let it through untouched rather
                // than block every pod of the namespace.
                self.metrics.admission("unreadable");
                tracing::warn!(error = %e, "failed to read the pod under admission; admitted unchanged");
                let mut response = response;
                response.warnings = Some(vec![format!(
                    "gatehouse could not read this pod and did not inject it: {e}"
                )]);
                return response;
            }
            None => {
                self.metrics.admission("not_a_pod_create");
                return response;
            }
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let audiences = self.cloud_audiences(&namespace).await;
        let decision = inject::decide_with(&pod, &namespace, &self.settings, &audiences);
        self.metrics.admission(decision.metric_label());
        let who = pod_name(&pod, request);
        match decision {
            Decision::Inject { mutation, warnings } => {
                let patched = mutation
                    .patch(&pod)
                    .map_err(|e| e.to_string())
                    .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()));
                let mut response = match patched {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "failed to serialize the injection patch");
                        return response.deny(format!(
                            "gatehouse failed to build the injection patch: {e}"
                        ));
                    }
                };
                if !warnings.is_empty() {
                    response.warnings = Some(warnings);
                }
                if !request.dry_run {
                    self.ensure_ca(&namespace).await;
                }
                tracing::info!(
                    namespace = %namespace,
                    pod = %who,
                    sidecar = mutation.sidecar.is_some(),
                    containers_given_env = mutation.env.len(),
                    dry_run = request.dry_run,
                    "injected"
                );
                response
            }
            Decision::Unchanged(why) => {
                tracing::debug!(namespace = %namespace, pod = %who, ?why, "not injected");
                response
            }
            Decision::Skip { reason, message } => {
                tracing::info!(namespace = %namespace, pod = %who, reason, "not injected");
                if !request.dry_run {
                    self.event(&pod, &namespace, reason, &message);
                }
                let mut response = response;
                response.warnings = Some(vec![message]);
                response
            }
            Decision::Refuse { reason, message } => {
                tracing::info!(namespace = %namespace, pod = %who, reason, "refused");
                response.deny(message)
            }
        }
    }

    /// A Warning Event about a pod that was not injected. The pod does not exist yet (it is
    /// being admitted), so the Event names it and, for a generated name, its owner.
    fn event(&self, pod: &Pod, namespace: &str, reason: &'static str, message: &str) {
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let regarding = match (pod.metadata.name.as_deref(), owner) {
            (Some(name), _) if !name.is_empty() => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectReference::default()
            },
            (_, Some(owner)) => ObjectReference {
                api_version: Some(owner.api_version.clone()),
                kind: Some(owner.kind.clone()),
                namespace: Some(namespace.into()),
                name: Some(owner.name.clone()),
                uid: Some(owner.uid.clone()),
                ..ObjectReference::default()
            },
            _ => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace.into()),
                name: pod.metadata.generate_name.clone(),
                ..ObjectReference::default()
            },
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(message.into()),
            action: "Inject".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        // Not on the admission's path: the API server is waiting for the answer.
        tokio::spawn(async move {
            match recorder.publish(&event, &regarding).await {
                Ok(()) => metrics.write("event", "apply"),
                Err(e) => tracing::warn!(error = %e, "failed to publish an Event"),
            }
        });
    }

    /// Make sure `namespace` has [`CA_CONFIG_MAP`] with the current bundle. Failures are logged:
    /// the sidecar's volume is optional, and a pod is never refused for this.
    /// The cloud identity token audiences the namespace's ModelProviders need, read live (a pod
    /// is admitted rarely; a stale cache would give a new pod the wrong tokens). When they cannot
    /// be read in time, none: the sidecar then fails over past those providers and says why.
    async fn cloud_audiences(&self, namespace: &str) -> std::collections::BTreeSet<&'static str> {
        // An operator watching one namespace renders no config elsewhere, and may not list there.
        if self
            .scope
            .as_deref()
            .is_some_and(|scope| scope != namespace)
        {
            return Default::default();
        }
        let api = Api::<gatehouse_crds::ModelProvider>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(
            CA_WRITE_TIMEOUT,
            api.list(&kube::api::ListParams::default()),
        )
        .await
        {
            Ok(Ok(list)) => inject::cloud_audiences(list.items.iter().map(|p| &p.spec)),
            Ok(Err(e)) => {
                tracing::warn!(namespace, error = %e, "failed to list ModelProviders; no cloud identity token injected");
                Default::default()
            }
            Err(_) => {
                tracing::warn!(
                    namespace,
                    "timed out listing ModelProviders; no cloud identity token injected"
                );
                Default::default()
            }
        }
    }

    async fn ensure_ca(&self, namespace: &str) {
        let Published { bundle, owner } = self.published.borrow().clone();
        let Some(bundle) = bundle else { return };
        let written = self
            .ca_written
            .lock()
            .ok()
            .and_then(|w| w.get(namespace).cloned());
        if written.as_deref() == Some(&*bundle) {
            return;
        }
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), namespace);
        let write = write_ca(&api, namespace, &bundle, owner);
        match tokio::time::timeout(CA_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.metrics.write("configmap", "apply");
                if let Ok(mut w) = self.ca_written.lock() {
                    w.insert(namespace.to_string(), bundle);
                }
            }
            Ok(Err(e)) => tracing::warn!(namespace, error = %e, "failed to write {CA_CONFIG_MAP}"),
            Err(_) => tracing::warn!(namespace, "writing {CA_CONFIG_MAP} timed out"),
        }
    }

    /// Keep every [`CA_CONFIG_MAP`] current as the bundle changes (a CA rotation), until `stop`.
    pub async fn follow_bundle(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut published = self.published.clone();
        loop {
            tokio::select! {
                changed = published.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let Published { bundle, owner } = published.borrow_and_update().clone();
            let Some(bundle) = bundle else { continue };
            if let Err(e) = self.rewrite_all(&bundle, owner).await {
                tracing::warn!(error = %e, "failed to update the {CA_CONFIG_MAP} ConfigMaps");
            }
        }
    }

    async fn rewrite_all(
        &self,
        bundle: &Arc<str>,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Result<(), kube::Error> {
        let api = match self.scope.as_deref() {
            Some(ns) => Api::<ConfigMap>::namespaced(self.client.clone(), ns),
            None => Api::<ConfigMap>::all(self.client.clone()),
        };
        let list = api
            .list(&ListParams::default().labels(&format!("{CA_LABEL}=true")))
            .await?;
        for cm in list.items {
            let Some(namespace) = cm.metadata.namespace.clone() else {
                continue;
            };
            let current = cm.data.as_ref().and_then(|d| d.get(CA_KEY));
            if current.map(String::as_str) != Some(&**bundle) {
                let api = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace);
                write_ca(&api, &namespace, bundle, owner.clone()).await?;
                self.metrics.write("configmap", "apply");
                tracing::info!(namespace = %namespace, "{CA_CONFIG_MAP} updated with the new CA bundle");
            }
            if let Ok(mut w) = self.ca_written.lock() {
                w.insert(namespace, bundle.clone());
            }
        }
        Ok(())
    }
}

async fn write_ca(
    api: &Api<ConfigMap>,
    namespace: &str,
    bundle: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), kube::Error> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (CA_LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/part-of".to_string(),
                    "gatehouse".to_string(),
                ),
            ])),
            // The garbage collector removes it with the webhook configuration (helm uninstall).
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CA_KEY.to_string(), bundle.to_string())])),
        ..ConfigMap::default()
    };
    api.patch(
        CA_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
}

/// The pod's name for logs: its name, or its generateName with a `*`.
fn pod_name(pod: &Pod, request: &AdmissionRequest<DynamicObject>) -> String {
    match (pod.metadata.name.as_deref(), &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) => format!("{g}*"),
        _ => request.name.clone(),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

async fn handle(webhook: Arc<Webhook>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != MUTATE_PATH {
        return respond(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec());
    }
    if req.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"method not allowed: POST an AdmissionReview\n".to_vec(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("failed to read the request body: {e}\n").into_bytes(),
            );
        }
    };
    let review = webhook.review(&body).await;
    match serde_json::to_vec(&review) {
        Ok(json) => respond(StatusCode::OK, "application/json", json),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("failed to serialize the AdmissionReview: {e}\n").into_bytes(),
        ),
    }
}

/// Serve the webhook on `listener` with `tls` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    webhook: Arc<Webhook>,
    tls: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "webhook: failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(handle(webhook, req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(error = %e, "webhook: connection ended with an error");
            }
        });
    }
}
