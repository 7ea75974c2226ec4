//! The daemon's HTTP endpoint, hardened: TLS, basic auth and response headers from an
//! exporter-toolkit web config file, and a server that bounds what clients can hold.
//!
//! memtrace runs as root or with `CAP_BPF`/`CAP_PERFMON` on every node, so its port is
//! worth protecting and must not be the easy way to take the node's memory or file
//! descriptors. Instead of `axum::serve` (no connection cap, no timeouts), memtrace runs its
//! own accept loop over hyper's HTTP/1 connections ([`server`]), serving the axum `Router`:
//!
//! - at most `--web.max-connections` connections; a connection arriving at the cap closes
//!   the one that has been idle longest (no request in flight: waiting between requests, or
//!   still sending headers), so idle and slow clients cannot lock Prometheus out; only when
//!   every connection has a request in flight does the new one wait;
//! - `--web.read-header-timeout` for a new connection's TLS handshake and first request
//!   headers, and for any later request's headers from their first byte;
//!   `--web.idle-timeout` between requests on a keep-alive connection;
//! - request headers of at most `--web.max-header-bytes` (431 beyond), and no request body
//!   (every endpoint is a GET: 413);
//! - the web config file ([`config`], [`tls`], [`auth`]), reloaded when it changes and on
//!   SIGHUP ([`reload`]).
//!
//! [`Web::prepare`] does everything that can fail before the daemon loads anything into the
//! kernel: a bad web config file is one line and a non-zero exit at start.

pub mod auth;
pub mod config;
pub mod reload;
pub mod server;
pub mod tls;

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::cmd::units::parse_seconds;

pub use server::{Options, serve};

/// The `--web.*` flags of `memtrace daemon` beyond the listen address and telemetry path:
/// the web config file and the server's bounds.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// The Prometheus exporter-toolkit's web config file (YAML): TLS, client certificates,
    /// basic auth, response headers. Reloaded when it or a file it names changes, and on
    /// SIGHUP.
    #[arg(
        long = "web.config.file",
        env = "MEMTRACE_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,
    /// Seconds a new connection has for its TLS handshake and first request headers, and a
    /// later request for its headers from their first byte; then it is closed.
    #[arg(
        long = "web.read-header-timeout",
        env = "MEMTRACE_WEB_READ_HEADER_TIMEOUT",
        default_value_t = 10.0,
        value_parser = parse_seconds,
        value_name = "SECONDS"
    )]
    pub read_header_timeout: f64,
    /// Seconds a keep-alive connection may wait for its next request; then it is closed.
    #[arg(
        long = "web.idle-timeout",
        env = "MEMTRACE_WEB_IDLE_TIMEOUT",
        default_value_t = 120.0,
        value_parser = parse_seconds,
        value_name = "SECONDS"
    )]
    pub idle_timeout: f64,
    /// Most connections open at once; at the cap a new connection closes the idlest one.
    #[arg(
        long = "web.max-connections",
        env = "MEMTRACE_WEB_MAX_CONNECTIONS",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        value_name = "N"
    )]
    pub max_connections: u32,
    /// Most bytes of a request's line and headers; a larger request gets 431.
    #[arg(
        long = "web.max-header-bytes",
        env = "MEMTRACE_WEB_MAX_HEADER_BYTES",
        default_value_t = 16384,
        value_parser = clap::value_parser!(u32).range(1024..=1 << 20),
        value_name = "BYTES"
    )]
    pub max_header_bytes: u32,
}

/// The endpoint, prepared: options checked, the web config file loaded.
pub struct Web {
    pub options: Options,
    pub config: Option<Arc<reload::Watched>>,
    /// The soft open-file limit in force once raised (0 if unknown).
    pub open_file_limit: u64,
}

impl Web {
    /// Loads and checks the web config file (one-line error naming the file and the
    /// problem), raises the open-file limit for the connection cap (here only: [`serve`]
    /// warns with the limit found here), and keeps SIGHUP from killing the daemon until
    /// [`serve`] handles it (reloading). Needs no runtime.
    pub fn prepare(args: &WebArgs) -> anyhow::Result<Web> {
        let config = match &args.config_file {
            Some(path) => Some(Arc::new(reload::Watched::load(path)?)),
            None => None,
        };
        let open_file_limit = raise_open_file_limit();
        // SAFETY: setting a signal's disposition to ignored; serve() installs the handler.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        Ok(Web {
            options: Options {
                read_header_timeout: Duration::from_secs_f64(args.read_header_timeout),
                idle_timeout: Duration::from_secs_f64(args.idle_timeout),
                max_connections: args.max_connections as usize,
                max_header_bytes: args.max_header_bytes as usize,
            },
            config,
            open_file_limit,
        })
    }
}

/// The largest file the endpoint reads: the web config file, and each PEM file it names (a
/// few KiB each).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The file at `path`, read whole if it holds at most 1 MiB; a larger one is an error of
/// kind `FileTooLarge` ("larger than 1 MiB"), after reading no more than 1 MiB and a byte.
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            "larger than 1 MiB",
        ));
    }
    Ok(buf)
}

/// Raises this process' soft RLIMIT_NOFILE to its hard limit, so that the connection cap
/// can be reached; returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}
