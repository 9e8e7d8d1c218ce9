//! Serving HTTP/1.1 connections under limits, in pools per kind of client:
//! - the Unix socket's connections have a pool of their own (`max_connections`), so no TCP
//!   client, authenticated or not, can keep a local client of the socket out;
//! - a TCP connection (the token's listener) starts *unauthenticated*, in a small pool of its
//!   own ([`Pools::unauthenticated`]) under short timeouts: it must send a request head
//!   within `header_timeout` of being accepted or of its last answer, and is closed after as
//!   long without one. Its first request carrying the token ([`Upgrade`], done by the
//!   router's guard) moves it into the authenticated TCP pool (`max_connections` again,
//!   separate from the Unix one) and under the normal limits; when that pool is full, the
//!   request is answered 503 and the connection closed.
//!
//! Within a pool: one connection more than its size is closed as soon as it is accepted; a
//! client must send a request's head within `header_timeout` of its first byte, and a
//! connection with no request in flight is closed after `idle_timeout` without a byte from
//! the client. (How long a request may take is the agent's request timeout.) On stop,
//! connections finish the request in flight and close; the caller decides how long to wait
//! for that.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;

/// Connection limits and timeouts of one pool.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A pool of connection slots and the limits of its connections.
#[derive(Debug, Clone)]
pub struct Pool {
    pub limits: ConnLimits,
    slots: Arc<Semaphore>,
}

impl Pool {
    pub fn new(limits: ConnLimits) -> Self {
        Pool { limits, slots: Arc::new(Semaphore::new(limits.max_connections)) }
    }
}

/// The pools a listener's connections take slots from.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Where a connection is served (authenticated, on TCP).
    pub main: Pool,
    /// Where a connection starts until its first request with the token (TCP); `None`: it
    /// starts in `main` (the Unix socket).
    pub unauthenticated: Option<Pool>,
}

/// A TCP connection's way from the unauthenticated pool to the main one: put into each
/// request's extensions; the router's guard calls [`Upgrade::authenticated`] once a request
/// carried the token.
#[derive(Debug)]
pub struct Upgrade {
    main: Arc<Semaphore>,
    slot: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    clock: Arc<Clock>,
}

impl Upgrade {
    /// Move the connection into the main pool (once): `false` when that pool is full (the
    /// caller answers 503 with `Connection: close`).
    pub fn authenticated(&self) -> bool {
        if self.clock.authenticated.load(Ordering::Acquire) {
            return true;
        }
        let Ok(permit) = self.main.clone().try_acquire_owned() else { return false };
        // The unauthenticated slot goes back as the main one is taken.
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        self.clock.authenticated.store(true, Ordering::Release);
        true
    }
}

/// Accept on `listener` until `stop` turns true; each connection is served by its own task,
/// taking a slot of `pools` (see the module docs).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    pools: Pools,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    let first = pools.unauthenticated.clone().unwrap_or_else(|| pools.main.clone());
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = stop.wait_for(|s| *s) => break,
        };
        // Reap finished connection tasks as we go.
        while conns.try_join_next().is_some() {}
        let Ok(slot) = first.slots.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                max = first.limits.max_connections,
                unauthenticated = pools.unauthenticated.is_some(),
                "connection limit reached; closing a new connection"
            );
            drop(io);
            continue;
        };
        let clock = Arc::new(Clock::new(pools.unauthenticated.is_none()));
        // The slot is the connection's until it ends; on TCP its `Upgrade` holds (and swaps) it.
        let (upgrade, held) = match &pools.unauthenticated {
            Some(_) => {
                let main = pools.main.slots.clone();
                let u = Upgrade { main, slot: std::sync::Mutex::new(Some(slot)), clock: clock.clone() };
                (Some(Arc::new(u)), None)
            }
            None => (None, Some(slot)),
        };
        let (router, metrics, stop) = (router.clone(), metrics.clone(), stop.clone());
        let limits = (pools.main.limits, first.limits);
        conns.spawn(async move {
            serve_connection(io, router, limits, clock, upgrade, &metrics, stop).await;
            drop(held);
        });
    }
    // Let connections finish their request in flight; the caller bounds the wait.
    while conns.join_next().await.is_some() {}
}

/// Serve one connection: `limits` is (authenticated, unauthenticated).
async fn serve_connection<S>(
    io: S,
    router: Router,
    limits: (ConnLimits, ConnLimits),
    clock: Arc<Clock>,
    upgrade: Option<Arc<Upgrade>>,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched { inner: io, clock: clock.clone() });
    let inner = TowerToHyperService::new(router);
    let svc_clock = clock.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        svc_clock.request_started();
        if let Some(u) = &upgrade {
            req.extensions_mut().insert(u.clone());
        }
        let fut = hyper::service::Service::call(&inner, req);
        let clock = svc_clock.clone();
        async move {
            let r = fut.await;
            clock.request_ended();
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    let shortest = [limits.0.header_timeout, limits.0.idle_timeout, limits.1.header_timeout, limits.1.idle_timeout]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1));
    let every = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            // The connection first: a head already sent is read before a timeout is judged.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = if clock.authenticated.load(Ordering::Acquire) { &limits.0 } else { &limits.1 };
                if let Some(why) = clock.expired(now) {
                    metrics.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(why, "closing a connection");
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, for its timeouts. Times are milliseconds since `born`.
#[derive(Debug)]
struct Clock {
    born: Instant,
    /// In the main pool (always, on the Unix socket).
    authenticated: AtomicBool,
    in_flight: AtomicU32,
    /// When the first byte of a request head came (+1; 0: none pending).
    head_since: AtomicU64,
    /// When the connection last became idle (accepted, or a response done).
    idle_since: AtomicU64,
}

impl Clock {
    fn new(authenticated: bool) -> Self {
        Clock {
            born: Instant::now(),
            authenticated: AtomicBool::new(authenticated),
            in_flight: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &ConnLimits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_since.load(Ordering::Relaxed);
        let over = |since: u64, limit: Duration| Duration::from_millis(now.saturating_sub(since)) > limit;
        // Not yet authenticated: the whole head within the (short) header timeout of becoming
        // idle (accepted, or answered), bytes or not, so trickling bytes buys no time.
        if !self.authenticated.load(Ordering::Acquire) {
            let idle = self.idle_since.load(Ordering::Relaxed);
            return over(idle, limits.header_timeout.min(limits.idle_timeout))
                .then_some("unauthenticated: no request head in time");
        }
        if head != 0 {
            return over(head - 1, limits.header_timeout).then_some("request head not received in time");
        }
        over(self.idle_since.load(Ordering::Relaxed), limits.idle_timeout).then_some("idle")
    }
}

/// A stream that tells its [`Clock`] when the client sends bytes.
struct Watched<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
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
