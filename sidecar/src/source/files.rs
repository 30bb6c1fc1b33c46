//! Noticing changes to the files the sidecar reads: the keys directory in kube mode, the manifests
//! in standalone mode.
//!
//! One inotify instance holds every watch of the sidecar, read on the runtime's own event loop (no
//! thread, no extra file descriptor besides the instance). Instances are limited per user
//! (`fs.inotify.max_user_instances`, 128 by default) and shared by every container of a node that
//! runs as the same UID; watches too (`fs.inotify.max_user_watches`). When inotify cannot be used,
//! the sidecar polls instead: every `--file-poll-interval-ms` it hashes the metadata of what it
//! watches (modification and change times, inode, size, and the targets of symlinks such as the
//! kubelet's `..data`, which an update of a Secret or ConfigMap volume swaps), and reports a change
//! when the hash moves. It warns once, naming the limit. Starting never fails for lack of inotify
//! unless `--file-watch=inotify` asks for it.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use crate::metrics::{FileWatchLabels, Metrics};

/// How the sidecar notices changes to its files (`--file-watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// inotify, or polling when inotify cannot be used (a per-user limit is reached).
    Auto,
    /// inotify only: fail to start when it cannot be used.
    Inotify,
    /// Polling only, for file systems that send no inotify events (some network and FUSE mounts).
    Poll,
}

/// How to watch.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// inotify, polling, or inotify with a polling fallback.
    pub method: Method,
    /// Time between two polls.
    pub poll_interval: Duration,
}

/// Something to watch.
#[derive(Debug, Clone)]
pub struct Target {
    path: PathBuf,
    shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A file: its folder is watched, so a rename-replace (editors, the kubelet) is seen.
    File,
    /// A folder's entries.
    Dir,
    /// A folder and its sub-folders, except hidden ones (the kubelet's `..<timestamp>` folders,
    /// whose swap shows in the folder itself as the `..data` link changing).
    Tree,
}

impl Target {
    /// A file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            shape: Shape::File,
        }
    }

    /// A folder's entries, not its sub-folders.
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            shape: Shape::Dir,
        }
    }

    /// A folder with its sub-folders.
    pub fn tree(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            shape: Shape::Tree,
        }
    }
}

/// Why the files could not be watched with inotify (only with `--file-watch=inotify`).
#[derive(Debug, thiserror::Error)]
#[error("failed to watch {what} with inotify: {source}{hint}")]
pub struct WatchError {
    what: String,
    source: io::Error,
    hint: String,
}

/// Why inotify could not be used.
#[derive(Debug)]
struct Failure {
    source: io::Error,
    /// The sysctl whose limit was reached, if one was.
    limit: Option<&'static str>,
}

impl Failure {
    fn init(source: io::Error) -> Self {
        let limit = (source.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()))
            .then_some("fs.inotify.max_user_instances");
        Self { source, limit }
    }

    fn add(source: io::Error) -> Self {
        let limit = (source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
            .then_some("fs.inotify.max_user_watches");
        Self { source, limit }
    }
}

/// The running watch; dropping it stops it (and closes the inotify instance).
#[derive(Debug)]
pub struct Watch {
    task: JoinHandle<()>,
    method: &'static str,
}

