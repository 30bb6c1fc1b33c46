//! The budget ledger in-process against a real kube-apiserver, driven by a hand-written sync
//! client playing the sidecars: ServiceAccount tokens for the ledger's audience from the
//! TokenRequest API (there is no kubelet), checked by TokenReview. Who may sync; grants that
//! hold the limit under concurrent sidecars; a report sent twice; the books across a restart, a
//! leader change and a fenced former leader; reclaimed leases; rollover; one event per threshold
//! per period across a leader change; status within 5 s under load; degraded sidecars.

use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use gatehouse_crds::Budget;
use gatehouse_crds::ledger::{
    AccountSync, Amount, LedgerError, Period, SYNC_PATH, SyncRequest, SyncResponse, TOKEN_AUDIENCE,
};
use gatehouse_e2e::{ControlPlane, eventually};
use gatehouse_operator::ledger::account::Policy;
use gatehouse_operator::ledger::book::{Book, SyncError, Terms};
use gatehouse_operator::ledger::store::{AccountKey, Records};
use gatehouse_operator::metrics::Metrics;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

fn control_plane() -> Result<&'static ControlPlane> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    INSTALLED
        .get_or_init(|| {
            let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
            cp.install_crds(&crds)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("failed to install CRDs: {e}"))?;
    Ok(cp)
}

async fn start_operator(
    client: Client,
    ns: &str,
    identity: &str,
    extra: &[&str],
) -> Result<gatehouse_operator::Running> {
    let mut args = vec![
        "gatehouse-operator".to_string(),
        format!("--identity={identity}"),
        "--admin-listen=127.0.0.1:0".into(),
        "--ledger-listen=127.0.0.1:0".into(),
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--log-format=text".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args = gatehouse_operator::Args::try_parse_from(args)?;
    Ok(gatehouse_operator::start(args, client).await?)
}

async fn wait_leader(operators: &[&gatehouse_operator::Running]) -> Result<usize> {
    eventually("a ledger leader", Duration::from_secs(30), || {
        let leading = operators.iter().position(|o| {
            matches!(
                o.ledger.role(),
                gatehouse_operator::ledger::Role::Leading(_)
            )
        });
        async move { Ok(leading) }
    })
    .await
}

async fn apply_budget(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<()> {
    Api::<Budget>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Budget",
                "metadata": {"name": name}, "spec": spec}),
            ),
        )
        .await?;
    Ok(())
}

/// A simulated sidecar instance: keeps its cumulative numbers like the real one.
#[derive(Clone)]
struct Instance {
    http: reqwest::Client,
    token: String,
    namespace: String,
    id: String,
    period_start: Option<Timestamp>,
    spent: Amount,
    granted: Amount,
}

/// An error answer of the ledger.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: LedgerError,
}

impl Instance {
    fn new(token: &str, namespace: &str, id: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            token: token.to_string(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            period_start: None,
            spent: Amount::default(),
            granted: Amount::default(),
        }
    }

    fn request(&self, budget: &str, want: u64, degraded: bool) -> SyncRequest {
        SyncRequest {
            instance: self.id.clone(),
            namespace: self.namespace.clone(),
            accounts: vec![AccountSync {
                name: budget.to_string(),
                period_start: self.period_start,
                spent: self.spent,
                granted: self.granted,
                want: usd(want),
                degraded,
                ..AccountSync::default()
            }],
        }
    }

    async fn post(&self, url: &str, req: &SyncRequest) -> Result<Result<SyncResponse, Refused>> {
        let r = self
            .http
            .post(format!("{url}{SYNC_PATH}"))
            .bearer_auth(&self.token)
            .json(req)
            .timeout(Duration::from_secs(20))
            .send()
            .await?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        if status == 200 {
            Ok(Ok(serde_json::from_slice(&bytes).with_context(|| {
                format!("answer: {}", String::from_utf8_lossy(&bytes))
            })?))
        } else {
            let body = serde_json::from_slice(&bytes)
                .with_context(|| format!("{status}: {}", String::from_utf8_lossy(&bytes)))?;
            Ok(Err(Refused { status, body }))
        }
    }

