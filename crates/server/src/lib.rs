//! Sotto's relay: an authenticated Socket.IO server with a key directory and durable
//! store-and-forward delivery. It sees public keys and ciphertext, never a message.
//!
//! # Layout
//!
//! | concept                                        | module          |
//! |------------------------------------------------|-----------------|
//! | configuration and limits                       | [`config`]      |
//! | event names, payloads, error codes             | [`events`]      |
//! | login challenges, registration checks          | `auth`          |
//! | Socket.IO handlers                             | `handlers`      |
//! | the queue writer: ordered, batched delivery    | `delivery`      |
//! | relay and per-connection state                 | `state`         |
//! | rate limits                                    | `limits`        |
//! | durable storage (SQLite, PostgreSQL)           | [`storage`]     |
//! | `/healthz`, `/metrics`, the web client         | `http`          |
//! | several nodes: the Redis adapter               | `cluster`       |
//! | presence when a node dies (leases in Redis)    | `lease`         |
//! | HTTP serving and its deadlines                 | `serving`       |
//! | the connection cap, stalled writes             | `listener`      |
//! | Prometheus metrics                             | [`metrics`]     |
//!
//! [`serve`] runs the relay on a listener until a shutdown signal; tests start it on
//! `127.0.0.1:0` exactly as `sotto serve` does.

pub mod config;
pub mod events;
pub mod fuzzing;
pub mod metrics;
pub mod storage;

mod address;
mod auth;
mod catch_up;
mod cluster;
mod delivery;
mod handlers;
mod http;
mod lease;
mod limits;
mod listener;
mod memory;
mod registrar;
mod serving;
mod state;
mod unwritten;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, TransportType};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use config::{Config, Limits};
pub use delivery::now_ms;

use crate::metrics::Metrics;
use crate::state::Relay;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The Redis adapter could not start.
    #[error("redis: {0}")]
    Redis(String),
}

/// Depth of the queue writer's inbox; when it is full, senders are told to retry.
const WRITER_INBOX: usize = 65_536;
/// Each WebSocket's read buffer, held for the connection's life. engineioxide's 4 KiB default
/// was a sixth of an idle connection's memory; 1 KiB holds a typical `message:send` frame, a
/// larger frame grows the buffer as it arrives, and throughput did not change measurably
/// (docs/PERFORMANCE.md).
const WS_READ_BUFFER: usize = 1_024;

/// How long a stop waits for HTTP requests under way to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the relay on `listener` until `shutdown` resolves, then stops gracefully: sockets are
/// closed, every message already received is stored and acknowledged, the database is closed.
/// With `config.redis_url` set, the socketioxide Redis adapter carries pushes and presence
/// between nodes; delivery itself never depends on it (the queue is in the database).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut config = config;
    config.bind_login_hosts(listener.local_addr()?);
    let storage = storage::open(&config.database_url).await?;
    let metrics = Arc::new(Metrics::new());
    if let Ok(pending) = storage.total_pending().await {
        metrics.queue_depth.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    match config.redis_url.clone() {
        None => {
            if config.database_url.starts_with("postgres") {
                // Nothing can tell here whether other relays share the database; if they do,
                // pushes between them need the adapter.
                tracing::warn!(
                    "PostgreSQL without --redis: fine for one relay; several relays sharing \
                     this database must all run with --redis, or a message reaches a recipient \
                     connected to another relay only at their next login"
                );
            }
            let (parts, layer, io) = Parts::new(config, storage, metrics, SocketIo::builder());
            handlers::register_local_namespace(&io);
            parts.run(layer, io, listener, shutdown).await
        }
        Some(url) => {
            let (constructor, redis) = cluster::adapter(&url, &config.redis_prefix).await?;
            let (prefix, node_lease) = (config.redis_prefix.clone(), config.node_lease);
            let builder = SocketIo::builder().with_adapter::<cluster::Adapter>(constructor);
            let (parts, layer, io) = Parts::new(config, storage, metrics, builder);
            handlers::register_cluster_namespace(&io).await?;
            redis.keep_subscribed();
            let node = io.config().server_id.to_string();
            parts.relay.attach_lease(cluster::NodeLease::new(&redis, &prefix, node, node_lease));
            parts.run(layer, io, listener, shutdown).await
        }
    }
}

/// What `serve` assembles before it knows the adapter type.
struct Parts<A: Adapter> {
    relay: Arc<Relay<A>>,
    storage: Arc<dyn storage::Storage>,
    metrics: Arc<Metrics>,
    inbox: mpsc::Receiver<delivery::Job<A>>,
}

/// Waits until the queue writer has committed, flushed and answered every job before this.
async fn flush_writer<A: Adapter>(relay: &Relay<A>) {
    let (flushed_tx, flushed_rx) = tokio::sync::oneshot::channel();
    if relay.writer.send(delivery::Job::Flush(flushed_tx)).await.is_ok() {
        let _ = flushed_rx.await;
    }
}

