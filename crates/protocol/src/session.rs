//! Sessions with one peer (§6.5): starting one from a bundle, answering a prekey message,
//! choosing among a peer's sessions, and saving them.
//!
//! A [`Session`] is one X3DH + Double Ratchet run. A [`SessionRecord`] holds a peer's current
//! session and up to [`MAX_PREVIOUS_SESSIONS`] earlier ones, most recent first, so that messages
//! still in flight on an older session (after both sides started one at once, or after the peer
//! reinstalled) are not lost.
//!
//! Nothing here changes unless a decryption succeeds, and a one-time prekey is only reported as
//! used once the message that used it has decrypted: the caller deletes it then.

use core::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::keys::{DhKeyPair, DhPublicKey, DhSecretKey, KeyError, Signature, VerifyingKey};
use crate::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::ratchet::{
    MAX_SKIPPED_KEYS, REMEMBERED_CHAINS, RatchetDecryptError, RatchetEncryptError, RatchetState,
    SkippedKey, SkippedKeys,
};
use crate::record::{MessageDigest, Record};
use crate::user_id::UserId;
use crate::wire::{Envelope, PrekeyHeader};
use crate::x3dh::{self, AssociatedData, InitiatorKeys, X3dhError};

/// How many earlier sessions a record keeps besides the current one.
pub const MAX_PREVIOUS_SESSIONS: usize = 8;
/// Version of the serialised session record.
pub const SESSION_STATE_VERSION: u8 = 1;

/// Why a message could not be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// There is no session with this peer yet: fetch a bundle and start one.
    #[error("no session with this peer")]
    NoSession,
    /// The ratchet refused (see [`RatchetEncryptError`]).
    #[error(transparent)]
    Ratchet(#[from] RatchetEncryptError),
}

/// Why starting a session from a bundle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitiateError {
    /// X3DH failed.
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    /// The signed prekey is not a usable ratchet key.
    #[error("invalid signed prekey")]
    InvalidSignedPrekey,
}

/// Why a message could not be decrypted. Whatever the reason, nothing was changed: no session
/// was created, altered or replaced, and no one-time prekey counts as used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// No session with this peer, and the message is not a prekey message.
    #[error("no session with this peer")]
    NoSession,
    /// The prekey message names a signed prekey this device does not have (any more).
    #[error("unknown signed prekey {0}")]
    UnknownSignedPrekey(u32),
    /// The prekey message names a one-time prekey this device does not have: already used (a
    /// replayed prekey message) or never issued.
    #[error("unknown one-time prekey {0}")]
    UnknownOneTimePrekey(u32),
    /// The message was already decrypted, or its key was discarded.
    #[error("duplicate message")]
    DuplicateMessage,
    /// The header asks to skip too many messages.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// The message does not authenticate: tampered, forged, or for another session.
    #[error("decryption failed")]
    DecryptionFailed,
    /// X3DH refused the prekey message's keys.
    #[error("invalid prekey message")]
    InvalidPrekeyMessage,
}

impl From<RatchetDecryptError> for DecryptError {
    fn from(error: RatchetDecryptError) -> Self {
        match error {
            RatchetDecryptError::DuplicateMessage => DecryptError::DuplicateMessage,
            RatchetDecryptError::TooManySkipped => DecryptError::TooManySkipped,
            // A bad tag, a bad ratchet key and a bad record all mean the same to the caller,
            // and are deliberately indistinguishable to anyone it might tell.
            RatchetDecryptError::AuthenticationFailed
            | RatchetDecryptError::InvalidRatchetKey
            | RatchetDecryptError::InvalidRecord(_) => DecryptError::DecryptionFailed,
        }
    }
}

/// Why a saved session record could not be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Saved by a newer version.
    #[error("unsupported session state version {0}")]
    UnsupportedVersion(u8),
    /// Not a session record, or damaged.
    #[error("corrupt session state")]
    Corrupt,
}

