//! The messages signed by a user's identity signing key `IKs` (§4.1).
//!
//! Every signed message is `label ‖ 0x00 ‖ fields`, with a label of its own, so a signature made
//! for one purpose can never be presented as another.

use crate::SUITE_P256;
use crate::keys::{DhPublicKey, VerifyingKey};
use crate::user_id::UserId;

/// Label of the signature binding `IKd` to `IKs`.
pub const IDENTITY_BINDING_LABEL: &str = "Sotto v1 identity dh key";
/// Label of a signed prekey's signature.
pub const SIGNED_PREKEY_LABEL: &str = "Sotto v1 signed prekey";
/// Label of a login challenge signature.
pub const AUTHENTICATION_LABEL: &str = "Sotto v1 authentication";

/// Length of the relay's login challenge nonce.
pub const CHALLENGE_NONCE_LEN: usize = 32;
/// Longest host name a challenge may bind (it must fit a one-byte length prefix).
pub const MAX_HOST_LEN: usize = 255;

fn start(label: &str, capacity: usize) -> Vec<u8> {
    let mut message = Vec::with_capacity(label.len() + 1 + capacity);
    message.extend_from_slice(label.as_bytes());
    message.push(0);
    message
}

/// `"Sotto v1 identity dh key" ‖ 0x00 ‖ suite ‖ IKs ‖ IKd`
pub fn identity_binding_message(signing: &VerifyingKey, dh: &DhPublicKey) -> Vec<u8> {
    let mut message = start(IDENTITY_BINDING_LABEL, 131);
    message.push(SUITE_P256);
    message.extend_from_slice(signing.as_bytes());
    message.extend_from_slice(dh.as_bytes());
    message
}

/// `"Sotto v1 signed prekey" ‖ 0x00 ‖ suite ‖ IKs ‖ id ‖ created_at ‖ SPK`
pub fn signed_prekey_message(
    signing: &VerifyingKey,
    id: u32,
    created_at: u64,
    key: &DhPublicKey,
) -> Vec<u8> {
    let mut message = start(SIGNED_PREKEY_LABEL, 143);
    message.push(SUITE_P256);
    message.extend_from_slice(signing.as_bytes());
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&created_at.to_be_bytes());
    message.extend_from_slice(key.as_bytes());
    message
}

/// Why a login challenge could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The host is empty, longer than 255 bytes or not printable ASCII.
    #[error("invalid host in challenge")]
    InvalidHost,
}

/// `"Sotto v1 authentication" ‖ 0x00 ‖ host ‖ user id ‖ nonce`, host and user id each with a
/// one-byte length prefix.
///
/// `host` is the authority (host and port) the client connected to, so a signature made for one
/// relay cannot be replayed to another.
pub fn authentication_message(
    host: &str,
    user: &UserId,
    nonce: &[u8; CHALLENGE_NONCE_LEN],
) -> Result<Vec<u8>, ChallengeError> {
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ChallengeError::InvalidHost);
    }
    let mut message = start(AUTHENTICATION_LABEL, 1 + host.len() + 33 + CHALLENGE_NONCE_LEN);
    message.push(host.len() as u8);
    message.extend_from_slice(host.as_bytes());
    user.encode_into(&mut message);
    message.extend_from_slice(nonce);
    Ok(message)
}
