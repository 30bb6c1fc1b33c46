//! Hostile request bodies: million-element arrays, thousands of unknown parameters, maximum-size bodies at once.

#[allow(unused_imports, reason = "filled in by the cases of this module")]
use super::proc::SidecarProc;
