//! Standalone mode: read ModelProvider, Route, Budget and Secret documents from YAML files or folders
//! (the same YAML a user would `kubectl apply`), render them, and re-render when the files change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_crds::{Budget, Inputs, ModelProvider, Rendered, Route, SecretData, render};
use k8s_openapi::api::core::v1::Secret;
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use super::Sink;

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

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
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
            let value =
                serde_yaml::Value::deserialize(document).map_err(|e| parse_error(e.to_string()))?;
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
        let head: Head =
            serde_yaml::from_value(value.clone()).map_err(|e| parse_error(e.to_string()))?;
        if head.kind == "List" {
            #[derive(Deserialize)]
            struct List {
                #[serde(default)]
                items: Vec<serde_yaml::Value>,
            }
            let list: List =
                serde_yaml::from_value(value).map_err(|e| parse_error(e.to_string()))?;
            for item in list.items {
                self.add(item, objects, parse_error, origin)?;
            }
            return Ok(());
        }
        if head
            .metadata
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != self.namespace)
        {
            return Ok(());
        }
        let ours = head.api_version == "gatehouse.dev/v1alpha1";
        let wrap = |kind: &str, e: serde_yaml::Error| {
            parse_error(format!("invalid {kind} '{}': {e}", head.metadata.name))
        };
        match (ours, head.kind.as_str()) {
            (true, "ModelProvider" | "Route" | "Budget") | (false, "Secret") => {
                if head.metadata.name.is_empty() {
                    return Err(parse_error(format!("{} without metadata.name", head.kind)));
                }
                let key = (head.kind.clone(), head.metadata.name.clone());
                if let Some(first) = objects.seen.insert(key, origin.to_string()) {
                    return Err(LoadError::Duplicate {
                        kind: head.kind.clone(),
                        name: head.metadata.name.clone(),
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
            _ => {
                let secret: Secret =
                    serde_yaml::from_value(value).map_err(|e| wrap("Secret", e))?;
                objects.secrets.insert(
                    head.metadata.name.clone(),
                    gatehouse_crds::keys::secret_data(secret),
                );
            }
        }
        Ok(())
    }

    /// Load now, then re-load whenever a file under the paths changes; an invalid edit keeps the
    /// last good config. Returns the watcher, which must be kept alive.
    pub fn watch(self, sink: Sink) -> Result<notify::RecommendedWatcher, notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        for path in &self.paths {
            // Watch a file's folder: editors and `kubectl`-style tools replace files by rename,
            // which a watch on the file itself would lose.
            if path.is_dir() {
                watcher.watch(path, RecursiveMode::Recursive)?;
            } else {
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                watcher.watch(parent, RecursiveMode::NonRecursive)?;
            }
        }
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
        Ok(watcher)
    }
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
