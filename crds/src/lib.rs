//! The Gatehouse API (`gatehouse.dev/v1alpha1`): custom resource types, the rendered sidecar config
//! and the pure [`render`] function from one to the other.

pub mod config;
pub mod render;

pub use render::{Inputs, ObjectKind, Problem, Rendered, SecretData, render};

// Placeholder types until the CRDs land; replaced by derive(CustomResource) types.
/// A ModelProvider.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelProvider {}
/// A Route.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Route {}
/// A Budget.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Budget {}
