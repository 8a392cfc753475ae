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
//!
//! A connection's place is given back when it closes, so a connection must not be able to
//! keep one by doing nothing: one that sends nothing after connecting is closed after
//! `first_byte_within`, and one whose writes make no progress for `stalled_write_within` (its
//! client reads nothing: an answer or pushes left unread) is cut off. The deadlines on request
//! heads and whole requests are hyper's side of the same rule (`serving.rs`).

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::net::{Shutdown, shutdown, sockopt};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// The rejection reason counted for a connection refused at the door.
pub(crate) const CONNECTION_LIMIT: &str = "connection_limit";
/// The rejection reason counted for a connection closed because its writes stalled.
pub(crate) const STALLED_WRITES: &str = "stalled_writes";
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

/// Connections the open-file limit lets the relay hold at once: the limit less
/// [`reserved_files`]. When that is below `wanted` (`None`: as many as possible), the soft limit
/// is raised to the hard one first, as servers commonly do at start; a relay capped lower
/// leaves its limit as it found it. `None` when the limit is unknown or unlimited.
pub(crate) fn open_file_capacity(wanted: Option<usize>) -> Option<usize> {
    let capacity = |soft: u64| usize::try_from(soft.saturating_sub(reserved_files(soft))).ok();
    let limit = getrlimit(Resource::Nofile);
    let enough = match (wanted, limit.current.and_then(capacity)) {
        (Some(wanted), Some(now)) => now >= wanted,
        _ => false,
    };
    if let (false, Some(soft), Some(hard)) = (enough, limit.current, limit.maximum)
        && soft < hard
    {
        let raised = Rlimit { current: Some(hard), maximum: Some(hard) };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%error, soft, hard, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.and_then(capacity)
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
    /// How long a connection's writes may make no progress before it is closed.
    stalled_write_within: Duration,
    /// Refusals, and the warnings about them.
    refusals: Arc<Mutex<RefusalLog>>,
}

/// Refused connections not yet reported in a warning, and when the last warning was.
#[derive(Debug, Default)]
struct RefusalLog {
    unreported: u64,
    last_warning: Option<Instant>,
    /// A task will report what is still unreported once [`WARN_EVERY`] has passed.
    report_due: bool,
}

impl RefusalLog {
    fn warn(&mut self, now: Instant) {
        tracing::warn!(
            refused = self.unreported,
            "connection limit reached (--max-connections); refusing new connections"
        );
        self.unreported = 0;
        self.last_warning = Some(now);
    }
}

impl CappedListener {
    /// Caps `listener` at `capacity` open connections, closing any that sends nothing within
    /// `first_byte_within` of connecting, or whose writes make no progress for
    /// `stalled_write_within`.
    pub(crate) fn new(
        listener: TcpListener,
        capacity: usize,
        first_byte_within: Duration,
        stalled_write_within: Duration,
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
            stalled_write_within,
            refusals: Arc::default(),
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
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        log.unreported += 1;
        let now = Instant::now();
        match log.last_warning {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                // Counted into the next warning, which a task makes when the quiet time ends:
                // refusals at the end of a flood are logged even when none follows them.
                if !log.report_due {
                    log.report_due = true;
                    let refusals = self.refusals.clone();
                    tokio::spawn(report_when_quiet(refusals, last + WARN_EVERY));
                }
            }
            _ => log.warn(now),
        }
    }

    /// The next connection under the cap; those past it are refused meanwhile. An error
    /// accepting (the open-file limit reached after all, the kernel out of memory) is retried
    /// after a pause rather than ending the relay.
    pub(crate) async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            let (stream, address) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                // A client that gave up before it was accepted: nothing to do.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => {
                    // Frames are small and each is written whole: Nagle's algorithm would
                    // hold one back until the peer acknowledged the one before, a round trip
                    // of latency for nothing (clients turn it off on their side too).
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    self.metrics.tcp_connections.inc();
                    let open = OpenConnection { _permit: permit, metrics: self.metrics.clone() };
                    let silent_until = Some(Box::pin(tokio::time::sleep(self.first_byte_within)));
                    let counted = CountedStream {
                        stream,
                        silent_until,
                        stalled_write_within: self.stalled_write_within,
                        write_stalled_until: None,
                        given_up: false,
                        _open: open,
                    };
                    return (counted, address);
                }
                Err(_) => self.refuse(stream),
            }
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The relay's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Warns of the refusals [`CappedListener::refuse`] left unreported, at `due` or, if a warning
/// was made meanwhile, [`WARN_EVERY`] after that one.
async fn report_when_quiet(refusals: Arc<Mutex<RefusalLog>>, mut due: Instant) {
    loop {
        tokio::time::sleep_until(due.into()).await;
        let mut log = refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match log.last_warning {
            Some(last) if now.duration_since(last) < WARN_EVERY => due = last + WARN_EVERY,
            _ => {
                log.report_due = false;
                if log.unreported > 0 {
                    log.warn(now);
                }
                return;
            }
        }
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

/// An accepted connection, counted against the cap until it is dropped (for a WebSocket,
/// hyper hands the stream on to it at the upgrade, so it counts for the socket's whole life).
#[derive(Debug)]
pub(crate) struct CountedStream {
    stream: TcpStream,
    /// Until the client's first byte: when the connection is given up. hyper's deadline on
    /// request heads (`serving.rs`) is long enough for a proxy's pooled connections to idle
    /// within it; a client that connects and says nothing at all is closed sooner.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
    /// How long a write may wait for the client to make room.
    stalled_write_within: Duration,
    /// While a write waits (the socket's buffer is full: the client reads nothing, or its link
    /// stalled): when the connection is given up. Allocated only then, dropped once it goes on.
    write_stalled_until: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the connection was given up ([`CountedStream::give_up`]): every later write
    /// that would wait fails at once.
    given_up: bool,
    _open: OpenConnection,
}

impl CountedStream {
    /// Passes a write's outcome on, watching how long it waits: past `stalled_write_within`
    /// the connection is given up ([`Self::give_up`]) and the write fails.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !outcome.is_pending() {
            self.write_stalled_until = None;
            return outcome;
        }
        let within = self.stalled_write_within;
        let until =
            self.write_stalled_until.get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
        if until.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.given_up {
            self.given_up = true;
            self.give_up();
        }
        let error = io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for too long");
        Poll::Ready(Err(error))
    }

    /// Ends a connection whose client stopped reading. Failing the write alone would not do:
    /// engineioxide's WebSocket writer logs a failed write and goes on to the next, and its
    /// reader waits for the client; shut down both ways, the socket wakes both with an error
    /// or the end of the stream, and the connection's tasks end. What the client never read is
    /// thrown away with a reset at close (no lingering in the kernel for a peer that does not
    /// read); the messages in it are still queued or held until acknowledged, and reach the
    /// client when it reconnects.
    fn give_up(&self) {
        self._open.metrics.reject(STALLED_WRITES);
        if let Err(error) = sockopt::set_socket_linger(&self.stream, Some(Duration::ZERO)) {
            tracing::debug!(%error, "could not set SO_LINGER on a stalled connection");
        }
        if let Err(error) = shutdown(&self.stream, Shutdown::Both) {
            tracing::debug!(%error, "could not shut a stalled connection down");
        }
        tracing::debug!("closed a connection whose client read nothing for too long");
    }
}

/// A connection's place under the cap and in the open-connections gauge, both given back when
/// it is dropped.
#[derive(Debug)]
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.tcp_connections.dec();
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
        let this = &mut *self;
        let outcome = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_write(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let outcome = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch_write(cx, outcome)
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
    fn the_capacity_leaves_the_reserve_below_the_open_file_limit_raised_only_when_needed() {
        let before = getrlimit(Resource::Nofile).current;
        // A cap the current limit already allows: the limit is left as it is.
        if let Some(soft) = before.filter(|soft| *soft > 8) {
            let capacity = open_file_capacity(Some(1)).map(|capacity| capacity as u64);
            assert_eq!(capacity, Some(soft - reserved_files(soft)));
            assert_eq!(getrlimit(Resource::Nofile).current, before, "raised for a small cap");
        }
        // As many as possible: raised to the hard limit first.
        let capacity = open_file_capacity(None).map(|capacity| capacity as u64);
        let soft = getrlimit(Resource::Nofile).current;
        assert_eq!(capacity, soft.map(|soft| soft - reserved_files(soft)));
        if let Some(hard) = getrlimit(Resource::Nofile).maximum {
            assert_eq!(soft, Some(hard), "the soft limit was raised to the hard one");
        }
    }
}
