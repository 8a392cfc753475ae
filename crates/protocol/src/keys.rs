//! P-256 keys: ECDH key pairs, ECDSA identity signing keys, their encodings and checks (§2).
//!
//! Public keys are SEC1 uncompressed points (65 bytes); anything else is refused, so a public key
//! that exists as a value has been validated: on the curve, not the identity, coordinates below
//! the field prime. ECDH outputs are the 32-byte X coordinate and are refused when all zero.
//! Signatures are IEEE P1363 (`r ‖ s`), the form Web Crypto produces; high-S values are accepted.

use core::fmt;

use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::Generate;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an encoded public key: `0x04 ‖ X ‖ Y`.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of an encoded private scalar.
pub const SECRET_KEY_LEN: usize = 32;
/// Length of a P1363 ECDSA signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an ECDH output (the X coordinate).
pub const SHARED_SECRET_LEN: usize = 32;

/// Why a key, a signature or a key agreement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a 65-byte uncompressed SEC1 encoding of a point on P-256.
    #[error("invalid P-256 public key")]
    InvalidPublicKey,
    /// A private scalar that is zero, not below the group order, or not 32 bytes.
    #[error("invalid P-256 private key")]
    InvalidSecretKey,
    /// A signature that is not 64 bytes or does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// An ECDH output of all zeros (a non-contributory key agreement).
    #[error("non-contributory key agreement")]
    NonContributoryKey,
}

fn parse_point(bytes: &[u8]) -> Result<p256::PublicKey, KeyError> {
    if bytes.len() != PUBLIC_KEY_LEN || bytes[0] != 0x04 {
        return Err(KeyError::InvalidPublicKey);
    }
    p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)
}

fn encode_point(point: &p256::PublicKey) -> [u8; PUBLIC_KEY_LEN] {
    let mut out = [0u8; PUBLIC_KEY_LEN];
    out.copy_from_slice(&point.to_sec1_bytes());
    out
}

fn short_hex(bytes: &[u8]) -> String {
    // Eight bytes of the X coordinate identify a key in logs and debug output.
    hex::encode(&bytes[1..9])
}

/// A validated P-256 public key used for key agreement: identity DH keys, prekeys, base keys and
/// ratchet keys.
#[derive(Clone, Copy)]
pub struct DhPublicKey {
    /// The decoded point, kept so ECDH does not decode again.
    point: p256::PublicKey,
    /// The canonical encoding, kept for comparisons, hashing and serialisation.
    encoded: [u8; PUBLIC_KEY_LEN],
}

impl DhPublicKey {
    /// Decodes and validates an uncompressed SEC1 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let point = parse_point(bytes)?;
        Ok(Self { point, encoded: encode_point(&point) })
    }

    /// The 65-byte uncompressed encoding.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.encoded
    }
}

impl PartialEq for DhPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}
impl Eq for DhPublicKey {}

impl fmt::Debug for DhPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhPublicKey({}…)", short_hex(&self.encoded))
    }
}

/// A P-256 private key used for key agreement. Zeroised on drop; never printed.
#[derive(Clone)]
pub struct DhSecretKey(p256::SecretKey);

impl DhSecretKey {
    /// Generates a fresh key from the caller's random number generator.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(p256::SecretKey::generate_from_rng(rng))
    }

    /// Restores a key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != SECRET_KEY_LEN {
            return Err(KeyError::InvalidSecretKey);
        }
        p256::SecretKey::from_slice(bytes).map(Self).map_err(|_| KeyError::InvalidSecretKey)
    }

    /// The 32-byte big-endian scalar, in a buffer that is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SECRET_KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_KEY_LEN]);
        let mut bytes = self.0.to_bytes();
        out.copy_from_slice(&bytes);
        bytes.zeroize();
        out
    }

    /// The matching public key.
    pub fn public_key(&self) -> DhPublicKey {
        let point = self.0.public_key();
        DhPublicKey { point, encoded: encode_point(&point) }
    }

    /// P-256 ECDH: the X coordinate of `self · their`. All-zero outputs are refused.
    pub fn diffie_hellman(&self, their: &DhPublicKey) -> Result<SharedSecret, KeyError> {
        let shared = self.0.diffie_hellman(&their.point);
        let mut out = Zeroizing::new([0u8; SHARED_SECRET_LEN]);
        out.copy_from_slice(shared.raw_secret_bytes());
        if bool::from(out.ct_eq(&[0u8; SHARED_SECRET_LEN])) {
            return Err(KeyError::NonContributoryKey);
        }
        Ok(SharedSecret(out))
    }
}

