//! The operator's one error type. Each variant knows its metric label so `/metrics` can count
//! failures by cause without parsing messages.

/// Anything a reconcile, the leader election or the admin server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What was being done, e.g. "apply configmap demo/gatehouse-config".
        action: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An object could not be serialized.
    #[error("failed to serialize {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A reflector cache never became ready.
    #[error("failed to sync the {0} cache")]
    CacheNotReady(&'static str),
    /// The admin listener could not bind.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be configured.
    #[error("failed to configure the kubernetes client: {0}")]
    Config(String),
    /// Certificates or TLS: issuing, parsing or loading.
    #[error("{0}")]
    Tls(String),
    /// Another replica took the leader lease.
    #[error("lost the leader lease to {0}")]
    LostLease(String),
}

impl Error {
    /// A `kube` error with what was being done.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// Short, bounded label for the `reason` of error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Self::Serialize { .. } => "serialize",
            Self::CacheNotReady(_) => "cache",
            Self::Bind { .. } => "bind",
            Self::Config(_) => "config",
            Self::LostLease(_) => "lease",
            Self::Tls(_) => "tls",
        }
    }
}

/// Whether a kube error is a 404 from the API server.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
