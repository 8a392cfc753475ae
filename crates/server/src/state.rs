//! Shared relay state, and the state each connection carries.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;

use crate::config::{Config, Limits};
use crate::delivery::Job;
use crate::limits::{KeyedLimiter, Rate, TokenBucket};
use crate::metrics::Metrics;
use crate::storage::Storage;

/// Clustered: the room for a user's messages, which a socket joins once it has caught up with
/// its queue ([`Audience::Messages`]). Rooms are for the adapter's broadcasts between nodes;
/// on one node pushes go through [`LocalSockets`] alone.
pub fn user_room(user: &str) -> String {
    format!("u:{user}")
}

/// Clustered: the room of a user's logged-in sockets, for receipts and presence
/// ([`Audience::Notices`]). A socket joins it at login, before catching up: unlike messages,
/// these have no order to keep with the backlog, and one pushed while the socket caught up
/// would otherwise be lost.
pub fn notice_room(user: &str) -> String {
    format!("n:{user}")
}

/// Joins `room` unless the socket has closed; returns whether it is in the room.
///
/// socketioxide marks a socket closed before it runs the disconnect handler and then drops the
/// socket's rooms. Joining first and checking after covers both orders: seen open after the
/// join, the rooms will be dropped later with the join in them; seen closed, they may have
/// been dropped already, so the join is taken back here.
fn join_while_open<A: Adapter>(socket: &SocketRef<A>, room: String) -> bool {
    socket.join(room);
    if socket.connected() {
        return true;
    }
    socket.leave_all();
    false
}

/// Which of a user's sockets a push is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Every logged-in socket: receipts, presence, prekey warnings.
    Notices,
    /// The sockets that have caught up with their queue, so that live messages never
    /// overtake the backlog.
    Messages,
}

/// A logged-in socket on this node.
struct LocalSocket<A: Adapter> {
    socket: SocketRef<A>,
    /// Whether it has caught up with its queue (and so takes live messages).
    caught_up: bool,
    /// Live pushes it was sent and has not acknowledged yet.
    unacknowledged: Unacknowledged,
}

impl<A: Adapter> LocalSocket<A> {
    fn new(socket: &SocketRef<A>) -> Self {
        Self { socket: socket.clone(), caught_up: false, unacknowledged: Unacknowledged::default() }
    }
}

/// The live pushes a socket has not acknowledged: message id → bytes pushed.
#[derive(Debug, Default)]
struct Unacknowledged {
    by_id: HashMap<i64, usize>,
    bytes: usize,
}

impl Unacknowledged {
    fn pushed(&mut self, messages: &[(i64, usize)]) {
        for &(id, bytes) in messages {
            if self.by_id.insert(id, bytes).is_none() {
                self.bytes += bytes;
            }
        }
    }

    fn acknowledged(&mut self, ids: &[i64]) {
        for id in ids {
            if let Some(bytes) = self.by_id.remove(id) {
                self.bytes -= bytes;
            }
        }
        if self.by_id.is_empty() {
            // Give the table's memory back: an idle connection should hold none.
            self.by_id = HashMap::new();
        }
    }
}

/// Which of a user's sockets take a live push ([`LocalSockets::take_push`]).
pub(crate) struct PushTargets<A: Adapter> {
    /// The sockets to push to.
    pub take: SmallVec<[SocketRef<A>; 2]>,
    /// The sockets that left more than their allowance unacknowledged: to be ended.
    pub too_slow: SmallVec<[SocketRef<A>; 1]>,
}

/// This node's logged-in sockets, by user: a push reaches them without resolving a room
/// through the adapter. On one node there are no rooms at all (they cost each logged-in
/// connection two room names, twice each, and four hash tables in socketioxide's adapter);
/// clustered, the sockets join the rooms as well, for the adapter's broadcasts from the other
/// nodes.
///
/// A socket is added at login and removed by its disconnect handler. socketioxide marks a
/// socket closed before it runs that handler, so adding first and checking after covers a
/// close racing the login: seen open after the add, the handler runs later and removes it;
/// seen closed, the handler may have run already, so the add is taken back here.
pub(crate) struct LocalSockets<A: Adapter> {
    by_user: Mutex<SocketsByUser<A>>,
}

