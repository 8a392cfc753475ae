//! The Double Ratchet (§6), per <https://signal.org/docs/specifications/doubleratchet/> §3.
//!
//! ```text
//! encrypt: CKs, MK = KDF_CK(CKs); header = (DHs, PN, Ns); Ns += 1
//!          ciphertext = AES-256-GCM(MK, pad(record), AD ‖ header)
//! decrypt: a stored skipped key, or: on a new remote ratchet key skip the old chain to PN and
//!          step the DH ratchet; skip to N; CKr, MK = KDF_CK(CKr); Nr += 1; open
//! DH step: PN = Ns; Ns = Nr = 0; DHr = header.dh; RK, CKr = KDF_RK(RK, DH(DHs, DHr));
//!          DHs = GENERATE_DH(); RK, CKs = KDF_RK(RK, DH(DHs, DHr))
//! ```
//!
//! Decryption never changes the state unless it succeeds: the common case (the next message of
//! the current chain) works on the chain key alone and commits at the end; every other case
//! works on a copy of the whole state and replaces `self` with it only after the AEAD tag and
//! the record have both checked out.

mod header;
mod skipped;

use std::collections::VecDeque;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

pub use header::{HEADER_LEN, Header};
pub use skipped::{MAX_SKIP, MAX_SKIPPED_KEYS};
pub(crate) use skipped::{SkippedKey, SkippedKeys};

use crate::aead::{self, AeadError};
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::keys::{DhKeyPair, DhPublicKey, KeyError};
use crate::record::{self, MessageDigest, Record, RecordError};
use crate::x3dh::AssociatedData;

/// How many ended receiving chains are remembered to recognise duplicates from them.
pub const REMEMBERED_CHAINS: usize = 32;

/// Why a message could not be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RatchetEncryptError {
    /// No sending chain yet: a responder must receive before it can send.
    #[error("no sending chain yet")]
    NoSendingChain,
    /// 2^32 messages in one chain.
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// The record could not be encoded or is too large.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The AEAD refused its input (it cannot for records of at most 32 KiB).
    #[error("encryption failed")]
    EncryptionFailed,
}

/// Why a message could not be decrypted. Whatever the reason, the state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RatchetDecryptError {
    /// The message key was already used (a replay or a resend) or has been discarded.
    #[error("duplicate message")]
    DuplicateMessage,
    /// The header asks to skip more than [`MAX_SKIP`] keys.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// The AEAD tag did not verify.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A DH ratchet step produced a non-contributory output.
    #[error("invalid ratchet key")]
    InvalidRatchetKey,
    /// The plaintext decrypted but is not a valid padded record.
    #[error("invalid record: {0}")]
    InvalidRecord(RecordError),
}

impl From<AeadError> for RatchetDecryptError {
    fn from(_: AeadError) -> Self {
        RatchetDecryptError::AuthenticationFailed
    }
}

impl From<KeyError> for RatchetDecryptError {
    fn from(_: KeyError) -> Self {
        RatchetDecryptError::InvalidRatchetKey
    }
}

/// A decrypted record with its digest (§7.3).
#[derive(Debug)]
pub struct Opened {
    /// The record.
    pub record: Record,
    /// Its digest.
    pub digest: MessageDigest,
}

/// What a successful encryption produced.
#[derive(Debug)]
pub struct Sealed {
    /// The header to send.
    pub header: Header,
    /// `ciphertext ‖ tag`.
    pub ciphertext: Vec<u8>,
    /// The digest of the record sent, for matching the peer's acknowledgement.
    pub digest: MessageDigest,
}

/// The state of one Double Ratchet session.
#[derive(Clone)]
pub struct RatchetState {
    /// `DHs`: our current ratchet key pair.
    pub(crate) dh_self: DhKeyPair,
    /// `DHr`: the peer's current ratchet key (none before the responder's first message).
    pub(crate) dh_remote: Option<DhPublicKey>,
    /// `RK`.
    pub(crate) root: RootKey,
    /// `CKs` (none for a responder before its first DH step).
    pub(crate) sending: Option<ChainKey>,
    /// `CKr` (none for an initiator before the first reply).
    pub(crate) receiving: Option<ChainKey>,
    /// `Ns`.
    pub(crate) ns: u32,
    /// `Nr`.
    pub(crate) nr: u32,
    /// `PN`.
    pub(crate) pn: u32,
    /// `MKSKIPPED`, bounded.
    pub(crate) skipped: SkippedKeys,
    /// Remote ratchet keys of receiving chains that have ended, newest last, to tell duplicates
    /// from them apart from forgeries.
    pub(crate) previous_remote: VecDeque<DhPublicKey>,
}

