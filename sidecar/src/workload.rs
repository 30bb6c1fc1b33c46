//! Whom the sidecar serves: the workload identity every request is attributed to.
//!
//! The sidecar runs next to one pod, so the caller is that pod: its namespace, ServiceAccount, pod
//! name and a few allow-listed labels. In a pod they come from the downward API (env `fieldRef`s
//! and/or the labels file of a `downwardAPI` volume); in standalone mode from the same flags. The
//! identity is built once at start and shared ([`Arc`]); nothing a request carries can change it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The label that names the workload when `--workload` does not.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// The labels carried by default (`--workload-labels`).
pub const DEFAULT_LABELS: &str = "app.kubernetes.io/name,app.kubernetes.io/component,team";

/// Why the identity could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The labels file could not be read.
    #[error("failed to read pod labels file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// A line of the labels file is not `key="value"`.
    #[error("failed to parse pod labels file {path}: line {line} is not key=\"value\"")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
    },
}

/// The workload the sidecar serves. Unknown parts are empty strings (a standalone sidecar given
/// no identity flags has only its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Namespace (`--namespace`, downward API `metadata.namespace`).
    pub namespace: Arc<str>,
    /// The `workload` metric label: `--workload`, else the pod's `app.kubernetes.io/name` label,
    /// else the pod name without its ReplicaSet and pod hash suffixes ([`workload_of_pod`]).
    pub name: Arc<str>,
    /// ServiceAccount (`--service-account`, downward API `spec.serviceAccountName`).
    pub service_account: Arc<str>,
    /// Pod name (`--pod-name`, downward API `metadata.name`).
    pub pod: Arc<str>,
    /// The pod's labels named in `--workload-labels`, those with a non-empty value.
    pub labels: BTreeMap<String, String>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            namespace: Arc::from("default"),
            name: Arc::from(""),
            service_account: Arc::from(""),
            pod: Arc::from(""),
            labels: BTreeMap::new(),
        }
    }
}

/// What the identity is built from (the flags, or their `GATEHOUSE_*` variables).
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    /// `--namespace`.
    pub namespace: &'a str,
    /// `--pod-name`.
    pub pod: Option<&'a str>,
    /// `--service-account`.
    pub service_account: Option<&'a str>,
    /// `--workload`.
    pub workload: Option<&'a str>,
    /// `--pod-labels`: `key=value` pairs; they win over the labels file.
    pub labels: &'a [(String, String)],
    /// `--pod-labels-file`: a downward-API labels file.
    pub labels_file: Option<&'a Path>,
    /// `--workload-labels`: the label keys carried.
    pub allowed: &'a [String],
}

impl Workload {
    /// Build the identity, reading the labels file if one is named.
    pub fn build(src: &Sources<'_>) -> Result<Self, WorkloadError> {
        let mut all = match src.labels_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_labels_file(&text).map_err(|line| WorkloadError::Parse {
                    path: path.to_path_buf(),
                    line,
                })?
            }
            None => BTreeMap::new(),
        };
        for (k, v) in src.labels {
            all.insert(k.clone(), v.clone());
        }
        // The downward API gives an empty value for a label the pod does not have.
        all.retain(|_, v| !v.is_empty());
        let pod = src.pod.map(str::trim).unwrap_or_default();
        let name = match src.workload.map(str::trim).filter(|w| !w.is_empty()) {
            Some(w) => w.to_string(),
            None => match all.get(NAME_LABEL) {
                Some(n) => n.clone(),
                None => workload_of_pod(pod).to_string(),
            },
        };
        let labels = all
            .into_iter()
            .filter(|(k, _)| src.allowed.iter().any(|a| a == k))
            .collect();
        Ok(Self {
            namespace: Arc::from(src.namespace),
            name: Arc::from(name),
            service_account: Arc::from(src.service_account.map(str::trim).unwrap_or_default()),
            pod: Arc::from(pod),
            labels,
        })
    }
}

/// A `key=value` pair of `--pod-labels`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected key=value, got '{s}'")),
    }
}

/// The labels of a downward-API labels file: one `key="value"` per line, the value quoted as Go's
/// `%q` does. A bad line is an error naming its number.
fn parse_labels_file(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut labels = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .and_then(unquote)
            .ok_or(i + 1)?;
        if key.is_empty() {
            return Err(i + 1);
        }
        labels.insert(key.to_string(), value);
    }
    Ok(labels)
}

