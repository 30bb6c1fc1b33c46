//! Reaching the cluster: Gatehouse's objects through the API, and the sidecars' admin ports
//! through the API server's `pods/proxy` subresource
//! (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/...`), which the API server forwards to the
//! pod's IP. Nothing has to be port-forwarded and no Service is needed; the caller needs `get`
//! on `pods/proxy` and `list` on `pods`.

use futures::future::join_all;
use http::{Request, StatusCode};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::ListParams;
use kube::client::Body;
use kube::{Api, Client};

use crate::Error;

/// The injected sidecar container's name (`operator/src/inject.rs`).
pub const SIDECAR_CONTAINER: &str = "gatehouse";

/// The sidecar's admin port when its container does not say (`GATEHOUSE_ADMIN_LISTEN`).
pub const DEFAULT_ADMIN_PORT: u16 = 4001;

/// A running pod with a Gatehouse sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The sidecar's admin port.
    pub port: u16,
}

/// The admin port a sidecar container listens on: the port of its `GATEHOUSE_ADMIN_LISTEN`
/// (`0.0.0.0:4001` as injected), else the default.
pub fn admin_port(container: &Container) -> u16 {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "GATEHOUSE_ADMIN_LISTEN")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(DEFAULT_ADMIN_PORT)
}

/// The sidecar of `pod`, if it has one and is running with an IP.
pub fn sidecar_of(pod: &Pod) -> Option<SidecarPod> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || status.pod_ip.is_none() {
        return None;
    }
    // A native sidecar is an init container; a regular one a container.
    let container = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == SIDECAR_CONTAINER)?;
    Some(SidecarPod {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        port: admin_port(container),
    })
}

/// The cluster, through one client.
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// The namespace commands use without `-n` (the kubeconfig context's).
    pub default_namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default_namespace", &self.default_namespace)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connect as kubectl would: `KUBECONFIG` or `~/.kube/config`, `--context`, or in-cluster.
    pub async fn connect(context: Option<String>) -> Result<Self, Error> {
        let options = kube::config::KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(kubeconfig) if options.context.is_none() => {
                kube::Config::incluster().map_err(|_| Error::Config(kubeconfig.to_string()))?
            }
            Err(e) => return Err(Error::Config(e.to_string())),
        };
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            client,
            default_namespace,
        })
    }

    /// The running sidecars in `namespace` (every namespace when `None`).
    pub async fn sidecars(&self, namespace: Option<&str>) -> Result<Vec<SidecarPod>, Error> {
        let api: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::Api("list pods".into(), e.to_string()))?;
        let mut out: Vec<SidecarPod> = pods.items.iter().filter_map(sidecar_of).collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(out)
    }

    /// `GET path` on `pod`'s admin port, through the API server: status and body.
    pub async fn admin_get(
        &self,
        pod: &SidecarPod,
        path: &str,
    ) -> Result<(StatusCode, String), Error> {
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}:{}/proxy{}",
            pod.namespace, pod.name, pod.port, path
        );
        let what = || format!("reach the sidecar of pod {}/{}", pod.namespace, pod.name);
        let request = Request::get(uri)
            .body(Body::empty())
            .map_err(|e| Error::Api(what(), e.to_string()))?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| Error::Api(what(), e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| Error::Api(what(), e.to_string()))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `GET path` on every sidecar in `pods` at once; one result each, in order.
    pub async fn admin_get_all(
        &self,
        pods: &[SidecarPod],
        path: &str,
    ) -> Vec<Result<(StatusCode, String), Error>> {
        join_all(pods.iter().map(|p| self.admin_get(p, path))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_admin_port_comes_from_the_injected_env() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "app-1", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "gatehouse", "env": [
                    {"name": "GATEHOUSE_ADMIN_LISTEN", "value": "0.0.0.0:4101"}]}],
                "containers": [{"name": "app"}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.7"}
        }))
        .unwrap();
        assert_eq!(
            sidecar_of(&pod),
            Some(SidecarPod {
                namespace: "shop".into(),
                name: "app-1".into(),
                port: 4101
            })
        );
        let plain: Pod = serde_json::from_value(json!({
            "metadata": {"name": "app-2", "namespace": "shop"},
            "spec": {"containers": [{"name": "app"}, {"name": "gatehouse"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.8"}
        }))
        .unwrap();
        assert_eq!(sidecar_of(&plain).map(|p| p.port), Some(DEFAULT_ADMIN_PORT));
        let pending: Pod = serde_json::from_value(json!({
            "metadata": {"name": "app-3", "namespace": "shop"},
            "spec": {"containers": [{"name": "gatehouse"}]},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert_eq!(sidecar_of(&pending), None);
    }
}
