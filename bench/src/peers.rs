//! Peer gateways, measured against the same mock: LiteLLM proxy and Portkey's gateway.
//! Installed on first use into `${GATEHOUSE_CACHE:-~/.cache/gatehouse}/peers`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::procs::Proc;

/// A running peer.
#[derive(Debug)]
pub struct Peer {
    /// Display name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Model name to send.
    pub model: String,
    /// Chat completions path.
    pub path: &'static str,
    /// Extra request headers (key, routing).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Start to ready.
    pub ready_after: Duration,
    /// The process.
    pub proc: Proc,
}

/// Start every peer.
pub async fn start_all(_dir: &Path, _mock: SocketAddr) -> anyhow::Result<Vec<Peer>> {
    anyhow::bail!("--peers is not available yet")
}
