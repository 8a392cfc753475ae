//! Presence when a node dies: this node keeps its presence lease in Redis, and announces the
//! users of nodes whose lease lapsed (`cluster::NodeLease`).
//!
//! A user's contacts are told `user:left` by the node their last connection closed on. A node
//! that is killed, loses its machine or is cut off from the others tells nobody, and its
//! users' contacts would see them online until their own next login. So each node renews a
//! lease three times per `Config::node_lease`, keeping the set of users logged in to it up to
//! date. A node that finds another's lease lapsed claims it, tells the contacts of each of its
//! users that the user left unless the user is logged in to this node or in a live node's set,
//! and forgets it. A node stopping gracefully gives its lease up, so the others announce its
//! users within one renewal. A node whose own lease lapsed while it was alive (cut off from
//! Redis) may have been swept meanwhile: at its next renewal it announces its users again.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use socketioxide::adapter::Adapter;

use crate::cluster::NodeLease;
use crate::handlers::{announce, announce_left};
use crate::state::Relay;

/// Users announced at once (each announcement looks their contacts up in the database).
const ANNOUNCEMENTS_AT_ONCE: usize = 16;

/// Renews this node's lease and, beside it, sweeps lapsed nodes, until aborted.
pub(crate) async fn keep<A: Adapter>(relay: Arc<Relay<A>>, lease: NodeLease) {
    let mut every = tokio::time::interval(lease.renew_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The users this node's set holds since the last renewal that succeeded.
    let mut written: Option<HashSet<Arc<str>>> = None;
    // A sweep runs in a task of its own: announcing a dead node's users can take longer than a
    // lease, and this node's renewals must not wait for it.
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        every.tick().await;
        let online: HashSet<Arc<str>> = relay.online_users().into_iter().collect();
        match renew(&lease, &online, written.as_ref()).await {
            Ok(held) => {
                if !held && written.is_some() {
                    tracing::warn!(
                        "this node's presence lease had lapsed; announcing its users again"
                    );
                    let users: Vec<String> = online.iter().map(|user| user.to_string()).collect();
                    tokio::spawn(announce_all(relay.clone(), users));
                }
                written = Some(online);
            }
            Err(error) => {
                relay.metrics.adapter_errors.inc();
                tracing::warn!(%error, "renewing this node's presence lease in Redis failed");
                continue;
            }
        }
        if sweeping.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
            sweeping = Some(tokio::spawn(sweep(relay.clone(), lease.clone())));
        }
    }
}

/// Renews the lease and brings this node's set of users up to date: the whole set on the first
/// renewal and after a lapse, the changes since `written` otherwise. Returns whether the lease
/// was still held.
async fn renew(
    lease: &NodeLease,
    online: &HashSet<Arc<str>>,
    written: Option<&HashSet<Arc<str>>>,
) -> Result<bool, fred::error::Error> {
    let held = lease.renew().await?;
    match written {
        Some(written) if held => {
            let added: Vec<&str> = online.difference(written).map(AsRef::as_ref).collect();
            let removed: Vec<&str> = written.difference(online).map(AsRef::as_ref).collect();
            lease.update_users(&added, &removed).await?;
        }
        _ => {
            let users: Vec<&str> = online.iter().map(AsRef::as_ref).collect();
            lease.rewrite_users(&users).await?;
        }
    }
    Ok(held)
}

/// Sweeps every node whose lease lapsed.
async fn sweep<A: Adapter>(relay: Arc<Relay<A>>, lease: NodeLease) {
    if let Err(error) = sweep_lapsed(&relay, &lease).await {
        relay.metrics.adapter_errors.inc();
        tracing::warn!(%error, "sweeping nodes whose presence lease lapsed failed");
    }
}

async fn sweep_lapsed<A: Adapter>(
    relay: &Relay<A>,
    lease: &NodeLease,
) -> Result<(), fred::error::Error> {
    let (live, lapsed) = lease.other_nodes().await?;
    for node in lapsed {
        let Some(users) = lease.claim(&node).await? else { continue };
        let elsewhere = lease.online_on(&live, &users).await?;
        let gone: Vec<&String> = users
            .iter()
            .filter(|user| !relay.is_online(user) && !elsewhere.contains(*user))
            .collect();
        tracing::info!(
            node,
            users = users.len(),
            gone = gone.len(),
            "a node's presence lease lapsed; announcing the users it held"
        );
        a_few_at_once(gone.iter().map(|user| announce_left(relay, user)).collect()).await;
        lease.forget(&node).await?;
    }
    Ok(())
}

/// Announces each of `users` as they are now (this node's own, after its lease lapsed).
async fn announce_all<A: Adapter>(relay: Arc<Relay<A>>, users: Vec<String>) {
    a_few_at_once(users.iter().map(|user| announce(&relay, user)).collect()).await;
}

/// Runs `announcements`, [`ANNOUNCEMENTS_AT_ONCE`] at a time.
async fn a_few_at_once(announcements: Vec<impl std::future::Future<Output = ()>>) {
    futures_util::stream::iter(announcements)
        .buffer_unordered(ANNOUNCEMENTS_AT_ONCE)
        .collect::<()>()
        .await;
}
