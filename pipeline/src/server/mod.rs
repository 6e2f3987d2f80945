//! Connection limits and timeouts for every listener: the OTLP/HTTP and Prometheus routers
//! ([`serve`]) and the OTLP/gRPC server ([`incoming`] with [`TrackLayer`]).
//!
//! In: a bound [`TcpListener`] and its [`Limits`]. Out: accepted connections, each wrapped in a
//! [`Conn`] that the listener's watchdog can close. Per listener:
//! - At most `max_connections` are open. At the cap a new connection closes the least recently
//!   active connection that has no request in flight (so a flood of idle or slow clients cannot
//!   keep a well-behaved one out, and nothing in flight is cut); when every connection has a
//!   request in flight, the new one is closed at once.
//! - A connection with no request in flight for `idle_timeout` is closed.
//! - HTTP: the first request's headers must arrive within `header_read_timeout` of the connection
//!   opening, a later request's (HTTP/1) within `header_read_timeout` of its first byte, else the
//!   connection is closed; a request's body must arrive within `body_read_timeout` of its headers,
//!   else it is answered 408 and the connection is closed.
//!
//! With a `tls` block ([`TlsConfig`]) the listener serves TLS ([`ServerTls`]); the handshake runs
//! inside the accepted connection, so under these same limits and timeouts.
//!
//! Every close is counted once per connection in `spindle_connections_closed_total{listener,
//! reason}`; `spindle_open_connections{listener}` is the gauge. Accept errors (such as running out
//! of file descriptors) never stop a listener: it waits a moment and accepts again. At startup
//! [`raise_open_file_limit`] lifts `RLIMIT_NOFILE`'s soft limit to the hard limit, and
//! `Config::connection_problems` checks the caps fit under it.
//!
//! [`TcpListener`]: tokio::net::TcpListener

use std::io;
use std::time::Duration;

mod body;
mod conn;
mod listener;
pub mod stats;
pub mod tls;
mod track;
mod watchdog;

pub use body::{BodyTimeout, GuardedBody};
pub use conn::{Conn, ConnInfo};
pub use listener::{GuardedListener, serve};
pub use stats::{CloseReason, ConnectionStats, ListenerKind};
pub use tls::{MinTlsVersion, ServerTls, TlsConfig};
pub use track::{Track, TrackFuture, TrackLayer, incoming};
pub use watchdog::Closer;

/// One listener's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request's headers must arrive within this (HTTP listeners; `None` for gRPC).
    pub header_read_timeout: Option<Duration>,
    /// A request's body must arrive within this from its headers (HTTP listeners; `None` for gRPC).
    pub body_read_timeout: Option<Duration>,
}