impl Watch {
    /// `inotify` or `poll`: how changes are noticed at start.
    pub fn method(&self) -> &'static str {
        self.method
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start watching `targets` (named `what` in logs and errors, for example "the keys directory
/// /var/run/gatehouse/keys"). Every change sends `()` on the returned channel; a burst of events
/// (an editor's save, the kubelet's swap) sends several, which the reader debounces.
pub fn watch(
    what: String,
    targets: Vec<Target>,
    settings: Settings,
    metrics: &Arc<Metrics>,
) -> Result<(Watch, UnboundedReceiver<()>), WatchError> {
    let (tx, rx) = unbounded_channel();
    let inotify = match settings.method {
        Method::Poll => None,
        Method::Auto | Method::Inotify => match Inotify::start(&targets) {
            Ok(inotify) => Some(inotify),
            Err(failure) if settings.method == Method::Inotify => {
                let hint = match failure.limit {
                    Some(limit) => format!(
                        " (the per-user limit {limit} is reached; --file-watch=auto polls instead)"
                    ),
                    None => String::new(),
                };
                return Err(WatchError {
                    what,
                    source: failure.source,
                    hint,
                });
            }
            Err(failure) => {
                fall_back(&what, &failure, settings.poll_interval);
                None
            }
        },
    };
    let method = if inotify.is_some() { "inotify" } else { "poll" };
    set_method(metrics, method);
    tracing::info!(
        what,
        method,
        poll_interval_ms = settings.poll_interval.as_millis() as u64,
        "watching files"
    );
    // Taken now, before the reader's first read, so no change after that read is missed.
    let baseline = fingerprint(&targets);
    let task = tokio::spawn(run(
        what,
        targets,
        settings,
        inotify,
        baseline,
        tx,
        Arc::clone(metrics),
    ));
    Ok((Watch { task, method }, rx))
}

fn set_method(metrics: &Metrics, method: &'static str) {
    for m in ["inotify", "poll"] {
        metrics
            .file_watch
            .get_or_create(&FileWatchLabels { method: m })
            .set(i64::from(m == method));
    }
}

/// The one warning when inotify cannot be used.
fn fall_back(what: &str, failure: &Failure, interval: Duration) {
    let interval_ms = interval.as_millis() as u64;
    match failure.limit {
        Some(limit) => tracing::warn!(
            what,
            limit,
            error = %failure.source,
            poll_interval_ms = interval_ms,
            "the per-user inotify limit {limit} is reached ({}); watching {what} by polling every \
             {interval_ms} ms instead. Containers running as the same UID on a node share this \
             limit: raise it on the node (sysctl -w {limit}=<more>)",
            failure.source
        ),
        None if failure.source.kind() == io::ErrorKind::Unsupported => tracing::info!(
            what,
            poll_interval_ms = interval_ms,
            "no inotify on this system; watching {what} by polling every {interval_ms} ms"
        ),
        None => tracing::warn!(
            what,
            error = %failure.source,
            poll_interval_ms = interval_ms,
            "inotify cannot be used ({}); watching {what} by polling every {interval_ms} ms instead",
            failure.source
        ),
    }
}

async fn run(
    what: String,
    targets: Vec<Target>,
    settings: Settings,
    mut inotify: Option<Inotify>,
    mut last: u64,
    tx: UnboundedSender<()>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = match inotify.as_mut() {
            Some(watching) => match watching.next(&targets).await {
                Ok(()) => true,
                Err(failure) => {
                    // A watch for a new folder could not be added, or the instance failed: from
                    // now on poll everything, and report a change in case one was missed.
                    fall_back(&what, &failure, settings.poll_interval);
                    inotify = None;
                    set_method(&metrics, "poll");
                    last = fingerprint(&targets);
                    true
                }
            },
            None => {
                tick.tick().await;
                let now = fingerprint(&targets);
                let changed = now != last;
                last = now;
                changed
            }
        };
        if changed && tx.send(()).is_err() {
            return;
        }
    }
}

/// The folders inotify watches for `targets`: a file's folder, a folder, a tree's folders; for
/// what does not exist yet, its nearest existing ancestor, so its creation is noticed.
fn watch_points(targets: &[Target]) -> BTreeSet<PathBuf> {
    let mut points = BTreeSet::new();
    for target in targets {
        let dir = match target.shape {
            Shape::File => target
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            Shape::Dir | Shape::Tree => target.path.clone(),
        };
        if dir.is_dir() {
            if target.shape == Shape::Tree {
                folders(&dir, 0, &mut points);
            } else {
                points.insert(dir);
            }
        } else if let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.is_dir()) {
            points.insert(ancestor.to_path_buf());
        }
    }
    points
}

/// Deeper than any sane manifests tree; stops a symlink loop.
const MAX_DEPTH: usize = 16;

