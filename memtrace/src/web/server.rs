//! memtrace's accept loop: hyper HTTP/1 connections (over rustls when the web config file
//! turns TLS on) serving the axum `Router`, with every client-held resource bounded.
//!
//! Each connection has a slot in the registry that says whether a request is in flight
//! (from the moment its headers are complete until hyper has taken the whole response
//! body), since when it has been quiet, and whether the headers of a request are arriving.
//! From that:
//!
//! - **the cap**: at `max_connections`, a new connection closes the connection with no
//!   request in flight that has been quiet longest (an idle keep-alive connection, or one
//!   still sending headers, such as a client dribbling a header a byte at a time). If every
//!   connection has a request in flight the new one waits until a request ends. The cap
//!   counts a closed connection until its socket is closed, so it bounds descriptors too;
//!   the idle connections are indexed by the time they went idle, so finding the idlest is
//!   O(log n) and a flood of connections costs each accept the same. If the process runs out
//!   of file descriptors, accepting closes the idlest the same way. The listener's accept
//!   queue is deepened to [`ACCEPT_BACKLOG`] so that a burst waits there, not in SYN
//!   retransmits.
//! - **timeouts**, watched per connection: a new connection has `read_header_timeout` for
//!   its TLS handshake and its first request's headers; after a response, the next request
//!   must start within `idle_timeout` and, once its first byte arrives, complete its headers
//!   within `read_header_timeout`. hyper's own header timeout is off: it starts when a
//!   response ends, so it would also cut every idle keep-alive connection.
//! - **sizes**: hyper answers 431 to a request line and headers above `max_header_bytes`;
//!   a request with a body gets 413 and the connection is closed (memtrace serves GETs).
//!
//! Shutdown (the future given to [`serve`] completes): the listener closes, connections
//! waiting for headers and idle ones close at once, the others finish their request and
//! response and close; after [`DRAIN`] whatever is left is dropped.

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tower::ServiceExt as _;

