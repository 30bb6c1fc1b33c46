//! Key material on its way from the user's Secrets to the sidecar: [`SecretData`] (what
//! [`crate::render`] reads) and [`ProviderKeys`] (what it produces, what the operator writes into
//! the keys Secret and what the sidecar reads back from the mounted files).
//!
//! Both print `[redacted]` in place of every value in `Debug`, so a `{:?}` in a log line, an error
//! or a test failure cannot show a key. Names (of Secrets, of their keys, of providers) are not
//! secret and stay visible.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;

/// A stand-in for a secret value in `Debug` output: prints `[redacted]`. Use it in hand-written
/// `Debug` impls of anything that holds a key, so they all read the same.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The data of a Secret as one map from key to raw bytes: `data` (already base64-decoded by
/// k8s-openapi) with `stringData` on top, the way the API server merges them on write. The API
/// server never returns `stringData`, but manifests read from files (standalone mode) and dry runs
/// carry it.
pub fn secret_data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

/// Secret data by Secret name, then key, as raw bytes: the Secrets [`crate::render`] may resolve
/// provider keys from; plus the ConfigMaps it may read (a CA bundle), which travel the same way.
/// `Debug` shows the names and `[redacted]` for every value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
);

impl SecretData {
    /// No Secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) the Secret `name` with its decoded data (see [`secret_data`]).
    pub fn insert(&mut self, name: impl Into<String>, data: BTreeMap<String, Vec<u8>>) {
        self.0.insert(name.into(), data);
    }

    /// Add (or replace) a Secret object under its `metadata.name`, decoded with [`secret_data`].
    pub fn insert_secret(&mut self, secret: Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.insert(name, secret_data(secret));
    }

    /// Set one key of one Secret, creating the Secret entry if needed.
    pub fn insert_key(
        &mut self,
        secret: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) {
        self.0
            .entry(secret.into())
            .or_default()
            .insert(key.into(), value.into());
    }

    /// The data of the Secret `name`, if present.
    pub fn get(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.0.get(name)
    }

    /// Whether the Secret `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Add (or replace) a ConfigMap object under its `metadata.name`: `data`, with `binaryData`
    /// on top.
    pub fn insert_config_map(&mut self, config_map: k8s_openapi::api::core::v1::ConfigMap) {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        let mut data: BTreeMap<String, Vec<u8>> = config_map
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in config_map.binary_data.unwrap_or_default() {
            data.insert(k, v.0);
        }
        self.1.insert(name, data);
    }

    /// Set one key of one ConfigMap, creating the ConfigMap entry if needed.
    pub fn insert_config_map_key(
        &mut self,
        config_map: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) {
        self.1
            .entry(config_map.into())
            .or_default()
            .insert(key.into(), value.into());
    }

    /// The data of the ConfigMap `name`, if present.
    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.1.get(name)
    }

    /// Number of Secrets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no Secrets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(secret, data)| {
                let keys: BTreeMap<&str, Redacted> =
                    data.keys().map(|k| (k.as_str(), Redacted)).collect();
                (secret, keys)
            }))
            .finish()?;
        if !self.1.is_empty() {
            // ConfigMaps hold nothing secret, but a bundle is long: names only.
            let maps: BTreeMap<&str, Vec<&str>> = self
                .1
                .iter()
                .map(|(name, data)| (name.as_str(), data.keys().map(String::as_str).collect()))
                .collect();
            write!(f, " configmaps {maps:?}")?;
        }
        Ok(())
    }
}

/// Provider API keys by key name ([`crate::config::ProviderConfig::key`]): the content of the keys
/// Secret ([`crate::contract::KEYS_NAME`]) and of the directory it is mounted at. `Debug` shows the
/// key names and `[redacted]` for every key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderKeys(BTreeMap<String, String>);

impl ProviderKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) the key `name`.
    pub fn insert(&mut self, name: impl Into<String>, key: impl Into<String>) {
        self.0.insert(name.into(), key.into());
    }

    /// The key `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every `(name, key)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ProviderKeys {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name, Redacted)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    #[test]
    fn provider_keys_debug_shows_names_not_keys() {
        let keys: ProviderKeys = [("openai", KEY), ("anthropic", "sk-ant-secret")]
            .into_iter()
            .collect();
        let debug = format!("{keys:?}");
        assert_eq!(debug, r#"{"anthropic": [redacted], "openai": [redacted]}"#);
        assert!(!format!("{keys:#?}").contains("sk-"), "{keys:#?}");
    }

    #[test]
    fn secret_data_debug_shows_names_not_values() {
        let mut secrets = SecretData::new();
        secrets.insert_key("llm-key", "api-key", KEY);
        let debug = format!("{secrets:?}");
        assert_eq!(debug, r#"{"llm-key": {"api-key": [redacted]}}"#);
        assert!(!format!("{secrets:#?}").contains(KEY));
    }

    #[test]
    fn secret_data_merges_string_data_over_data() {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("llm-key".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("a".to_string(), ByteString(b"from-data".to_vec())),
                ("b".to_string(), ByteString(b"only-data".to_vec())),
            ])),
            string_data: Some(BTreeMap::from([(
                "a".to_string(),
                "from-string-data".to_string(),
            )])),
            ..Secret::default()
        };
        let mut secrets = SecretData::new();
        secrets.insert_secret(secret);
        let data = secrets.get("llm-key").cloned().unwrap_or_default();
        assert_eq!(data["a"], b"from-string-data");
        assert_eq!(data["b"], b"only-data");
        assert_eq!(secrets.len(), 1);
    }
}
