//! Several nodes: the socketioxide Redis adapter (fred driver) carries pushes and presence
//! between relay nodes that share one database.
//!
//! The adapter is at-most-once and is not trusted with delivery: every message is in the
//! database before anyone is told about it, a node pushes through the adapter only as a
//! shortcut, and a recipient whose push was lost gets the message from the queue when it next
//! catches up (on login, and whenever its socket is found too slow). When Redis is down, pushes
//! fall back to this node's own sockets and the error is counted; fred reconnects on its own and
//! re-subscribes its channels.

use std::time::Duration;

use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::RespVersion;
use socketioxide::adapter::Emitter;
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::ServeError;
use crate::metrics::Metrics;

/// The adapter type of a clustered relay.
pub(crate) type Adapter = FredAdapter<Emitter>;

/// Connects to Redis and builds the adapter.
pub(crate) async fn adapter(
    url: &str,
    prefix: &str,
    _metrics: &Metrics,
) -> Result<RedisAdapterCtr<socketioxide_redis::drivers::fred::FredDriver>, ServeError> {
    let mut config = RedisConfig::from_url(url).map_err(|e| ServeError::Redis(e.to_string()))?;
    config.version = RespVersion::RESP3;
    let client = Builder::from_config(config)
        // Forever, from 100 ms up to 2 s between attempts.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|performance| {
            // Fail a publish quickly while Redis is away, so pushes fall back to local sockets
            // instead of queueing behind a dead connection.
            performance.default_command_timeout = Duration::from_secs(1);
        })
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(2);
            connection.max_command_attempts = 1;
        })
        .build_subscriber_client()
        .map_err(|e| ServeError::Redis(e.to_string()))?;
    // Re-subscribes every channel after a reconnect.
    let _resubscriber = client.manage_subscriptions();
    let adapter_config = RedisAdapterConfig::new()
        .with_prefix(prefix.to_owned())
        .with_request_timeout(Duration::from_secs(1));
    RedisAdapterCtr::new_with_fred_config(client, adapter_config)
        .await
        .map_err(|e| ServeError::Redis(e.to_string()))
}
