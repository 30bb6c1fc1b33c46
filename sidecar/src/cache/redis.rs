//! The shared backend: Redis, through a small RESP2 client (`GET`, `SET … PX`, `AUTH`,
//! `SELECT`; nothing else is needed, and a client crate would bring a connection manager and
//! its own runtime glue for four commands).
//!
//! Every call is bounded by `--cache-redis-timeout-ms` (connecting and authenticating
//! included). A call that fails or times out is a bypass for that request, never an error, and
//! marks Redis down for [`DOWN_FOR`]: requests then bypass at once, without trying, so a Redis
//! that is gone costs nothing but one timeout per interval; the first call after it tries
//! again, so hits resume within about a second of Redis coming back. Idle connections are
//! kept for reuse (at most [`MAX_IDLE`]). The password is read from its file at each new
//! connection (a rotated Secret takes effect without a restart) and never logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Entry, Key};
use crate::metrics::Metrics;

/// How long Redis is skipped after a failed call.
pub const DOWN_FOR: Duration = Duration::from_secs(1);
/// Idle connections kept.
const MAX_IDLE: usize = 16;
/// Largest value read back (a Redis shared with something else cannot make the sidecar
/// allocate without bound).
const MAX_VALUE: usize = 256 * 1024 * 1024;
/// Prefix of every key the cache writes.
const PREFIX: &str = "gatehouse:cache:v1:";

/// Where Redis is and how long a call may take.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port`.
    pub addr: String,
    /// Redis ACL user; `None`: the default user.
    pub username: Option<String>,
    /// File holding the password (a mounted Secret key); `None`: no `AUTH`.
    pub password_file: Option<PathBuf>,
    /// Database number (`SELECT`).
    pub db: u32,
    /// Longest a lookup or store may take, connecting included.
    pub timeout: Duration,
}

/// Why a call failed (the metric's `reason`).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("failed to connect to redis: {0}")]
    Connect(std::io::Error),
    #[error("failed to read the redis password file: {0}")]
    Password(std::io::Error),
    #[error("redis refused to authenticate: {0}")]
    Auth(String),
    #[error("failed to talk to redis: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    #[error("redis is marked down")]
    Down,
}

impl CallError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Password(_) | Self::Auth(_) => "auth",
            Self::Io(_) | Self::Protocol(_) => "protocol",
            Self::Down => "down",
        }
    }
}

/// One reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

/// A Redis client.
#[derive(Debug)]
pub struct Redis {
    settings: Settings,
    idle: Mutex<Vec<BufStream<TcpStream>>>,
    down_until: Mutex<Option<Instant>>,
}

