//! Standalone mode: read ModelProvider, Route, Budget and Secret documents from YAML files or folders
//! (the same YAML a user would `kubectl apply`), render them, and re-render when the files change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_crds::{Budget, Inputs, ModelProvider, Rendered, Route, SecretData, render};
use serde::Deserialize;

use super::{Sink, files};

mod secret;

/// Why manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a valid object of its kind.
    #[error("failed to parse {path} (document {index}): {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based document index within the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The same object appears twice.
    #[error("{kind} '{name}' is defined twice ({first} and {second})")]
    Duplicate {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Where it was first seen.
        first: String,
        /// Where it was seen again.
        second: String,
    },
}

/// The manifests to read and the namespace they stand for.
#[derive(Debug, Clone)]
pub struct Manifests {
    paths: Vec<PathBuf>,
    namespace: String,
}

/// The fields every document is sorted by. Read by hand rather than through serde, whose errors
/// quote the offending value: a document that is only a pasted key must not be logged.
#[derive(Default)]
struct Head {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Head {
    fn read(value: &serde_yaml::Value) -> Result<Self, String> {
        use serde_yaml::Value;
        if !value.is_mapping() {
            return Err(format!(
                "a document must be a map (an object), found {}",
                secret::shape(value)
            ));
        }
        let text = |parent: &Value, field: &str, path: &str| match parent.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "{path} must be a string, found {}",
                secret::shape(other)
            )),
        };
        let (name, namespace) = match value.get("metadata") {
            None | Some(Value::Null) => (None, None),
            Some(meta @ Value::Mapping(_)) => (
                text(meta, "name", "metadata.name")?,
                text(meta, "namespace", "metadata.namespace")?,
            ),
            Some(other) => {
                return Err(format!(
                    "metadata must be a map, found {}",
                    secret::shape(other)
                ));
            }
        };
        Ok(Self {
            api_version: text(value, "apiVersion", "apiVersion")?.unwrap_or_default(),
            kind: text(value, "kind", "kind")?.unwrap_or_default(),
            name: name.unwrap_or_default(),
            namespace,
        })
    }
}

#[derive(Default)]
struct Objects {
    providers: Vec<ModelProvider>,
    routes: Vec<Route>,
    budgets: Vec<Budget>,
    secrets: SecretData,
    seen: BTreeMap<(String, String), String>,
}

impl Manifests {
    /// Manifests at `paths` (files or folders), keeping documents without a namespace or in `namespace`.
    pub fn new(paths: Vec<PathBuf>, namespace: impl Into<String>) -> Self {
        Self {
            paths,
            namespace: namespace.into(),
        }
    }