    /// Sync `budget` wanting `want` nano-USD; adopts the answer as a sidecar does (a new period
    /// starts from zero). Returns the answer.
    async fn sync(&mut self, url: &str, budget: &str, want: u64) -> Result<SyncResponse> {
        let req = self.request(budget, want, false);
        let answer = self
            .post(url, &req)
            .await?
            .map_err(|r| anyhow!("sync refused: {} {:?}", r.status, r.body))?;
        self.adopt(&answer);
        Ok(answer)
    }

    fn adopt(&mut self, answer: &SyncResponse) {
        let Some(a) = answer.accounts.first() else {
            return;
        };
        if a.period_start != self.period_start {
            self.spent = Amount::default();
        }
        self.period_start = a.period_start;
        self.granted = a.granted;
    }

    fn allowance(&self) -> u64 {
        self.granted.nano_usd.saturating_sub(self.spent.nano_usd)
    }
}

fn usd(n: u64) -> Amount {
    Amount {
        nano_usd: n,
        tokens: 0,
    }
}

fn ledger_url(o: &gatehouse_operator::Running) -> String {
    format!("http://{}", o.ledger_addr)
}

async fn ledger_token(cp: &ControlPlane, ns: &str, sa: &str) -> Result<String> {
    cp.mint_token_for(ns, sa, &[TOKEN_AUDIENCE]).await
}

async fn status(client: &Client, ns: &str, name: &str) -> Result<gatehouse_crds::BudgetStatus> {
    Ok(Api::<Budget>::namespaced(client.clone(), ns)
        .get(name)
        .await?
        .status
        .unwrap_or_default())
}

fn condition(s: &gatehouse_crds::BudgetStatus, type_: &str) -> Option<(String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Nano-USD of a status USD string.
fn nanos(s: &str) -> Result<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    ensure!(frac.len() == 9, "more than 9 decimals in {s}");
    Ok(int.parse::<u64>()? * 1_000_000_000 + frac.parse::<u64>()?)
}

async fn events(client: &Client, ns: &str, budget: &str, reason: &str) -> Result<usize> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(budget)
        })
        .count())
}

