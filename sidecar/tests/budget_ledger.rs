//! Budgets in cluster mode: the sidecar against an in-test ledger speaking the sync contract
//! (`gatehouse_crds::ledger`), a plain hyper server that grants what is asked up to a limit and
//! applies reports as `max(old, new)`, and that can be told to fail, hang, or say it is not the
//! leader. Leases, their expiry, fail-open and fail-closed, the `not_leader` redirect, reports
//! made again after a lost answer (counted once), the token file, the last report at shutdown,
//! and a hung ledger that never holds a request for long.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_crds::ledger::{
    AccountGrant, Amount, LedgerError, SYNC_PATH, SyncRequest, SyncResponse, usd_to_nanos,
};
use gatehouse_mock_provider::MockProvider;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Sidecar, header};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How the fake ledger answers.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// Apply the report, grant, answer.
    Grant,
    /// Close the connection without an answer.
    Down,
    /// Apply the report, then close the connection without an answer (the sidecar will report
    /// the same numbers again): once, then `Grant`.
    ApplyThenDrop,
    /// Answer 503 `not_leader`, naming this leader URL.
    NotLeader(Option<String>),
    /// Never answer.
    Hang,
}

#[derive(Debug, Default, Clone, Copy)]
struct Instance {
    spent: Amount,
    granted: Amount,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Every sync received: its `Authorization` header and body.
    syncs: Vec<(Option<String>, SyncRequest)>,
    /// Per (instance, budget).
    instances: BTreeMap<(String, String), Instance>,
    /// Limit per budget in nano-USD (`None`: grant whatever is asked).
    limits: BTreeMap<String, u64>,
    /// Budgets answered as unknown.
    unknown: BTreeSet<String>,
    /// Most nano-USD granted in one sync (a ledger handing out fair shares near a limit).
    slice: Option<u64>,
    lease_ttl_ms: u64,
    sync_after_ms: u64,
}

struct FakeLedger {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeLedger {
    async fn start(lease_ttl_ms: u64, sync_after_ms: u64) -> Self {
        Self::start_with(lease_ttl_ms, sync_after_ms, None).await
    }

