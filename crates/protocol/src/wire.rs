//! JSON wire types (§8) and their strict decoders.
//!
//! Each `*Json` struct mirrors the JSON exactly (field names, order, optional fields) and is what
//! serde reads and writes; the typed values ([`Envelope`], [`PrekeyBundle`], …) exist only after
//! a strict conversion: version and suite checked, every base64url string decoded canonically,
//! every length checked, every key validated as a point, every signature verified. The relay
//! embeds the `*Json` structs in its own event payloads and converts them the same way.

use base64ct::{Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};

use crate::identity::PublicIdentity;
use crate::keys::{DhPublicKey, KeyError, PUBLIC_KEY_LEN, SIGNATURE_LEN, Signature, VerifyingKey};
use crate::prekeys::{OneTimePrekeyPublic, PrekeyBundle, SignedPrekeyPublic};
use crate::ratchet::Header;
use crate::record::{MAX_BUCKET, MIN_BUCKET, is_bucket};
use crate::user_id::{UserId, UserIdError};
use crate::{PROTOCOL_VERSION, SUITE_P256, aead::TAG_LEN};

/// Largest integer JavaScript represents exactly; times above it are refused.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Shortest valid ciphertext: the smallest bucket plus the tag.
pub const MIN_CIPHERTEXT_LEN: usize = MIN_BUCKET + TAG_LEN;
/// Longest valid ciphertext: the largest bucket plus the tag.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_BUCKET + TAG_LEN;

/// Why a wire value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not of the expected shape (a missing, unknown, duplicated or mistyped
    /// field).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A `version` other than 1.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u64),
    /// A `suite` other than 1.
    #[error("unsupported cipher suite {0}")]
    UnsupportedSuite(u64),
    /// A field that is not canonical unpadded base64url.
    #[error("{field}: not base64url")]
    InvalidBase64 {
        /// The JSON field.
        field: &'static str,
    },
    /// A field of the wrong length.
    #[error("{field}: expected {expected} bytes, got {actual}")]
    InvalidLength {
        /// The JSON field.
        field: &'static str,
        /// What it must be.
        expected: usize,
        /// What it was.
        actual: usize,
    },
    /// A key that is not a valid P-256 point.
    #[error("{field}: invalid public key")]
    InvalidPublicKey {
        /// The JSON field.
        field: &'static str,
    },
    /// A signature that does not verify.
    #[error("{field}: invalid signature")]
    InvalidSignature {
        /// The JSON field.
        field: &'static str,
    },
    /// An invalid user id.
    #[error("invalid user id: {0}")]
    InvalidUserId(UserIdError),
    /// A ciphertext whose length is not a bucket size plus the tag.
    #[error("invalid ciphertext length {0}")]
    InvalidCiphertextLength(usize),
    /// A time beyond 2^53 − 1.
    #[error("{field}: out of range")]
    OutOfRange {
        /// The JSON field.
        field: &'static str,
    },
}

impl From<serde_json::Error> for DecodeError {
    fn from(error: serde_json::Error) -> Self {
        DecodeError::Json(error.to_string())
    }
}

/// Encodes bytes as unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Decodes canonical unpadded base64url.
pub fn from_b64(field: &'static str, text: &str) -> Result<Vec<u8>, DecodeError> {
    Base64UrlUnpadded::decode_vec(text).map_err(|_| DecodeError::InvalidBase64 { field })
}

fn exact<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], DecodeError> {
    let bytes = from_b64(field, text)?;
    let actual = bytes.len();
    bytes.try_into().map_err(|_| DecodeError::InvalidLength { field, expected: N, actual })
}

fn dh_key(field: &'static str, text: &str) -> Result<DhPublicKey, DecodeError> {
    let bytes = exact::<PUBLIC_KEY_LEN>(field, text)?;
    DhPublicKey::from_bytes(&bytes).map_err(|_| DecodeError::InvalidPublicKey { field })
}