/// A user's sockets, inline for the usual one.
type SocketsByUser<A> = HashMap<Arc<str>, SmallVec<[LocalSocket<A>; 1]>>;

impl<A: Adapter> Default for LocalSockets<A> {
    fn default() -> Self {
        Self { by_user: Mutex::new(HashMap::new()) }
    }
}

impl<A: Adapter> LocalSockets<A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SocketsByUser<A>> {
        self.by_user.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a socket that has just logged in as `user` (notices reach it from now on, messages
    /// once it has caught up); false, and nothing added, if it has closed.
    pub fn add(&self, user: &Arc<str>, socket: &SocketRef<A>) -> bool {
        self.lock().entry(user.clone()).or_default().push(LocalSocket::new(socket));
        if socket.connected() {
            return true;
        }
        self.remove(user, socket.id);
        false
    }

    /// Marks a socket of `user` caught up with its queue: live messages reach it from now on.
    /// False if it has gone (closed, or never added).
    pub fn mark_caught_up(&self, user: &str, socket: &SocketRef<A>) -> bool {
        let found = self
            .lock()
            .get_mut(user)
            .and_then(|sockets| sockets.iter_mut().find(|entry| entry.socket.id == socket.id))
            .map(|entry| entry.caught_up = true)
            .is_some();
        if found && socket.connected() {
            return true;
        }
        self.remove(user, socket.id);
        false
    }

    /// Removes a socket of `user` (its disconnect handler; a no-op if it is not there).
    pub fn remove(&self, user: &str, id: Sid) {
        let mut by_user = self.lock();
        if let Some(sockets) = by_user.get_mut(user) {
            sockets.retain(|entry| entry.socket.id != id);
            if sockets.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// The caught-up sockets of `user` for a live push of `messages` (id, bytes): each is
    /// charged with them, and those that would hold more than `allowance` unacknowledged bytes
    /// are returned apart, to be ended instead of pushed to.
    pub fn take_push(
        &self,
        user: &str,
        messages: &[(i64, usize)],
        allowance: usize,
    ) -> PushTargets<A> {
        let mut targets = PushTargets { take: SmallVec::new(), too_slow: SmallVec::new() };
        let mut by_user = self.lock();
        let Some(sockets) = by_user.get_mut(user) else { return targets };
        for entry in sockets.iter_mut().filter(|entry| entry.caught_up) {
            entry.unacknowledged.pushed(messages);
            if entry.unacknowledged.bytes > allowance {
                targets.too_slow.push(entry.socket.clone());
            } else {
                targets.take.push(entry.socket.clone());
            }
        }
        targets
    }

    /// Whether `user` has a socket here that live messages reach (caught up with its queue).
    pub fn has_caught_up(&self, user: &str) -> bool {
        self.lock().get(user).is_some_and(|sockets| sockets.iter().any(|entry| entry.caught_up))
    }

    /// Notes the message ids a socket of `user` acknowledged.
    pub fn acknowledged(&self, user: &str, id: Sid, ids: &[i64]) {
        let mut by_user = self.lock();
        let entry = by_user
            .get_mut(user)
            .and_then(|sockets| sockets.iter_mut().find(|entry| entry.socket.id == id));
        if let Some(entry) = entry {
            entry.unacknowledged.acknowledged(ids);
        }
    }

    /// The sockets of `user` that `audience` reaches.
    pub fn sockets(&self, user: &str, audience: Audience) -> SmallVec<[SocketRef<A>; 2]> {
        let by_user = self.lock();
        let Some(sockets) = by_user.get(user) else { return SmallVec::new() };
        sockets
            .iter()
            .filter(|entry| audience == Audience::Notices || entry.caught_up)
            .map(|entry| entry.socket.clone())
            .collect()
    }
}

/// How long what the relay knows about a recipient (that it exists, how much is queued) is
/// trusted before it is read again.
const RECIPIENT_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long "no such user" is trusted. A registration clears the entry on its own node only:
/// with several nodes, a user who just registered elsewhere would be refused `unknown_user`
/// (for good, by clients) for as long as this. Short, but not zero, so a burst of sends to a
/// name that does not exist costs one read a second.
const UNKNOWN_RECIPIENT_TTL: Duration = Duration::from_secs(1);

/// What the queue writer remembers about a recipient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecipientInfo {
    /// Whether the user exists.
    pub exists: bool,
    /// Messages pending for them (kept up to date between reads).
    pub pending: usize,
    /// When this was read from the database.
    pub read_at: Instant,
}

/// Recipients the writer has looked up recently.
#[derive(Debug, Default)]
pub(crate) struct RecipientCache {
    /// By user id.
    entries: Mutex<HashMap<String, RecipientInfo>>,
}

impl RecipientCache {
    /// A fresh entry, if there is one.
    pub fn get(&self, user: &str, now: Instant) -> Option<RecipientInfo> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(user)
            .filter(|info| {
                let ttl = if info.exists { RECIPIENT_CACHE_TTL } else { UNKNOWN_RECIPIENT_TTL };
                now.duration_since(info.read_at) < ttl
            })
            .copied()
    }

    /// Records what was read.
    pub fn put(&self, user: &str, info: RecipientInfo) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(user.to_owned(), info);
    }

