//! Relay configuration: where to listen, which database, and every limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything `sotto serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite:PATH`, `sqlite::memory:` or `postgres://…`.
    pub database_url: String,
    /// Names (`host[:port]`) clients reach this relay by; login signatures must be bound to
    /// one of them. The relay adds its own listening address (and `localhost:PORT` on
    /// loopback). With none configured on a wildcard address, the `Host` header each client
    /// sent is accepted instead, which binds nothing a man in the middle cannot forge.
    pub public_hosts: Vec<String>,
    /// Whether HTTP long-polling is offered besides WebSocket.
    pub allow_polling: bool,
    /// Redis (`redis://…`) for pushes and presence between several nodes.
    pub redis_url: Option<String>,
    /// Prefix of the Redis channels, so several deployments (or tests) can share a Redis.
    pub redis_prefix: String,
    /// Proxies whose `X-Forwarded-For` is believed: a connection from one of them counts as
    /// coming from the address the proxies name (see `address.rs`). Behind a reverse proxy
    /// without this, every client shares the proxy's address and its registration limit.
    pub trusted_proxies: Vec<IpAddr>,
    /// Limits.
    pub limits: Limits,
    /// How long a message pushed to a connected recipient may stay unwritten, waiting for its
    /// acknowledgement (write-behind, see `delivery`): acknowledged in time, it is never
    /// written; otherwise it is stored like any other. Zero stores every message before
    /// pushing it. Its sender hears "stored" only once it is on disk or acknowledged.
    pub write_behind: Duration,
    /// How often expired messages are purged and the queue-depth gauge is counted afresh.
    pub housekeeping_every: Duration,
    /// Clustered: how long a node's presence lease in Redis lasts without renewal (it renews
    /// it three times as often). Once a node's lease has lapsed (it was killed, or cut off from
    /// Redis), another node announces its users' departures for it (`lease.rs`), so their
    /// contacts stop seeing them online within about this long.
    pub node_lease: Duration,
    /// Set by [`Config::bind_login_hosts`]: accept the `Host` header a client sent as the name
    /// its login is bound to (no public name was configured for a wildcard address).
    pub(crate) trust_host_header: bool,
}

impl Config {
    /// Defaults for a local relay on `listen` with `database_url`.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            public_hosts: Vec::new(),
            allow_polling: true,
            redis_url: None,
            redis_prefix: "sotto".to_owned(),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            write_behind: Duration::from_millis(50),
            housekeeping_every: Duration::from_secs(60),
            node_lease: Duration::from_secs(15),
            trust_host_header: false,
        }
    }

    /// Completes the names logins may be bound to, once the listening address is known.
    pub(crate) fn bind_login_hosts(&mut self, local: SocketAddr) {
        let port = local.port();
        if local.ip().is_unspecified() {
            if self.public_hosts.is_empty() {
                self.trust_host_header = true;
                tracing::warn!(
                    "listening on {local} without --public-host: logins are bound to whatever Host \
                     header a client sends; set --public-host to the name clients use"
                );
            }
            self.public_hosts.extend([format!("127.0.0.1:{port}"), format!("localhost:{port}")]);
        } else {
            self.public_hosts.push(local.to_string());
            if local.ip().is_loopback() {
                self.public_hosts.push(format!("localhost:{port}"));
            }
        }
    }
}

