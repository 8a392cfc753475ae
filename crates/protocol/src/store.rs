//! Store traits, one per concern, and in-memory implementations, with the two operations that
//! tie them together: encrypting to a peer and decrypting from one.
//!
//! The traits are synchronous and narrow, as in libsignal: real clients keep their state in a
//! database and may instead load what a message needs, call [`SessionRecord`] directly and save
//! the result in one transaction. The in-memory stores serve tests, examples and benchmarks.

use std::collections::HashMap;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::record::{MessageDigest, Record};
use crate::session::{
    DecryptError, Decrypted, EncryptError, InitiateError, LocalParty, PrekeyLookup, Session,
    SessionRecord,
};
use crate::user_id::UserId;
use crate::wire::Envelope;

/// A store failed (I/O, corruption). Opaque: the protocol core only passes it on.
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub Box<dyn std::error::Error + Send + Sync>);

/// What is known about a peer's identity after seeing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityChange {
    /// First time this peer's identity was seen; it is now trusted on first use.
    New,
    /// The same identity as before.
    Unchanged,
    /// A different identity than before: show the user, block sending until accepted.
    Changed,
}

/// Our own identity and the identities we have seen for peers.
pub trait IdentityStore {
    /// Our user id.
    fn local_user(&self) -> &UserId;
    /// Our identity.
    fn local_identity(&self) -> &IdentityKeyPair;
    /// A peer's identity as last saved.
    fn peer_identity(&self, peer: &UserId) -> Result<Option<PublicIdentity>, StoreError>;
    /// Saves a peer's identity and says whether it changed.
    fn save_peer_identity(
        &mut self,
        peer: &UserId,
        identity: &PublicIdentity,
    ) -> Result<IdentityChange, StoreError>;
}

/// Our prekeys.
pub trait PrekeyStore {
    /// A signed prekey we still keep.
    fn signed_prekey(&self, id: u32) -> Result<Option<SignedPrekey>, StoreError>;
    /// A one-time prekey not yet used.
    fn one_time_prekey(&self, id: u32) -> Result<Option<OneTimePrekey>, StoreError>;
    /// Deletes a used one-time prekey.
    fn remove_one_time_prekey(&mut self, id: u32) -> Result<(), StoreError>;
}

/// Sessions, per peer.
pub trait SessionStore {
    /// A peer's session record.
    fn load_session(&self, peer: &UserId) -> Result<Option<SessionRecord>, StoreError>;
    /// Saves a peer's session record.
    fn store_session(&mut self, peer: &UserId, record: &SessionRecord) -> Result<(), StoreError>;
}

/// Identity store in memory.
#[derive(Debug)]
pub struct InMemoryIdentityStore {
    /// Our user id.
    user: UserId,
    /// Our identity.
    identity: IdentityKeyPair,
    /// Peers' identities as last seen.
    peers: HashMap<UserId, PublicIdentity>,
}

impl InMemoryIdentityStore {
    /// A store for our identity.
    pub fn new(user: UserId, identity: IdentityKeyPair) -> Self {
        Self { user, identity, peers: HashMap::new() }
    }
}

impl IdentityStore for InMemoryIdentityStore {
    fn local_user(&self) -> &UserId {
        &self.user
    }

    fn local_identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    fn peer_identity(&self, peer: &UserId) -> Result<Option<PublicIdentity>, StoreError> {
        Ok(self.peers.get(peer).copied())
    }

    fn save_peer_identity(
        &mut self,
        peer: &UserId,
        identity: &PublicIdentity,
    ) -> Result<IdentityChange, StoreError> {
        let change = match self.peers.insert(peer.clone(), *identity) {
            None => IdentityChange::New,
            Some(old) if old.same_keys(identity) => IdentityChange::Unchanged,
            Some(_) => IdentityChange::Changed,
        };
        Ok(change)
    }
}

/// Prekey store in memory.
#[derive(Debug, Default)]
pub struct InMemoryPrekeyStore {
    /// Signed prekeys by id.
    signed: HashMap<u32, SignedPrekey>,
    /// One-time prekeys by id.
    one_time: HashMap<u32, OneTimePrekey>,
}

impl InMemoryPrekeyStore {
    /// Adds a signed prekey.
    pub fn add_signed_prekey(&mut self, prekey: SignedPrekey) {
        self.signed.insert(prekey.id(), prekey);
    }

    /// Adds a one-time prekey.
    pub fn add_one_time_prekey(&mut self, prekey: OneTimePrekey) {
        self.one_time.insert(prekey.id(), prekey);
    }

    /// How many one-time prekeys are left.
    pub fn one_time_prekeys_left(&self) -> usize {
        self.one_time.len()
    }
}

