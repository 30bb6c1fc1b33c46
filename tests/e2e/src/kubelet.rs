//! One container of a pod, run the way the kubelet would run it, without a kubelet: its `args`
//! and its `env` exactly as the pod spec says (downward-API `fieldRef`s, ConfigMap and Secret
//! references and `$(VAR)` references resolved as the kubelet resolves them), and its volumes laid
//! out as the kubelet lays them out (Secret, ConfigMap, downward API, projected ServiceAccount
//! tokens from the TokenRequest API, bound to the pod; emptyDir) and mounted at the container's
//! `mountPath`s.
//!
//! The mounts need a mount namespace: the program runs under `unshare --user --map-root-user
//! --mount`, where a tmpfs over `/run` (so `/var/run`) holds the mount points and each volume is
//! bind-mounted (read-only where the spec says so). Nothing outside the process sees them. What is
//! not emulated: the image (the caller names the program), the pod's network namespace (the program
//! shares this machine's), the `securityContext` (it runs as the namespace's root), resources and
//! probes. The kubelet's service variables for the `kubernetes` Service point at the API server
//! itself (`KUBERNETES_SERVICE_HOST=127.0.0.1`): with no kube-proxy, the cluster IP routes nowhere.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to run, and how, once the volumes are laid out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The program standing in for the image's entrypoint.
    pub program: PathBuf,
    /// The container's `args`.
    pub args: Vec<String>,
    /// The container's environment, resolved, in the kubelet's order.
    pub env: Vec<(String, String)>,
    /// Volumes to bind-mount.
    pub mounts: Vec<Mount>,
}

/// One volume mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// The laid-out volume (or a path inside it, for a `subPath`).
    pub source: PathBuf,
    /// The container's `mountPath`.
    pub target: PathBuf,
    /// `readOnly`.
    pub read_only: bool,
}

/// Where the API server listens, for the `kubernetes` Service's variables.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl ApiServer {
    /// From a cluster URL such as `https://127.0.0.1:6443`.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("{url} is not an https URL"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("{url} has no port"))?;
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port: port.parse().with_context(|| format!("{url}: bad port"))?,
        })
    }
}

/// Resolve the env and lay out the volumes of `container` of `pod` under `root`.
pub async fn plan(
    client: &Client,
    pod: &Pod,
    container: &str,
    program: &Path,
    root: &Path,
    api: &ApiServer,
) -> Result<Plan> {
    let doc = serde_json::to_value(pod)?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .context("pod without a namespace")?;
    let spec = pod.spec.as_ref().context("pod without a spec")?;
    let c = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == container)
        .with_context(|| format!("pod has no container {container}"))?;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);

    // The kubelet's order: service variables, then envFrom, then env, each `$(VAR)` expanded
    // against what came before.
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), api.host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), api.port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), api.port.to_string()),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => config_maps
                .get_opt(&r.name)
                .await?
                .map(|cm| cm.data.unwrap_or_default()),
            (_, Some(r)) => secrets.get_opt(&r.name).await?.map(secret_text),
            _ => None,
        };
        for (k, v) in data.unwrap_or_default() {
            set(&mut env, format!("{prefix}{k}"), v);
        }
    }
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(&doc, &field.field_path)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let cm = config_maps.get_opt(&r.name).await?;
                    match cm.and_then(|cm| cm.data?.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => bail!("configmap {} has no key {}", r.name, r.key),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let s = secrets.get_opt(&r.name).await?.map(secret_text);
                    match s.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => bail!("secret {} has no key {}", r.name, r.key),
                    }
                } else {
                    bail!("env {}: this kind of valueFrom is not emulated", var.name)
                }
            }
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }

    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .with_context(|| format!("no volume {}", m.name))?;
        let dir = root.join("volumes").join(&volume.name);
        if !dir.exists() {
            let files = volume_files(client, pod, &doc, volume).await?;
            match files {
                Some(files) => write_atomic(&dir, &files)?,
                None => std::fs::create_dir_all(&dir)?,
            }
        }
        let source = match &m.sub_path {
            Some(sub) if !sub.is_empty() => dir.join(sub),
            _ => dir,
        };
        mounts.push(Mount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    Ok(Plan {
        program: program.to_path_buf(),
        args: c.args.clone().unwrap_or_default(),
        env,
        mounts,
    })
}