/// Limits, each enforced with a clear error and counted in the metrics.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest envelope accepted, in bytes of JSON.
    pub max_envelope_bytes: usize,
    /// Largest Socket.IO frame or long-polling body. Twice the envelope limit, so an envelope
    /// somewhat over its limit still gets a clear `too_large` answer; anything larger closes
    /// the connection before it is buffered.
    pub max_frame_bytes: usize,
    /// Events per second per connection (0: unlimited).
    pub events_per_second: u32,
    /// Burst allowance for `events_per_second`.
    pub events_burst: u32,
    /// Messages per second from one sender to one recipient (0: unlimited).
    pub pair_messages_per_second: u32,
    /// Burst allowance for `pair_messages_per_second`.
    pub pair_messages_burst: u32,
    /// Bundle fetches per minute by one user for one target (0: unlimited).
    pub prekey_fetches_per_minute: u32,
    /// Undelivered messages one recipient may have queued.
    pub max_queue_per_recipient: usize,
    /// How long an undelivered message is kept.
    pub message_ttl: Duration,
    /// One-time prekeys per upload.
    pub max_prekeys_per_upload: usize,
    /// One-time prekeys kept per user.
    pub max_prekeys_stored: usize,
    /// Below this many one-time prekeys the owner is told to upload more.
    pub prekey_low_watermark: usize,
    /// How long a login challenge is valid.
    pub challenge_ttl: Duration,
    /// How long a connection may stay without logging in.
    pub auth_timeout: Duration,
    /// Failed logins before a connection is closed.
    pub max_auth_failures: u32,
    /// Message ids per `message:ack` or `message:status`.
    pub max_ids_per_request: usize,
    /// Longest a message may wait for the storage writer: one that waited longer is refused
    /// with the retryable `busy` instead of stored (clients keep it in their outbox and retry),
    /// so an overloaded database shows as refusals, not as seconds of delay.
    pub max_send_backlog: Duration,
    /// Registrations per hour from one address (an IPv4 address or an IPv6 /64; 0:
    /// unlimited), so that one machine cannot claim ids by the thousand.
    pub registrations_per_hour: u32,
    /// Registrations one address may make at once before `registrations_per_hour` applies.
    pub registrations_burst: u32,
    /// Packets a connection's outgoing buffer holds, beyond what its socket has taken. A
    /// client that stops reading fills it; the relay then ends the connection, which catches
    /// up from the queue when it reconnects (`delivery::end_socket`).
    pub max_outgoing_packets: usize,
    /// Bytes of live pushes a connection may leave unacknowledged. Clients acknowledge each
    /// push once saved, so a healthy one holds a few pushes' worth; one that stopped reading or
    /// saving would otherwise make the relay hold everything sent to it (in its outgoing
    /// buffer, up to `max_outgoing_packets` pushes of any size) until its heartbeat fails. Past
    /// this the relay ends the connection, which catches up, paced, when it reconnects.
    pub max_unacknowledged_push_bytes: usize,
    /// Logged-in connections one user may hold on this relay at once (on each node, when
    /// clustered; 0: unlimited). Each holds about 23 KB and is pushed everything sent to the
    /// user, so a client that logs in again and again without closing its connections must
    /// not grow the relay without bound; past this a login is refused with
    /// `too_many_connections` until one of them closes.
    pub max_connections_per_user: usize,
    /// Connections (TCP) the relay holds open at once; past it a new one is answered 503 and
    /// closed as soon as it is accepted (`listener.rs`). 0: the open-file limit less a reserve
    /// for the relay's own files, so that its database and Redis connections never run out of
    /// descriptors.
    pub max_connections: usize,
    /// How long a new connection may stay silent (not a byte sent) before it is closed, so
    /// that connecting and saying nothing cannot hold places under `max_connections`.
    pub first_byte_within: Duration,
    /// How long a client has to send a whole request head: from connecting, and on a kept-alive
    /// connection from the answer to its last request. Past it the connection is closed, so
    /// that trickling a head a byte at a time or keeping an idle connection open cannot hold
    /// places under `max_connections` for ever (`serving.rs`). Longer than the idle timeout of
    /// a reverse proxy's pooled connections to the relay (nginx: 60 s), or the relay could
    /// close one just as the proxy sends a request on it.
    pub request_head_within: Duration,
    /// How long a request may take from the end of its head to the start of its answer, its
    /// body included: past it the client is answered 408 and the connection closed, so that a
    /// body sent a byte at a time cannot hold a place under `max_connections` (`serving.rs`).
    /// Engine.IO's long-polls wait for something to answer at most a ping interval (25 s);
    /// a WebSocket upgrade is answered at once, and the WebSocket after it is not a request.
    pub request_within: Duration,
    /// How long a connection's writes may make no progress before it is closed: a client that
    /// reads nothing (an answer or pushes left unread, a link that stalled) cannot hold a place
    /// under `max_connections`, nor the relay's buffers, until its heartbeat fails
    /// (`listener.rs`). What was pushed and not acknowledged reaches it when it reconnects.
    pub stalled_write_within: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 64 * 1024,
            max_frame_bytes: 128 * 1024,
            events_per_second: 200,
            events_burst: 400,
            pair_messages_per_second: 50,
            pair_messages_burst: 200,
            prekey_fetches_per_minute: 10,
            max_queue_per_recipient: 10_000,
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            max_prekeys_per_upload: 100,
            max_prekeys_stored: 500,
            prekey_low_watermark: 20,
            challenge_ttl: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(60),
            max_auth_failures: 5,
            max_ids_per_request: 1_000,
            max_send_backlog: Duration::from_millis(250),
            registrations_per_hour: 60,
            registrations_burst: 30,
            max_outgoing_packets: 1_024,
            max_unacknowledged_push_bytes: 4 * 1024 * 1024,
            max_connections_per_user: 32,
            max_connections: 0,
            first_byte_within: Duration::from_secs(10),
            request_head_within: Duration::from_secs(75),
            request_within: Duration::from_secs(60),
            stalled_write_within: Duration::from_secs(30),
        }
    }
}
