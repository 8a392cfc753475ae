//! The relay's listening socket, with a cap on open connections.
//!
//! Every connection holds a file descriptor, and so does everything else the relay opens: its
//! SQLite files, its pool's connections to PostgreSQL, Redis. Past the process's open-file
//! limit every one of them fails with `EMFILE` (axum's accept loop then sleeps a second per
//! failure, and a queue commit or a pool connection can fail in between). So the relay keeps
//! connections below the limit, leaving [`reserved_files`] for itself, and refuses the rest at
//! the door: a connection past the cap is accepted, answered with a 503 that says the relay is
//! full, and closed, so its client knows why and retries with its backoff instead of waiting
//! in the kernel's backlog, and the relay goes on serving the connections it has.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// The rejection reason counted for a connection refused at the door.
pub(crate) const CONNECTION_LIMIT: &str = "connection_limit";
/// What a connection refused at the door is told, before it has said anything: HTTP clients
/// (a browser's WebSocket, the terminal client) then report that the relay is full, rather
/// than a connection that broke.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 41\r\nConnection: close\r\n\r\n\
    the relay is full (too many connections)\n";
/// Refused connections being told so at a time, at most; past it (a flood) they are closed
/// without a word, which costs nothing.
const TELLING_AT_ONCE: usize = 64;
/// Longest a refused connection is kept to be told (its answer written, what it sent read).
const TELLING_FOR: Duration = Duration::from_secs(1);
/// At most one warning about refused connections per this long (a flood would otherwise be a
/// flood of log lines too).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Open-file descriptors kept for the relay's own files out of `limit`: a quarter of a small
/// limit, at most 256. The relay itself holds a few dozen (its database files and pool
/// connections, Redis, the runtime's own); the rest is room for a pool that grows under load.
pub(crate) fn reserved_files(limit: u64) -> u64 {
    (limit / 4).min(256)
}

/// Connections the relay may hold at once when no cap is configured: the open-file limit,
/// raised first from its soft value to its hard one (as servers commonly do at start), less
/// [`reserved_files`]. `None` when the limit is unknown or unlimited.
pub(crate) fn default_capacity() -> Option<usize> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let raised = Rlimit { current: Some(hard), maximum: Some(hard) };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%error, soft, hard, "could not raise the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current?;
    usize::try_from(soft.saturating_sub(reserved_files(soft))).ok()
}

/// A TCP listener that holds at most a given number of connections open.
#[derive(Debug)]
pub(crate) struct CappedListener {
    listener: TcpListener,
    open: Arc<Semaphore>,
    /// Refused connections being told so now (see [`TELLING_AT_ONCE`]).
    telling: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// How long a new connection may stay silent before it is closed.
    first_byte_within: Duration,
    /// Refused since the last warning, and when that was.
    refused_unreported: u64,
    last_warning: Option<Instant>,
}

impl CappedListener {
    /// Caps `listener` at `capacity` open connections, closing any that sends nothing within
    /// `first_byte_within` of connecting.
    pub(crate) fn new(
        listener: TcpListener,
        capacity: usize,
        first_byte_within: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        metrics.connection_limit.set(i64::try_from(capacity).unwrap_or(i64::MAX));
        Self {
            listener,
            open: Arc::new(Semaphore::new(capacity)),
            telling: Arc::new(Semaphore::new(TELLING_AT_ONCE)),
            metrics,
            first_byte_within,
            refused_unreported: 0,
            last_warning: None,
        }
    }

    fn refuse(&mut self, stream: TcpStream) {
        if let Ok(telling) = self.telling.clone().try_acquire_owned() {
            tokio::spawn(async move {
                tell_full(stream).await;
                drop(telling);
            });
        }
        self.metrics.reject(CONNECTION_LIMIT);
        self.refused_unreported += 1;
        let now = Instant::now();
        if self.last_warning.is_none_or(|last| now.duration_since(last) >= WARN_EVERY) {
            tracing::warn!(
                refused = self.refused_unreported,
                "connection limit reached (--max-connections); refusing new connections"
            );
            self.refused_unreported = 0;
            self.last_warning = Some(now);
        }
    }
}

impl Listener for CappedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = Listener::accept(&mut self.listener).await;
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => {
                    // Frames are small and each is written whole: Nagle's algorithm would
                    // hold one back until the peer acknowledged the one before, a round trip
                    // of latency for nothing (clients turn it off on their side too).
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    self.metrics.tcp_connections.inc();
                    let open = OpenConnection {
                        _permit: permit,
                        gauge: self.metrics.tcp_connections.clone(),
                    };
                    let silent_until = Some(Box::pin(tokio::time::sleep(self.first_byte_within)));
                    return (CountedStream { stream, silent_until, _open: open }, address);
                }
                Err(_) => self.refuse(stream),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Answers a refused connection with [`FULL`] and closes it, within [`TELLING_FOR`].
async fn tell_full(mut stream: TcpStream) {
    let telling = async {
        stream.write_all(FULL).await?;
        stream.shutdown().await?;
        // Closed with its request unread, the connection would be reset, and a reset can
        // destroy the answer before the client reads it: read until the client closes.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(TELLING_FOR, telling).await;
}

/// The address a connection came from, as the listener saw it (a proxy's, behind one; see
/// `address.rs`), in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddress(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for PeerAddress {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// An accepted connection, counted against the cap until it is dropped (for a WebSocket,
/// hyper hands the stream on to it at the upgrade, so it counts for the socket's whole life).
#[derive(Debug)]
pub(crate) struct CountedStream {
    stream: TcpStream,
    /// Until the client's first byte: when the connection is given up. Without it a client
    /// could hold places under the cap by connecting and saying nothing (hyper has no header
    /// timeout without a timer, which axum's `serve` does not give it).
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
    _open: OpenConnection,
}

/// A connection's place under the cap and in the open-connections gauge, both given back when
/// it is dropped.
#[derive(Debug)]
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.silent_until = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let silent_too_long = this
                    .silent_until
                    .as_mut()
                    .is_some_and(|until| until.as_mut().poll(cx).is_ready());
                if silent_too_long {
                    let error =
                        io::Error::new(io::ErrorKind::TimedOut, "nothing sent after connecting");
                    return Poll::Ready(Err(error));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_answer_is_well_formed_http() {
        let text = std::str::from_utf8(FULL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 41\r\n"), "{head}");
        assert_eq!(body.len(), 41, "{body:?}");
    }

    #[test]
    fn the_reserve_is_a_quarter_of_a_small_limit_and_at_most_256() {
        assert_eq!(reserved_files(100), 25);
        assert_eq!(reserved_files(1_024), 256);
        assert_eq!(reserved_files(20_000), 256);
        assert_eq!(reserved_files(1_048_576), 256);
    }

    #[test]
    fn the_default_capacity_leaves_the_reserve_below_the_open_file_limit() {
        // Read after: the capacity is taken once the soft limit is raised to the hard one.
        let capacity = default_capacity().map(|capacity| capacity as u64);
        let soft = getrlimit(Resource::Nofile).current;
        assert_eq!(capacity, soft.map(|soft| soft - reserved_files(soft)));
        if let Some(hard) = getrlimit(Resource::Nofile).maximum {
            assert_eq!(soft, Some(hard), "the soft limit was raised to the hard one");
        }
    }
}
