//! Several nodes: the socketioxide Redis adapter (fred driver) carries pushes and presence
//! between relay nodes that share one database.
//!
//! The adapter is at-most-once and is not trusted with delivery: every message is in the
//! database before anyone is told about it, a node pushes through the adapter only as a
//! shortcut, and a recipient whose push was lost gets the message from the queue when it next
//! catches up (on login, and whenever its socket is found too slow). When Redis is down, pushes
//! fall back to this node's own sockets and the error is counted; fred reconnects on its own, and
//! [`Connected::keep_subscribed`] re-subscribes the adapter's channels.
//!
//! Redis also holds each node's presence lease ([`NodeLease`]): a key the node renews, and the
//! set of users logged in to it. A node that dies cannot say that its users left; the others
//! see its lease lapse and say it for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{EventInterface, KeysInterface, PubsubInterface, SetsInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::{Expiration, RespVersion, SetOptions};
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

/// Users sent to Redis per command, so that a node with many users sends several moderate
/// commands rather than one huge one.
const USERS_PER_COMMAND: usize = 1_000;

/// The shortest lease: renewals go three times per lease, and each may take up to fred's 1 s
/// command timeout.
const SHORTEST_LEASE: Duration = Duration::from_secs(1);

/// A node's presence lease in Redis, and what it takes to act for a node whose lease lapsed.
///
/// Every node renews `PREFIX:node:ID:lease` (it expires after the lease time) three times per
/// lease time, keeps `PREFIX:node:ID:users` up to date with the users logged in to it, and is a
/// member of `PREFIX:nodes`; the set and the list of nodes expire three lease times after the
/// last renewal, so nothing stays in Redis for long once every node is gone. A node whose lease
/// has lapsed (killed, its machine lost, cut off from Redis) is taken over by whichever node
/// first claims `PREFIX:node:ID:sweep`: that node tells the contacts of each of its users who is
/// in no live node's set that the user left (see `lease.rs`), then forgets the node.
#[derive(Clone, Debug)]
pub(crate) struct NodeLease {
    client: SubscriberClient,
    prefix: Arc<str>,
    node: Arc<str>,
    lease: Duration,
}

impl NodeLease {
    /// The lease of the node `node` (this one), lasting `lease` (at least a second).
    pub(crate) fn new(connected: &Connected, prefix: &str, node: String, lease: Duration) -> Self {
        let lease = lease.max(SHORTEST_LEASE);
        Self { client: connected.client.clone(), prefix: prefix.into(), node: node.into(), lease }
    }

