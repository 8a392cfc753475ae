//! Prometheus metrics, served at `/metrics` as OpenMetrics text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label with one `reason` (or `code`) value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// Every metric the relay keeps. Handles are cheap clones of atomics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry rendered at `/metrics`.
    registry: Registry,
    /// Open Socket.IO connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// TCP connections open now, whatever they carry (WebSocket, long-polling, plain HTTP),
    /// counted against [`Metrics::connection_limit`].
    pub tcp_connections: Gauge,
    /// TCP connections the relay holds at most (`--max-connections`, or what the open-file
    /// limit leaves); past it new ones are refused.
    pub connection_limit: Gauge,
    /// Authenticated connections open now.
    pub authenticated: Gauge,
    /// Logged-in connections still being sent their backlog (live messages reach them once it
    /// is done): high after a restart, when every client reconnects at once.
    pub catching_up: Gauge,
    /// Successful logins and registrations.
    pub logins: Counter,
    /// Failed authentications, by reason.
    pub auth_failures: Family<Reason, Counter>,
    /// Requests refused, by error code.
    pub rejections: Family<Reason, Counter>,
    /// Messages stored in the queue.
    pub messages_stored: Counter,
    /// Messages pushed to a recipient's socket.
    pub messages_delivered: Counter,
    /// Messages acknowledged by their recipient.
    pub messages_acknowledged: Counter,
    /// Messages acknowledged before they were written (write-behind), so never written.
    pub messages_never_written: Counter,
    /// Messages dropped undelivered after their time to live.
    pub messages_expired: Counter,
    /// Messages waiting for their recipient.
    pub queue_depth: Gauge,
    /// Storage operations that failed.
    pub storage_errors: Counter,
    /// Messages pushed again by a clustered node's re-push of unacknowledged messages.
    pub messages_redelivered: Counter,
    /// Pushes the Redis adapter could not carry.
    pub adapter_errors: Counter,
    /// Times the relay gave memory back after a burst (`memory.rs`).
    pub memory_releases: Counter,
    /// Connections ended because they left too many pushed bytes unacknowledged (a client that
    /// stopped reading or saving); they catch up, paced, when they reconnect.
    pub slow_connections_ended: Counter,
    /// Size of the queue writer's batches.
    pub batch_size: Histogram,
    /// Seconds from receiving a message to its stored acknowledgement going out.
    pub store_seconds: Histogram,
    /// Seconds from receiving a message to pushing it to its recipient's sockets (the
    /// relay's share of a message's latency).
    pub push_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sotto");
        let metrics = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            tcp_connections: Gauge::default(),
            connection_limit: Gauge::default(),
            authenticated: Gauge::default(),
            catching_up: Gauge::default(),
            logins: Counter::default(),
            auth_failures: Family::default(),
            rejections: Family::default(),
            messages_stored: Counter::default(),
            messages_delivered: Counter::default(),
            messages_acknowledged: Counter::default(),
            messages_never_written: Counter::default(),
            messages_expired: Counter::default(),
            queue_depth: Gauge::default(),
            storage_errors: Counter::default(),
            adapter_errors: Counter::default(),
            messages_redelivered: Counter::default(),
            memory_releases: Counter::default(),
            slow_connections_ended: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            store_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            push_seconds: Histogram::new(exponential_buckets(0.000_025, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register("connections", "Open Socket.IO connections", metrics.connections.clone());
        registry.register(
            "connections_accepted",
            "Connections accepted",
            metrics.connections_total.clone(),
        );
        registry.register(
            "authenticated_connections",
            "Authenticated connections open",
            metrics.authenticated.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections open now (WebSocket, long-polling or plain HTTP)",
            metrics.tcp_connections.clone(),
        );
        registry.register(
            "connection_limit",
            "TCP connections held at most; past it new ones are refused",
            metrics.connection_limit.clone(),
        );
        registry.register(
            "connections_catching_up",
            "Logged-in connections still being sent their backlog",
            metrics.catching_up.clone(),
        );
        registry.register("logins", "Successful logins and registrations", metrics.logins.clone());
        registry.register(
            "auth_failures",
            "Failed authentications by reason",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "rejections",
            "Refused requests by error code",
            metrics.rejections.clone(),
        );
        registry.register(
            "messages_stored",
            "Messages stored in the queue",
            metrics.messages_stored.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages pushed to a recipient socket",
            metrics.messages_delivered.clone(),
        );
        registry.register(
            "messages_acknowledged",
            "Messages acknowledged by their recipient",
            metrics.messages_acknowledged.clone(),
        );
        registry.register(
            "messages_never_written",
            "Messages acknowledged by their recipient before they were written, so never written",
            metrics.messages_never_written.clone(),
        );
        registry.register(
            "messages_expired",
            "Messages dropped undelivered after their time to live",
            metrics.messages_expired.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting for their recipient",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "storage_errors",
            "Failed storage operations",
            metrics.storage_errors.clone(),
        );
        registry.register(
            "writer_batch_size",
            "Jobs per queue-writer batch",
            metrics.batch_size.clone(),
        );
        registry.register(
            "store_seconds",
            "Receive-to-stored-ack time",
            metrics.store_seconds.clone(),
        );
        registry.register(
            "push_seconds",
            "Receive-to-push time of live messages",
            metrics.push_seconds.clone(),
        );
        registry.register(
            "messages_redelivered",
            "Messages pushed again by a clustered node's re-push of unacknowledged ones",
            metrics.messages_redelivered.clone(),
        );
        registry.register(
            "adapter_errors",
            "Pushes the Redis adapter could not carry",
            metrics.adapter_errors.clone(),
        );
        registry.register(
            "memory_releases",
            "Times the relay gave memory back after a burst",
            metrics.memory_releases.clone(),
        );
        registry.register(
            "slow_connections_ended",
            "Connections ended for leaving too many pushed bytes unacknowledged",
            metrics.slow_connections_ended.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Counts a refused request.
    pub fn reject(&self, code: &str) {
        self.rejections.get_or_create(&Reason { reason: code.to_owned() }).inc();
    }

    /// Counts a failed authentication.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.get_or_create(&Reason { reason: reason.to_owned() }).inc();
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One connection counted in [`Metrics::catching_up`] from its login until it has caught up or
/// is gone, whichever way that happens: dropping the guard is the one place it stops counting.
#[derive(Debug)]
pub struct CatchingUp(Gauge);

impl CatchingUp {
    /// Counts a connection that has just logged in.
    pub fn start(metrics: &Metrics) -> Self {
        metrics.catching_up.inc();
        Self(metrics.catching_up.clone())
    }
}

impl Drop for CatchingUp {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter the relay keeps is exported (two were once counted and never shown).
    #[test]
    fn every_counter_is_exported() {
        let metrics = Metrics::new();
        metrics.messages_redelivered.inc();
        metrics.adapter_errors.inc();
        metrics.memory_releases.inc();
        metrics.messages_never_written.inc();
        let text = metrics.render();
        for line in [
            "sotto_messages_redelivered_total 1",
            "sotto_adapter_errors_total 1",
            "sotto_memory_releases_total 1",
            "sotto_messages_never_written_total 1",
            "sotto_connections_accepted_total 0",
            "sotto_messages_acknowledged_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