#[tokio::test]
async fn only_sidecars_of_the_namespace_with_a_ledger_token_may_sync() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-auth").await?;
    let other = cp.create_namespace("ledger-auth-other").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    cp.create_service_account(&other, "app").await?;
    apply_budget(
        &client,
        &ns,
        "monthly",
        json!({"limit": {"usd": "5"}, "period": "monthly"}),
    )
    .await?;
    let first = start_operator(client.clone(), &ns, "first", &[]).await?;
    let second = start_operator(client.clone(), &ns, "second", &[]).await?;
    let leader_index = wait_leader(&[&first, &second]).await?;
    let (leader, standby) = if leader_index == 0 {
        (&first, &second)
    } else {
        (&second, &first)
    };
    let url = ledger_url(leader);
    let good = ledger_token(cp, &ns, "app").await?;
    let mut sidecar = Instance::new(&good, &ns, "web-0/0001");

    // No token, a token for the API server's audience, a token of another namespace.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}{SYNC_PATH}"))
        .json(&sidecar.request("monthly", 0, false))
        .send()
        .await?;
    ensure!(r.status() == 401, "no token: {}", r.status());
    let body: LedgerError = r.json().await?;
    ensure!(body.code == "unauthenticated", "{body:?}");
    let api_token = cp.mint_token(&ns, "app").await?;
    let refused = Instance::new(&api_token, &ns, "web-0/0001")
        .post(&url, &sidecar.request("monthly", 0, false))
        .await?
        .err()
        .context("an API-audience token was accepted")?;
    ensure!(
        refused.status == 401 && refused.body.code == "unauthenticated",
        "{refused:?}"
    );
    ensure!(
        !refused.body.message.contains(&api_token),
        "the token is echoed: {refused:?}"
    );
    let foreign = ledger_token(cp, &other, "app").await?;
    let refused = Instance::new(&foreign, &ns, "web-0/0001")
        .post(&url, &sidecar.request("monthly", 0, false))
        .await?
        .err()
        .context("a token of another namespace was accepted")?;
    ensure!(
        refused.status == 403 && refused.body.code == "forbidden",
        "{refused:?}"
    );

    // Not JSON; an unknown path.
    let r = http
        .post(format!("{url}{SYNC_PATH}"))
        .bearer_auth(&good)
        .body("{not json")
        .send()
        .await?;
    ensure!(r.status() == 400, "garbage: {}", r.status());
    let body: LedgerError = r.json().await?;
    ensure!(body.code == "invalid_request", "{body:?}");
    let r = http
        .post(format!("{url}/ledger/v2/sync"))
        .bearer_auth(&good)
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown path: {}", r.status());

    // The right token: a lease of a known Budget; an unknown one grants nothing.
    let answer = sidecar.sync(&url, "monthly", 1_000_000).await?;
    let a = &answer.accounts[0];
    ensure!(a.known && a.granted == usd(1_000_000), "{answer:?}");
    ensure!(a.limit.nano_usd == Some(5_000_000_000), "{answer:?}");
    ensure!(
        answer.lease_ttl_ms == 30_000 && answer.sync_after_ms == 2_000,
        "{answer:?}"
    );
    let (start, end) = Period::Monthly.bounds(Timestamp::now());
    ensure!(
        a.period_start == Some(start) && a.period_end == end,
        "{answer:?}"
    );
    let unknown = sidecar.sync(&url, "nope", 1_000).await?;
    ensure!(
        !unknown.accounts[0].known && unknown.accounts[0].granted == Amount::default(),
        "{unknown:?}"
    );

    // The standby sends sidecars to the leader (once its election has read the Lease).
    let refused = eventually(
        "the standby names the leader",
        Duration::from_secs(10),
        || {
            let sidecar = sidecar.clone();
            let standby_url = ledger_url(standby);
            async move {
                let r = sidecar
                    .post(&standby_url, &sidecar.request("monthly", 0, false))
                    .await?
                    .err()
                    .context("the standby answered a sync")?;
                Ok(r.body.leader.is_some().then_some(r))
            }
        },
    )
    .await?;
    ensure!(
        refused.status == 503
            && refused.body.code == "not_leader"
            && refused.body.leader.as_deref() == Some(url.as_str()),
        "{refused:?}"
    );
    first.shutdown().await?;
    second.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn grants_hold_the_limit_under_concurrent_sidecars_and_status_follows() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-limit").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    // One USD, hard.
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "1"}, "period": "daily"}),
    )
    .await?;
    let operator = start_operator(client.clone(), &ns, "solo", &[]).await?;
    wait_leader(&[&operator]).await?;
    let url = ledger_url(&operator);
    let token = ledger_token(cp, &ns, "app").await?;

    // 40 sidecars, each spending in 7-cent requests what it is granted, asking 20 cents at a
    // time, until a request no longer fits and the ledger has nothing left.
    const LIMIT: u64 = 1_000_000_000;
    const REQUEST: u64 = 7_000_000;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut sidecar = Instance::new(&token, &ns, &format!("web-{i}/{i:04x}"));
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let answer = sidecar.sync(&url, "team", 200_000_000).await?;
                let a = &answer.accounts[0];
                ensure!(
                    a.committed_total.nano_usd <= LIMIT,
                    "committed past the limit: {answer:?}"
                );
                while sidecar.allowance() >= REQUEST {
                    sidecar.spent.nano_usd += REQUEST;
                }
                if sidecar.allowance() < REQUEST && a.committed_total.nano_usd >= LIMIT {
                    break;
                }
            }
            // The final report.
            sidecar.sync(&url, "team", 0).await?;
            Ok::<u64, anyhow::Error>(sidecar.spent.nano_usd)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    ensure!(total <= LIMIT, "spent {total} of {LIMIT}");
    // Every grant reached a sidecar: at most one request's worth per sidecar is left unused.
    ensure!(
        total > LIMIT - 40 * REQUEST,
        "spent only {total} of {LIMIT}"
    );

    let s = eventually("status shows the spend", Duration::from_secs(5), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let s = status(&client, &ns, "team").await?;
            Ok(s.spent
                .as_deref()
                .map(nanos)
                .transpose()?
                .filter(|n| *n == total)
                .map(|_| s))
        }
    })
    .await?;
    ensure!(
        s.remaining.as_deref().map(nanos).transpose()? == Some(LIMIT - total),
        "{s:?}"
    );
    ensure!(s.sidecars == Some(40), "{s:?}");
    ensure!(
        condition(&s, "Exceeded") == Some(("True".into(), "LimitReached".into())),
        "{s:?}"
    );
    // The reconcile still owns Ready.
    let ready = eventually("Ready", Duration::from_secs(20), || {
        let client = client.clone();
        let ns = ns.clone();
        async move { Ok(condition(&status(&client, &ns, "team").await?, "Ready")) }
    })
    .await?;
    ensure!(ready.0 == "True", "{ready:?}");
    eventually("one LimitReached event", Duration::from_secs(10), || {
        let client = client.clone();
        let ns = ns.clone();
        async move { Ok((events(&client, &ns, "team", "LimitReached").await? == 1).then_some(())) }
    })
    .await?;
    let metrics = operator.metrics.encode();
    let gauge = |name: &str| -> Option<f64> {
        let prefix = format!("{name}{{namespace=\"{ns}\",budget=\"team\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    };
    let spent = gauge("gatehouse_operator_budget_spent_usd");
    ensure!(
        spent.is_some_and(|v| (v - total as f64 / 1e9).abs() < 1e-9),
        "spent gauge {spent:?} for {total}:\n{metrics}"
    );
    let limit = gauge("gatehouse_operator_budget_limit_usd");
    ensure!(limit == Some(1.0), "limit gauge {limit:?}:\n{metrics}");
    // Group commit: far fewer record writes than syncs.
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (syncs, commits) = (
        count("gatehouse_operator_ledger_syncs_total"),
        count("gatehouse_operator_ledger_commits_total"),
    );
    eprintln!("{syncs} syncs, {commits} record writes");
    ensure!(commits < syncs, "{commits} writes for {syncs} syncs");
    operator.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_books_survive_a_repeat_a_restart_and_a_leader_change() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-durable").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "10"}, "period": "monthly"}),
    )
    .await?;
    let token = ledger_token(cp, &ns, "app").await?;
    let first = start_operator(client.clone(), &ns, "first", &[]).await?;
    wait_leader(&[&first]).await?;
    let second = start_operator(client.clone(), &ns, "second", &[]).await?;

    let mut a = Instance::new(&token, &ns, "web-0/aaaa");
    let mut b = Instance::new(&token, &ns, "web-1/bbbb");
    a.sync(&ledger_url(&first), "team", 1_000_000_000).await?;
    b.sync(&ledger_url(&first), "team", 1_000_000_000).await?;
    a.spent = usd(300_000_000);
    b.spent = usd(200_000_000);
    // The same report twice (a retry): counted once.
    let req = a.request("team", 0, false);
    for _ in 0..2 {
        let answer = a
            .post(&ledger_url(&first), &req)
            .await?
            .map_err(|r| anyhow!("{r:?}"))?;
        ensure!(
            answer.accounts[0].spent_total == usd(300_000_000),
            "{answer:?}"
        );
    }
    let answer = b.sync(&ledger_url(&first), "team", 0).await?;
    ensure!(
        answer.accounts[0].spent_total == usd(500_000_000),
        "{answer:?}"
    );
    let granted_a = a.granted;

    // Leader change: the first stops (releasing the Lease), the second takes over and serves
    // from the records: nothing settled is lost, nothing is counted twice.
    first.shutdown().await?;
    wait_leader(&[&second]).await?;
    let url = ledger_url(&second);
    let answer = a.sync(&url, "team", 0).await?;
    let acct = &answer.accounts[0];
    ensure!(
        acct.spent_total == usd(500_000_000) && acct.granted == granted_a,
        "after the leader change: {answer:?}"
    );
    a.spent = usd(400_000_000);
    let answer = a.sync(&url, "team", 0).await?;
    ensure!(
        answer.accounts[0].spent_total == usd(600_000_000),
        "{answer:?}"
    );

    // A restart of the only replica: the same again.
    second.shutdown().await?;
    let third = start_operator(client.clone(), &ns, "third", &[]).await?;
    wait_leader(&[&third]).await?;
    let answer = b.sync(&ledger_url(&third), "team", 0).await?;
    ensure!(
        answer.accounts[0].spent_total == usd(600_000_000),
        "after a restart: {answer:?}"
    );
    // The record names its writer.
    let record = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&AccountKey::budget(&ns, "team").object_name())
        .await?;
    let state = record
        .data
        .unwrap_or_default()
        .remove("state.json")
        .context("no state")?;
    ensure!(state.contains("\"writer\":\"third\""), "{state}");
    let s = eventually("status after the restart", Duration::from_secs(10), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let s = status(&client, &ns, "team").await?;
            Ok((s.spent.as_deref() == Some("0.60")).then_some(s))
        }
    })
    .await?;
    ensure!(s.remaining.as_deref() == Some("9.40"), "{s:?}");
    third.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_former_leader_is_fenced_by_the_records() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-fence").await?;
    let client = cp.admin_client().await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "1"}, "period": "none"}),
    )
    .await?;
    let uid = Api::<Budget>::namespaced(client.clone(), &ns)
        .get("team")
        .await?
        .uid()
        .context("no uid")?;
    let terms = Terms {
        uid,
        limit: gatehouse_crds::ledger::Limit {
            nano_usd: Some(1_000_000_000),
            tokens: None,
        },
        period: Period::None,
    };
    let records = Records::new(client.clone(), &ns);
    let book = |identity: &str, term: i64, loaded| {
        Arc::new(Book::new(
            records.clone(),
            identity.to_string(),
            term,
            Policy::for_ttl(30_000),
            2_000,
            Arc::new(Metrics::new()),
            loaded,
        ))
    };
    let mut a = Instance::new("", &ns, "web-0/aaaa");
    let sync = |book: &Arc<Book>, a: &Instance, want: u64| {
        let book = book.clone();
        let req = a.request("team", want, false);
        let terms = terms.clone();
        async move { book.sync(&req, &[Some(terms)], Timestamp::now()).await }
    };
    // The old leader (term 100) grants; the new one (term 200) takes over from the records.
    let old = book("old", 100, Vec::new());
    let answer = sync(&old, &a, 300_000_000).await?;
    a.adopt(&answer);
    let new = book("new", 200, records.list().await?);
    a.spent = usd(100_000_000);
    let answer = sync(&new, &a, 0).await?;
    let acct = &answer.accounts[0];
    ensure!(
        acct.granted == usd(300_000_000) && acct.committed_total == usd(300_000_000),
        "the new leader knows the old one's grant: {answer:?}"
    );
    // The old leader wakes up and tries to grant from the state it had: its write conflicts,
    // it reads the newer term and stops, without answering.
    let stale = Instance::new("", &ns, "web-1/bbbb");
    match sync(&old, &stale, 500_000_000).await {
        Err(SyncError::NotLeader) => {}
        other => bail!("the former leader answered: {other:?}"),
    }
    ensure!(old.is_fenced() && !new.is_fenced());
    // Its grant never reached the records.
    let answer = sync(&new, &stale, 0).await?;
    ensure!(
        answer.accounts[0].committed_total == usd(300_000_000),
        "{answer:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_sidecars_lease_is_reclaimed() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-reclaim").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "0.000001"}, "period": "daily"}),
    )
    .await?;
    let operator = start_operator(
        client.clone(),
        &ns,
        "solo",
        &[
            "--ledger-lease-ttl-ms=1000",
            "--ledger-sync-interval-ms=500",
        ],
    )
    .await?;
    wait_leader(&[&operator]).await?;
    let url = ledger_url(&operator);
    let token = ledger_token(cp, &ns, "app").await?;
    let mut a = Instance::new(&token, &ns, "web-0/aaaa");
    let mut b = Instance::new(&token, &ns, "web-1/bbbb");
    // Alone, a gets half of the 1000 nano-USD; b a third of what is left.
    let answer = a.sync(&url, "team", 1_000).await?;
    ensure!(a.granted == usd(500), "{answer:?}");
    b.sync(&url, "team", 1_000).await?;
    ensure!(b.granted == usd(166), "{:?}", b.granted);
    a.spent = usd(100);
    a.sync(&url, "team", 0).await?;
    // a falls silent; b keeps syncing. After the TTL plus the margin (3.1 s here), a's unspent
    // 400 is reclaimed and b can be granted from it.
    let started = Instant::now();
    let granted = eventually("a's lease reclaimed", Duration::from_secs(15), || {
        let mut b = b.clone();
        let url = url.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            b.sync(&url, "team", 1_000).await?;
            // Without the reclaim b could reach at most the 500 a does not hold.
            Ok((b.granted.nano_usd > 500).then_some(b.granted))
        }
    })
    .await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(2_500),
        "reclaimed after only {:?}",
        started.elapsed()
    );
    // a comes back reporting the grant it heard before: not counted again.
    let answer = a.sync(&url, "team", 0).await?;
    ensure!(
        answer.accounts[0].granted == usd(100),
        "a's old lease came back: {answer:?} (b had {granted:?})"
    );
    ensure!(
        answer.accounts[0].committed_total.nano_usd <= 1_000,
        "{answer:?}"
    );
    ensure!(
        operator.metrics.encode().lines().any(|l| l
            .starts_with("gatehouse_operator_ledger_reclaims_total")
            && !l.ends_with(" 0")),
        "no reclaim counted"
    );
    operator.shutdown().await?;
    Ok(())
}

