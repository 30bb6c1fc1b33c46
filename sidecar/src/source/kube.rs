//! Kube mode: watch the namespace's rendered config ConfigMap through the API and the mounted keys
//! directory, and rebuild the snapshot when either changes.
//!
//! The watch is restricted to the one object (`fieldSelector=metadata.name=gatehouse-config`), so
//! the sidecar's ServiceAccount needs only get/list/watch on that name. The watcher reconnects with
//! backoff on its own; until it does, the last good config keeps serving.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME};
use gatehouse_crds::{ProviderKeys, Rendered};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Sink;
use super::keys::KeysDir;

/// Why the API client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to configure the kubernetes client: {0}")]
pub struct ClientError(String);

/// A client from in-cluster config or `KUBECONFIG`; with `token_file`, authenticating with that
/// bearer token instead (re-read when it changes, as projected ServiceAccount tokens rotate).
pub async fn client(token_file: Option<&Path>) -> Result<Client, ClientError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| ClientError(e.to_string()))?;
    if let Some(path) = token_file {
        config.auth_info = kube::config::AuthInfo {
            token_file: Some(path.to_string_lossy().into_owned()),
            ..kube::config::AuthInfo::default()
        };
    }
    Client::try_from(config).map_err(|e| ClientError(e.to_string()))
}

/// The running source; dropping it stops the watch of the config (the keys directory's watch is
/// the caller's).
#[derive(Debug)]
pub struct Watching {
    task: JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parse the rendered config out of the ConfigMap.
pub fn parse(cm: &ConfigMap) -> Result<SidecarConfig, String> {
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| format!("configmap {CONFIG_NAME} has no {CONFIG_KEY}"))?;
    serde_json::from_str(json).map_err(|e| format!("failed to parse {CONFIG_KEY}: {e}"))
}

/// Start watching config `namespace/gatehouse-config`, and re-read the keys directory on every
/// message of `keys_rx` (from a [`super::files`] watch of it).
pub fn watch(
    client: Client,
    namespace: &str,
    keys: KeysDir,
    mut keys_rx: mpsc::UnboundedReceiver<()>,
    sink: Sink,
) -> Watching {
    let api = Api::<ConfigMap>::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_NAME}"));
    let task = tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut current: Option<SidecarConfig> = None;
        let mut current_keys = read_keys(&keys, &sink).unwrap_or_default();
        loop {
            tokio::select! {
                event = events.next() => {
                    let cm = match event {
                        Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => cm,
                        Some(Ok(Event::Delete(_))) => {
                            tracing::warn!("config {CONFIG_NAME} deleted, keeping the last good one");
                            continue;
                        }
                        Some(Ok(Event::Init | Event::InitDone)) => continue,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "config watch failed, retrying; serving the last good config");
                            continue;
                        }
                        None => return,
                    };
                    match parse(&cm) {
                        Ok(config) if current.as_ref() == Some(&config) => {}
                        Ok(config) => {
                            current = Some(config.clone());
                            publish(&sink, config, current_keys.clone());
                        }
                        Err(e) => super::reject(&sink.metrics, "kube", &e),
                    }
                }
                changed = keys_rx.recv() => {
                    if changed.is_none() {
                        return;
                    }
                    // The kubelet's swap is several events; read once they settle.
                    while let Ok(Some(())) =
                        tokio::time::timeout(Duration::from_millis(20), keys_rx.recv()).await
                    {}
                    // A failed read keeps the keys in force rather than dropping them all.
                    let Some(keys_now) = read_keys(&keys, &sink) else { continue };
                    if keys_now != current_keys {
                        current_keys = keys_now;
                        tracing::info!(keys = current_keys.len(), "provider keys changed");
                        if let Some(config) = &current {
                            publish(&sink, config.clone(), current_keys.clone());
                        }
                    }
                }
            }
        }
    });
    Watching { task }
}

fn read_keys(keys: &KeysDir, sink: &Sink) -> Option<ProviderKeys> {
    match keys.read() {
        Ok(k) => Some(k),
        Err(e) => {
            super::reject(
                &sink.metrics,
                "keys",
                &format!("failed to read keys from {}: {e}", keys.path().display()),
            );
            None
        }
    }
}

fn publish(sink: &Sink, config: SidecarConfig, keys: ProviderKeys) {
    super::apply(
        &sink.store,
        &sink.metrics,
        Rendered {
            config,
            keys,
            problems: Vec::new(),
            unpriced: Default::default(),
            insecure_tls: Default::default(),
        },
        "kube",
    );
}