impl RatchetState {
    /// The initiator's state after X3DH (§6.3): `ratchet_key` is a fresh key pair, `remote` is
    /// the responder's signed prekey.
    pub fn initiator(
        shared_secret: &RootKey,
        remote: DhPublicKey,
        ratchet_key: DhKeyPair,
    ) -> Result<Self, KeyError> {
        let (root, sending) = shared_secret.step(&ratchet_key.diffie_hellman(&remote)?);
        Ok(Self {
            dh_self: ratchet_key,
            dh_remote: Some(remote),
            root,
            sending: Some(sending),
            receiving: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: SkippedKeys::default(),
            previous_remote: VecDeque::new(),
        })
    }

    /// The responder's state after X3DH: its signed prekey is its first ratchet key.
    pub fn responder(shared_secret: &RootKey, signed_prekey: DhKeyPair) -> Self {
        Self {
            dh_self: signed_prekey,
            dh_remote: None,
            root: shared_secret.clone(),
            sending: None,
            receiving: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: SkippedKeys::default(),
            previous_remote: VecDeque::new(),
        }
    }

    /// Our current ratchet public key.
    pub fn ratchet_key(&self) -> &DhPublicKey {
        self.dh_self.public()
    }

    /// How many skipped message keys are stored.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Whether this state can send (a responder cannot before its first decryption).
    pub fn can_send(&self) -> bool {
        self.sending.is_some()
    }

    /// Encrypts a record.
    pub fn encrypt(
        &mut self,
        record: &Record,
        associated_data: &AssociatedData,
    ) -> Result<Sealed, RatchetEncryptError> {
        let chain = self.sending.as_ref().ok_or(RatchetEncryptError::NoSendingChain)?;
        let next_ns = self.ns.checked_add(1).ok_or(RatchetEncryptError::ChainExhausted)?;
        let encoded = record.encode()?;
        let padded = record::pad(&encoded)?;
        let (message_key, next_chain) = chain.step();
        let header = Header { dh: *self.dh_self.public(), pn: self.pn, n: self.ns };
        let ciphertext = seal(&message_key, &padded, associated_data, &header)
            .map_err(|_| RatchetEncryptError::EncryptionFailed)?;
        self.sending = Some(next_chain);
        self.ns = next_ns;
        Ok(Sealed { header, ciphertext, digest: MessageDigest::of_encoded(&encoded) })
    }

    /// Decrypts a message. On any error `self` is unchanged.
    pub fn decrypt<R: CryptoRng + ?Sized>(
        &mut self,
        header: &Header,
        ciphertext: &[u8],
        associated_data: &AssociatedData,
        rng: &mut R,
    ) -> Result<Opened, RatchetDecryptError> {
        if let Some(index) = self.skipped.find(&header.dh, header.n) {
            let Some(key) = self.skipped.get(index) else {
                return Err(RatchetDecryptError::DuplicateMessage);
            };
            let opened = open(key, ciphertext, associated_data, header)?;
            self.skipped.remove(index);
            return Ok(opened);
        }

        let same_chain = self.dh_remote.as_ref() == Some(&header.dh);
        if (same_chain && header.n < self.nr) || self.previous_remote.contains(&header.dh) {
            return Err(RatchetDecryptError::DuplicateMessage);
        }

        // Fast path: the next message of the current receiving chain needs only a chain step.
        if same_chain
            && header.n == self.nr
            && let Some(chain) = &self.receiving
        {
            let next_nr = self.nr.checked_add(1).ok_or(RatchetDecryptError::TooManySkipped)?;
            let (message_key, next_chain) = chain.step();
            let opened = open(&message_key, ciphertext, associated_data, header)?;
            self.receiving = Some(next_chain);
            self.nr = next_nr;
            return Ok(opened);
        }

        let mut next = self.clone();
        if !same_chain {
            next.skip_message_keys(header.pn)?;
            next.dh_ratchet(header, rng)?;
        }
        next.skip_message_keys(header.n)?;
        let chain = next.receiving.as_ref().ok_or(RatchetDecryptError::AuthenticationFailed)?;
        let (message_key, next_chain) = chain.step();
        next.receiving = Some(next_chain);
        next.nr = next.nr.checked_add(1).ok_or(RatchetDecryptError::TooManySkipped)?;
        let opened = open(&message_key, ciphertext, associated_data, header)?;
        *self = next;
        Ok(opened)
    }

