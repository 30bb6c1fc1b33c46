//! Where audit lines go: stdout and/or a file rotated by size, written by a thread of their own
//! so the request path never waits on a disk.
//!
//! Lines are queued (at most [`QUEUE_LINES`]); a full queue (a disk that cannot keep up) drops
//! the line and counts it in `gatehouse_audit_lines_dropped_total` rather than slow requests
//! down. Rotation: when the file would grow past `max_bytes`, `audit.log` becomes `audit.log.1`,
//! `.1` becomes `.2` and so on up to `keep`, the oldest is deleted and a new file is started.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus_client::metrics::counter::Counter;

/// Lines waiting for the writer at most.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Where audit lines go.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Write each line to stdout.
    pub stdout: bool,
    /// Write each line to this file, rotated.
    pub file: Option<PathBuf>,
    /// Rotate the file before it grows past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

impl Settings {
    /// Whether lines go anywhere.
    pub fn enabled(&self) -> bool {
        self.stdout || self.file.is_some()
    }
}

/// Why the audit file could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("failed to open audit log {path}: {source}")]
pub struct OpenError {
    path: PathBuf,
    source: std::io::Error,
}

/// Hands lines to the writer thread.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    dropped: Counter,
}

impl Sink {
    /// Start the writer thread (the file is opened now, so a bad path fails the start).
    pub fn start(settings: Settings, dropped: Counter) -> Result<Self, OpenError> {
        let file = match &settings.file {
            Some(path) => Some(Rotating::open(path, settings.max_bytes, settings.keep)?),
            None => None,
        };
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let stdout = settings.stdout;
        std::thread::Builder::new()
            .name("gatehouse-audit".into())
            .spawn(move || write_lines(rx, stdout, file))
            .map_err(|source| OpenError {
                path: settings.file.clone().unwrap_or_default(),
                source,
            })?;
        Ok(Self { tx, dropped })
    }

    /// Queue one line (without its newline); dropped and counted when the queue is full.
    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, stdout: bool, mut file: Option<Rotating>) {
    let mut batch = Vec::new();
    while let Ok(line) = rx.recv() {
        batch.clear();
        batch.extend_from_slice(&line);
        batch.push(b'\n');
        // Whatever else is already queued goes in the same writes.
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    batch.push(b'\n');
                }
                Err(_) => break,
            }
        }
        if stdout {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
                tracing::warn!(error = %e, "failed to write audit lines to stdout");
            }
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = f.write(&batch)
        {
            tracing::warn!(path = %f.path.display(), error = %e, "failed to write audit lines");
        }
    }
}

/// A file rotated by size.
#[derive(Debug)]
struct Rotating {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl Rotating {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, OpenError> {
        let file = open_append(path).map_err(|source| OpenError {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            size,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    /// Write whole lines; rotate first when they would not fit (a batch larger than the limit
    /// goes into a fresh file on its own).
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + lines.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(lines)?;
        self.out.flush()?;
        self.size += lines.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let name = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for n in (1..self.keep).rev() {
                let from = name(n);
                if from.exists() {
                    std::fs::rename(&from, name(n + 1))?;
                }
            }
            std::fs::rename(&self.path, name(1))?;
        }
        self.out = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `t` (since the Unix epoch) as RFC 3339 UTC with milliseconds, `2026-11-29T21:37:12.345Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for dates from 1970 on.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_utc() {
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        assert_eq!(rfc3339(t(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(t(1_795_988_232, 345)), "2026-11-29T21:37:12.345Z");
        assert_eq!(rfc3339(t(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = Rotating::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            f.write(format!("{i:0>59}\n").as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path).lines().count(), 1);
        assert!(read(&path).starts_with("000"));
        let one = dir.path().join("audit.log.1");
        let two = dir.path().join("audit.log.2");
        assert!(one.exists() && two.exists());
        assert!(!dir.path().join("audit.log.3").exists());
        // The newest rotated file holds the line before the current one.
        assert!(read(&one).trim_end().ends_with('8'), "{}", read(&one));
        assert!(read(&two).trim_end().ends_with('7'), "{}", read(&two));
    }
}