    /// Over https, with this server certificate.
    async fn start_with(
        lease_ttl_ms: u64,
        sync_after_ms: u64,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Grant,
            syncs: Vec::new(),
            instances: BTreeMap::new(),
            limits: BTreeMap::new(),
            unknown: BTreeSet::new(),
            slice: None,
            lease_ttl_ms,
            sync_after_ms,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn syncs(&self) -> Vec<(Option<String>, SyncRequest)> {
        self.state.lock().unwrap().syncs.clone()
    }

    /// Spent over every instance, as applied.
    fn spent(&self, budget: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .instances
            .iter()
            .filter(|((_, b), _)| b == budget)
            .map(|(_, i)| i.spent.nano_usd)
            .sum()
    }

    /// Waits until `f` holds on the state, up to 10 s.
    async fn wait(&self, what: &str, f: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&self.state.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Reply = Result<hyper::Response<Full<Bytes>>, std::io::Error>;

async fn handle(state: Arc<Mutex<State>>, req: hyper::Request<Incoming>) -> Reply {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(req.uri().path(), SYNC_PATH);
    assert_eq!(req.method(), http::Method::POST);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let sync: SyncRequest = serde_json::from_slice(&body).unwrap();
    let mode = {
        let mut s = state.lock().unwrap();
        s.syncs.push((auth, sync.clone()));
        s.mode.clone()
    };
    match mode {
        Mode::Down => return Err(std::io::Error::other("down")),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::NotLeader(leader) => {
            let error = LedgerError {
                code: "not_leader".into(),
                message: "this replica is not the leader".into(),
                leader,
            };
            return Ok(json_reply(503, serde_json::to_vec(&error).unwrap()));
        }
        Mode::Grant | Mode::ApplyThenDrop => {}
    }
    let answer = apply(&mut state.lock().unwrap(), &sync);
    if mode == Mode::ApplyThenDrop {
        state.lock().unwrap().mode = Mode::Grant;
        return Err(std::io::Error::other("dropped after applying"));
    }
    Ok(json_reply(200, serde_json::to_vec(&answer).unwrap()))
}

fn json_reply(status: u16, body: Vec<u8>) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

const PERIOD_START: &str = "2026-11-01T00:00:00Z";
const PERIOD_END: &str = "2099-01-01T00:00:00Z";

/// A minimal ledger: reports applied as `max(old, new)`, grants up to the limit.
fn apply(s: &mut State, sync: &SyncRequest) -> SyncResponse {
    let mut accounts = Vec::new();
    for a in &sync.accounts {
        if s.unknown.contains(&a.name) {
            accounts.push(AccountGrant {
                kind: a.kind,
                name: a.name.clone(),
                known: false,
                ..AccountGrant::default()
            });
            continue;
        }
        let key = (sync.instance.clone(), a.name.clone());
        let mut me = s.instances.get(&key).copied().unwrap_or_default();
        me.spent = me.spent.max(a.spent);
        me.granted = me.granted.max(a.granted);
        let committed = |s: &State, me: Instance| -> u64 {
            s.instances
                .iter()
                .filter(|((i, b), _)| *b == a.name && *i != sync.instance)
                .map(|(_, i)| i.granted.nano_usd.max(i.spent.nano_usd))
                .sum::<u64>()
                + me.granted.nano_usd.max(me.spent.nano_usd)
        };
        let more = match s.limits.get(&a.name) {
            Some(limit) => a.want.nano_usd.min(limit.saturating_sub(committed(s, me))),
            None => a.want.nano_usd,
        }
        .min(s.slice.unwrap_or(u64::MAX));
        me.granted.nano_usd += more;
        me.granted.tokens += a.want.tokens;
        s.instances.insert(key, me);
        let spent_total = s
            .instances
            .iter()
            .filter(|((_, b), _)| *b == a.name)
            .map(|(_, i)| i.spent)
            .fold(Amount::default(), Amount::saturating_add);
        accounts.push(AccountGrant {
            kind: a.kind,
            name: a.name.clone(),
            known: true,
            period_start: Some(PERIOD_START.parse().unwrap()),
            period_end: Some(PERIOD_END.parse().unwrap()),
            limit: Default::default(),
            granted: me.granted,
            spent_total,
            committed_total: Amount {
                nano_usd: committed(s, me),
                tokens: 0,
            },
        });
    }
    SyncResponse {
        accounts,
        lease_ttl_ms: s.lease_ttl_ms,
        sync_after_ms: s.sync_after_ms,
    }
}

fn manifests(mock: &MockProvider, budgets: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openaiCompatible
  endpoint: {base}
  models: [{{name: pricey, pricing: {{inputPerMillion: "1000", outputPerMillion: "3000"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: [chat]
  targets: [{{provider: mock, model: pricey}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: other}}
spec:
  models: [other]
  targets: [{{provider: mock, model: pricey}}]
{budgets}"#,
        base = mock.base_url()
    )
}

/// Budget `name` on route `route`, 100 USD a month.
fn budget(name: &str, route: &str, fail_mode: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata: {{name: {name}}}\nspec: {{limit: {{usd: \"100\"}}, period: monthly, failMode: {fail_mode}, scope: {{routes: [{route}]}}}}\n"
    )
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    let tmp = dir.join("token.tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

async fn start(
    mock: &MockProvider,
    budgets: &str,
    urls: Vec<String>,
    token: &Path,
    extra: impl FnOnce(&mut gatehouse_sidecar::Args),
) -> Sidecar {
    let token = token.to_path_buf();
    Sidecar::start_with(&manifests(mock, budgets), move |args| {
        args.ledger_url = urls;
        args.ledger_token_file = token;
        args.pod_name = Some("web-0".into());
        extra(args);
    })
    .await
}

async fn chat(sidecar: &Sidecar, model: &str) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
        }))
        .send()
        .await
        .unwrap()
}

async fn wait_metric(sidecar: &Sidecar, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = sidecar.metrics().await;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn leases_outlive_the_ledger_then_each_budget_fails_open_or_closed() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(1_500, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "token-one\n");
    let budgets = [
        budget("open-b", "chat", "open"),
        budget("closed-b", "other", "closed"),
    ]
    .concat();
    let sidecar = start(&mock, &budgets, vec![ledger.url()], &token, |_| {}).await;
    for model in ["chat", "other"] {
        let resp = chat(&sidecar, model).await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some("ok"));
    }
    let syncs = ledger.syncs();
    let (auth, first) = &syncs[0];
    assert_eq!(
        auth.as_deref(),
        Some("Bearer token-one"),
        "the token file, trimmed"
    );
    assert!(first.instance.starts_with("web-0/"), "{}", first.instance);
    assert_eq!(first.namespace, "default");
    // The ledger goes away: the leases (1.5 s from their last sync) still hold.
    ledger.set(Mode::Down);
    for model in ["chat", "other"] {
        assert_eq!(chat(&sidecar, model).await.status(), 200, "{model}");
    }
    wait_metric(
        &sidecar,
        r#"gatehouse_budget_degraded{budget="closed-b"} 1"#,
    )
    .await;
    wait_metric(&sidecar, r#"gatehouse_budget_degraded{budget="open-b"} 1"#).await;
    // Past the leases: open serves, closed refuses.
    let resp = chat(&sidecar, "chat").await;
    assert_eq!(resp.status(), 200);
    let resp = chat(&sidecar, "other").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "x-gatehouse-budget"), Some("unavailable"));
    assert!(header(&resp, "retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget 'closed-b'"),
        "{body}"
    );
    let metrics = sidecar.metrics().await;
    for line in [
        r#"gatehouse_budget_decisions_total{budget="open-b",outcome="fail_open"} 1"#,
        r#"gatehouse_budget_decisions_total{budget="closed-b",outcome="fail_closed"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"gatehouse_ledger_syncs_total{result="unreachable"}"#),
        "{metrics}"
    );
    // The token rotates while the ledger is away; it comes back.
    token_file(dir.path(), "token-two");
    ledger.set(Mode::Grant);
    wait_metric(
        &sidecar,
        r#"gatehouse_budget_degraded{budget="closed-b"} 0"#,
    )
    .await;
    assert_eq!(chat(&sidecar, "other").await.status(), 200);
    let syncs = ledger.syncs();
    let (auth, _) = syncs.last().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer token-two"));
    // The spend made without a lease was reported as such.
    assert!(
        syncs
            .iter()
            .flat_map(|(_, s)| &s.accounts)
            .any(|a| a.name == "open-b" && a.degraded),
        "no degraded report"
    );
    assert!(
        !syncs
            .iter()
            .flat_map(|(_, s)| &s.accounts)
            .any(|a| a.name == "closed-b" && a.degraded),
        "closed-b never served without a lease"
    );
}

#[tokio::test]
async fn a_not_leader_answer_is_followed_to_the_leader() {
    let mock = MockProvider::start().await.unwrap();
    let leader = FakeLedger::start(10_000, 100).await;
    let standby = FakeLedger::start(10_000, 100).await;
    standby.set(Mode::NotLeader(Some(leader.url())));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    // A refusing URL first: the sidecar tries the next one.
    let refused = support::refused_url().trim_end_matches("/v1").to_string();
    let sidecar = start(
        &mock,
        &budget("b", "chat", "closed"),
        vec![refused, standby.url()],
        &token,
        |_| {},
    )
    .await;
    assert_eq!(chat(&sidecar, "chat").await.status(), 200);
    assert!(!leader.syncs().is_empty());
    // The leader is tried first from then on.
    let asked = standby.syncs().len();
    leader
        .wait("five more syncs", |s| s.syncs.len() >= asked + 5)
        .await;
    assert_eq!(
        standby.syncs().len(),
        asked,
        "the standby is not asked again"
    );
    assert_eq!(chat(&sidecar, "chat").await.status(), 200);
}

#[tokio::test]
async fn reports_are_cumulative_so_a_repeated_one_counts_once() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let sidecar = start(
        &mock,
        &budget("b", "chat", "open"),
        vec![ledger.url()],
        &token,
        |_| {},
    )
    .await;
    let mut spent = 0u64;
    for round in 0..6 {
        if round == 3 {
            // The next report is applied but its answer lost: the sidecar reports again.
            ledger.set(Mode::ApplyThenDrop);
            ledger.wait("the drop", |s| s.mode == Mode::Grant).await;
        }
        let resp = chat(&sidecar, "chat").await;
        assert_eq!(resp.status(), 200);
        spent += usd_to_nanos(
            header(&resp, "x-gatehouse-cost-usd")
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    // The last spend reaches the ledger with the next sync, or at shutdown at the latest.
    sidecar.running.shutdown().await;
    assert_eq!(ledger.spent("b"), spent, "every request counted once");
    let reports: Vec<u64> = ledger
        .syncs()
        .iter()
        .flat_map(|(_, s)| &s.accounts)
        .map(|a| a.spent.nano_usd)
        .collect();
    assert!(
        reports.windows(2).all(|w| w[0] <= w[1]),
        "cumulative reports never go down: {reports:?}"
    );
    assert_eq!(reports.last(), Some(&spent), "the last report at shutdown");
    let last = ledger.syncs().last().unwrap().1.clone();
    assert_eq!(
        last.accounts[0].want,
        Amount::default(),
        "nothing asked for at shutdown"
    );
}

#[tokio::test]
async fn a_hard_limit_holds_through_the_remote_ledger() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 100).await;
    ledger
        .state
        .lock()
        .unwrap()
        .limits
        .insert("b".into(), usd_to_nanos(0.2));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let sidecar = start(
        &mock,
        &budget("b", "chat", "closed"),
        vec![ledger.url()],
        &token,
        |_| {},
    )
    .await;
    let mut spent = 0.0;
    let mut served = 0;
    loop {
        let resp = chat(&sidecar, "chat").await;
        if resp.status() == 429 {
            assert_eq!(header(&resp, "x-gatehouse-budget"), Some("exceeded"));
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
            break;
        }
        assert_eq!(resp.status(), 200);
        spent += header(&resp, "x-gatehouse-cost-usd")
            .unwrap()
            .parse::<f64>()
            .unwrap();
        served += 1;
        assert!(served < 20, "never refused");
    }
    assert!(spent <= 0.2 + 1e-9, "spent {spent}");
    assert!(served >= 3, "the grants were used: {served} served");
}

#[tokio::test]
async fn a_hung_ledger_never_holds_a_request_for_long() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 100).await;
    ledger.set(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let budgets = [
        budget("open-b", "chat", "open"),
        budget("closed-b", "other", "closed"),
    ]
    .concat();
    let sidecar = start(&mock, &budgets, vec![ledger.url()], &token, |args| {
        args.ledger_timeout_ms = 400;
        args.budget_wait_ms = 300;
    })
    .await;
    // Generous bounds: they prove the request was not held by the ledger, not how fast it is.
    let started = Instant::now();
    let resp = chat(&sidecar, "other").await;
    assert_eq!(resp.status(), 503);
    let resp = chat(&sidecar, "chat").await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_budget_the_ledger_does_not_know_follows_its_fail_mode() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 100).await;
    ledger
        .state
        .lock()
        .unwrap()
        .unknown
        .extend(["open-b".to_string(), "closed-b".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let budgets = [
        budget("open-b", "chat", "open"),
        budget("closed-b", "other", "closed"),
    ]
    .concat();
    let sidecar = start(&mock, &budgets, vec![ledger.url()], &token, |_| {}).await;
    assert_eq!(chat(&sidecar, "other").await.status(), 503);
    assert_eq!(chat(&sidecar, "chat").await.status(), 200);
    wait_metric(
        &sidecar,
        r#"gatehouse_budget_degraded{budget="closed-b"} 1"#,
    )
    .await;
}

/// A throwaway CA (PEM) and a TLS acceptor serving a certificate it signed for 127.0.0.1.
fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    tls_for("127.0.0.1")
}

/// A throwaway CA (PEM) and a TLS acceptor serving a certificate it signed for `name` only.
fn tls_for(name: &str) -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (
        ca_cert.pem(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

#[tokio::test]
async fn an_https_ledger_is_trusted_through_the_ca_file_only() {
    let mock = MockProvider::start().await.unwrap();
    let (ca, acceptor) = tls();
    let ledger = FakeLedger::start_with(10_000, 100, Some(acceptor)).await;
    let url = format!("https://{}", ledger.addr);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let budgets = budget("b", "chat", "closed");
    let trusted = start(&mock, &budgets, vec![url.clone()], &token, |args| {
        args.ledger_ca_file = Some(ca_file);
    })
    .await;
    assert_eq!(chat(&trusted, "chat").await.status(), 200);
    assert!(!ledger.syncs().is_empty());
    // Without the CA file the compiled-in roots do not know this CA: no sync gets through, and
    // the fail-closed budget refuses.
    let untrusted = start(&mock, &budgets, vec![url], &token, |_| {}).await;
    assert_eq!(chat(&untrusted, "chat").await.status(), 503);
    let metrics = untrusted.metrics().await;
    assert!(
        metrics.contains(r#"gatehouse_ledger_syncs_total{result="unreachable"}"#),
        "{metrics}"
    );
}

/// The operator's replicas share one certificate for the Service's name; a `not_leader` redirect
/// names the leader by pod IP, which is not in it. The sidecar verifies every replica as the
/// configured name, and still refuses a certificate for another name.
#[tokio::test]
async fn an_https_leader_reached_by_ip_is_verified_as_the_configured_name() {
    let mock = MockProvider::start().await.unwrap();
    let (ca, acceptor) = tls_for("localhost");
    let leader = FakeLedger::start_with(10_000, 100, Some(acceptor.clone())).await;
    let standby = FakeLedger::start_with(10_000, 100, Some(acceptor)).await;
    standby.set(Mode::NotLeader(Some(format!(
        "https://127.0.0.1:{}",
        leader.addr.port()
    ))));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let budgets = budget("b", "chat", "closed");
    let service = format!("https://localhost:{}", standby.addr.port());
    let ca_path = ca_file.clone();
    let sidecar = start(&mock, &budgets, vec![service], &token, move |args| {
        args.ledger_ca_file = Some(ca_path);
    })
    .await;
    assert_eq!(chat(&sidecar, "chat").await.status(), 200);
    assert!(!leader.syncs().is_empty(), "the leader was reached by IP");
    // A certificate from the same kind of CA but for another name is refused.
    let (other_ca, other) = tls_for("elsewhere.example");
    let impostor = FakeLedger::start_with(10_000, 100, Some(other)).await;
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let url = format!("https://localhost:{}", impostor.addr.port());
    let refused = start(&mock, &budgets, vec![url], &token, move |args| {
        args.ledger_ca_file = Some(other_file);
    })
    .await;
    assert_eq!(chat(&refused, "chat").await.status(), 503);
    assert!(impostor.syncs().is_empty());
}

#[tokio::test]
async fn a_request_waits_through_partial_grants_within_its_bound() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 5_000).await;
    // A third of what one request reserves per sync: it takes several syncs to fit one.
    ledger.state.lock().unwrap().slice = Some(usd_to_nanos(0.018));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let sidecar = start(
        &mock,
        &budget("b", "chat", "closed"),
        vec![ledger.url()],
        &token,
        |_| {},
    )
    .await;
    let resp = chat(&sidecar, "chat").await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert!(ledger.syncs().len() >= 3, "{} syncs", ledger.syncs().len());
    // With too little time to wait for them, the same request is refused. Once the ledger has
    // answered (the Budget is no longer degraded) but granted too little, that is a 429.
    let hasty = start(
        &mock,
        &budget("b", "chat", "closed"),
        vec![ledger.url()],
        &token,
        |args| args.budget_wait_ms = 0,
    )
    .await;
    wait_metric(&hasty, r#"gatehouse_budget_degraded{budget="b"} 0"#).await;
    let resp = chat(&hasty, "chat").await;
    assert_eq!(resp.status(), 429, "the ledger answered, but not enough");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    // Before any answer there is no live lease within the wait: the Budget fails closed.
    let silent = FakeLedger::start(10_000, 5_000).await;
    silent.set(Mode::Hang);
    let unanswered = start(
        &mock,
        &budget("b", "chat", "closed"),
        vec![silent.url()],
        &token,
        |args| args.budget_wait_ms = 0,
    )
    .await;
    let resp = chat(&unanswered, "chat").await;
    assert_eq!(resp.status(), 503, "no live lease within the wait");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_unavailable", "{body}");
}

#[tokio::test]
async fn a_cluster_rate_limit_spends_requests_on_the_ledger() {
    let mock = MockProvider::start().await.unwrap();
    let ledger = FakeLedger::start(10_000, 100).await;
    // A rate-limit account counts requests in the wire's `nanoUsd`: 3 requests this window.
    ledger
        .state
        .lock()
        .unwrap()
        .limits
        .insert("limited/rpm".into(), 3);
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "t");
    let route = "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {name: limited}\n\
                 spec:\n  models: [limited]\n  targets: [{provider: mock, model: pricey}]\n  \
                 rateLimits: [{name: rpm, requestsPerMinute: 3, scope: cluster}]\n";
    let sidecar = start(&mock, route, vec![ledger.url()], &token, |_| {}).await;
    for i in 0..3 {
        let resp = chat(&sidecar, "limited").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-ratelimit-limit-requests"), Some("3"));
        let remaining: u64 = header(&resp, "x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining <= 2 - i, "request {i}: {remaining} remaining");
        assert!(header(&resp, "x-ratelimit-reset-requests").is_some());
    }
    let resp = chat(&sidecar, "limited").await;
    assert_eq!(resp.status(), 429);
    assert!(
        header(&resp, "retry-after").is_some_and(|r| r.parse::<u64>().unwrap() >= 1),
        "{:?}",
        resp.headers()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    // The account is a rate limit named by route and limit; its three requests are reported.
    ledger
        .wait("the three requests reported", |s| {
            s.instances
                .iter()
                .any(|((_, name), i)| name == "limited/rpm" && i.spent.nano_usd == 3)
        })
        .await;
    let syncs = ledger.syncs();
    assert!(syncs.iter().any(|(_, s)| s.accounts.iter().any(
        |a| a.name == "limited/rpm" && a.kind == gatehouse_crds::ledger::AccountKind::RateLimit
    )));
}
