//! spec.proxy and the environment's proxy, through a real CONNECT proxy: Debian's tinyproxy
//! with Basic auth, started by the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse_mock_provider::MockProvider;
use gatehouse_mock_provider::tls::TlsFront;

use crate::pki::{Ca, server_config};
use crate::support::Sidecar;
use crate::{chat, manifests, object, reload};

pub(crate) const USER: &str = "gatehouse";
pub(crate) const PASSWORD: &str = "pr0xy-PASSWORD-7c1e9d";

/// tinyproxy on a loopback port, requiring `USER`/`PASSWORD`, logging every request.
pub struct Tinyproxy {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    pub fn start() -> Self {
        let Ok(path) = which("tinyproxy") else {
            panic!(
                "tinyproxy is not on PATH: install it with `scripts/ensure-debs tinyproxy=tinyproxy`"
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nMaxClients 100\n\
                 Allow 127.0.0.1\nBasicAuth {USER} {PASSWORD}\nDisableViaHeader Yes\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("tinyproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(path)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// What tinyproxy logged so far (one line per connection and request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

pub(crate) fn basic_auth(password: &str) -> String {
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: proxy-auth\ntype: kubernetes.io/basic-auth\nstringData:\n  username: {USER}\n  password: {password}\n"
    );
    secret
}

async fn private_upstream(ca: &Ca) -> (MockProvider, TlsFront) {
    let mock = MockProvider::start().await.unwrap();
    let front = TlsFront::start(mock.addr(), server_config(&ca.server(&["127.0.0.1"]), None))
        .await
        .unwrap();
    (mock, front)
}

const CA_BUNDLE: &str =
    "  tls:\n    caBundle:\n      secretRef:\n        name: corp-ca\n        key: ca.crt\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_proxy_carries_the_traffic_and_enforces_its_auth() {
    let logs = crate::logs::capture();
    let proxy = Tinyproxy::start();
    let ca = Ca::new("corp root");
    let (mock, front) = private_upstream(&ca).await;
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let ca_secret = object("Secret", "corp-ca", &[("ca.crt", &ca.pem)]);
    let with_proxy = |auth: bool, password: &str| {
        let mut extra = format!("{CA_BUNDLE}  proxy:\n    url: {}\n", proxy.url());
        if auth {
            extra.push_str("    authSecretRef:\n      name: proxy-auth\n");
        }
        manifests(
            &endpoint,
            &extra,
            &format!("{ca_secret}{}", basic_auth(password)),
        )
    };

    // https through a CONNECT tunnel, with the credentials.
    let sidecar = Sidecar::start(&with_proxy(true, PASSWORD)).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.request_count(), 1);
    let tunnel = format!("CONNECT 127.0.0.1:{}", front.addr().port());
    assert!(
        proxy.log().contains(&tunnel),
        "the proxy saw no tunnel:\n{}",
        proxy.log()
    );

    // Wrong password, then none: the proxy answers 407, the attempt fails over like a failed
    // connection, with an error that says so; the provider sees nothing.
    for (auth, password) in [(true, "wrong-password"), (false, PASSWORD)] {
        reload(&sidecar, &with_proxy(auth, password)).await;
        let (status, body) = chat(&sidecar).await;
        assert!(status >= 500, "{status} {body}");
        assert!(body.contains("407"), "{body}");
        assert!(
            !body.contains(PASSWORD) && !body.contains("wrong-password"),
            "{body}"
        );
        assert_eq!(mock.request_count(), 1);
    }

    // A plain-http endpoint: the request goes to the proxy in absolute form, credentials in it.
    let plain = MockProvider::start().await.unwrap();
    let extra = format!(
        "  proxy:\n    url: {}\n    authSecretRef:\n      name: proxy-auth\n",
        proxy.url()
    );
    reload(
        &sidecar,
        &manifests(&plain.base_url(), &extra, &basic_auth(PASSWORD)),
    )
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let absolute = format!("POST {}/chat/completions", plain.base_url());
    assert!(
        proxy.log().contains(&absolute),
        "no absolute-form request:\n{}",
        proxy.log()
    );
    // The provider never sees the proxy's credentials.
    let seen = plain.last_request().unwrap();
    assert!(seen.header("proxy-authorization").is_none(), "{seen:?}");

    let logged = logs.text();
    assert!(!logged.is_empty());
    assert!(!logged.contains(PASSWORD), "the proxy password was logged");
    assert!(!logged.contains("sk-egress-key"), "the key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_proxy_applies_and_no_proxy_bypasses_it() {
    let proxy = Tinyproxy::start();
    let ca = Ca::new("corp root");
    let (mock, front) = private_upstream(&ca).await;
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let ca_secret = object("Secret", "corp-ca", &[("ca.crt", &ca.pem)]);
    let tunnel = format!("CONNECT 127.0.0.1:{}", front.addr().port());
    let env = |no_proxy: Option<&str>| {
        let mut env = BTreeMap::from([(
            "https_proxy".to_string(),
            format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", proxy.port),
        )]);
        if let Some(no) = no_proxy {
            env.insert("NO_PROXY".into(), no.into());
        }
        env
    };

    let sidecar = Sidecar::start_with(&manifests(&endpoint, CA_BUNDLE, &ca_secret), |args| {
        args.proxy_env = Some(env(None));
    })
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.log().matches(&tunnel).count(), 1, "{}", proxy.log());

    // A provider that opts out of the environment's proxy goes direct.
    let extra = format!("{CA_BUNDLE}  proxy:\n    fromEnvironment: false\n");
    reload(&sidecar, &manifests(&endpoint, &extra, &ca_secret)).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.log().matches(&tunnel).count(), 1, "{}", proxy.log());
    drop(sidecar);

    // NO_PROXY names the provider's host: direct, the proxy sees nothing more.
    let sidecar = Sidecar::start_with(&manifests(&endpoint, CA_BUNDLE, &ca_secret), |args| {
        args.proxy_env = Some(env(Some("localhost,127.0.0.1")));
    })
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.log().matches(&tunnel).count(), 1, "{}", proxy.log());
    assert_eq!(mock.request_count(), 3);
}
