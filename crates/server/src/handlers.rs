//! Socket.IO handlers: connection set-up, authentication, the key directory, sending and
//! acknowledging messages, presence.
//!
//! Every request is decoded with a typed, fallible decoder (`TryData`) and answered through
//! its ack with `{"ok": true, …}` or a [`Failure`]; nothing a client sends can panic a handler
//! or leave a request unanswered. Handlers are registered in a connect *middleware*, which runs
//! before the client is told it is connected, so no early event finds no handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, MessageHandler, Value};
use socketioxide::socket::Socket;
use sotto_protocol::UserId;
use sotto_protocol::wire::{
    self, BundleJson, OneTimePrekeyJson, PublicIdentityJson, SignedPrekeyJson,
};

use crate::address::{client_address, limit_key};
use crate::auth::{self, AuthFailure};
use crate::catch_up;
use crate::config::Limits;
use crate::delivery::{self, Job, now_ms, push_notice};
use crate::events::{
    self, BundleAnswer, ChallengeAnswer, Done, ErrorCode, Failure, IdentityAnswer, IdsRequest,
    LoginAnswer, LoginRequest, PrekeysLowPush, PresencePush, RegisterRequest, RequestKeyRequest,
    SendRequest, StatusAnswer, StatusEntry, UploadAnswer,
};
use crate::metrics::CatchingUp;
use crate::serving::PeerAddress;
use crate::state::{Audience, Connection, Relay, notice_room};
use crate::storage::{MessageStatus, NewMessage, NewUser, RegisterError};

/// Registers the relay's namespace on a single-node (local adapter) server. (socketioxide
/// only offers `ns` on concrete adapters, so each adapter gets its own registration.)
pub(crate) fn register_local_namespace(io: &SocketIo<LocalAdapter>) {
    io.ns("/", on_connect::<LocalAdapter>.with(set_up_connection::<LocalAdapter>));
}

/// Registers the namespace on a clustered server; completes once its Redis channels are
/// subscribed.
pub(crate) async fn register_cluster_namespace(
    io: &SocketIo<crate::cluster::Adapter>,
) -> Result<(), crate::ServeError> {
    type Cluster = crate::cluster::Adapter;
    io.ns("/", on_connect::<Cluster>.with(set_up_connection::<Cluster>))
        .await
        .map_err(|e| crate::ServeError::Redis(e.to_string()))
}

type Reply<T> = Result<T, Failure>;

fn answer<A: Adapter, T: Serialize>(relay: &Relay<A>, ack: AckSender<A>, result: Reply<T>) {
    let sent = match result {
        Ok(value) => ack.send(&value),
        Err(failure) => {
            relay.metrics.reject(failure.error.as_str());
            ack.send(&failure)
        }
    };
    if let Err(error) = sent {
        tracing::debug!(%error, "could not answer; the socket is gone");
    }
}

fn bad_request(error: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorCode::BadRequest, format!("malformed request: {error}"))
}

fn connection<A: Adapter>(socket: &Socket<A>) -> Reply<Arc<Connection>> {
    socket
        .extensions
        .get::<Arc<Connection>>()
        .ok_or_else(|| Failure::new(ErrorCode::Busy, "connection is closing"))
}

/// A limiter's "wait this long" as the client's `rate_limited`.
fn rate_limited(wait: Duration) -> Failure {
    Failure::rate_limited(wait.as_millis().try_into().unwrap_or(u64::MAX))
}

fn allow_event<A: Adapter>(relay: &Relay<A>, connection: &Connection) -> Reply<()> {
    connection.allow_event(relay.limits(), Instant::now()).map_err(rate_limited)
}

fn logged_in(connection: &Connection) -> Reply<Arc<str>> {
    let state = connection.lock();
    match &state.user {
        Some(user) if !state.superseded => Ok(user.clone()),
        _ => Err(Failure::new(ErrorCode::Unauthenticated, "log in or register first")),
    }
}

pub(crate) fn parse_user_id(text: &str) -> Reply<UserId> {
    UserId::parse(text).map_err(|e| Failure::new(ErrorCode::InvalidUserId, e.to_string()))
}

fn storage_failure<A: Adapter>(relay: &Relay<A>, error: impl std::fmt::Display) -> Failure {
    relay.metrics.storage_errors.inc();
    tracing::warn!(%error, "storage operation failed");
    Failure::new(ErrorCode::StorageUnavailable, "storage unavailable; retry")
}

