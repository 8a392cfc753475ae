//! X3DH over P-256 (§5).
//!
//! ```text
//! DH1 = DH(IKd_A, SPK_B)   DH2 = DH(EK_A, IKd_B)   DH3 = DH(EK_A, SPK_B)   [DH4 = DH(EK_A, OPK_B)]
//! SK  = HKDF-SHA256(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = "Sotto v1 P-256 X3DH", 32)
//! AD  = version ‖ suite ‖ id_A ‖ IKs_A ‖ IKd_A ‖ id_B ‖ IKs_B ‖ IKd_B
//! ```
//!
//! See <https://signal.org/docs/specifications/x3dh/>; the one difference (no `0xFF` prefix) is
//! explained in docs/PROTOCOL.md.

use core::fmt;

use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::kdf::RootKey;
use crate::keys::{DhKeyPair, DhPublicKey, KeyError, SharedSecret};
use crate::prekeys::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::user_id::UserId;
use crate::{PROTOCOL_VERSION, SUITE_P256};

/// Why X3DH could not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum X3dhError {
    /// The bundle is for a different user than the one asked for.
    #[error("the bundle is for another user")]
    BundleUserMismatch,
    /// A DH output was all zeros.
    #[error("non-contributory key agreement")]
    NonContributoryKey,
    /// The prekey message names a different signed prekey than the one given.
    #[error("signed prekey id mismatch")]
    SignedPrekeyMismatch,
    /// The prekey message names a different one-time prekey than the one given.
    #[error("one-time prekey id mismatch")]
    OneTimePrekeyMismatch,
}

impl From<KeyError> for X3dhError {
    fn from(_: KeyError) -> Self {
        // Keys reaching X3DH were validated when decoded; only the zero check can fail here.
        X3dhError::NonContributoryKey
    }
}

/// The X3DH associated data: both user ids and both identities, initiator first.
#[derive(Clone, PartialEq, Eq)]
pub struct AssociatedData(Vec<u8>);

impl AssociatedData {
    /// Builds `AD` (§5, step 5).
    pub fn new(
        initiator: &UserId,
        initiator_identity: &PublicIdentity,
        responder: &UserId,
        responder_identity: &PublicIdentity,
    ) -> Self {
        let mut out = Vec::with_capacity(2 + 2 * (33 + 130));
        out.push(PROTOCOL_VERSION);
        out.push(SUITE_P256);
        for (user, identity) in [(initiator, initiator_identity), (responder, responder_identity)] {
            user.encode_into(&mut out);
            out.extend_from_slice(identity.signing_key().as_bytes());
            out.extend_from_slice(identity.dh_key().as_bytes());
        }
        Self(out)
    }

    /// Restores stored bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AssociatedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssociatedData({} bytes)", self.0.len())
    }
}

/// What the initiator gets from X3DH.
#[derive(Debug)]
pub struct Initiated {
    /// `SK`, the first root key.
    pub shared_secret: RootKey,
    /// `AD`.
    pub associated_data: AssociatedData,
    /// `EK_A`'s public key, sent in every prekey message.
    pub base_key: DhPublicKey,
    /// Id of the signed prekey used.
    pub signed_prekey_id: u32,
    /// Id of the one-time prekey used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// The DH outputs in the order they are concatenated; kept separate for test vectors.
pub(crate) fn initiator_dh_outputs(
    identity: &IdentityKeyPair,
    bundle: &PrekeyBundle,
    ephemeral: &DhKeyPair,
) -> Result<Vec<SharedSecret>, X3dhError> {
    let spk = &bundle.signed_prekey().key;
    // Room for all four at once: growing the list would leave copies of the first three
    // behind, unwiped, in the buffer it left.
    let mut outputs = Vec::with_capacity(4);
    outputs.push(identity.dh_key_pair().diffie_hellman(spk)?);
    outputs.push(ephemeral.diffie_hellman(bundle.identity().dh_key())?);
    outputs.push(ephemeral.diffie_hellman(spk)?);
    if let Some(opk) = bundle.one_time_prekey() {
        outputs.push(ephemeral.diffie_hellman(&opk.key)?);
    }
    Ok(outputs)
}

/// Runs the initiator's side against a verified bundle. `ephemeral` is `EK_A`, fresh for this
/// session (the caller draws it from its RNG).
pub fn initiate(
    local_user: &UserId,
    identity: &IdentityKeyPair,
    peer: &UserId,
    bundle: &PrekeyBundle,
    ephemeral: &DhKeyPair,
) -> Result<Initiated, X3dhError> {
    if bundle.user_id() != peer {
        return Err(X3dhError::BundleUserMismatch);
    }
    let outputs = initiator_dh_outputs(identity, bundle, ephemeral)?;
    let refs: Vec<&SharedSecret> = outputs.iter().collect();
    Ok(Initiated {
        shared_secret: RootKey::from_x3dh(&refs),
        associated_data: AssociatedData::new(
            local_user,
            identity.public(),
            peer,
            bundle.identity(),
        ),
        base_key: *ephemeral.public(),
        signed_prekey_id: bundle.signed_prekey().id,
        one_time_prekey_id: bundle.one_time_prekey().map(|opk| opk.id),
    })
}

/// What the responder derives from a prekey message.
#[derive(Debug)]
pub struct Responded {
    /// `SK`.
    pub shared_secret: RootKey,
    /// `AD`.
    pub associated_data: AssociatedData,
}

/// The initiator's X3DH values, as the responder reads them from a prekey message.
#[derive(Debug, Clone, Copy)]
pub struct InitiatorKeys<'a> {
    /// The initiator's user id, from the relay's authenticated sender.
    pub user: &'a UserId,
    /// The initiator's identity, verified.
    pub identity: &'a PublicIdentity,
    /// `EK_A`.
    pub base_key: &'a DhPublicKey,
}

/// The responder's DH outputs, in concatenation order.
pub(crate) fn responder_dh_outputs(
    identity: &IdentityKeyPair,
    signed_prekey: &SignedPrekey,
    one_time_prekey: Option<&OneTimePrekey>,
    initiator: &InitiatorKeys<'_>,
) -> Result<Vec<SharedSecret>, X3dhError> {
    let spk = signed_prekey.key_pair();
    // Room for all four at once (see `initiator_dh_outputs`).
    let mut outputs = Vec::with_capacity(4);
    outputs.push(spk.diffie_hellman(initiator.identity.dh_key())?);
    outputs.push(identity.dh_key_pair().diffie_hellman(initiator.base_key)?);
    outputs.push(spk.diffie_hellman(initiator.base_key)?);
    if let Some(opk) = one_time_prekey {
        outputs.push(opk.key_pair().diffie_hellman(initiator.base_key)?);
    }
    Ok(outputs)
}

/// Runs the responder's side.
pub fn respond(
    local_user: &UserId,
    identity: &IdentityKeyPair,
    signed_prekey: &SignedPrekey,
    one_time_prekey: Option<&OneTimePrekey>,
    initiator: &InitiatorKeys<'_>,
) -> Result<Responded, X3dhError> {
    let outputs = responder_dh_outputs(identity, signed_prekey, one_time_prekey, initiator)?;
    let refs: Vec<&SharedSecret> = outputs.iter().collect();
    Ok(Responded {
        shared_secret: RootKey::from_x3dh(&refs),
        associated_data: AssociatedData::new(
            initiator.user,
            initiator.identity,
            local_user,
            identity.public(),
        ),
    })
}