    /// Adjusts a recipient's pending count.
    pub fn add_pending(&self, user: &str, delta: isize) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = entries.get_mut(user) {
            info.pending = info.pending.saturating_add_signed(delta);
        }
    }

    /// Forgets a recipient (after it registered or was released).
    pub fn forget(&self, user: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(user);
    }

    /// Drops stale entries.
    pub fn sweep(&self, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, info| now.duration_since(info.read_at) < RECIPIENT_CACHE_TTL);
    }
}

/// Who a recently stored message is for and from.
#[derive(Debug, Clone)]
pub(crate) struct RecentMessage {
    /// Only this user's acknowledgement deletes it.
    pub recipient: String,
    /// Told when it is delivered.
    pub sender: String,
    /// The sender's own id for it.
    pub client_id: String,
    /// [`Relay::send_key`] of the sender and client id.
    pub send: u64,
}

/// How many held messages each send (a [`Relay::send_key`] of sender and client id) names, so
/// a resend of a message still held is recognised without reading the database. A hash
/// collision only makes a message look like a resend, which sends it the careful way.
#[derive(Debug, Default)]
pub(crate) struct SendCounts(HashMap<u64, u32>);

impl SendCounts {
    pub(crate) fn add(&mut self, send: u64) {
        *self.0.entry(send).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, send: u64) {
        if let std::collections::hash_map::Entry::Occupied(mut count) = self.0.entry(send) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    pub(crate) fn contains(&self, send: u64) -> bool {
        self.0.contains_key(&send)
    }
}

/// Messages this node stored recently, by id (see [`Relay::recent`]).
#[derive(Debug, Default)]
pub(crate) struct RecentMessages {
    by_id: std::collections::BTreeMap<i64, RecentMessage>,
    sends: SendCounts,
}

impl RecentMessages {
    pub(crate) fn get(&self, id: i64) -> Option<&RecentMessage> {
        self.by_id.get(&id)
    }

    pub(crate) fn remove(&mut self, id: i64) -> Option<RecentMessage> {
        let message = self.by_id.remove(&id)?;
        self.sends.remove(message.send);
        Some(message)
    }

    pub(crate) fn insert(&mut self, id: i64, message: RecentMessage) {
        self.sends.add(message.send);
        if let Some(replaced) = self.by_id.insert(id, message) {
            self.sends.remove(replaced.send);
        }
    }

    /// Forgets the oldest beyond `limit`.
    pub(crate) fn trim(&mut self, limit: usize) {
        while self.by_id.len() > limit {
            if let Some((_, message)) = self.by_id.pop_first() {
                self.sends.remove(message.send);
            }
        }
    }

