//! Identity keys (§4): an ECDSA signing key `IKs` and an ECDH key `IKd`, bound by a signature.
//!
//! Web Crypto cannot use one P-256 key for both signing and key agreement, so a Sotto identity is
//! the pair. A [`PublicIdentity`] only exists once its binding signature has verified.

use core::fmt;

use rand_core::CryptoRng;

use crate::keys::{
    DhKeyPair, DhPublicKey, DhSecretKey, KeyError, Signature, SigningKey, VerifyingKey,
};
use crate::signing::identity_binding_message;

/// A device's own identity: both private keys and the binding signature.
#[derive(Clone)]
pub struct IdentityKeyPair {
    /// `IKs`: signs `IKd`, prekeys and login challenges.
    signing: SigningKey,
    /// `IKd`: the identity's ECDH key, used in X3DH.
    dh: DhKeyPair,
    /// The public half, with `IKs`'s signature over `IKd`.
    public: PublicIdentity,
}

impl IdentityKeyPair {
    /// Generates a new identity.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_keys(SigningKey::generate(rng), DhKeyPair::generate(rng))
    }

    /// Builds an identity from its two private keys, signing `IKd` with `IKs`. Signatures are
    /// deterministic (RFC 6979), so restoring an identity yields the same binding signature.
    pub fn from_keys(signing: SigningKey, dh: DhKeyPair) -> Self {
        let verifying = signing.verifying_key();
        let signature = signing.sign(&identity_binding_message(&verifying, dh.public()));
        let public = PublicIdentity { signing: verifying, dh: *dh.public(), signature };
        Self { signing, dh, public }
    }

    /// Restores an identity from the two 32-byte private scalars.
    pub fn from_secret_bytes(signing: &[u8], dh: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::from_keys(
            SigningKey::from_bytes(signing)?,
            DhKeyPair::from_secret(DhSecretKey::from_bytes(dh)?),
        ))
    }

    /// `IKs`.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// `IKd`.
    pub fn dh_key_pair(&self) -> &DhKeyPair {
        &self.dh
    }

    /// The public identity, as published in bundles and prekey messages.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Signs `message` with `IKs`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// A user's public identity: `IKs`, `IKd` and the binding signature, verified.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicIdentity {
    /// `IKs`.
    signing: VerifyingKey,
    /// `IKd`.
    dh: DhPublicKey,
    /// `IKs`'s signature over `IKd` (§4.1).
    signature: Signature,
}

impl PublicIdentity {
    /// Checks the binding signature and builds the identity.
    pub fn new(
        signing: VerifyingKey,
        dh: DhPublicKey,
        signature: Signature,
    ) -> Result<Self, KeyError> {
        signing.verify(&identity_binding_message(&signing, &dh), &signature)?;
        Ok(Self { signing, dh, signature })
    }

    /// Rebuilds an identity from local state this device saved after verifying it, without
    /// paying for a signature check on every restore.
    pub(crate) fn from_trusted_parts(
        signing: VerifyingKey,
        dh: DhPublicKey,
        signature: Signature,
    ) -> Self {
        Self { signing, dh, signature }
    }

    /// `IKs`.
    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing
    }

    /// `IKd`.
    pub fn dh_key(&self) -> &DhPublicKey {
        &self.dh
    }

    /// The binding signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Whether two identities have the same keys. The signature is not compared: ECDSA
    /// signatures are not unique, and both were verified.
    pub fn same_keys(&self, other: &PublicIdentity) -> bool {
        self.signing == other.signing && self.dh == other.dh
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("signing", &self.signing)
            .field("dh", &self.dh)
            .finish_non_exhaustive()
    }
}
