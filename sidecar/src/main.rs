//! The gatehouse-sidecar binary: flags, telemetry, then the library's `run`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = gatehouse_sidecar::Args::parse();
    gatehouse_sidecar::telemetry::init(args.log_format);
    gatehouse_sidecar::run(args).await?;
    Ok(())
}
