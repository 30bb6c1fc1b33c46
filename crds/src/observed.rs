//! Status fields besides conditions: what a render says about each object, in a form `kubectl get`
//! can show (usable targets, aliases actually served, the endpoint in use).
//!
//! Pure, like [`crate::render`]: the operator compares the result with the live status and writes
//! only when it differs.

use crate::config::SidecarConfig;
use crate::{ModelProviderStatus, RouteSpec, RouteStatus};

/// The observed part of a Route's status (conditions and `observedGeneration` left empty).
pub fn route_status(name: &str, spec: &RouteSpec, config: &SidecarConfig) -> RouteStatus {
    let rendered = config.routes.get(name);
    let usable = rendered.map_or(0, |r| r.targets.len());
    let total = spec.targets.len();
    RouteStatus {
        aliases: rendered.map(|r| r.aliases.clone()).unwrap_or_default(),
        usable_targets: Some(count(usable)),
        total_targets: Some(count(total)),
        targets: Some(format!("{usable}/{total}")),
        ..RouteStatus::default()
    }
}

/// The observed part of a ModelProvider's status (conditions and `observedGeneration` left
/// empty). Endpoint and model count stay unset while the provider is not usable.
pub fn provider_status(name: &str, config: &SidecarConfig) -> ModelProviderStatus {
    let rendered = config.providers.get(name);
    ModelProviderStatus {
        endpoint: rendered.map(|p| p.endpoint.clone()),
        models: rendered.map(|p| count(p.models.len())),
        ..ModelProviderStatus::default()
    }
}

/// Counts are bounded by the CRD (at most 64 targets, 256 models); saturate rather than wrap.
fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
