//! `kubectl-gatehouse`: answers about Gatehouse in one command (a kubectl plugin: on the `PATH`,
//! it runs as `kubectl gatehouse ...`). docs/kubectl-gatehouse.md has each command's output.
//!
//! - `request <id>`: the record of one request, from the sidecar that served it.
//! - `spend`: the Budgets (their status, written by the operator from its ledger) and the spend
//!   by workload (the sidecars' cost and token counters, summed).
//! - `failover <route>`: the Route's targets in the order they are tried, with each one's
//!   health as the sidecars see it.
//!
//! The sidecars are reached through the API server (`pods/proxy`, `cluster`).

mod cluster;
mod render;

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse_crds::{Budget, Route};
use kube::Api;
use kube::api::ListParams;

use crate::cluster::Cluster;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster config.
    #[error("failed to load the kubeconfig: {0}")]
    Config(String),
    /// An API call failed.
    #[error("failed to {0}: {1}")]
    Api(String, String),
    /// What was asked for is not there.
    #[error("{0}")]
    NotFound(String),
}

/// Answers about Gatehouse: a request's record, spend, a Route's failover chain.
#[derive(Debug, Parser)]
#[command(name = "kubectl gatehouse", version)]
struct Cli {
    /// The kubeconfig context (default: the current one). `KUBECONFIG` is honoured.
    #[arg(long, global = true, env = "GATEHOUSE_KUBE_CONTEXT")]
    context: Option<String>,
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, global = true, env = "GATEHOUSE_NAMESPACE")]
    namespace: Option<String>,
    /// Every namespace (`request`, `spend`).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    all_namespaces: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Which route, rule, provider and model served a request, its attempts, tokens, cost, and
    /// the cache, budget and rate-limit decisions (`x-gatehouse-request-id`).
    Request {
        /// The request id.
        id: String,
        /// Print the record as JSON.
        #[arg(short = 'o', long, value_parser = ["json", "text"], default_value = "text")]
        output: String,
    },
    /// Budgets (spent, limit, remaining) and the spend by workload.
    Spend,
    /// A Route's targets in the order they are tried, with each one's current health.
    Failover {
        /// The Route's name.
        route: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<String, Error> {
    let cluster = Cluster::connect(cli.context.clone()).await?;
    let namespace = if cli.all_namespaces {
        None
    } else {
        Some(
            cli.namespace
                .clone()
                .unwrap_or_else(|| cluster.default_namespace.clone()),
        )
    };
    match cli.command {
        Command::Request { id, output } => {
            request(&cluster, namespace.as_deref(), &id, &output).await
        }
        Command::Spend => spend(&cluster, namespace.as_deref()).await,
        Command::Failover { route } => {
            let ns = namespace.ok_or_else(|| {
                Error::NotFound("failover needs one namespace (-n), not -A".into())
            })?;
            failover(&cluster, &ns, &route).await
        }
    }
}

fn where_(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "any namespace".into(), |ns| format!("namespace {ns}"))
}

async fn request(
    cluster: &Cluster,
    namespace: Option<&str>,
    id: &str,
    output: &str,
) -> Result<String, Error> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::NotFound(format!(
            "{id:?} is not a request id (x-gatehouse-request-id: hex digits)"
        )));
    }
    let pods = cluster.sidecars(namespace).await?;
    if pods.is_empty() {
        return Err(Error::NotFound(format!(
            "no running pod with a Gatehouse sidecar in {}",
            where_(namespace)
        )));
    }
    let answers = cluster
        .admin_get_all(&pods, &format!("/v1/requests/{id}"))
        .await;
    let mut unreachable = Vec::new();
    for (pod, answer) in pods.iter().zip(answers) {
        match answer {
            Ok((status, body)) if status.is_success() => {
                let record: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
                    Error::Api(
                        format!("read the record from {}/{}", pod.namespace, pod.name),
                        e.to_string(),
                    )
                })?;
                return Ok(if output == "json" {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&record).unwrap_or_default()
                    )
                } else {
                    render::request(&record, &format!("{}/{}", pod.namespace, pod.name))
                });
            }
            Ok((status, _)) if status == http::StatusCode::NOT_FOUND => {}
            Ok((status, _)) => {
                unreachable.push(format!("{}/{} ({status})", pod.namespace, pod.name))
            }
            Err(e) => unreachable.push(format!("{}/{} ({e})", pod.namespace, pod.name)),
        }
    }
    let mut msg = format!(
        "request {id} is not in the records of the {} sidecar{} in {} (each keeps its last --request-records requests)",
        pods.len(),
        if pods.len() == 1 { "" } else { "s" },
        where_(namespace)
    );
    if !unreachable.is_empty() {
        msg.push_str(&format!("; not reachable: {}", unreachable.join(", ")));
    }
    Err(Error::NotFound(msg))
}

async fn spend(cluster: &Cluster, namespace: Option<&str>) -> Result<String, Error> {
    let budgets: Api<Budget> = match namespace {
        Some(ns) => Api::namespaced(cluster.client.clone(), ns),
        None => Api::all(cluster.client.clone()),
    };
    let budgets = budgets
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Api("list Budgets".into(), e.to_string()))?;
    let mut budgets: Vec<serde_json::Value> = budgets
        .items
        .iter()
        .filter_map(|b| serde_json::to_value(b).ok())
        .collect();
    budgets.sort_by_key(|b| {
        (
            b["metadata"]["namespace"].as_str().map(str::to_string),
            b["metadata"]["name"].as_str().map(str::to_string),
        )
    });
    let pods = cluster.sidecars(namespace).await?;
    let answers = cluster.admin_get_all(&pods, "/metrics").await;
    let mut workloads = BTreeMap::new();
    let mut unreachable = Vec::new();
    let mut read = 0;
    for (pod, answer) in pods.iter().zip(answers) {
        match answer {
            Ok((status, body)) if status.is_success() => {
                read += 1;
                render::add_spend(&body, &mut workloads);
            }
            Ok((status, _)) => {
                unreachable.push(format!("{}/{} ({status})", pod.namespace, pod.name))
            }
            Err(e) => unreachable.push(format!("{}/{} ({e})", pod.namespace, pod.name)),
        }
    }
    Ok(render::spend(&budgets, &workloads, read, &unreachable))
}

async fn failover(cluster: &Cluster, namespace: &str, name: &str) -> Result<String, Error> {
    let route = Api::<Route>::namespaced(cluster.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::Api(format!("get Route {namespace}/{name}"), e.to_string()))?
        .ok_or_else(|| Error::NotFound(format!("no Route {name} in namespace {namespace}")))?;
    let targets = render::chain_order(
        route
            .spec
            .targets
            .iter()
            .map(|t| render::ChainTarget {
                priority: t.priority,
                weight: t.weight,
                provider: t.provider.clone(),
                model: t.model.clone(),
            })
            .collect(),
    );
    let pods = cluster.sidecars(Some(namespace)).await?;
    let answers = cluster.admin_get_all(&pods, "/targets").await;
    let reports: Vec<serde_json::Value> = answers
        .into_iter()
        .filter_map(|a| a.ok())
        .filter(|(status, _)| status.is_success())
        .filter_map(|(_, body)| serde_json::from_str(&body).ok())
        .collect();
    Ok(render::failover(
        namespace,
        name,
        &route.spec.models,
        &targets,
        &reports,
    ))
}
