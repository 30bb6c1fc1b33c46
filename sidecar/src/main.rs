//! The gatehouse-sidecar binary: flags, telemetry, runtime, then the library's `run`.

use clap::Parser;

/// jemalloc gives the memory of a spike back: after a request whose translation built a 1.5 GB tree,
/// glibc's malloc kept 1.6 GB resident and mimalloc 0.7 GB, jemalloc under 50 MB
/// (docs/benchmarks.md, "Memory after a spike").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Threads of tokio's blocking pool: big request bodies are parsed there (and DNS lookups run
/// there). Few, so that parsing a burst of big bodies cannot take more cores than this.
const BLOCKING_THREADS: usize = 4;

fn main() -> anyhow::Result<()> {
    let args = gatehouse_sidecar::Args::parse();
    gatehouse_sidecar::telemetry::init(args.log_format);
    let runtime = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(BLOCKING_THREADS)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.worker_threads))
            .max_blocking_threads(BLOCKING_THREADS)
            .enable_all()
            .build()?
    };
    runtime.block_on(gatehouse_sidecar::run(args))?;
    Ok(())
}