fn secret_text(s: Secret) -> BTreeMap<String, String> {
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// `$(VAR)` references to earlier variables replaced, `$$` an escaped `$`, others kept.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API field of the pod, as the kubelet renders it.
pub fn field_value(pod: &Value, path: &str) -> Result<String> {
    let map = |m: &Value| -> String {
        let mut lines: Vec<String> = m
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", Value::from(v.as_str().unwrap_or(""))))
                    .collect()
            })
            .unwrap_or_default();
        lines.sort();
        lines.join("\n")
    };
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    let m = &pod["metadata"];
    Ok(match path {
        "metadata.name" => m["name"].as_str().unwrap_or("").into(),
        "metadata.namespace" => m["namespace"].as_str().unwrap_or("").into(),
        "metadata.uid" => m["uid"].as_str().unwrap_or("").into(),
        "metadata.labels" => map(&m["labels"]),
        "metadata.annotations" => map(&m["annotations"]),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .into(),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or("").into(),
        // No kubelet gave the pod an address; it shares this machine's network.
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                m["labels"][k].as_str().unwrap_or("").into()
            } else if let Some(k) = keyed("metadata.annotations") {
                m["annotations"][k].as_str().unwrap_or("").into()
            } else {
                bail!("downward API field {path} is not emulated")
            }
        }
    })
}

/// The files of a volume (`None` for an emptyDir).
async fn volume_files(
    client: &Client,
    pod: &Pod,
    doc: &Value,
    volume: &k8s_openapi::api::core::v1::Volume,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let mut files = BTreeMap::new();
    let pick = |data: BTreeMap<String, Vec<u8>>,
                items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>,
                files: &mut BTreeMap<String, Vec<u8>>| {
        match items {
            Some(items) => {
                for i in items {
                    if let Some(v) = data.get(&i.key) {
                        files.insert(i.path.clone(), v.clone());
                    }
                }
            }
            None => files.extend(data),
        }
    };
    let cm_bytes = |cm: ConfigMap| -> BTreeMap<String, Vec<u8>> {
        cm.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    };
    let secret_bytes = |s: Secret| -> BTreeMap<String, Vec<u8>> {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    };
    let downward = |items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
                    files: &mut BTreeMap<String, Vec<u8>>|
     -> Result<()> {
        for item in items {
            let field = item
                .field_ref
                .as_ref()
                .with_context(|| format!("downward API file {}: not emulated", item.path))?;
            files.insert(
                item.path.clone(),
                field_value(doc, &field.field_path)?.into_bytes(),
            );
        }
        Ok(())
    };
    if volume.empty_dir.is_some() {
        return Ok(None);
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        match secrets.get_opt(&name).await? {
            Some(secret) => pick(secret_bytes(secret), &s.items, &mut files),
            None if s.optional == Some(true) => {}
            None => bail!("secret {name} not found (volume {})", volume.name),
        }
    } else if let Some(c) = &volume.config_map {
        match config_maps.get_opt(&c.name).await? {
            Some(cm) => pick(cm_bytes(cm), &c.items, &mut files),
            None if c.optional == Some(true) => {}
            None => bail!("configmap {} not found (volume {})", c.name, volume.name),
        }
    } else if let Some(d) = &volume.downward_api {
        downward(d.items.as_deref().unwrap_or_default(), &mut files)?;
    } else if let Some(p) = &volume.projected {
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let token =
                    token_for(client, pod, t.audience.as_deref(), t.expiration_seconds).await?;
                files.insert(t.path.clone(), token.into_bytes());
            } else if let Some(c) = &source.config_map {
                match config_maps.get_opt(&c.name).await? {
                    Some(cm) => pick(cm_bytes(cm), &c.items, &mut files),
                    None if c.optional == Some(true) => {}
                    None => bail!(
                        "configmap {} not found (volume {}); no controller-manager publishes \
                         kube-root-ca.crt here, create it",
                        c.name,
                        volume.name
                    ),
                }
            } else if let Some(s) = &source.secret {
                match secrets.get_opt(&s.name).await? {
                    Some(secret) => pick(secret_bytes(secret), &s.items, &mut files),
                    None if s.optional == Some(true) => {}
                    None => bail!("secret {} not found (volume {})", s.name, volume.name),
                }
            } else if let Some(d) = &source.downward_api {
                downward(d.items.as_deref().unwrap_or_default(), &mut files)?;
            } else {
                bail!(
                    "volume {}: a projected source that is not emulated",
                    volume.name
                );
            }
        }
    } else {
        bail!("volume {}: this volume type is not emulated", volume.name);
    }
    Ok(Some(files))
}

