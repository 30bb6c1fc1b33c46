//! The connector under the TLS layer: straight to the provider, or through an HTTP proxy (a
//! CONNECT tunnel for https, the request itself in absolute form for http).
//!
//! Which proxy, if any, is decided per destination when a connection is opened, never per
//! request: pooled connections are reused as they are, so a provider without a proxy costs
//! nothing more than before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where connections for a destination go.
pub enum ProxyRoute {
    /// Straight to the destination.
    Direct,
    /// As `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (and their lower-case forms) say.
    Env(Matcher),
    /// Always through this proxy (a ModelProvider's `spec.proxy.url`).
    Fixed {
        /// `http://host:port/`.
        uri: Uri,
        /// `Proxy-Authorization` value, marked sensitive.
        auth: Option<HeaderValue>,
    },
}

impl std::fmt::Debug for ProxyRoute {
    // Never the credentials (the matcher's own Debug leaves them out too).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct => f.write_str("Direct"),
            Self::Env(m) => f.debug_tuple("Env").field(m).finish(),
            Self::Fixed { uri, auth } => f
                .debug_struct("Fixed")
                .field("uri", uri)
                .field(
                    "auth",
                    &auth.as_ref().map(|_| gatehouse_crds::keys::Redacted),
                )
                .finish(),
        }
    }
}

impl ProxyRoute {
    /// The proxy for `dst` and its credentials, or `None` to connect directly.
    pub fn via(&self, dst: &Uri) -> Option<(Uri, Option<HeaderValue>)> {
        match self {
            Self::Direct => None,
            Self::Env(matcher) => matcher
                .intercept(dst)
                .map(|i| (i.uri().clone(), i.basic_auth().cloned())),
            Self::Fixed { uri, auth } => Some((uri.clone(), auth.clone())),
        }
    }

    /// The environment's proxy settings, looked up through `env` (the process environment in
    /// production, a map in tests). Upper case wins over lower case, as curl does.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.is_empty()))
                .unwrap_or_default()
        };
        let https = first(["HTTPS_PROXY", "https_proxy"]);
        let http = first(["HTTP_PROXY", "http_proxy"]);
        let all = first(["ALL_PROXY", "all_proxy"]);
        if https.is_empty() && http.is_empty() && all.is_empty() {
            return Self::Direct;
        }
        let matcher = Matcher::builder()
            .all(all)
            .https(https)
            .http(http)
            .no(first(["NO_PROXY", "no_proxy"]))
            .build();
        Self::Env(matcher)
    }
}

/// Why a connection could not be opened. No credentials in any message: the proxy is named by
/// host and port only.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting to the provider (or to the proxy, for an http endpoint) failed.
    #[error("{0}")]
    Direct(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The proxy answered the CONNECT with 407 (or 401, as some proxies do): it refused the
    /// configured credentials, or wanted some. Fails over like any connect error.
    #[error(
        "the egress proxy {proxy} refused the gateway's credentials ({status} to CONNECT; 407 Proxy Authentication Required)"
    )]
    ProxyAuth {
        /// `host:port` of the proxy.
        proxy: String,
        /// Its status.
        status: u16,
    },
    /// The proxy refused the tunnel with another status.
    #[error("the egress proxy {proxy} refused to open a tunnel (status {status} to CONNECT)")]
    Refused {
        /// `host:port` of the proxy.
        proxy: String,
        /// Its status.
        status: u16,
    },
    /// The CONNECT exchange broke.
    #[error("failed to open a tunnel through the egress proxy {proxy}: {reason}")]
    Tunnel {
        /// `host:port` of the proxy.
        proxy: String,
        /// Why.
        reason: String,
    },
    /// The proxy did not answer the CONNECT in time.
    #[error("the egress proxy {proxy} did not open a tunnel within {ms} ms")]
    TunnelTimeout {
        /// `host:port` of the proxy.
        proxy: String,
        /// The bound, in milliseconds.
        ms: u64,
    },
    /// The proxy URL is not an `http://` one (https and SOCKS proxies are not supported).
    #[error("the egress proxy {0} is not an http:// proxy; only http:// proxies are supported")]
    Scheme(String),
}

/// A connection the client pools: a TCP stream, marked as going to a proxy when requests on it
/// must use the absolute form (http through a proxy; a CONNECT tunnel is not).
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The connector: TCP (with the connect timeout), through the route's proxy when it has one.
#[derive(Clone, Debug)]
pub struct Connector {
    http: HttpConnector,
    route: Arc<ProxyRoute>,
    timeout: Duration,
}