/// The inside of a Go-quoted string. Label values are `[A-Za-z0-9._-]` (Kubernetes validates
/// them), so only the simple escapes can occur; anything else is refused rather than guessed.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next()? {
                '\\' => '\\',
                '"' => '"',
                'n' => '\n',
                't' => '\t',
                _ => return None,
            }),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The characters of the random suffixes Kubernetes generates (`rand.SafeEncodeString`: no
/// vowels, no look-alikes).
fn is_generated(s: &str) -> bool {
    s.bytes()
        .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The workload name in a pod name: without the 5-character random suffix of a pod of a
/// ReplicaSet, DaemonSet or Job, and then without a ReplicaSet's pod-template hash (6 to 10
/// characters of the same alphabet) (`web-7d4b9c8f6d-x2x9k` → `web`); without a StatefulSet
/// ordinal (`db-0` → `db`). A heuristic: a workload whose own name ends in such a segment loses
/// it, so set `--workload` or the `app.kubernetes.io/name` label to be exact.
pub fn workload_of_pod(pod: &str) -> &str {
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if rest.is_empty() {
        return pod;
    }
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return rest;
    }
    if last.len() != 5 || !is_generated(last) {
        return pod;
    }
    match rest.rsplit_once('-') {
        Some((base, hash))
            if !base.is_empty() && (6..=10).contains(&hash.len()) && is_generated(hash) =>
        {
            base
        }
        _ => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_LABELS.split(',').map(String::from).collect()
    }

    #[test]
    fn the_workload_name_drops_generated_suffixes() {
        assert_eq!(workload_of_pod("checkout-7d4b9c8f6d-x2x9k"), "checkout");
        assert_eq!(
            workload_of_pod("checkout-api-5f7c8d9b4-bq7zt"),
            "checkout-api"
        );
        assert_eq!(workload_of_pod("node-agent-x2x9k"), "node-agent");
        assert_eq!(workload_of_pod("db-0"), "db");
        assert_eq!(workload_of_pod("db-12"), "db");
        // Not generated: a vowel, wrong length, or nothing before the dash.
        assert_eq!(workload_of_pod("web-hello"), "web-hello");
        assert_eq!(workload_of_pod("web-server"), "web-server");
        assert_eq!(workload_of_pod("standalone"), "standalone");
        assert_eq!(workload_of_pod("-x2x9k"), "-x2x9k");
        assert_eq!(workload_of_pod(""), "");
    }

    #[test]
    fn the_name_label_wins_over_the_pod_name_and_the_flag_over_both() {
        let labels = vec![
            (NAME_LABEL.to_string(), "checkout".to_string()),
            ("team".to_string(), "payments".to_string()),
            ("pod-template-hash".to_string(), "7d4b9c8f6d".to_string()),
            ("app.kubernetes.io/component".to_string(), String::new()),
        ];
        let allowed = allowed();
        let mut src = Sources {
            namespace: "shop",
            pod: Some("web-7d4b9c8f6d-x2x9k"),
            service_account: Some("checkout-sa"),
            labels: &labels,
            allowed: &allowed,
            ..Sources::default()
        };
        let w = Workload::build(&src).unwrap();
        assert_eq!(&*w.namespace, "shop");
        assert_eq!(&*w.name, "checkout");
        assert_eq!(&*w.service_account, "checkout-sa");
        assert_eq!(&*w.pod, "web-7d4b9c8f6d-x2x9k");
        // Only allow-listed labels with a value are carried.
        assert_eq!(
            w.labels.into_iter().collect::<Vec<_>>(),
            [
                (NAME_LABEL.to_string(), "checkout".to_string()),
                ("team".to_string(), "payments".to_string())
            ]
        );
        src.workload = Some("explicit");
        assert_eq!(&*Workload::build(&src).unwrap().name, "explicit");
        src.workload = None;
        src.labels = &[];
        assert_eq!(&*Workload::build(&src).unwrap().name, "web");
    }

    #[test]
    fn the_downward_api_labels_file_is_read_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels");
        std::fs::write(
            &path,
            "app.kubernetes.io/name=\"checkout\"\npod-template-hash=\"7d4b9c8f6d\"\nteam=\"pay\\\"ments\"\n",
        )
        .unwrap();
        let flags = vec![("team".to_string(), "payments".to_string())];
        let allowed = allowed();
        let mut src = Sources {
            namespace: "shop",
            labels_file: Some(&path),
            allowed: &allowed,
            ..Sources::default()
        };
        let w = Workload::build(&src).unwrap();
        assert_eq!(&*w.name, "checkout");
        assert_eq!(w.labels["team"], "pay\"ments");
        assert!(!w.labels.contains_key("pod-template-hash"));
        src.labels = &flags;
        assert_eq!(Workload::build(&src).unwrap().labels["team"], "payments");

        std::fs::write(&path, "team=\"a\"\nbroken\n").unwrap();
        let err = Workload::build(&src).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let missing = dir.path().join("missing");
        src.labels_file = Some(&missing);
        let err = Workload::build(&src).unwrap_err().to_string();
        assert!(err.starts_with("failed to read pod labels file"), "{err}");
    }

    #[test]
    fn the_flags_feed_the_identity() {
        use clap::Parser;
        let args = crate::Args::parse_from([
            "gatehouse-sidecar",
            "--namespace=shop",
            "--pod-name=checkout-7d4b9c8f6d-x2x9k",
            "--service-account=checkout-sa",
            "--pod-labels=team=payments,app.kubernetes.io/component=api,owner=alice",
        ]);
        let w = args.workload().unwrap();
        assert_eq!(
            (&*w.namespace, &*w.name, &*w.service_account, &*w.pod),
            (
                "shop",
                "checkout",
                "checkout-sa",
                "checkout-7d4b9c8f6d-x2x9k"
            )
        );
        // `owner` is not in the default allow-list.
        assert_eq!(
            w.labels.keys().collect::<Vec<_>>(),
            ["app.kubernetes.io/component", "team"]
        );
        assert_eq!(args.max_tags, crate::stages::identity::DEFAULT_MAX_TAGS);
        let args = crate::Args::parse_from([
            "gatehouse-sidecar",
            "--workload=billing",
            "--workload-labels=owner",
            "--pod-labels=owner=alice,team=payments",
            "--max-tags=7",
        ]);
        let w = args.workload().unwrap();
        assert_eq!(
            (&*w.namespace, &*w.name, &*w.pod),
            ("default", "billing", "")
        );
        assert_eq!(w.labels.keys().collect::<Vec<_>>(), ["owner"]);
        assert_eq!(args.max_tags, 7);
        assert!(
            crate::Args::try_parse_from(["gatehouse-sidecar", "--pod-labels=novalue"]).is_err()
        );
    }

    #[test]
    fn label_flags_must_be_key_value() {
        assert_eq!(
            parse_label("team=payments"),
            Ok(("team".into(), "payments".into()))
        );
        assert_eq!(parse_label("team="), Ok(("team".into(), String::new())));
        assert!(parse_label("team").is_err());
        assert!(parse_label("=x").is_err());
    }
}
