//! A client: a local identity and its store, and what it does with a relay connection —
//! register, log in, keep prekeys topped up, send through an outbox, receive, save before
//! acknowledging, notice key changes and missing messages.
//!
//! One conversation's ratchet steps run one at a time (a lock per peer); everything a received
//! message changes is saved in one transaction before the relay is told it arrived, so a client
//! killed at any point neither loses a message nor shows one twice.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sotto_protocol::prekeys::{OneTimePrekey, SignedPrekey};
use sotto_protocol::session::{LocalParty, PrekeyLookup, Session};
use sotto_protocol::wire::{self, PublicIdentityJson};
use sotto_protocol::{
    DecryptError, Envelope, IdentityKeyPair, PublicIdentity, Record, RecordBody, SafetyNumber,
    UserId,
};
use tokio::sync::{Mutex, mpsc};

use crate::relay::{Incoming, LoginAnswer, PrekeysHeld, ReceivedMessage, RelayClient, RelayError};
use crate::socketio::Push;
use crate::store::{self, LocalIdentity, PeerWord, Seen, Store, StoreError, StoredMessage};

/// One-time prekeys kept uploaded.
pub const PREKEY_TARGET: usize = 100;
/// Below this many, more are uploaded.
pub const PREKEY_LOW: usize = 20;
/// How often the signed prekey is replaced, in seconds.
pub const SIGNED_PREKEY_ROTATION: u64 = 7 * 24 * 3600;
/// How long old signed prekeys are kept for late messages, in seconds.
pub const SIGNED_PREKEY_RETENTION: u64 = 30 * 24 * 3600;
/// How long a one-time prekey the relay handed out is kept for its prekey message, in
/// seconds: as long as a replaced signed prekey.
pub const HANDED_OUT_PREKEY_RETENTION: u64 = SIGNED_PREKEY_RETENTION;
/// One-time prekeys kept here at most, unused and handed out together. A relay decides when
/// to ask for more and says which it still holds, so one that lies (or strangers fetching
/// bundles by the thousand, each handed-out key kept a month) could otherwise make the store
/// grow without end. Past it no more are made: first messages then go without a one-time
/// prekey, which the protocol allows, until handed-out keys age out.
pub const LOCAL_PREKEY_CAP: usize = 2_000;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay refused or could not be reached.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// This home folder already holds an identity.
    #[error("{home} already holds the identity {user}; use another --home")]
    AlreadyRegistered {
        /// The folder.
        home: String,
        /// Whose identity.
        user: String,
    },
    /// No identity here yet.
    #[error("no identity in {0}; run `sotto register USER` first")]
    NotRegistered(String),
    /// The identity was saved but the relay never confirmed its registration.
    #[error("the registration of {0} did not finish; run `sotto register {0}` again")]
    RegistrationUnfinished(String),
    /// The contact's identity changed and the user has not accepted it.
    #[error(
        "{0}'s identity key changed; sending is blocked until you compare safety numbers \
         (`sotto safety-number {0}`) and accept it (`sotto trust {0}`)"
    )]
    KeyChanged(String),
    /// Unknown contact.
    #[error("no conversation with {0} yet")]
    UnknownContact(String),
    /// The message is too long.
    #[error("message too long: at most {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A message cannot be sent to oneself.
    #[error("you cannot message yourself")]
    ToSelf,
    /// The relay refused a message for good.
    #[error("{peer}: {reason}")]
    Refused {
        /// The recipient.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A protocol failure that should not happen with an honest peer.
    #[error("{0}")]
    Protocol(String),
}

/// What [`Client::trust`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trusted {
    /// The pending identity is accepted; its safety number, to compare (and then verify).
    Accepted(SafetyNumber),
    /// No identity was pending: nothing to accept.
    NothingPending,
    /// The pending identity's safety number is not the one given (another identity became
    /// pending since it was shown): nothing changed.
    OtherNumber,
}

