//! Peer gateways, measured against the same mock: LiteLLM proxy and Portkey's gateway.
//!
//! Installed on first use into `${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}/peers/<name>-<pins>`,
//! keyed by the pinned versions below (a directory without its `.installed` marker is
//! reinstalled). Both run on loopback and reach only the mock; a peer that cannot be installed or
//! started is reported as "not available: <reason>" and the run goes on without it.
//!
//! **LiteLLM proxy** [`LITELLM_VERSION`] (PyPI `litellm[proxy]`; the newest releases on the index
//! pin `litellm-proxy`/`litellm-proxy-extras` versions it does not serve, and 1.82.7–1.82.8 and
//! 1.107.0 were compromised releases, since withdrawn). Installed with
//! `python3 -m venv venv && venv/bin/pip install -c constraints.txt 'litellm[proxy]==1.106.12'`,
//! the constraints being the `pip freeze` of a working install ([`LITELLM_CONSTRAINTS`]).
//! Started as `litellm --config litellm.yaml --host 127.0.0.1 --port P --num_workers 1`
//! (uvicorn, one worker process, its default access logging), with no database and the config
//!
//! ```yaml
//! model_list:
//!   - model_name: bench-litellm
//!     litellm_params: {model: openai/gpt-4o-mini, api_base: "http://MOCK/v1", api_key: dummy}
//! general_settings:
//!   master_key: sk-bench-<random per run>
//! ```
//!
//! This release refuses to start without a master key, so requests carry
//! `authorization: Bearer <master key>` (checked in memory: there is no database). Offline
//! switches in its environment: `LITELLM_LOCAL_MODEL_COST_MAP`, `LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS`,
//! `LITELLM_LOCAL_BLOG_POSTS`, `LITELLM_LOCAL_POLICY_TEMPLATES`, `LITELLM_LOCAL_AUTOROUTER_PRESETS`
//! (bundled copies instead of fetching them), `LITELLM_TELEMETRY=False` (a no-op in this release),
//! `DISABLE_ADMIN_UI`, `NO_DOCS`, `NO_REDOC`; `DATABASE_URL` removed. Requests:
//! `POST /v1/chat/completions`, model `bench-litellm`. Ready: `GET /health/liveliness`.
//!
//! **Portkey's gateway** [`PORTKEY_VERSION`] (npm `@portkey-ai/gateway`), with `@hono/node-server`
//! pinned to [`HONO_NODE_SERVER_VERSION`] and `hono` to [`HONO_VERSION`], the versions in the
//! gateway's own `package-lock.json` at that release (newer `@hono/node-server` breaks its
//! streaming), through a `package.json` with those dependencies and `overrides`, installed with
//! `npm install --no-audit --no-fund --omit=dev --ignore-scripts` (its only install script is
//! `patch-package`, which has no patches in the published package). Started as
//! `node node_modules/@portkey-ai/gateway/build/start-server.js --port=P --headless` on the
//! machine's Node. Requests: `POST /v1/chat/completions`, model `gpt-4o-mini`, headers
//! `x-portkey-provider: openai`, `x-portkey-custom-host: http://MOCK/v1`,
//! `authorization: Bearer dummy`. Ready: `GET /` answers 200.
//!
//! Before a peer is measured it must answer one real chat completion and one stream (with
//! `[DONE]` and the usage chunk) through the mock. The peers stay up for the whole run, idle while
//! the other paths are measured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};

use crate::procs::{Proc, free_port, wait_http_ok};

/// LiteLLM release (PyPI `litellm[proxy]`).
pub const LITELLM_VERSION: &str = "1.106.12";
/// Portkey's gateway release (npm `@portkey-ai/gateway`).
pub const PORTKEY_VERSION: &str = "1.15.2";
/// `@hono/node-server` in the gateway's own lockfile at [`PORTKEY_VERSION`].
pub const HONO_NODE_SERVER_VERSION: &str = "1.13.5";
/// `hono` in the gateway's own lockfile at [`PORTKEY_VERSION`].
pub const HONO_VERSION: &str = "4.9.7";

/// How long LiteLLM may take to import and start (tens of seconds on 2 cores; the first start
/// after install also compiles bytecode).
const LITELLM_READY: Duration = Duration::from_secs(240);
const PORTKEY_READY: Duration = Duration::from_secs(60);

