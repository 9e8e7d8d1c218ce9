//! Serving HTTP/1.1 connections under limits: at most `max_connections` at once (one more is
//! closed as soon as it is accepted), a client must send a request's head within
//! `header_timeout` of its first byte, and a connection with no request in flight is closed
//! after `idle_timeout` without a byte from the client. (How long a request may take is
//! the agent's request timeout.) On stop, connections finish the request in flight and
//! close; the caller decides how long to wait for that.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};

use super::metrics::Metrics;

/// Connection limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Accept on `listener` until `stop` turns true; each connection is served by its own task
/// under `limits`, sharing `slots` (the connection limit) with the other listeners.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = stop.wait_for(|s| *s) => break,
        };
        // Reap finished connection tasks as we go.
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(max = limits.max_connections, "connection limit reached; closing a new connection");
            drop(io);
            continue;
        };
        let (router, metrics, stop) = (router.clone(), metrics.clone(), stop.clone());
        conns.spawn(async move {
            serve_connection(io, router, limits, &metrics, stop).await;
            drop(slot);
        });
    }
    // Let connections finish their request in flight; the caller bounds the wait.
    while conns.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    io: S,
    router: Router,
    limits: ConnLimits,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(Watched { inner: io, clock: clock.clone() });
    let inner = TowerToHyperService::new(router);
    let svc_clock = clock.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        svc_clock.request_started();
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
    let every =
        (limits.header_timeout.min(limits.idle_timeout) / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
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
                if let Some(why) = clock.expired(&limits) {
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
    in_flight: AtomicU32,
    /// When the first byte of a request head came (+1; 0: none pending).
    head_since: AtomicU64,
    /// When the connection last became idle (accepted, or a response done).
    idle_since: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            born: Instant::now(),
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