/// Wait until at least `room` is left of the current custom period.
async fn fresh_period(seconds: u64, room: Duration) -> Timestamp {
    loop {
        let now = Timestamp::now();
        let (start, end) = Period::Seconds(seconds).bounds(now);
        let left = end.map_or(Duration::MAX, |e| {
            Duration::try_from(e.duration_since(now)).unwrap_or_default()
        });
        if left >= room {
            return start;
        }
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_period_rolls_over_keeping_the_previous_one() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-rollover").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "1"}, "period": "custom", "periodSeconds": 12}),
    )
    .await?;
    let operator = start_operator(client.clone(), &ns, "solo", &[]).await?;
    wait_leader(&[&operator]).await?;
    let url = ledger_url(&operator);
    let token = ledger_token(cp, &ns, "app").await?;
    let mut a = Instance::new(&token, &ns, "web-0/aaaa");

    let first = fresh_period(12, Duration::from_secs(8)).await;
    a.sync(&url, "team", 500_000_000).await?;
    ensure!(a.period_start == Some(first));
    a.spent = usd(300_000_000);
    a.sync(&url, "team", 0).await?;
    let first_end = Period::Seconds(12).bounds(first).1.context("no end")?;
    // Status rolls over on its own at the boundary: spent 0, the previous period kept.
    let s = eventually("status rolled over", Duration::from_secs(20), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let s = status(&client, &ns, "team").await?;
            Ok((s.period_start.as_ref().map(|t| t.0) == Some(first_end)).then_some(s))
        }
    })
    .await?;
    ensure!(s.spent.as_deref() == Some("0.00"), "{s:?}");
    let prev = s.previous_period.clone().context("no previous period")?;
    ensure!(
        prev.start.0 == first && prev.spent == "0.30",
        "previous period: {prev:?}"
    );
    // A late report for the first period still counts there; the answer moves the sidecar to
    // the new period, where it starts from zero.
    a.spent = usd(450_000_000);
    let answer = a.sync(&url, "team", 100_000_000).await?;
    ensure!(
        a.period_start == Some(first_end) && answer.accounts[0].spent_total == Amount::default(),
        "{answer:?}"
    );
    ensure!(a.spent == Amount::default() && a.granted == usd(100_000_000));
    let s = eventually(
        "the late report in the previous period",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let s = status(&client, &ns, "team").await?;
                Ok(s.previous_period
                    .as_ref()
                    .is_some_and(|p| p.spent == "0.45")
                    .then_some(s))
            }
        },
    )
    .await?;
    ensure!(s.spent.as_deref() == Some("0.00"), "{s:?}");
    operator.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_threshold_warns_once_per_period_even_across_a_leader_change() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-threshold").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "1"}, "period": "custom", "periodSeconds": 40,
               "thresholds": [50], "enforcement": "soft"}),
    )
    .await?;
    let token = ledger_token(cp, &ns, "app").await?;
    let first = start_operator(client.clone(), &ns, "first", &[]).await?;
    wait_leader(&[&first]).await?;
    let second = start_operator(client.clone(), &ns, "second", &[]).await?;
    let one = || {
        let client = client.clone();
        let ns = ns.clone();
        async move { events(&client, &ns, "team", "ThresholdReached").await }
    };

    let period = fresh_period(40, Duration::from_secs(30)).await;
    let mut a = Instance::new(&token, &ns, "web-0/aaaa");
    a.sync(&ledger_url(&first), "team", 700_000_000).await?;
    a.spent = usd(600_000_000);
    a.sync(&ledger_url(&first), "team", 0).await?;
    eventually("the threshold event", Duration::from_secs(10), || {
        let n = one();
        async move { Ok((n.await? == 1).then_some(())) }
    })
    .await?;
    let s = status(&client, &ns, "team").await?;
    ensure!(
        condition(&s, "ThresholdReached") == Some(("True".into(), "ThresholdReached".into())),
        "{s:?}"
    );
    // The leader changes; more spend in the same period announces nothing new.
    first.shutdown().await?;
    wait_leader(&[&second]).await?;
    a.spent = usd(650_000_000);
    a.sync(&ledger_url(&second), "team", 0).await?;
    ensure!(
        a.period_start == Some(period),
        "the period ended during the leader change; the test needs it not to"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        one().await? == 1,
        "the event was repeated after the leader change"
    );
    ensure!(
        first_period_notified(&client, &ns).await?,
        "the record lost the announcement"
    );

    // The next period warns again, once.
    let end = Period::Seconds(40).bounds(period).1.context("no end")?;
    let wait = end.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100))
        .await;
    fresh_period(40, Duration::from_secs(10)).await;
    a.sync(&ledger_url(&second), "team", 700_000_000).await?;
    a.spent = usd(550_000_000);
    a.sync(&ledger_url(&second), "team", 0).await?;
    let next = eventually("the next period's event", Duration::from_secs(10), || {
        let n = one();
        async move { Ok((n.await? == 2).then_some(())) }
    })
    .await;
    if let Err(e) = next {
        let s = status(&client, &ns, "team").await?;
        bail!("{e}; status: {s:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        one().await? == 2,
        "more than one event in the second period"
    );
    second.shutdown().await?;
    Ok(())
}