    /// Whether one of them is this send (sender and client id, [`Relay::send_key`]).
    pub(crate) fn holds_send(&self, send: u64) -> bool {
        self.sends.contains(send)
    }
}

/// Most recently stored messages remembered; older ones are looked up when acknowledged.
pub(crate) const RECENT_LIMIT: usize = 100_000;

/// The relay: configuration, storage, metrics, limits and the queue writer's inbox. One per
/// process, shared by every connection (as Socket.IO state).
pub struct Relay<A: Adapter> {
    /// Configuration.
    pub config: Config,
    /// The database.
    pub storage: Arc<dyn Storage>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The Socket.IO server, for pushes; set once the layer is built (it holds the relay as
    /// its state, so the two are made one after the other).
    io: OnceLock<SocketIo<A>>,
    /// This node's presence lease in Redis (clustered only).
    node_lease: OnceLock<crate::cluster::NodeLease>,
    /// The queue writer's inbox.
    pub(crate) writer: mpsc::Sender<Job<A>>,
    /// Registrations, committed in groups.
    pub(crate) registrar: crate::registrar::Registrar,
    /// Per (sender, recipient) message limits.
    pub(crate) pair_limiter: KeyedLimiter<u64>,
    /// Per (requester, target) bundle-fetch limits.
    pub(crate) fetch_limiter: KeyedLimiter<u64>,
    /// Registrations per client address (see `address::limit_key`).
    pub(crate) registration_limiter: KeyedLimiter<std::net::IpAddr>,
    /// This node's logged-in sockets, where pushes go.
    pub(crate) local: LocalSockets<A>,
    /// Clustered: the room of this node's logged-in sockets, excepted from the node's own room
    /// broadcasts (it reaches them through [`Relay::local`]). Random per process.
    pub(crate) node_room: String,
    /// Authenticated sockets per user on this node, for presence (keyed by the connections'
    /// own copy of the user id, so a login allocates no second one).
    pub(crate) online: Mutex<HashMap<Arc<str>, usize>>,
    /// (sender, recipient) pairs known to be recorded as contacts (hashed), so storing a
    /// message does not write the pair every time.
    pub(crate) known_contacts: Mutex<HashSet<u64>>,
    /// Recipients the writer has looked up.
    pub(crate) recipients: RecipientCache,
    /// Messages this node stored recently, by id, so their acknowledgements are matched and
    /// answered without reading them back.
    pub(crate) recent: Mutex<RecentMessages>,
    /// Messages the writer holds unwritten (pushed, waiting for their acknowledgement; see
    /// `crate::unwritten`), as of its last batch: queued, but not in the database's count.
    pub(crate) held_unwritten: AtomicUsize,
    /// Keys the pair hashes; random per process.
    hasher: RandomState,
    /// After an adapter failure, pushes skip the adapter until then (each failed publish costs
    /// a timeout, which the queue writer must not pay for every message while Redis is away).
    adapter_down_until: Mutex<Option<Instant>>,
}

impl<A: Adapter> std::fmt::Debug for Relay<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<A: Adapter> Relay<A> {
    pub(crate) fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        writer: mpsc::Sender<Job<A>>,
    ) -> Self {
        let limits = &config.limits;
        let pair_rate = Rate::new(
            limits.pair_messages_per_second,
            Duration::from_secs(1),
            limits.pair_messages_burst,
        );
        let fetch_rate = Rate::new(
            limits.prekey_fetches_per_minute,
            Duration::from_secs(60),
            limits.prekey_fetches_per_minute,
        );
        let registration_rate = Rate::new(
            limits.registrations_per_hour,
            Duration::from_secs(3600),
            limits.registrations_burst,
        );
        Self {
            pair_limiter: KeyedLimiter::new(pair_rate),
            fetch_limiter: KeyedLimiter::new(fetch_rate),
            registration_limiter: KeyedLimiter::new(registration_rate),
            local: LocalSockets::default(),
            node_room: format!("node:{:016x}", rand::random::<u64>()),
            online: Mutex::new(HashMap::new()),
            known_contacts: Mutex::new(HashSet::new()),
            recipients: RecipientCache::default(),
            recent: Mutex::new(RecentMessages::default()),
            held_unwritten: AtomicUsize::new(0),
            hasher: RandomState::new(),
            adapter_down_until: Mutex::new(None),
            registrar: crate::registrar::Registrar::start(storage.clone()),
            config,
            storage,
            metrics,
            io: OnceLock::new(),
            node_lease: OnceLock::new(),
            writer,
        }
    }