/// Where a responder finds the prekeys a prekey message names.
pub trait PrekeyLookup {
    /// The signed prekey with this id, if still kept.
    fn signed_prekey(&self, id: u32) -> Option<SignedPrekey>;
    /// The one-time prekey with this id, if not yet used.
    fn one_time_prekey(&self, id: u32) -> Option<OneTimePrekey>;
}

/// The caller's own side of a conversation.
#[derive(Debug, Clone, Copy)]
pub struct LocalParty<'a> {
    /// Our user id.
    pub user: &'a UserId,
    /// Our identity.
    pub identity: &'a IdentityKeyPair,
}

/// An initiator's prekey header, sent with every message until the peer replies.
#[derive(Clone)]
struct PendingPrekey {
    /// Our identity, as sent.
    local_identity: PublicIdentity,
    /// The peer's signed prekey used.
    signed_prekey_id: u32,
    /// The peer's one-time prekey used, if any.
    one_time_prekey_id: Option<u32>,
}

/// One X3DH + Double Ratchet session with a peer.
#[derive(Clone)]
pub struct Session {
    /// Our user id when the session was made.
    local_user: UserId,
    /// The peer.
    remote_user: UserId,
    /// The peer's identity as bound into `AD`.
    remote_identity: PublicIdentity,
    /// `AD`.
    associated_data: AssociatedData,
    /// `EK_A`: names the session, so a resent prekey message finds it again.
    base_key: DhPublicKey,
    /// Present while we initiated and have not yet heard back.
    pending_prekey: Option<PendingPrekey>,
    /// The ratchet.
    ratchet: RatchetState,
}

impl Session {
    /// Starts a session with `peer` from their verified bundle (the initiator's side of §5 and
    /// §6.3). Draws `EK_A` and then the first ratchet key from `rng`, in that order.
    pub fn initiate<R: CryptoRng + ?Sized>(
        local: LocalParty<'_>,
        peer: &UserId,
        bundle: &PrekeyBundle,
        rng: &mut R,
    ) -> Result<Self, InitiateError> {
        let ephemeral = DhKeyPair::generate(rng);
        let ratchet_key = DhKeyPair::generate(rng);
        Self::initiate_with_keys(local, peer, bundle, &ephemeral, ratchet_key)
    }

    /// [`Session::initiate`] with given keys (test vectors).
    pub fn initiate_with_keys(
        local: LocalParty<'_>,
        peer: &UserId,
        bundle: &PrekeyBundle,
        ephemeral: &DhKeyPair,
        ratchet_key: DhKeyPair,
    ) -> Result<Self, InitiateError> {
        let initiated = x3dh::initiate(local.user, local.identity, peer, bundle, ephemeral)?;
        let ratchet = RatchetState::initiator(
            &initiated.shared_secret,
            bundle.signed_prekey().key,
            ratchet_key,
        )
        .map_err(|_: KeyError| InitiateError::InvalidSignedPrekey)?;
        Ok(Self {
            local_user: local.user.clone(),
            remote_user: peer.clone(),
            remote_identity: *bundle.identity(),
            associated_data: initiated.associated_data,
            base_key: initiated.base_key,
            pending_prekey: Some(PendingPrekey {
                local_identity: *local.identity.public(),
                signed_prekey_id: initiated.signed_prekey_id,
                one_time_prekey_id: initiated.one_time_prekey_id,
            }),
            ratchet,
        })
    }

    /// The responder's side: a session from a prekey message, not yet used to decrypt.
    fn respond(
        local: LocalParty<'_>,
        sender: &UserId,
        prekey: &PrekeyHeader,
        signed_prekey: &SignedPrekey,
        one_time_prekey: Option<&OneTimePrekey>,
    ) -> Result<Self, DecryptError> {
        let initiator =
            InitiatorKeys { user: sender, identity: &prekey.identity, base_key: &prekey.base_key };
        let responded =
            x3dh::respond(local.user, local.identity, signed_prekey, one_time_prekey, &initiator)
                .map_err(|_| DecryptError::InvalidPrekeyMessage)?;
        Ok(Self {
            local_user: local.user.clone(),
            remote_user: sender.clone(),
            remote_identity: prekey.identity,
            associated_data: responded.associated_data,
            base_key: prekey.base_key,
            pending_prekey: None,
            ratchet: RatchetState::responder(
                &responded.shared_secret,
                signed_prekey.key_pair().clone(),
            ),
        })
    }