/// Runs before the client learns it is connected: per-connection state and every handler.
async fn set_up_connection<A: Adapter>(
    socket: SocketRef<A>,
    State(relay): State<Arc<Relay<A>>>,
) -> Result<(), Infallible> {
    let request = socket.req_parts();
    let host = request
        .headers
        .get(axum::http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let peer = request.extensions.get::<PeerAddress>().map(|peer| peer.0);
    let address = client_address(peer, &request.headers, &relay.config.trusted_proxies);
    socket.extensions.insert(Arc::new(Connection::new(host, address)));
    socket.on(events::AUTH_CHALLENGE, on_challenge::<A>);
    socket.on(events::AUTH_LOGIN, on_login::<A>);
    socket.on(events::REGISTER_KEY, on_register::<A>);
    socket.on(events::REQUEST_KEY, on_request_key::<A>);
    socket.on(events::IDENTITY, on_identity::<A>);
    socket.on(events::MESSAGE_SEND, Inline(on_send::<A>));
    socket.on(events::MESSAGE_ACK, Inline(on_ack::<A>));
    socket.on(events::MESSAGE_STATUS, on_status::<A>);
    socket.on_fallback(on_unknown_event::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    Ok(())
}

/// An event the relay does not know: a client waiting for an answer (say, a newer client
/// trying an event this relay predates) gets a clear error instead of waiting out its own
/// timeout; without an ack id it is ignored. Counted against the event limit like any other.
async fn on_unknown_event<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = connection(&socket).and_then(|connection| {
        allow_event(&relay, &connection)?;
        Err::<Done, _>(Failure::new(ErrorCode::BadRequest, "unknown event"))
    });
    answer(&relay, ack, result);
}

/// Runs once the socket is connected (a socket can still fail between the middleware and this
/// point, and only connected sockets get their disconnect handler called, so the gauge counts
/// from here).
async fn on_connect<A: Adapter>(socket: SocketRef<A>, State(relay): State<Arc<Relay<A>>>) {
    tracing::trace!(sid = %socket.id, "connected");
    relay.metrics.connections_total.inc();
    if let Ok(connection) = connection(&socket) {
        relay.metrics.connections.inc();
        connection.counted.store(true, std::sync::atomic::Ordering::SeqCst);
        // Closed before this ran: the disconnect handler may have found nothing counted yet.
        if !socket.connected()
            && connection.counted.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            relay.metrics.connections.dec();
        }
    }

    // The login deadline holds only the socket's id: a closed socket must not stay in memory
    // until its deadline.
    let deadline = relay.limits().auth_timeout;
    let weak = Arc::downgrade(&relay);
    let sid = socket.id;
    let timer = tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        let Some(relay) = weak.upgrade() else { return };
        let Some(pending) = relay.io().and_then(|io| io.get_socket(sid)) else { return };
        let anonymous = connection(&pending).map(|c| c.user().is_none()).unwrap_or(false);
        if anonymous {
            relay.metrics.auth_failure("timeout");
            // Also ends a socket whose transport closed while it was being connected: the
            // namespace may still list it (a race in socketioxide), and this removes it.
            let _ = pending.disconnect();
        }
    });
    // The timer is a task of a few hundred bytes for as long as the deadline (a minute by
    // default): the login or the disconnect handler cancels it, so logged-in and closed
    // connections hold none. (A socket closed before this point keeps its timer, for the race
    // above.)
    if let Ok(connection) = connection(&socket) {
        let mut state = connection.lock();
        if state.user.is_some() {
            timer.abort();
        } else {
            state.login_deadline = Some(timer.abort_handle());
        }
    }
}

async fn on_disconnect<A: Adapter>(socket: SocketRef<A>, State(relay): State<Arc<Relay<A>>>) {
    let Ok(connection) = connection(&socket) else {
        return;
    };
    // Out of its rooms now rather than after this handler (socketioxide's order): clustered,
    // another node asking whether the user is still online must not count this socket, or two
    // of a user's connections closing on two nodes at once could each count the other and
    // neither announce that the user left.
    socket.leave_all();
    if connection.counted.swap(false, std::sync::atomic::Ordering::SeqCst) {
        relay.metrics.connections.dec();
    }
    if let Some(timer) = connection.lock().login_deadline.take() {
        timer.abort();
    }
    if let Some(user) = connection.user() {
        relay.local.remove(&user, socket.id);
    }
    log_out(&relay, &connection).await;
}

/// Undoes the connection's login (once, see [`unbind_user`]) and, if that was the user's last
/// connection here, tells their contacts.
async fn log_out<A: Adapter>(relay: &Relay<A>, connection: &Connection) {
    if let Some(Unbound { user, last: true }) = unbind_user(relay, connection) {
        announce(relay, &user).await;
    }
}