impl PrekeyStore for InMemoryPrekeyStore {
    fn signed_prekey(&self, id: u32) -> Result<Option<SignedPrekey>, StoreError> {
        Ok(self.signed.get(&id).cloned())
    }

    fn one_time_prekey(&self, id: u32) -> Result<Option<OneTimePrekey>, StoreError> {
        Ok(self.one_time.get(&id).cloned())
    }

    fn remove_one_time_prekey(&mut self, id: u32) -> Result<(), StoreError> {
        self.one_time.remove(&id);
        Ok(())
    }
}

/// Session store in memory. Keeps the serialised form, as a database would, so every load is a
/// real restore. The records hold chain and message keys: they are wiped when replaced or
/// dropped, and `Debug` shows only whose sessions are kept.
#[derive(Default)]
pub struct InMemorySessionStore {
    /// Serialised session records by peer.
    sessions: HashMap<UserId, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for InMemorySessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemorySessionStore").field("peers", &self.sessions.keys()).finish()
    }
}

impl SessionStore for InMemorySessionStore {
    fn load_session(&self, peer: &UserId) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(peer)
            .map(|bytes| SessionRecord::from_bytes(bytes).map_err(|e| StoreError(Box::new(e))))
            .transpose()
    }

    fn store_session(&mut self, peer: &UserId, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(peer.clone(), Zeroizing::new(record.to_bytes().to_vec()));
        Ok(())
    }
}

/// Why [`encrypt`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreEncryptError {
    /// The session refused.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
    /// Starting a session from the bundle failed.
    #[error(transparent)]
    Initiate(#[from] InitiateError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bundle's identity is not the one this peer had: a key change, which the user must
    /// accept (saving the new identity) before anything is encrypted to it. Nothing was saved.
    #[error("the peer's identity changed; accept the new identity before sending")]
    IdentityChanged,
}

/// Why [`decrypt`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreDecryptError {
    /// The message did not decrypt; nothing was changed.
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Encrypts a record to `peer`, starting a session from `bundle` when there is none.
pub fn encrypt<R: CryptoRng + ?Sized>(
    identities: &mut dyn IdentityStore,
    sessions: &mut dyn SessionStore,
    peer: &UserId,
    bundle: Option<&PrekeyBundle>,
    record: &Record,
    rng: &mut R,
) -> Result<(Envelope, MessageDigest), StoreEncryptError> {
    let mut session_record = sessions.load_session(peer)?.unwrap_or_default();
    if !session_record.can_encrypt() {
        let bundle = bundle.ok_or(EncryptError::NoSession)?;
        let local =
            LocalParty { user: identities.local_user(), identity: identities.local_identity() };
        // Trust on first use only: a different identity is a key change, never taken silently.
        if identities.peer_identity(peer)?.is_some_and(|known| !known.same_keys(bundle.identity()))
        {
            return Err(StoreEncryptError::IdentityChanged);
        }
        let session = Session::initiate(local, peer, bundle, rng)?;
        identities.save_peer_identity(peer, bundle.identity())?;
        session_record.promote(session);
    }
    let sealed = session_record.encrypt(record)?;
    sessions.store_session(peer, &session_record)?;
    Ok(sealed)
}

/// Looks prekeys up in a [`PrekeyStore`], treating store errors as missing keys (the message
/// then fails to decrypt and stays queued for a retry).
struct StoreLookup<'a>(&'a dyn PrekeyStore);

impl PrekeyLookup for StoreLookup<'_> {
    fn signed_prekey(&self, id: u32) -> Option<SignedPrekey> {
        self.0.signed_prekey(id).ok().flatten()
    }
    fn one_time_prekey(&self, id: u32) -> Option<OneTimePrekey> {
        self.0.one_time_prekey(id).ok().flatten()
    }
}

/// Decrypts an envelope from `sender`, saving the session, the sender's identity, and deleting
/// a used one-time prekey, only once decryption succeeded. Also returns what seeing the
/// sender's identity revealed.
pub fn decrypt<R: CryptoRng + ?Sized>(
    identities: &mut dyn IdentityStore,
    prekeys: &mut dyn PrekeyStore,
    sessions: &mut dyn SessionStore,
    sender: &UserId,
    envelope: &Envelope,
    rng: &mut R,
) -> Result<(Decrypted, IdentityChange), StoreDecryptError> {
    let mut session_record = sessions.load_session(sender)?.unwrap_or_default();
    let local = LocalParty { user: identities.local_user(), identity: identities.local_identity() };
    let decrypted =
        session_record.decrypt(local, sender, envelope, &StoreLookup(&*prekeys), rng)?;
    sessions.store_session(sender, &session_record)?;
    let change = identities.save_peer_identity(sender, &decrypted.remote_identity)?;
    if let Some(id) = decrypted.used_one_time_prekey {
        prekeys.remove_one_time_prekey(id)?;
    }
    Ok((decrypted, change))
}
