//! Where the ledger keeps its books: one ConfigMap per account, in the operator's own namespace
//! (tenants who can edit their namespace cannot edit their spend), written with the
//! `resourceVersion` last read so that two writers can never both succeed from the same state.
//!
//! Each record names the leader that wrote it and that leader's *term* (its Lease's
//! `acquireTime`, in microseconds; every takeover sets a later one). A leader first *claims* a
//! record (writes it unchanged but for term and writer) before it grants anything from it; a
//! former leader that wakes up after that fails its next write with a conflict, reads the
//! newer term and stops. So no grant is ever made from state another leader has moved on from.

use std::collections::BTreeMap;

use gatehouse_crds::ledger::AccountKind;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ledger::account::AccountBook;

/// Key of the record in the ConfigMap's data.
pub const STATE_KEY: &str = "state.json";
/// Label on every ledger record; its value is the account kind.
pub const LEDGER_LABEL: &str = "gatehouse.dev/ledger";
/// `app.kubernetes.io/managed-by` of ledger records (not the operator's rendered objects, whose
/// watch must not see them).
pub const MANAGED_BY: &str = "gatehouse-ledger";
/// Annotation naming the account's namespace (names can be longer than a label value).
pub const NAMESPACE_ANNOTATION: &str = "gatehouse.dev/account-namespace";
/// Annotation naming the account.
pub const NAME_ANNOTATION: &str = "gatehouse.dev/account-name";
/// Version of the record's format.
const FORMAT: u32 = 1;

/// An account: what kind, in which namespace, by which name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    /// Kind.
    pub kind: AccountKind,
    /// Namespace of the Budget (and of the sidecars spending it).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl AccountKey {
    /// A Budget's account.
    pub fn budget(namespace: &str, name: &str) -> Self {
        Self {
            kind: AccountKind::Budget,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn kind_str(&self) -> &'static str {
        match self.kind {
            AccountKind::Budget => "budget",
            AccountKind::RateLimit => "ratelimit",
        }
    }

    /// Name of the account's ConfigMap: `gatehouse-ledger.<kind>.<namespace>.<name>` (a
    /// namespace has no dots, so this is unambiguous), or a hash of that when too long.
    pub fn object_name(&self) -> String {
        let plain = format!(
            "gatehouse-ledger.{}.{}.{}",
            self.kind_str(),
            self.namespace,
            self.name
        );
        // A rate limit's name (`<route>/<limit>`) has a slash, which an object name cannot:
        // its record is always named by the hash.
        if plain.len() <= 253 && self.kind == AccountKind::Budget {
            return plain;
        }
        let digest = Sha256::digest(plain.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("gatehouse-ledger.{}.{hex}", self.kind_str())
    }
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind_str(), self.namespace, self.name)
    }
}

/// One account's record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Format version.
    pub format: u32,
    /// Account kind.
    pub kind: AccountKind,
    /// Account namespace.
    pub namespace: String,
    /// Account name.
    pub name: String,
    /// UID of the Budget the book belongs to: a Budget deleted and created again under the same
    /// name starts from an empty book.
    pub uid: String,
    /// Term of the leader that wrote it.
    pub term: i64,
    /// Identity of the leader that wrote it.
    pub writer: String,
    /// The book.
    pub book: AccountBook,
}

