//! Hostile clients: slowloris headers and bodies, idle-connection floods, the admin port under fd pressure.

#[allow(unused_imports, reason = "filled in by the cases of this module")]
use super::proc::SidecarProc;
