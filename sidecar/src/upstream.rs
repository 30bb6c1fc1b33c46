//! The pooled HTTP client used to reach providers (rustls, HTTP/1.1 and HTTP/2 by ALPN).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Most bytes of an HTTP/1 response head (and of one read): hyper's default, set here so that
/// the bound on an upstream that never ends its headers is written down. Over it the call fails
/// ("message head is too large") and the attempt fails over.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Most header lines of an HTTP/1 response head (hyper's default); over it the call fails.
pub const MAX_HEADERS: usize = 100;

/// Most bytes of an HTTP/2 response's header list (hyper's client default).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Client for upstream calls.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Build the shared upstream client.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http1_max_buf_size(MAX_HEAD_BYTES)
        .http1_max_headers(MAX_HEADERS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .build(https)
}
