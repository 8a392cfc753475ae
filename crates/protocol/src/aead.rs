//! AES-256-GCM with a message key's material (§6.1).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::kdf::MessageKeyMaterial;

/// Length of the GCM tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// The tag did not verify: wrong key, wrong associated data, or altered ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AeadError;

fn cipher(material: &MessageKeyMaterial) -> Result<Aes256Gcm, AeadError> {
    Aes256Gcm::new_from_slice(material.key()).map_err(|_| AeadError)
}

/// Encrypts `plaintext`, authenticating `associated_data`: `ciphertext ‖ tag`.
pub fn seal(
    material: &MessageKeyMaterial,
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, AeadError> {
    let nonce = Nonce::from(*material.nonce());
    cipher(material)?
        .encrypt(&nonce, Payload { msg: plaintext, aad: associated_data })
        .map_err(|_| AeadError)
}

/// Decrypts and authenticates `ciphertext ‖ tag`.
pub fn open(
    material: &MessageKeyMaterial,
    ciphertext: &[u8],
    associated_data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    let nonce = Nonce::from(*material.nonce());
    cipher(material)?
        .decrypt(&nonce, Payload { msg: ciphertext, aad: associated_data })
        .map(Zeroizing::new)
        .map_err(|_| AeadError)
}