    /// Read and render everything.
    pub fn load(&self) -> Result<Rendered, LoadError> {
        let mut objects = Objects::default();
        for path in &self.paths {
            for file in files_under(path)? {
                let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
                    path: file.clone(),
                    source,
                })?;
                self.parse_file(&file, &text, &mut objects)?;
            }
        }
        Ok(render(&Inputs {
            namespace: &self.namespace,
            providers: &objects.providers,
            routes: &objects.routes,
            budgets: &objects.budgets,
            secrets: &objects.secrets,
        }))
    }

    fn parse_file(&self, file: &Path, text: &str, objects: &mut Objects) -> Result<(), LoadError> {
        for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let parse_error = |message: String| LoadError::Parse {
                path: file.to_path_buf(),
                index: i + 1,
                message,
            };
            // The first error ends the file: serde_yaml's document iterator does not recover
            // from a syntax error (it repeats it, or panics on the next document).
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|e| parse_error(yaml_error(text, &e)))?;
            if value.is_null() {
                continue;
            }
            self.add(
                value,
                objects,
                &|m| parse_error(m),
                &format!("{}#{}", file.display(), i + 1),
            )?;
        }
        Ok(())
    }

    fn add(
        &self,
        value: serde_yaml::Value,
        objects: &mut Objects,
        parse_error: &dyn Fn(String) -> LoadError,
        origin: &str,
    ) -> Result<(), LoadError> {
        let head = Head::read(&value).map_err(parse_error)?;
        if head.kind == "List" {
            let items = match value.get("items") {
                None | Some(serde_yaml::Value::Null) => Vec::new(),
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(other) => {
                    return Err(parse_error(format!(
                        "items of a List must be a list, found {}",
                        secret::shape(other)
                    )));
                }
            };
            for item in items {
                self.add(item, objects, parse_error, origin)?;
            }
            return Ok(());
        }
        if head
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != self.namespace)
        {
            return Ok(());
        }
        let ours = head.api_version == "gatehouse.dev/v1alpha1";
        let wrap = |kind: &str, e: serde_yaml::Error| {
            parse_error(format!("invalid {kind} '{}': {e}", head.name))
        };
        match (ours, head.kind.as_str()) {
            (true, "ModelProvider" | "Route" | "Budget") | (false, "Secret" | "ConfigMap") => {
                if head.name.is_empty() {
                    return Err(parse_error(format!("{} without metadata.name", head.kind)));
                }
                let key = (head.kind.clone(), head.name.clone());
                if let Some(first) = objects.seen.insert(key, origin.to_string()) {
                    return Err(LoadError::Duplicate {
                        kind: head.kind.clone(),
                        name: head.name.clone(),
                        first,
                        second: origin.to_string(),
                    });
                }
            }
            _ => {
                tracing::debug!(kind = %head.kind, api_version = %head.api_version, "ignoring document");
                return Ok(());
            }
        }
        match head.kind.as_str() {
            "ModelProvider" => objects
                .providers
                .push(serde_yaml::from_value(value).map_err(|e| wrap("ModelProvider", e))?),
            "Route" => objects
                .routes
                .push(serde_yaml::from_value(value).map_err(|e| wrap("Route", e))?),
            "Budget" => objects
                .budgets
                .push(serde_yaml::from_value(value).map_err(|e| wrap("Budget", e))?),
            "ConfigMap" => {
                // A CA bundle a ModelProvider's spec.tls.caBundle.configMapRef names.
                let config_map: k8s_openapi::api::core::v1::ConfigMap =
                    serde_yaml::from_value(value).map_err(|e| wrap("ConfigMap", e))?;
                objects.secrets.insert_config_map(config_map);
            }
            _ => {
                // Never through serde: its errors would quote the value, which is the key.
                let data = secret::data(&value)
                    .map_err(|e| parse_error(format!("invalid Secret '{}': {e}", head.name)))?;
                objects.secrets.insert(head.name.clone(), data);
            }
        }
        Ok(())
    }

    /// What to watch: a folder with its sub-folders, a file through its folder (editors and
    /// `kubectl`-style tools replace files by rename, which a watch on the file itself would lose).
    pub fn targets(&self) -> Vec<files::Target> {
        self.paths
            .iter()
            .map(|path| {
                if path.is_dir() {
                    files::Target::tree(path)
                } else {
                    files::Target::file(path)
                }
            })
            .collect()
    }

    /// How logs and errors name the manifests.
    pub fn describe(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("the manifests {}", paths.join(", "))
    }

    /// Load now, then re-load on every message of `rx` (from a [`files`] watch of
    /// [`Manifests::targets`]); an invalid edit keeps the last good config.
    pub fn watch(self, sink: Sink, mut rx: tokio::sync::mpsc::UnboundedReceiver<()>) {
        tokio::spawn(async move {
            let mut last: Option<Rendered> = None;
            loop {
                match self.load() {
                    Ok(rendered) => {
                        if last.as_ref() != Some(&rendered) {
                            last = Some(rendered.clone());
                            super::apply(&sink.store, &sink.metrics, rendered, "manifests");
                        }
                    }
                    Err(e) => super::reject(&sink.metrics, "manifests", &e.to_string()),
                }
                if rx.recv().await.is_none() {
                    return;
                }
                // Debounce: an editor's save is several events; read once they settle.
                loop {
                    match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            }
        });
    }
}