/// Tells the online users `user` has written to whether `user` is online (on any node). Called
/// when a user's first connection on this node logs in or last one closes; what is pushed is
/// the state once the contacts are loaded, not the event that caused the call, so that when a
/// login and a disconnect race, the announcement made last tells the truth (and one made early
/// may be a repeat, which clients take as a no-op).
pub(crate) async fn announce<A: Adapter>(relay: &Relay<A>, user: &str) {
    let Some(contacts) = contacts_to_tell(relay, user).await else { return };
    // Clustered, a user whose last connection here closed may still be connected to another
    // node: they have not left.
    let online = relay.online_anywhere(user).await;
    let event = if online { events::USER_JOINED } else { events::USER_LEFT };
    delivery::push_presence(relay, event, contacts.iter().map(|contact| (contact.as_str(), user)))
        .await;
    // A login on this node: in its presence lease at once, so that the user is announced
    // gone if the node dies before its next renewal (`lease.rs`).
    if let Some(lease) = relay.node_lease()
        && relay.is_online(user)
        && let Err(error) = lease.add(user).await
    {
        relay.metrics.adapter_errors.inc();
        tracing::debug!(%error, "adding a user to this node's presence lease failed");
    }
}

/// Tells the online users `user` has written to that `user` left, for a node that died
/// holding `user`'s last connection (`lease.rs`, which has checked that no live node holds one).
pub(crate) async fn announce_left<A: Adapter>(relay: &Relay<A>, user: &str) {
    let Some(contacts) = contacts_to_tell(relay, user).await else { return };
    let about = contacts.iter().map(|contact| (contact.as_str(), user));
    delivery::push_presence(relay, events::USER_LEFT, about).await;
}

/// The users `user` has written to, who are told of `user`'s presence; `None` when they cannot
/// be loaded (logged, unless the relay is stopping).
async fn contacts_to_tell<A: Adapter>(relay: &Relay<A>, user: &str) -> Option<Vec<String>> {
    match relay.storage.written_to(user).await {
        Ok(contacts) => Some(contacts),
        // A connection that closed while the relay stops (socketioxide runs disconnect
        // handlers as tasks of their own and does not wait for them before the database is
        // closed): not a failure to count or to warn about once per connection.
        Err(error) if error.is_closed() => {
            tracing::debug!("the relay is stopping; presence not announced");
            None
        }
        Err(error) => {
            relay.metrics.storage_errors.inc();
            tracing::warn!(%error, "loading contacts for presence failed");
            None
        }
    }
}

// ---- authentication ----------------------------------------------------------------------

async fn on_challenge<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = (|| {
        let connection = connection(&socket)?;
        allow_event(&relay, &connection)?;
        let now = Instant::now();
        let challenge = auth::new_challenge(relay.limits(), now);
        let expires_at =
            now_ms() + i64::try_from(relay.limits().challenge_ttl.as_millis()).unwrap_or(i64::MAX);
        let answer = ChallengeAnswer {
            ok: true,
            nonce: wire::b64(&challenge.nonce),
            host: connection.host.clone(),
            expires_at,
        };
        connection.lock().challenge = Some(challenge);
        Ok(answer)
    })();
    answer(&relay, ack, result);
}

/// Checks a challenge signature against the names this relay answers to. The `Host` header
/// counts only when no name was configured (see [`crate::Config::public_hosts`]): a relay in
/// the middle could otherwise pass on our challenge with its own name in `Host`.
fn verify_login<A: Adapter>(
    relay: &Relay<A>,
    connection: &Connection,
    user: &UserId,
    key: &sotto_protocol::VerifyingKey,
    signature: &str,
) -> Result<(), AuthFailure> {
    let challenge = connection.lock().challenge.take();
    let now = Instant::now();
    let header = relay.config.trust_host_header.then_some(&connection.host);
    let mut result = Err(AuthFailure::BadSignature);
    for host in header.into_iter().chain(&relay.config.public_hosts) {
        result = auth::verify_challenge(challenge.clone(), host, user, key, signature, now);
        if result != Err(AuthFailure::BadSignature) {
            break;
        }
    }
    result
}

fn record_auth_failure<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    connection: &Connection,
    failure: AuthFailure,
) -> Failure {
    relay.metrics.auth_failure(failure.label());
    let failures = {
        let mut state = connection.lock();
        state.auth_failures += 1;
        state.auth_failures
    };
    if failures >= relay.limits().max_auth_failures {
        tracing::info!(sid = %socket.id, "too many failed logins; closing the connection");
        let closing = socket.clone();
        tokio::spawn(async move {
            // Let the failure answer go out first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = closing.disconnect();
        });
    }
    failure.failure()
}

async fn on_login<A: Adapter>(
    socket: SocketRef<A>,
    TryData(request): TryData<LoginRequest>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = login(&relay, &socket, request).await;
    if let Some(bound) = answer_bound(&relay, ack, result) {
        after_login(relay, socket, bound).await;
    }
}

/// Answers a login or registration; on success, returns what `after_login` needs.
fn answer_bound<A: Adapter>(
    relay: &Relay<A>,
    ack: AckSender<A>,
    result: Reply<(LoginAnswer, Bound)>,
) -> Option<Bound> {
    match result {
        Ok((login_answer, bound)) => {
            answer(relay, ack, Ok(login_answer));
            Some(bound)
        }
        Err(failure) => {
            answer(relay, ack, Err::<LoginAnswer, _>(failure));
            None
        }
    }
}

