//! File descriptors: the open-file limit, and the default connection cap derived from it.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept out of the proxy's share: the admin port's connections, the runtime's own
/// (epoll, eventfd), the log, the manifests watcher and the files it reads, the kube client, DNS.
pub const RESERVED: u64 = 128;

/// Ceiling of the derived default: an idle HTTP/1 connection still holds hyper's buffers, a task
/// and socket state (an estimate of ~10 KiB each, not yet measured: see the bench), so this keeps
/// what idle connections can hold near 100 MiB; an app that needs more connections to its own
/// sidecar sets `--max-connections`.
pub const DEFAULT_CEILING: usize = 8192;

/// Connections the admin port accepts at once: probes and scrapes need a handful.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;

/// Raise the soft open-file limit to the hard one (a no-op when they are equal, the usual case in
/// a container). Returns the soft limit now in force, `None` when unlimited.
pub fn raise_nofile() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "failed to raise the open-file limit");
        }
    }
    nofile()
}

/// The soft open-file limit in force, `None` when unlimited.
pub fn nofile() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// The default `--max-connections` for an open-file limit: every proxied request may hold a
/// second descriptor for its upstream connection, so half of what is left after [`RESERVED`],
/// at least 16 and at most [`DEFAULT_CEILING`].
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return DEFAULT_CEILING;
    };
    let share = nofile.saturating_sub(RESERVED) / 2;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(16, DEFAULT_CEILING)
}

/// Whether an accept error means the process or system is out of descriptors or memory for
/// sockets (as opposed to one connection that failed on its own).
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
            .iter()
            .any(|errno| errno.raw_os_error() == code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_upstreams_and_the_admin_port() {
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(20_000)), DEFAULT_CEILING);
        assert_eq!(default_max_connections(Some(1 << 20)), DEFAULT_CEILING);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(None), DEFAULT_CEILING);
    }

    #[test]
    fn out_of_descriptors_is_exhaustion_a_reset_is_not() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(is_exhaustion(&emfile));
        assert!(!is_exhaustion(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        assert_eq!(raise_nofile(), hard);
    }
}