impl Record {
    /// The account this record is for.
    pub fn key(&self) -> AccountKey {
        AccountKey {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// What a write found.
#[derive(Debug)]
pub enum Written {
    /// Written; the new `resourceVersion`.
    Ok(String),
    /// Someone else wrote first (or created it first).
    Conflict,
    /// The object is gone (a replace needs it to exist).
    Gone,
}

/// A read record: the parsed record (`None` when it does not parse) and its `resourceVersion`.
pub type Read = (Option<Record>, String);

/// The ledger's records in one namespace.
#[derive(Clone)]
pub struct Records {
    api: Api<ConfigMap>,
    namespace: String,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn parse(cm: &ConfigMap) -> Option<Record> {
    let json = cm.data.as_ref()?.get(STATE_KEY)?;
    match serde_json::from_str::<Record>(json) {
        Ok(r) if r.format == FORMAT => Some(r),
        Ok(r) => {
            tracing::error!(
                object = cm.metadata.name.as_deref().unwrap_or_default(),
                format = r.format,
                "ledger record has an unknown format; it will be replaced"
            );
            None
        }
        Err(e) => {
            tracing::error!(
                object = cm.metadata.name.as_deref().unwrap_or_default(),
                error = %e,
                "ledger record does not parse; it will be replaced"
            );
            None
        }
    }
}

impl Records {
    /// The records in `namespace` (the operator's own).
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn object(
        &self,
        record: &Record,
        resource_version: Option<String>,
    ) -> Result<ConfigMap, Error> {
        let key = record.key();
        let json = serde_json::to_string(record).map_err(|source| Error::Serialize {
            what: format!("ledger record of {key}"),
            source,
        })?;
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(key.object_name()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (LEDGER_LABEL.to_string(), key.kind_str().to_string()),
                    (
                        crate::objects::MANAGED_BY_LABEL.to_string(),
                        MANAGED_BY.to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([
                    (NAMESPACE_ANNOTATION.to_string(), key.namespace.clone()),
                    (NAME_ANNOTATION.to_string(), key.name.clone()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(STATE_KEY.to_string(), json)])),
            ..ConfigMap::default()
        })
    }

    /// Every record, with the name of its object (records that do not parse are listed with
    /// `None`, so they can be replaced rather than ignored forever).
    pub async fn list(&self) -> Result<Vec<(String, Read)>, Error> {
        let list = self
            .api
            .list(&ListParams::default().labels(LEDGER_LABEL))
            .await
            .map_err(|e| Error::kube(format!("list ledger records in {}", self.namespace), e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|cm| {
                let name = cm.metadata.name.clone()?;
                let rv = cm.metadata.resource_version.clone()?;
                Some((name, (parse(cm), rv)))
            })
            .collect())
    }

    /// The record of `key`, if its object exists.
    pub async fn get(&self, key: &AccountKey) -> Result<Option<Read>, Error> {
        let cm = self
            .api
            .get_opt(&key.object_name())
            .await
            .map_err(|e| Error::kube(format!("get ledger record of {key}"), e))?;
        Ok(cm.and_then(|cm| {
            let rv = cm.metadata.resource_version.clone()?;
            Some((parse(&cm), rv))
        }))
    }

    /// Create the record's object; [`Written::Conflict`] when it already exists.
    pub async fn create(&self, record: &Record) -> Result<Written, Error> {
        let cm = self.object(record, None)?;
        match self.api.create(&PostParams::default(), &cm).await {
            Ok(cm) => Ok(Written::Ok(
                cm.metadata.resource_version.unwrap_or_default(),
            )),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Conflict),
            Err(e) => Err(Error::kube(
                format!("create ledger record of {}", record.key()),
                e,
            )),
        }
    }

    /// Replace the record's object if it is still at `resource_version`.
    pub async fn replace(&self, record: &Record, resource_version: &str) -> Result<Written, Error> {
        let key = record.key();
        let cm = self.object(record, Some(resource_version.to_string()))?;
        match self
            .api
            .replace(&key.object_name(), &PostParams::default(), &cm)
            .await
        {
            Ok(cm) => Ok(Written::Ok(
                cm.metadata.resource_version.unwrap_or_default(),
            )),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Conflict),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Written::Gone),
            Err(e) => Err(Error::kube(format!("update ledger record of {key}"), e)),
        }
    }

    /// Delete object `name` if it is still at `resource_version` (a record of an account that
    /// no longer exists).
    pub async fn delete(&self, name: &str, resource_version: &str) -> Result<(), Error> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(Error::kube(format!("delete ledger record {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_record_is_named_by_hash_as_its_name_has_a_slash() {
        let key = AccountKey {
            kind: AccountKind::RateLimit,
            namespace: "team-a".into(),
            name: "chat/rpm".into(),
        };
        let name = key.object_name();
        assert!(name.starts_with("gatehouse-ledger.ratelimit."), "{name}");
        assert!(!name.contains('/') && name.len() <= 253, "{name}");
        assert_ne!(
            name,
            AccountKey {
                name: "chat/rpm2".into(),
                ..key
            }
            .object_name()
        );
    }

    #[test]
    fn object_names_are_readable_unambiguous_and_bounded() {
        assert_eq!(
            AccountKey::budget("team-a", "monthly.chat").object_name(),
            "gatehouse-ledger.budget.team-a.monthly.chat"
        );
        let long = AccountKey::budget(&"n".repeat(63), &"b".repeat(253)).object_name();
        assert!(long.len() <= 253, "{long}");
        assert!(long.starts_with("gatehouse-ledger.budget."));
        assert_ne!(
            long,
            AccountKey::budget(&"n".repeat(63), &"c".repeat(253)).object_name()
        );
    }
}