impl Limits {
    /// How often the watchdog looks at every connection: an eighth of the shortest timeout,
    /// between 10 ms and 1 s.
    fn tick(&self) -> Duration {
        let shortest = self
            .header_read_timeout
            .map_or(self.idle_timeout, |h| h.min(self.idle_timeout));
        (shortest / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The `RLIMIT_NOFILE` hard limit: how many file descriptors this process may open once its soft
/// limit is raised (`None` when unlimited or unknown).
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (_, hard) = get_nofile()?;
        (hard != libc::RLIM_INFINITY).then_some(hard as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
fn get_nofile() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    (rc == 0).then_some((rl.rlim_cur, rl.rlim_max))
}

/// Raises the `RLIMIT_NOFILE` soft limit to the hard limit, so the listeners' connection caps
/// (checked against the hard limit) can be reached. Returns the soft limit before and after.
///
/// # Errors
/// The OS error when the limit cannot be read or set.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        let (soft, hard) = get_nofile().ok_or_else(io::Error::last_os_error)?;
        if soft >= hard {
            return Ok((soft as u64, soft as u64));
        }
        let rl = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((soft as u64, hard as u64))
    }
    #[cfg(not(unix))]
    {
        Ok((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::conn::ConnState;
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(10),
        header_read_timeout: Some(Duration::from_secs(2)),
        body_read_timeout: Some(Duration::from_secs(5)),
    };
    const S: u64 = 1_000_000_000;

    fn state() -> Arc<ConnState> {
        Arc::new(ConnState::new(Instant::now(), 0, false))
    }

    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let s = state();
        let mut head = None;
        assert_eq!(s.verdict(&mut head, S, &LIMITS), None);
        assert_eq!(
            s.verdict(&mut head, 2 * S, &LIMITS),
            Some(CloseReason::HeaderReadTimeout)
        );
        // gRPC has no header timeout: only the idle timeout applies.
        let grpc = Limits {
            header_read_timeout: None,
            ..LIMITS
        };
        assert_eq!(s.verdict(&mut head, 9 * S, &grpc), None);
        assert_eq!(s.verdict(&mut head, 10 * S, &grpc), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn keep_alive_idles_for_the_idle_timeout_and_a_started_head_gets_the_header_timeout() {
        let s = state();
        let mut head = None;
        drop(s.begin(false));
        let ended = s.boundary_nanos.load(Ordering::Relaxed);
        assert_eq!(
            s.verdict(&mut head, ended + 9 * S, &LIMITS),
            None,
            "idle, not a slow header"
        );
        assert_eq!(
            s.verdict(&mut head, ended + 10 * S, &LIMITS),
            Some(CloseReason::IdleTimeout)
        );
        // A byte of the next head arrives: from when it is first seen, the header timeout runs.
        s.bytes_in.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.verdict(&mut head, ended + S, &LIMITS), None);
        assert_eq!(s.verdict(&mut head, ended + 2 * S, &LIMITS), None);
        assert_eq!(
            s.verdict(&mut head, ended + 3 * S, &LIMITS),
            Some(CloseReason::HeaderReadTimeout)
        );
    }

    #[test]
    fn a_request_in_flight_is_never_timed_out_here() {
        let s = state();
        let mut head = None;
        let g = s.begin(false);
        assert_eq!(s.verdict(&mut head, 100 * S, &LIMITS), None);
        drop(g);
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_watchdog_ticks_well_within_the_shortest_timeout() {
        assert_eq!(LIMITS.tick(), Duration::from_millis(250));
        let tiny = Limits {
            idle_timeout: Duration::from_millis(1),
            ..LIMITS
        };
        assert_eq!(tiny.tick(), Duration::from_millis(10));
    }

    #[test]
    fn caps_that_do_not_fit_the_open_file_limit_are_a_problem_with_key_and_hint() {
        let mut c = crate::config::Config::default();
        // Defaults: 1024 + 1024 + 256 + 256 reserved.
        assert_eq!(c.connection_problems(Some(2560)), vec![]);
        assert_eq!(c.connection_problems(None), vec![]);
        let p = c.connection_problems(Some(2559));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "receivers.otlp.http.max_connections", "the largest cap");
        assert!(
            p[0].message.contains("2304") && p[0].message.contains("2559"),
            "{}",
            p[0].message
        );
        assert!(p[0].hint.contains("LimitNOFILE"), "{}", p[0].hint);
        c.prometheus.max_connections = 0;
        c.receivers.otlp.http.header_read_timeout = crate::config::DurationStr(Duration::ZERO);
        let paths: Vec<String> = c.connection_problems(None).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["prometheus.max_connections", "receivers.otlp.http.header_read_timeout"]
        );
        // And `validate` (so `spindle validate` and startup) reports them.
        assert!(c.validate().iter().any(|p| p.path == "prometheus.max_connections"));
    }

    #[test]
    fn the_open_file_limit_can_be_raised_to_the_hard_limit() {
        let (_, after) = raise_open_file_limit().unwrap();
        if let Some(hard) = open_file_limit() {
            assert_eq!(after, hard);
        }
    }
}
