//! The objects the operator renders into each namespace — the config ConfigMap, the keys Secret and
//! the sidecars' Role/RoleBinding — and how they are written: server-side apply, skipped when the
//! live object already has the desired content. Their names are the sidecar's too and live in
//! [`gatehouse_crds::contract`].

use std::collections::BTreeMap;
use std::fmt::Debug;

use gatehouse_crds::ProviderKeys;
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME, KEYS_NAME, SIDECAR_RBAC_NAME};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Error, is_not_found};
use crate::metrics::Metrics;

/// Server-side apply field manager (and event reporter).
pub const FIELD_MANAGER: &str = "gatehouse-operator";
/// Label on every rendered object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "gatehouse-operator";
/// Annotation with the SHA-256 of the desired content, so a no-op is detected without diffing.
pub const HASH_ANNOTATION: &str = "gatehouse.dev/content-hash";

/// Label selector matching the rendered objects.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

fn meta(namespace: &str, name: &str, owners: &[OwnerReference]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY.to_string(),
        )])),
        owner_references: (!owners.is_empty()).then(|| owners.to_vec()),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap with the rendered config (no keys in it).
pub fn config_map(config: &SidecarConfig, owners: &[OwnerReference]) -> Result<ConfigMap, Error> {
    let json = serde_json::to_string_pretty(config).map_err(|source| Error::Serialize {
        what: "sidecar config".into(),
        source,
    })?;
    Ok(ConfigMap {
        metadata: meta(&config.namespace, CONFIG_NAME, owners),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), json)])),
        ..ConfigMap::default()
    })
}

/// The Secret with one entry per provider key name.
pub fn keys_secret(namespace: &str, keys: &ProviderKeys, owners: &[OwnerReference]) -> Secret {
    Secret {
        metadata: meta(namespace, KEYS_NAME, owners),
        type_: Some("Opaque".to_string()),
        data: Some(
            keys.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The Role letting sidecars get/list/watch only the config ConfigMap.
pub fn sidecar_role(namespace: &str, owners: &[OwnerReference]) -> Role {
    Role {
        metadata: meta(namespace, SIDECAR_RBAC_NAME, owners),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_string()]),
            resource_names: Some(vec![CONFIG_NAME.to_string()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

/// The RoleBinding granting [`sidecar_role`] to every ServiceAccount of the namespace. The config
/// holds no secret material, so any workload of the namespace may read it; keys reach sidecars
/// only through the mounted Secret, which this binding does not cover.
pub fn sidecar_role_binding(namespace: &str, owners: &[OwnerReference]) -> RoleBinding {
    RoleBinding {
        metadata: meta(namespace, SIDECAR_RBAC_NAME, owners),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: SIDECAR_RBAC_NAME.to_string(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "Group".to_string(),
            name: format!("system:serviceaccounts:{namespace}"),
            namespace: None,
        }]),
    }
}

/// SHA-256 (hex) of an object's JSON. k8s-openapi types serialize maps in key order, so equal
/// content always hashes the same.
pub fn content_hash<T: Serialize>(object: &T) -> Result<String, Error> {
    let bytes = serde_json::to_vec(object).map_err(|source| Error::Serialize {
        what: "object for hashing".into(),
        source,
    })?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kind of object the operator renders, with what it compares to decide whether a write is
/// needed. Not named `Rendered`: that is [`gatehouse_crds::Rendered`], the result of rendering a
/// whole namespace, which this module turns into objects of these kinds.
pub trait RenderedObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
    /// Metric label of the kind.
    const LABEL: &'static str;
    /// Whether the payload (not the metadata) of `live` equals `desired`'s. Catches hand edits that
    /// left the hash annotation alone.
    fn same_payload(live: &Self, desired: &Self) -> bool;
}

impl RenderedObject for ConfigMap {
    const LABEL: &'static str = "configmap";
    fn same_payload(live: &Self, desired: &Self) -> bool {
        live.data == desired.data && live.binary_data.is_none()
    }
}

impl RenderedObject for Secret {
    const LABEL: &'static str = "secret";
    fn same_payload(live: &Self, desired: &Self) -> bool {
        // An empty Secret comes back with `data` unset.
        live.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default()
    }
}

impl RenderedObject for Role {
    const LABEL: &'static str = "role";
    fn same_payload(live: &Self, desired: &Self) -> bool {
        live.rules == desired.rules
    }
}

impl RenderedObject for RoleBinding {
    const LABEL: &'static str = "rolebinding";
    fn same_payload(live: &Self, desired: &Self) -> bool {
        live.subjects == desired.subjects && live.role_ref == desired.role_ref
    }
}

/// Server-side apply `desired` unless the live object already carries its hash and payload.
/// Returns whether a write was sent.
pub async fn apply<K: RenderedObject>(
    api: &Api<K>,
    mut desired: K,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let name = desired.name_any();
    let hash = content_hash(&desired)?;
    desired
        .annotations_mut()
        .insert(HASH_ANNOTATION.to_string(), hash.clone());
    let what = || {
        format!(
            "{} {}/{}",
            K::LABEL,
            desired.namespace().unwrap_or_default(),
            name
        )
    };
    let live = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("get {}", what()), e))?;
    if let Some(live) = &live
        && live.annotations().get(HASH_ANNOTATION) == Some(&hash)
        && K::same_payload(live, &desired)
    {
        metrics.writes_skipped.inc();
        return Ok(false);
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| Error::kube(format!("apply {}", what()), e))?;
    metrics.write(K::LABEL, "apply");
    tracing::info!(kind = K::LABEL, namespace = ?desired.namespace(), name, "applied");
    Ok(true)
}

/// Delete `name` if it exists and carries the managed-by label (a same-named object somebody else
/// created is left alone). Returns whether a delete was sent.
pub async fn delete<K: RenderedObject>(
    api: &Api<K>,
    name: &str,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let live = api
        .get_metadata_opt(name)
        .await
        .map_err(|e| Error::kube(format!("get {} {name}", K::LABEL), e))?;
    let Some(live) = live else { return Ok(false) };
    if live.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            metrics.write(K::LABEL, "delete");
            tracing::info!(kind = K::LABEL, name, "deleted");
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::kube(format!("delete {} {name}", K::LABEL), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        let keys = |k: &str| [("p", k)].into_iter().collect::<ProviderKeys>();
        let a = keys_secret("ns", &keys("k1"), &[]);
        let b = keys_secret("ns", &keys("k1"), &[]);
        let c = keys_secret("ns", &keys("k2"), &[]);
        assert_eq!(content_hash(&a).unwrap(), content_hash(&b).unwrap());
        assert_ne!(content_hash(&a).unwrap(), content_hash(&c).unwrap());
    }

    #[test]
    fn sidecar_role_reads_only_the_config() {
        let role = sidecar_role("ns", &[]);
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&[CONFIG_NAME.to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    }
}