/// A ServiceAccount token for the pod, as the kubelet asks for a projected one: bound to the pod.
async fn token_for(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: expiration,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("failed to request a token for {namespace}/{sa}"))?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{sa} had no status"))
}

/// The kubelet's atomic layout: the files in a timestamped folder, `..data` pointing at it, and
/// each top-level entry a link through `..data`.
/// Lays `secret`'s data out in `dir` the way the kubelet mounts a Secret volume (a timestamped
/// data dir behind `..data`, a symlink per key), for tests that run a sidecar as a process.
pub fn mount_secret(dir: &Path, secret: Secret) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let files: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    write_atomic(dir, &files)
}

fn write_atomic(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let data = dir.join(&stamp);
    std::fs::create_dir_all(&data)
        .with_context(|| format!("failed to create {}", data.display()))?;
    let mut top = std::collections::BTreeSet::new();
    for (path, bytes) in files {
        let file = data.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)
            .with_context(|| format!("failed to write {}", file.display()))?;
        if let Some(first) = Path::new(path).components().next() {
            top.insert(first.as_os_str().to_owned());
        }
    }
    std::os::unix::fs::symlink(&stamp, dir.join("..data"))?;
    for name in top {
        std::os::unix::fs::symlink(Path::new("..data").join(&name), dir.join(&name))?;
    }
    Ok(())
}

/// The command that runs `plan` (written to `plan_file`) in a user and mount namespace of its
/// own: `unshare` execs `helper exec <plan_file>` (this crate's `gatehouse-kubelet`), which mounts
/// and then execs the program, so the process the caller started is the program in the end.
pub fn command(helper: &Path, plan_file: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "--"])
        .arg(helper)
        .arg("exec")
        .arg(plan_file);
    cmd
}

/// Inside the namespaces: the tmpfs over `/run`, the mounts, then exec the program with exactly
/// the plan's environment. Returns only on failure.
pub fn exec(plan: &Plan) -> Result<()> {
    let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let status = Command::new("mount")
            .args(args)
            .status()
            .context("failed to run mount")?;
        if !status.success() {
            bail!("mount {args:?} failed: {status}");
        }
        Ok(())
    };
    let canonical_run = std::fs::canonicalize("/var/run").unwrap_or_else(|_| "/run".into());
    let mut tmpfs_done = false;
    for m in &plan.mounts {
        // Mount points are made under a tmpfs over /run (what /var/run points at), private to
        // this namespace; elsewhere they must exist already.
        let under_run = m.target.starts_with("/var/run") || m.target.starts_with(&canonical_run);
        if under_run && !tmpfs_done {
            run(&[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "tmpfs".as_ref(),
                canonical_run.as_os_str(),
            ])?;
            tmpfs_done = true;
        } else if !under_run && !m.target.exists() {
            bail!(
                "{}: mount points outside /run are not emulated unless they exist",
                m.target.display()
            );
        }
        std::fs::create_dir_all(&m.target)
            .with_context(|| format!("failed to create {}", m.target.display()))?;
        run(&[
            "--bind".as_ref(),
            m.source.as_os_str(),
            m.target.as_os_str(),
        ])?;
        if m.read_only {
            run(&[
                "-o".as_ref(),
                "remount,bind,ro".as_ref(),
                m.target.as_os_str(),
            ])?;
        }
    }
    let err = Command::new(&plan.program)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .args(&plan.args)
        .current_dir("/")
        .exec();
    Err(anyhow!("failed to exec {}: {err}", plan.program.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn env_references_expand_like_the_kubelets() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn downward_fields_render_like_the_kubelets() {
        let pod = serde_json::json!({"metadata": {"name": "p", "labels": {"b": "2", "a": "x\"y"}}});
        assert_eq!(field_value(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(field_value(&pod, "metadata.labels['b']").unwrap(), "2");
        assert_eq!(
            field_value(&pod, "metadata.labels").unwrap(),
            "a=\"x\\\"y\"\nb=\"2\""
        );
        assert_eq!(
            field_value(&pod, "spec.serviceAccountName").unwrap(),
            "default"
        );
        assert!(field_value(&pod, "metadata.generation").is_err());
    }
}