/// A running peer.
#[derive(Debug)]
pub struct Peer {
    /// Display name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Model name to send.
    pub model: String,
    /// Chat completions path.
    pub path: &'static str,
    /// Extra request headers (key, routing).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Start to ready.
    pub ready_after: Duration,
    /// The process.
    pub proc: Proc,
}

/// A peer that could not be installed or started here, and why.
#[derive(Debug)]
pub struct Unavailable {
    /// Display name.
    pub name: String,
    /// One line: the failing command and its error.
    pub reason: String,
}

/// Install (first use) and start every peer against the mock at `mock`. Peers that cannot be had
/// come back as [`Unavailable`] (also printed to stderr) rather than failing the run.
pub async fn start_all(
    dir: &Path,
    mock: SocketAddr,
) -> anyhow::Result<(Vec<Peer>, Vec<Unavailable>)> {
    let cache = cache_dir()?;
    let mut running = Vec::new();
    let mut unavailable = Vec::new();
    for (name, started) in [
        ("litellm", litellm(&cache, dir, mock).await),
        ("portkey", portkey(&cache, dir, mock).await),
    ] {
        match started {
            Ok(peer) => {
                eprintln!(
                    "peer {name}: ready on {} after {:.1} s",
                    peer.addr,
                    peer.ready_after.as_secs_f64()
                );
                running.push(peer);
            }
            Err(e) => {
                let reason = one_line(&format!("{e:#}"));
                eprintln!("peer {name}: not available: {reason}");
                unavailable.push(Unavailable {
                    name: name.to_string(),
                    reason,
                });
            }
        }
    }
    Ok((running, unavailable))
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let root = match std::env::var_os("GATEHOUSE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither GATEHOUSE_CACHE nor HOME is set")?,
        )
        .join(".cache/gatehouse"),
    };
    Ok(root.join("peers"))
}

/// `home` holds a finished install (its marker), or is wiped and rebuilt by `install`.
fn ensure_installed(
    home: &Path,
    what: &str,
    install: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let marker = home.join(".installed");
    if marker.exists() {
        return Ok(());
    }
    if home.exists() {
        std::fs::remove_dir_all(home)
            .with_context(|| format!("failed to clear {}", home.display()))?;
    }
    std::fs::create_dir_all(home)?;
    eprintln!("installing {what} into {} (first use)", home.display());
    let started = Instant::now();
    install(home)?;
    std::fs::write(&marker, what)?;
    eprintln!(
        "installed {what} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Run an install step, its output appended to `home/install.log`; on failure the error names
/// the command and quotes the end of its output.
fn run_step(home: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .current_dir(home)
        .output()
        .with_context(|| format!("`{line}` could not be run"))?;
    let mut log = format!("$ {line}\n");
    log.push_str(&String::from_utf8_lossy(&output.stdout));
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    let log_path = home.join("install.log");
    let mut all = std::fs::read_to_string(&log_path).unwrap_or_default();
    all.push_str(&log);
    std::fs::write(&log_path, all)?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 3)
        );
    }
    Ok(())
}

async fn litellm(cache: &Path, dir: &Path, mock: SocketAddr) -> anyhow::Result<Peer> {
    let home = cache.join(format!(
        "litellm-{LITELLM_VERSION}-{:08x}",
        fnv1a(LITELLM_CONSTRAINTS)
    ));
    let requirement = format!("litellm[proxy]=={LITELLM_VERSION}");
    ensure_installed(&home, &requirement, |home| {
        std::fs::write(home.join("constraints.txt"), LITELLM_CONSTRAINTS)?;
        run_step(home, "python3", &["-m", "venv", "venv"])?;
        run_step(
            home,
            "venv/bin/pip",
            &[
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-c",
                "constraints.txt",
                &requirement,
            ],
        )
    })?;

    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let master_key = format!("sk-bench-{}", random_hex(16)?);
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench-litellm\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{mock}/v1\n      api_key: dummy\ngeneral_settings:\n  master_key: {master_key}\n"
        ),
    )?;
    let mut cmd = Command::new(home.join("venv/bin/litellm"));
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .envs([
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True"),
            ("LITELLM_LOCAL_BLOG_POSTS", "True"),
            ("LITELLM_LOCAL_POLICY_TEMPLATES", "True"),
            ("LITELLM_LOCAL_AUTOROUTER_PRESETS", "True"),
            ("LITELLM_TELEMETRY", "False"),
            ("DISABLE_ADMIN_UI", "True"),
            ("NO_DOCS", "True"),
            ("NO_REDOC", "True"),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ]);
    let headers = vec![(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {master_key}"))?,
    )];
    start(
        "litellm",
        cmd,
        dir,
        addr,
        &format!("http://{addr}/health/liveliness"),
        LITELLM_READY,
        Duration::from_millis(50),
        "bench-litellm",
        headers,
    )
    .await
}