async fn login<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    request: Result<LoginRequest, socketioxide::ParserError>,
) -> Reply<(LoginAnswer, Bound)> {
    let connection = connection(socket)?;
    allow_event(relay, &connection)?;
    let request = request.map_err(bad_request)?;
    if connection.user().is_some() {
        return Err(Failure::new(ErrorCode::AlreadyAuthenticated, "already logged in"));
    }
    let user = parse_user_id(&request.user_id)?;
    let identity =
        relay.storage.identity(user.as_str()).await.map_err(|e| storage_failure(relay, e))?;
    let Some(key) = identity.as_ref().and_then(auth::stored_signing_key) else {
        connection.lock().challenge = None;
        return Err(record_auth_failure(relay, socket, &connection, AuthFailure::UnknownUser));
    };
    if let Err(failure) = verify_login(relay, &connection, &user, &key, &request.signature) {
        return Err(record_auth_failure(relay, socket, &connection, failure));
    }
    let answer = login_answer(relay, &user).await?;
    Ok((answer, bind_user(relay, &connection, &user)?))
}

/// A user bound to a connection by [`bind_user`].
struct Bound {
    user: Arc<str>,
    /// Whether this is the user's only connection to this relay (their contacts are told
    /// they joined).
    first: bool,
    /// Counts the connection as catching up until the writer has attached it.
    catching_up: CatchingUp,
}

/// Marks the connection as `user`'s and counts the user online, or refuses it when the user
/// already holds `max_connections_per_user` connections here. The connection's lock is held
/// throughout, so that [`unbind_user`] undoes all of it or none.
fn bind_user<A: Adapter>(relay: &Relay<A>, connection: &Connection, user: &UserId) -> Reply<Bound> {
    let mut state = connection.lock();
    if state.user.is_some() {
        // Two logins raced on one connection; only the first counts.
        return Err(Failure::new(ErrorCode::AlreadyAuthenticated, "already logged in"));
    }
    let mut online = relay.online.lock().unwrap_or_else(|e| e.into_inner());
    let limit = relay.limits().max_connections_per_user;
    let held = online.get(user.as_str()).copied().unwrap_or(0);
    if limit != 0 && held >= limit {
        return Err(Failure::new(
            ErrorCode::TooManyConnections,
            format!("{user} already has {held} connections to this relay; close one first"),
        ));
    }
    let user: Arc<str> = Arc::from(user.as_str());
    state.user = Some(user.clone());
    state.counted_online = true;
    if let Some(timer) = state.login_deadline.take() {
        timer.abort();
    }
    relay.metrics.logins.inc();
    relay.metrics.authenticated.inc();
    let count = online.entry(user.clone()).or_default();
    *count += 1;
    Ok(Bound { first: *count == 1, user, catching_up: CatchingUp::start(&relay.metrics) })
}

/// A user taken off a connection by [`unbind_user`].
struct Unbound {
    user: Arc<str>,
    /// Whether that was the user's last connection to this relay (their contacts are told
    /// they left).
    last: bool,
}

/// Undoes [`bind_user`]'s counting, once: called both by the disconnect handler and by a login
/// that finds its socket closed (it may have closed before the user was bound, when the
/// handler found nothing to undo), and only the first call finds a user counted. The user stays
/// on the connection: requests read before the close (acknowledgements) still act as them.
fn unbind_user<A: Adapter>(relay: &Relay<A>, connection: &Connection) -> Option<Unbound> {
    let mut state = connection.lock();
    if !std::mem::take(&mut state.counted_online) {
        return None;
    }
    let user = state.user.clone()?;
    relay.metrics.authenticated.dec();
    let mut online = relay.online.lock().unwrap_or_else(|e| e.into_inner());
    let last = match online.get_mut(&*user) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        _ => {
            online.remove(&*user);
            true
        }
    };
    Some(Unbound { user, last })
}

async fn login_answer<A: Adapter>(relay: &Relay<A>, user: &UserId) -> Reply<LoginAnswer> {
    let queued =
        relay.storage.pending_count(user.as_str()).await.map_err(|e| storage_failure(relay, e))?;
    let stock = relay
        .storage
        .one_time_prekey_stock(user.as_str())
        .await
        .map_err(|e| storage_failure(relay, e))?;
    Ok(LoginAnswer {
        ok: true,
        user_id: user.to_string(),
        queued,
        one_time_prekeys: stock.held,
        one_time_prekeys_from: stock.lowest_id,
    })
}

/// Presence lookups a login runs at once (each one a round trip to the other nodes when
/// clustered).
const PRESENCE_LOOKUPS_AT_ONCE: usize = 16;