impl Connector {
    /// A connector with `connect_timeout` for TCP connects and, through a proxy, the same
    /// again for the CONNECT exchange.
    pub fn new(connect_timeout: Duration, route: Arc<ProxyRoute>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Self {
            http,
            route,
            timeout: connect_timeout,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

fn host_port(uri: &Uri) -> String {
    match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "(no host)".to_string(),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http
            .poll_ready(cx)
            .map_err(|e| ConnectError::Direct(Box::new(e)))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let Some((proxy, auth)) = self.route.via(&dst) else {
            return Box::pin(async move {
                let io = http
                    .call(dst)
                    .await
                    .map_err(|e| ConnectError::Direct(Box::new(e)))?;
                Ok(Conn { io, proxied: false })
            });
        };
        let name = host_port(&proxy);
        if proxy.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Box::pin(async move { Err(ConnectError::Scheme(name)) });
        }
        if dst.scheme() != Some(&http::uri::Scheme::HTTPS) {
            // Plain http: the request goes to the proxy in absolute form; the client adds the
            // proxy's credentials to the request (`Provider::proxy_authorization`).
            return Box::pin(async move {
                let io = http
                    .call(proxy)
                    .await
                    .map_err(|e| ConnectError::Direct(Box::new(e)))?;
                Ok(Conn { io, proxied: true })
            });
        }
        let timeout = self.timeout;
        Box::pin(async move {
            // TCP to the proxy is bounded by the connector's own timeout; this bounds the
            // whole, CONNECT exchange included (a proxy that accepts and never answers).
            match tokio::time::timeout(timeout * 2, tunnel(http, proxy, &dst, auth, &name)).await {
                Ok(Ok(io)) => Ok(Conn { io, proxied: false }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectError::TunnelTimeout {
                    proxy: name,
                    ms: (timeout * 2).as_millis() as u64,
                }),
            }
        })
    }
}

/// Most bytes of the proxy's answer to a CONNECT.
const MAX_CONNECT_RESPONSE: usize = 8192;

/// Open a CONNECT tunnel to `dst` through `proxy`.
async fn tunnel(
    mut http: HttpConnector,
    proxy: Uri,
    dst: &Uri,
    auth: Option<HeaderValue>,
    name: &str,
) -> Result<TokioIo<TcpStream>, ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_service::Service;
    let broke = |reason: String| ConnectError::Tunnel {
        proxy: name.to_string(),
        reason,
    };
    let Some(host) = dst.host() else {
        return Err(broke("the destination has no host".into()));
    };
    let target = format!("{host}:{}", dst.port_u16().unwrap_or(443));
    let mut tcp = http
        .call(proxy)
        .await
        .map_err(|e| ConnectError::Direct(Box::new(e)))?
        .into_inner();
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = &auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    tcp.write_all(&head)
        .await
        .map_err(|e| broke(format!("failed to send CONNECT: {e}")))?;
    let mut buf = vec![0u8; MAX_CONNECT_RESPONSE];
    let mut filled = 0;
    loop {
        let n = tcp
            .read(&mut buf[filled..])
            .await
            .map_err(|e| broke(format!("failed to read the answer to CONNECT: {e}")))?;
        if n == 0 {
            return Err(broke("the proxy closed the connection".into()));
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let status = response.code.unwrap_or(0);
                return match status {
                    200..=299 => Ok(TokioIo::new(tcp)),
                    401 | 407 => Err(ConnectError::ProxyAuth {
                        proxy: name.to_string(),
                        status,
                    }),
                    _ => Err(ConnectError::Refused {
                        proxy: name.to_string(),
                        status,
                    }),
                };
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => {}
            Ok(httparse::Status::Partial) => {
                return Err(broke("the answer to CONNECT is too large".into()));
            }
            Err(_) => return Err(broke("the answer to CONNECT is not HTTP".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_environment_picks_the_proxy_by_scheme_and_no_proxy_bypasses_it() {
        let route = ProxyRoute::from_env(&env(&[
            ("HTTPS_PROXY", "http://user:secret-pw@proxy.corp:3128"),
            ("http_proxy", "http://plain.corp:8080"),
            ("NO_PROXY", "internal.corp,10.0.0.0/8"),
        ]));
        let (uri, auth) = route
            .via(&"https://api.openai.com/v1".parse().unwrap())
            .unwrap();
        assert_eq!(host_port(&uri), "proxy.corp:3128");
        assert!(auth.unwrap().is_sensitive());
        let (uri, auth) = route
            .via(&"http://vllm.models:8000/v1".parse().unwrap())
            .unwrap();
        assert_eq!(host_port(&uri), "plain.corp:8080");
        assert!(auth.is_none());
        assert!(
            route
                .via(&"https://llm.internal.corp/v1".parse().unwrap())
                .is_none()
        );
        assert!(route.via(&"https://10.1.2.3/v1".parse().unwrap()).is_none());
        assert!(!format!("{route:?}").contains("secret-pw"), "{route:?}");
    }

    #[test]
    fn upper_case_wins_and_no_variable_means_direct() {
        let route = ProxyRoute::from_env(&env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
        ]));
        let (uri, _) = route.via(&"https://x.test/".parse().unwrap()).unwrap();
        assert_eq!(host_port(&uri), "upper:1");
        assert!(matches!(
            ProxyRoute::from_env(&env(&[])),
            ProxyRoute::Direct
        ));
    }
}
