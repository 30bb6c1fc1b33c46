//! Provider keys from a directory where the keys Secret is mounted (kube mode).
//!
//! The kubelet writes a Secret volume as `..<timestamp>/` folders plus a `..data` symlink to the
//! current one, and one symlink per key (`name -> ..data/name`). An update writes a new folder and
//! swaps `..data` atomically by rename, so a reader that opens `name` sees either all old or all new
//! keys. The directory itself is watched (not the files, whose inodes change on every swap; see
//! `files`) and everything is re-read on any change.

use std::path::{Path, PathBuf};

use gatehouse_crds::ProviderKeys;

/// Where the keys Secret is mounted.
#[derive(Debug, Clone)]
pub struct KeysDir {
    path: PathBuf,
}

impl KeysDir {
    /// Keys mounted at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key, by file name. Names starting with `.` (the kubelet's `..data` and timestamped
    /// folders) are skipped, as are sub-folders. A missing directory is no keys: providers without a
    /// key still work and the others get a clear 401 from upstream.
    pub fn read(&self) -> std::io::Result<ProviderKeys> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProviderKeys::new()),
            Err(e) => return Err(e),
        };
        let mut keys = ProviderKeys::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // `metadata` follows the symlink to the file in `..data/`.
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {}
                _ => continue,
            }
            let value = std::fs::read_to_string(entry.path())?;
            // Keys never contain whitespace; files made with `--from-file` often end in a newline.
            keys.insert(name, value.trim());
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lay out `keys` the way the kubelet does and swap `..data` atomically.
    pub(crate) fn kubelet_write(dir: &Path, generation: u32, keys: &[(&str, &str)]) {
        let folder = format!("..2025_01_01_00_00_0{generation}");
        std::fs::create_dir_all(dir.join(&folder)).unwrap();
        for (name, value) in keys {
            std::fs::write(dir.join(&folder).join(name), value).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[test]
    fn reads_kubelet_layout_and_sees_the_swap() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_write(dir.path(), 1, &[("openai", "sk-old\n")]);
        let keys = KeysDir::new(dir.path());
        assert_eq!(keys.read().unwrap().get("openai"), Some("sk-old"));
        kubelet_write(dir.path(), 2, &[("openai", "sk-new")]);
        assert_eq!(keys.read().unwrap().len(), 1);
        assert_eq!(keys.read().unwrap().get("openai"), Some("sk-new"));
    }

    #[test]
    fn debug_of_the_keys_read_names_them_without_the_values() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_write(dir.path(), 1, &[("openai", "sk-mounted-secret\n")]);
        let keys = KeysDir::new(dir.path()).read().unwrap();
        assert_eq!(format!("{keys:?}"), r#"{"openai": [redacted]}"#);
        assert!(!format!("{keys:#?}").contains("sk-mounted-secret"));
    }

    #[test]
    fn missing_directory_is_no_keys() {
        let keys = KeysDir::new("/nonexistent/gatehouse/keys");
        assert!(keys.read().unwrap().is_empty());
    }
}
