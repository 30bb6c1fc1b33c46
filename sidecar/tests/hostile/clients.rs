//! Hostile clients: slowloris headers and bodies, idle-connection floods, the admin port under fd pressure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gatehouse_mock_provider::MockProvider;

use super::proc::SidecarProc;

const KEY: &str = "sk-hostile-clients-0123456789";

/// A ModelProvider (no key) and nothing else: enough for a config to apply and `/v1/models`.
fn bare_manifests() -> String {
    "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {name: p}\nspec:\n  type: openaiCompatible\n  endpoint: http://127.0.0.1:9/v1\n".to_string()
}

fn mock_manifests(base_url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData:\n  apiKey: {KEY}\n---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: up}}\nspec:\n  type: openai\n  endpoint: {base_url}\n  apiKeySecretRef: {{name: k, key: apiKey}}\n---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\nspec:\n  targets: [{{provider: up, model: gpt-4o-mini}}]\n"
    )
}

/// Read until the peer closes (or resets); returns when that happened.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> Instant {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("connection still open after {within:?}: {e}"),
        }
    }
}

/// Send one keep-alive GET and read its whole response (content-length framed).
fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a whole response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

fn warn_lines(log: &[String]) -> usize {
    log.iter()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .count()
}

#[test]
fn a_slowloris_client_is_closed_within_the_header_timeout() {
    let proc = SidecarProc::start(&bare_manifests(), &["--header-read-timeout-ms=500"]);
    let mut stream = TcpStream::connect(&proc.proxy).unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: sidecar\r\n")
        .unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    // One header byte every 50 ms: progress that never completes the headers.
    std::thread::spawn(move || {
        while writer.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let closed = wait_closed(&mut stream, Duration::from_secs(10));
    let took = closed - started;
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "closed late: {took:?}");
    // A client that connects and sends nothing is closed too.
    let mut silent = TcpStream::connect(&proc.proxy).unwrap();
    wait_closed(&mut silent, Duration::from_secs(10));
    // And a normal client is still served.
    let mut ok = TcpStream::connect(&proc.proxy).unwrap();
    assert!(get(&mut ok, "/v1/models").starts_with("HTTP/1.1 200"));
    let metrics = blocking_get(&proc.admin_url("/metrics"));
    assert!(
        metrics.contains(
            "gatehouse_connections_closed_total{listener=\"proxy\",reason=\"header_timeout\"} 2"
        ),
        "{metrics}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_one() {
    let proc = SidecarProc::start(
        &bare_manifests(),
        &["--header-read-timeout-ms=300", "--idle-timeout-ms=1500"],
    );
    let mut stream = TcpStream::connect(&proc.proxy).unwrap();
    assert!(get(&mut stream, "/v1/models").starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: the connection is still usable.
    std::thread::sleep(Duration::from_millis(800));
    assert!(get(&mut stream, "/v1/models").starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    let closed = wait_closed(&mut stream, Duration::from_secs(10));
    let took = closed - idle_from;
    assert!(
        took >= Duration::from_millis(1300),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "closed late: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_past_the_cap_leaves_requests_and_the_admin_port_served() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let manifests = mock_manifests(&mock.base_url());
    let proc = tokio::task::spawn_blocking(move || {
        SidecarProc::start(&manifests, &["--max-connections=32"])
    })
    .await
    .unwrap();
    let proxy = proc.proxy.clone();
    let baseline_fds = proc.open_fds();
    // 400 connections, half silent, half stalled mid-headers, none ever finishing a request.
    let flood = tokio::task::spawn_blocking(move || {
        (0..400)
            .map(|i| {
                let mut s = TcpStream::connect(&proxy).unwrap();
                if i % 2 == 0 {
                    let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n");
                }
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = client
        .post(proc.url("/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let health = client.get(proc.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let fds = proc.open_fds();
    assert!(
        fds <= baseline_fds + 32 + 8,
        "{fds} open fds with a cap of 32 (baseline {baseline_fds})"
    );
    let metrics = client
        .get(proc.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("gatehouse_connections_closed_total{listener=\"proxy\",reason=\"evicted\"}"),
        "{metrics}"
    );
    drop(flood);
    let log = proc.stop();
    assert!(
        warn_lines(&log) < 10,
        "the flood spammed the log:\n{}",
        log.join("\n")
    );
    assert!(log.iter().all(|l| !l.contains(KEY)));
}

/// A GET from a plain thread (the sync tests have no runtime).
fn blocking_get(url: &str) -> String {
    let url = url.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move { reqwest::get(url).await.unwrap().text().await.unwrap() })
    })
    .join()
    .unwrap()
}

/// A Secret manifest of the wrong shape is rejected on reload, and the value it carries (the key)
/// is in no line the running binary logged, whatever the shape: serde's errors quote the value
/// they refuse, so a Secret is never handed to it.
#[test]
fn a_malformed_secret_manifest_never_puts_its_value_in_the_log() {
    let sidecar = SidecarProc::start(&bare_manifests(), &[]);
    let path = sidecar.manifest_path().unwrap();
    const VALUE: &str = "sk-live-malformed-secret-7f3a9c2e4b1d";
    let b64 = "c2stbGl2ZS1tYWxmb3JtZWQtc2VjcmV0LTdmM2E5YzJlNGIxZA==";
    let shapes = [
        format!("stringData: {VALUE}"),
        format!("data: {b64}"),
        format!("stringData: [{VALUE}]"),
        format!("stringData:\n  apiKey: {{nested: {VALUE}}}"),
        format!("data:\n  apiKey: {VALUE}!"),
        format!("stringData:\n  apiKey: \"{VALUE}"),
    ];
    let rejections = |sidecar: &SidecarProc| {
        sidecar
            .log()
            .iter()
            .filter(|l| l.contains("configuration rejected"))
            .count()
    };
    for (i, shape) in shapes.iter().enumerate() {
        let before = rejections(&sidecar);
        let manifests = format!(
            "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bad-{i}}}\n{shape}\n",
            bare_manifests()
        );
        std::fs::write(&path, manifests).unwrap();
        // Wait for this write's rejection before writing the next shape.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if rejections(&sidecar) > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "shape {i} ({shape}) was not rejected:\n{}",
                sidecar.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The sidecar still serves its last good config.
    assert!(blocking_get(&sidecar.url("/v1/models")).contains("\"object\":\"list\""));
    let log = sidecar.stop();
    for line in &log {
        assert!(
            !line.contains(VALUE),
            "the Secret's value reached the log: {line}"
        );
        assert!(
            !line.contains(b64),
            "the Secret's data reached the log: {line}"
        );
        assert!(
            !line.contains("malformed-secret"),
            "part of the value reached the log: {line}"
        );
    }
}