impl Redis {
    /// A client of the Redis at `settings` (nothing is connected until the first call).
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            idle: Mutex::default(),
            down_until: Mutex::default(),
        }
    }

    /// The entry of `key`: `Some(None)` when there is none (or it cannot be read back),
    /// `None` when Redis failed (counted; the request bypasses the cache).
    pub async fn get(self: &Arc<Self>, key: &Key, metrics: &Metrics) -> Option<Option<Entry>> {
        let name = format!("{PREFIX}{}", key.hex());
        match self.call(&[b"GET", name.as_bytes()]).await {
            Ok(Reply::Bulk(None)) => Some(None),
            Ok(Reply::Bulk(Some(v))) => Some(decode(Bytes::from(v))),
            Ok(other) => {
                self.failed("get", &CallError::Protocol(format!("{other:?}")), metrics);
                None
            }
            Err(e) => {
                self.failed("get", &e, metrics);
                None
            }
        }
    }

    /// Store `entry` under `key` for `ttl` (failures are counted and otherwise ignored).
    pub async fn put(self: &Arc<Self>, key: &Key, entry: &Entry, ttl: Duration, metrics: &Metrics) {
        let name = format!("{PREFIX}{}", key.hex());
        let value = encode(entry);
        let ms = ttl.as_millis().max(1).to_string();
        match self
            .call(&[b"SET", name.as_bytes(), &value, b"PX", ms.as_bytes()])
            .await
        {
            Ok(Reply::Status(s)) if s == "OK" => {}
            Ok(other) => self.failed("set", &CallError::Protocol(format!("{other:?}")), metrics),
            Err(e) => self.failed("set", &e, metrics),
        }
    }

    fn failed(&self, op: &'static str, e: &CallError, metrics: &Metrics) {
        metrics.cache.count_error("redis", op, e.reason());
        if matches!(e, CallError::Down) {
            return;
        }
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + DOWN_FOR);
        tracing::warn!(addr = %self.settings.addr, op, error = %e, "cache backend failed; requests bypass the cache for a second");
    }

    async fn call(&self, args: &[&[u8]]) -> Result<Reply, CallError> {
        if self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(CallError::Down);
        }
        let work = async {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let reply = command(&mut conn, args).await?;
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            Ok(reply)
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn connect(&self) -> Result<BufStream<TcpStream>, CallError> {
        let tcp = TcpStream::connect(&self.settings.addr)
            .await
            .map_err(CallError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut conn = BufStream::new(tcp);
        if let Some(path) = &self.settings.password_file {
            let password = tokio::fs::read_to_string(path)
                .await
                .map_err(CallError::Password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let reply = match &self.settings.username {
                Some(user) => {
                    command(&mut conn, &[b"AUTH", user.as_bytes(), password.as_bytes()]).await
                }
                None => command(&mut conn, &[b"AUTH", password.as_bytes()]).await,
            };
            match reply {
                Ok(Reply::Status(s)) if s == "OK" => {}
                // Redis's own message (never the password).
                Ok(other) => return Err(CallError::Auth(format!("{other:?}"))),
                Err(CallError::Protocol(m)) => return Err(CallError::Auth(m)),
                Err(e) => return Err(e),
            }
        }
        if self.settings.db != 0 {
            let db = self.settings.db.to_string();
            match command(&mut conn, &[b"SELECT", db.as_bytes()]).await? {
                Reply::Status(s) if s == "OK" => {}
                other => return Err(CallError::Protocol(format!("SELECT: {other:?}"))),
            }
        }
        Ok(conn)
    }
}

/// Send one command and read its reply. A Redis error reply is `Protocol` with its message.
async fn command(conn: &mut BufStream<TcpStream>, args: &[&[u8]]) -> Result<Reply, CallError> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.write_all(&out).await?;
    conn.flush().await?;
    let mut line = Vec::new();
    let n = conn.read_until(b'\n', &mut line).await?;
    if n == 0 || !line.ends_with(b"\r\n") {
        return Err(CallError::Protocol("connection closed".into()));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'+' => Ok(Reply::Status(text)),
        b'-' => Err(CallError::Protocol(text)),
        b':' => text
            .parse()
            .map(Reply::Int)
            .map_err(|_| CallError::Protocol(format!("bad integer {text:?}"))),
        b'$' => {
            let len: i64 = text
                .parse()
                .map_err(|_| CallError::Protocol(format!("bad length {text:?}")))?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_VALUE {
                return Err(CallError::Protocol(format!(
                    "value of {len} bytes is too large"
                )));
            }
            let mut value = vec![0; len + 2];
            conn.read_exact(&mut value).await?;
            value.truncate(len);
            Ok(Reply::Bulk(Some(value)))
        }
        other => Err(CallError::Protocol(format!(
            "unexpected reply type {:?}",
            char::from(other)
        ))),
    }
}

/// What Redis holds of an entry: a version line, a JSON line with the metadata, the body.
fn encode(entry: &Entry) -> Vec<u8> {
    let meta = serde_json::json!({
        "provider": &*entry.provider,
        "model": &*entry.model,
        "tokens": entry.tokens,
        "at": entry.stored_at_ms,
    });
    let mut out = Vec::with_capacity(entry.body.len() + 128);
    out.extend_from_slice(b"v1\n");
    out.extend_from_slice(meta.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&entry.body);
    out
}

/// An entry read back; `None` when it is not one this version wrote.
fn decode(value: Bytes) -> Option<Entry> {
    #[derive(serde::Deserialize)]
    struct Meta {
        provider: String,
        model: String,
        tokens: [u64; 5],
        at: u64,
    }
    let rest = value.strip_prefix(b"v1\n")?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let meta: Meta = serde_json::from_slice(&rest[..nl]).ok()?;
    let start = 3 + nl + 1;
    Some(Entry {
        body: value.slice(start..),
        tokens: meta.tokens,
        provider: Arc::from(meta.provider),
        model: Arc::from(meta.model),
        stored_at_ms: meta.at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_encoding() {
        let entry = Entry {
            body: Bytes::from_static(b"{\"a\":\"b\\n\"}\n"),
            tokens: [1, 2, 3, 4, 5],
            provider: Arc::from("p"),
            model: Arc::from("m"),
            stored_at_ms: 42,
        };
        assert_eq!(decode(Bytes::from(encode(&entry))), Some(entry));
        assert_eq!(decode(Bytes::from_static(b"v0\n{}\n")), None);
    }
}