/// Something the user should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived and was saved.
    Received(StoredMessage),
    /// A message arrived that could not be decrypted (shown as such, never reported).
    Undecryptable {
        /// From whom.
        peer: String,
    },
    /// Records from `peer` are missing: counters skipped that never arrived.
    Missing {
        /// From whom.
        peer: String,
        /// How many.
        count: u64,
    },
    /// The record `peer` names as the last of ours it received is not the one we sealed under
    /// that counter: another device sends as us, or our store was restored from a copy.
    DigestMismatch {
        /// Who said so.
        peer: String,
    },
    /// Messages the relay reported delivered that `peer`, writing well after, says it never
    /// received: the relay acknowledged them on the peer's behalf and withheld them.
    Unconfirmed {
        /// To whom.
        peer: String,
        /// The messages, now with status `unconfirmed`.
        messages: Vec<StoredMessage>,
    },
    /// `peer`'s identity key changed; sending to them is blocked until accepted.
    KeyChanged {
        /// Whose.
        peer: String,
    },
    /// The relay stored one of our messages.
    Stored {
        /// The history row.
        message_id: i64,
    },
    /// One of our messages reached its recipient.
    Delivered(StoredMessage),
    /// A message could not be sent and will not be retried.
    Failed {
        /// The history row.
        message_id: i64,
        /// Why.
        reason: String,
    },
    /// A contact came online or went offline.
    Presence {
        /// Who.
        peer: String,
        /// Whether online now.
        online: bool,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A random client message id (16 bytes, base64url).
pub fn new_client_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    wire::b64(&bytes)
}

/// Prekeys a prekey message may name, loaded from the store before decrypting.
struct LoadedPrekeys {
    signed: Vec<SignedPrekey>,
    one_time: Option<OneTimePrekey>,
}

impl PrekeyLookup for LoadedPrekeys {
    fn signed_prekey(&self, id: u32) -> Option<SignedPrekey> {
        self.signed.iter().find(|k| k.id() == id).cloned()
    }
    fn one_time_prekey(&self, id: u32) -> Option<OneTimePrekey> {
        self.one_time.as_ref().filter(|k| k.id() == id).cloned()
    }
}

/// A local identity with its store.
#[derive(Debug)]
pub struct Client {
    /// The store.
    store: Store,
    /// Our identity.
    local: LocalIdentity,
    /// One lock per peer, so a conversation's ratchet steps never interleave.
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Peers whose identity was checked with the relay on the current connection.
    checked: StdMutex<HashSet<String>>,
    /// When the last upload of one-time prekeys was answered: a `prekeys:low` that arrived
    /// before it counts what that upload has since replenished.
    topped_up: StdMutex<Option<Instant>>,
}

impl Client {
    /// Creates an identity in `home`, registers it as `user` at `server`, and returns the
    /// client with its (logged-in) connection.
    pub async fn register(
        home: &Path,
        server: &str,
        user: &UserId,
    ) -> Result<(Self, RelayClient, mpsc::UnboundedReceiver<Push>), ClientError> {
        let store = Store::open(home).await?;
        // The identity is saved before the relay hears of it: a key the relay hands out must
        // exist here, and if the answer is lost (a timeout, a crash) the next `register`
        // finishes with the same keys instead of finding its own id taken.
        let local = match (store.identity().await?, store.registered().await?) {
            (Some(existing), Some(false)) if existing.user == *user => existing,
            (Some(existing), _) => {
                return Err(ClientError::AlreadyRegistered {
                    home: home.display().to_string(),
                    user: existing.user.to_string(),
                });
            }
            (None, _) => {
                let created = now_seconds();
                let (keys, signed, one_time) = {
                    let mut rng = rand::rng();
                    let keys = IdentityKeyPair::generate(&mut rng);
                    let signed = SignedPrekey::generate(&keys, 1, created, &mut rng);
                    let one_time: Vec<OneTimePrekey> = (2..2 + PREKEY_TARGET as u32)
                        .map(|id| OneTimePrekey::generate(id, &mut rng))
                        .collect();
                    (keys, signed, one_time)
                };
                let local = LocalIdentity { user: user.clone(), server: server.to_owned(), keys };
                store.create_identity(&local, &signed, created, &one_time, now_ms()).await?;
                local
            }
        };
        let (relay, pushes) = RelayClient::connect(server, crate::relay::DEFAULT_TIMEOUT).await?;
        let signed = store
            .signed_prekeys(&local.keys)
            .await?
            .into_iter()
            .find_map(|(key, _, current)| current.then_some(key))
            .ok_or_else(|| {
                ClientError::Protocol("the saved identity has no signed prekey".into())
            })?;
        let mut publics = Vec::new();
        for id in 2..2 + PREKEY_TARGET as u32 {
            if let Some(key) = store.one_time_prekey(id).await? {
                publics.push(key.public());
            }
        }
        match relay.register(user, &local.keys, signed.public(), &publics).await {
            Ok(_) => {}
            // Registered by an earlier attempt whose answer was lost: only these keys can
            // log in, so a login tells whether the id is ours.
            Err(RelayError::Refused(refusal)) if refusal.error == "user_taken" => {
                if let Err(login) = relay.login(user, &local.keys).await {
                    if login.code() == Some("authentication_failed") {
                        // Someone else's: nothing of ours is registered; the home is free.
                        store.forget_unregistered().await?;
                        return Err(RelayError::Refused(refusal).into());
                    }
                    return Err(login.into());
                }
            }
            Err(RelayError::Refused(refusal)) if !refusal.retryable => {
                store.forget_unregistered().await?;
                return Err(RelayError::Refused(refusal).into());
            }
            Err(error) => return Err(error.into()),
        }
        store.mark_registered().await?;
        Ok((Self::new(store, local), relay, pushes))
    }