    /// Gives the relay its Socket.IO handle.
    pub(crate) fn attach_io(&self, io: SocketIo<A>) {
        let _ = self.io.set(io);
    }

    /// Gives the relay its presence lease (clustered).
    pub(crate) fn attach_lease(&self, lease: crate::cluster::NodeLease) {
        let _ = self.node_lease.set(lease);
    }

    /// This node's presence lease (clustered only).
    pub(crate) fn node_lease(&self) -> Option<&crate::cluster::NodeLease> {
        self.node_lease.get()
    }

    /// The Socket.IO handle (none only before start-up finished).
    pub(crate) fn io(&self) -> Option<&SocketIo<A>> {
        self.io.get()
    }

    /// The configured limits.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// A hash naming an ordered pair of users.
    pub(crate) fn pair_key(&self, first: &str, second: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        first.hash(&mut hasher);
        second.hash(&mut hasher);
        std::hash::Hasher::finish(&hasher)
    }

    /// A hash naming one send: its sender and the sender's id for the message (a resend has
    /// the same).
    pub(crate) fn send_key(&self, sender: &str, client_id: &str) -> u64 {
        self.pair_key(sender, client_id)
    }

    /// Whether pushes should go through the adapter now (not within 2 s of a failure).
    pub(crate) fn adapter_usable(&self) -> bool {
        let down = self.adapter_down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.is_none_or(|until| Instant::now() >= until)
    }

    /// Records an adapter failure: local-only pushes for the next 2 s.
    pub(crate) fn adapter_failed(&self) {
        let mut down = self.adapter_down_until.lock().unwrap_or_else(|e| e.into_inner());
        *down = Some(Instant::now() + Duration::from_secs(2));
    }

    /// Whether several nodes share the work through the Redis adapter.
    pub(crate) fn clustered(&self) -> bool {
        self.config.redis_url.is_some()
    }

    /// Adds a socket that has just logged in as `user`: notices reach it from now on (see
    /// [`LocalSockets`]). False if it has closed.
    pub(crate) fn add_logged_in(&self, user: &Arc<str>, socket: &SocketRef<A>) -> bool {
        if self.clustered() {
            // In this node's room, which the node's own broadcasts except: it pushes to its
            // sockets directly (`delivery::push_to`).
            socket.join(self.node_room.clone());
            if !join_while_open(socket, notice_room(user)) {
                return false;
            }
        }
        self.local.add(user, socket)
    }

    /// Marks a socket caught up with its queue: live messages reach it from now on. False if
    /// it has closed.
    pub(crate) fn add_caught_up(&self, user: &str, socket: &SocketRef<A>) -> bool {
        if self.clustered() && !join_while_open(socket, user_room(user)) {
            return false;
        }
        self.local.mark_caught_up(user, socket)
    }

    /// Whether the user has an authenticated socket on any node (asking the other nodes through
    /// the adapter when clustered, with a short timeout: presence is a courtesy).
    pub(crate) async fn online_anywhere(&self, user: &str) -> bool {
        if self.is_online(user) {
            return true;
        }
        let (true, Some(io)) = (self.clustered(), self.io()) else {
            return false;
        };
        // This node's own sockets are known here (`is_online`, which a login or a logout
        // updates at once); the room may still hold one that is closing, so only other nodes'
        // sockets count.
        let this_node = io.config().server_id;
        let remote = io.to(notice_room(user)).fetch_sockets();
        matches!(
            tokio::time::timeout(Duration::from_secs(1), remote).await,
            Ok(Ok(sockets)) if sockets.iter().any(|socket| socket.data().server_id != this_node)
        )
    }

