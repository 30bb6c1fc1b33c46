//! `gatehouse-mock-provider`: the mock providers (every flavour on one port) as a process, driven through
//! `/__mock/` on the same port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gatehouse_mock_provider::{Behaviour, DEFAULT_CHUNKS, MockProvider};
use tracing_subscriber::EnvFilter;

/// A mock OpenAI-compatible LLM provider with fault knobs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEHOUSE_MOCK_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Require `authorization: Bearer KEY`.
    #[arg(long, env = "GATEHOUSE_MOCK_API_KEY")]
    api_key: Option<String>,
    /// Bedrock: the access key id SigV4 signatures must use.
    #[arg(long, env = "GATEHOUSE_MOCK_AWS_ACCESS_KEY_ID")]
    aws_access_key_id: Option<String>,
    /// Bedrock: the matching secret access key.
    #[arg(long, env = "GATEHOUSE_MOCK_AWS_SECRET_ACCESS_KEY", default_value = "")]
    aws_secret_access_key: String,
    /// Bedrock: the region signatures must be scoped to.
    #[arg(long, env = "GATEHOUSE_MOCK_AWS_REGION")]
    aws_region: Option<String>,
    /// Content chunks (words) per answer.
    #[arg(long, env = "GATEHOUSE_MOCK_CHUNKS", default_value_t = DEFAULT_CHUNKS)]
    chunks: usize,
    /// Delay before response headers, in milliseconds.
    #[arg(long, env = "GATEHOUSE_MOCK_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Delay before each streamed chunk, in milliseconds.
    #[arg(long, env = "GATEHOUSE_MOCK_CHUNK_DELAY_MS", default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Keep no request log (for benchmarks); `GET /__mock/requests` is then empty.
    #[arg(long, env = "GATEHOUSE_MOCK_NO_RECORD")]
    no_record: bool,
    /// Log no line per request.
    #[arg(long, short, env = "GATEHOUSE_MOCK_QUIET")]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = if args.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter)),
        )
        .init();

    let default = Behaviour::normal()
        .chunks(args.chunks)
        .latency(Duration::from_millis(args.latency_ms))
        .chunk_delay(Duration::from_millis(args.chunk_delay_ms));
    let mut builder = MockProvider::builder()
        .record(!args.no_record)
        .default_behaviour(default);
    if let Some(key) = args.api_key {
        builder = builder.api_key(key);
    }
    if let Some(akid) = args.aws_access_key_id {
        builder = builder.aws_credentials(akid, args.aws_secret_access_key);
        if let Some(region) = args.aws_region {
            builder = builder.aws_region(region);
        }
    }
    let mock = builder
        .start_on(args.listen)
        .await
        .context("failed to start the mock provider")?;
    tracing::info!(base_url = %mock.base_url(), "mock provider listening");

    tokio::signal::ctrl_c()
        .await
        .context("failed to wait for ctrl-c")?;
    mock.stop().await;
    Ok(())
}
