//! Child processes under test and what they cost: RSS, peak RSS, CPU time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    /// Display name.
    pub name: String,
    child: Child,
}

impl Proc {
    /// Start `program` with `args`, output discarded (stderr to `log` if given).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("failed to start {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Start a command line (for peers run through an interpreter).
    pub fn spawn_cmd(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let child = cmd
            .stdout(Stdio::from(std::fs::File::create(log)?))
            .stderr(Stdio::from(std::fs::File::create(
                log.with_extension("err"),
            )?))
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size and its peak, in KiB, summed over the process and its descendants
    /// (peers run worker processes).
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let mut rss = 0;
        let mut hwm = 0;
        for pid in tree(self.pid()) {
            let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
                Ok(s) => s,
                Err(_) => continue,
            };
            rss += field_kib(&status, "VmRSS:");
            hwm += field_kib(&status, "VmHWM:");
        }
        Ok((rss, hwm))
    }

    /// Reset the peak RSS (`VmHWM`) of the process so the next reading covers only what follows.
    pub fn reset_peak(&self) -> anyhow::Result<()> {
        for pid in tree(self.pid()) {
            // "5" resets the peak resident set size (proc(5), clear_refs).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        Ok(())
    }

    /// CPU time (user + system) consumed so far by the process tree.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        // Nanoseconds on a CPU per thread (`schedstat`); the clock ticks of `stat` (10 ms)
        // where that cannot be read. A tick is as much as a few µs per request of a short round.
        let mut total = Duration::ZERO;
        for pid in tree(self.pid()) {
            total += schedstat(pid).unwrap_or_else(|| ticks(pid));
        }
        Ok(total)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Time on a CPU of every live thread of `pid`, from `/proc/<pid>/task/*/schedstat`; `None`
/// where the kernel has none.
fn schedstat(pid: u32) -> Option<Duration> {
    let mut ns = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread that ended since the listing is skipped.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(run) = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            ns = Some(ns.unwrap_or(0) + run);
        }
    }
    ns.map(Duration::from_nanos)
}

/// User plus system time of `pid` in clock ticks, from `/proc/<pid>/stat`.
fn ticks(pid: u32) -> Duration {
    let ticks_per_sec = 100.0; // USER_HZ on Linux x86_64
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64((utime + stime) as f64 / ticks_per_sec)
}

impl Drop for Proc {
    fn drop(&mut self) {
        for pid in tree(self.pid()).into_iter().rev() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        let _ = self.child.wait();
    }
}

fn field_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        if let Ok(children) =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        {
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    out
}

/// Poll `url` (plain HTTP GET on loopback) until it answers 2xx; returns how long it took.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .context("url without authority")?
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(&authority).await
            && let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<
                _,
                http_body_util::Empty<bytes::Bytes>,
            >(hyper_util::rt::TokioIo::new(stream))
            .await
        {
            tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, authority.as_str())
                .body(http_body_util::Empty::new())?;
            if let Ok(resp) = sender.send_request(req).await
                && resp.status().is_success()
            {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > timeout {
            bail!("{url} did not become ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The release binaries built beside this one (the same target directory, wherever
/// `CARGO_TARGET_DIR` put it), or those of `GATEHOUSE_BENCH_BIN_DIR` when set (to measure a build
/// from another checkout).
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("GATEHOUSE_BENCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run cargo build --release -p gatehouse-sidecar -p gatehouse-mock-provider",
            path.display()
        );
    }
    Ok(path)
}