/// `dir` and its sub-folders, skipping hidden ones.
fn folders(dir: &Path, depth: usize, out: &mut BTreeSet<PathBuf>) {
    out.insert(dir.to_path_buf());
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !hidden(&path) && path.is_dir() {
            folders(&path, depth + 1, out);
        }
    }
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Inotify {
    events: inotify::EventStream<Vec<u8>>,
}

#[cfg(target_os = "linux")]
impl Inotify {
    /// What a folder watch listens to: entries created, removed, renamed, written or changed, and
    /// the folder itself going away. Not opens and reads, which the sidecar's own reads cause.
    fn mask() -> inotify::WatchMask {
        use inotify::WatchMask as M;
        M::CREATE
            | M::DELETE
            | M::MODIFY
            | M::CLOSE_WRITE
            | M::ATTRIB
            | M::MOVED_FROM
            | M::MOVED_TO
            | M::DELETE_SELF
            | M::MOVE_SELF
            | M::ONLYDIR
    }

    fn start(targets: &[Target]) -> Result<Self, Failure> {
        let instance = inotify::Inotify::init().map_err(Failure::init)?;
        let events = instance
            .into_event_stream(vec![0u8; 4096])
            .map_err(Failure::init)?;
        let watching = Self { events };
        watching.arm(targets)?;
        Ok(watching)
    }

    /// Add a watch for every folder that needs one. Adding one that exists is a no-op.
    fn arm(&self, targets: &[Target]) -> Result<(), Failure> {
        let mut watches = self.events.watches();
        for point in watch_points(targets) {
            match watches.add(&point, Self::mask()) {
                Ok(_) => {}
                // Gone between the walk and the add: the watch on its parent reports it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Failure::add(e)),
            }
        }
        Ok(())
    }

    /// Wait for the next event; re-arm when folders may have come or gone.
    async fn next(&mut self, targets: &[Target]) -> Result<(), Failure> {
        use futures::StreamExt;
        use inotify::EventMask as E;
        let event = match self.events.next().await {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(Failure::init(e)),
            None => return Err(Failure::init(io::Error::from(io::ErrorKind::UnexpectedEof))),
        };
        if event
            .mask
            .intersects(E::ISDIR | E::IGNORED | E::DELETE_SELF | E::MOVE_SELF | E::Q_OVERFLOW)
        {
            self.arm(targets)?;
        }
        Ok(())
    }
}

/// Elsewhere than Linux the sidecar polls.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
struct Inotify;

#[cfg(not(target_os = "linux"))]
impl Inotify {
    fn start(_: &[Target]) -> Result<Self, Failure> {
        Err(Failure::init(io::Error::new(
            io::ErrorKind::Unsupported,
            "inotify exists only on Linux",
        )))
    }

    async fn next(&mut self, _: &[Target]) -> Result<(), Failure> {
        std::future::pending().await
    }
}

/// A hash of the metadata of everything `targets` cover; it moves when anything there changes.
fn fingerprint(targets: &[Target]) -> u64 {
    let mut h = DefaultHasher::new();
    for target in targets {
        target.path.hash(&mut h);
        match target.shape {
            Shape::File => stamp(&target.path, &mut h),
            Shape::Dir => dir_stamp(&target.path, false, 0, &mut h),
            Shape::Tree => dir_stamp(&target.path, true, 0, &mut h),
        }
    }
    h.finish()
}