/// After the login answer went out: presence, then the backlog, then live delivery.
async fn after_login<A: Adapter>(relay: Arc<Relay<A>>, socket: SocketRef<A>, bound: Bound) {
    let Bound { user, first, catching_up } = bound;
    // Receipts and presence reach the socket from now on (nothing that could cause one can
    // have happened since the answer went out: this runs before the task first yields);
    // messages only once it has caught up (the writer marks it so then).
    // Seen closed after the add, the socket's disconnect handler may have run before the
    // login bound the user (and found nothing to undo), so the login is undone here.
    if !relay.add_logged_in(&user, &socket) {
        if let Ok(connection) = connection(&socket) {
            log_out(&relay, &connection).await;
        }
        return;
    }
    if first {
        announce(&relay, &user).await;
    }
    // Whoever has written to this user shares their presence with them (clustered, looked up
    // a few at a time rather than one after the other).
    if let Ok(contacts) = relay.storage.written_by(&user).await {
        let lookups: Vec<_> =
            contacts.iter().map(|contact| relay.online_anywhere(contact)).collect();
        let online: Vec<bool> =
            futures_util::stream::iter(lookups).buffered(PRESENCE_LOOKUPS_AT_ONCE).collect().await;
        for (contact, online) in contacts.iter().zip(online) {
            if online {
                let _ = socket.emit(events::USER_JOINED, &PresencePush { user_id: contact });
            }
        }
    }
    tokio::spawn(catch_up::run(relay, socket, user, catching_up));
}

// ---- registration and prekeys --------------------------------------------------------------

async fn on_register<A: Adapter>(
    socket: SocketRef<A>,
    TryData(request): TryData<RegisterRequest>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let connection = match connection(&socket) {
        Ok(connection) => connection,
        Err(failure) => return answer(&relay, ack, Err::<Done, _>(failure)),
    };
    if let Err(failure) = allow_event(&relay, &connection) {
        return answer(&relay, ack, Err::<Done, _>(failure));
    }
    let request = match request {
        Ok(request) => request,
        Err(error) => return answer(&relay, ack, Err::<Done, _>(bad_request(error))),
    };
    let superseded = connection.lock().superseded;
    match connection.user() {
        Some(_) if superseded => {
            answer(&relay, ack, logged_in(&connection).map(|_| Done::OK));
        }
        Some(user) => {
            let result = upload_prekeys(&relay, &user, request).await;
            answer(&relay, ack, result);
        }
        None => {
            let result = register(&relay, &socket, &connection, request).await;
            if let Some(bound) = answer_bound(&relay, ack, result) {
                after_login(relay, socket, bound).await;
            }
        }
    }
}

fn required<'a, T>(field: &'a Option<T>, name: &str) -> Reply<&'a T> {
    field.as_ref().ok_or_else(|| bad_request(format!("missing field `{name}`")))
}

async fn register<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    connection: &Connection,
    request: RegisterRequest,
) -> Reply<(LoginAnswer, Bound)> {
    let user = parse_user_id(required(&request.user_id, "userId")?)?;
    let identity_json: &PublicIdentityJson = required(&request.identity, "identity")?;
    let spk_json: &SignedPrekeyJson = required(&request.signed_prekey, "signedPrekey")?;
    let signature = required(&request.signature, "signature")?;
    let opk_json: &[OneTimePrekeyJson] = request.one_time_prekeys.as_deref().unwrap_or_default();

    let (identity, stored_identity) = auth::check_identity(identity_json)?;
    let signed_prekey = auth::check_signed_prekey(spk_json, &identity)?;
    let one_time_prekeys = auth::check_one_time_prekeys(opk_json, relay.limits())?;
    if let Err(failure) = verify_login(relay, connection, &user, identity.signing_key(), signature)
    {
        return Err(record_auth_failure(relay, socket, connection, failure));
    }
    // Counted once the request is shown to be a real claim (keys checked, challenge signed),
    // before anything is written.
    if let Some(address) = connection.address {
        relay
            .registration_limiter
            .check(&limit_key(address), Instant::now())
            .map_err(rate_limited)?;
    }
    // A registration stores every one-time prekey it brings (their ids were checked unique)
    // and drops anything queued for an earlier holder of the id: the answer needs no reading
    // back, so a failed read cannot turn a claimed id into an error its owner retries.
    let answer = LoginAnswer {
        ok: true,
        user_id: user.to_string(),
        queued: 0,
        one_time_prekeys: one_time_prekeys.len(),
        one_time_prekeys_from: one_time_prekeys.iter().map(|key| key.id).min(),
    };
    let new_user = NewUser {
        user_id: user.to_string(),
        identity: stored_identity,
        signed_prekey,
        one_time_prekeys,
        now: now_ms(),
    };
    let registered_at = new_user.now;
    match relay.registrar.register(new_user).await {
        Ok(()) => {}
        Err(RegisterError::Taken) => {
            return Err(Failure::new(ErrorCode::UserTaken, format!("{user} is taken")));
        }
        Err(RegisterError::Storage(error)) => return Err(storage_failure(relay, error)),
    }
    supersede(relay, user.as_str()).await;
    relay.recipients.forget(user.as_str());
    // Messages held unwritten for an earlier holder of the id go as its stored ones just did,
    // and those held from it are marked as its stored ones were; ahead of this connection's
    // catch-up, whose hand-over to the writer comes later.
    let _ = relay.writer.send(Job::Forget { user: user.to_string(), registered_at }).await;
    // The id may have been released (its contacts deleted) and taken again: forget which pairs
    // are known to be recorded, so the next message of any pair records it again. Cheap: a
    // known pair costs one `INSERT … ON CONFLICT DO NOTHING` to learn again.
    relay.known_contacts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    tracing::info!(user = %user, "registered");
    Ok((answer, bind_user(relay, connection, &user)?))
}

