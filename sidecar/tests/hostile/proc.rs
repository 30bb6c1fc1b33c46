//! The sidecar binary as a process: started over a manifests folder, its log kept whole (so a test
//! can assert that no secret reached any line), its memory read from `/proc/<pid>/status`.

#![allow(dead_code, reason = "each module of the suite uses a different part")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `gatehouse-sidecar` process.
pub struct SidecarProc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Where the proxy listens.
    pub proxy: String,
    /// Where the admin port listens.
    pub admin: String,
    _dir: Option<tempfile::TempDir>,
}

impl SidecarProc {
    /// Start over `manifests` (YAML text written to a temp dir) with extra flags, and wait until it
    /// listens and has applied a config.
    pub fn start(manifests: &str, extra_args: &[&str]) -> Self {
        Self::start_with_env(manifests, extra_args, &[])
    }

    /// [`Self::start`] with extra environment variables (`GATEHOUSE_*` flags).
    pub fn start_with_env(manifests: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gatehouse.yaml"), manifests).unwrap();
        let mut proc = Self::spawn_with_env(dir.path(), extra_args, env);
        proc._dir = Some(dir);
        proc
    }

    /// Start over an existing manifests path.
    pub fn spawn(manifests: &Path, extra_args: &[&str]) -> Self {
        Self::spawn_with_env(manifests, extra_args, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(manifests: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse-sidecar"))
            .arg("--manifests")
            .arg(manifests)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra_args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Lines are read as bytes: a log line that is not UTF-8 must still be checked.
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).trim_end().to_string());
                    line.clear();
                }
            });
        }
        let mut proc = Self {
            child,
            log,
            proxy: String::new(),
            admin: String::new(),
            _dir: None,
        };
        let listening = proc.wait_log(Duration::from_secs(20), |j| {
            j["message"] == "gatehouse-sidecar listening"
        });
        proc.proxy = listening["proxy_addr"].as_str().unwrap().to_string();
        proc.admin = listening["admin_addr"].as_str().unwrap().to_string();
        proc.wait_log(Duration::from_secs(20), |j| {
            j["message"] == "configuration applied"
        });
        proc
    }

    /// The manifests file written by [`Self::start`] (edit it to make the sidecar reload).
    pub fn manifest_path(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("gatehouse.yaml"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<proxy><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The first JSON log line satisfying `f`, waiting up to `wait`.
    pub fn wait_log(
        &self,
        wait: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + wait;
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .filter(|j| f(j))
            });
            if let Some(j) = found {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "no such log line within {wait:?}; log so far:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Current resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident set size in KiB since start or the last [`Self::reset_peak`] (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Reset the peak RSS to the current RSS (`echo 5 > /proc/<pid>/clear_refs`).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait for exit, and return the whole log.
    pub fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader threads drain what the process wrote last.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for SidecarProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