/// A YAML error's text, unless the document it is in may be a Secret: serde quotes the offending
/// scalar (`!!int sk-…` gives `invalid value: string "sk-…", expected an integer`), and in a
/// Secret that scalar is the key. Then only the position is given.
fn yaml_error(text: &str, e: &serde_yaml::Error) -> String {
    let document = match e.location() {
        Some(at) => document_at(text, at.line()),
        None => text,
    };
    if !mentions_secret(document) {
        return e.to_string();
    }
    let at = e
        .location()
        .map(|at| format!(" at line {} column {}", at.line(), at.column()))
        .unwrap_or_default();
    format!(
        "invalid YAML{at} in a document that may be a Secret (the parser's message is not shown: it can quote a value)"
    )
}

/// The lines of the document holding 1-based `line`, between `---` separators.
fn document_at(text: &str, line: usize) -> &str {
    let mut start = 0;
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        let separator = l.starts_with("---");
        if separator && i + 1 > line {
            return &text[start..offset];
        }
        if separator {
            start = offset;
        }
        offset += l.len();
    }
    &text[start..]
}

/// Whether `Secret` appears as a word (not as in `apiKeySecretRef`).
fn mentions_secret(document: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    document.match_indices("Secret").any(|(i, m)| {
        !document[..i].chars().next_back().is_some_and(word)
            && !document[i + m.len()..].chars().next().is_some_and(word)
    })
}

/// The YAML/JSON files at `path`: the file itself, or the folder's files recursively, sorted.
fn files_under(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Skip hidden entries, like the kubelet's `..data` folders of a mounted volume.
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            out.extend(files_under(&entry)?);
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn load_error(yaml: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let e = Manifests::new(vec![dir.path().to_path_buf()], "default")
            .load()
            .unwrap_err()
            .to_string();
        assert!(!e.contains(KEY), "the error quotes the key: {e}");
        e
    }

    const PROVIDER: &str = "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {name: p}\nspec:\n  type: openai\n  apiKeySecretRef: {name: k, key: apiKey}\n";

    #[test]
    fn no_shape_of_secret_document_gets_its_value_into_the_error() {
        for body in [
            format!("stringData: {KEY}"),
            format!("data: {KEY}"),
            format!("stringData: [{KEY}]"),
            format!("stringData:\n  apiKey: [{KEY}]"),
            format!("stringData:\n  apiKey: {{nested: {KEY}}}"),
            format!("data:\n  apiKey: {KEY}"),
            format!("stringData:\n  apiKey: !!int {KEY}"),
            format!("stringData:\n  apiKey: !!bool {KEY}"),
            format!("data:\n  apiKey: !!float {KEY}"),
            format!("stringData:\n  apiKey: \"{KEY}"),
            format!("stringData:\n  {KEY}: a\n  {KEY}: b"),
            format!("metadata: {KEY}"),
        ] {
            let yaml = format!(
                "{PROVIDER}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\n{body}\n"
            );
            let e = load_error(&yaml);
            assert!(e.contains("document 2"), "{e}");
        }
    }

    #[test]
    fn a_document_that_is_only_a_key_is_not_quoted() {
        let e = load_error(&format!("{PROVIDER}---\n{KEY}\n"));
        assert!(e.contains("a document must be a map"), "{e}");
        let e = load_error(&format!("kind: List\nitems: {KEY}\n"));
        assert!(e.contains("items of a List must be a list"), "{e}");
    }

    #[test]
    fn errors_outside_secrets_keep_the_parser_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            format!("{PROVIDER}  models: [a\n"),
        )
        .unwrap();
        let e = Manifests::new(vec![dir.path().to_path_buf()], "default")
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("while parsing a flow sequence"), "{e}");
        assert!(!e.contains("may be a Secret"), "{e}");
    }

    #[test]
    fn secret_is_a_word_not_part_of_a_field_name() {
        assert!(mentions_secret("kind: Secret\n"));
        assert!(mentions_secret("{\"kind\":\"Secret\"}"));
        assert!(!mentions_secret("  apiKeySecretRef: {name: k}\n"));
        assert_eq!(
            document_at("a: 1\n---\nb: 2\n---\nc: 3\n", 3),
            "---\nb: 2\n"
        );
        assert_eq!(document_at("a: 1\n---\nb: 2\n", 1), "a: 1\n");
    }
}