use super::{
    Web,
    auth::{self, Verdict},
    reload::{Loaded, Watched},
};
use crate::sync::lock;

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`).
pub const ACCEPT_BACKLOG: i32 = 4096;

/// How long shutdown waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The server's bounds (the `--web.*` flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub read_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

/// What every connection task shares.
struct Shared {
    options: Options,
    config: Option<Arc<Watched>>,
    gate: auth::Gate,
    router: Router,
}

impl Shared {
    /// The web config in force, after a look at its files (see [`Watched::current`]).
    async fn current(&self) -> Option<Arc<Loaded>> {
        match &self.config {
            Some(w) => Some(w.current().await),
            None => None,
        }
    }
}

/// A connection's state, as the cap and the timeouts see it.
struct ConnState {
    /// Requests in flight (HTTP/1: 0 or 1).
    busy: u32,
    /// Since when the connection has had no request in flight (accept, or the last
    /// response); with the id, its key in the registry's idle index while `busy` is 0.
    quiet_since: Instant,
    /// When the headers of the next request started arriving (at accept for the first one).
    head_since: Option<Instant>,
    /// Bytes arrived while a request was in flight (a pipelined next request).
    read_while_busy: bool,
}

struct Slot {
    id: u64,
    state: Mutex<ConnState>,
    /// Wakes this connection's watcher when its state changes or it is evicted.
    changed: Notify,
    evicted: AtomicBool,
    registry: Arc<Registry>,
}

impl Slot {
    /// Bytes arrived from the client.
    fn on_read(&self) {
        let mut s = lock(&self.state);
        if s.busy > 0 {
            s.read_while_busy = true;
        } else if s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's headers are complete: it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> Busy {
        {
            // The registry first, then the state: the order `end` and eviction take them in.
            let mut index = lock(&self.registry.index);
            let mut s = lock(&self.state);
            if s.busy == 0 {
                index.idle.remove(&(s.quiet_since, self.id));
            }
            s.busy += 1;
            s.head_since = None;
            s.read_while_busy = false;
        }
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn end(&self) {
        {
            let mut index = lock(&self.registry.index);
            let mut s = lock(&self.state);
            s.busy = s.busy.saturating_sub(1);
            if s.busy == 0 {
                let now = Instant::now();
                s.quiet_since = now;
                s.head_since = s.read_while_busy.then_some(now);
                if index.conns.contains_key(&self.id) {
                    index.idle.insert((now, self.id));
                }
            }
        }
        self.changed.notify_one();
        self.registry.room.notify_one();
    }

    /// Whether the connection is waiting for the rest of a request's headers (or, new, for
    /// its first bytes): nothing to finish at shutdown.
    fn reading_head(&self) -> bool {
        let s = lock(&self.state);
        s.busy == 0 && s.head_since.is_some()
    }

    /// When the connection is to be closed unless something happens, and why.
    fn deadline(&self, o: &Options) -> Option<(Instant, &'static str)> {
        let s = lock(&self.state);
        if s.busy > 0 {
            return None;
        }
        Some(match s.head_since {
            Some(h) => (
                h + o.read_header_timeout,
                "request headers not complete within --web.read-header-timeout",
            ),
            None => (
                s.quiet_since + o.idle_timeout,
                "idle for --web.idle-timeout",
            ),
        })
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

/// A request in flight: it ends when this drops (with the response body).
struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Every open connection, and those without a request in flight by how long they have been
/// idle (so that eviction takes O(log n), not a scan).
#[derive(Default)]
struct Index {
    /// The connections that may still be evicted.
    conns: HashMap<u64, Arc<Slot>>,
    idle: BTreeSet<(Instant, u64)>,
    /// Connections whose socket is open: those above, and those evicted whose task has not
    /// closed them yet. The cap counts these, so it bounds descriptors too.
    open: usize,
}

#[derive(Default)]
struct Registry {
    index: Mutex<Index>,
    next: AtomicU64,
    /// A connection closed or a request ended.
    room: Notify,
}

impl Registry {
    /// Open connections, and how many of them are evicted but not closed yet.
    fn open(&self) -> (usize, usize) {
        let index = lock(&self.index);
        (index.open, index.open - index.conns.len())
    }

    /// A new connection's slot, registered (idle since now, its first headers due).
    fn add(self: &Arc<Self>) -> Arc<Slot> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let slot = Arc::new(Slot {
            id,
            state: Mutex::new(ConnState {
                busy: 0,
                quiet_since: now,
                head_since: Some(now),
                read_while_busy: false,
            }),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
            registry: self.clone(),
        });
        let mut index = lock(&self.index);
        index.conns.insert(id, slot.clone());
        index.idle.insert((now, id));
        index.open += 1;
        slot
    }

    /// The connection's socket is closed.
    fn remove(&self, slot: &Slot) {
        {
            let mut index = lock(&self.index);
            index.open = index.open.saturating_sub(1);
            if index.conns.remove(&slot.id).is_some() {
                let s = lock(&slot.state);
                if s.busy == 0 {
                    index.idle.remove(&(s.quiet_since, slot.id));
                }
            }
        }
        self.room.notify_one();
    }

    /// Closes the connection with no request in flight that has been idle longest; false if
    /// every connection has a request in flight.
    fn evict_idlest(&self) -> bool {
        let mut index = lock(&self.index);
        let Some((_, id)) = index.idle.pop_first() else {
            return false;
        };
        match index.conns.remove(&id) {
            Some(slot) => {
                slot.evict();
                true
            }
            None => false,
        }
    }
}

/// Takes a connection out of the registry when its task ends, however it ends.
struct Registered(Arc<Slot>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.registry.remove(&self.0);
    }
}

/// A TCP stream that tells its slot when bytes arrive.
struct Tracked {
    inner: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that ends its request when hyper has taken all of it (or drops it).
struct TrackedBody {
    inner: Body,
    busy: Option<Busy>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let done = match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if done {
            this.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until the connection is to be closed: evicted, or a deadline passed.
async fn watch(slot: &Slot, o: &Options) -> &'static str {
    loop {
        let changed = slot.changed.notified();
        if slot.evicted.load(Ordering::Acquire) {
            return "closed to make room (--web.max-connections reached; it was the idlest)";
        }
        match slot.deadline(o) {
            None => changed.await,
            Some((at, why)) if at <= Instant::now() => return why,
            Some((at, _)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The response to one request, before the configured headers are added.
async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    loaded: Option<&Loaded>,
) -> Response<Body> {
    if !req.body().is_end_stream() {
        let mut r = plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "memtrace takes no request body\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if let Some(l) = loaded {
        match l
            .users
            .check(&shared.gate, req.headers().get(header::AUTHORIZATION))
            .await
        {
            Verdict::Allowed => {}
            Verdict::Denied => {
                let mut r = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"memtrace\""),
                );
                return r;
            }
            Verdict::Busy => {
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many password checks under way; try again\n",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    match shared.router.clone().oneshot(req.map(Body::new)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
) -> Result<Response<TrackedBody>, Infallible> {
    let busy = slot.begin();
    tracing::debug!(method = %req.method(), path = req.uri().path(), "request read");
    let loaded = shared.current().await;
    let mut response = respond(req, &shared, loaded.as_deref()).await;
    if let Some(l) = &loaded {
        for (name, value) in &l.config.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(response.map(|inner| TrackedBody {
        inner,
        busy: Some(busy),
    }))
}

/// Serves HTTP/1 on `io` until the client leaves, a timeout or eviction closes it, or
/// shutdown.
async fn http<I>(io: I, slot: Arc<Slot>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_header_size(shared.options.max_header_bytes)
        // The read buffer holds the largest headers allowed, and is above hyper's 8 KiB floor.
        .max_buf_size(shared.options.max_header_bytes + 8192)
        // memtrace's own watcher times headers (see the module documentation).
        .header_read_timeout(None);
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        hyper::service::service_fn(move |req| handle(req, shared.clone(), slot.clone()))
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let closer = watch(&slot, &shared.options);
    tokio::pin!(closer);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            why = &mut closer => {
                tracing::debug!("connection closed: {why}");
                return;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                if slot.reading_head() {
                    return;
                }
                // hyper closes an idle connection at once, and one with a request in flight
                // or a response still being written once it is done.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// One connection, from accept to close.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _registered = Registered(slot.clone());
    let _ = stream.set_nodelay(true);
    let io = Tracked {
        inner: stream,
        slot: slot.clone(),
    };
    // A reload this look starts runs on a blocking thread; the connection's bounds and
    // shutdown still apply while it waits for it.
    let loaded = tokio::select! {
        l = shared.current() => l,
        why = watch(&slot, &shared.options) => {
            tracing::debug!(%peer, "connection closed: {why}");
            return;
        }
        _ = stop.wait_for(|s| *s) => return,
    };
    let Some(tls) = loaded.and_then(|l| l.tls.clone()) else {
        return http(io, slot, shared.clone(), stop).await;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(io);
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
        },
        why = watch(&slot, &shared.options) => {
            tracing::debug!(%peer, "connection closed during the TLS handshake: {why}");
            return;
        }
        _ = stop.wait_for(|s| *s) => return,
    };
    http(stream, slot, shared.clone(), stop).await
}

/// Whether an accept error means this process is out of file descriptors (or the system).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The number of file descriptors this process has open.
fn open_descriptors() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Serves `router` on `listener` within the bounds of `web` until `shutdown` completes,
/// then drains (see the module documentation). Installs the SIGHUP handler: it reloads the
/// web config file.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Web,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let options = web.options;
    let registry = Arc::new(Registry::default());
    let shared = Arc::new(Shared {
        options: options.clone(),
        config: web.config,
        gate: auth::Gate::default(),
        router,
    });
    let hangups = tokio::spawn(hangups(shared.config.clone()));

    if let Some(w) = &shared.config {
        let l = w.in_force();
        tracing::info!(
            file = %w.path().display(),
            tls = l.tls.is_some(),
            basic_auth_users = l.config.users.len(),
            "web config file loaded"
        );
    }
    let limit = web.open_file_limit;
    let open = open_descriptors().unwrap_or(0);
    if options.max_connections as u64 + open + 16 > limit {
        tracing::warn!(
            max_connections = options.max_connections,
            open_file_limit = limit,
            open_files = open,
            "--web.max-connections is above what the open-file limit leaves; at the limit a new \
             connection closes the idlest one instead (raise LimitNOFILE / ulimit -n to reach \
             the cap)"
        );
    }

    // A deeper accept queue (the kernel caps it at net.core.somaxconn) so that a burst of
    // connections waits there for the loop below rather than in SYN retransmits; listen(2)
    // on a listening socket changes only its backlog.
    // SAFETY: listen on the listener's own descriptor.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), ACCEPT_BACKLOG) };

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_fd_warning: Option<Instant> = None;
    let mut last_cap_warning: Option<Instant> = None;
    let mut evicted: u64 = 0;
    tokio::pin!(shutdown);
    'accept: loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break 'accept,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_descriptors(&e) => {
                if last_fd_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!("accepting a connection failed: {e}; closing the idlest");
                    last_fd_warning = Some(Instant::now());
                }
                // One at a time: wait for the evicted connection to close (or a request to
                // end, or 100 ms) before accepting again.
                let room = registry.room.notified();
                if registry.open().1 == 0 {
                    registry.evict_idlest();
                }
                tokio::select! {
                    _ = &mut shutdown => break 'accept,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = room => {}
                }
                continue;
            }
            Err(e) => {
                tracing::debug!("accepting a connection failed: {e}");
                continue;
            }
        };
        // At the cap: close the idlest and wait until it is closed, or wait for a request to
        // end.
        loop {
            let changed = registry.room.notified();
            let (open, closing) = registry.open();
            if open < options.max_connections {
                break;
            }
            if closing == 0 && registry.evict_idlest() {
                evicted += 1;
                if last_cap_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = options.max_connections,
                        evicted,
                        "--web.max-connections reached: closing the connections idle longest to \
                         make room (evicted counts since start)"
                    );
                    last_cap_warning = Some(Instant::now());
                }
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
            }
        }
        let slot = registry.add();
        tasks.spawn(connection(stream, peer, slot, shared.clone(), stop.clone()));
    }
    drop(listener);
    hangups.abort();
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "requests still in flight after {DRAIN:?}; closing them"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Reloads the web config file on every SIGHUP (and keeps SIGHUP from killing the daemon).
async fn hangups(config: Option<Arc<Watched>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot watch SIGHUP (it is ignored; the web config file still reloads when it changes): {e}"
            );
            return;
        }
    };
    while hup.recv().await.is_some() {
        match &config {
            Some(w) => {
                let w = w.clone();
                let _ = tokio::task::spawn_blocking(move || w.reload()).await;
            }
            None => tracing::info!("SIGHUP: there is no --web.config.file to reload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
            max_header_bytes: 16384,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_the_idlest_and_never_a_request_in_flight() {
        let r = Arc::new(Registry::default());
        let a = r.add();
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = r.add();
        tokio::time::advance(Duration::from_secs(1)).await;
        let c = r.add();
        // a is busy: b is the idlest.
        let busy_a = a.begin();
        assert!(r.evict_idlest());
        assert!(b.evicted.load(Ordering::Acquire) && !a.evicted.load(Ordering::Acquire));
        assert_eq!(r.open(), (3, 1));
        // a's request ends now: it is the youngest idle, c goes first.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(busy_a);
        assert!(r.evict_idlest());
        assert!(c.evicted.load(Ordering::Acquire));
        // Everything in flight: nothing to evict.
        let _busy = a.begin();
        assert!(!r.evict_idlest());
        assert_eq!(r.open(), (3, 2));
        r.remove(&b);
        r.remove(&c);
        r.remove(&a);
        assert_eq!(r.open(), (0, 0));
        assert!(lock(&r.index).idle.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let o = options();
        let r = Arc::new(Registry::default());
        let s = r.add();
        let t0 = Instant::now();
        // New: its first headers are due.
        assert_eq!(s.deadline(&o).unwrap().0, t0 + o.read_header_timeout);
        s.on_read();
        assert_eq!(s.deadline(&o).unwrap().0, t0 + o.read_header_timeout);
        let busy = s.begin();
        assert!(s.deadline(&o).is_none(), "no deadline while in flight");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(busy);
        let t1 = Instant::now();
        assert_eq!(s.deadline(&o).unwrap().0, t1 + o.idle_timeout);
        // The next request's first byte: its headers are due from then.
        tokio::time::advance(Duration::from_secs(30)).await;
        s.on_read();
        assert_eq!(
            s.deadline(&o).unwrap().0,
            Instant::now() + o.read_header_timeout
        );
        // Bytes while in flight (pipelining): the next headers are due from the response's end.
        let busy = s.begin();
        s.on_read();
        drop(busy);
        assert_eq!(
            s.deadline(&o).unwrap().0,
            Instant::now() + o.read_header_timeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_closes_at_the_deadline_or_on_eviction() {
        let o = options();
        let r = Arc::new(Registry::default());
        let first = r.add();
        let t0 = Instant::now();
        let why = watch(&first, &o).await;
        assert!(why.contains("read-header-timeout"), "{why}");
        assert_eq!(Instant::now(), t0 + o.read_header_timeout);
        r.remove(&first);
        let s = r.add();
        let busy = s.begin();
        let watcher = tokio::spawn({
            let s = s.clone();
            let o = o.clone();
            async move { watch(&s, &o).await }
        });
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            !watcher.is_finished(),
            "a request in flight has no deadline"
        );
        drop(busy);
        assert!(r.evict_idlest());
        assert!(watcher.await.unwrap().contains("--web.max-connections"));
    }
}
