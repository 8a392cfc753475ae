//! Several nodes: the socketioxide Redis adapter (fred driver) carries pushes and presence
//! between relay nodes that share one database.
//!
//! The adapter is at-most-once and is not trusted with delivery: every message is in the
//! database before anyone is told about it, a node pushes through the adapter only as a
//! shortcut, and a recipient whose push was lost gets the message from the queue when it next
//! catches up (on login, and whenever its socket is found too slow). When Redis is down, pushes
//! fall back to this node's own sockets and the error is counted; fred reconnects on its own, and
//! [`Connected::keep_subscribed`] re-subscribes the adapter's channels.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::RespVersion;
use socketioxide::adapter::Emitter;
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::ServeError;

/// Messages from Redis that may wait for the adapter's task to read them (fred's
/// `broadcast_channel_capacity`). Beyond it the oldest are dropped ("pubsub channel lagged")
/// and those pushes reach their recipients only through the re-push seconds later. fred's
/// default of 32 overflowed under load: with two nodes on one core at 5,000 messages/s over
/// 500 pairs, hundreds of drops a run and a p99 of over 5 s. The slots are allocated up front:
/// a few megabytes per node.
const REDIS_INBOX: usize = 16_384;

/// The adapter type of a clustered relay.
pub(crate) type Adapter = FredAdapter<Emitter>;

/// The adapter's constructor and the Redis client behind it.
pub(crate) struct Connected {
    /// The subscriber client; [`Connected::keep_subscribed`] once the namespace is subscribed.
    client: SubscriberClient,
}

impl Connected {
    /// Re-subscribes the adapter's channels after every reconnect, from now on.
    ///
    /// fred's own `manage_subscriptions` cannot be used: its re-subscription first sends
    /// `SUBSCRIBE` with the (empty) list of plain channels, which Redis refuses, and then stops
    /// before re-subscribing the shard channels the adapter uses — so a node would silently
    /// stop receiving pushes after Redis restarts. This does only the shard channels, one by one.
    pub(crate) fn keep_subscribed(&self) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut reconnects = client.reconnect_rx();
            while reconnects.recv().await.is_ok() {
                for channel in client.tracked_shard_channels() {
                    if let Err(error) = client.ssubscribe(channel.to_string()).await {
                        tracing::warn!(%error, "re-subscribing a Redis channel failed");
                    }
                }
                tracing::info!("reconnected to Redis; channels re-subscribed");
            }
        });
    }
}

/// The constructor socketioxide builds the adapter from.
pub(crate) type Constructor = RedisAdapterCtr<socketioxide_redis::drivers::fred::FredDriver>;

/// Connects to Redis and builds the adapter's constructor.
pub(crate) async fn adapter(
    url: &str,
    prefix: &str,
) -> Result<(Constructor, Connected), ServeError> {
    let mut config = RedisConfig::from_url(url).map_err(|e| ServeError::Redis(e.to_string()))?;
    config.version = RespVersion::RESP3;
    let client = Builder::from_config(config)
        // Forever, from 100 ms up to 2 s between attempts.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|performance| {
            // Fail a publish quickly while Redis is away, so pushes fall back to local sockets
            // instead of queueing behind a dead connection.
            performance.default_command_timeout = Duration::from_secs(1);
            performance.broadcast_channel_capacity = REDIS_INBOX;
        })
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(2);
            connection.max_command_attempts = 1;
        })
        .build_subscriber_client()
        .map_err(|e| ServeError::Redis(e.to_string()))?;
    let adapter_config = RedisAdapterConfig::new()
        .with_prefix(prefix.to_owned())
        .with_request_timeout(Duration::from_secs(1));
    let constructor = RedisAdapterCtr::new_with_fred_config(client.clone(), adapter_config)
        .await
        .map_err(|e| ServeError::Redis(e.to_string()))?;
    Ok((constructor, Connected { client }))
}