fn verifying_key(field: &'static str, text: &str) -> Result<VerifyingKey, DecodeError> {
    let bytes = exact::<PUBLIC_KEY_LEN>(field, text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| DecodeError::InvalidPublicKey { field })
}

fn signature(field: &'static str, text: &str) -> Result<Signature, DecodeError> {
    let bytes = exact::<SIGNATURE_LEN>(field, text)?;
    Signature::from_bytes(&bytes).map_err(|_| DecodeError::InvalidSignature { field })
}

fn check_version_and_suite(version: u64, suite: u64) -> Result<(), DecodeError> {
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if suite != u64::from(SUITE_P256) {
        return Err(DecodeError::UnsupportedSuite(suite));
    }
    Ok(())
}

/// Checks a ciphertext's length: a bucket size plus the GCM tag.
pub fn check_ciphertext_len(len: usize) -> Result<(), DecodeError> {
    if len < TAG_LEN || !is_bucket(len - TAG_LEN) {
        return Err(DecodeError::InvalidCiphertextLength(len));
    }
    Ok(())
}

/// §8.1 `{ signing, dh, signature }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIdentityJson {
    /// `IKs`, base64url.
    pub signing: String,
    /// `IKd`, base64url.
    pub dh: String,
    /// The identity binding signature, base64url.
    pub signature: String,
}

impl From<&PublicIdentity> for PublicIdentityJson {
    fn from(identity: &PublicIdentity) -> Self {
        Self {
            signing: b64(identity.signing_key().as_bytes()),
            dh: b64(identity.dh_key().as_bytes()),
            signature: b64(identity.signature().as_bytes()),
        }
    }
}

impl TryFrom<&PublicIdentityJson> for PublicIdentity {
    type Error = DecodeError;
    fn try_from(json: &PublicIdentityJson) -> Result<Self, DecodeError> {
        let signing = verifying_key("identity.signing", &json.signing)?;
        let dh = dh_key("identity.dh", &json.dh)?;
        let binding = signature("identity.signature", &json.signature)?;
        PublicIdentity::new(signing, dh, binding)
            .map_err(|_: KeyError| DecodeError::InvalidSignature { field: "identity.signature" })
    }
}

/// §8.2 `signedPrekey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignedPrekeyJson {
    /// The prekey id.
    pub id: u32,
    /// The public key, base64url.
    pub key: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// `IKs`'s signature, base64url.
    pub signature: String,
}

impl From<&SignedPrekeyPublic> for SignedPrekeyJson {
    fn from(spk: &SignedPrekeyPublic) -> Self {
        Self {
            id: spk.id,
            key: b64(spk.key.as_bytes()),
            created_at: spk.created_at,
            signature: b64(spk.signature.as_bytes()),
        }
    }
}

impl SignedPrekeyJson {
    /// Decodes the prekey and verifies its signature against its owner's identity.
    pub fn decode(&self, owner: &PublicIdentity) -> Result<SignedPrekeyPublic, DecodeError> {
        if self.created_at > MAX_SAFE_INTEGER {
            return Err(DecodeError::OutOfRange { field: "signedPrekey.createdAt" });
        }
        let spk = SignedPrekeyPublic {
            id: self.id,
            created_at: self.created_at,
            key: dh_key("signedPrekey.key", &self.key)?,
            signature: signature("signedPrekey.signature", &self.signature)?,
        };
        spk.verify(owner)
            .map_err(|_| DecodeError::InvalidSignature { field: "signedPrekey.signature" })?;
        Ok(spk)
    }
}

/// §8.2 `oneTimePrekey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimePrekeyJson {
    /// The prekey id.
    pub id: u32,
    /// The public key, base64url.
    pub key: String,
}

impl From<&OneTimePrekeyPublic> for OneTimePrekeyJson {
    fn from(opk: &OneTimePrekeyPublic) -> Self {
        Self { id: opk.id, key: b64(opk.key.as_bytes()) }
    }
}