    /// The users with an authenticated socket on this node.
    pub(crate) fn online_users(&self) -> Vec<Arc<str>> {
        let online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        online.iter().filter(|(_, count)| **count > 0).map(|(user, _)| user.clone()).collect()
    }

    /// Whether the user has a socket on this node that live messages reach.
    pub(crate) fn is_caught_up(&self, user: &str) -> bool {
        self.local.has_caught_up(user)
    }

    /// Whether the user has an authenticated socket on this node.
    pub(crate) fn is_online(&self, user: &str) -> bool {
        let online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        online.get(user).is_some_and(|count| *count > 0)
    }
}

/// A login challenge handed to a connection.
#[derive(Debug, Clone)]
pub(crate) struct Challenge {
    /// The random nonce to sign.
    pub nonce: [u8; 32],
    /// When it stops being accepted.
    pub expires: Instant,
}

/// What a connection knows about itself.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    /// The outstanding challenge; taken (single use) by the first login attempt.
    pub challenge: Option<Challenge>,
    /// The user this connection proved to be (kept after the disconnect, for the requests
    /// still being handled).
    pub user: Option<Arc<str>>,
    /// Whether `user` is counted online (and in the authenticated gauge): set by the login,
    /// cleared by whichever undoes it first (see `handlers::unbind_user`).
    pub counted_online: bool,
    /// Failed logins so far.
    pub auth_failures: u32,
    /// Per-connection event limit.
    pub events: Option<TokenBucket>,
    /// The task that closes the connection if it has not logged in by the deadline; cancelled
    /// by the login or the close.
    pub login_deadline: Option<tokio::task::AbortHandle>,
    /// While the connection catches up: where its acknowledgements go to pace the catch-up.
    pub catch_up: Option<Arc<crate::catch_up::CatchUpAcks>>,
    /// Its user id has been registered again, so this connection's login belonged to an
    /// earlier holder of the id (released by the operator): it speaks for nobody any more and
    /// is being closed (see `handlers::supersede`).
    pub superseded: bool,
}

/// Per-connection state, kept in the socket's extensions.
#[derive(Debug)]
pub struct Connection {
    /// The host the client connected to (the `Host` header), bound into login signatures.
    pub host: String,
    /// Where the client connects from (`address::client_address`), when known.
    pub(crate) address: Option<std::net::IpAddr>,
    /// Mutable state.
    pub(crate) state: Mutex<ConnectionState>,
    /// Whether the connection gauge counted this socket (its connect handler ran), so that
    /// only counted sockets are subtracted when they go.
    pub(crate) counted: std::sync::atomic::AtomicBool,
}

impl Connection {
    pub(crate) fn new(host: String, address: Option<std::net::IpAddr>) -> Self {
        Self {
            host,
            address,
            state: Mutex::new(ConnectionState::default()),
            counted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<Arc<str>> {
        self.lock().user.clone()
    }

    /// Takes an event token, or says how long to wait.
    pub(crate) fn allow_event(&self, limits: &Limits, now: Instant) -> Result<(), Duration> {
        let Some(rate) =
            Rate::new(limits.events_per_second, Duration::from_secs(1), limits.events_burst)
        else {
            return Ok(());
        };
        let mut state = self.lock();
        state.events.get_or_insert_with(|| TokenBucket::full(rate, now)).take(rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_recipient_is_read_again_soon_a_known_one_later() {
        let cache = RecipientCache::default();
        let read_at = Instant::now();
        cache.put("ghost", RecipientInfo { exists: false, pending: 0, read_at });
        cache.put("bob", RecipientInfo { exists: true, pending: 3, read_at });
        let soon = read_at + Duration::from_millis(500);
        assert!(cache.get("ghost", soon).is_some_and(|info| !info.exists));
        let later = read_at + Duration::from_secs(2);
        assert!(cache.get("ghost", later).is_none(), "registered on another node meanwhile?");
        assert!(cache.get("bob", later).is_some_and(|info| info.exists && info.pending == 3));
        assert!(cache.get("bob", read_at + RECIPIENT_CACHE_TTL).is_none());
    }
}
