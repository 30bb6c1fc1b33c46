//! The gatehouse-operator binary: flags, telemetry, then the library's `run`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = gatehouse_operator::Args::parse();
    gatehouse_operator::telemetry::init(args.log_format);
    gatehouse_operator::run(args, gatehouse_operator::telemetry::shutdown_signal()).await?;
    Ok(())
}