impl TryFrom<&OneTimePrekeyJson> for OneTimePrekeyPublic {
    type Error = DecodeError;
    fn try_from(json: &OneTimePrekeyJson) -> Result<Self, DecodeError> {
        Ok(Self { id: json.id, key: dh_key("oneTimePrekey.key", &json.key)? })
    }
}

/// §8.2 the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BundleJson {
    /// Must be 1.
    pub version: u64,
    /// Must be 1.
    pub suite: u64,
    /// Whose bundle.
    pub user_id: String,
    /// Their identity.
    pub identity: PublicIdentityJson,
    /// Their signed prekey.
    pub signed_prekey: SignedPrekeyJson,
    /// One one-time prekey, absent when none are left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_prekey: Option<OneTimePrekeyJson>,
}

impl From<&PrekeyBundle> for BundleJson {
    fn from(bundle: &PrekeyBundle) -> Self {
        Self {
            version: u64::from(PROTOCOL_VERSION),
            suite: u64::from(SUITE_P256),
            user_id: bundle.user_id().to_string(),
            identity: bundle.identity().into(),
            signed_prekey: bundle.signed_prekey().into(),
            one_time_prekey: bundle.one_time_prekey().map(Into::into),
        }
    }
}

impl TryFrom<&BundleJson> for PrekeyBundle {
    type Error = DecodeError;
    fn try_from(json: &BundleJson) -> Result<Self, DecodeError> {
        check_version_and_suite(json.version, json.suite)?;
        let user_id = UserId::parse(&json.user_id).map_err(DecodeError::InvalidUserId)?;
        if user_id.as_str() != json.user_id {
            // A bundle carries the normalised id; anything else was not made by a relay.
            return Err(DecodeError::InvalidUserId(UserIdError::Character));
        }
        let identity = PublicIdentity::try_from(&json.identity)?;
        let signed_prekey = json.signed_prekey.decode(&identity)?;
        let one_time_prekey = json.one_time_prekey.as_ref().map(TryFrom::try_from).transpose()?;
        PrekeyBundle::new(user_id, identity, signed_prekey, one_time_prekey)
            .map_err(|_| DecodeError::InvalidSignature { field: "signedPrekey.signature" })
    }
}

impl PrekeyBundle {
    /// Strictly decodes a bundle from JSON.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        Self::try_from(&serde_json::from_str::<BundleJson>(text)?)
    }

    /// Encodes the bundle as JSON (§8.2).
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(&BundleJson::from(self)).unwrap_or_default()
    }
}

/// §8.3 the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderJson {
    /// The sender's ratchet key, base64url.
    pub dh: String,
    /// Previous chain length.
    pub pn: u32,
    /// Message number.
    pub n: u32,
}

impl From<&Header> for HeaderJson {
    fn from(header: &Header) -> Self {
        Self { dh: b64(header.dh.as_bytes()), pn: header.pn, n: header.n }
    }
}

impl TryFrom<&HeaderJson> for Header {
    type Error = DecodeError;
    fn try_from(json: &HeaderJson) -> Result<Self, DecodeError> {
        Ok(Header { dh: dh_key("header.dh", &json.dh)?, pn: json.pn, n: json.n })
    }
}

/// What a prekey message adds to the header (§8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrekeyHeader {
    /// The sender's identity.
    pub identity: PublicIdentity,
    /// `EK_A`.
    pub base_key: DhPublicKey,
    /// Which of the recipient's signed prekeys was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// §8.4 the prekey header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrekeyHeaderJson {
    /// The sender's identity.
    pub identity: PublicIdentityJson,
    /// `EK_A`, base64url.
    pub base_key: String,
    /// The signed prekey's id.
    pub signed_prekey_id: u32,
    /// The one-time prekey's id, absent when none was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_prekey_id: Option<u32>,
}

impl From<&PrekeyHeader> for PrekeyHeaderJson {
    fn from(prekey: &PrekeyHeader) -> Self {
        Self {
            identity: (&prekey.identity).into(),
            base_key: b64(prekey.base_key.as_bytes()),
            signed_prekey_id: prekey.signed_prekey_id,
            one_time_prekey_id: prekey.one_time_prekey_id,
        }
    }
}