async fn portkey(cache: &Path, dir: &Path, mock: SocketAddr) -> anyhow::Result<Peer> {
    let home = cache.join(format!(
        "portkey-gateway-{PORTKEY_VERSION}-node-server-{HONO_NODE_SERVER_VERSION}-hono-{HONO_VERSION}"
    ));
    let package = format!(
        r#"{{
  "name": "gatehouse-bench-portkey",
  "private": true,
  "dependencies": {{
    "@portkey-ai/gateway": "{PORTKEY_VERSION}",
    "@hono/node-server": "{HONO_NODE_SERVER_VERSION}",
    "hono": "{HONO_VERSION}"
  }},
  "overrides": {{
    "@hono/node-server": "{HONO_NODE_SERVER_VERSION}",
    "hono": "{HONO_VERSION}"
  }}
}}
"#
    );
    ensure_installed(
        &home,
        &format!("@portkey-ai/gateway@{PORTKEY_VERSION}"),
        |home| {
            std::fs::write(home.join("package.json"), &package)?;
            run_step(
                home,
                "npm",
                &[
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--omit=dev",
                    "--ignore-scripts",
                ],
            )
        },
    )?;

    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new("node");
    cmd.arg(home.join("node_modules/@portkey-ai/gateway/build/start-server.js"))
        .arg(format!("--port={port}"))
        .arg("--headless")
        .current_dir(dir)
        .env("NO_PROXY", "127.0.0.1,localhost");
    let headers = vec![
        (
            HeaderName::from_static("x-portkey-provider"),
            HeaderValue::from_static("openai"),
        ),
        (
            HeaderName::from_static("x-portkey-custom-host"),
            HeaderValue::from_str(&format!("http://{mock}/v1"))?,
        ),
        (
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer dummy"),
        ),
    ];
    start(
        "portkey",
        cmd,
        dir,
        addr,
        &format!("http://{addr}/"),
        PORTKEY_READY,
        Duration::from_millis(5),
        "gpt-4o-mini",
        headers,
    )
    .await
}

/// Start `cmd`, wait until `ready_url` answers 2xx, then check one chat completion and one stream.
#[allow(clippy::too_many_arguments, reason = "one call site per peer")]
async fn start(
    name: &str,
    cmd: Command,
    dir: &Path,
    addr: SocketAddr,
    ready_url: &str,
    timeout: Duration,
    poll: Duration,
    model: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> anyhow::Result<Peer> {
    let log = dir.join(format!("{name}.log"));
    let started = Instant::now();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut proc = Proc::spawn_cmd(name, cmd, &log).with_context(|| format!("`{program}`"))?;
    let log_tail = || {
        let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        error_lines(&err)
    };
    loop {
        if wait_http_ok(ready_url, Duration::ZERO).await.is_ok() {
            break;
        }
        if !proc.alive() {
            bail!("{name} exited before it was ready: {}", log_tail());
        }
        if started.elapsed() > timeout {
            bail!("{name} was not ready within {timeout:?}: {}", log_tail());
        }
        tokio::time::sleep(poll).await;
    }
    let ready_after = started.elapsed();
    let peer = Peer {
        name: name.to_string(),
        addr,
        model: model.to_string(),
        path: "/v1/chat/completions",
        headers,
        ready_after,
        proc,
    };
    check_chat(&peer).await.with_context(|| {
        format!(
            "{name} is up but a chat completion through it failed ({})",
            log_tail()
        )
    })?;
    Ok(peer)
}

/// One completion and one stream through the peer, so a misconfiguration shows as its own error
/// instead of as failed requests under load.
async fn check_chat(peer: &Peer) -> anyhow::Result<()> {
    for stream in [false, true] {
        let (status, body) = post(peer, crate::chat_body(&peer.model, stream)).await?;
        let text = String::from_utf8_lossy(&body);
        let complete = if stream {
            text.contains("[DONE]") && text.contains("\"completion_tokens\"")
        } else {
            text.contains("\"choices\"")
        };
        if !status.is_success() || !complete {
            bail!(
                "{} answered {status}{}: {}",
                peer.path,
                if stream { " to a stream" } else { "" },
                text.chars().take(300).collect::<String>()
            );
        }
    }
    Ok(())
}

async fn post(peer: &Peer, body: Bytes) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(peer.addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::post(peer.path)
            .header(http::header::HOST, peer.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in &peer.headers {
            req = req.header(name, value);
        }
        let resp = sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .context("no answer within 60 s")?
}

/// `n` random bytes as hex (a master key for this run).
fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last `n` non-empty lines of `text`, on one line.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" / ")
}