/// A registration has just taken `user`, so the id was free: a connection still logged in
/// under it belongs to an earlier holder, whose id the operator released (a stolen identity, a
/// lost device). It must not receive the new holder's messages, acknowledge them (which deletes
/// them) or upload prekeys for them: from now on it speaks for nobody, and it is closed.
async fn supersede<A: Adapter>(relay: &Relay<A>, user: &str) {
    for socket in relay.local.sockets(user, Audience::Notices) {
        if let Ok(connection) = connection(&socket) {
            connection.lock().superseded = true;
        }
        tracing::info!(sid = %socket.id, "closing a connection of the id's earlier holder");
        delivery::end_socket(relay, user, socket);
    }
    // Other nodes' connections under the id, through the adapter.
    if let (true, true, Some(io)) = (relay.clustered(), relay.adapter_usable(), relay.io())
        && let Err(error) = io.to(notice_room(user)).disconnect().await
    {
        relay.metrics.adapter_errors.inc();
        tracing::warn!(%error, "closing the earlier holder's connections on other nodes failed");
    }
}

async fn upload_prekeys<A: Adapter>(
    relay: &Relay<A>,
    user: &str,
    request: RegisterRequest,
) -> Reply<UploadAnswer> {
    if request.user_id.is_some() || request.identity.is_some() || request.signature.is_some() {
        return Err(Failure::new(
            ErrorCode::AlreadyAuthenticated,
            "already registered; only prekeys can be uploaded",
        ));
    }
    let stored = relay.storage.identity(user).await.map_err(|e| storage_failure(relay, e))?;
    let identity = stored
        .as_ref()
        .and_then(auth::stored_identity)
        .ok_or_else(|| Failure::new(ErrorCode::UnknownUser, "this user no longer exists"))?;
    let signed_prekey = request
        .signed_prekey
        .as_ref()
        .map(|json| auth::check_signed_prekey(json, &identity))
        .transpose()?;
    let one_time = auth::check_one_time_prekeys(
        request.one_time_prekeys.as_deref().unwrap_or_default(),
        relay.limits(),
    )?;
    if let Some(spk) = &signed_prekey {
        relay.storage.set_signed_prekey(user, spk).await.map_err(|e| storage_failure(relay, e))?;
    }
    let upload = relay
        .storage
        .add_one_time_prekeys(user, &one_time, relay.limits().max_prekeys_stored)
        .await
        .map_err(|e| storage_failure(relay, e))?;
    Ok(UploadAnswer {
        ok: true,
        one_time_prekeys: upload.stock.held,
        one_time_prekeys_from: upload.stock.lowest_id,
        one_time_prekeys_kept: upload.kept,
    })
}

async fn on_request_key<A: Adapter>(
    socket: SocketRef<A>,
    TryData(request): TryData<RequestKeyRequest>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = request_key(&relay, &socket, request).await;
    if let Ok(answer) = &result {
        let _ = socket.emit(events::PUBLIC_KEY, answer);
    }
    answer(&relay, ack, result);
}

async fn request_key<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    request: Result<RequestKeyRequest, socketioxide::ParserError>,
) -> Reply<BundleAnswer> {
    let connection = connection(socket)?;
    allow_event(relay, &connection)?;
    let requester = logged_in(&connection)?;
    let request = request.map_err(bad_request)?;
    let target = parse_user_id(&request.user_id)?;
    if target.as_str() == &*requester {
        return Err(bad_request("ask for someone else's keys"));
    }
    relay
        .fetch_limiter
        .check(&relay.pair_key(&requester, target.as_str()), Instant::now())
        .map_err(rate_limited)?;
    let claimed = relay
        .storage
        .claim_bundle(target.as_str())
        .await
        .map_err(|e| storage_failure(relay, e))?
        .ok_or_else(|| Failure::new(ErrorCode::UnknownUser, format!("no user {target}")))?;
    if claimed.remaining < relay.limits().prekey_low_watermark {
        push_notice(
            relay,
            target.as_str(),
            events::PREKEYS_LOW,
            &PrekeysLowPush { remaining: claimed.remaining },
        )
        .await;
    }
    let bundle = BundleJson {
        version: u64::from(sotto_protocol::PROTOCOL_VERSION),
        suite: u64::from(sotto_protocol::SUITE_P256),
        user_id: target.to_string(),
        identity: PublicIdentityJson {
            signing: claimed.identity.signing,
            dh: claimed.identity.dh,
            signature: claimed.identity.signature,
        },
        signed_prekey: SignedPrekeyJson {
            id: claimed.signed_prekey.id,
            key: claimed.signed_prekey.key,
            created_at: claimed.signed_prekey.created_at,
            signature: claimed.signed_prekey.signature,
        },
        one_time_prekey: claimed
            .one_time_prekey
            .map(|opk| OneTimePrekeyJson { id: opk.id, key: opk.key }),
    };
    Ok(BundleAnswer { ok: true, user_id: target.to_string(), bundle })
}