    /// The peer.
    pub fn remote_user(&self) -> &UserId {
        &self.remote_user
    }

    /// The peer's identity in this session.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote_identity
    }

    /// The X3DH base key naming this session.
    pub fn base_key(&self) -> &DhPublicKey {
        &self.base_key
    }

    /// `AD` of this session.
    pub fn associated_data(&self) -> &AssociatedData {
        &self.associated_data
    }

    /// The ratchet state (read-only).
    pub fn ratchet(&self) -> &RatchetState {
        &self.ratchet
    }

    /// Whether we initiated and are still waiting for the peer's first reply.
    pub fn awaiting_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// Encrypts a record into an envelope, with the prekey header while one is pending.
    pub fn encrypt(&mut self, record: &Record) -> Result<(Envelope, MessageDigest), EncryptError> {
        let sealed = self.ratchet.encrypt(record, &self.associated_data)?;
        let prekey = self.pending_prekey.as_ref().map(|pending| PrekeyHeader {
            identity: pending.local_identity,
            base_key: self.base_key,
            signed_prekey_id: pending.signed_prekey_id,
            one_time_prekey_id: pending.one_time_prekey_id,
        });
        let envelope = Envelope { header: sealed.header, prekey, ciphertext: sealed.ciphertext };
        Ok((envelope, sealed.digest))
    }

    /// Decrypts an envelope of this session. Unchanged on error.
    fn decrypt<R: CryptoRng + ?Sized>(
        &mut self,
        envelope: &Envelope,
        rng: &mut R,
    ) -> Result<(Record, MessageDigest), DecryptError> {
        let opened = self.ratchet.decrypt(
            &envelope.header,
            &envelope.ciphertext,
            &self.associated_data,
            rng,
        )?;
        // Hearing back proves the peer has the session; stop sending the prekey header.
        self.pending_prekey = None;
        Ok((opened.record, opened.digest))
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_user", &self.local_user)
            .field("remote_user", &self.remote_user)
            .field("remote_identity", &self.remote_identity)
            .field("base_key", &self.base_key)
            .field("awaiting_reply", &self.pending_prekey.is_some())
            .field("ratchet", &self.ratchet)
            .finish()
    }
}

/// A decrypted message.
#[derive(Debug)]
pub struct Decrypted {
    /// The record.
    pub record: Record,
    /// Its digest (§7.3).
    pub digest: MessageDigest,
    /// The sender's identity in the session that decrypted it. Compare it with the contact's
    /// known identity: a difference is a key change to show the user.
    pub remote_identity: PublicIdentity,
    /// Whether the message started a new session.
    pub new_session: bool,
    /// The one-time prekey the message used; delete it once this result is saved.
    pub used_one_time_prekey: Option<u32>,
}

/// A peer's sessions: the current one first, then up to [`MAX_PREVIOUS_SESSIONS`] earlier ones.
#[derive(Default)]
pub struct SessionRecord {
    /// Most recently used first. Holds ratchet private keys inline, so the list never grows
    /// by reallocating (which would leave copies of them behind, unwiped, in the old buffer):
    /// it gets room for [`SESSION_ROOM`] sessions before the first one goes in.
    sessions: Vec<Session>,
}

/// Sessions a record's list has room for: the most it keeps, and one being promoted before the
/// oldest is dropped.
const SESSION_ROOM: usize = 2 + MAX_PREVIOUS_SESSIONS;

impl Clone for SessionRecord {
    fn clone(&self) -> Self {
        let mut sessions = Vec::with_capacity(SESSION_ROOM);
        sessions.extend(self.sessions.iter().cloned());
        Self { sessions }
    }
}