/// What a failed start said: its error lines if it printed any (a traceback's last line, Node's
/// `Error: …`), else its last lines.
fn error_lines(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("Error") || l.contains("error:"))
        .collect();
    if errors.is_empty() {
        tail(log, 3)
    } else {
        tail(&errors.join("\n"), 2)
    }
}

/// One table-safe line.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/")
}

/// FNV-1a, to key the cache on the constraint set.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `pip freeze` of a working `litellm[proxy]==1.106.12` install on Python 3.11, used as pip
/// constraints so the peer's dependencies do not drift between runs.
pub const LITELLM_CONSTRAINTS: &str = "\
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
APScheduler==3.11.3
attrs==26.1.0
azure-core==1.41.0
azure-identity==1.27.0
azure-storage-blob==12.31.1
backoff==2.2.1
boto3==1.44.8
botocore==1.44.8
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
croniter==7.0.0
cryptography==50.0.2
distro==1.9.0
dnspython==2.9.2
email-validator==2.4.0
Expression==5.8.0
fastapi==0.165.0
fastapi-sso==0.23.0
fastuuid==0.14.0
filelock==4.3.1
frozenlist==1.8.0
fsspec==2026.9.0
granian==2.8.7
gunicorn==23.0.0
h11==0.16.0
h2==4.4.1
hf-xet==1.8.0
hiredis==3.5.0
hpack==4.2.0
httpcore==1.0.9
httpcore2==2.16.2
httpx==0.28.1
httpx2==2.16.2
huggingface_hub==1.33.0
hyperframe==6.1.0
idna==3.20
importlib_metadata==8.9.0
inquirerpy==0.3.4
isodate==0.7.2
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
litellm-enterprise==0.1.76.post1
litellm-proxy-extras==0.4.108
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mcp==2.3.0
mcp-types==2.3.0
mdurl==0.1.2
msal==1.39.0
msal-extensions==1.3.1
multidict==7.2.1
numpy==2.4.6
oauthlib==4.0.1
openai==2.54.0
opentelemetry-api==1.45.2
orjson==3.13.0
packaging==26.4
pfzy==0.3.4
polars==1.44.2
polars-runtime-32==1.44.2
prompt_toolkit==3.0.53
propcache==0.5.4
psycopg==3.3.9
psycopg-binary==3.3.9
pycparser==3.12
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
Pygments==2.21.0
PyJWT==2.15.1
PyNaCl==1.6.2
pyroscope-io==0.8.16
python-dateutil==2.9.0.post0
python-dotenv==1.2.4
python-multipart==0.0.34
PyYAML==6.0.4
redis==8.1.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
RestrictedPython==8.5
rich==13.9.4
rpds-py==2026.9.1
rq==2.12.0
s3transfer==0.19.3
six==1.17.0
sniffio==1.3.1
soundfile==0.14.0
sse-starlette==3.7.0
starlette==1.10.0
tiktoken==0.14.0
tokenizers==0.23.3
tomlkit==0.15.2
tqdm==4.70.1
truststore==0.10.5
typing-inspection==0.4.5
typing_extensions==4.16.0
tzlocal==5.4.5
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
wcwidth==0.9.4
websockets==15.0.1
yarl==1.25.1
zipp==4.1.2
";

#[cfg(test)]
mod tests {
    use super::{error_lines, one_line, tail};

    #[test]
    fn reasons_fit_one_table_cell() {
        assert_eq!(one_line("a |b\n  c"), "a /b c");
        assert_eq!(tail("x\n\ny\nz\n", 2), "y / z");
        assert_eq!(
            error_lines("at x\nError: Cannot find module 'y'\n  requireStack: []\n}\n"),
            "Error: Cannot find module 'y'"
        );
    }
}