    /// Opens the identity kept in `home`.
    pub async fn open(home: &Path) -> Result<Self, ClientError> {
        let store = Store::open(home).await?;
        let local = store
            .identity()
            .await?
            .ok_or_else(|| ClientError::NotRegistered(home.display().to_string()))?;
        if store.registered().await? == Some(false) {
            return Err(ClientError::RegistrationUnfinished(local.user.to_string()));
        }
        Ok(Self::new(store, local))
    }

    fn new(store: Store, local: LocalIdentity) -> Self {
        Self {
            store,
            local,
            locks: StdMutex::default(),
            checked: StdMutex::default(),
            topped_up: StdMutex::default(),
        }
    }

    /// Our user id.
    pub fn user(&self) -> &UserId {
        &self.local.user
    }

    /// The relay this identity is registered with.
    pub fn server(&self) -> &str {
        &self.local.server
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the store.
    pub async fn close(&self) {
        self.store.close().await;
    }

    fn lock_for(&self, peer: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(peer.to_owned()).or_default().clone()
    }

    fn local_party(&self) -> LocalParty<'_> {
        LocalParty { user: &self.local.user, identity: &self.local.keys }
    }

    /// Connects and logs in to `server`, then keeps prekeys healthy.
    pub async fn connect(
        &self,
        server: &str,
    ) -> Result<(RelayClient, mpsc::UnboundedReceiver<Push>, LoginAnswer), ClientError> {
        let (relay, pushes) = RelayClient::connect(server, crate::relay::DEFAULT_TIMEOUT).await?;
        let answer = relay.login(&self.local.user, &self.local.keys).await?;
        self.checked.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.note_prekeys_held(answer.prekeys_held()).await?;
        self.maintain_prekeys(&relay, answer.one_time_prekeys).await?;
        Ok((relay, pushes, answer))
    }