async fn on_identity<A: Adapter>(
    socket: SocketRef<A>,
    TryData(request): TryData<RequestKeyRequest>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = async {
        let connection = connection(&socket)?;
        allow_event(&relay, &connection)?;
        logged_in(&connection)?;
        let request = request.map_err(bad_request)?;
        let target = parse_user_id(&request.user_id)?;
        let identity = relay
            .storage
            .identity(target.as_str())
            .await
            .map_err(|e| storage_failure(&relay, e))?
            .ok_or_else(|| Failure::new(ErrorCode::UnknownUser, format!("no user {target}")))?;
        Ok(IdentityAnswer {
            ok: true,
            user_id: target.to_string(),
            identity: PublicIdentityJson {
                signing: identity.signing,
                dh: identity.dh,
                signature: identity.signature,
            },
        })
    }
    .await;
    answer(&relay, ack, result);
}

// ---- messages ------------------------------------------------------------------------------

/// A handler socketioxide calls in the socket's read loop, in the order the client sent its
/// events, rather than as a task of its own. socketioxide spawns a task for every call of an
/// async handler; for the two events every message brings (`message:send` from its sender,
/// `message:ack` from its recipient), whose handlers never wait (they check, then hand the job
/// to the writer), that task was an allocation, a trip through the scheduler and a poll each.
/// An inline handler must not wait, block or register handlers (socketioxide calls it with the
/// socket's handler table locked for reading).
struct Inline<F>(F);

/// The marker socketioxide's `on` needs to tell handler kinds apart.
enum InlineCall {}

impl<A, F> MessageHandler<A, InlineCall> for Inline<F>
where
    A: Adapter,
    F: Fn(&Arc<Socket<A>>, Value, Option<i64>) + Send + Sync + 'static,
{
    fn call(&self, socket: Arc<Socket<A>>, value: Value, ack_id: Option<i64>) {
        // A spawned handler that panicked took only its own task down; this one runs in the
        // connection's read loop, which must not unwind (engineioxide would skip closing the
        // session). No client input is known to reach a panic here; if one does, the
        // connection is ended and the relay carries on.
        let call = std::panic::AssertUnwindSafe(|| (self.0)(&socket, value, ack_id));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!(sid = %socket.id, "an event handler panicked; closing the connection");
            let _ = socket.clone().disconnect();
        }
    }
}

/// What an inline handler starts from: the decoded request (or why it is malformed), the
/// answer, and the relay (always there: `serve` hands it to socketioxide as its state; were it
/// missing, the event would go unanswered, as with socketioxide's own extractors).
type InlineParts<A, T> =
    (Result<T, socketioxide::ParserError>, AckSender<A>, Option<Arc<Relay<A>>>);

fn inline_parts<A: Adapter, T: DeserializeOwned>(
    socket: &Arc<Socket<A>>,
    mut value: Value,
    ack_id: Option<i64>,
) -> InlineParts<A, T> {
    let Ok(TryData(request)) = TryData::<T>::from_message_parts(socket, &mut value, &ack_id);
    let Ok(ack) = AckSender::<A>::from_message_parts(socket, &mut value, &ack_id);
    let relay = State::<Arc<Relay<A>>>::from_message_parts(socket, &mut value, &ack_id)
        .ok()
        .map(|State(relay)| relay);
    (request, ack, relay)
}

/// `message:send`: check, rate-limit and enqueue for the writer, or answer with the reason it
/// cannot; inline, so a client's messages reach the writer in the order it sent them.
fn on_send<A: Adapter>(socket: &Arc<Socket<A>>, value: Value, ack_id: Option<i64>) {
    let (request, ack, Some(relay)) = inline_parts::<A, SendRequest>(socket, value, ack_id) else {
        return;
    };
    if let Err((ack, failure)) = enqueue_send(&relay, socket, request, ack) {
        relay.metrics.reject(failure.error.as_str());
        let _ = ack.send(&failure);
    }
}

