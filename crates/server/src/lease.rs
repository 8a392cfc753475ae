//! Presence when a node dies: this node keeps its presence lease in Redis, and announces the
//! users of nodes whose lease lapsed (`cluster::NodeLease`).
//!
//! A user's contacts are told `user:left` by the node their last connection closed on. A node
//! that is killed, loses its machine or is cut off from the others tells nobody, and its
//! users' contacts would see them online until their own next login. So each node renews a
//! lease a few times per `Config::node_lease`, with the users logged in to it; a node that
//! finds another's lease lapsed claims it, announces each of its users as they are now (on
//! this node's adapter, which asks the nodes still alive), and forgets it. A node stopping
//! gracefully gives its lease up, so the others announce its users within one renewal.

use std::sync::Arc;

use futures_util::StreamExt;
use socketioxide::adapter::Adapter;

use crate::cluster::NodeLease;
use crate::state::Relay;

/// Users of a swept node announced at once (each looks up contacts and asks the other nodes
/// whether the user is still connected to one of them).
const ANNOUNCEMENTS_AT_ONCE: usize = 16;

/// Renews this node's lease and sweeps lapsed nodes, until aborted.
pub(crate) async fn keep<A: Adapter>(relay: Arc<Relay<A>>, lease: NodeLease) {
    let mut every = tokio::time::interval(lease.renew_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(error) = lease.renew(&relay.online_users()).await {
            relay.metrics.adapter_errors.inc();
            tracing::warn!(%error, "renewing this node's presence lease in Redis failed");
            continue;
        }
        if let Err(error) = sweep(&relay, &lease).await {
            relay.metrics.adapter_errors.inc();
            tracing::warn!(%error, "sweeping nodes whose presence lease lapsed failed");
        }
    }
}

/// Announces the users of every node whose lease lapsed, and forgets those nodes.
async fn sweep<A: Adapter>(relay: &Relay<A>, lease: &NodeLease) -> Result<(), fred::error::Error> {
    for node in lease.lapsed().await? {
        let Some(users) = lease.claim(&node).await? else { continue };
        tracing::info!(
            node,
            users = users.len(),
            "a node's presence lease lapsed; announcing its users"
        );
        let announcements: Vec<_> =
            users.iter().map(|user| crate::handlers::announce(relay, user)).collect();
        futures_util::stream::iter(announcements)
            .buffer_unordered(ANNOUNCEMENTS_AT_ONCE)
            .collect::<()>()
            .await;
        lease.forget(&node).await?;
    }
    Ok(())
}
