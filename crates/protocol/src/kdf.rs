//! The key derivations of X3DH and the Double Ratchet (§5, §6.1), one type per key role.
//!
//! ```text
//! SK          = HKDF(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = X3DH_INFO, 32)
//! KDF_RK      : HKDF(salt = RK, ikm = DH out, info = ROOT_INFO, 64) → RK' ‖ CK
//! KDF_CK      : MK = HMAC(CK, 0x01), CK' = HMAC(CK, 0x02)
//! message keys: HKDF(salt = 0^32, ikm = MK, info = MESSAGE_KEY_INFO, 44) → key ‖ nonce
//! ```
//!
//! Every key here is boxed (moves do not leave copies behind), wiped on drop, and printed by
//! `Debug` as a placeholder only.

use core::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::keys::SharedSecret;

/// HKDF info of the X3DH shared secret.
pub const X3DH_INFO: &[u8] = b"Sotto v1 P-256 X3DH";
/// HKDF info of the root-chain step.
pub const ROOT_INFO: &[u8] = b"Sotto v1 P-256 root chain";
/// HKDF info of the message-key expansion.
pub const MESSAGE_KEY_INFO: &[u8] = b"Sotto v1 P-256 message keys";

/// Length of root, chain and message keys.
pub const KEY_LEN: usize = 32;
/// Length of an AES-256-GCM nonce.
pub const NONCE_LEN: usize = 12;

const ZERO_SALT: [u8; 32] = [0u8; 32];

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // HKDF-SHA256 can produce up to 8,160 bytes; every N used here is at most 64.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, out.as_mut());
    out
}

fn hmac(key: &[u8; KEY_LEN], data: &[u8]) -> Box<[u8; KEY_LEN]> {
    let mut out = Box::new([0u8; KEY_LEN]);
    // HMAC accepts keys of any length, so this cannot fail.
    if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        mac.update(data);
        let mut tag = mac.finalize().into_bytes();
        out.copy_from_slice(&tag);
        tag.zeroize();
    }
    out
}

macro_rules! secret_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name(Box<[u8; KEY_LEN]>);

        impl $name {
            /// Wraps 32 bytes (restoring stored state, or test vectors).
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                let mut bytes = bytes;
                let key = Self(Box::new(bytes));
                bytes.zeroize();
                key
            }

            /// The key bytes.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    };
}

secret_key_type!(
    /// A root key `RK`: the X3DH secret `SK` to start with, then stepped by every DH ratchet.
    RootKey
);
secret_key_type!(
    /// A sending or receiving chain key `CK`.
    ChainKey
);
secret_key_type!(
    /// A message key `MK`: encrypts exactly one message.
    MessageKey
);

impl RootKey {
    /// `SK` from the concatenated X3DH DH outputs.
    pub fn from_x3dh(dh_outputs: &[&SharedSecret]) -> Self {
        let mut ikm = Zeroizing::new(Vec::with_capacity(dh_outputs.len() * 32));
        for output in dh_outputs {
            ikm.extend_from_slice(output.as_bytes());
        }
        let okm = hkdf::<KEY_LEN>(&ZERO_SALT, &ikm, X3DH_INFO);
        Self::from_bytes(*okm)
    }

    /// `KDF_RK`: steps the root chain with a DH output.
    pub fn step(&self, dh_output: &SharedSecret) -> (RootKey, ChainKey) {
        let okm = hkdf::<{ 2 * KEY_LEN }>(self.as_bytes(), dh_output.as_bytes(), ROOT_INFO);
        // Wiped when they go, like `okm`: the keys' own copies are the only ones kept.
        let mut root = Zeroizing::new([0u8; KEY_LEN]);
        let mut chain = Zeroizing::new([0u8; KEY_LEN]);
        root.copy_from_slice(&okm[..KEY_LEN]);
        chain.copy_from_slice(&okm[KEY_LEN..]);
        (RootKey::from_bytes(*root), ChainKey::from_bytes(*chain))
    }
}

impl ChainKey {
    /// `KDF_CK`: the message key for the current position and the next chain key.
    pub fn step(&self) -> (MessageKey, ChainKey) {
        (MessageKey(hmac(&self.0, &[0x01])), ChainKey(hmac(&self.0, &[0x02])))
    }
}

impl MessageKey {
    /// Expands the message key into an AES-256 key and a GCM nonce.
    pub fn expand(&self) -> MessageKeyMaterial {
        let okm = hkdf::<{ KEY_LEN + NONCE_LEN }>(&ZERO_SALT, self.as_bytes(), MESSAGE_KEY_INFO);
        let mut material =
            MessageKeyMaterial { key: Box::new([0u8; KEY_LEN]), nonce: [0u8; NONCE_LEN] };
        material.key.copy_from_slice(&okm[..KEY_LEN]);
        material.nonce.copy_from_slice(&okm[KEY_LEN..]);
        material
    }
}

/// The AES-256-GCM key and nonce of one message.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeyMaterial {
    /// AES-256 key.
    key: Box<[u8; KEY_LEN]>,
    /// GCM nonce; unique because every message key is used once.
    nonce: [u8; NONCE_LEN],
}

impl MessageKeyMaterial {
    /// The AES-256 key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The GCM nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }
}

impl fmt::Debug for MessageKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKeyMaterial(..)")
    }
}