/// Checks a `message:send` payload (size, recipient, client id, envelope shape) and returns the
/// recipient.
pub(crate) fn check_send(request: &SendRequest, limits: &Limits) -> Reply<UserId> {
    if request.envelope.get().len() > limits.max_envelope_bytes {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("envelopes are limited to {} bytes", limits.max_envelope_bytes),
        ));
    }
    let recipient = parse_user_id(&request.to)?;
    if !valid_client_id(&request.id) {
        return Err(bad_request("`id` must be 1 to 64 characters of base64url"));
    }
    events::check_envelope(&request.envelope).map_err(bad_request)?;
    Ok(recipient)
}

fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn enqueue_send<A: Adapter>(
    relay: &Relay<A>,
    socket: &Arc<Socket<A>>,
    request: Result<SendRequest, socketioxide::ParserError>,
    ack: AckSender<A>,
) -> Result<(), (AckSender<A>, Failure)> {
    let check = || -> Reply<NewMessage> {
        let connection = connection(socket)?;
        allow_event(relay, &connection)?;
        let sender = logged_in(&connection)?;
        let request = request.map_err(bad_request)?;
        let recipient = check_send(&request, relay.limits())?;
        if recipient.as_str() == &*sender {
            return Err(bad_request("a message needs another recipient"));
        }
        relay
            .pair_limiter
            .check(&relay.pair_key(&sender, recipient.as_str()), Instant::now())
            .map_err(rate_limited)?;
        Ok(NewMessage {
            id: None,
            recipient: recipient.to_string(),
            sender: sender.to_string(),
            client_id: request.id,
            envelope: request.envelope,
            created_at: now_ms(),
        })
    };
    let message = match check() {
        Ok(message) => message,
        Err(failure) => return Err((ack, failure)),
    };
    // Reserve the writer's slot first, so a full inbox leaves the acknowledgement with us.
    match relay.writer.try_reserve() {
        Ok(permit) => {
            permit.send(Job::Store { message, ack, received: Instant::now() });
            Ok(())
        }
        Err(_) => Err((ack, Failure::busy())),
    }
}

/// `message:ack`: inline, like `message:send`; answered by the writer once the
/// acknowledgements are committed.
fn on_ack<A: Adapter>(socket: &Arc<Socket<A>>, value: Value, ack_id: Option<i64>) {
    let (request, ack, Some(relay)) = inline_parts::<A, IdsRequest>(socket, value, ack_id) else {
        return;
    };
    let check = || {
        let connection = connection(socket)?;
        let user = logged_in(&connection)?;
        let request = request.map_err(bad_request)?;
        if request.ids.len() > relay.limits().max_ids_per_request {
            return Err(Failure::new(ErrorCode::TooLarge, "too many ids in one request"));
        }
        // The client has these, whether or not the acknowledgement itself is taken below: live
        // pushes stop counting against the socket's allowance (a client acknowledging faster
        // than its event limit must not be ended as if it kept them unread).
        relay.local.acknowledged(&user, socket.id, &request.ids);
        allow_event(&relay, &connection)?;
        // A catch-up in progress pushes more once these make room.
        let catch_up = connection.lock().catch_up.clone();
        if let Some(catch_up) = catch_up {
            catch_up.record(&request.ids);
        }
        Ok(request.ids.into_iter().map(|id| (user.to_string(), id)).collect::<Vec<_>>())
    };
    let acks = match check() {
        Ok(acks) => acks,
        Err(failure) => return answer(&relay, ack, Err::<Done, _>(failure)),
    };
    // Answered by the writer once the acknowledgements are committed.
    if let Err(error) = relay.writer.try_send(Job::Ack { acks, answer: ack }) {
        let job = match error {
            tokio::sync::mpsc::error::TrySendError::Full(job)
            | tokio::sync::mpsc::error::TrySendError::Closed(job) => job,
        };
        if let Job::Ack { answer: ack, .. } = job {
            answer(&relay, ack, Err::<Done, _>(Failure::busy()));
        }
    }
}

async fn on_status<A: Adapter>(
    socket: SocketRef<A>,
    TryData(request): TryData<IdsRequest>,
    ack: AckSender<A>,
    State(relay): State<Arc<Relay<A>>>,
) {
    let result = async {
        let connection = connection(&socket)?;
        allow_event(&relay, &connection)?;
        let user = logged_in(&connection)?;
        let request = request.map_err(bad_request)?;
        if request.ids.len() > relay.limits().max_ids_per_request {
            return Err(Failure::new(ErrorCode::TooLarge, "too many ids in one request"));
        }
        let statuses = relay
            .storage
            .message_status(&user, &request.ids)
            .await
            .map_err(|e| storage_failure(&relay, e))?;
        Ok(StatusAnswer {
            ok: true,
            statuses: statuses
                .into_iter()
                .map(|(id, status)| StatusEntry {
                    id,
                    status: match status {
                        MessageStatus::Pending => "pending",
                        MessageStatus::Delivered => "delivered",
                    },
                })
                .collect(),
        })
    }
    .await;
    answer(&relay, ack, result);
}
