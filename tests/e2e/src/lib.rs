//! End-to-end test harness for Gatehouse: a real kube-apiserver and etcd, built from Go modules
//! by `tests/control-plane/`, started on loopback ports; plus the kubectl and helm the tests drive.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = gatehouse_e2e::ControlPlane::shared()?;
//! let ns = cp.create_namespace("demo").await?;
//! cp.kubectl_ok(["get", "serviceaccounts", "-n", &ns])?;
//! # Ok(()) }
//! ```
//!
//! The harness is test code: it reports failures with `anyhow` and context instead of a typed
//! error, because every caller is a test that prints the chain and stops.

mod binaries;
mod control_plane;
pub mod kubelet;
pub mod network;
mod pki;
pub mod procs;
pub mod wait;

pub use binaries::{Binaries, CommandOutput};
pub use control_plane::ControlPlane;
pub use wait::{answers_ok, eventually, reconciled_after};