impl SessionRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current session, if any.
    pub fn current(&self) -> Option<&Session> {
        self.sessions.first()
    }

    /// All sessions, current first.
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Whether there is a session to encrypt with.
    pub fn can_encrypt(&self) -> bool {
        self.current().is_some_and(|session| session.ratchet.can_send())
    }

    /// Makes `session` current, keeping the previous ones (bounded).
    pub fn promote(&mut self, session: Session) {
        if self.sessions.is_empty() {
            self.sessions.reserve_exact(SESSION_ROOM);
        }
        self.sessions.insert(0, session);
        self.sessions.truncate(1 + MAX_PREVIOUS_SESSIONS);
    }

    /// Drops every session, e.g. after the user accepted a changed identity and a fresh session
    /// must be started from a new bundle.
    pub fn clear(&mut self) {
        self.sessions.clear();
    }

    /// Encrypts a record with the current session.
    pub fn encrypt(&mut self, record: &Record) -> Result<(Envelope, MessageDigest), EncryptError> {
        match self.sessions.first_mut() {
            Some(session) if session.ratchet.can_send() => session.encrypt(record),
            _ => Err(EncryptError::NoSession),
        }
    }

    /// Decrypts an envelope from `sender`. Routes a prekey message to the session it belongs to
    /// or starts a new one; tries the other sessions for an ordinary message. The session that
    /// decrypts becomes current. On any error the record is unchanged.
    pub fn decrypt<R: CryptoRng + ?Sized>(
        &mut self,
        local: LocalParty<'_>,
        sender: &UserId,
        envelope: &Envelope,
        prekeys: &dyn PrekeyLookup,
        rng: &mut R,
    ) -> Result<Decrypted, DecryptError> {
        if let Some(prekey) = &envelope.prekey {
            let known = self.sessions.iter().position(|s| s.base_key == prekey.base_key);
            if known.is_none() {
                return self.decrypt_new_session(local, sender, prekey, envelope, prekeys, rng);
            }
        }
        let mut first_error = None;
        for index in 0..self.sessions.len() {
            if let Some(prekey) = &envelope.prekey
                && self.sessions[index].base_key != prekey.base_key
            {
                continue;
            }
            match self.sessions[index].decrypt(envelope, rng) {
                Ok((record, digest)) => {
                    let session = self.sessions.remove(index);
                    let remote_identity = session.remote_identity;
                    self.sessions.insert(0, session);
                    return Ok(Decrypted {
                        record,
                        digest,
                        remote_identity,
                        new_session: false,
                        used_one_time_prekey: None,
                    });
                }
                Err(DecryptError::DuplicateMessage) => return Err(DecryptError::DuplicateMessage),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or(DecryptError::NoSession))
    }

    fn decrypt_new_session<R: CryptoRng + ?Sized>(
        &mut self,
        local: LocalParty<'_>,
        sender: &UserId,
        prekey: &PrekeyHeader,
        envelope: &Envelope,
        prekeys: &dyn PrekeyLookup,
        rng: &mut R,
    ) -> Result<Decrypted, DecryptError> {
        let signed_prekey = prekeys
            .signed_prekey(prekey.signed_prekey_id)
            .ok_or(DecryptError::UnknownSignedPrekey(prekey.signed_prekey_id))?;
        let one_time_prekey = match prekey.one_time_prekey_id {
            Some(id) => {
                Some(prekeys.one_time_prekey(id).ok_or(DecryptError::UnknownOneTimePrekey(id))?)
            }
            None => None,
        };
        let mut session =
            Session::respond(local, sender, prekey, &signed_prekey, one_time_prekey.as_ref())?;
        let (record, digest) = session.decrypt(envelope, rng)?;
        let remote_identity = session.remote_identity;
        self.promote(session);
        Ok(Decrypted {
            record,
            digest,
            remote_identity,
            new_session: true,
            used_one_time_prekey: prekey.one_time_prekey_id,
        })
    }

    /// Serialises the record (§10). The buffer is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let snapshot = RecordSnapshot {
            version: SESSION_STATE_VERSION,
            sessions: self.sessions.iter().map(SessionSnapshot::from).collect(),
        };
        // Size first, so the output buffer never reallocates and leaves copies behind.
        let size =
            postcard::serialize_with_flavor(&snapshot, postcard::ser_flavors::Size::default())
                .unwrap_or(0);
        let buffer = Zeroizing::new(Vec::with_capacity(size));
        // Serialising into a Vec of the right size cannot fail.
        let mut buffer = buffer;
        if let Ok(bytes) = postcard::to_extend(&snapshot, core::mem::take(&mut *buffer)) {
            *buffer = bytes;
        }
        buffer
    }

    /// Restores a serialised record, validating every key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let version = *bytes.first().ok_or(StateError::Corrupt)?;
        if version != SESSION_STATE_VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let (snapshot, rest): (RecordSnapshot, _) =
            postcard::take_from_bytes(bytes).map_err(|_| StateError::Corrupt)?;
        let oversized = snapshot.sessions.iter().any(|s| {
            s.skipped.len() > MAX_SKIPPED_KEYS || s.previous_remote.len() > REMEMBERED_CHAINS
        });
        if !rest.is_empty() || snapshot.sessions.len() > 1 + MAX_PREVIOUS_SESSIONS || oversized {
            return Err(StateError::Corrupt);
        }
        let mut sessions = Vec::with_capacity(SESSION_ROOM);
        for snapshot in &snapshot.sessions {
            sessions.push(Session::try_from(snapshot).map_err(|_| StateError::Corrupt)?);
        }
        Ok(Self { sessions })
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord").field("sessions", &self.sessions).finish()
    }
}

