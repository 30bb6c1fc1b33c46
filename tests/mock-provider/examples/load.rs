//! Rough throughput check of the mock on this machine: keep-alive HTTP/1.1 connections each
//! sending chat completions back to back against an in-process mock with recording off.
//!
//! `cargo run --release -p gatehouse-mock-provider --example load -- [CONNS] [SECS] [stream]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_mock_provider::MockProvider;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let stream = args.next().is_some_and(|a| a == "stream");

    let mock = MockProvider::builder().record(false).start().await?;
    let addr = mock.addr();
    let body = Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hello there, how are you today?"}}]}}"#
    ));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);

    let mut tasks = Vec::new();
    for _ in 0..conns {
        let body = body.clone();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let req = http::Request::post("/v1/chat/completions")
                    .header("host", "mock")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let resp = sender.send_request(req).await?;
                resp.into_body().collect().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} requests in {secs}s over {conns} connections (stream={stream}): {:.0} req/s",
        n as f64 / secs as f64
    );
    Ok(())
}