async fn first_period_notified(client: &Client, ns: &str) -> Result<bool> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&AccountKey::budget(ns, "team").object_name())
        .await?;
    let state = record
        .data
        .unwrap_or_default()
        .remove("state.json")
        .unwrap_or_default();
    Ok(state.contains("\"notified\":[50]"))
}

#[tokio::test]
async fn status_is_current_within_5_seconds_under_load_and_shows_degraded_sidecars() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("ledger-load").await?;
    let client = cp.admin_client().await?;
    cp.create_service_account(&ns, "app").await?;
    apply_budget(
        &client,
        &ns,
        "team",
        json!({"limit": {"usd": "1000"}, "period": "daily"}),
    )
    .await?;
    let operator = start_operator(client.clone(), &ns, "solo", &[]).await?;
    wait_leader(&[&operator]).await?;
    let url = ledger_url(&operator);
    let token = ledger_token(cp, &ns, "app").await?;

    // 30 sidecars syncing back to back for 12 s, each spending a little every time.
    let deadline = Instant::now() + Duration::from_secs(12);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut sidecar = Instance::new(&token, &ns, &format!("web-{i}/{i:04x}"));
        let url = url.clone();
        let seen = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let answer = sidecar.sync(&url, "team", 10_000_000).await?;
                let _ = seen.send((Instant::now(), answer.accounts[0].spent_total.nano_usd));
                sidecar.spent.nano_usd += 1_000_000.min(sidecar.allowance());
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    drop(seen_tx);
    // Meanwhile: every second, the spend an answer reported must show in status within 5 s.
    let mut worst = Duration::ZERO;
    let mut checks = 0;
    let mut last_check = Instant::now();
    while let Some((at, spent)) = seen_rx.recv().await {
        if last_check.elapsed() < Duration::from_secs(1) || at > deadline {
            continue;
        }
        last_check = Instant::now();
        let shown = eventually("status catches up", Duration::from_secs(5), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let s = status(&client, &ns, "team").await?;
                let shown = s.spent.as_deref().map(nanos).transpose()?.unwrap_or(0);
                Ok((shown >= spent).then_some(()))
            }
        })
        .await;
        shown.with_context(|| format!("status did not show {spent} within 5 s"))?;
        worst = worst.max(at.elapsed());
        checks += 1;
    }
    let mut syncs = 0;
    for t in tasks {
        syncs += t.await??;
    }
    eprintln!("{syncs} syncs in 12 s; {checks} status checks, the slowest caught up in {worst:?}");
    ensure!(checks >= 5, "only {checks} checks");

    // A sidecar that served without a lease says so on its next sync: listed as degraded.
    let mut d = Instance::new(&token, &ns, "web-9/dddd");
    let answer = d
        .post(&url, &d.request("team", 0, true))
        .await?
        .map_err(|r| anyhow!("{r:?}"))?;
    d.adopt(&answer);
    let s = eventually("degraded in status", Duration::from_secs(5), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let s = status(&client, &ns, "team").await?;
            Ok((!s.degraded_sidecars.is_empty()).then_some(s))
        }
    })
    .await?;
    ensure!(s.degraded_sidecars == ["web-9/dddd"], "{s:?}");
    ensure!(
        condition(&s, "Degraded") == Some(("True".into(), "SidecarsDegraded".into())),
        "{s:?}"
    );
    ensure!(
        operator.metrics.encode().contains(&format!(
            "gatehouse_operator_budget_sidecars{{namespace=\"{ns}\",budget=\"team\",state=\"degraded\"}} 1"
        )),
        "no degraded sidecar metric"
    );
    operator.shutdown().await?;
    Ok(())
}