    /// How often the lease is renewed: three times per lease time, so one renewal lost to a
    /// slow round trip does not let it lapse.
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    fn key(&self, node: &str, what: &str) -> String {
        format!("{}:node:{node}:{what}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn ms(duration: Duration) -> i64 {
        i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
    }

    /// How long the set of users and the list of nodes outlive the last renewal.
    fn kept_ms(&self) -> i64 {
        Self::ms(self.lease * 3)
    }

    /// Renews this node's lease. Returns whether it was still held: false on the first
    /// renewal, and after a lapse (Redis was unreachable, or lost its data), when another node
    /// may have swept this one and told its users' contacts that they left.
    pub(crate) async fn renew(&self) -> Result<bool, fred::error::Error> {
        let expires = Some(Expiration::PX(Self::ms(self.lease)));
        let held: Option<String> =
            self.client.set(self.key(&self.node, "lease"), 1, expires, None, true).await?;
        self.client.sadd::<(), _, _>(self.nodes_key(), self.node.as_ref()).await?;
        self.client.pexpire::<(), _>(self.nodes_key(), self.kept_ms(), None).await?;
        Ok(held.is_some())
    }

    /// Replaces this node's set of users with `users`. Not atomic: a node killed in the
    /// middle leaves part of its set, and a login added meanwhile is left out until the next
    /// renewal; it runs only on the first renewal and after a lapse.
    pub(crate) async fn rewrite_users(&self, users: &[&str]) -> Result<(), fred::error::Error> {
        self.client.del::<(), _>(self.key(&self.node, "users")).await?;
        self.update_users(users, &[]).await
    }

    /// Adds `added` to this node's set of users and removes `removed`.
    pub(crate) async fn update_users(
        &self,
        added: &[&str],
        removed: &[&str],
    ) -> Result<(), fred::error::Error> {
        let users = self.key(&self.node, "users");
        for chunk in added.chunks(USERS_PER_COMMAND) {
            self.client.sadd::<(), _, _>(&users, chunk.to_vec()).await?;
        }
        for chunk in removed.chunks(USERS_PER_COMMAND) {
            self.client.srem::<(), _, _>(&users, chunk.to_vec()).await?;
        }
        self.client.pexpire::<(), _>(&users, self.kept_ms(), None).await
    }

    /// Adds `user` to this node's set at once (a login), so that a node dying before its next
    /// renewal still has its newest users announced.
    pub(crate) async fn add(&self, user: &str) -> Result<(), fred::error::Error> {
        self.client.sadd::<(), _, _>(self.key(&self.node, "users"), user).await
    }

    /// The other nodes: those whose lease is held, and those whose lease has lapsed.
    pub(crate) async fn other_nodes(
        &self,
    ) -> Result<(Vec<String>, Vec<String>), fred::error::Error> {
        let nodes: Vec<String> = self.client.smembers(self.nodes_key()).await?;
        let (mut live, mut lapsed) = (Vec::new(), Vec::new());
        for node in nodes.into_iter().filter(|node| *node != *self.node) {
            let held: i64 = self.client.exists(self.key(&node, "lease")).await?;
            if held > 0 { live.push(node) } else { lapsed.push(node) }
        }
        Ok((live, lapsed))
    }

    /// Claims the lapsed `node` for this one to sweep; its users if the claim is this node's
    /// (`None`: another node has it, or its lease was renewed meanwhile).
    pub(crate) async fn claim(
        &self,
        node: &str,
    ) -> Result<Option<Vec<String>>, fred::error::Error> {
        let claimed: Option<String> = self
            .client
            .set(
                self.key(node, "sweep"),
                self.node.as_ref(),
                Some(Expiration::PX(Self::ms(self.lease))),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if claimed.is_none() || self.client.exists::<i64, _>(self.key(node, "lease")).await? > 0 {
            return Ok(None);
        }
        Ok(Some(self.client.smembers(self.key(node, "users")).await?))
    }

    /// Which of `users` are in the set of one of the `live` nodes. Asked of Redis rather than
    /// of the nodes themselves: the adapter's questions wait for every node it counts, and a
    /// node whose machine vanished stays counted until Redis notices the dead connection.
    pub(crate) async fn online_on(
        &self,
        live: &[String],
        users: &[String],
    ) -> Result<HashSet<String>, fred::error::Error> {
        let mut online = HashSet::new();
        for node in live {
            for chunk in users.chunks(USERS_PER_COMMAND) {
                let members: Vec<bool> =
                    self.client.smismember(self.key(node, "users"), chunk.to_vec()).await?;
                for (user, member) in chunk.iter().zip(members) {
                    if member {
                        online.insert(user.clone());
                    }
                }
            }
        }
        Ok(online)
    }

    /// Forgets a node that has been swept, unless it renewed its lease meanwhile (it then
    /// rewrites its set, and announces its users again, at its next renewal).
    pub(crate) async fn forget(&self, node: &str) -> Result<(), fred::error::Error> {
        if self.client.exists::<i64, _>(self.key(node, "lease")).await? > 0 {
            return Ok(());
        }
        self.client.del::<(), _>(self.key(node, "users")).await?;
        self.client.srem::<(), _, _>(self.nodes_key(), node).await
    }

    /// Gives this node's lease up (a graceful stop): the others sweep it at their next renewal
    /// rather than once it would have lapsed.
    pub(crate) async fn give_up(&self) -> Result<(), fred::error::Error> {
        self.client.del::<(), _>(self.key(&self.node, "lease")).await
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
