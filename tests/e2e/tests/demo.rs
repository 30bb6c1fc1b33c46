//! The README's main command, `scripts/demo`, end to end: it builds, starts a control plane, the
//! operator, a kube-mode sidecar and a mock provider, and must show a routed response with its
//! headers, the rendered config and `kubectl get gatehouse` with Ready True. Run with `--keep`, then
//! interrupted the way Ctrl-C does (SIGINT to its process group): everything it started must stop.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
}

#[test]
fn demo_shows_a_routed_response_config_and_ready_resources_then_stops_everything() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (listen, admin, mock, ledger) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut child = Command::new(root.join("scripts/demo"))
        .arg("--keep")
        .current_dir(&root)
        .env("GATEHOUSE_LISTEN", format!("127.0.0.1:{listen}"))
        .env("GATEHOUSE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("GATEHOUSE_DEMO_MOCK_LISTEN", format!("127.0.0.1:{mock}"))
        .env(
            "GATEHOUSE_DEMO_LEDGER_LISTEN",
            format!("127.0.0.1:{ledger}"),
        )
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, as a terminal gives a foreground job: Ctrl-C goes to the group.
        .process_group(0)
        .spawn()
        .context("failed to start scripts/demo")?;
    let pgid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The first run on a machine builds everything; later ones take seconds.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut out = String::new();
    let running = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains("Ctrl-C stops everything") {
                    break true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break false,
        }
    };
    if !running {
        signal_group(pgid, "-KILL");
        let _ = child.wait();
        bail!("scripts/demo did not get to its running state:\n{out}");
    }

    for needle in [
        "HTTP/1.1 200 OK",
        "x-gatehouse-request-id: ",
        "x-gatehouse-route: chat",
        "x-gatehouse-provider: local",
        "x-gatehouse-model: llama-3.1-8b-instruct",
        "x-gatehouse-attempts: 1",
        "x-gatehouse-cost-usd: ",
        "x-gatehouse-cache: bypass",
        // The example Budget covers Route chat; the sidecar leases from the operator's ledger.
        "x-gatehouse-budget: ok",
        "data: [DONE]",
        "model_not_found",
        "served through the new alias",
        // The identity the demo gives the sidecar as the downward API would, and the tag.
        "gatehouse_tokens_total{namespace=\"default\",workload=\"app\",tag=\"demo-summary\",route=\"chat\",provider=\"local\",model=\"llama-3.1-8b-instruct\",type=\"input\"}",
        "gatehouse_cost_usd_total{namespace=\"default\",workload=\"app\",tag=\"\",route=\"chat\"",
        "name: gatehouse-config",
        "\"gatehouse.dev/config-v1alpha1\"",
    ] {
        ensure!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
    ensure!(
        !out.contains("sk-placeholder-replace-me"),
        "a key was printed:\n{out}"
    );
    // `kubectl get gatehouse`: every kind; providers and the Route Ready, the Route's usable/total
    // targets; the Budget valid and enforced (Ready True).
    let table = |prefix: &str| -> Option<String> {
        out.lines()
            .rfind(|l| l.starts_with(prefix))
            .map(str::to_string)
    };
    for (row, want) in [
        ("route.gatehouse.dev/chat", vec!["2/2", "True"]),
        (
            "modelprovider.gatehouse.dev/local",
            vec!["http://127.0.0.1:", "True"],
        ),
        (
            "modelprovider.gatehouse.dev/openai",
            vec!["https://api.openai.com/v1", "True"],
        ),
        ("budget.gatehouse.dev/chat-monthly", vec!["monthly", "True"]),
    ] {
        let line = table(row).with_context(|| format!("no row {row} in:\n{out}"))?;
        for w in want {
            ensure!(line.contains(w), "row {row} lacks {w:?}: {line}");
        }
    }
    let cp_dir: PathBuf = out
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .and_then(|k| Path::new(k).parent().map(Path::to_path_buf))
        .context("demo printed no KUBECONFIG")?;
    ensure!(
        cp_dir.exists(),
        "control plane dir {cp_dir:?} missing while running"
    );

    // Ctrl-C.
    signal_group(pgid, "-INT");
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > stop_deadline {
            signal_group(pgid, "-KILL");
            bail!("scripts/demo did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        out.push_str(&line);
        out.push('\n');
    }
    ensure!(out.contains("\nstopped\n"), "no orderly stop:\n{out}");
    ensure!(
        status.code() == Some(130),
        "exit status after SIGINT: {status}"
    );
    ensure!(!cp_dir.exists(), "control plane dir {cp_dir:?} left behind");
    for port in [listen, admin, mock] {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port} after the demo stopped"
        );
    }
    Ok(())
}