impl fmt::Debug for DhSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhSecretKey(public: {:?})", self.public_key())
    }
}

/// An ECDH output. Wiped on drop.
pub struct SharedSecret(Zeroizing<[u8; SHARED_SECRET_LEN]>);

impl SharedSecret {
    /// The 32 bytes, for feeding a KDF.
    pub fn as_bytes(&self) -> &[u8; SHARED_SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// An ECDH key pair: private key and its public key.
#[derive(Clone)]
pub struct DhKeyPair {
    /// The private half.
    secret: DhSecretKey,
    /// The public half, computed once.
    public: DhPublicKey,
}

impl DhKeyPair {
    /// Generates a fresh key pair.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(DhSecretKey::generate(rng))
    }

    /// Wraps a private key with its public key.
    pub fn from_secret(secret: DhSecretKey) -> Self {
        let public = secret.public_key();
        Self { secret, public }
    }

    /// Pairs a private key with a public key this device saved alongside it, skipping the scalar
    /// multiplication that [`DhKeyPair::from_secret`] does.
    pub(crate) fn from_trusted_parts(secret: DhSecretKey, public: DhPublicKey) -> Self {
        Self { secret, public }
    }

    /// The private half.
    pub fn secret(&self) -> &DhSecretKey {
        &self.secret
    }

    /// The public half.
    pub fn public(&self) -> &DhPublicKey {
        &self.public
    }

    /// ECDH with a peer's public key.
    pub fn diffie_hellman(&self, their: &DhPublicKey) -> Result<SharedSecret, KeyError> {
        self.secret.diffie_hellman(their)
    }
}

impl fmt::Debug for DhKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhKeyPair(public: {:?})", self.public)
    }
}

/// An ECDSA P-256 signature in P1363 form (`r ‖ s`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Takes a 64-byte P1363 signature. Only the length is checked here; [`VerifyingKey::verify`]
    /// checks the rest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; SIGNATURE_LEN] =
            bytes.try_into().map_err(|_| KeyError::InvalidSignature)?;
        Ok(Self(array))
    }

    /// The 64 bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

/// A validated ECDSA P-256 public key: a user's identity signing key `IKs`.
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    /// The canonical encoding of a point validated on construction.
    encoded: [u8; PUBLIC_KEY_LEN],
}

impl VerifyingKey {
    /// Decodes and validates an uncompressed SEC1 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let point = parse_point(bytes)?;
        Ok(Self { encoded: encode_point(&point) })
    }

    /// The 65-byte uncompressed encoding.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.encoded
    }

    /// Verifies an ECDSA P-256 / SHA-256 signature over `message`.
    ///
    /// Verification is ring's: the relay checks a signature for every login, registration and
    /// prekey upload, and ring's P-256 verification takes about a fifth of the time of the
    /// `p256` crate's here (54 against 300 µs), which is most of what a registration costs.
    /// Like Web Crypto, it accepts high-S signatures (§8 of SECURITY.md).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &self.encoded,
        )
        .verify(message, &signature.0)
        .map_err(|_| KeyError::InvalidSignature)
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}
impl Eq for VerifyingKey {}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({}…)", short_hex(&self.encoded))
    }
}

/// An ECDSA P-256 private key: a user's identity signing key `IKs`. Zeroised on drop.
#[derive(Clone)]
pub struct SigningKey(p256::ecdsa::SigningKey);

impl SigningKey {
    /// Generates a fresh signing key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(p256::ecdsa::SigningKey::generate_from_rng(rng))
    }

    /// Restores a key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != SECRET_KEY_LEN {
            return Err(KeyError::InvalidSecretKey);
        }
        p256::ecdsa::SigningKey::from_slice(bytes).map(Self).map_err(|_| KeyError::InvalidSecretKey)
    }

    /// The 32-byte big-endian scalar, wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SECRET_KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_KEY_LEN]);
        let mut bytes = self.0.to_bytes();
        out.copy_from_slice(&bytes);
        bytes.zeroize();
        out
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        let point = p256::PublicKey::from(self.0.verifying_key());
        VerifyingKey { encoded: encode_point(&point) }
    }

    /// Signs `message` (ECDSA P-256 / SHA-256, deterministic nonces per RFC 6979).
    pub fn sign(&self, message: &[u8]) -> Signature {
        let signature: p256::ecdsa::Signature = self.0.sign(message);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&signature.to_bytes());
        Signature(out)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public: {:?})", self.verifying_key())
    }
}

impl ZeroizeOnDrop for DhSecretKey {}
impl ZeroizeOnDrop for SigningKey {}
