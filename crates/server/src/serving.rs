//! HTTP/1.1 on the capped listener's connections, with deadlines on request heads and on
//! whole requests.
//!
//! axum's `serve` gives hyper no timer, and without one hyper waits for a request head for
//! ever: a client that trickles a head a byte at a time (slowloris), or an idle keep-alive
//! connection, would hold its place under the connection cap for good. Here each connection is
//! served by hyper with a timer and `header_read_timeout` (`Limits::request_head_within`),
//! which hyper starts whenever it waits for a request head: on a new connection, and again on
//! a kept-alive one after each answer (a connection that sends nothing at all is closed sooner,
//! by the listener: `Limits::first_byte_within`). Once the head is in, the request has
//! `Limits::request_within` to be answered, its body included, or it is answered 408 and the
//! connection closed: a body trickled a byte at a time is cut off too. An answer the client
//! does not read is the listener's to end (`Limits::stalled_write_within`). A connection
//! upgraded to a WebSocket leaves hyper at the upgrade, so these deadlines never apply to a
//! chat connection (Engine.IO's heartbeat and the stalled-write deadline watch those).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::listener::{CappedListener, CountedStream};
use crate::metrics::Metrics;

/// The address a connection came from, as the listener saw it (a proxy's, behind one; see
/// `address.rs`), in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddress(pub(crate) SocketAddr);

/// How long a client has for the parts of a request (`config::Limits`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    /// For a whole request head: from connecting, and from the last answer when kept alive.
    pub(crate) request_head_within: Duration,
    /// From the end of the head to the start of the answer, the body included.
    pub(crate) request_within: Duration,
}

/// Serves `app` on `listener` until `stop` resolves; then stops accepting, lets every
/// connection finish the request it is in (closing it once answered), and returns when all
/// have. WebSockets already upgraded are not waited for: the relay closes them itself.
pub(crate) async fn serve(
    mut listener: CappedListener,
    app: Router,
    deadlines: Deadlines,
    stop: impl Future<Output = ()>,
) {
    // Dropping `stopping` tells every connection to finish; every connection holds a clone of
    // `finished`'s receiver, so `finished.closed()` resolves once all have ended.
    let (stopping, stop_seen) = watch::channel(());
    let (finished, finished_seen) = watch::channel(());
    let mut stop = pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let metrics = listener.metrics().clone();
        let connection = serve_connection(stream, peer, app.clone(), deadlines, metrics);
        let stop_seen = stop_seen.clone();
        let finished_seen = finished_seen.clone();
        tokio::spawn(async move {
            connection_until_stopped(connection, stop_seen).await;
            drop(finished_seen);
        });
    }
    drop(listener);
    drop(stop_seen);
    drop(stopping);
    drop(finished_seen);
    finished.closed().await;
}

/// One connection's HTTP/1.1 service, upgrades (WebSockets) included.
fn serve_connection(
    stream: CountedStream,
    peer: SocketAddr,
    app: Router,
    deadlines: Deadlines,
    metrics: Arc<Metrics>,
) -> http1::UpgradeableConnection<TokioIo<CountedStream>, impl HttpService> {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(PeerAddress(peer));
        let answer = app.clone().oneshot(request);
        let metrics = metrics.clone();
        async move {
            match tokio::time::timeout(deadlines.request_within, answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    metrics.reject(REQUEST_TIMEOUT);
                    Ok(too_slow())
                }
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(deadlines.request_head_within);
    builder.serve_connection(TokioIo::new(stream), service).with_upgrades()
}

/// The rejection reason counted for a request not completed in time.
const REQUEST_TIMEOUT: &str = "request_timeout";

/// The answer to a request not completed within `Limits::request_within`; the connection is
/// closed after it (hyper would not reuse it anyway with the body unread). With the body's rest
/// unread, the close is a reset, which can reach the client before it has read the answer: a
/// client this slow was hostile or broken.
fn too_slow() -> axum::response::Response {
    let close = [(hyper::header::CONNECTION, "close")];
    (hyper::StatusCode::REQUEST_TIMEOUT, close, "request not received in time\n").into_response()
}

/// The service type [`serve_connection`] builds, named for its return type.
trait HttpService:
    hyper::service::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Send
{
}

impl<S> HttpService for S where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send,
        > + Send
{
}

/// Drives `connection` to its end; once the relay stops, asks it to finish the request it is
/// in and close.
async fn connection_until_stopped(
    connection: http1::UpgradeableConnection<TokioIo<CountedStream>, impl HttpService>,
    mut stop_seen: watch::Receiver<()>,
) {
    let mut connection = pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                // A client that went away, or missed the head deadline: routine.
                tracing::trace!(%error, "connection ended");
            }
            return;
        }
        _ = stop_seen.changed() => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::trace!(%error, "connection ended while stopping");
    }
}
