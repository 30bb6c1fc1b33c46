//! ModelProvider `tls`, `proxy` and `headers` on the real control plane (docs/egress.md): the
//! apiserver's CEL rejects what Gatehouse sets itself, the operator renders CA bundles (from a
//! ConfigMap too), client certificates, proxy credentials and secret header values into the keys
//! Secret and follows their changes, a missing ConfigMap is a `Ready=False` condition that
//! clears once it appears, and `insecureSkipVerifyDangerous` is called out with a
//! `TLSVerified=False` condition and a Warning event.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use gatehouse_crds::ModelProvider;
use gatehouse_e2e::eventually;
use gatehouse_e2e::procs::{self, Proc, binary, free_port};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::ListParams;
use kube::{Api, Client};

fn ca_pem() -> Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ok(params.self_signed(&key)?.pem())
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

async fn keys(
    client: &Client,
    ns: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt("gatehouse-keys")
        .await?;
    Ok(secret.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect()
    }))
}

fn condition(p: &ModelProvider, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_settings_are_validated_rendered_and_called_out() -> Result<()> {
    let cp = procs::with_operator_and_sidecar()?;
    let client = cp.admin_client().await?;
    let ns = cp.create_namespace("egress").await?;
    let dir = tempfile::tempdir()?;

    // Admission: CEL refuses a header Gatehouse sets itself and two CA sources at once.
    let bad = format!(
        "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: bad\n  namespace: {ns}\nspec:\n  type: openaiCompatible\n  endpoint: https://llm.corp.test/v1\n  headers:\n    - name: Authorization\n      value: Bearer x\n  tls:\n    caBundle:\n      secretRef: {{name: a, key: b}}\n      configMapRef: {{name: a, key: b}}\n"
    );
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &bad)?;
    ensure!(!out.success, "accepted: {}", out.stdout);
    ensure!(
        out.stderr.contains("set by Gatehouse itself")
            && out
                .stderr
                .contains("exactly one of secretRef and configMapRef"),
        "{}",
        out.stderr
    );

    let admin = free_port()?;
    let mut cmd = Command::new(binary("gatehouse-operator"));
    cmd.env("KUBECONFIG", cp.kubeconfig())
        .env("RUST_LOG", "info")
        .args([
            format!("--admin-listen=127.0.0.1:{admin}"),
            format!("--ledger-listen=127.0.0.1:{}", free_port()?),
            format!("--watch-namespace={ns}"),
            format!("--lease-namespace={ns}"),
            "--identity=egress".to_string(),
        ]);
    let _operator = Proc::spawn(cmd, dir.path().join("operator.log"))?;

    let first_ca = ca_pem()?;
    let objects = |ca: &str, with_bundle: bool| {
        let bundle = if with_bundle {
            format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: corp-bundle\n  namespace: {ns}\ndata:\n  ca.pem: |\n{}",
                indent(ca, 4)
            )
        } else {
            String::new()
        };
        format!(
            r#"apiVersion: v1
kind: Secret
metadata:
  name: proxy-auth
  namespace: {ns}
type: kubernetes.io/basic-auth
stringData:
  username: gatehouse
  password: pr0xy-pw
---
apiVersion: v1
kind: Secret
metadata:
  name: internal-token
  namespace: {ns}
stringData:
  token: tok-one
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata:
  name: corp
  namespace: {ns}
spec:
  type: openaiCompatible
  endpoint: https://llm.corp.test/v1
  tls:
    caBundle:
      configMapRef:
        name: corp-bundle
        key: ca.pem
  proxy:
    url: http://proxy.corp.test:3128
    authSecretRef:
      name: proxy-auth
  headers:
    - name: OpenAI-Organization
      value: org-1
    - name: X-Internal-Token
      valueFrom:
        secretKeyRef:
          name: internal-token
          key: token
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata:
  name: lab
  namespace: {ns}
spec:
  type: openaiCompatible
  endpoint: https://llm.lab.test/v1
  tls:
    insecureSkipVerifyDangerous: true
{bundle}"#
        )
    };
    // First without the ConfigMap: corp is not ready and says why.
    cp.kubectl_stdin(["apply", "-f", "-"], &objects(&first_ca, false))?
        .ok("kubectl apply")?;
    let providers = Api::<ModelProvider>::namespaced(client.clone(), &ns);
    eventually("corp's ConfigMapNotFound", Duration::from_secs(60), || {
        let providers = providers.clone();
        async move {
            let p = providers.get("corp").await?;
            Ok(condition(&p, "Ready").filter(|(s, r, m)| {
                s == "False" && r == "ConfigMapNotFound" && m.contains("corp-bundle")
            }))
        }
    })
    .await?;

    // The ConfigMap appears: the operator (watching referenced ConfigMaps) renders everything.
    cp.kubectl_stdin(["apply", "-f", "-"], &objects(&first_ca, true))?
        .ok("kubectl apply")?;
    let rendered = eventually(
        "corp's material in the keys Secret",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                Ok(keys(&client, &ns)
                    .await?
                    .filter(|k| k.contains_key("corp_tls-ca")))
            }
        },
    )
    .await?;
    ensure!(rendered["corp_tls-ca"] == first_ca.trim());
    ensure!(rendered["corp_proxy-auth"] == "gatehouse:pr0xy-pw");
    ensure!(rendered["corp_header-1"] == "tok-one");
    eventually("corp Ready", Duration::from_secs(60), || {
        let providers = providers.clone();
        async move {
            let p = providers.get("corp").await?;
            Ok(condition(&p, "Ready").filter(|(s, _, _)| s == "True"))
        }
    })
    .await?;

    // The CA in the ConfigMap rotates: the keys Secret follows.
    let second_ca = ca_pem()?;
    cp.kubectl_stdin(["apply", "-f", "-"], &objects(&second_ca, true))?
        .ok("kubectl apply")?;
    eventually(
        "the rotated CA in the keys Secret",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let ns = ns.clone();
            let second = second_ca.trim().to_string();
            async move {
                Ok(keys(&client, &ns)
                    .await?
                    .filter(|k| k.get("corp_tls-ca") == Some(&second)))
            }
        },
    )
    .await?;

    // The rendered config names entries, never material.
    let config = cp.kubectl_ok([
        "get",
        "configmap",
        "gatehouse-config",
        "-n",
        &ns,
        "-o",
        "yaml",
    ])?;
    ensure!(config.contains("corp_tls-ca") && config.contains("insecureSkipVerify"));
    for secret in ["pr0xy-pw", "tok-one", "BEGIN CERTIFICATE"] {
        ensure!(!config.contains(secret), "{secret} in the rendered config");
    }

    // lab is served, and called out.
    eventually("lab's TLSVerified=False", Duration::from_secs(60), || {
        let providers = providers.clone();
        async move {
            let p = providers.get("lab").await?;
            Ok(condition(&p, "TLSVerified").filter(|(s, r, m)| {
                s == "False"
                    && r == "VerificationDisabled"
                    && m.contains("insecureSkipVerifyDangerous")
            }))
        }
    })
    .await?;
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    eventually("a Warning event for lab", Duration::from_secs(60), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("lab")
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("VerificationDisabled")
            }))
        }
    })
    .await?;
    for p in ["corp", "lab"] {
        let status = format!("{:?}", providers.get(p).await?.status);
        for secret in ["pr0xy-pw", "tok-one"] {
            ensure!(!status.contains(secret), "{secret} in the status of {p}");
        }
    }
    Ok(())
}
