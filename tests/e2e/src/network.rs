//! Reaching processes on this machine through Kubernetes Services, the way the API server calls
//! an admission webhook. The harness runs kube-apiserver with `--enable-aggregator-routing`, so it
//! dials a Service's endpoints rather than its cluster IP (there is no kube-proxy here); no
//! controller-manager runs, so tests publish those endpoints themselves with
//! [`publish_endpoints`]. The API server refuses loopback endpoint addresses, so the processes
//! listen on this machine's own address, [`host_ip`].

use std::collections::BTreeMap;
use std::net::{IpAddr, UdpSocket};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};

/// Label the harness puts on the EndpointSlices it publishes.
const MANAGED_BY: &str = "gatehouse-e2e";

/// A non-loopback IPv4 address of this machine (`GATEHOUSE_E2E_HOST_IP` overrides it): the source
/// address of the default route, found by connecting a UDP socket (which sends nothing).
pub fn host_ip() -> Result<IpAddr> {
    if let Ok(ip) = std::env::var("GATEHOUSE_E2E_HOST_IP") {
        return ip
            .parse()
            .with_context(|| format!("GATEHOUSE_E2E_HOST_IP={ip} is not an IP address"));
    }
    let socket = UdpSocket::bind("0.0.0.0:0").context("failed to bind a UDP socket")?;
    socket
        .connect("203.0.113.1:9")
        .or_else(|_| socket.connect("198.51.100.1:9"))
        .context(
            "failed to find a route off this machine; set GATEHOUSE_E2E_HOST_IP to a \
             non-loopback address of it (the API server refuses loopback endpoints)",
        )?;
    let ip = socket.local_addr()?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        bail!(
            "this machine's route address is {ip}; set GATEHOUSE_E2E_HOST_IP to a non-loopback \
             address of it (the API server refuses loopback endpoints)"
        );
    }
    Ok(ip)
}

/// Make `ports` (host, port) the endpoints of port `port_name` of Service `namespace/service`,
/// replacing what an earlier call published: one EndpointSlice per distinct port, as the
/// endpoint-slice controller would write for pods listening there. An empty list removes them
/// all (the Service then has no endpoints).
pub async fn publish_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
    port_name: &str,
    endpoints: &[(IpAddr, u16)],
) -> Result<()> {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    // Owned by the Service, as the endpoint-slice controller writes them: the garbage collector
    // of a real cluster removes them with it.
    let owner = Api::<Service>::namespaced(client.clone(), namespace)
        .get(service)
        .await
        .with_context(|| format!("failed to get service {namespace}/{service}"))?
        .controller_owner_ref(&())
        .context("the service has no uid")?;
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for (ip, port) in endpoints {
        by_port.entry(*port).or_default().push(ip.to_string());
    }
    let mut wanted = Vec::new();
    for (port, addresses) in &by_port {
        let name = format!("{service}-{port_name}-{port}");
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_string(),
                        service.to_string(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        MANAGED_BY.to_string(),
                    ),
                ])),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![a.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(i32::from(*port)),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGED_BY).force(),
            &Patch::Apply(&slice),
        )
        .await
        .with_context(|| format!("failed to publish endpointslice {namespace}/{name}"))?;
        wanted.push(name);
    }
    let selector = format!(
        "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
    );
    for old in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let Some(name) = old.metadata.name else {
            continue;
        };
        if !wanted.contains(&name) && name.starts_with(&format!("{service}-{port_name}-")) {
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("failed to delete endpointslice {namespace}/{name}"))?;
        }
    }
    Ok(())
}