// ---- serialised form -----------------------------------------------------------------------

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RecordSnapshot {
    version: u8,
    sessions: Vec<SessionSnapshot>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentitySnapshot {
    signing: Vec<u8>,
    dh: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct PendingSnapshot {
    local_identity: IdentitySnapshot,
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SkippedSnapshot {
    ratchet_key: Vec<u8>,
    n: u32,
    key: [u8; 32],
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SessionSnapshot {
    local_user: String,
    remote_user: String,
    remote_identity: IdentitySnapshot,
    associated_data: Vec<u8>,
    base_key: Vec<u8>,
    pending_prekey: Option<PendingSnapshot>,
    ratchet_secret: [u8; 32],
    ratchet_public: Vec<u8>,
    remote_ratchet_key: Option<Vec<u8>>,
    root_key: [u8; 32],
    sending_chain: Option<[u8; 32]>,
    receiving_chain: Option<[u8; 32]>,
    ns: u32,
    nr: u32,
    pn: u32,
    skipped: Vec<SkippedSnapshot>,
    previous_remote: Vec<Vec<u8>>,
}

impl From<&PublicIdentity> for IdentitySnapshot {
    fn from(identity: &PublicIdentity) -> Self {
        Self {
            signing: identity.signing_key().as_bytes().to_vec(),
            dh: identity.dh_key().as_bytes().to_vec(),
            signature: identity.signature().as_bytes().to_vec(),
        }
    }
}

impl TryFrom<&IdentitySnapshot> for PublicIdentity {
    type Error = KeyError;
    fn try_from(snapshot: &IdentitySnapshot) -> Result<Self, KeyError> {
        // Points are validated again (cheap); the binding signature was verified before the
        // identity was first saved.
        Ok(PublicIdentity::from_trusted_parts(
            VerifyingKey::from_bytes(&snapshot.signing)?,
            DhPublicKey::from_bytes(&snapshot.dh)?,
            Signature::from_bytes(&snapshot.signature)?,
        ))
    }
}

impl From<&Session> for SessionSnapshot {
    fn from(session: &Session) -> Self {
        let ratchet = &session.ratchet;
        Self {
            local_user: session.local_user.to_string(),
            remote_user: session.remote_user.to_string(),
            remote_identity: (&session.remote_identity).into(),
            associated_data: session.associated_data.as_bytes().to_vec(),
            base_key: session.base_key.as_bytes().to_vec(),
            pending_prekey: session.pending_prekey.as_ref().map(|pending| PendingSnapshot {
                local_identity: (&pending.local_identity).into(),
                signed_prekey_id: pending.signed_prekey_id,
                one_time_prekey_id: pending.one_time_prekey_id,
            }),
            ratchet_secret: *ratchet.dh_self.secret().to_bytes(),
            ratchet_public: ratchet.dh_self.public().as_bytes().to_vec(),
            remote_ratchet_key: ratchet.dh_remote.map(|key| key.as_bytes().to_vec()),
            root_key: *ratchet.root.as_bytes(),
            sending_chain: ratchet.sending.as_ref().map(|chain| *chain.as_bytes()),
            receiving_chain: ratchet.receiving.as_ref().map(|chain| *chain.as_bytes()),
            ns: ratchet.ns,
            nr: ratchet.nr,
            pn: ratchet.pn,
            skipped: ratchet
                .skipped
                .0
                .iter()
                .map(|skipped| SkippedSnapshot {
                    ratchet_key: skipped.ratchet_key.as_bytes().to_vec(),
                    n: skipped.n,
                    key: *skipped.key.as_bytes(),
                })
                .collect(),
            previous_remote: ratchet
                .previous_remote
                .iter()
                .map(|key| key.as_bytes().to_vec())
                .collect(),
        }
    }
}

impl TryFrom<&SessionSnapshot> for Session {
    type Error = KeyError;
    fn try_from(snapshot: &SessionSnapshot) -> Result<Self, KeyError> {
        let user = |id: &str| UserId::parse(id).map_err(|_| KeyError::InvalidPublicKey);
        let skipped = snapshot
            .skipped
            .iter()
            .map(|skipped| {
                Ok(SkippedKey {
                    ratchet_key: DhPublicKey::from_bytes(&skipped.ratchet_key)?,
                    n: skipped.n,
                    key: MessageKey::from_bytes(skipped.key),
                })
            })
            .collect::<Result<_, KeyError>>()?;
        let previous_remote = snapshot
            .previous_remote
            .iter()
            .map(|key| DhPublicKey::from_bytes(key))
            .collect::<Result<_, KeyError>>()?;
        let pending_prekey = match &snapshot.pending_prekey {
            Some(pending) => Some(PendingPrekey {
                local_identity: PublicIdentity::try_from(&pending.local_identity)?,
                signed_prekey_id: pending.signed_prekey_id,
                one_time_prekey_id: pending.one_time_prekey_id,
            }),
            None => None,
        };
        Ok(Session {
            local_user: user(&snapshot.local_user)?,
            remote_user: user(&snapshot.remote_user)?,
            remote_identity: PublicIdentity::try_from(&snapshot.remote_identity)?,
            associated_data: AssociatedData::from_bytes(snapshot.associated_data.clone()),
            base_key: DhPublicKey::from_bytes(&snapshot.base_key)?,
            pending_prekey,
            ratchet: RatchetState {
                dh_self: DhKeyPair::from_trusted_parts(
                    DhSecretKey::from_bytes(&snapshot.ratchet_secret)?,
                    DhPublicKey::from_bytes(&snapshot.ratchet_public)?,
                ),
                dh_remote: snapshot
                    .remote_ratchet_key
                    .as_deref()
                    .map(DhPublicKey::from_bytes)
                    .transpose()?,
                root: RootKey::from_bytes(snapshot.root_key),
                sending: snapshot.sending_chain.map(ChainKey::from_bytes),
                receiving: snapshot.receiving_chain.map(ChainKey::from_bytes),
                ns: snapshot.ns,
                nr: snapshot.nr,
                pn: snapshot.pn,
                skipped: SkippedKeys(skipped),
                previous_remote,
            },
        })
    }
}