/// An entry: its own metadata, and for a symlink its target and what it resolves to.
fn stamp(path: &Path, h: &mut DefaultHasher) {
    use std::os::unix::fs::MetadataExt;
    let meta = |m: &std::fs::Metadata, h: &mut DefaultHasher| {
        (
            m.dev(),
            m.ino(),
            m.mode(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(h);
    };
    match std::fs::symlink_metadata(path) {
        Err(e) => e.kind().hash(h),
        Ok(m) => {
            meta(&m, h);
            if m.is_symlink() {
                std::fs::read_link(path).ok().hash(h);
                match std::fs::metadata(path) {
                    Ok(m) => meta(&m, h),
                    Err(e) => e.kind().hash(h),
                }
            }
        }
    }
}

fn dir_stamp(dir: &Path, recursive: bool, depth: usize, h: &mut DefaultHasher) {
    stamp(dir, h);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        path.hash(h);
        stamp(&path, h);
        if recursive && depth < MAX_DEPTH && !hidden(&path) && path.is_dir() {
            dir_stamp(&path, true, depth + 1, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet_swap(dir: &Path, generation: u32, value: &str) {
        let folder = format!("..2026_01_01_00_00_0{generation}");
        std::fs::create_dir_all(dir.join(&folder)).unwrap();
        std::fs::write(dir.join(&folder).join("openai"), value).unwrap();
        if std::fs::symlink_metadata(dir.join("openai")).is_err() {
            std::os::unix::fs::symlink("..data/openai", dir.join("openai")).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[test]
    fn the_fingerprint_moves_with_the_kubelet_swap_even_at_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let targets = [Target::dir(dir.path())];
        kubelet_swap(dir.path(), 1, "sk-aaaa");
        let before = fingerprint(&targets);
        assert_eq!(before, fingerprint(&targets), "nothing changed");
        kubelet_swap(dir.path(), 2, "sk-bbbb");
        assert_ne!(before, fingerprint(&targets));
    }

    #[test]
    fn the_fingerprint_moves_with_an_edit_in_a_sub_folder_and_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("team")).unwrap();
        std::fs::write(dir.path().join("team/a.yaml"), "a: 1\n").unwrap();
        let targets = [Target::tree(dir.path())];
        let before = fingerprint(&targets);
        std::fs::write(dir.path().join("team/a.yaml"), "a: 2\n").unwrap();
        let edited = fingerprint(&targets);
        assert_ne!(before, edited);
        std::fs::write(dir.path().join("b.yaml"), "b: 1\n").unwrap();
        assert_ne!(edited, fingerprint(&targets));
    }

    #[test]
    fn the_fingerprint_moves_when_a_missing_folder_appears() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let targets = [Target::dir(&keys)];
        let before = fingerprint(&targets);
        std::fs::create_dir(&keys).unwrap();
        assert_ne!(before, fingerprint(&targets));
    }

    #[test]
    fn watch_points_are_one_per_folder_skipping_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("m/team")).unwrap();
        std::fs::create_dir_all(root.join("m/..2026_01_01")).unwrap();
        std::fs::create_dir_all(root.join("keys")).unwrap();
        let points = watch_points(&[
            Target::tree(root.join("m")),
            Target::file(root.join("a.yaml")),
            Target::file(root.join("b.yaml")),
            Target::dir(root.join("keys")),
            Target::dir(root.join("missing/keys")),
        ]);
        let expected: BTreeSet<PathBuf> = [
            root.to_path_buf(),
            root.join("m"),
            root.join("m/team"),
            root.join("keys"),
        ]
        .into_iter()
        .collect();
        assert_eq!(points, expected);
    }

    async fn next_change(rx: &mut UnboundedReceiver<()>) {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no change noticed within 10 s")
            .expect("watch stopped");
    }

    async fn notices_swaps_and_late_folders(method: Method) {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let metrics = Arc::new(Metrics::new());
        let settings = Settings {
            method,
            poll_interval: Duration::from_millis(20),
        };
        let (watch, mut rx) = super::watch(
            "the keys directory".into(),
            vec![Target::dir(&keys)],
            settings,
            &metrics,
        )
        .unwrap();
        let expected = if method == Method::Poll {
            "poll"
        } else {
            "inotify"
        };
        assert_eq!(watch.method(), expected);
        // The folder appears after the start, as a late mount would.
        std::fs::create_dir(&keys).unwrap();
        next_change(&mut rx).await;
        while tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_ok()
        {}
        // Then a change inside it: seen only if the folder itself is now watched.
        kubelet_swap(&keys, 1, "sk-one");
        next_change(&mut rx).await;
    }

    #[tokio::test]
    async fn inotify_notices_swaps_and_a_late_folder() {
        notices_swaps_and_late_folders(Method::Inotify).await;
    }

    #[tokio::test]
    async fn polling_notices_swaps_and_a_late_folder() {
        notices_swaps_and_late_folders(Method::Poll).await;
    }
}