impl<A: Adapter> Parts<A> {
    /// Assembles the relay and its Socket.IO layer with the relay's limits applied.
    fn new(
        config: Config,
        storage: Arc<dyn storage::Storage>,
        metrics: Arc<Metrics>,
        builder: socketioxide::SocketIoBuilder<A>,
    ) -> (Self, socketioxide::layer::SocketIoLayer<A>, SocketIo<A>) {
        let (writer, inbox) = mpsc::channel(WRITER_INBOX);
        let relay = Arc::new(Relay::new(config, storage.clone(), metrics.clone(), writer));
        let limits = relay.limits().clone();
        let builder = builder
            .max_payload(limits.max_frame_bytes as u64)
            .ws_max_message_size(limits.max_frame_bytes)
            .ws_max_frame_size(limits.max_frame_bytes)
            .max_buffer_size(limits.max_outgoing_packets)
            .ws_read_buffer_size(WS_READ_BUFFER)
            .connect_timeout(Duration::from_secs(10))
            .with_state(relay.clone());
        let builder = if relay.config.allow_polling {
            builder.transports([TransportType::Polling, TransportType::Websocket])
        } else {
            builder.transports([TransportType::Websocket])
        };
        let (layer, io) = builder.build_layer();
        relay.attach_io(io.clone());
        (Self { relay, storage, metrics, inbox }, layer, io)
    }

    async fn run(
        self,
        layer: socketioxide::layer::SocketIoLayer<A>,
        io: SocketIo<A>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self { relay, storage, metrics, inbox, .. } = self;
        let writer_task = tokio::spawn(delivery::run_writer(relay.clone(), inbox));
        let every = relay.config.housekeeping_every;
        let housekeeping = tokio::spawn(delivery::run_housekeeping(relay.clone(), every));
        let redelivery =
            relay.clustered().then(|| tokio::spawn(delivery::run_redelivery(relay.clone())));
        let releasing =
            tokio::spawn(memory::run_release_when_quiet(metrics.clone(), storage.clone()));
        let leasing =
            relay.node_lease().map(|lease| tokio::spawn(lease::keep(relay.clone(), lease.clone())));
        let listener = capped(listener, relay.limits(), metrics.clone());
        let app = http::routes(http::HttpState { storage: storage.clone(), metrics })
            .layer(layer)
            .layer(axum::middleware::map_request(http::trim_request_head));
        tracing::info!(address = %listener.local_addr()?, "relay listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let deadlines = serving::Deadlines {
            request_head_within: relay.limits().request_head_within,
            request_within: relay.limits().request_within,
        };
        let server = tokio::spawn(serving::serve(listener, app, deadlines, async move {
            let _ = stop_rx.await;
        }));

        shutdown.await;
        tracing::info!("shutting down: draining the queue writer, closing sockets");
        // Everything received so far is committed, flushed and answered while its senders are
        // still connected, so they hear "stored" rather than resending after the restart.
        flush_writer(&relay).await;
        // No new connections from here; an HTTP request under way is finished, and closing the
        // sockets below answers the long-polls waiting on them.
        let _ = stop_tx.send(());
        io.close().await;
        housekeeping.abort();
        releasing.abort();
        if let (Some(leasing), Some(lease)) = (leasing, relay.node_lease()) {
            leasing.abort();
            // The other nodes announce this one's users at their next renewal, not once the
            // lease would have lapsed.
            if let Err(error) = lease.give_up().await {
                tracing::debug!(%error, "could not give this node's presence lease up");
            }
        }
        if let Some(redelivery) = redelivery {
            redelivery.abort();
        }
        // What arrived meanwhile is committed too (its senders, gone, resend; a resend is
        // recognised).
        flush_writer(&relay).await;
        writer_task.abort();
        // A client that stalls a request (a body sent a byte at a time, an answer it does not
        // read) holds its connection's task until its deadline ends it (`request_within`,
        // `stalled_write_within`); the relay does not wait that long.
        if tokio::time::timeout(STOP_GRACE, server).await.is_err() {
            tracing::warn!("HTTP requests still under way after {STOP_GRACE:?}; stopping anyway");
        }
        storage.close().await;
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// Caps `listener` at `configured` connections, or at what the open-file limit allows when 0.
fn capped(
    listener: TcpListener,
    limits: &Limits,
    metrics: Arc<Metrics>,
) -> listener::CappedListener {
    let configured = limits.max_connections;
    let allowed = listener::open_file_capacity((configured > 0).then_some(configured));
    let capacity = match (configured, allowed) {
        (0, Some(allowed)) => allowed,
        (0, None) => usize::MAX,
        (configured, Some(allowed)) if configured > allowed => {
            tracing::warn!(
                configured,
                allowed,
                "--max-connections is above what the open-file limit leaves (raise `ulimit -n`); \
                 past it the relay's own files may fail to open"
            );
            configured
        }
        (configured, _) => configured,
    };
    if capacity != usize::MAX {
        tracing::info!(max_connections = capacity, "connections are capped");
    }
    listener::CappedListener::new(
        listener,
        capacity,
        limits.first_byte_within,
        limits.stalled_write_within,
        metrics,
    )
}