    /// Tops up one-time prekeys when fewer than [`PREKEY_LOW`] remain at the relay, and
    /// replaces the signed prekey when it is older than a week.
    pub async fn maintain_prekeys(
        &self,
        relay: &RelayClient,
        uploaded: usize,
    ) -> Result<(), ClientError> {
        let signed = self.store.signed_prekeys(&self.local.keys).await?;
        let current = signed.iter().find(|(_, _, current)| *current);
        let now = now_seconds();
        let mut new_signed = None;
        if current
            .is_none_or(|(_, created, _)| now.saturating_sub(*created) >= SIGNED_PREKEY_ROTATION)
        {
            let id = self.store.reserve_prekey_ids(1).await?;
            let prekey = SignedPrekey::generate(&self.local.keys, id, now, &mut rand::rng());
            self.store
                .rotate_signed_prekey(&prekey, now, now.saturating_sub(SIGNED_PREKEY_RETENTION))
                .await?;
            new_signed = Some(prekey);
        }
        let mut fresh = Vec::new();
        let room = if uploaded < PREKEY_LOW {
            LOCAL_PREKEY_CAP.saturating_sub(self.store.one_time_prekey_count().await?)
        } else {
            0
        };
        if room > 0 {
            let count = (PREKEY_TARGET - uploaded).min(room);
            let first = self.store.reserve_prekey_ids(count as u32).await?;
            fresh = {
                let mut rng = rand::rng();
                (first..first + count as u32)
                    .map(|id| OneTimePrekey::generate(id, &mut rng))
                    .collect()
            };
            // Saved before uploading: a key the relay hands out must exist here.
            self.store.add_one_time_prekeys(&fresh).await?;
        }
        if new_signed.is_some() || !fresh.is_empty() {
            let publics: Vec<_> = fresh.iter().map(OneTimePrekey::public).collect();
            let answer = relay
                .upload_prekeys(new_signed.as_ref().map(SignedPrekey::public), &publics)
                .await?;
            if !fresh.is_empty() {
                *self.topped_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            // Over the relay's cap (another process topped up too): never handed out.
            let kept = answer.one_time_prekeys_kept.unwrap_or(fresh.len());
            let dropped: Vec<u32> = fresh.iter().skip(kept).map(OneTimePrekey::id).collect();
            if !dropped.is_empty() {
                self.store.delete_one_time_prekeys(&dropped).await?;
            }
            self.note_prekeys_held(answer.prekeys_held()).await?;
        }
        Ok(())
    }

    /// Takes note of the one-time prekeys the relay says it still holds: the private keys of
    /// those it handed out are kept for their prekey messages a while
    /// ([`HANDED_OUT_PREKEY_RETENTION`]), not for ever. A relay that does not say which it
    /// holds (older than the field) changes nothing.
    async fn note_prekeys_held(&self, held: PrekeysHeld) -> Result<(), ClientError> {
        let from = match held {
            PrekeysHeld::None => None,
            PrekeysHeld::From(id) => Some(id),
            PrekeysHeld::Unknown => return Ok(()),
        };
        let now = now_seconds();
        self.store
            .note_one_time_prekeys_held(from, now, now.saturating_sub(HANDED_OUT_PREKEY_RETENTION))
            .await?;
        Ok(())
    }

    // ---- sending ------------------------------------------------------------------------------

    /// Adds a message to the history and the outbox. It is encrypted and sent by
    /// [`Client::flush_outbox`].
    pub async fn compose(&self, peer: &UserId, text: &str) -> Result<i64, ClientError> {
        if peer == &self.local.user {
            return Err(ClientError::ToSelf);
        }
        if text.is_empty() || text.len() > sotto_protocol::record::MAX_TEXT_LEN {
            return Err(ClientError::TooLong { max: sotto_protocol::record::MAX_TEXT_LEN });
        }
        if let Some(contact) = self.store.contact(peer.as_str()).await?
            && contact.pending.is_some()
        {
            return Err(ClientError::KeyChanged(peer.to_string()));
        }
        let lock = self.lock_for(peer.as_str());
        let _guard = lock.lock().await;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let mut counters = store::counters(&mut tx, peer.as_str()).await?;
        counters.sent += 1;
        let message = StoredMessage {
            id: 0,
            peer: peer.to_string(),
            outgoing: true,
            body: Some(text.to_owned()),
            counter: Some(counters.sent),
            sent_at: now,
            received_at: None,
            server_id: None,
            status: "sending".to_owned(),
        };
        let client_id = new_client_id();
        let id = store::insert_message(&mut tx, &message, Some(&client_id)).await?;
        store::queue_outgoing(&mut tx, &client_id, peer.as_str(), id, now).await?;
        store::save_counters(&mut tx, peer.as_str(), &counters, 0, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(id)
    }

    /// Refuses to send to `peer` while a changed identity awaits the user's acceptance, and
    /// checks the identity with the relay once per connection. Sealed or not, nothing leaves
    /// the outbox without this.
    async fn confirm_identity(&self, relay: &RelayClient, peer: &str) -> Result<(), ClientError> {
        if let Some(contact) = self.store.contact(peer).await?
            && contact.pending.is_some()
        {
            return Err(ClientError::KeyChanged(peer.to_owned()));
        }
        self.check_identity(relay, peer).await
    }

    /// Checks a peer's identity with the relay once per connection, so a changed identity
    /// (the peer re-registered) is noticed before anything is sent to the old one.
    async fn check_identity(&self, relay: &RelayClient, peer: &str) -> Result<(), ClientError> {
        if self.checked.lock().unwrap_or_else(|e| e.into_inner()).contains(peer) {
            return Ok(());
        }
        let identity = relay.identity(peer).await?;
        let mut tx = self.store.begin().await?;
        let seen = store::see_identity(&mut tx, peer, &identity, now_ms()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if seen == Seen::Changed {
            return Err(ClientError::KeyChanged(peer.to_owned()));
        }
        self.checked.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.to_owned());
        Ok(())
    }

    /// Encrypts (if not yet) and sends everything in the outbox, oldest first. A message the
    /// relay refuses for good is marked failed; one that cannot be sent now stays queued.
    pub async fn flush_outbox(&self, relay: &RelayClient) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut blocked: HashSet<String> = HashSet::new();
        for outgoing in self.store.outbox().await? {
            if blocked.contains(&outgoing.peer) {
                continue;
            }
            match self.send_one(relay, &outgoing).await {
                Ok(Some(event)) => events.push(event),
                // Sent meanwhile by another process on this store.
                Ok(None) => {}
                Err(ClientError::KeyChanged(peer)) => {
                    blocked.insert(peer.clone());
                    events.push(Event::KeyChanged { peer });
                }
                Err(ClientError::Relay(error)) if !error.retryable() => {
                    let reason = match &error {
                        RelayError::Refused(refusal) => refusal.explain(),
                        other => other.to_string(),
                    };
                    self.store.mark_failed(&outgoing.client_id).await?;
                    events.push(Event::Failed { message_id: outgoing.message_id, reason });
                }
                Err(error) => return Err(error),
            }
        }
        Ok(events)
    }

    /// Sends one outbox entry; `None` if it is no longer in the outbox (another process on this
    /// store sent it since the flush listed it).
    async fn send_one(
        &self,
        relay: &RelayClient,
        listed: &store::Outgoing,
    ) -> Result<Option<Event>, ClientError> {
        // An entry sealed before the peer's identity changed (the relay was busy, the
        // connection dropped) must not go out on its own: the change is shown first.
        self.confirm_identity(relay, &listed.peer).await?;
        // The entry as it is now, not as listed: accepting a new key (`sotto trust`, perhaps in
        // another process) clears an envelope sealed for the old one, to be sealed again.
        let Some(outgoing) = self.store.outbox_entry(&listed.client_id).await? else {
            return Ok(None);
        };
        let envelope = match &outgoing.envelope {
            Some(envelope) => envelope.clone(),
            None => match self.seal(relay, &outgoing).await? {
                Some(envelope) => envelope,
                None => return Ok(None),
            },
        };
        let raw = serde_json::value::RawValue::from_string(envelope)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let answer = relay.send_raw(&outgoing.peer, &outgoing.client_id, &raw).await?;
        self.store.mark_stored(&outgoing.client_id, answer.id).await?;
        Ok(Some(Event::Stored { message_id: outgoing.message_id }))
    }

    /// Encrypts an outbox entry, starting a session from a fresh bundle when needed, and saves
    /// the envelope together with the advanced session. `None` if the entry has left the
    /// outbox meanwhile (sent by another process): nothing is encrypted then.
    async fn seal(
        &self,
        relay: &RelayClient,
        outgoing: &store::Outgoing,
    ) -> Result<Option<String>, ClientError> {
        let peer =
            UserId::parse(&outgoing.peer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let lock = self.lock_for(peer.as_str());
        let _guard = lock.lock().await;
        let message = self
            .store
            .message(outgoing.message_id)
            .await?
            .ok_or_else(|| ClientError::Protocol("outbox entry without a message".into()))?;
        // The bundle is fetched before the write transaction (no network inside it) and used
        // only if the session still cannot encrypt once the transaction holds the store.
        let bundle = if self.store.session(peer.as_str()).await?.can_encrypt() {
            None
        } else {
            let bundle = relay.request_bundle(&peer).await?;
            let mut tx = self.store.begin().await?;
            let seen =
                store::see_identity(&mut tx, peer.as_str(), bundle.identity(), now_ms()).await?;
            tx.commit().await.map_err(StoreError::from)?;
            if seen == Seen::Changed {
                return Err(ClientError::KeyChanged(peer.to_string()));
            }
            Some(bundle)
        };
        // Read, encrypt and save in one write transaction: another process on this store
        // (a `sotto recv` beside `sotto chat`) can neither seal this entry twice nor advance the
        // session in between.
        let mut tx = self.store.begin().await?;
        match store::sealed_envelope(&mut tx, &outgoing.client_id).await? {
            None => return Ok(None),
            Some(Some(envelope)) => return Ok(Some(envelope)),
            Some(None) => {}
        }
        // Checked again where it counts: a prekey message from another identity, handled
        // since `confirm_identity` (the peer lock was free in between), may have made that
        // identity pending and its session the current one. Nothing is sealed for a key the
        // user has not accepted.
        let contact = store::contact(&mut tx, peer.as_str()).await?;
        if contact.as_ref().is_some_and(|contact| contact.pending.is_some()) {
            return Err(ClientError::KeyChanged(peer.to_string()));
        }
        let mut record = store::session(&mut tx, peer.as_str()).await?;
        if let (Some(contact), Some(current)) = (&contact, record.current())
            && !current.remote_identity().same_keys(&contact.identity)
        {
            return Err(ClientError::KeyChanged(peer.to_string()));
        }
        if !record.can_encrypt() {
            let bundle = bundle.ok_or_else(|| {
                ClientError::Protocol("the session was dropped while sealing; retry".into())
            })?;
            let session = Session::initiate(self.local_party(), &peer, &bundle, &mut rand::rng())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            record.promote(session);
        }
        let counters = store::counters(&mut tx, peer.as_str()).await?;
        let plaintext = Record::text(
            message.body.as_deref().unwrap_or_default(),
            u64::try_from(message.sent_at).unwrap_or(0),
            message.counter.unwrap_or(counters.sent),
            counters.last_counter,
            counters.last_digest,
        );
        let (envelope, digest) =
            record.encrypt(&plaintext).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let json = envelope.to_json();
        store::save_session(&mut tx, peer.as_str(), &record).await?;
        store::set_digest(&mut tx, outgoing.message_id, &digest).await?;
        store::seal_outgoing(&mut tx, &outgoing.client_id, &json).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(json))
    }

    // ---- receiving ----------------------------------------------------------------------------

    /// Handles one push from the relay. Received messages are saved, then acknowledged.
    pub async fn handle(&self, relay: &RelayClient, push: Push) -> Result<Vec<Event>, ClientError> {
        let arrived = push.arrived;
        match Incoming::from_push(push) {
            Incoming::Messages(messages) => self.receive(relay, messages).await,
            Incoming::Delivered(receipts) => {
                let ids: Vec<i64> = receipts.iter().map(|r| r.id).collect();
                Ok(self
                    .store
                    .mark_delivered(&ids, now_ms())
                    .await?
                    .into_iter()
                    .map(Event::Delivered)
                    .collect())
            }
            Incoming::Joined(peer) => Ok(vec![Event::Presence { peer, online: true }]),
            Incoming::Left(peer) => Ok(vec![Event::Presence { peer, online: false }]),
            Incoming::PrekeysLow(remaining) => {
                // The relay warns on every bundle fetch below its mark, so several warnings
                // queue up while one top-up runs; counted after it, each would upload another
                // hundred keys (kept here until handed out and 30 days more, or dropped by the
                // relay's cap). One that arrived before the last top-up was answered is already
                // dealt with.
                let topped_up = *self.topped_up.lock().unwrap_or_else(|e| e.into_inner());
                let stale = topped_up.is_some_and(|at| arrived < at);
                self.maintain_prekeys(relay, if stale { usize::MAX } else { remaining }).await?;
                Ok(Vec::new())
            }
            Incoming::Other(_) => Ok(Vec::new()),
        }
    }

    /// Decrypts and saves messages, then acknowledges them all at once.
    pub async fn receive(
        &self,
        relay: &RelayClient,
        messages: Vec<ReceivedMessage>,
    ) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut done = Vec::new();
        for message in messages {
            events.extend(self.receive_one(&message).await?);
            done.push(message.id);
        }
        if !done.is_empty() {
            relay.ack(&done).await?;
        }
        Ok(events)
    }

