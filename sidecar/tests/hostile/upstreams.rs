//! Hostile upstreams: endless bodies, endless SSE lines, endless headers, credentials echoed back.

#[allow(unused_imports, reason = "filled in by the cases of this module")]
use super::proc::SidecarProc;
