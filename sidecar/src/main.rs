//! The gatehouse-sidecar binary: flags, telemetry, runtime, then the library's `run`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = gatehouse_sidecar::Args::parse();
    gatehouse_sidecar::telemetry::init(args.log_format);
    let runtime = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.worker_threads))
            .enable_all()
            .build()?
    };
    runtime.block_on(gatehouse_sidecar::run(args))?;
    Ok(())
}
