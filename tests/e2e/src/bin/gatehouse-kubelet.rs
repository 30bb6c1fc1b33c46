//! The kubelet's part (and the endpoint-slice controller's) for a machine with neither
//! (`gatehouse_e2e::kubelet`, `gatehouse_e2e::network`). Talks to the API server of `KUBECONFIG`.
//!
//! ```text
//! gatehouse-kubelet run --namespace N --pod P --container C --program PATH --root DIR
//!     run container C of pod N/P: its args and env as the spec says, its volumes laid out
//!     under DIR and mounted at their mountPaths; PATH stands in for the image. The process
//!     becomes PATH (same pid), so signals sent to it reach the program.
//! gatehouse-kubelet endpoints --namespace N --service S --port-name NAME --port P
//!     publish this machine's address, port P, as the endpoints of port NAME of Service N/S.
//! gatehouse-kubelet exec PLAN    (internal: inside the namespaces, mount, then exec)
//! ```

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use gatehouse_e2e::kubelet::{self, ApiServer, Plan};
use gatehouse_e2e::network;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

fn flags(args: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {flag}"))?;
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        out.insert(name.to_string(), value.clone());
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("usage: gatehouse-kubelet run|endpoints|exec ... (see the source's doc comment)");
    };
    if command == "exec" {
        let path = rest.first().context("exec needs a plan file")?;
        let plan: Plan = serde_json::from_slice(&std::fs::read(path)?)?;
        return kubelet::exec(&plan);
    }
    let flags = flags(rest)?;
    let get = |k: &str| {
        flags
            .get(k)
            .cloned()
            .with_context(|| format!("--{k} is required"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command.as_str() {
        "run" => {
            let (ns, pod, container) = (get("namespace")?, get("pod")?, get("container")?);
            let (program, root) = (PathBuf::from(get("program")?), PathBuf::from(get("root")?));
            let plan_file = root.join("plan.json");
            runtime.block_on(async {
                let config = kube::Config::infer().await?;
                let api = ApiServer::from_url(&config.cluster_url.to_string())?;
                let client = kube::Client::try_from(config)?;
                let pod = Api::<Pod>::namespaced(client.clone(), &ns)
                    .get(&pod)
                    .await?;
                let plan = kubelet::plan(&client, &pod, &container, &program, &root, &api).await?;
                std::fs::write(&plan_file, serde_json::to_vec_pretty(&plan)?)?;
                anyhow::Ok(())
            })?;
            drop(runtime);
            let helper = std::env::current_exe()?;
            let err = kubelet::command(&helper, &plan_file).exec();
            Err(anyhow!("failed to exec unshare: {err}"))
        }
        "endpoints" => {
            let port: u16 = get("port")?.parse().context("--port")?;
            runtime.block_on(async {
                let client = kube::Client::try_default().await?;
                let ip = network::host_ip()?;
                network::publish_endpoints(
                    &client,
                    &get("namespace")?,
                    &get("service")?,
                    &get("port-name")?,
                    &[(ip, port)],
                )
                .await?;
                println!("{ip}:{port}");
                anyhow::Ok(())
            })
        }
        other => bail!("unknown command {other}"),
    }
}