    /// `SkipMessageKeys(state, until)`: stores the keys of the current receiving chain up to
    /// `until`, refusing to skip more than [`MAX_SKIP`].
    fn skip_message_keys(&mut self, until: u32) -> Result<(), RatchetDecryptError> {
        if until <= self.nr {
            return Ok(());
        }
        if until - self.nr > MAX_SKIP {
            return Err(RatchetDecryptError::TooManySkipped);
        }
        let (Some(remote), Some(mut chain)) = (self.dh_remote, self.receiving.take()) else {
            // No receiving chain yet (an initiator before the first reply): nothing to skip.
            return Ok(());
        };
        while self.nr < until {
            let (message_key, next_chain) = chain.step();
            self.skipped.push(remote, self.nr, message_key);
            chain = next_chain;
            self.nr += 1;
        }
        self.receiving = Some(chain);
        Ok(())
    }

    /// `DHRatchet(state, header)`.
    fn dh_ratchet<R: CryptoRng + ?Sized>(
        &mut self,
        header: &Header,
        rng: &mut R,
    ) -> Result<(), RatchetDecryptError> {
        if let Some(old) = self.dh_remote.replace(header.dh) {
            if self.previous_remote.len() == REMEMBERED_CHAINS {
                self.previous_remote.pop_front();
            }
            self.previous_remote.push_back(old);
        }
        self.pn = self.ns;
        self.ns = 0;
        self.nr = 0;
        let (root, receiving) = self.root.step(&self.dh_self.diffie_hellman(&header.dh)?);
        let ratchet_key = DhKeyPair::generate(rng);
        let (root, sending) = root.step(&ratchet_key.diffie_hellman(&header.dh)?);
        self.root = root;
        self.receiving = Some(receiving);
        self.sending = Some(sending);
        self.dh_self = ratchet_key;
        Ok(())
    }
}

/// `AD ‖ header_bytes`.
pub(crate) fn message_associated_data(
    associated_data: &AssociatedData,
    header: &Header,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(associated_data.as_bytes().len() + HEADER_LEN);
    out.extend_from_slice(associated_data.as_bytes());
    out.extend_from_slice(&header.encode());
    out
}

fn seal(
    message_key: &MessageKey,
    padded: &[u8],
    associated_data: &AssociatedData,
    header: &Header,
) -> Result<Vec<u8>, AeadError> {
    let aad = message_associated_data(associated_data, header);
    aead::seal(&message_key.expand(), padded, &aad)
}

fn open(
    message_key: &MessageKey,
    ciphertext: &[u8],
    associated_data: &AssociatedData,
    header: &Header,
) -> Result<Opened, RatchetDecryptError> {
    let aad = message_associated_data(associated_data, header);
    let padded: Zeroizing<Vec<u8>> = aead::open(&message_key.expand(), ciphertext, &aad)?;
    let encoded = record::unpad(&padded).map_err(RatchetDecryptError::InvalidRecord)?;
    let record = Record::decode(encoded).map_err(RatchetDecryptError::InvalidRecord)?;
    Ok(Opened { record, digest: MessageDigest::of_encoded(encoded) })
}

impl core::fmt::Debug for RatchetState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RatchetState")
            .field("ratchet_key", self.dh_self.public())
            .field("remote_ratchet_key", &self.dh_remote)
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}
