//! Signed and one-time prekeys, and the bundle a relay hands out (§4, §4.2).

use core::fmt;

use rand_core::CryptoRng;

use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::keys::{DhKeyPair, DhPublicKey, DhSecretKey, KeyError, Signature};
use crate::signing::signed_prekey_message;
use crate::user_id::UserId;

/// A signed prekey with its private key, kept by its owner.
#[derive(Clone)]
pub struct SignedPrekey {
    /// The key pair.
    key_pair: DhKeyPair,
    /// Id, creation time and signature: what is published.
    public: SignedPrekeyPublic,
}

impl SignedPrekey {
    /// Generates a signed prekey and signs it with the identity's `IKs`.
    pub fn generate<R: CryptoRng + ?Sized>(
        identity: &IdentityKeyPair,
        id: u32,
        created_at: u64,
        rng: &mut R,
    ) -> Self {
        Self::from_key_pair(identity, id, created_at, DhKeyPair::generate(rng))
    }

    /// Signs an existing key pair as a signed prekey. Signing is deterministic, so this also
    /// restores a stored signed prekey exactly.
    pub fn from_key_pair(
        identity: &IdentityKeyPair,
        id: u32,
        created_at: u64,
        key_pair: DhKeyPair,
    ) -> Self {
        let message = signed_prekey_message(
            identity.public().signing_key(),
            id,
            created_at,
            key_pair.public(),
        );
        let signature = identity.sign(&message);
        let public = SignedPrekeyPublic { id, created_at, key: *key_pair.public(), signature };
        Self { key_pair, public }
    }

    /// Restores a stored signed prekey from its private scalar.
    pub fn from_secret_bytes(
        identity: &IdentityKeyPair,
        id: u32,
        created_at: u64,
        secret: &[u8],
    ) -> Result<Self, KeyError> {
        let key_pair = DhKeyPair::from_secret(DhSecretKey::from_bytes(secret)?);
        Ok(Self::from_key_pair(identity, id, created_at, key_pair))
    }

    /// The prekey's id.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The key pair.
    pub fn key_pair(&self) -> &DhKeyPair {
        &self.key_pair
    }

    /// What is published.
    pub fn public(&self) -> &SignedPrekeyPublic {
        &self.public
    }
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The published part of a signed prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedPrekeyPublic {
    /// Chosen by the owner; names the prekey in prekey messages.
    pub id: u32,
    /// Creation time, Unix seconds; signed so a relay cannot pass an old key off as new.
    pub created_at: u64,
    /// The public key.
    pub key: DhPublicKey,
    /// `IKs`'s signature over id, time and key (§4.1).
    pub signature: Signature,
}

impl SignedPrekeyPublic {
    /// Verifies the signature with the owner's identity.
    pub fn verify(&self, owner: &PublicIdentity) -> Result<(), KeyError> {
        let message =
            signed_prekey_message(owner.signing_key(), self.id, self.created_at, &self.key);
        owner.signing_key().verify(&message, &self.signature)
    }
}

/// A one-time prekey with its private key, kept by its owner until a prekey message uses it.
#[derive(Clone)]
pub struct OneTimePrekey {
    /// Chosen by the owner; names the prekey in prekey messages.
    id: u32,
    /// The key pair.
    key_pair: DhKeyPair,
}

impl OneTimePrekey {
    /// Generates a one-time prekey.
    pub fn generate<R: CryptoRng + ?Sized>(id: u32, rng: &mut R) -> Self {
        Self { id, key_pair: DhKeyPair::generate(rng) }
    }

    /// Wraps an existing key pair.
    pub fn from_key_pair(id: u32, key_pair: DhKeyPair) -> Self {
        Self { id, key_pair }
    }

    /// The prekey's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key pair.
    pub fn key_pair(&self) -> &DhKeyPair {
        &self.key_pair
    }

    /// What is published.
    pub fn public(&self) -> OneTimePrekeyPublic {
        OneTimePrekeyPublic { id: self.id, key: *self.key_pair.public() }
    }
}

impl fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePrekey")
            .field("id", &self.id)
            .field("public", self.key_pair.public())
            .finish_non_exhaustive()
    }
}

/// The published part of a one-time prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneTimePrekeyPublic {
    /// Names the prekey in prekey messages.
    pub id: u32,
    /// The public key.
    pub key: DhPublicKey,
}

/// What the relay hands out for a user: everything an initiator needs for X3DH. Only exists
/// verified: the identity binding and the signed-prekey signature have both checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// Whose bundle this is.
    user_id: UserId,
    /// Their identity.
    identity: PublicIdentity,
    /// Their current signed prekey.
    signed_prekey: SignedPrekeyPublic,
    /// One of their one-time prekeys, when any were left.
    one_time_prekey: Option<OneTimePrekeyPublic>,
}

impl PrekeyBundle {
    /// Builds a bundle, verifying the signed prekey against the identity.
    pub fn new(
        user_id: UserId,
        identity: PublicIdentity,
        signed_prekey: SignedPrekeyPublic,
        one_time_prekey: Option<OneTimePrekeyPublic>,
    ) -> Result<Self, KeyError> {
        signed_prekey.verify(&identity)?;
        Ok(Self { user_id, identity, signed_prekey, one_time_prekey })
    }

    /// Whose bundle this is.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Their identity.
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// Their signed prekey.
    pub fn signed_prekey(&self) -> &SignedPrekeyPublic {
        &self.signed_prekey
    }

    /// The one-time prekey, if one was served.
    pub fn one_time_prekey(&self) -> Option<&OneTimePrekeyPublic> {
        self.one_time_prekey.as_ref()
    }
}