impl TryFrom<&PrekeyHeaderJson> for PrekeyHeader {
    type Error = DecodeError;
    fn try_from(json: &PrekeyHeaderJson) -> Result<Self, DecodeError> {
        Ok(PrekeyHeader {
            identity: PublicIdentity::try_from(&json.identity)?,
            base_key: dh_key("prekey.baseKey", &json.base_key)?,
            signed_prekey_id: json.signed_prekey_id,
            one_time_prekey_id: json.one_time_prekey_id,
        })
    }
}

/// An encrypted message (§8.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The ratchet header.
    pub header: Header,
    /// Present on prekey messages.
    pub prekey: Option<PrekeyHeader>,
    /// `ciphertext ‖ tag`.
    pub ciphertext: Vec<u8>,
}

/// §8.5 the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeJson {
    /// Must be 1.
    pub version: u64,
    /// Must be 1.
    pub suite: u64,
    /// The ratchet header.
    pub header: HeaderJson,
    /// Present on prekey messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prekey: Option<PrekeyHeaderJson>,
    /// `ciphertext ‖ tag`, base64url.
    pub ciphertext: String,
}

impl From<&Envelope> for EnvelopeJson {
    fn from(envelope: &Envelope) -> Self {
        Self {
            version: u64::from(PROTOCOL_VERSION),
            suite: u64::from(SUITE_P256),
            header: (&envelope.header).into(),
            prekey: envelope.prekey.as_ref().map(Into::into),
            ciphertext: b64(&envelope.ciphertext),
        }
    }
}

impl TryFrom<&EnvelopeJson> for Envelope {
    type Error = DecodeError;
    fn try_from(json: &EnvelopeJson) -> Result<Self, DecodeError> {
        check_version_and_suite(json.version, json.suite)?;
        // Check the length from the text before decoding, so an oversized field costs nothing.
        if json.ciphertext.len() > MAX_CIPHERTEXT_LEN.div_ceil(3) * 4 {
            return Err(DecodeError::InvalidCiphertextLength(json.ciphertext.len() / 4 * 3));
        }
        let ciphertext = from_b64("ciphertext", &json.ciphertext)?;
        check_ciphertext_len(ciphertext.len())?;
        Ok(Envelope {
            header: Header::try_from(&json.header)?,
            prekey: json.prekey.as_ref().map(TryFrom::try_from).transpose()?,
            ciphertext,
        })
    }
}

impl Envelope {
    /// Strictly decodes an envelope from JSON.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        Self::try_from(&serde_json::from_str::<EnvelopeJson>(text)?)
    }

    /// Encodes the envelope as JSON (§8.5).
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(&EnvelopeJson::from(self)).unwrap_or_default()
    }

    /// Whether this is a prekey message.
    pub fn is_prekey_message(&self) -> bool {
        self.prekey.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(from_b64("f", "AQID").unwrap(), vec![1, 2, 3]);
        assert!(from_b64("f", "AQI=").is_err(), "padding");
        assert!(from_b64("f", "AQJ").is_err(), "non-zero trailing bits");
        assert!(from_b64("f", "AQ+/").is_err(), "standard alphabet");
        assert!(from_b64("f", "AQ I").is_err(), "whitespace");
        assert!(from_b64("f", "A").is_err(), "impossible length");
    }

    #[test]
    fn ciphertext_lengths_are_buckets_plus_tag() {
        assert!(check_ciphertext_len(64 + 16).is_ok());
        assert!(check_ciphertext_len(32 * 1024 + 16).is_ok());
        assert!(check_ciphertext_len(64).is_err());
        assert!(check_ciphertext_len(100).is_err());
        assert!(check_ciphertext_len(0).is_err());
        assert!(check_ciphertext_len(64 * 1024 + 16).is_err());
    }
}
