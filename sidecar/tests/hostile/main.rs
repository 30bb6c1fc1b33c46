//! Hostile peers against the sidecar binary (issue #9): upstreams that never end a body, a line or
//! their headers, or echo the credentials they were sent; clients that stall (slowloris), flood
//! idle connections, send million-element arrays or thousands of unknown parameters. Each case
//! asserts peak RSS (from `/proc`), the time to a clean answer, that normal requests beside it stay
//! served, and that no key reaches any byte the client or the log received.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod clients;
mod proc;
mod requests;
mod upstreams;
