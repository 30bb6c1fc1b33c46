//! [`TlsFront`]: TLS in front of a mock provider (or any loopback server), for tests of private
//! CAs, mTLS and certificate rotation. It terminates TLS with a `rustls::ServerConfig` the test
//! builds (and may swap while running: new connections get the new one) and relays the plain
//! bytes to the backend, which answers as usual and records what it received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// TLS in front of a backend on loopback. Stops when dropped.
#[derive(Debug)]
pub struct TlsFront {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    config: Mutex<Arc<rustls::ServerConfig>>,
    generation: AtomicU64,
    handshakes: AtomicU64,
    failed: AtomicU64,
    server_names: Mutex<Vec<Option<String>>>,
    per_generation: Mutex<Vec<u64>>,
}

impl TlsFront {
    /// Listen on `127.0.0.1:0`, relay to `backend`.
    pub async fn start(backend: SocketAddr, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: Mutex::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            server_names: Mutex::new(Vec::new()),
            per_generation: Mutex::new(vec![0]),
        });
        let task = tokio::spawn(accept(listener, backend, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve new connections with `config` (a rotated certificate); open ones keep theirs.
    pub fn set_config(&self, config: rustls::ServerConfig) {
        if let Ok(mut c) = self.shared.config.lock() {
            *c = Arc::new(config);
        }
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut g) = self.shared.per_generation.lock() {
            g.push(0);
        }
    }

    /// Completed handshakes.
    pub fn handshakes(&self) -> u64 {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// Completed handshakes per config (index 0: the first, then one per [`set_config`](Self::set_config)).
    pub fn handshakes_per_config(&self) -> Vec<u64> {
        self.shared
            .per_generation
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Handshakes that failed (an untrusted certificate, a missing client certificate).
    pub fn failed_handshakes(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// The SNI of every completed handshake, in order.
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.shared
            .server_names
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, backend: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let (config, generation) = match shared.config.lock() {
            Ok(c) => (Arc::clone(&c), shared.generation.load(Ordering::SeqCst)),
            Err(_) => continue,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let mut tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(_) => {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            shared.handshakes.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut g) = shared.per_generation.lock()
                && let Some(n) = usize::try_from(generation).ok().and_then(|i| g.get_mut(i))
            {
                *n += 1;
            }
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            if let Ok(mut names) = shared.server_names.lock() {
                names.push(sni);
            }
            let Ok(mut plain) = TcpStream::connect(backend).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}
