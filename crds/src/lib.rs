//! The Gatehouse API (`gatehouse.dev/v1alpha1`): custom resource types, the rendered sidecar config
//! and the pure [`render`] function from one to the other.

pub mod budget;
pub mod conditions;
pub mod config;
pub mod provider;
pub mod render;
pub mod route;

pub use budget::{Budget, BudgetSpec, BudgetStatus};
pub use provider::{ModelProvider, ModelProviderSpec, ModelProviderStatus, ProviderType};
pub use render::{
    DurationError, Inputs, ObjectKind, Problem, Rendered, SecretData, parse_duration_ms, render,
};
pub use route::{Route, RouteSpec, RouteStatus};

use kube::CustomResourceExt;

/// The generated CRD manifests: `(file name, YAML)` for each kind, in a stable order.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crds = [ModelProvider::crd(), Route::crd(), Budget::crd()];
    crds.iter()
        .map(|crd| {
            let file = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            Ok((file, serde_yaml::to_string(crd)?))
        })
        .collect()
}