    async fn receive_one(&self, message: &ReceivedMessage) -> Result<Vec<Event>, ClientError> {
        let Ok(sender) = UserId::parse(&message.from) else {
            return Ok(Vec::new());
        };
        let lock = self.lock_for(sender.as_str());
        let _guard = lock.lock().await;
        if self.store.has_incoming(sender.as_str(), message.id).await? {
            // Saved before, acknowledgement lost: acknowledge again, show nothing new.
            return Ok(Vec::new());
        }
        let now = now_ms();
        let Ok(envelope) = Envelope::from_json(message.envelope.get()) else {
            return self.save_undecryptable(&sender, message, now).await;
        };
        let mut prekeys = LoadedPrekeys { signed: Vec::new(), one_time: None };
        if let Some(prekey) = &envelope.prekey {
            prekeys.signed = self
                .store
                .signed_prekeys(&self.local.keys)
                .await?
                .into_iter()
                .map(|(k, ..)| k)
                .collect();
            if let Some(id) = prekey.one_time_prekey_id {
                prekeys.one_time = self.store.one_time_prekey(id).await?;
            }
        }
        // Checked again, read, decrypted and saved in one write transaction, so another process
        // on this store cannot decrypt the same message from the same state in between.
        let mut tx = self.store.begin().await?;
        if store::has_incoming(&mut tx, sender.as_str(), message.id).await? {
            return Ok(Vec::new());
        }
        let mut record = store::session(&mut tx, sender.as_str()).await?;
        // Bound first, so the thread-local generator is not held across an await.
        let result =
            record.decrypt(self.local_party(), &sender, &envelope, &prekeys, &mut rand::rng());
        let decrypted = match result {
            Ok(decrypted) => decrypted,
            Err(DecryptError::DuplicateMessage) => return Ok(Vec::new()),
            Err(_) => {
                drop(tx);
                return self.save_undecryptable(&sender, message, now).await;
            }
        };

        let mut events = Vec::new();
        store::save_session(&mut tx, sender.as_str(), &record).await?;
        let seen =
            store::see_identity(&mut tx, sender.as_str(), &decrypted.remote_identity, now).await?;
        if let Some(id) = decrypted.used_one_time_prekey {
            store::delete_one_time_prekey(&mut tx, id).await?;
        }
        let mut counters = store::counters(&mut tx, sender.as_str()).await?;
        let plaintext = &decrypted.record;
        let missing_before = counters.missing();
        let word = if seen == Seen::Changed {
            // From an identity the user has not accepted: shown, after the warning, but it
            // says nothing about the accepted identity's records or about which of ours
            // arrived (a relay with keys of its own could otherwise mark everything of ours
            // delivered or hide a gap). Only what our next record names follows it, which
            // matters once this identity is accepted: sending is blocked until then.
            // Accepting starts the count afresh (PROTOCOL.md §7.3).
            events.push(Event::KeyChanged { peer: sender.to_string() });
            counters.last_counter = plaintext.counter;
            counters.last_digest = decrypted.digest;
            PeerWord::default()
        } else {
            if counters.received_contiguous == 0 && counters.received_above.is_empty() {
                // The first record seen from this identity sets where counting starts (a new
                // device of ours, or a peer's identity just accepted, joins a conversation
                // midway).
                counters.received_contiguous = plaintext.counter.saturating_sub(1);
            }
            let confirmed_before = counters.peer_received;
            counters.note_received(plaintext.counter, decrypted.digest);
            counters.peer_received = counters.peer_received.max(plaintext.last_received_counter);
            store::check_peer_word(
                &mut tx,
                sender.as_str(),
                plaintext.last_received_counter,
                &plaintext.last_received_digest,
                confirmed_before,
                i64::try_from(plaintext.sent_at).unwrap_or(i64::MAX),
                now,
            )
            .await?
        };
        let body = match &plaintext.body {
            RecordBody::Text(text) => Some(text.to_string()),
            RecordBody::Receipt(_) => None,
            RecordBody::Unsupported { kind } => {
                Some(format!("(unsupported message of kind {kind})"))
            }
        };
        let shown = body.is_some();
        let stored = StoredMessage {
            id: 0,
            peer: sender.to_string(),
            outgoing: false,
            body,
            counter: Some(plaintext.counter),
            sent_at: i64::try_from(plaintext.sent_at).unwrap_or(0),
            received_at: Some(now),
            server_id: Some(message.id),
            status: "received".to_owned(),
        };
        let id = store::insert_message(&mut tx, &stored, None).await?;
        store::save_counters(&mut tx, sender.as_str(), &counters, i64::from(shown), now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if shown {
            events.push(Event::Received(StoredMessage { id, ..stored }));
        }
        let missing = counters.missing();
        if missing > 0 && missing != missing_before {
            events.push(Event::Missing { peer: sender.to_string(), count: missing });
        }
        events.extend(word.confirmed.into_iter().map(Event::Delivered));
        if word.digest_mismatch {
            events.push(Event::DigestMismatch { peer: sender.to_string() });
        }
        if !word.unconfirmed.is_empty() {
            events
                .push(Event::Unconfirmed { peer: sender.to_string(), messages: word.unconfirmed });
        }
        Ok(events)
    }

    async fn save_undecryptable(
        &self,
        sender: &UserId,
        message: &ReceivedMessage,
        now: i64,
    ) -> Result<Vec<Event>, ClientError> {
        let mut tx = self.store.begin().await?;
        // Another process on this store (each gets every push) may have saved it meanwhile.
        if store::has_incoming(&mut tx, sender.as_str(), message.id).await? {
            return Ok(Vec::new());
        }
        let stored = StoredMessage {
            id: 0,
            peer: sender.to_string(),
            outgoing: false,
            body: None,
            counter: None,
            sent_at: message.received_at,
            received_at: Some(now),
            server_id: Some(message.id),
            status: "undecryptable".to_owned(),
        };
        store::insert_message(&mut tx, &stored, None).await?;
        let counters = store::counters(&mut tx, sender.as_str()).await?;
        store::save_counters(&mut tx, sender.as_str(), &counters, 1, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(vec![Event::Undecryptable { peer: sender.to_string() }])
    }

    /// Asks the relay about our messages not yet known delivered (receipts missed offline).
    pub async fn refresh_delivery(&self, relay: &RelayClient) -> Result<Vec<Event>, ClientError> {
        let ids = self.store.undelivered_ids().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let delivered: Vec<i64> = relay
            .status(&ids)
            .await?
            .into_iter()
            .filter(|(_, status)| status == "delivered")
            .map(|(id, _)| id)
            .collect();
        let changed = self.store.mark_delivered(&delivered, now_ms()).await?;
        Ok(changed.into_iter().map(Event::Delivered).collect())
    }

    // ---- identities -------------------------------------------------------------------------

    /// The safety number with `peer` (with their pending identity, if it changed).
    pub async fn safety_number(&self, peer: &UserId) -> Result<(SafetyNumber, bool), ClientError> {
        let contact = self
            .store
            .contact(peer.as_str())
            .await?
            .ok_or_else(|| ClientError::UnknownContact(peer.to_string()))?;
        let changed = contact.pending.is_some();
        let theirs: PublicIdentity = contact.pending.unwrap_or(contact.identity);
        let number =
            SafetyNumber::compute(&self.local.user, self.local.keys.public(), peer, &theirs);
        Ok((number, changed))
    }

    /// Fetches `peer`'s identity from the relay if there is no contact yet, so a safety number
    /// can be compared before the first message.
    pub async fn learn_identity(
        &self,
        relay: &RelayClient,
        peer: &UserId,
    ) -> Result<(), ClientError> {
        match self.check_identity(relay, peer.as_str()).await {
            Ok(()) | Err(ClientError::KeyChanged(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Marks `peer`'s current identity verified. False if it changed (accept it first).
    pub async fn verify(&self, peer: &UserId) -> Result<bool, ClientError> {
        let contact = self
            .store
            .contact(peer.as_str())
            .await?
            .ok_or_else(|| ClientError::UnknownContact(peer.to_string()))?;
        if contact.pending.is_some() {
            return Ok(false);
        }
        self.store.set_verified(peer.as_str(), true).await?;
        Ok(true)
    }

    /// Accepts `peer`'s changed identity. With `expected` (the safety number the user
    /// compared, spaces ignored), only if the pending identity still has that number: a relay
    /// can make up another pending identity between the comparison and the acceptance.
    pub async fn trust(
        &self,
        peer: &UserId,
        expected: Option<&str>,
    ) -> Result<Trusted, ClientError> {
        let Some(pending) =
            self.store.contact(peer.as_str()).await?.and_then(|contact| contact.pending)
        else {
            return Ok(Trusted::NothingPending);
        };
        let number =
            SafetyNumber::compute(&self.local.user, self.local.keys.public(), peer, &pending);
        if let Some(expected) = expected {
            let digits: String = expected.chars().filter(|c| !c.is_whitespace()).collect();
            if digits != number.digits() {
                return Ok(Trusted::OtherNumber);
            }
        }
        let outcome = match self.store.accept_pending(peer.as_str(), &pending).await? {
            store::Accepted::Accepted => Trusted::Accepted(number),
            store::Accepted::NothingPending => Trusted::NothingPending,
            store::Accepted::PendingChanged => Trusted::OtherNumber,
        };
        self.checked.lock().unwrap_or_else(|e| e.into_inner()).remove(peer.as_str());
        Ok(outcome)
    }

    /// Our public identity, as the relay knows it.
    pub fn public_identity(&self) -> PublicIdentityJson {
        PublicIdentityJson::from(self.local.keys.public())
    }
}
